//! Who a trusted proxy says the client is. `unixws proxy` tells its
//! backend who connected to it: `X-Unixws-Peer-Uid`, `-Gid`, `-Pid` and
//! `-Groups` for a Unix-socket client (its kernel-verified credentials),
//! `X-Forwarded-For` for a TCP one. Any local process that can connect to
//! the backend can send the same headers, so a server believes them only
//! from the proxy's uid ([`ServerBuilder::trust_proxy_uid`]); from any
//! other peer they are dropped before the handler, the access policy or an
//! `--exec` program could see them.
//!
//! [`ServerBuilder::trust_proxy_uid`]: crate::ServerBuilder::trust_proxy_uid

use std::net::{IpAddr, SocketAddr};

use tungstenite::http::HeaderMap;

use crate::peer::{Peer, PeerCredentials};

/// The forwarded Unix-socket client's uid.
pub(crate) const PEER_UID: &str = "x-unixws-peer-uid";
/// Its primary gid.
pub(crate) const PEER_GID: &str = "x-unixws-peer-gid";
/// Its pid.
pub(crate) const PEER_PID: &str = "x-unixws-peer-pid";
/// Its supplementary groups, comma-separated.
pub(crate) const PEER_GROUPS: &str = "x-unixws-peer-groups";
/// A TCP client's address, with the addresses of earlier proxies before it.
pub(crate) const FORWARDED_FOR: &str = "x-forwarded-for";

const ALL: [&str; 5] = [PEER_UID, PEER_GID, PEER_PID, PEER_GROUPS, FORWARDED_FOR];

/// Is `peer` the trusted proxy?
fn is_trusted(trusted: Option<u32>, peer: &Peer) -> bool {
    matches!((trusted, peer.credentials()), (Some(uid), Some(c)) if c.uid == uid)
}

/// The client a trusted proxy forwards (`None` when `peer` is not the
/// trusted proxy, or says nothing that parses).
pub(crate) fn forwarded_peer(
    trusted: Option<u32>,
    peer: &Peer,
    headers: &HeaderMap,
) -> Option<Peer> {
    if !is_trusted(trusted, peer) {
        return None;
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| text(name).and_then(|v| v.parse::<u32>().ok());
    if let (Some(uid), Some(gid), Some(pid)) = (
        number(PEER_UID),
        number(PEER_GID),
        text(PEER_PID).and_then(|v| v.parse::<i32>().ok()),
    ) {
        let groups = text(PEER_GROUPS)
            .unwrap_or("")
            .split(',')
            .filter_map(|g| g.trim().parse::<u32>().ok());
        return Some(Peer::Unix(
            PeerCredentials::new(uid, gid, pid).with_groups(groups),
        ));
    }
    // The last address is the one the trusted proxy added itself.
    let ip: IpAddr = text(FORWARDED_FOR)?
        .rsplit(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some(Peer::Tcp(SocketAddr::new(ip, 0)))
}

/// Drops the forwarding headers (a peer that is not the trusted proxy
/// sent them, so they mean nothing).
pub(crate) fn strip(headers: &mut HeaderMap) {
    for name in ALL {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().expect("a header value"));
        }
        h
    }

    const PROXY: u32 = 990;

    fn from(uid: u32) -> Peer {
        Peer::Unix(PeerCredentials::new(uid, uid, 77))
    }

    #[test]
    fn only_the_trusted_uid_is_believed() {
        let h = headers(&[
            (PEER_UID, "1000"),
            (PEER_GID, "100"),
            (PEER_PID, "4242"),
            (PEER_GROUPS, "27, 44"),
        ]);
        assert_eq!(
            forwarded_peer(Some(PROXY), &from(PROXY), &h),
            Some(Peer::Unix(
                PeerCredentials::new(1000, 100, 4242).with_groups([27, 44])
            ))
        );
        assert_eq!(forwarded_peer(Some(PROXY), &from(1000), &h), None);
        assert_eq!(forwarded_peer(None, &from(PROXY), &h), None);
        let tcp = Peer::Tcp("127.0.0.1:5".parse().expect("an address"));
        assert_eq!(forwarded_peer(Some(PROXY), &tcp, &h), None);
    }

    #[test]
    fn a_tcp_client_is_the_last_forwarded_address() {
        let h = headers(&[(FORWARDED_FOR, "203.0.113.9, 10.0.0.1")]);
        assert_eq!(
            forwarded_peer(Some(PROXY), &from(PROXY), &h),
            Some(Peer::Tcp("10.0.0.1:0".parse().expect("an address")))
        );
        let garbage = headers(&[(PEER_UID, "root"), (FORWARDED_FOR, "not an address")]);
        assert_eq!(forwarded_peer(Some(PROXY), &from(PROXY), &garbage), None);
    }

    #[test]
    fn strip_drops_every_forwarding_header_and_nothing_else() {
        let mut h = headers(&[
            (PEER_UID, "0"),
            (PEER_GID, "0"),
            (PEER_PID, "1"),
            (PEER_GROUPS, "0"),
            (FORWARDED_FOR, "10.0.0.1"),
            ("authorization", "Bearer t"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }
}
