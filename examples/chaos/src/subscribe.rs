//! Subscribers of every kind (native client, raw WebSocket, SSE, long-poll), each subscribed
//! to every plain channel, recording deliveries and gaps in the ledger and obeying fault
//! commands (stall, connection reset, subscription churn).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SelectAll, Stream, StreamExt};
use redistribute_client::{Client, Event, Message, Offset, StreamId, Subscription};
use redistribute_testkit::{http_get, HttpStream};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, SubId};
use crate::rng::Rng;
use crate::wire::{self, Incoming};

/// Pause before reconnecting after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(300);
/// A connection with no frame for this long is considered dead (heartbeats and pings are
/// more frequent).
const SILENCE: Duration = Duration::from_secs(30);

/// A fault command for one subscriber.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Stop reading for this long.
    Stall(Duration),
    /// Drop the connection and resume (on the next instance) from the last offsets.
    Reset,
    /// Unsubscribe channel `n` (modulo the channels) and subscribe again from its last offset.
    Churn(usize),
}

/// A running subscriber, for the fault executor.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Name.
    pub name: String,
    /// Its command queue.
    pub tx: mpsc::Sender<Control>,
}

/// What every subscriber needs.
#[derive(Clone)]
pub struct Ctx {
    /// Its name.
    pub name: String,
    /// Plain channels to subscribe to.
    pub channels: Vec<String>,
    /// WebSocket URLs of the instances.
    pub urls: Vec<String>,
    /// HTTP addresses of the instances.
    pub addrs: Vec<SocketAddr>,
    /// The ledger.
    pub ledger: Arc<Ledger>,
    /// Cancelled when the run ends.
    pub stop: CancellationToken,
}

/// Sleeps for `d` unless `stop` comes first; false if it did.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Channel state on a raw WebSocket connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ChanState {
    Subscribing,
    Active,
    Unsubscribing,
}

/// A raw WebSocket subscriber: `$` at first, then resumes from its last offset on every new
/// connection; drops messages of a channel outside an active subscription (as the protocol
/// says a client does).
pub async fn raw_ws(ctx: Ctx, mut control: mpsc::Receiver<Control>, mut rng: Rng) {
    let subs: Vec<SubId> = ctx
        .channels
        .iter()
        .map(|c| ctx.ledger.register(&ctx.name, "ws", c, None))
        .collect();
    let mut target = rng.below(ctx.urls.len() as u64) as usize;
    let mut next_id = 0u64;
    'connection: while !ctx.stop.is_cancelled() {
        let url = &ctx.urls[target % ctx.urls.len()];
        target += 1;
        let Ok(mut ws) = wire::connect(url).await else {
            if !pause(&ctx.stop, RECONNECT_PAUSE).await {
                break;
            }
            continue;
        };
        let mut state = vec![ChanState::Subscribing; subs.len()];
        let mut requests: HashMap<u64, usize> = HashMap::new();
        for (i, &sub) in subs.iter().enumerate() {
            next_id += 1;
            requests.insert(next_id, i);
            if wire::send(&mut ws, &subscribe_frame(&ctx, sub, i, next_id))
                .await
                .is_err()
            {
                continue 'connection;
            }
        }
        loop {
            tokio::select! {
                _ = ctx.stop.cancelled() => break 'connection,
                Some(command) = control.recv() => match command {
                    Control::Stall(d) => {
                        if !pause(&ctx.stop, d).await {
                            break 'connection;
                        }
                    }
                    Control::Reset => continue 'connection,
                    Control::Churn(n) => {
                        let i = n % subs.len();
                        if state[i] == ChanState::Active {
                            next_id += 1;
                            requests.insert(next_id, i);
                            state[i] = ChanState::Unsubscribing;
                            let frame = json!({"type": "unsubscribe", "id": next_id,
                                "channel": ctx.channels[i]});
                            if wire::send(&mut ws, &frame).await.is_err() {
                                continue 'connection;
                            }
                        }
                    }
                },
                next = tokio::time::timeout(SILENCE, ws.next()) => {
                    let frame = match next.map(wire::classify) {
                        Ok(Incoming::Json(frame)) => frame,
                        Ok(Incoming::Other) => continue,
                        Ok(Incoming::Closed) | Err(_) => {
                            if !pause(&ctx.stop, RECONNECT_PAUSE).await {
                                break 'connection;
                            }
                            continue 'connection;
                        }
                    };
                    let channel_index = || {
                        let name = frame.get("channel")?.as_str()?;
                        ctx.channels.iter().position(|c| c == name)
                    };
                    let reply_to = frame
                        .get("id")
                        .and_then(Value::as_u64)
                        .and_then(|id| requests.remove(&id));
                    match wire::frame_type(&frame) {
                        "subscribed" => {
                            let Some(i) = reply_to else { continue };
                            state[i] = ChanState::Active;
                            if let Some(start) = wire::offset(&frame, "offset") {
                                ctx.ledger.set_start(subs[i], start);
                            }
                        }
                        "unsubscribed" => {
                            let Some(i) = reply_to else { continue };
                            next_id += 1;
                            requests.insert(next_id, i);
                            state[i] = ChanState::Subscribing;
                            let frame = subscribe_frame(&ctx, subs[i], i, next_id);
                            if wire::send(&mut ws, &frame).await.is_err() {
                                continue 'connection;
                            }
                        }
                        // A refused subscribe (storage unavailable, …): start over on a new
                        // connection.
                        "error" if reply_to.is_some() => {
                            if !pause(&ctx.stop, RECONNECT_PAUSE).await {
                                break 'connection;
                            }
                            continue 'connection;
                        }
                        "messages" => {
                            let Some(i) = channel_index() else { continue };
                            if state[i] != ChanState::Active {
                                continue;
                            }
                            for m in frame["messages"].as_array().into_iter().flatten() {
                                if let Some(offset) = wire::offset(m, "offset") {
                                    ctx.ledger.deliver(subs[i], offset, wire::content(&m["fields"]));
                                }
                            }
                        }
                        "gap" => {
                            let Some(i) = channel_index() else { continue };
                            if state[i] != ChanState::Active {
                                continue;
                            }
                            if let (Some(from), Some(to)) =
                                (wire::offset(&frame, "from"), wire::offset(&frame, "to"))
                            {
                                ctx.ledger.gap(subs[i], from, to);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn subscribe_frame(ctx: &Ctx, sub: SubId, i: usize, id: u64) -> Value {
    let offset = ctx
        .ledger
        .resume_point(sub)
        .map_or_else(|| "$".to_owned(), |o| o.to_string());
    json!({"type": "subscribe", "id": id, "channel": ctx.channels[i], "offset": offset})
}

/// Registers one subscription per channel, starting after the highest offset acknowledged so
/// far (`0-0` when none): what SSE and long-poll subscribers start from.
fn register_from_acknowledged(ctx: &Ctx, kind: &'static str) -> Vec<SubId> {
    ctx.channels
        .iter()
        .map(|c| {
            let start = ctx.ledger.max_acknowledged(c).unwrap_or_default();
            ctx.ledger.register(&ctx.name, kind, c, Some(start))
        })
        .collect()
}

/// `channel=a&channel=b&offset=X&offset=Y` for the given resume points.
fn channel_query(ctx: &Ctx, offsets: &[StreamId]) -> String {
    let mut query: Vec<String> = ctx
        .channels
        .iter()
        .map(|c| format!("channel={}", wire::query_escape(c)))
        .collect();
    query.extend(offsets.iter().map(|o| format!("offset={o}")));
    query.join("&")
}

/// An SSE subscriber: resumes with explicit offsets on every new stream.
pub async fn sse(ctx: Ctx, mut control: mpsc::Receiver<Control>, mut rng: Rng) {
    let subs = register_from_acknowledged(&ctx, "sse");
    let mut target = rng.below(ctx.addrs.len() as u64) as usize;
    'connection: while !ctx.stop.is_cancelled() {
        let addr = ctx.addrs[target % ctx.addrs.len()];
        target += 1;
        let offsets: Vec<StreamId> = subs
            .iter()
            .map(|&s| ctx.ledger.resume_point(s).unwrap_or_default())
            .collect();
        let path = format!("/sse?{}", channel_query(&ctx, &offsets));
        let stream = match HttpStream::open(addr, &path, &[], wire::IO_TIMEOUT).await {
            Ok(stream) if stream.status == 200 => stream,
            _ => {
                if !pause(&ctx.stop, RECONNECT_PAUSE).await {
                    break;
                }
                continue;
            }
        };
        // A reader task owns the stream (reads are not cancel-safe) and hands chunks over one
        // at a time, so a stalled subscriber stops reading the socket.
        let (tx, mut chunks) = mpsc::channel::<Option<Vec<u8>>>(1);
        let reader = tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let chunk = stream.next_chunk(SILENCE).await.ok().flatten();
                let end = chunk.is_none();
                if tx.send(chunk).await.is_err() || end {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(reader);
        let mut buffer = String::new();
        loop {
            tokio::select! {
                _ = ctx.stop.cancelled() => break 'connection,
                Some(command) = control.recv() => match command {
                    Control::Stall(d) => {
                        if !pause(&ctx.stop, d).await {
                            break 'connection;
                        }
                    }
                    Control::Reset | Control::Churn(_) => continue 'connection,
                },
                chunk = chunks.recv() => {
                    let Some(Some(chunk)) = chunk else {
                        if !pause(&ctx.stop, RECONNECT_PAUSE).await {
                            break 'connection;
                        }
                        continue 'connection;
                    };
                    buffer.push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""));
                    while let Some(end) = buffer.find("\n\n") {
                        let event: String = buffer.drain(..end + 2).collect();
                        sse_event(&ctx, &subs, &event);
                    }
                }
            }
        }
    }
}

/// Handles one SSE event block.
fn sse_event(ctx: &Ctx, subs: &[SubId], block: &str) {
    let mut event = "message";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    let Ok(value) = serde_json::from_str::<Value>(&data) else {
        return;
    };
    let Some(i) = value
        .get("channel")
        .and_then(Value::as_str)
        .and_then(|c| ctx.channels.iter().position(|x| x == c))
    else {
        return;
    };
    match event {
        "message" => {
            if let Some(offset) = wire::offset(&value, "offset") {
                ctx.ledger
                    .deliver(subs[i], offset, wire::content(&value["fields"]));
            }
        }
        "gap" => {
            if let (Some(from), Some(to)) =
                (wire::offset(&value, "from"), wire::offset(&value, "to"))
            {
                ctx.ledger.gap(subs[i], from, to);
            }
        }
        _ => {}
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A long-poll subscriber: polls with the `offsets` of the previous answer.
pub async fn poll(ctx: Ctx, mut control: mpsc::Receiver<Control>, mut rng: Rng) {
    let subs = register_from_acknowledged(&ctx, "poll");
    let mut offsets: Vec<StreamId> = subs
        .iter()
        .map(|&s| ctx.ledger.resume_point(s).unwrap_or_default())
        .collect();
    let mut target = rng.below(ctx.addrs.len() as u64) as usize;
    while !ctx.stop.is_cancelled() {
        while let Ok(command) = control.try_recv() {
            match command {
                Control::Stall(d) => {
                    if !pause(&ctx.stop, d).await {
                        return;
                    }
                }
                Control::Reset | Control::Churn(_) => target += 1,
            }
        }
        let addr = ctx.addrs[target % ctx.addrs.len()];
        let path = format!(
            "/poll?{}&timeout=2&client_id={}",
            channel_query(&ctx, &offsets),
            ctx.name
        );
        let answer = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            answer = http_get(addr, &path, Duration::from_secs(8)) => answer,
        };
        let response = match answer {
            Ok(r) if r.status == 200 => r,
            Ok(r) => {
                let wait = r
                    .header("x-reconnect-in")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(500u64)
                    .max(100);
                if !pause(&ctx.stop, Duration::from_millis(wait)).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                target += 1;
                if !pause(&ctx.stop, RECONNECT_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        let Ok(body) = response.json() else {
            continue;
        };
        let index = |v: &Value| {
            let name = v.get("channel")?.as_str()?;
            ctx.channels.iter().position(|c| c == name)
        };
        for gap in body["gaps"].as_array().into_iter().flatten() {
            if let (Some(i), Some(from), Some(to)) = (
                index(gap),
                wire::offset(gap, "from"),
                wire::offset(gap, "to"),
            ) {
                ctx.ledger.gap(subs[i], from, to);
            }
        }
        for m in body["messages"].as_array().into_iter().flatten() {
            if let (Some(i), Some(offset)) = (index(m), wire::offset(m, "offset")) {
                ctx.ledger
                    .deliver(subs[i], offset, wire::content(&m["fields"]));
            }
        }
        for (i, channel) in ctx.channels.iter().enumerate() {
            if let Some(next) = body["offsets"]
                .get(channel)
                .and_then(Value::as_str)
                .and_then(|o| StreamId::parse(o).ok())
            {
                offsets[i] = next;
            }
        }
    }
}

type Tagged = Pin<Box<dyn Stream<Item = (usize, u64, Message)> + Send>>;

/// A native-client subscriber: the client resumes by itself across reconnects; churn and
/// reset are done through its API (unsubscribe and subscribe from the last offset; close and
/// a new client).
pub async fn native(ctx: Ctx, mut control: mpsc::Receiver<Control>, mut rng: Rng) {
    let subs: Vec<SubId> = ctx
        .channels
        .iter()
        .map(|c| ctx.ledger.register(&ctx.name, "native", c, None))
        .collect();
    let mut generation = vec![0u64; subs.len()];
    'client: while !ctx.stop.is_cancelled() {
        let mut urls = ctx.urls.clone();
        let shift = rng.below(urls.len() as u64) as usize;
        urls.rotate_left(shift);
        let Ok(client) = Client::builder()
            .targets(urls)
            .request_timeout(Duration::from_secs(5))
            .event_buffer(65_536)
            .build()
        else {
            return;
        };
        let mut events = client.events();
        let mut merged: SelectAll<Tagged> = SelectAll::new();
        for i in 0..subs.len() {
            generation[i] += 1;
            let Some(stream) = native_subscribe(&ctx, &client, subs[i], i, generation[i]).await
            else {
                client.close().await;
                continue 'client;
            };
            merged.push(stream);
        }
        loop {
            tokio::select! {
                _ = ctx.stop.cancelled() => {
                    client.close().await;
                    break 'client;
                }
                event = events.recv() => match event {
                    Some(Event::Gap { channel, from, to }) => {
                        if let Some(i) = ctx.channels.iter().position(|c| *c == channel) {
                            ctx.ledger.gap(subs[i], from, to);
                        }
                    }
                    Some(Event::Lagged { missed }) => {
                        eprintln!("chaos: {}: missed {missed} client events (gaps may be unreported)", ctx.name);
                    }
                    Some(Event::SubscriptionLost { channel, error }) => {
                        eprintln!("chaos: {}: subscription {channel} lost: {error}", ctx.name);
                        client.close().await;
                        continue 'client;
                    }
                    Some(_) => {}
                    None => {
                        client.close().await;
                        continue 'client;
                    }
                },
                Some(command) = control.recv() => match command {
                    Control::Stall(d) => {
                        if !pause(&ctx.stop, d).await {
                            client.close().await;
                            break 'client;
                        }
                    }
                    Control::Reset => {
                        client.close().await;
                        continue 'client;
                    }
                    Control::Churn(n) => {
                        let i = n % subs.len();
                        let unsubscribed = tokio::time::timeout(
                            Duration::from_secs(5),
                            client.unsubscribe(ctx.channels[i].clone()),
                        )
                        .await;
                        if !matches!(unsubscribed, Ok(Ok(()))) {
                            client.close().await;
                            continue 'client;
                        }
                        generation[i] += 1;
                        match native_subscribe(&ctx, &client, subs[i], i, generation[i]).await {
                            Some(stream) => merged.push(stream),
                            None => {
                                client.close().await;
                                continue 'client;
                            }
                        }
                    }
                },
                item = merged.next(), if !merged.is_empty() => {
                    let Some((i, g, message)) = item else { continue };
                    if g == generation[i] {
                        let fields = serde_json::to_value(&message.fields).unwrap_or(Value::Null);
                        ctx.ledger.deliver(subs[i], message.offset, wire::content(&fields));
                    }
                }
            }
        }
    }
}

/// Subscribes channel `i` from the subscription's resume point (`Latest` the first time),
/// retrying for a while; `None` if it keeps failing or the run stops.
async fn native_subscribe(
    ctx: &Ctx,
    client: &Client,
    sub: SubId,
    i: usize,
    generation: u64,
) -> Option<Tagged> {
    for _ in 0..20 {
        let offset = ctx
            .ledger
            .resume_point(sub)
            .map_or(Offset::Latest, Offset::Id);
        let attempt = client.subscribe(ctx.channels[i].clone(), offset);
        match tokio::time::timeout(Duration::from_secs(8), attempt).await {
            Ok(Ok(subscription)) => {
                ctx.ledger.set_start(sub, subscription.start_offset());
                return Some(tag(subscription, i, generation));
            }
            _ => {
                if !pause(&ctx.stop, RECONNECT_PAUSE).await {
                    return None;
                }
            }
        }
    }
    None
}

fn tag(subscription: Subscription, i: usize, generation: u64) -> Tagged {
    Box::pin(subscription.map(move |m| (i, generation, m)))
}
