//! How a tokio handler's error reaches its connection's close frame.
//!
//! A tokio handler owns its [`Connection`](super::Connection): when it
//! returns, the connection has already been dropped inside it, and a
//! dropped connection closes itself in a task of its own. To close with
//! 1011 when the handler failed, the server polls each handler inside
//! [`Judged`]: a server connection dropped during that poll is parked here
//! instead of being closed at once, and once the poll is over it is closed
//! with 1011 if the handler just returned an error, or with 1000 otherwise
//! (a handler that drops its connection and goes on still closes it
//! promptly). The blocking server needs none of this: it keeps the
//! connection and closes it after the handler returns.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::connection::{close_detached, Shared};
use crate::server_core::{handler_failed, HandlerResult};

thread_local! {
    /// `Some` while a handler is being polled on this thread: the server
    /// connection it dropped, if any.
    static PARKED: RefCell<Option<Option<Arc<Shared>>>> = const { RefCell::new(None) };
}

/// Keeps `shared` (a server connection being dropped) until the handler
/// polling on this thread has been judged; gives it back when no handler
/// is being polled.
pub(crate) fn park(shared: Arc<Shared>) -> Result<(), Arc<Shared>> {
    let earlier = PARKED.with(|parked| match &mut *parked.borrow_mut() {
        Some(slot) => Ok(slot.replace(shared)),
        None => Err(shared),
    })?;
    // A second one in the same poll: the first one closes now (outside
    // the borrow of the slot).
    if let Some(earlier) = earlier {
        close_detached(earlier, false);
    }
    Ok(())
}

/// This thread's parking slot while one handler is polled; put back as it
/// was when the poll ends, even by a panic, so that no later drop on this
/// thread is parked where nobody looks. (A connection the handler dropped
/// before panicking closes with 1011; one still held by the panicking
/// future is dropped with it later, outside any scope, and closes with
/// 1000.)
struct Scope {
    outer: Option<Option<Option<Arc<Shared>>>>,
}

impl Scope {
    fn enter() -> Self {
        Scope {
            outer: Some(PARKED.with(|parked| parked.replace(Some(None)))),
        }
    }

    /// Ends the scope; the connection the handler dropped meanwhile, if any.
    fn leave(&mut self) -> Option<Arc<Shared>> {
        let outer = self.outer.take()?;
        PARKED.with(|parked| parked.replace(outer)).flatten()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(dropped) = self.leave() {
            close_detached(dropped, true);
        }
    }
}

pin_project_lite::pin_project! {
    /// A handler's future, polled so that a connection it drops is closed
    /// with 1011 when it fails (see the module doc).
    pub(crate) struct Judged<F> {
        #[pin]
        handler: F,
    }
}

impl<F> Judged<F> {
    pub(crate) fn new(handler: F) -> Self {
        Self { handler }
    }
}

impl<F: Future<Output = HandlerResult>> Future for Judged<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut scope = Scope::enter();
        let polled = self.project().handler.poll(cx);
        let dropped = scope.leave();
        let failed = match &polled {
            Poll::Ready(result) => {
                let peer = dropped.as_ref().map(|shared| &shared.info().peer);
                handler_failed(peer, result)
            }
            Poll::Pending => false,
        };
        if let Some(shared) = dropped {
            close_detached(shared, failed);
        }
        polled.map(|_| ())
    }
}
