//! Exactly once against a model of the server's `/sse`, whatever the cuts.

use std::collections::BTreeMap;

use super::*;

/// A model server: per channel a log of message offsets (ms), trimmed below `floor`.
struct Model {
    logs: BTreeMap<String, Vec<u64>>,
}

impl Model {
    /// The event-stream text `/sse` answers for `url`, then the messages published
    /// later, interleaved by offset.
    fn stream(&self, url: &str) -> String {
        let query = url.split_once('?').unwrap().1;
        let (mut channels, mut offsets) = (Vec::new(), Vec::new());
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v.replace("%24", "$");
            match k {
                "channel" => channels.push(v),
                "offset" => offsets.push(v),
                _ => panic!("{k}"),
            }
        }
        let mut positions: Vec<u64> = channels
            .iter()
            .zip(&offsets)
            .map(|(c, o)| {
                let log = &self.logs[c];
                match o.as_str() {
                    "$" => log.last().copied().unwrap_or(0),
                    "0" => 0,
                    id => StreamId::parse(id).unwrap().ms,
                }
            })
            .collect();
        let token = |p: &[u64]| {
            p.iter()
                .map(|ms| format!("{ms}-0"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = format!("retry: 2000\n\nid: {}\n\n", token(&positions));
        let mut pending: Vec<(u64, usize)> = Vec::new();
        for (i, c) in channels.iter().enumerate() {
            for &ms in &self.logs[c] {
                if ms > positions[i] {
                    pending.push((ms, i));
                }
            }
        }
        pending.sort();
        for (ms, i) in pending {
            positions[i] = ms;
            out.push_str(&message(&channels[i], &token(&positions), ms));
            out.push_str(": heartbeat\n\n");
        }
        out
    }
}

/// Exactly once, in order, whatever the cuts: the stream is delivered in chunks of varying
/// size, dropped at varying points, and channels come and go; every channel's delivered
/// offsets are its log after the subscribe point, each once.
#[test]
fn exactly_once_across_drops_and_changes() {
    for seed in 0..40u64 {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rng = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut h = Harness::new();
        let mut model = Model {
            logs: BTreeMap::new(),
        };
        for (c, step) in [("a", 3u64), ("b", 5), ("c", 7)] {
            model
                .logs
                .insert(c.into(), (1..=40).map(|i| i * step).collect());
        }
        h.session.subscribe("a", Offset::Earliest).unwrap();
        h.start();
        let mut subscribed_c = false;
        for round in 0..30 {
            let (epoch, url) = h.last_open();
            let text = model.stream(&url);
            let bytes = text.as_bytes();
            let cut = (rng() as usize) % (bytes.len() + 1);
            let mut at = 0;
            while at < cut {
                let n = 1 + (rng() as usize) % 40;
                let end = (at + n).min(cut);
                h.fallback.stream_data(epoch, &bytes[at..end]);
                h.pump();
                at = end;
            }
            if round == 3 {
                h.session.subscribe("b", Offset::Earliest).unwrap();
                h.pump();
            } else if round == 8 && !subscribed_c {
                subscribed_c = true;
                h.session.subscribe("c", Offset::Id(id(70))).unwrap();
                h.pump();
            } else if h.last_open().0 == epoch {
                h.fallback.stream_ended(epoch, "cut");
                h.pump();
                h.wait(100);
            }
        }
        // Finish: deliver whole streams until nothing new comes.
        for _ in 0..3 {
            let (epoch, url) = h.last_open();
            h.fallback.stream_data(epoch, model.stream(&url).as_bytes());
            h.pump();
        }
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in h.take_events() {
            if let Event::Messages { channel, messages } = e {
                got.entry(channel)
                    .or_default()
                    .extend(messages.iter().map(|m| m.offset.ms));
            }
        }
        assert_eq!(got["a"], model.logs["a"], "seed {seed}");
        assert_eq!(got["b"], model.logs["b"], "seed {seed}");
        let c: Vec<u64> = model.logs["c"]
            .iter()
            .copied()
            .filter(|&ms| ms > 70)
            .collect();
        assert_eq!(got["c"], c, "seed {seed}");
    }
}
