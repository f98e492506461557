//! Server hot paths: building a batch (each message encoded once), fanning one batch out to
//! many subscribers' live queues, and merging the batches waiting for one connection into
//! frames as WebSocket payloads (a whole batch's shared frame converted once per batch, then
//! cloned per subscriber).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use redistribute_protocol::StreamId;
use redistribute_server::internals::{
    websocket_text, Batch, BatchBuilder, Hub, LiveQueue, LiveQueueReceiver, LiveSink, Outbound,
    Subscriber, SubscriberShared,
};

const PAD: &str = "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"";

fn batch(channel: &str, first: u64, n: u64) -> Batch {
    let mut b = BatchBuilder::new(channel.into());
    for i in first..first + n {
        b.begin_entry(StreamId::new(1_700_000_000_000 + i, 0));
        b.field(true, "seq", &i.to_string());
        b.field(false, "t", "1700000000000000");
        b.field(false, "pad", PAD);
        b.end_entry();
    }
    b.finish().expect("not empty")
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for n in [1u64, 16] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("build_{n}"), |b| {
            b.iter(|| batch(black_box("load.0"), 0, n))
        });
    }
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for subscribers in [1_000usize, 10_000] {
        let hub = Hub::new();
        let channel: Arc<str> = "load.0".into();
        let mut receivers: Vec<LiveQueueReceiver> = Vec::with_capacity(subscribers);
        for conn in 0..subscribers {
            let (queue, rx) = LiveQueue::new(64, 1 << 20);
            receivers.push(rx);
            let shared = SubscriberShared::new();
            let _ready = hub.subscribe(
                &channel,
                Subscriber {
                    conn: conn as u64,
                    shared,
                    queue,
                },
            );
        }
        let one = Arc::new(batch("load.0", 0, 1));
        g.throughput(Throughput::Elements(subscribers as u64));
        g.bench_function(format!("deliver_to_{subscribers}"), |b| {
            b.iter(|| {
                hub.deliver(one.clone());
                for rx in &mut receivers {
                    black_box(rx.try_recv());
                }
            })
        });
    }
    g.finish();
}

fn outbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound");
    let whole = Arc::new(batch("load.0", 0, 1));
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_whole_batch", |b| {
        b.iter(|| {
            let mut out = Outbound::default();
            out.push(whole.clone(), 0);
            out.take_frames()
                .map(|f| websocket_text(f).len())
                .sum::<usize>()
        })
    });
    let batches: Vec<Arc<Batch>> = (0..16)
        .map(|i| Arc::new(batch(if i % 2 == 0 { "a" } else { "b" }, i, 1)))
        .collect();
    g.throughput(Throughput::Elements(16));
    g.bench_function("merge_16_batches_2_channels", |b| {
        b.iter_batched(
            || batches.clone(),
            |batches| {
                let mut out = Outbound::default();
                for batch in batches {
                    out.push(batch, 0);
                }
                out.take_frames()
                    .map(|f| websocket_text(f).len())
                    .sum::<usize>()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, build, fanout, outbound);
criterion_main!(benches);
