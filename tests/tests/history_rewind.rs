//! End-to-end tests of history and rewind over the protocol, with the native client and raw
//! WebSocket frames against the real server on both engines (a real redis-server for the
//! Redis one): paging through 10,000 entries forwards and backwards (matching `XRANGE` on
//! Redis), a trimmed range reporting the trim, rewinds racing concurrent publishes (every
//! message after the resolved offset exactly once, in order), and hostile requests (huge
//! limits, bad and reversed offsets, unknown and empty channels, 1 MB messages in a page).
//! Every wait is bounded.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::native::{check_offsets, within};
use common::{setup, Backend};
use futures_util::future::join_all;
use redistribute_client::{
    Client, Error, HistoryOptions, HistoryPage, Offset, PublishOptions, StreamId, SubscribeOptions,
    SubscriptionEvent,
};
use redistribute_testkit::{RespValue, WsClient};
use serde_json::{json, Value};

const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Redis];

async fn connect(url: &str) -> Result<Client> {
    let builder = Client::builder()
        .targets([url])
        .subscription_buffer(100_000)
        .backoff(Duration::from_millis(50), Duration::from_millis(500));
    Ok(within("connect", builder.connect()).await??)
}

/// Publishes `n` messages `{"seq": …}` with up to 200 in flight; the offsets, ascending.
async fn publish_many(
    client: &Client,
    channel: &str,
    n: u64,
    maxlen: Option<u64>,
) -> Result<Vec<StreamId>> {
    let mut offsets = Vec::new();
    let seqs: Vec<u64> = (0..n).collect();
    for chunk in seqs.chunks(200) {
        let stored = chunk.iter().map(|seq| {
            let options = PublishOptions {
                maxlen,
                ..PublishOptions::default()
            };
            client.publish_with(channel, json!({ "seq": seq }), options)
        });
        for offset in within("publishes", join_all(stored)).await? {
            offsets.push(offset?);
        }
    }
    offsets.sort();
    Ok(offsets)
}

async fn history(client: &Client, channel: &str, options: HistoryOptions) -> Result<HistoryPage> {
    Ok(within("history", client.history(channel, options)).await??)
}

/// Every page of `(from, to]`, following `next` while `more`.
async fn all_pages(
    client: &Client,
    channel: &str,
    mut options: HistoryOptions,
) -> Result<(Vec<StreamId>, usize)> {
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = history(client, channel, options).await?;
        pages += 1;
        ensure!(pages < 100_000, "paging does not end");
        ensure!(!page.truncated, "nothing was trimmed: {page:?}");
        seen.extend(page.messages.iter().map(|m| m.offset));
        if !page.more {
            return Ok((seen, pages));
        }
        if options.reverse {
            options.to = Some(page.next);
        } else {
            options.from = Some(Offset::Id(page.next));
        }
    }
}

/// The stream's IDs as `XRANGE` lists them.
async fn xrange(redis: &redistribute_testkit::RedisServer, channel: &str) -> Result<Vec<StreamId>> {
    let key = format!("rd:{channel}");
    let RespValue::Array(entries) = redis.command(&["XRANGE", &key, "-", "+"]).await? else {
        anyhow::bail!("XRANGE did not answer an array");
    };
    entries
        .iter()
        .map(|e| match e {
            RespValue::Array(pair) => match pair.first() {
                Some(RespValue::Bulk(id)) => Ok(StreamId::parse(std::str::from_utf8(id)?)?),
                other => anyhow::bail!("an entry without an ID: {other:?}"),
            },
            other => anyhow::bail!("not an entry: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_10000_entries_both_ways() -> Result<()> {
    for backend in BACKENDS {
        let setup = setup(backend, &[]).await?;
        let client = connect(&setup.server.ws_url()).await?;
        let stored = publish_many(&client, "ledger", 10_000, None).await?;
        if let Some(redis) = &setup.redis {
            assert_eq!(xrange(redis, "ledger").await?, stored, "XRANGE");
        }
        for limit in [1_000, 997] {
            let forward = HistoryOptions {
                limit: Some(limit),
                ..HistoryOptions::default()
            };
            let (seen, pages) = all_pages(&client, "ledger", forward).await?;
            assert_eq!(seen, stored, "{backend:?} forward, limit {limit}");
            ensure!(pages <= 10_000 / limit as usize + 2, "{pages} pages");
            let backward = HistoryOptions {
                reverse: true,
                ..forward
            };
            let (mut seen, _) = all_pages(&client, "ledger", backward).await?;
            seen.reverse();
            assert_eq!(seen, stored, "{backend:?} backward, limit {limit}");
        }
        // A window (from, to], both ways.
        let window = HistoryOptions {
            from: Some(Offset::Id(stored[4_000])),
            to: Some(stored[4_500]),
            limit: Some(1_000),
            reverse: false,
        };
        let page = history(&client, "ledger", window).await?;
        check_offsets(&page.messages, &stored[4_001..=4_500])?;
        ensure!(!page.more, "the window is done");
        let page = history(
            &client,
            "ledger",
            HistoryOptions {
                reverse: true,
                ..window
            },
        )
        .await?;
        let mut newest_first = stored[4_001..=4_500].to_vec();
        newest_first.reverse();
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            newest_first
        );
        client.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_a_trimmed_range_reports_the_trim() -> Result<()> {
    for backend in BACKENDS {
        let setup = setup(backend, &[]).await?;
        let client = connect(&setup.server.ws_url()).await?;
        let stored = publish_many(&client, "short", 200, Some(20)).await?;
        let forward = history(&client, "short", HistoryOptions::default()).await?;
        ensure!(forward.truncated, "{backend:?}: the trim is reported");
        let gap = forward.gap.context("the trimmed range")?;
        let first = forward
            .messages
            .first()
            .context("retained messages")?
            .offset;
        assert_eq!(gap.from, StreamId::ZERO);
        ensure!(
            gap.to < first,
            "the gap ends before the first retained message"
        );
        let kept = stored
            .iter()
            .position(|o| *o == first)
            .context("a stored offset")?;
        check_offsets(&forward.messages, &stored[kept..])?;
        ensure!(
            stored[kept - 1] <= gap.to,
            "the gap covers every removed message"
        );
        let backward = HistoryOptions {
            reverse: true,
            ..HistoryOptions::default()
        };
        let page = history(&client, "short", backward).await?;
        ensure!(
            page.truncated && page.gap == Some(gap),
            "{backend:?}: reverse too: {page:?}"
        );
        ensure!(!page.more);
        // A range after the trim is whole.
        let after = HistoryOptions {
            from: Some(Offset::Id(first)),
            ..HistoryOptions::default()
        };
        ensure!(!history(&client, "short", after).await?.truncated);
        client.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewinds_racing_publishes_deliver_every_later_message_once_in_order() -> Result<()> {
    const BEFORE: u64 = 300;
    const DURING: u64 = 3_000;
    const REWIND: u64 = 50;
    for backend in BACKENDS {
        let setup = setup(backend, &[]).await?;
        let url = setup.server.ws_url();
        let publisher = connect(&url).await?;
        let mut stored = publish_many(&publisher, "race", BEFORE, None).await?;
        let racing = {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for seq in 0..DURING {
                    let offset = publisher.publish("race", json!({ "racing": seq })).await?;
                    offsets.push(offset);
                }
                anyhow::Ok(offsets)
            })
        };
        // Rewinding subscribers join while the publisher runs.
        let mut subscribers = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let client = connect(&url).await?;
            let options = SubscribeOptions::new().rewind(REWIND);
            let sub = within("subscribe", client.subscribe_with("race", options)).await??;
            subscribers.push((client, sub));
        }
        stored.extend(within("racing publishes", racing).await???);
        stored.sort();
        let last = *stored.last().context("stored")?;
        for (client, mut sub) in subscribers {
            let start = sub.start_offset();
            let index = stored
                .iter()
                .position(|o| *o == start)
                .context("the resolved offset is a stored one")?;
            ensure!(
                index + 1 + REWIND as usize >= BEFORE as usize,
                "{backend:?}: rewound from {index}, fewer than {REWIND} messages before the call"
            );
            let mut got = Vec::new();
            while got
                .last()
                .is_none_or(|m: &redistribute_client::Message| m.offset < last)
            {
                let message = within("a message", sub.recv())
                    .await?
                    .context("stream ended")?;
                got.push(message);
            }
            check_offsets(&got, &stored[index + 1..])?;
            client.close().await;
        }
        publisher.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_one_is_the_latest_value_and_rewind_with_an_offset_is_refused() -> Result<()> {
    for backend in BACKENDS {
        let setup = setup(backend, &[]).await?;
        let client = connect(&setup.server.ws_url()).await?;
        let stored = publish_many(&client, "price", 5, None).await?;
        let latest = SubscribeOptions::new().rewind(1);
        let mut sub = within("subscribe", client.subscribe_with("price", latest.clone())).await??;
        assert_eq!(sub.start_offset(), stored[3]);
        let first = within("latest", sub.recv())
            .await?
            .context("latest value")?;
        assert_eq!(first.offset, stored[4]);
        // An empty channel: rewinding starts at the beginning, and live follows.
        let mut empty = within("subscribe", client.subscribe_with("fresh", latest)).await??;
        assert_eq!(empty.start_offset(), StreamId::ZERO);
        let next = within("publish", client.publish("fresh", json!({"v": 1}))).await??;
        assert_eq!(
            within("live", empty.recv()).await?.context("live")?.offset,
            next
        );
        let both = SubscribeOptions::new().offset(Offset::Earliest).rewind(1);
        let refused = within("subscribe", client.subscribe_with("price", both)).await?;
        ensure!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        let too_far = SubscribeOptions::new().rewind(1_001);
        let refused = within("subscribe", client.subscribe_with("price", too_far)).await?;
        ensure!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        client.close().await;
    }
    Ok(())
}

/// The reply to a raw frame.
async fn raw(ws: &mut WsClient, frame: Value) -> Result<Value> {
    within("reply", ws.request(frame)).await?
}

fn error_code(reply: &Value) -> Option<&str> {
    (reply["type"] == "error")
        .then(|| reply["code"].as_str())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_history_and_rewind_requests_get_clear_answers() -> Result<()> {
    for backend in BACKENDS {
        let setup = setup(backend, &[]).await?;
        let mut ws = WsClient::connect(&setup.server.ws_url()).await?;
        ws.set_timeout(Duration::from_secs(30));
        let mut offsets = Vec::new();
        for i in 0..3 {
            offsets.push(ws.publish("h", json!({ "i": i })).await?);
        }
        let refused = [
            json!({"type": "history", "channel": "h", "limit": 1_001}),
            json!({"type": "history", "channel": "h", "limit": 18_446_744_073_709_551_615u64}),
            json!({"type": "history", "channel": "h", "limit": 0}),
            json!({"type": "history", "channel": "h", "limit": -1}),
            json!({"type": "history", "channel": "h", "from": "x-1"}),
            json!({"type": "history", "channel": "h", "to": "$"}),
            json!({"type": "history", "channel": "h", "from": "9-0", "to": "8-0"}),
            json!({"type": "history", "channel": "h", "reverse": "yes"}),
            json!({"type": "history", "channel": "a b"}),
            json!({"type": "history"}),
            json!({"type": "subscribe", "channel": "h", "rewind": 1_001}),
            json!({"type": "subscribe", "channel": "h", "rewind": 1, "offset": "0"}),
            json!({"type": "subscribe", "channel": "h", "rewind": 1, "group": "g", "consumer": "c"}),
        ];
        for frame in refused {
            let reply = raw(&mut ws, frame.clone()).await?;
            assert_eq!(
                error_code(&reply),
                Some("bad_request"),
                "{backend:?} {frame}: {reply}"
            );
            ensure!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        // Unknown and empty ranges: empty pages, not errors.
        for frame in [
            json!({"type": "history", "channel": "never-written"}),
            json!({"type": "history", "channel": "never-written", "reverse": true}),
            json!({"type": "history", "channel": "h", "from": "$"}),
            json!({"type": "history", "channel": "h", "from": offsets[2]}),
            json!({"type": "history", "channel": "h", "from": offsets[1], "to": offsets[1]}),
            json!({"type": "history", "channel": "h", "to": "0-0", "reverse": true}),
        ] {
            let reply = raw(&mut ws, frame.clone()).await?;
            assert_eq!(
                reply["type"], "history_page",
                "{backend:?} {frame}: {reply}"
            );
            assert_eq!(reply["messages"], json!([]), "{frame}");
            assert_eq!(reply["more"], false, "{frame}");
            assert_eq!(reply["truncated"], false, "{frame}");
        }
        // The exact JSON of a page.
        let reply = raw(
            &mut ws,
            json!({"type": "history", "id": 77, "channel": "h", "to": offsets[1], "limit": 1, "reverse": true}),
        )
        .await?;
        let before = StreamId::parse(&offsets[1])?
            .predecessor()
            .context("before")?;
        assert_eq!(
            reply,
            json!({"type": "history_page", "id": 77, "channel": "h",
                   "messages": [{"offset": offsets[1], "fields": {"i": 1}}],
                   "next": before.to_string(), "more": true, "truncated": false})
        );
        // Large messages: a page is bounded in bytes, yet always carries one message.
        let big = "x".repeat(1_000_000);
        for _ in 0..3 {
            ws.publish("big", json!({ "v": big })).await?;
        }
        for reverse in [false, true] {
            let mut pages = 0;
            let mut frame = json!({"type": "history", "channel": "big", "reverse": reverse});
            loop {
                let reply = raw(&mut ws, frame.clone()).await?;
                assert_eq!(reply["type"], "history_page", "{reply}");
                let n = reply["messages"].as_array().context("messages")?.len();
                ensure!(
                    n == 1,
                    "{backend:?} reverse {reverse} page {pages}: {n} 1 MB messages in {}",
                    json!({"more": reply["more"], "next": reply["next"], "frame": frame})
                );
                pages += 1;
                if reply["more"] == false {
                    break;
                }
                let key = if reverse { "to" } else { "from" };
                frame[key] = reply["next"].clone();
                ensure!(pages <= 3, "more than three pages");
            }
            assert_eq!(pages, 3, "{backend:?} reverse: {reverse}");
        }
        // Still one healthy connection after all of it.
        ws.publish("h", json!({"i": 3})).await?;
    }
    Ok(())
}

/// `redistribute history …` with `args`: its stdout lines as JSON, its stderr and status.
async fn cli_history(url: &str, args: &[&str]) -> Result<(Vec<Value>, String, bool)> {
    let output = tokio::process::Command::new(redistribute_testkit::server_binary())
        .arg("history")
        .args(args)
        .args(["--target", url])
        .kill_on_drop(true)
        .output();
    let output = within("redistribute history", output).await??;
    let lines = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()?;
    Ok((
        lines,
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_history_pages_like_sub_and_reports_trims() -> Result<()> {
    let setup = setup(Backend::Redis, &[]).await?;
    let url = setup.server.ws_url();
    let client = connect(&url).await?;
    let stored = publish_many(&client, "cli", 2_500, None).await?;
    let (all, _, ok) = cli_history(&url, &["cli"]).await?;
    ensure!(ok, "history exits 0");
    let offsets: Vec<String> = all
        .iter()
        .map(|l| l["offset"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<String> = stored.iter().map(ToString::to_string).collect();
    assert_eq!(offsets, expected, "the whole channel, read 1000 a request");
    assert_eq!(all[0]["channel"], "cli");
    assert_eq!(all[0]["fields"]["seq"], 0);
    let (newest, _, _) = cli_history(&url, &["cli", "--reverse", "--limit", "3"]).await?;
    let got: Vec<&str> = newest.iter().filter_map(|l| l["offset"].as_str()).collect();
    assert_eq!(got, [&expected[2_499], &expected[2_498], &expected[2_497]]);
    let (window, _, _) = cli_history(
        &url,
        &["cli", "--from", &expected[9], "--to", &expected[11]],
    )
    .await?;
    assert_eq!(window.len(), 2);
    publish_many(&client, "cli-short", 30, Some(5)).await?;
    let (kept, stderr, ok) = cli_history(&url, &["cli-short"]).await?;
    ensure!(ok && !kept.is_empty() && kept.len() < 30);
    ensure!(
        stderr.contains("trimmed: (0-0, "),
        "the trim is reported: {stderr}"
    );
    let (_, stderr, ok) = cli_history(&url, &["cli", "--to", "nope"]).await?;
    ensure!(!ok && stderr.contains("nope"), "{stderr}");
    client.close().await;
    Ok(())
}

/// A subscription object rewinds like `subscribe_with`, and reads its channel's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_object_rewinds_and_reads_its_history() -> Result<()> {
    for backend in BACKENDS {
        let setup = setup(backend, &[]).await?;
        let client = connect(&setup.server.ws_url()).await?;
        let stored = publish_many(&client, "obj", 5, None).await?;
        let options = SubscribeOptions::new().rewind(2);
        let mut object = within("new", client.new_subscription("obj", options)).await??;
        let start = within("subscribe", object.subscribe()).await??;
        assert_eq!(start.offset, stored[2]);
        let mut got = Vec::new();
        while got.len() < 2 {
            match within("event", object.recv()).await?.context("event")? {
                SubscriptionEvent::Message(m) => got.push(m.offset),
                SubscriptionEvent::Subscribed(_) => {}
                other => bail!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, stored[3..].to_vec());
        let newest = HistoryOptions {
            limit: Some(2),
            reverse: true,
            ..HistoryOptions::default()
        };
        let page = within("history", object.history(newest)).await??;
        let offsets: Vec<StreamId> = page.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![stored[4], stored[3]]);
        client.close().await;
    }
    Ok(())
}
