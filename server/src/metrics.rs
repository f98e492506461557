//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and its Prometheus
//! exporter. Counters are incremented where things happen; gauges that mirror state (open
//! connections, channels, subscriptions, readers) are read from the hub, listener and engine
//! at scrape time, so they can never drift.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::core_state::Core;

/// Messages accepted by `publish` (WebSocket and API).
pub(crate) const PUBLISHED: &str = "redistribute_messages_published_total";
/// Messages written to clients (every message of a batched frame counts).
pub(crate) const DELIVERED: &str = "redistribute_messages_delivered_total";
/// Gaps reported to subscribers during delivery (ranges trimmed or undeliverable).
pub(crate) const GAPS: &str = "redistribute_gaps_reported_total";
/// Entries per batch read from the engine's live feed.
pub(crate) const BATCH_ENTRIES: &str = "redistribute_live_batch_entries";
/// Live batches handed to subscriber queues / not queued (lagging or full).
pub(crate) const QUEUED_BATCHES: &str = "redistribute_live_batches_queued_total";
/// Live batches not queued because the subscriber was lagging or its queue was full.
pub(crate) const DROPPED_BATCHES: &str = "redistribute_live_batches_dropped_total";
/// Times a subscriber's live queue overflowed and it switched to catch-up reads.
pub(crate) const SLOW_CONSUMERS: &str = "redistribute_slow_consumer_events_total";
/// Engine operation latency in seconds, by `op` (publish, read, position).
pub(crate) const ENGINE_SECONDS: &str = "redistribute_engine_op_seconds";
/// Errors answered to clients, by `code`.
pub(crate) const ERRORS: &str = "redistribute_errors_total";
/// Refused tokens.
pub(crate) const AUTH_FAILURES: &str = "redistribute_auth_failures_total";
/// Open client connections, by `transport`.
pub(crate) const CONNECTIONS: &str = "redistribute_connections";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub(crate) fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(ENGINE_SECONDS.into()),
                &[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0, 5.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(BATCH_ENTRIES.into()),
                    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 512.0],
                )
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by an embedding application); the
        // handle then renders only what this recorder sees, which is still well-formed.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// How often histogram samples are folded into their buckets. The exporter keeps every
/// recorded sample until then (or until `/metrics` is scraped), so without upkeep an instance
/// nobody scrapes grows by a few bytes with every publish, batch and engine call.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] until `shutdown` fires.
pub(crate) fn spawn_upkeep(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => handle().run_upkeep(),
            }
        }
    });
}

/// Handles of the metrics recorded on hot paths (per delivery, batch or publish), resolved
/// once: the macros look the key up in the registry, copying it, on every call.
pub(crate) struct Hot {
    /// [`DELIVERED`].
    pub delivered: metrics::Counter,
    /// [`PUBLISHED`].
    pub published: metrics::Counter,
    /// [`BATCH_ENTRIES`].
    pub batch_entries: metrics::Histogram,
    /// [`GAPS`].
    pub gaps: metrics::Counter,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The hot-path handles (installing the recorder first, so they are never no-ops).
pub(crate) fn hot() -> &'static Hot {
    HOT.get_or_init(|| {
        handle();
        Hot {
            delivered: metrics::counter!(DELIVERED),
            published: metrics::counter!(PUBLISHED),
            batch_entries: metrics::histogram!(BATCH_ENTRIES),
            gaps: metrics::counter!(GAPS),
        }
    })
}

/// Records how long an engine operation took.
pub(crate) fn engine_op(op: &'static str, started: Instant) {
    metrics::histogram!(ENGINE_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
}

/// Renders the Prometheus text exposition, refreshing state gauges first.
pub(crate) fn render(core: &Core, tcp_connections: usize) -> String {
    let handle = handle();
    let hub = core.hub.stats();
    use std::sync::atomic::Ordering::Relaxed;
    metrics::counter!(QUEUED_BATCHES).absolute(hub.delivered_batches.load(Relaxed));
    metrics::counter!(DROPPED_BATCHES).absolute(hub.dropped_batches.load(Relaxed));
    metrics::counter!(SLOW_CONSUMERS).absolute(hub.lag_events.load(Relaxed));
    metrics::gauge!("redistribute_channels").set(core.hub.channel_count() as f64);
    metrics::gauge!("redistribute_subscriptions").set(core.hub.subscriber_total() as f64);
    metrics::gauge!("redistribute_tcp_connections").set(tcp_connections as f64);
    let engine = core.engine.stats();
    metrics::gauge!("redistribute_engine_readers").set(engine.readers as f64);
    metrics::gauge!("redistribute_engine_watched_channels").set(engine.watched as f64);
    metrics::counter!("redistribute_client_unblock_total").absolute(engine.unblocks);
    let live = core.engine.live_health();
    metrics::gauge!("redistribute_live_readers_failing").set(live.failing as f64);
    let failing_for = live.failing_for(Instant::now()).unwrap_or_default();
    metrics::gauge!("redistribute_live_readers_failing_seconds").set(failing_for.as_secs_f64());
    metrics::gauge!("redistribute_draining").set(if core.shutdown.is_cancelled() {
        1.0
    } else {
        0.0
    });
    handle.render()
}
