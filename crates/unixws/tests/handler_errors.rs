//! A handler may fail with any error (`?` on the application's own), and
//! the peer then gets 1011 rather than a normal close: on both servers,
//! and on a tokio connection whose outbox writer task is running.

use unixws::tokio::Connection as AsyncConnection;
use unixws::CloseCode;
use unixws::{ClientBuilder, Connection, Message, PeerClose, Server};
use unixws_testkit::RunningServer;

const REASON: &str = "the server's handler failed";

/// The handlers' protocol: each message is a number; a message that is not
/// one fails the handler with `ParseIntError`.
fn parse(message: &Message) -> Result<u64, std::num::ParseIntError> {
    message.to_text().unwrap_or("").parse::<u64>()
}

/// Sends "7" (answered) then "seven" (fails the handler); returns how the
/// server closed.
fn client_sees(addr: impl unixws::ToAddress) -> PeerClose {
    let mut conn = ClientBuilder::new(addr).unwrap().connect().unwrap();
    conn.send(Message::text("7")).unwrap();
    assert_eq!(conn.recv().unwrap(), Some(Message::text("8")));
    conn.send(Message::text("seven")).unwrap();
    assert_eq!(conn.recv().unwrap(), None, "the server closed");
    conn.peer_close().cloned().expect("a close frame")
}

#[test]
fn a_blocking_handler_error_closes_with_1011() {
    let dir = tempfile::tempdir().unwrap();
    let server = RunningServer::start(
        Server::builder(dir.path().join("b.sock")).unwrap(),
        |conn: &mut Connection| {
            while let Some(message) = conn.recv()? {
                let n = parse(&message)?;
                conn.send(Message::text((n + 1).to_string()))?;
            }
            Ok(())
        },
    );
    let close = client_sees(server.addr());
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Error, REASON)
    );
}

fn tokio_server(path: &std::path::Path, use_outbox: bool) -> RunningServer {
    let builder = Server::builder(path).unwrap();
    RunningServer::start_async(builder, move |mut conn: AsyncConnection| async move {
        // The outbox starts the writer task: the close then goes out
        // through it.
        let outbox = use_outbox.then(|| conn.outbox()).transpose()?;
        while let Some(message) = conn.recv().await? {
            if message == Message::text("end") {
                return Ok(());
            }
            let n = parse(&message)?;
            let answer = Message::text((n + 1).to_string());
            match &outbox {
                Some(outbox) => outbox.try_send(answer)?,
                None => conn.send(answer).await?,
            }
        }
        Ok(())
    })
}

#[test]
fn a_tokio_handler_error_closes_with_1011() {
    for use_outbox in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let server = tokio_server(&path, use_outbox);
        let close = client_sees(&path);
        assert_eq!(
            (close.code, close.reason.as_str()),
            (CloseCode::Error, REASON),
            "with the outbox writer task: {use_outbox}"
        );
        server.stop();
    }
}

/// A handler that ends well closes with 1000, and no reason.
#[test]
fn a_handler_that_returns_ok_closes_with_1000() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.sock");
    let server = tokio_server(&path, false);
    let mut conn = unixws::connect(&path).unwrap();
    conn.send(Message::text("1")).unwrap();
    assert_eq!(conn.recv().unwrap(), Some(Message::text("2")));
    conn.send(Message::text("end")).unwrap();
    assert_eq!(conn.recv().unwrap(), None);
    let close = conn.peer_close().cloned().expect("a close frame");
    assert_eq!((close.code, close.reason.as_str()), (CloseCode::Normal, ""));
    server.stop();
}

/// A handler that panics takes nothing else down: its peer's connection
/// ends, and the next connection's failed handler still closes with 1011
/// (the per-thread parking slot was put back when the panic unwound).
#[test]
fn a_panicking_handler_leaves_the_server_and_the_verdicts_working() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    let builder = Server::builder(&path).unwrap();
    let server = RunningServer::start_async(builder, |mut conn: AsyncConnection| async move {
        while let Some(message) = conn.recv().await? {
            if message == Message::text("panic") {
                panic!("this handler panics on purpose (a test)");
            }
            let n = parse(&message)?;
            conn.send(Message::text((n + 1).to_string())).await?;
        }
        Ok(())
    });
    for _ in 0..4 {
        let mut doomed = unixws::connect(&path).unwrap();
        doomed.send(Message::text("panic")).unwrap();
        assert!(
            !matches!(doomed.recv(), Ok(Some(_))),
            "no answer from a panicked handler"
        );
    }
    let close = client_sees(&path);
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Error, REASON)
    );
    server.stop();
}
