//! Checks of reverse history pages ([`Engine::read_back`]) and rewind starts
//! ([`Engine::offset_back`]), run against every engine.

use super::*;

pub(super) async fn reverse_pages_go_back_from_an_offset_within_bounds(s: Subject) -> Result<()> {
    let channel: Arc<str> = "back".into();
    let sizes = [5, 70_000, 10, 300_000, 1, 2, 90_000, 3, 4, 120_000];
    let mut ids = Vec::new();
    for i in 0..30 {
        let v = "y".repeat(sizes[i % sizes.len()]);
        ids.push(publish(&s, &channel, json!({ "i": i, "v": v })).await?);
    }
    let last = ids[29];
    let newest = s
        .engine
        .read_back(&channel, StreamId::ZERO, last, 10, usize::MAX)
        .await?;
    ensure!(newest.gap_through.is_none());
    assert_eq!(newest.batch.context("newest")?.ids(), &ids[20..30]);
    let middle = s
        .engine
        .read_back(&channel, ids[4], ids[14], 100, usize::MAX)
        .await?;
    assert_eq!(middle.batch.context("middle")?.ids(), &ids[5..=14]);
    let none = s
        .engine
        .read_back(&channel, ids[4], ids[4], 100, usize::MAX)
        .await?;
    ensure!(none.batch.is_none(), "an empty range has no entries");
    // Beyond the tip, and a channel that does not exist.
    let ahead = StreamId::new(last.ms + 1_000_000, 0);
    let all = s
        .engine
        .read_back(&channel, StreamId::ZERO, ahead, 1_000, usize::MAX)
        .await?;
    assert_eq!(all.batch.context("all")?.ids(), &ids[..]);
    let missing: Arc<str> = "nothing-here".into();
    let empty = s
        .engine
        .read_back(&missing, StreamId::ZERO, ahead, 10, usize::MAX)
        .await?;
    ensure!(empty.batch.is_none() && empty.gap_through.is_none());
    // At least one entry, however small the byte budget; paging back by bytes sees every
    // entry once, in order.
    let one = s
        .engine
        .read_back(&channel, StreamId::ZERO, last, 10, 0)
        .await?;
    assert_eq!(one.batch.context("one")?.ids(), &[last]);
    for max_bytes in [1, 100, 80_000, 262_144, 1_000_000] {
        let mut through = last;
        let mut seen: Vec<StreamId> = Vec::new();
        loop {
            let page = s
                .engine
                .read_back(&channel, StreamId::ZERO, through, 7, max_bytes)
                .await?;
            let Some(batch) = page.batch else { break };
            ensure!(
                batch.len() == 1 || batch.items_len() <= max_bytes,
                "{} bytes over a budget of {max_bytes}",
                batch.items_len()
            );
            seen.splice(0..0, batch.ids().iter().copied());
            let Some(before) = batch.first_id().predecessor() else {
                break;
            };
            through = before;
        }
        assert_eq!(seen, ids, "paging back with {max_bytes} bytes a page");
    }
    Ok(())
}

pub(super) async fn reverse_pages_report_the_trim_watermark(s: Subject) -> Result<()> {
    let channel: Arc<str> = "back-trimmed".into();
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(publish_maxlen(&s, &channel, json!({ "n": n }), 10).await?);
    }
    let position = s.engine.position(&channel).await?;
    let watermark = position.trimmed_through.context("trimmed")?;
    let page = s
        .engine
        .read_back(&channel, StreamId::ZERO, ids[59], 1_000, usize::MAX)
        .await?;
    assert_eq!(page.gap_through, Some(watermark));
    let batch = page.batch.context("retained")?;
    ensure!(batch.first_id() > watermark);
    assert_eq!(batch.last_id(), ids[59]);
    // A range wholly trimmed away: no entries, and the gap says so.
    let gone = s
        .engine
        .read_back(&channel, StreamId::ZERO, ids[5], 1_000, usize::MAX)
        .await?;
    ensure!(gone.batch.is_none());
    assert_eq!(gone.gap_through, Some(watermark));
    // Nothing is missing above the watermark.
    let above = s
        .engine
        .read_back(&channel, watermark, ids[59], 1_000, usize::MAX)
        .await?;
    ensure!(above.gap_through.is_none());
    Ok(())
}

pub(super) async fn offset_back_counts_entries_back_from_an_offset(s: Subject) -> Result<()> {
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(publish(&s, "rewind", json!({ "n": n })).await?);
    }
    let last = ids[29];
    assert_eq!(s.engine.offset_back("rewind", last, 1).await?, Some(last));
    assert_eq!(
        s.engine.offset_back("rewind", last, 30).await?,
        Some(ids[0])
    );
    assert_eq!(s.engine.offset_back("rewind", last, 31).await?, None);
    assert_eq!(
        s.engine.offset_back("rewind", ids[10], 3).await?,
        Some(ids[8])
    );
    // An offset between entries counts from the entry before it.
    let between = ids[10].successor();
    if between < ids[11] {
        assert_eq!(
            s.engine.offset_back("rewind", between, 1).await?,
            Some(ids[10])
        );
    }
    assert_eq!(
        s.engine.offset_back("no-such-channel", last, 1).await?,
        None
    );
    Ok(())
}
