//! Checks that only the Redis engine can fail: entries written by another producer
//! (non-JSON, oversize), the documented cluster keys, bounded trimming and watermarks dying
//! with their stream.

use super::*;

/// Values written by another producer that are not JSON arrive as JSON strings (Redis only:
/// nothing else can write into the embedded engine).
#[tokio::test]
async fn foreign_non_json_values_arrive_as_strings() -> Result<()> {
    let s = redis().await?;
    let redis = s.redis.as_ref().unwrap();
    redis
        .command(&[
            "XADD",
            "rd:foreign",
            "*",
            "text",
            "plain words",
            "num",
            "42",
            "obj",
            "{\"a\":1}",
        ])
        .await?;
    let got = read_all(&s, "foreign", StreamId::ZERO).await?;
    assert_eq!(got[0].fields["text"], "plain words");
    assert_eq!(got[0].fields["num"], 42);
    assert_eq!(got[0].fields["obj"]["a"], 1);
    Ok(())
}

/// In cluster mode, foreign producers write to `<prefix>{<shard>}:<channel>` (the documented
/// key, [`keys::stream_key`]) and the engine reads it.
#[tokio::test]
async fn cluster_keys_are_the_documented_ones() -> Result<()> {
    let s = redis_cluster().await?;
    let mut cluster = s.cluster.expect("a cluster subject");
    let key = keys::stream_key("rd:", "foreign", Some(keys::DEFAULT_SHARDS));
    assert_eq!(
        key,
        format!("rd:{{{}}}:foreign", keys::fnv1a32(b"foreign") % 16)
    );
    let owner = cluster.primary_for_key(&key).await?;
    cluster
        .command(
            owner,
            &["XADD", &key, "*", "text", "plain words", "num", "42"],
        )
        .await?
        .into_result()?;
    let channel: Arc<str> = "foreign".into();
    let got = s
        .engine
        .read(&channel, StreamId::ZERO, 10, usize::MAX)
        .await?
        .batch
        .map(|b| messages(&b))
        .unwrap_or_default();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].fields["text"], "plain words");
    assert_eq!(got[0].fields["num"], 42);
    // What the engine writes lands on the same key.
    let id = s
        .engine
        .publish(PublishRequest {
            channel: "foreign",
            fields: &fields(json!({"n": 1})),
            maxlen: None,
            idempotency_key: None,
        })
        .await?;
    let len = cluster.command(owner, &["XLEN", &key]).await?;
    assert_eq!(len.as_integer(), Some(2), "{len}");
    assert_ne!(id, StreamId::ZERO);
    Ok(())
}

/// An entry another producer wrote past [`MAX_ENTRY_BYTES`] (of stored field names and values)
/// is never delivered: catch-up pages and the live feed skip it and cover it with a gap. One
/// at exactly the limit is delivered.
#[tokio::test]
async fn foreign_oversize_entries_are_skipped_into_gaps() -> Result<()> {
    // Entries other producers append reach the live feed of per-channel readers only.
    let mut s = redis_channel_readers().await?;
    let redis = s.redis.take().context("a single Redis")?;
    let xadd = |key: &'static str, value: String| {
        let redis = &redis;
        async move {
            let reply = redis
                .command(&["XADD", key, "*", "v", &value])
                .await?
                .into_result()?;
            StreamId::parse(reply.as_str().context("an ID")?).context("an ID")
        }
    };
    // "v" (1 byte) + the value: exactly the limit, then one byte past it.
    let small = xadd("rd:huge", "1".into()).await?;
    let at_limit = xadd("rd:huge", "2".repeat(MAX_ENTRY_BYTES - 1)).await?;
    let over = xadd("rd:huge", "3".repeat(MAX_ENTRY_BYTES)).await?;
    let over2 = xadd("rd:huge", "4".repeat(MAX_ENTRY_BYTES + 1000)).await?;
    let after = xadd("rd:huge", "5".into()).await?;
    let channel: Arc<str> = "huge".into();
    let big = 64 * MAX_ENTRY_BYTES;
    // A page ends before an oversize entry; the next one skips it into its gap.
    let first = s.engine.read(&channel, StreamId::ZERO, 10, big).await?;
    ensure!(first.gap_through.is_none());
    assert_eq!(first.batch.context("page")?.ids(), [small, at_limit]);
    let second = s.engine.read(&channel, at_limit, 10, big).await?;
    assert_eq!(second.gap_through, Some(over2));
    assert_eq!(second.batch.context("page")?.ids(), [after]);
    // Starting right at an oversize entry.
    let third = s.engine.read(&channel, over, 10, big).await?;
    assert_eq!(third.gap_through, Some(over2));
    // Live: an oversize entry, alone in its reply, is reported with the next batch.
    let start = watch_ready(&s, "huge").await?;
    assert_eq!(start, after);
    let live_over = xadd("rd:huge", "6".repeat(MAX_ENTRY_BYTES + 1)).await?;
    // Let the reader read it on its own before the next entry arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = publish(&s, "huge", json!({"n": 1})).await?;
    let live_over2 = xadd("rd:huge", "7".repeat(MAX_ENTRY_BYTES + 1)).await?;
    let last = publish(&s, "huge", json!({"n": 2})).await?;
    let want = [("huge".to_string(), last)].into_iter().collect();
    let got = collect_live(&mut s, &want).await?;
    let deliveries: Vec<_> = got
        .iter()
        .map(|b| (b.gap_through(), Some(b.clone())))
        .collect();
    check_no_silent_loss(after, &deliveries, &[live_over, next, live_over2, last])?;
    let delivered: Vec<StreamId> = got.iter().flat_map(|b| b.ids().to_vec()).collect();
    assert_eq!(delivered, [next, last]);
    assert_eq!(got[0].gap_through(), Some(live_over));
    Ok(())
}

/// A publish with `maxlen: 1` on a large stream trims at most [`MAX_TRIM_PER_PUBLISH`]
/// entries (bounded work per publish) and keeps the watermark exact at every step; later
/// publishes finish the job.
#[tokio::test]
async fn trimming_a_large_stream_is_bounded_per_publish() -> Result<()> {
    let s = redis().await?;
    let redis = s.redis.as_ref().context("a single Redis")?;
    const ENTRIES: usize = 200_000;
    redis
        .command(&[
            "EVAL",
            "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'n', i) end",
            "1",
            "rd:long",
            &ENTRIES.to_string(),
        ])
        .await?
        .into_result()?;
    let xlen = || async {
        let len = redis.command(&["XLEN", "rd:long"]).await?;
        len.as_integer().context("XLEN")
    };
    let head = |count: usize| async move {
        let reply = redis
            .command(&["XRANGE", "rd:long", "-", "+", "COUNT", &count.to_string()])
            .await?
            .into_result()?;
        reply
            .as_array()
            .context("XRANGE")?
            .iter()
            .map(|e| {
                let id = e
                    .as_array()
                    .and_then(|p| p.first())
                    .and_then(|v| v.as_str());
                StreamId::parse(id.context("an entry ID")?).context("an entry ID")
            })
            .collect::<Result<Vec<_>>>()
    };
    let cap = MAX_TRIM_PER_PUBLISH as usize;
    let mut publishes = 0;
    loop {
        let before = xlen().await?;
        let ids = head(cap + 1).await?;
        let new = publish_maxlen(&s, "long", json!({ "p": publishes }), 1).await?;
        publishes += 1;
        let after = xlen().await?;
        let trimmed = (before + 1 - after) as usize;
        ensure!(
            trimmed <= cap,
            "one publish trimmed {trimmed} entries (cap {cap})"
        );
        if trimmed > 0 {
            // Exactly the oldest `trimmed` entries went, and the watermark is the last of them.
            let first_kept = ids.get(trimmed).copied().unwrap_or(new);
            assert_eq!(head(1).await?.first(), Some(&first_kept));
            let position = s.engine.position("long").await?;
            assert_eq!(position.trimmed_through, Some(ids[trimmed - 1]));
        }
        if after <= 2 {
            break;
        }
        ensure!(publishes < 2 * ENTRIES / cap, "trimming does not converge");
    }
    ensure!(
        publishes >= ENTRIES / cap,
        "{publishes} publishes trimmed {ENTRIES} entries"
    );
    Ok(())
}

/// A trim watermark never outlives its stream: once the stream is deleted the position has no
/// watermark (and the `#trim` key is removed), and a recreated stream starts without one.
#[tokio::test]
async fn trim_watermarks_die_with_their_stream() -> Result<()> {
    let s = redis().await?;
    let redis = s.redis.as_ref().context("a single Redis")?;
    for round in 0..2 {
        for n in 0..30 {
            publish_maxlen(&s, "gone", json!({ "n": n }), 5).await?;
        }
        ensure!(s.engine.position("gone").await?.trimmed_through.is_some());
        redis.command(&["DEL", "rd:gone"]).await?.into_result()?;
        if round == 0 {
            // Read while deleted: no watermark, and the orphan key goes.
            let position = s.engine.position("gone").await?;
            assert_eq!(position.trimmed_through, None);
            assert_eq!(position.last_id, StreamId::ZERO);
            let exists = redis.command(&["EXISTS", "rd:gone#trim"]).await?;
            assert_eq!(exists.as_integer(), Some(0));
            let page = s
                .engine
                .read(&"gone".into(), StreamId::ZERO, 10, 1 << 20)
                .await?;
            ensure!(page.batch.is_none() && page.gap_through.is_none());
        }
        // Recreated (round 1: straight away, without a read in between).
        let id = publish(&s, "gone", json!({"again": round})).await?;
        let position = s.engine.position("gone").await?;
        assert_eq!(position.trimmed_through, None, "round {round}");
        assert_eq!(position.last_id, id);
        let page = s
            .engine
            .read(&"gone".into(), StreamId::ZERO, 10, 1 << 20)
            .await?;
        assert_eq!(page.gap_through, None, "round {round}");
        redis.command(&["DEL", "rd:gone"]).await?.into_result()?;
    }
    // A consumer group creating the stream again starts it without the old watermark too.
    for n in 0..30 {
        publish_maxlen(&s, "gone", json!({ "n": n }), 5).await?;
    }
    redis.command(&["DEL", "rd:gone"]).await?.into_result()?;
    s.engine
        .group_create("gone", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    assert_eq!(s.engine.position("gone").await?.trimmed_through, None);
    Ok(())
}
