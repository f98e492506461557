//! Frame encode/decode on the hot paths: a server `messages` frame (what subscribers receive)
//! and a client `publish` frame (what publishers send).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redistribute_protocol::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, Fields, Message,
    ServerFrame, StreamId,
};
use std::hint::black_box;

fn fields(seq: u64) -> Fields {
    let mut f = Fields::new();
    f.insert("seq".into(), seq.into());
    f.insert("t".into(), 1_700_000_000_000_000u64.into());
    f.insert("pad".into(), "x".repeat(64).into());
    f
}

fn messages(n: u64) -> ServerFrame {
    ServerFrame::Messages {
        channel: "load.0".into(),
        messages: (0..n)
            .map(|i| Message {
                offset: StreamId::new(1_700_000_000_000 + i, 0),
                fields: fields(i),
            })
            .collect(),
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    for n in [1u64, 16] {
        let frame = messages(n);
        let text = encode_server(&frame);
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("encode_messages_{n}"), |b| {
            b.iter(|| encode_server(black_box(&frame)))
        });
        g.bench_function(format!("decode_messages_{n}"), |b| {
            b.iter(|| decode_server(black_box(&text)).unwrap())
        });
    }
    let publish = ClientFrame::Publish {
        id: 7,
        channel: "load.0".into(),
        fields: fields(1),
        maxlen: None,
        idempotency_key: None,
    };
    let text = encode_client(&publish);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_publish", |b| {
        b.iter(|| encode_client(black_box(&publish)))
    });
    g.bench_function("decode_publish", |b| {
        b.iter(|| decode_client(black_box(&text)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
