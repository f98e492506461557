//! Checks of the live feed of watched channels: order, many channels, trims and byte-bounded
//! batches, and the shard-log reader falling behind its log.

use super::*;

pub(super) async fn watched_channels_feed_new_entries_in_order(mut s: Subject) -> Result<()> {
    let before = publish(&s, "live", json!({"n": -1})).await?;
    // A new watch reports the position it starts from (the first subscriber uses it).
    assert_eq!(watch_ready(&s, "live").await?, before);
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(publish(&s, "live", json!({ "n": n })).await?);
    }
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let batch = tokio::time::timeout(Duration::from_secs(10), s.live.recv())
            .await
            .context("live feed stalled")?
            .context("feed closed")?;
        assert_eq!(&**batch.channel(), "live");
        seen.extend(messages(&batch).into_iter().map(|m| m.offset));
    }
    assert_eq!(
        seen, ids,
        "entries after the watch point, each once, in order"
    );
    assert!(!seen.contains(&before));

    s.engine.unwatch(&"live".into());
    // Unwatching takes effect before the next read; give it a moment, then nothing arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while s.live.try_recv().is_ok() {}
    publish(&s, "live", json!({"n": 99})).await?;
    let more = tokio::time::timeout(Duration::from_millis(500), s.live.recv()).await;
    ensure!(more.is_err(), "an unwatched channel was still fed");
    Ok(())
}

/// Channels of many shards are fed at once, and a channel watched while every reader is blocked
/// in `XREAD` (30 s) starts at once: the reader is woken with `CLIENT UNBLOCK` (sent, in
/// cluster mode, to the node holding it).
pub(super) async fn many_channels_feed_live_and_new_watches_start_at_once(
    mut s: Subject,
) -> Result<()> {
    let names: Vec<String> = (0..40).map(|i| format!("many:{i}")).collect();
    let mut readies = Vec::new();
    for name in &names {
        let (tx, rx) = watch::channel(Ready::Pending);
        s.engine.watch(name.as_str().into(), tx);
        readies.push(rx);
    }
    for ready in &mut readies {
        tokio::time::timeout(
            Duration::from_secs(10),
            ready.wait_for(|r| *r != Ready::Pending),
        )
        .await
        .context("watch never became ready")??;
    }
    // Let the readers block in XREAD.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx, mut late) = watch::channel(Ready::Pending);
    s.engine.watch("many:late".into(), tx);
    tokio::time::timeout(
        Duration::from_secs(10),
        late.wait_for(|r| *r != Ready::Pending),
    )
    .await
    .context("a watch added while readers were blocked never became ready")??;
    let mut expected = std::collections::HashMap::new();
    for (i, name) in names
        .iter()
        .chain(["many:late".to_string()].iter())
        .enumerate()
    {
        let id = publish(&s, name, json!({ "i": i })).await?;
        expected.insert(name.clone(), id);
    }
    while !expected.is_empty() {
        let batch = tokio::time::timeout(Duration::from_secs(10), s.live.recv())
            .await
            .with_context(|| format!("live feed stalled; still waiting for {expected:?}"))?
            .context("feed closed")?;
        let channel = batch.channel().to_string();
        if let Some(id) = expected.get(&channel) {
            ensure!(batch.ids() == [*id], "{channel}: got {:?}", batch.ids());
            expected.remove(&channel);
        }
    }
    let stats = s.engine.stats();
    if s.channel_readers {
        ensure!(
            stats.unblocks > 0,
            "no CLIENT UNBLOCK woke a reader: {stats:?}"
        );
    }
    if s.cluster.is_some() {
        // One reader per shard at most (41 channels, 256 keys per reader).
        ensure!(stats.readers <= keys::DEFAULT_SHARDS as usize, "{stats:?}");
    }
    Ok(())
}

/// A live reader held up (a slow sink) while `maxlen: 1` trims a burst reports every entry it
/// missed as the gap of its next batch; a burst of large entries arrives in batches of at most
/// [`MAX_BATCH_BYTES`] (a single entry may exceed it).
pub(super) async fn live_reader_reports_trims_and_cuts_batches_by_bytes(
    mut s: Subject,
) -> Result<()> {
    let start_trim = watch_ready(&s, "burst").await?;
    let start_big = watch_ready(&s, "large").await?;
    s.gate.set(true);
    let mut trimmed_acked = vec![publish_maxlen(&s, "burst", json!({"n": -1}), 1).await?];
    s.gate.wait_held().await?;
    // The reader is held inside `deliver`; everything below queues up behind it.
    for n in 0..100 {
        trimmed_acked.push(publish_maxlen(&s, "burst", json!({ "n": n }), 1).await?);
    }
    let sizes = [
        100_000,
        100_000,
        MAX_BATCH_BYTES,
        10,
        MAX_BATCH_BYTES - 200,
        1,
        300_000,
        20_000,
        200_000,
        60_000,
    ];
    let mut big_acked = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        big_acked.push(publish(&s, "large", json!({ "i": i, "v": "y".repeat(*n) })).await?);
    }
    s.gate.set(false);
    let want = [
        ("burst".to_string(), *trimmed_acked.last().unwrap()),
        ("large".to_string(), *big_acked.last().unwrap()),
    ]
    .into_iter()
    .collect();
    let got = collect_live(&mut s, &want).await?;
    let of = |channel: &str| -> Vec<(Option<StreamId>, Option<Arc<Batch>>)> {
        got.iter()
            .filter(|b| &**b.channel() == channel)
            .map(|b| (b.gap_through(), Some(b.clone())))
            .collect()
    };
    let in_gaps = check_no_silent_loss(start_trim, &of("burst"), &trimmed_acked)?;
    if s.channel_readers {
        ensure!(in_gaps >= 90, "only {in_gaps} trimmed entries in gaps");
    }
    let large = of("large");
    ensure!(check_no_silent_loss(start_big, &large, &big_acked)? == 0);
    for (gap, batch) in &large {
        let batch = batch.as_ref().unwrap();
        ensure!(gap.is_none(), "a gap in an untrimmed channel");
        ensure!(
            batch.items_len() <= MAX_BATCH_BYTES || batch.len() == 1,
            "a live batch of {} entries holds {} bytes",
            batch.len(),
            batch.items_len()
        );
    }
    Ok(())
}

/// Shard logs: a reader held up (inside `deliver`) until its log was trimmed far past it
/// notices the break in the log's sequence and catches every channel up from its stream: each
/// acknowledged entry arrives once, in order, or inside an exact gap (only where the channel's
/// own trim removed it), and later entries keep coming live.
pub(super) async fn log_reader_behind_the_log_trim_catches_channels_up(
    mut s: Subject,
) -> Result<()> {
    let names = ["lag:trimmed", "lag:a", "lag:b", "lag:c"];
    let mut starts = Vec::new();
    for name in names {
        starts.push(watch_ready(&s, name).await?);
    }
    s.gate.set(true);
    let mut acked: Vec<Vec<StreamId>> = vec![Vec::new(); names.len()];
    acked[1].push(publish(&s, names[1], json!({"n": -1})).await?);
    s.gate.wait_held().await?;
    // The reader is held; the log (about 20 entries) is trimmed far past it meanwhile.
    for n in 0..600 {
        let i = n % names.len();
        let id = if i == 0 {
            publish_maxlen(&s, names[0], json!({ "n": n }), 3).await?
        } else {
            publish(&s, names[i], json!({ "n": n })).await?
        };
        acked[i].push(id);
    }
    s.gate.set(false);
    let want = names
        .iter()
        .zip(&acked)
        .map(|(n, a)| (n.to_string(), *a.last().unwrap()))
        .collect();
    let got = collect_live(&mut s, &want).await?;
    for (i, name) in names.iter().enumerate() {
        let deliveries: Vec<_> = got
            .iter()
            .filter(|b| &**b.channel() == *name)
            .map(|b| (b.gap_through(), Some(b.clone())))
            .collect();
        let in_gaps = check_no_silent_loss(starts[i], &deliveries, &acked[i])
            .with_context(|| format!("channel {name}"))?;
        if i == 0 {
            ensure!(in_gaps > 0, "the trimmed channel reported no gap");
        } else {
            ensure!(
                in_gaps == 0,
                "{name}: {in_gaps} entries in gaps, none trimmed"
            );
        }
    }
    // Live again: one more entry each arrives, alone.
    let mut want = std::collections::HashMap::new();
    for name in names {
        want.insert(
            name.to_string(),
            publish(&s, name, json!({"after": true})).await?,
        );
    }
    let got = collect_live(&mut s, &want).await?;
    for batch in got {
        if let Some(id) = want.get(&**batch.channel()) {
            ensure!(batch.ids().last() == Some(id), "{:?}", batch.ids());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_reader_behind_the_log_trim_catches_channels_up_redis() -> Result<()> {
    let s = redis_with(LiveReaders::Log, |c| c.log_maxlen = 20).await?;
    log_reader_behind_the_log_trim_catches_channels_up(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_reader_behind_the_log_trim_catches_channels_up_cluster() -> Result<()> {
    let s = redis_cluster_with(LiveReaders::Log, |c| {
        c.log_maxlen = 20;
        // One shard: every channel in the one log that is trimmed.
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.shards = 1;
        }
    })
    .await?;
    log_reader_behind_the_log_trim_catches_channels_up(s).await
}
