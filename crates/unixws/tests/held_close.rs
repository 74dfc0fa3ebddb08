//! `hold_close_reply`: a client that sends its request and closes at once
//! still gets the answer the handler sends after the close, then the
//! handler's close code; a handler that returns without closing answers
//! with the client's own code. On both servers.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use unixws::{CloseCode, Message, Server};
use unixws_testkit::RunningServer;

/// Sends "req" and its close back to back (as `unixws connect` does at
/// stdin EOF), then reads what comes until the server's close.
fn one_shot(addr: &unixws::Address, close_code: u16) -> (Vec<Message>, (CloseCode, String)) {
    let mut conn = unixws::connect(addr.clone()).unwrap();
    let outbox = conn.outbox().unwrap();
    outbox.send(Message::text("req")).unwrap();
    outbox
        .send(Message::Close(Some(
            unixws::tungstenite::protocol::CloseFrame {
                code: close_code.into(),
                reason: "done asking".into(),
            },
        )))
        .unwrap();
    let mut got = Vec::new();
    while let Some(message) = conn.recv().unwrap() {
        got.push(message);
    }
    let close = conn.peer_close().cloned().expect("the server's close");
    (got, (close.code, close.reason.to_string()))
}

/// What both handlers do: read until the client's close, then answer
/// twice, then close with 4001 ("answered") on even codes of the client,
/// or return without closing on odd ones.
fn expected(code: u16) -> (Vec<Message>, (CloseCode, String)) {
    let answers = vec![Message::text("answer to req"), Message::text("and more")];
    if code % 2 == 0 {
        (answers, (CloseCode::from(4001), "answered".into()))
    } else {
        (answers, (CloseCode::from(code), "done asking".into()))
    }
}

#[test]
fn a_blocking_handler_answers_after_the_clients_close() {
    let dir = tempfile::tempdir().unwrap();
    let builder = Server::builder(dir.path().join("held.sock")).unwrap();
    let server = RunningServer::start(builder, |conn| {
        conn.hold_close_reply(true);
        let mut asked = Vec::new();
        while let Some(m) = conn.recv()? {
            asked.push(m.into_text()?.to_string());
        }
        let code = u16::from(conn.peer_close().expect("the client closed").code);
        conn.send(Message::text(format!("answer to {}", asked.join(","))))?;
        conn.send(Message::text("and more"))?;
        if code % 2 == 0 {
            conn.close(4001, "answered")?;
        }
        Ok(())
    });
    for code in [4000, 4003] {
        assert_eq!(one_shot(server.addr(), code), expected(code));
    }
}

#[test]
fn a_tokio_handler_answers_after_the_clients_close() {
    let dir = tempfile::tempdir().unwrap();
    let builder = Server::builder(dir.path().join("held.sock")).unwrap();
    let server = RunningServer::start_async(builder, |mut conn| async move {
        conn.hold_close_reply(true);
        let mut asked = Vec::new();
        while let Some(m) = conn.recv().await? {
            asked.push(m.into_text()?.to_string());
        }
        let code = u16::from(conn.peer_close().expect("the client closed").code);
        // One through the outbox (its writer task), one sent directly.
        let outbox = conn.outbox()?;
        outbox
            .send(Message::text(format!("answer to {}", asked.join(","))))
            .await?;
        conn.send(Message::text("and more")).await?;
        if code % 2 == 0 {
            conn.close(4001, "answered").await?;
        }
        Ok(())
    });
    for code in [4000, 4003] {
        assert_eq!(one_shot(server.addr(), code), expected(code));
    }
}
