//! Presence end to end, against the real server binary on both engines: members appear and
//! disappear with subscribe, unsubscribe and disconnect; join/leave events are coalesced and
//! capped; presence is authorized like subscribe and refused on channels without it; an
//! instance killed without a drain loses its members within the documented time on the other
//! instance, which sees each leave once; and the member and event caps hold under a storm of
//! 1,000 joins.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::native::within;
use common::{client as ws_client, setup, sign, start_server, Backend, STEP};
use redistribute_client::{Client, Error, ErrorCode, Event, Events, Offset, PresenceMember};
use redistribute_testkit::RedisServer;
use serde_json::{json, Value};

const SECRET: &str = "presence-test-secret-of-at-least-32-bytes";

/// Flags: presence on `room:*`, short windows so the tests are quick.
fn flags(extra: &[&'static str]) -> Vec<&'static str> {
    let mut flags = vec![
        "--jwt-secret",
        SECRET,
        "--allow-open-api",
        "--presence-channels",
        "room:*",
        "--presence-window-ms",
        "200",
    ];
    flags.extend_from_slice(extra);
    flags
}

/// A token for `sub` that may subscribe to `subscribe`, with `info` as its info claim.
fn token(sub: &str, subscribe: &[&str], info: Option<Value>) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
        + 600;
    let mut claims = json!({"sub": sub, "exp": exp, "subscribe": subscribe, "publish": []});
    if let Some(info) = info {
        claims["info"] = info;
    }
    sign(SECRET, &claims)
}

async fn connect(targets: &[String], token: String) -> Result<Client> {
    let builder = Client::builder()
        .targets(targets)
        .token(token)
        .join_leave(true)
        .event_buffer(100_000)
        .backoff(Duration::from_millis(50), Duration::from_millis(500));
    Ok(within("connect", builder.connect()).await??)
}

fn users(members: &[PresenceMember]) -> Vec<String> {
    let mut users: Vec<String> = members.iter().filter_map(|m| m.user.clone()).collect();
    users.sort();
    users
}

/// Waits (at most `limit`) until `client`'s view of `channel`'s users is `want`.
async fn await_users(client: &Client, channel: &str, want: &[&str], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let members = within("presence", client.presence(channel)).await??;
        if users(&members) == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{channel}: users {:?}, want {want:?}", users(&members));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The joins and leaves (by user) of `channel` that arrive on `events` until `until` holds
/// for what arrived, within [`STEP`].
async fn changes_until(
    events: &mut Events,
    channel: &str,
    seen: &mut Changes,
    until: impl Fn(&Changes) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    while !until(seen) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .with_context(|| format!("waiting for presence events; so far {seen:?}"))?
            .context("the event stream ended")?;
        seen.add(channel, event)?;
    }
    Ok(())
}

/// Presence events seen: users joined and left, frames, and the largest frame.
#[derive(Debug, Default)]
struct Changes {
    joins: Vec<String>,
    leaves: Vec<String>,
    missed: u64,
    frames: usize,
    largest: usize,
}

impl Changes {
    fn add(&mut self, channel: &str, event: Event) -> Result<()> {
        if let Event::Presence {
            channel: c,
            joins,
            leaves,
            missed,
        } = event
        {
            ensure!(c == channel, "an event of {c}");
            self.frames += 1;
            self.largest = self.largest.max(joins.len() + leaves.len());
            let name = |m: PresenceMember| m.user.unwrap_or(m.client);
            self.joins.extend(joins.into_iter().map(name));
            self.leaves.extend(leaves.into_iter().map(name));
            self.missed += missed.unwrap_or(0);
        }
        Ok(())
    }

    fn count(list: &[String], user: &str) -> usize {
        list.iter().filter(|u| *u == user).count()
    }
}

async fn members_follow_subscriptions(backend: Backend) -> Result<()> {
    let s = setup(backend, &flags(&[])).await?;
    let targets = [s.server.ws_url()];
    let alice = connect(
        &targets,
        token("alice", &["room:*"], Some(json!({"name": "Alice"}))),
    )
    .await?;
    let bob = connect(&targets, token("bob", &["room:*", "chat"], None)).await?;
    let mut events = alice.events();
    let _a = within("subscribe", alice.subscribe("room:1", Offset::Latest)).await??;
    await_users(&alice, "room:1", &["alice"], STEP).await?;
    let b = within("subscribe", bob.subscribe("room:1", Offset::Latest)).await??;
    await_users(&alice, "room:1", &["alice", "bob"], STEP).await?;
    let members = within("presence", bob.presence("room:1")).await??;
    let a = members
        .iter()
        .find(|m| m.user.as_deref() == Some("alice"))
        .unwrap();
    ensure!(
        a.info == Some(json!({"name": "Alice"}).as_object().unwrap().clone()),
        "{a:?}"
    );
    ensure!(
        a.client
            != members
                .iter()
                .find(|m| m.user.as_deref() == Some("bob"))
                .unwrap()
                .client
    );
    let stats = within("stats", bob.presence_stats("room:1")).await??;
    ensure!((stats.clients, stats.users) == (2, 2), "{stats:?}");

    // The back-end API answers the same.
    let reply = s.server.http_get("/api/presence?channel=room:1").await?;
    ensure!(reply.status == 200, "{}", reply.status);
    let body: Value = serde_json::from_slice(&reply.body)?;
    ensure!(
        body["members"].as_array().map(Vec::len) == Some(2),
        "{body}"
    );
    let reply = s
        .server
        .http_get("/api/presence?channel=room:1&stats=true")
        .await?;
    let body: Value = serde_json::from_slice(&reply.body)?;
    ensure!(
        body == json!({"channel": "room:1", "clients": 2, "users": 2}),
        "{body}"
    );

    let mut seen = Changes::default();
    changes_until(&mut events, "room:1", &mut seen, |c| {
        Changes::count(&c.joins, "bob") == 1
    })
    .await?;

    // Unsubscribing leaves at once; so does a disconnect.
    drop(b);
    within("unsubscribe", bob.unsubscribe("room:1")).await??;
    changes_until(&mut events, "room:1", &mut seen, |c| {
        Changes::count(&c.leaves, "bob") == 1
    })
    .await?;
    await_users(&alice, "room:1", &["alice"], STEP).await?;
    let _b = within("subscribe", bob.subscribe("room:1", Offset::Latest)).await??;
    changes_until(&mut events, "room:1", &mut seen, |c| {
        Changes::count(&c.joins, "bob") == 2
    })
    .await?;
    within("close", bob.close()).await?;
    changes_until(&mut events, "room:1", &mut seen, |c| {
        Changes::count(&c.leaves, "bob") == 2
    })
    .await?;
    await_users(&alice, "room:1", &["alice"], STEP).await?;
    ensure!(
        seen.missed == 0 && Changes::count(&seen.joins, "alice") <= 1,
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn members_follow_subscribe_unsubscribe_and_disconnect_embedded() -> Result<()> {
    members_follow_subscriptions(Backend::Embedded).await
}

#[tokio::test]
async fn members_follow_subscribe_unsubscribe_and_disconnect_redis() -> Result<()> {
    members_follow_subscriptions(Backend::Redis).await
}

fn server_code(result: Result<impl std::fmt::Debug, Error>) -> Result<ErrorCode> {
    match result {
        Err(Error::Server { code, .. }) => Ok(code),
        other => bail!("expected a server error, got {other:?}"),
    }
}

/// Presence is refused where subscribing is (`forbidden`), on channels without presence
/// (`not_found`), and a token whose info is too large cannot join (`too_large`); so is a
/// subscriber beyond the member cap.
#[tokio::test]
async fn presence_is_authorized_and_bounded() -> Result<()> {
    let s = setup(
        Backend::Redis,
        &flags(&[
            "--presence-max-members",
            "2",
            "--presence-max-info-bytes",
            "64",
        ]),
    )
    .await?;
    let targets = [s.server.ws_url()];
    let carol = connect(&targets, token("carol", &["room:mine", "chat"], None)).await?;
    ensure!(server_code(carol.presence("room:other").await)? == ErrorCode::Forbidden);
    ensure!(server_code(carol.presence_stats("room:other").await)? == ErrorCode::Forbidden);
    ensure!(server_code(carol.presence("chat").await)? == ErrorCode::NotFound);
    let _sub = within("subscribe chat", carol.subscribe("chat", Offset::Latest)).await??;
    ensure!(server_code(carol.presence_stats("chat").await)? == ErrorCode::NotFound);
    let reply = s.server.http_get("/api/presence?channel=chat").await?;
    ensure!(reply.status == 404, "{}", reply.status);

    let big = json!({"bio": "x".repeat(100)});
    let dave = connect(&targets, token("dave", &["room:*"], Some(big))).await?;
    let refused = dave
        .subscribe("room:mine", Offset::Latest)
        .await
        .map(|_| ());
    ensure!(server_code(refused)? == ErrorCode::TooLarge);

    let _one = within("subscribe", carol.subscribe("room:mine", Offset::Latest)).await??;
    let erin = connect(&targets, token("erin", &["room:*"], None)).await?;
    let _two = within("subscribe", erin.subscribe("room:mine", Offset::Latest)).await??;
    let frank = connect(&targets, token("frank", &["room:*"], None)).await?;
    let full = frank
        .subscribe("room:mine", Offset::Latest)
        .await
        .map(|_| ());
    ensure!(server_code(full)? == ErrorCode::TooLarge);
    await_users(&carol, "room:mine", &["carol", "erin"], STEP).await?;
    // A refused subscriber is no subscriber: nothing of the channel reaches it.
    ensure!(users(&within("presence", frank.presence("room:mine")).await??) == ["carol", "erin"]);
    Ok(())
}

/// Two instances on one Redis; the one serving alice is killed (SIGKILL, no drain). On the
/// other, alice is gone from `presence` within the documented bound (expiry + heartbeat +
/// window), and bob, subscribed there, sees her leave exactly once.
#[tokio::test]
async fn a_killed_instance_loses_its_members_in_time_and_each_leave_is_seen_once() -> Result<()> {
    const TTL: Duration = Duration::from_secs(3);
    let redis = RedisServer::start().await?;
    let extra = flags(&["--presence-ttl-secs", "3"]);
    let mut one = start_server(Some(&redis), &extra).await?;
    let two = start_server(Some(&redis), &extra).await?;
    let alice = connect(&[one.ws_url()], token("alice", &["room:*"], None)).await?;
    let bob = connect(&[two.ws_url()], token("bob", &["room:*"], None)).await?;
    let mut events = bob.events();
    let _b = within("subscribe", bob.subscribe("room:k", Offset::Latest)).await??;
    let _a = within("subscribe", alice.subscribe("room:k", Offset::Latest)).await??;
    let mut seen = Changes::default();
    changes_until(&mut events, "room:k", &mut seen, |c| {
        Changes::count(&c.joins, "alice") == 1
    })
    .await?;
    await_users(&bob, "room:k", &["alice", "bob"], STEP).await?;

    one.kill().await?;
    let killed = Instant::now();
    // The documented bound: expiry + heartbeat (a third of it) + window; plus slack for a
    // noisy machine.
    let bound = TTL + TTL / 3 + Duration::from_millis(200);
    await_users(&bob, "room:k", &["bob"], bound + Duration::from_secs(10)).await?;
    let gone_after = killed.elapsed();
    changes_until(&mut events, "room:k", &mut seen, |c| {
        Changes::count(&c.leaves, "alice") >= 1
    })
    .await?;
    let left_after = killed.elapsed();
    // Alice's member could not have expired before its last refresh's expiry.
    ensure!(
        gone_after + Duration::from_millis(100) >= TTL / 3,
        "gone after {gone_after:?}"
    );
    ensure!(
        left_after <= bound + Duration::from_secs(10),
        "the leave came {left_after:?} after the kill (bound {bound:?})"
    );
    // Several heartbeats and queries later, still one leave.
    tokio::time::sleep(TTL).await;
    within("presence", bob.presence("room:k")).await??;
    while let Some(event) = events.try_recv() {
        seen.add("room:k", event)?;
    }
    ensure!(Changes::count(&seen.leaves, "alice") == 1, "{seen:?}");
    ensure!(Changes::count(&seen.leaves, "bob") == 0, "{seen:?}");
    Ok(())
}

/// 1,000 connections subscribe at once to a channel capped at 100 members: exactly 99 join
/// (the listener is the first member), the rest are refused `too_large`; the listener's
/// events are coalesced into frames of at most `--presence-max-events` changes, and what they
/// list plus what they count as missed is exactly the 99 joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_under_a_storm_of_1000_joins() -> Result<()> {
    let s = setup(
        Backend::Redis,
        &[
            "--presence-channels",
            "room:*",
            "--presence-max-members",
            "100",
            "--presence-max-events",
            "20",
            "--presence-window-ms",
            "300",
        ],
    )
    .await?;
    let listener = Client::builder()
        .target(s.server.ws_url())
        .join_leave(true)
        .event_buffer(100_000)
        .connect();
    let listener = within("connect", listener).await??;
    let mut events = listener.events();
    let _sub = within(
        "subscribe",
        listener.subscribe("room:storm", Offset::Latest),
    )
    .await??;
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let server = &s.server;
        tasks.push(async move {
            let mut ws = ws_client(server).await?;
            ws.set_timeout(STEP);
            let reply = ws
                .request(json!({"type": "subscribe", "channel": "room:storm"}))
                .await?;
            Ok::<_, anyhow::Error>((reply, ws))
        });
    }
    let mut joined = 0;
    let mut refused = 0;
    let mut sockets = Vec::new();
    for result in futures_util::future::join_all(tasks).await {
        let (reply, ws) = result?;
        match reply["type"].as_str() {
            Some("subscribed") => joined += 1,
            Some("error") if reply["code"] == "too_large" => refused += 1,
            _ => bail!("unexpected reply {reply}"),
        }
        sockets.push(ws);
    }
    ensure!(
        (joined, refused) == (99, 901),
        "{joined} joined, {refused} refused"
    );
    let stats = within("stats", listener.presence_stats("room:storm")).await??;
    ensure!((stats.clients, stats.users) == (100, 100), "{stats:?}");
    let mut seen = Changes::default();
    changes_until(&mut events, "room:storm", &mut seen, |c| {
        c.joins.len() as u64 + c.missed >= 99
    })
    .await?;
    ensure!(
        seen.largest <= 20,
        "a frame listed {} changes",
        seen.largest
    );
    ensure!(
        seen.joins.len() as u64 + seen.missed == 99 && seen.leaves.is_empty(),
        "{seen:?}"
    );
    Ok(())
}

/// An SSE stream's subscriptions are members while it is open; a long-poll's are not (it takes
/// a new connection per request).
#[tokio::test]
async fn sse_streams_are_members_and_long_polls_are_not() -> Result<()> {
    let s = setup(Backend::Embedded, &flags(&[])).await?;
    let bob = connect(&[s.server.ws_url()], token("bob", &["room:*"], None)).await?;
    let sam = token("sam", &["room:*"], None);
    let stream = common::sse::EventSource::connect(
        s.server.addr(),
        &format!("/sse?channel=room:s&token={sam}"),
    )
    .await?;
    await_users(&bob, "room:s", &["sam"], STEP).await?;
    drop(stream);
    await_users(&bob, "room:s", &[], STEP).await?;
    let poll = format!("/poll?channel=room:s&timeout=2&token={sam}");
    let held = tokio::spawn({
        let addr = s.server.addr();
        async move { redistribute_testkit::http_get(addr, &poll, STEP).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(users(&within("presence", bob.presence("room:s")).await??).is_empty());
    let answer = within("poll", held).await???;
    ensure!(answer.status == 200, "poll answered {}", answer.status);
    Ok(())
}

/// `n` raw WebSocket connections, each subscribed to `channel` on `server`.
async fn raw_members(
    server: &redistribute_testkit::ServerProcess,
    channel: &str,
    n: usize,
) -> Result<Vec<redistribute_testkit::WsClient>> {
    let mut sockets = Vec::new();
    for _ in 0..n {
        let mut ws = ws_client(server).await?;
        ws.subscribe(channel, None).await?;
        sockets.push(ws);
    }
    Ok(sockets)
}

/// A client without join/leave events (so the only Redis work is the members').
async fn quiet_client(server: &redistribute_testkit::ServerProcess) -> Result<Client> {
    let builder = Client::builder().target(server.ws_url());
    Ok(within("connect", builder.connect()).await??)
}

/// The heartbeat refreshes all 100 members an instance has in a channel with one script call
/// per heartbeat (not one Redis round trip per member).
#[tokio::test]
async fn a_heartbeat_is_one_script_call_per_channel_not_per_member() -> Result<()> {
    let redis = RedisServer::start().await?;
    let flags = ["--presence-channels", "room:*", "--presence-ttl-secs", "3"];
    let server = start_server(Some(&redis), &flags).await?;
    let _members = raw_members(&server, "room:h", 100).await?;
    let observer = quiet_client(&server).await?;
    ensure!(
        within("stats", observer.presence_stats("room:h"))
            .await??
            .clients
            == 100
    );
    redis.config_resetstat().await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let stats = redis.info_commandstats().await?;
    let elapsed = started.elapsed();
    let calls =
        stats.get("eval").copied().unwrap_or(0) + stats.get("evalsha").copied().unwrap_or(0);
    let refreshed = stats.get("zadd").copied().unwrap_or(0);
    // A heartbeat every second (a third of the expiry), one call each, plus one in flight.
    let heartbeats = elapsed.as_secs() + 2;
    eprintln!("{elapsed:?}: {calls} script calls, {refreshed} ZADDs inside them, for 100 members");
    ensure!(calls <= heartbeats, "{calls} script calls in {elapsed:?}");
    ensure!(
        refreshed >= 100,
        "the members were not refreshed: {stats:?}"
    );
    // Still all there: refreshed before they could expire.
    ensure!(
        within("stats", observer.presence_stats("room:h"))
            .await??
            .clients
            == 100
    );
    Ok(())
}

/// A drain (SIGTERM) removes its members at once, long before they would expire.
#[tokio::test]
async fn a_drained_instance_removes_its_members_at_once() -> Result<()> {
    let redis = RedisServer::start().await?;
    let flags = [
        "--presence-channels",
        "room:*",
        "--presence-ttl-secs",
        "120",
    ];
    let mut one = start_server(Some(&redis), &flags).await?;
    let two = start_server(Some(&redis), &flags).await?;
    let _members = raw_members(&one, "room:d", 20).await?;
    let observer = quiet_client(&two).await?;
    let stats = within("stats", observer.presence_stats("room:d")).await??;
    ensure!(stats.clients == 20, "{stats:?}");
    one.terminate()?;
    one.wait_exit(STEP).await?;
    let stats = within("stats", observer.presence_stats("room:d")).await??;
    ensure!(stats.clients == 0, "after the drain: {stats:?}");
    Ok(())
}
