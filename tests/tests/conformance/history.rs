//! Checks of appends, offsets, history pages, trim watermarks, idempotency keys and channel
//! creation, run against every engine.

use super::*;

pub(super) async fn ids_increase_and_history_reads_after_an_offset(s: Subject) -> Result<()> {
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(publish(&s, "c", json!({"n": n, "nested": {"a": [1, "two", null]}})).await?);
    }
    ensure!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    let all = read_all(&s, "c", StreamId::ZERO).await?;
    assert_eq!(all.iter().map(|m| m.offset).collect::<Vec<_>>(), ids);
    assert_eq!(all[3].fields["n"], 3);
    assert_eq!(all[3].fields["nested"]["a"][1], "two");
    let after = read_all(&s, "c", ids[9]).await?;
    assert_eq!(after.first().map(|m| m.offset), Some(ids[10]));
    assert_eq!(after.len(), 10);
    // Pages.
    let channel: Arc<str> = "c".into();
    let page = s.engine.read(&channel, ids[0], 5, usize::MAX).await?;
    assert_eq!(page.gap_through, None);
    assert_eq!(page.batch.context("page")?.ids(), &ids[1..6]);
    let end = s.engine.read(&channel, ids[19], 5, usize::MAX).await?;
    assert!(end.batch.is_none() && end.gap_through.is_none());
    // Other channels are independent.
    assert!(read_all(&s, "elsewhere", StreamId::ZERO).await?.is_empty());
    Ok(())
}

pub(super) async fn position_reports_last_id_and_trim_watermark(s: Subject) -> Result<()> {
    let empty = s.engine.position("nothing").await?;
    assert_eq!(empty.last_id, StreamId::ZERO);
    assert_eq!(empty.trimmed_through, None);
    let mut ids = Vec::new();
    for n in 0..100 {
        let f = fields(json!({ "n": n }));
        ids.push(
            s.engine
                .publish(PublishRequest {
                    channel: "t",
                    fields: &f,
                    maxlen: Some(10),
                    idempotency_key: None,
                })
                .await?,
        );
    }
    let pos = s.engine.position("t").await?;
    assert_eq!(pos.last_id, ids[99]);
    let retained = read_all(&s, "t", StreamId::ZERO).await?;
    ensure!(
        (10..=11).contains(&retained.len()),
        "retained {} entries for maxlen 10",
        retained.len()
    );
    let first = retained[0].offset;
    let index = ids
        .iter()
        .position(|id| *id == first)
        .context("first retained")?;
    // The watermark is exactly the last entry removed.
    assert_eq!(pos.trimmed_through, Some(ids[index - 1]));
    Ok(())
}

pub(super) async fn idempotency_keys_return_the_first_offset(s: Subject) -> Result<()> {
    let f = fields(json!({"order": 17}));
    let request = PublishRequest {
        channel: "orders",
        fields: &f,
        maxlen: None,
        idempotency_key: Some("k-17"),
    };
    let first = s.engine.publish(request.clone()).await?;
    let again = s.engine.publish(request.clone()).await?;
    assert_eq!(first, again);
    // The key is per channel.
    let elsewhere = s
        .engine
        .publish(PublishRequest {
            channel: "other",
            ..request
        })
        .await?;
    assert_ne!(elsewhere, StreamId::ZERO);
    assert_eq!(read_all(&s, "orders", StreamId::ZERO).await?.len(), 1);
    assert_eq!(read_all(&s, "other", StreamId::ZERO).await?.len(), 1);
    Ok(())
}

/// A catch-up reader that lags while `maxlen` trims past its position learns of every trimmed
/// entry from the page's gap (read atomically with the entries), at every page.
pub(super) async fn trims_during_catch_up_are_reported_as_gaps(s: Subject) -> Result<()> {
    let channel: Arc<str> = "lagging".into();
    let mut acked = Vec::new();
    for n in 0..30 {
        acked.push(publish_maxlen(&s, &channel, json!({ "n": n }), 10).await?);
    }
    let mut deliveries = Vec::new();
    let mut last = StreamId::ZERO;
    for round in 0.. {
        let Page { batch, gap_through } = s.engine.read(&channel, last, 3, usize::MAX).await?;
        if let Some(gap) = gap_through {
            last = gap;
        }
        if let Some(b) = &batch {
            ensure!(b.len() <= 3, "a page of {} entries for limit 3", b.len());
            last = b.last_id();
        }
        let done = batch.is_none() && gap_through.is_none();
        deliveries.push((gap_through, batch.map(Arc::new)));
        if done {
            break;
        }
        // The producer outruns the reader for a while: 7 new entries per page of 3.
        if round < 8 {
            for n in 0..7 {
                acked.push(publish_maxlen(&s, &channel, json!({ "r": round, "n": n }), 10).await?);
            }
        }
    }
    let in_gaps = check_no_silent_loss(StreamId::ZERO, &deliveries, &acked)?;
    ensure!(in_gaps > 0, "nothing was trimmed under the reader");
    Ok(())
}

/// Catch-up pages are bounded by bytes (at least one entry), at and past the limit.
pub(super) async fn pages_are_bounded_by_bytes(s: Subject) -> Result<()> {
    let channel: Arc<str> = "sizes".into();
    let sizes = [
        10, 1_000, 50_000, 120_000, 300_000, 5, 70_000, 260_000, 1, 2, 3, 90_000,
    ];
    let mut acked = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        acked.push(publish(&s, &channel, json!({ "i": i, "v": "x".repeat(*n) })).await?);
    }
    let all = s
        .engine
        .read(&channel, StreamId::ZERO, 1_000, usize::MAX)
        .await?
        .batch
        .context("entries")?;
    assert_eq!(all.ids(), acked);
    let item = |i: usize| all.item(i).len();
    // Exactly the first two entries' encoded items fit, one byte less leaves one.
    let two = item(0) + 1 + item(1);
    for (max_bytes, expected) in [(two, 2), (two - 1, 1), (0, 1), (1, 1)] {
        let page = s
            .engine
            .read(&channel, StreamId::ZERO, 10, max_bytes)
            .await?;
        let batch = page.batch.context("a page")?;
        ensure!(
            batch.len() == expected,
            "max_bytes {max_bytes}: {} entries, wanted {expected}",
            batch.len()
        );
        ensure!(page.gap_through.is_none());
    }
    for max_bytes in [1, 100, 50_000, 120_100, 262_144, 400_000, 1_000_000] {
        let mut after = StreamId::ZERO;
        let mut seen = Vec::new();
        while let Some(batch) = s
            .engine
            .read(&channel, after, 1_000, max_bytes)
            .await?
            .batch
        {
            ensure!(
                batch.items_len() <= max_bytes || batch.len() == 1,
                "max_bytes {max_bytes}: a page of {} entries holds {} bytes",
                batch.len(),
                batch.items_len()
            );
            let frame_items: usize = (0..batch.len()).map(|i| batch.item(i).len() + 1).sum();
            ensure!(batch.items_len() + 1 == frame_items);
            seen.extend(batch.ids().iter().copied());
            after = batch.last_id();
        }
        ensure!(
            seen == acked,
            "max_bytes {max_bytes}: pages lost or repeated entries"
        );
    }
    Ok(())
}

/// Without `create` (a client that may not publish to the channel), neither resuming beyond
/// the tip nor a consumer group creates a channel that does not exist, and on Redis no key is
/// written; on an existing channel both work as before, and with `create` both create it.
pub(super) async fn channels_are_created_only_when_allowed(s: Subject) -> Result<()> {
    let ahead = StreamId::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64
            + 1_000,
        0,
    );
    let raised = s.engine.raise_last_id("absent", ahead, false).await?;
    ensure!(
        raised == Default::default(),
        "raised a missing channel: {raised:?}"
    );
    let group = s
        .engine
        .group_create("absent", "g", Offset::Earliest, false)
        .await?;
    ensure!(
        group.is_none(),
        "a group created a missing channel: {group:?}"
    );
    ensure!(s.engine.position("absent").await?.last_id == StreamId::ZERO);
    if let Some(redis) = &s.redis {
        let keys = redis.command(&["KEYS", "*"]).await?;
        ensure!(
            keys.as_array().is_some_and(<[_]>::is_empty),
            "refused creations wrote keys: {keys:?}"
        );
    }
    // An existing channel: both go ahead without `create`.
    let first = publish(&s, "present", json!({"n": 1})).await?;
    let group = s
        .engine
        .group_create("present", "g", Offset::Earliest, false)
        .await?;
    ensure!(group == Some(StreamId::ZERO), "{group:?}");
    let raised = s.engine.raise_last_id("present", ahead, false).await?;
    ensure!(raised.last_id == ahead && ahead > first, "{raised:?}");
    // With `create`, a missing channel is created.
    let group = s
        .engine
        .group_create("made", "g", Offset::Latest, true)
        .await?;
    ensure!(group == Some(StreamId::ZERO), "{group:?}");
    // (Watched, as a subscriber's channel is: the embedded engine frees unwatched empty
    // channels at once.)
    let (tx, _ready) = watch::channel(Ready::Pending);
    s.engine.watch("raised".into(), tx);
    let raised = s.engine.raise_last_id("raised", ahead, true).await?;
    ensure!(raised.last_id == ahead, "{raised:?}");
    ensure!(s.engine.position("raised").await?.last_id == ahead);
    if let Some(redis) = &s.redis {
        for key in ["rd:made", "rd:raised", "rd:present"] {
            let exists = redis.command(&["EXISTS", key]).await?;
            ensure!(exists.as_integer() == Some(1), "{key} missing");
        }
    }
    s.engine.unwatch(&"raised".into());
    Ok(())
}
