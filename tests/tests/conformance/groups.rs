//! Checks of consumer groups: each entry delivered once and pending until acknowledged, claims
//! of idle entries with delivery counts, and turns among consumers.

use super::*;

pub(super) async fn group_read(
    s: &Subject,
    channel: &str,
    consumer: &str,
    from: GroupRead,
    count: usize,
) -> Result<Vec<StreamId>> {
    let channel: Arc<str> = channel.into();
    Ok(s.engine
        .group_read(&channel, "g", consumer, from, count)
        .await?
        .map(|b| b.batch.ids().to_vec())
        .unwrap_or_default())
}

pub(super) const ALL_PENDING: GroupRead = GroupRead::Pending {
    after: StreamId::ZERO,
};

pub(super) async fn groups_deliver_each_entry_once_and_keep_it_pending_until_acked(
    s: Subject,
) -> Result<()> {
    let created = s
        .engine
        .group_create("jobs", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    ensure!(created == StreamId::ZERO, "new group from 0: {created}");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(publish(&s, "jobs", json!({ "n": n })).await?);
    }
    assert_eq!(
        group_read(&s, "jobs", "c1", GroupRead::New, 2).await?,
        ids[..2]
    );
    assert_eq!(
        group_read(&s, "jobs", "c2", GroupRead::New, 10).await?,
        ids[2..]
    );
    assert!(group_read(&s, "jobs", "c1", GroupRead::New, 10)
        .await?
        .is_empty());
    // Each consumer's own pending entries, then paged after an ID.
    assert_eq!(
        group_read(&s, "jobs", "c1", ALL_PENDING, 10).await?,
        ids[..2]
    );
    let after = GroupRead::Pending { after: ids[2] };
    assert_eq!(group_read(&s, "jobs", "c2", after, 10).await?, ids[3..]);
    assert_eq!(s.engine.group_ack("jobs", "g", &ids[..1]).await?, 1);
    assert_eq!(s.engine.group_ack("jobs", "g", &ids[..2]).await?, 1);
    assert!(group_read(&s, "jobs", "c1", ALL_PENDING, 10)
        .await?
        .is_empty());
    // An existing group keeps its position; a new one from `$` starts at the tip.
    let again = s
        .engine
        .group_create("jobs", "g", Offset::Latest, true)
        .await?
        .context("the group was created")?;
    ensure!(again == ids[4], "existing group: {again}");
    let tip = s
        .engine
        .group_create("jobs", "late", Offset::Latest, true)
        .await?
        .context("the group was created")?;
    ensure!(tip == ids[4], "new group from $: {tip}");
    let next = publish(&s, "jobs", json!({"n": 5})).await?;
    let late = s
        .engine
        .group_read(&"jobs".into(), "late", "c", GroupRead::New, 10)
        .await?
        .map(|b| b.batch.ids().to_vec());
    assert_eq!(late, Some(vec![next]));
    // MKSTREAM: a group on a channel that has no entry yet.
    let empty = s
        .engine
        .group_create("fresh", "g", Offset::Latest, true)
        .await?
        .context("the group was created")?;
    ensure!(empty == StreamId::ZERO, "group on a new channel: {empty}");
    let first = publish(&s, "fresh", json!({"n": 1})).await?;
    assert_eq!(
        group_read(&s, "fresh", "c", GroupRead::New, 10).await?,
        [first]
    );
    Ok(())
}

pub(super) async fn idle_entries_are_claimed_with_delivery_counts_then_dead_lettered(
    s: Subject,
) -> Result<()> {
    s.engine
        .group_create("work", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    let a = publish(&s, "work", json!({"job": "a"})).await?;
    let b = publish(&s, "work", json!({"job": "b"})).await?;
    let channel: Arc<str> = "work".into();
    let new = s
        .engine
        .group_read(&channel, "g", "c1", GroupRead::New, 10)
        .await?
        .context("new entries")?;
    assert_eq!(new.batch.ids(), [a, b]);
    assert_eq!(new.deliveries, [1, 1]);
    let hour = Duration::from_secs(3600);
    let none = s
        .engine
        .group_claim(&channel, "g", "c2", hour, StreamId::ZERO, 10)
        .await?;
    ensure!(none.batch.is_none(), "claimed entries that are not idle");
    let claimed = s
        .engine
        .group_claim(&channel, "g", "c2", Duration::ZERO, StreamId::ZERO, 10)
        .await?;
    assert_eq!(claimed.batch.map(|b| b.ids().to_vec()), Some(vec![a, b]));
    assert_eq!(claimed.deliveries, [2, 2]);
    assert_eq!(claimed.next, StreamId::ZERO);
    // Now they are c2's: c1 has nothing pending, c2's pending read is delivery 3.
    assert!(group_read(&s, "work", "c1", ALL_PENDING, 10)
        .await?
        .is_empty());
    let again = s
        .engine
        .group_read(&channel, "g", "c2", ALL_PENDING, 10)
        .await?
        .context("c2's pending entries")?;
    assert_eq!(again.batch.ids(), [a, b]);
    assert_eq!(again.deliveries, [3, 3], "a pending read counts a delivery");
    s.engine.group_ack("work", "g", &[b]).await?;
    // The next claim would be delivery 4 > 3: `a` goes to `work:dead` and is acknowledged.
    let outcome = redistribute_server::internals::claim_idle(
        s.engine.as_ref(),
        &channel,
        "g",
        "c3",
        Duration::ZERO,
        3,
        StreamId::ZERO,
        10,
    )
    .await?;
    ensure!(outcome.batch.is_none(), "a dead entry was delivered");
    assert_eq!(outcome.dead, [a]);
    let dead = read_all(&s, "work:dead", StreamId::ZERO).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].fields["job"], "a");
    assert_eq!(dead[0].fields["dead_letter"]["offset"], a.to_string());
    assert_eq!(dead[0].fields["dead_letter"]["deliveries"], 4);
    assert_eq!(dead[0].fields["dead_letter"]["group"], "g");
    for c in ["c1", "c2", "c3"] {
        assert!(group_read(&s, "work", c, ALL_PENDING, 10).await?.is_empty());
    }
    Ok(())
}

pub(super) async fn new_group_entries_go_to_consumers_in_turn(s: Subject) -> Result<()> {
    s.engine
        .group_create("turns", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(publish(&s, "turns", json!({ "n": n })).await?);
    }
    let channel: Arc<str> = "turns".into();
    let take = |consumers: Vec<(Arc<str>, usize)>, count: usize| {
        let s = &s;
        let channel = channel.clone();
        async move {
            let turn = GroupTurn {
                instance: "i1",
                consumers: &consumers,
                lease: Duration::from_secs(60),
                count,
            };
            let turns = s.engine.group_take_turns(&channel, "g", &turn).await?;
            ensure!(!turns.deferred, "one instance never defers");
            anyhow::Ok(
                turns
                    .batches
                    .into_iter()
                    .map(|(name, b)| (name.to_string(), b.ids().to_vec()))
                    .collect::<Vec<_>>(),
            )
        }
    };
    // Equal room: alternate (ties by name, then the one served least recently).
    let got = take(vec![("c1".into(), 2), ("c2".into(), 2)], 10).await?;
    assert_eq!(
        got,
        [
            ("c1".to_owned(), vec![ids[0], ids[2]]),
            ("c2".to_owned(), vec![ids[1], ids[3]])
        ]
    );
    // The most room first; `count` caps a call; no room, nothing.
    let got = take(vec![("c1".into(), 0), ("c2".into(), 5)], 1).await?;
    assert_eq!(got, [("c2".to_owned(), vec![ids[4]])]);
    assert!(take(vec![("c1".into(), 0), ("c2".into(), 0)], 10)
        .await?
        .is_empty());
    // c2 was served last: c1 goes first on a tie.
    let got = take(vec![("c1".into(), 1), ("c2".into(), 1)], 10).await?;
    assert_eq!(got, [("c1".to_owned(), vec![ids[5]])]);
    // Each is pending for its consumer, delivered once.
    let c2 = s
        .engine
        .group_read(&channel, "g", "c2", ALL_PENDING, 10)
        .await?
        .context("c2's pending entries")?;
    assert_eq!(c2.batch.ids(), [ids[1], ids[3], ids[4]]);
    assert_eq!(c2.deliveries, [2, 2, 2]);
    Ok(())
}
