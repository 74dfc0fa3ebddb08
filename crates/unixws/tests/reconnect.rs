//! `ClientBuilder::on_connect` and the `Reconnecting` client against
//! in-process servers that stop (1001), close for good (1000) or never come
//! back. Kills of a server process are in unixws-cli's tests/reconnect.rs.

use std::time::Duration;

use unixws::{ClientBuilder, CloseCode, Error, Message, RetryPolicy, Server};
use unixws_testkit::{assert_echo, RunningServer};

#[test]
fn on_connect_messages_go_out_before_anything_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RunningServer::echo(dir.path().join("e.sock").as_path(), Default::default());
    let mut conn = ClientBuilder::new(server.addr().clone())
        .expect("address")
        .on_connect(|info| {
            vec![
                Message::text(format!("hello {}", info.path)),
                Message::text("subscribe"),
            ]
        })
        .connect()
        .expect("connect");
    assert_eq!(conn.recv().expect("recv"), Some(Message::text("hello /")));
    assert_eq!(conn.recv().expect("recv"), Some(Message::text("subscribe")));
    assert_echo(&mut conn, "then mine");
}

/// A tokio server on `path` that greets each connection with its number
/// (`first`, `second`..) and then echoes.
fn greeting_server(path: &std::path::Path, name: &'static str) -> RunningServer {
    let builder = Server::builder(path).expect("address");
    RunningServer::start_async(builder, move |mut conn| async move {
        conn.send(Message::text(name)).await?;
        while let Some(m) = conn.recv().await? {
            if m == Message::text("bye") {
                conn.close(CloseCode::Normal, "done").await?;
                return Ok(());
            }
            conn.send(m).await?;
        }
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_goes_on_across_a_restart_and_ends_on_a_normal_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let first = greeting_server(&path, "first");
    let mut client = ClientBuilder::new(path.as_path())
        .expect("address")
        .reconnect(RetryPolicy::new(
            200,
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .on_connect(|_| vec![Message::text("hello")])
        .connect_reconnecting()
        .await
        .expect("connect");
    assert_eq!(
        client.recv().await.expect("recv"),
        Some(Message::text("first"))
    );
    assert_eq!(
        client.recv().await.expect("recv"),
        Some(Message::text("hello"))
    );

    // The server stops (1001; recv answers its close) and a new one starts:
    // recv reconnects, and the new server hears the on_connect message.
    let stopping = tokio::spawn(first.stop_async());
    let (next, _second) = tokio::join!(client.recv(), async {
        stopping.await.expect("the first server stopped");
        greeting_server(&path, "second")
    });
    assert_eq!(next.expect("recv"), Some(Message::text("second")));
    assert_eq!(
        client.recv().await.expect("recv"),
        Some(Message::text("hello"))
    );
    assert_eq!(client.connects(), 2);
    client.send(Message::text("confirmed")).await.expect("send");
    assert_eq!(
        client.recv().await.expect("recv"),
        Some(Message::text("confirmed"))
    );

    // A normal close (1000) ends the client for good.
    client
        .send_all([Message::text("bye")])
        .await
        .expect_err("the server closes instead of answering the ping");
    assert_eq!(client.recv().await.expect("recv"), None);
    assert_eq!(client.peer_close().map(|c| c.code), Some(CloseCode::Normal));
    let err = client.send(Message::text("more")).await.expect_err("ended");
    assert!(err.to_string().contains("closed for good"), "{err}");
    assert_eq!(client.connects(), 2, "no reconnect after 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_comes_back_is_an_error_once_the_policy_gives_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gone.sock");
    let server = greeting_server(&path, "only");
    let mut client = ClientBuilder::new(path.as_path())
        .expect("address")
        .reconnect(RetryPolicy::new(
            3,
            Duration::from_millis(5),
            Duration::from_millis(10),
        ))
        .connect_reconnecting()
        .await
        .expect("connect");
    assert_eq!(
        client.recv().await.expect("recv"),
        Some(Message::text("only"))
    );
    let stopping = tokio::spawn(server.stop_async());
    let err = client.recv().await.expect_err("no server any more");
    stopping.await.expect("the server stopped");
    assert!(matches!(err, Error::SocketNotFound { .. }), "{err}");
    let err = client
        .send(Message::text("x"))
        .await
        .expect_err("still none");
    assert!(
        !matches!(err, Error::NotConfirmed { .. }),
        "a failed connect is not a lost message: {err}"
    );
}
