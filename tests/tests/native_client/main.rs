//! End-to-end tests of the native client (`redistribute-client`) and the `sub` / `pub`
//! commands against real redis-server and server processes (issue 4, "Must show"). Every
//! wait is bounded; ports are chosen at run time.
//!
//! This file holds the helpers the tests share (bounded waits, steady publishers, exact
//! checks of what a subscriber received); the tests live in `disruption`, `publish`, `cli` and
//! `subscriptions`; subscription objects in `objects`.

mod cli;
#[path = "../common/mod.rs"]
mod common;
mod disruption;
mod objects;
mod proxy;
mod publish;
mod subscriptions;

use std::future::Future;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::native::{check_offsets, expect_silence, within};
use common::{start_server, STEP};
use futures_util::StreamExt;
use redistribute_client::{Client, Error, Event, Message, Offset, StreamId, Subscription};
use redistribute_testkit::{server_binary, RedisServer, RespValue};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinHandle;

use proxy::Proxy;

/// Connects a client with default settings to `targets`.
async fn connect(targets: &[String]) -> Result<Client> {
    Ok(within("connect", Client::builder().targets(targets).connect()).await??)
}

/// Publishes `{"seq": 0..n}` at a steady pace (bursts of 100, 20 ms apart), returning the
/// offsets.
async fn publish_steady(client: Client, channel: &'static str, n: u64) -> Result<Vec<StreamId>> {
    let mut offsets = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let offset = within("publish", client.publish(channel, json!({ "seq": seq }))).await??;
        offsets.push(offset);
        if seq % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(offsets)
}

/// Records every event with the time it arrived, until the client stops.
fn record_events(client: &Client) -> JoinHandle<Vec<(Instant, Event)>> {
    let mut events = client.events();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            let closed = matches!(event, Event::Closed { .. });
            seen.push((Instant::now(), event));
            if closed {
                break;
            }
        }
        seen
    })
}

/// The next message, within [`STEP`].
async fn next(sub: &mut Subscription) -> Result<Message> {
    within("next message", sub.next())
        .await?
        .context("the subscription ended")
}

/// Checks that `got` is exactly the messages published with `offsets`, seq 0.., in order.
fn check_exact(got: &[Message], offsets: &[StreamId]) -> Result<()> {
    for (i, m) in got.iter().enumerate() {
        ensure!(
            m.fields["seq"] == json!(i),
            "message {i} has seq {} (offset {}): lost or duplicated",
            m.fields["seq"],
            m.offset
        );
    }
    check_offsets(got, offsets)
}

/// Receives `total` messages, running `disrupt` once `at` messages have arrived; returns the
/// messages and when the disruption finished.
async fn receive_with_disruption<F: Future<Output = Result<()>>>(
    sub: &mut Subscription,
    total: usize,
    at: usize,
    disrupt: F,
) -> Result<(Vec<Message>, Instant)> {
    let mut got = Vec::with_capacity(total);
    while got.len() < at {
        got.push(next(sub).await?);
    }
    disrupt.await?;
    let disrupted = Instant::now();
    while got.len() < total {
        got.push(next(sub).await?);
    }
    Ok((got, disrupted))
}

/// When the first `Connected` event after `since` arrived.
fn reconnected_at(events: &[(Instant, Event)], since: Instant) -> Option<(Instant, String)> {
    events.iter().find_map(|(at, e)| match e {
        Event::Connected { target } if *at >= since => Some((*at, target.clone())),
        _ => None,
    })
}
