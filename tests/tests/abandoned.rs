//! Abandoned requests release everything at once (issue 7, "Must show" 4; the
//! problem of listeners left behind): 1,000 long-polls whose clients disconnect leave no
//! subscription, watched channel or client-id claim behind. Runs the server in-process to
//! read its counters directly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use redistribute_server::{serve, ConfigValues, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..400 {
        if done() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_long_polls_leave_nothing_behind() -> Result<()> {
    const POLLS: usize = 1_000;
    let shutdown = CancellationToken::new();
    let config = ConfigValues::default().build()?;
    let app = Server::start(config, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve(listener, app.clone()));

    let mut sockets = Vec::with_capacity(POLLS);
    for i in 0..POLLS {
        let mut s = TcpStream::connect(addr).await?;
        let request = format!(
            "GET /poll?channel=abandoned{}&timeout=60&client_id=c{i} HTTP/1.1\r\nHost: x\r\n\r\n",
            i % 50
        );
        s.write_all(request.as_bytes()).await?;
        sockets.push(s);
    }
    let hub = app.core().hub.clone();
    wait_until("all polls to be held", || hub.subscriber_total() == POLLS).await?;
    assert_eq!(hub.channel_count(), 50);
    assert_eq!(app.poll_holders().len(), POLLS);
    println!(
        "held: {} subscriptions on {} channels, {} watched by the engine",
        hub.subscriber_total(),
        hub.channel_count(),
        app.core().engine.stats().watched
    );

    drop(sockets);
    wait_until("subscriptions to be released", || {
        hub.subscriber_total() == 0 && hub.channel_count() == 0
    })
    .await?;
    let holders = Arc::clone(app.poll_holders());
    wait_until("client ids to be released", || holders.is_empty()).await?;
    ensure!(
        app.core().engine.stats().watched == 0,
        "engine still watches channels"
    );
    println!("after disconnect: 0 subscriptions, 0 channels, 0 client ids");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await???;
    Ok(())
}
