//! Who may connect: allow lists of uids and gids and a custom predicate,
//! checked against [`PeerCredentials`] before the WebSocket upgrade. A
//! rejected peer gets HTTP 403 and never reaches the application handler.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::peer::{Peer, PeerCredentials};

type Predicate = Arc<dyn Fn(&PeerCredentials) -> bool + Send + Sync>;

/// An access policy for Unix-socket peers.
///
/// With no rule set, every peer that can open the socket file is allowed
/// (file permissions still apply). With allow lists, a peer passes when its
/// uid is in the uid list **or** one of its groups, primary or
/// supplementary, is in the gid list. A predicate, when set, must also
/// return true.
///
/// ```
/// use unixws::{AccessPolicy, PeerCredentials};
/// let policy = AccessPolicy::new().allow_uid(1000).allow_gid(50);
/// assert!(policy.allows(&PeerCredentials::new(1000, 1000, 1)));
/// assert!(!policy.allows(&PeerCredentials::new(1001, 1001, 1)));
/// // A service running under a dynamic uid with group 50 added
/// // (systemd's `DynamicUser=yes` with `SupplementaryGroups=`):
/// assert!(policy.allows(&PeerCredentials::new(61234, 61234, 1).with_groups([50])));
/// ```
#[derive(Clone, Default)]
pub struct AccessPolicy {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
    predicate: Option<Predicate>,
}

impl AccessPolicy {
    /// A policy that allows everyone who can open the socket.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow the user this process runs as (its effective uid): the common
    /// case of a socket shared only between one user's processes.
    pub fn allow_current_user(self) -> Self {
        self.allow_uid(nix::unistd::geteuid().as_raw())
    }

    /// Allow this uid.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.uids.insert(uid);
        self
    }

    /// Allow members of this group: peers whose primary group or one of
    /// whose supplementary groups it is.
    pub fn allow_gid(mut self, gid: u32) -> Self {
        self.gids.insert(gid);
        self
    }

    /// Also require `predicate` to return true.
    pub fn require(
        mut self,
        predicate: impl Fn(&PeerCredentials) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicate = Some(Arc::new(predicate));
        self
    }

    /// True when no rule restricts who may connect.
    pub fn is_open(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty() && self.predicate.is_none()
    }

    /// Does the policy let these credentials in?
    pub fn allows(&self, cred: &PeerCredentials) -> bool {
        let listed = (self.uids.is_empty() && self.gids.is_empty())
            || self.uids.contains(&cred.uid)
            || self.gids.iter().any(|&gid| cred.in_group(gid));
        listed && self.predicate.as_ref().is_none_or(|p| p(cred))
    }

    /// Does the policy let this peer in? A TCP peer has no credentials, so
    /// it passes only an open policy.
    pub fn allows_peer(&self, peer: &Peer) -> bool {
        match peer.credentials() {
            Some(cred) => self.allows(cred),
            None => self.is_open(),
        }
    }
}

impl fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("uids", &self.uids)
            .field("gids", &self.gids)
            .field("predicate", &self.predicate.as_ref().map(|_| "<fn>"))
            .finish()
    }
}
