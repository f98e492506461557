//! Presence stores ([`PresenceStore`]) on every engine: members join, refresh, leave and
//! expire with each change logged exactly once (however many callers prune), counts per
//! connection and per user, the member cap, and change reads capped into a count. On Redis
//! Cluster the five keys of a channel share its slot, or the scripts would be refused.

use std::time::Duration;

use redistribute_protocol::PresenceMember;
use redistribute_server::internals::Bounds;

use super::*;

fn member(client: &str, user: Option<&str>) -> PresenceMember {
    let info = user.map(|u| fields(json!({ "name": u.to_uppercase() })));
    PresenceMember {
        client: client.into(),
        user: user.map(str::to_owned),
        info,
    }
}

fn bounds(ttl: Duration, max_members: usize) -> Bounds {
    Bounds {
        ttl,
        max_members,
        log_len: 10_000,
    }
}

fn clients(members: &[PresenceMember]) -> Vec<String> {
    let mut clients: Vec<String> = members.iter().map(|m| m.client.clone()).collect();
    clients.sort();
    clients
}

/// Joins, refreshes and leaves are logged once each; an unrefreshed member expires, and its
/// leave is logged once although every later call prunes.
pub async fn presence_members_join_leave_and_expire_with_each_change_logged_once(
    s: Subject,
) -> Result<()> {
    let store = s.engine.presence_store();
    let long = bounds(Duration::from_secs(60), 100);
    let channel = "room:conformance";
    let start = store.changes(channel, None, 100).await?;
    ensure!(start.changes.is_empty() && start.missed == 0);
    let alice1 = member("i1-1", Some("alice"));
    let alice2 = member("i2-7", Some("alice"));
    let anon = member("i1-2", None);
    let refused = store
        .join(
            channel,
            &[alice1.clone(), alice2.clone(), anon.clone()],
            long,
        )
        .await?;
    ensure!(refused.is_empty(), "{refused:?}");
    // Joining again only refreshes: no second join logged.
    store
        .join(channel, std::slice::from_ref(&alice1), long)
        .await?;
    let members = store.members(channel, long).await?;
    ensure!(clients(&members) == ["i1-1", "i1-2", "i2-7"], "{members:?}");
    let got = members.iter().find(|m| m.client == "i1-1").unwrap();
    ensure!(*got == alice1, "{got:?}");
    // Two connections of one user are two members and one user; no user counts per member.
    ensure!(store.counts(channel, long).await? == (3, 2));
    let changes = store.changes(channel, Some(start.cursor), 100).await?;
    let joins: Vec<&PresenceMember> = changes
        .changes
        .iter()
        .map(|(j, m)| {
            assert!(*j);
            m
        })
        .collect();
    ensure!(joins == [&alice1, &alice2, &anon], "{changes:?}");
    ensure!(changes.missed == 0);

    // A refresh names who is gone; a leave is logged once, a second leave not at all.
    let missing = store
        .refresh(channel, &["i1-1".into(), "nobody".into()], long)
        .await?;
    ensure!(missing == ["nobody"], "{missing:?}");
    store.leave(channel, &["i2-7".into()], long).await?;
    store.leave(channel, &["i2-7".into()], long).await?;
    let after_leave = store.changes(channel, Some(changes.cursor), 100).await?;
    ensure!(
        after_leave.changes == [(false, alice2.clone())],
        "{after_leave:?}"
    );
    ensure!(store.counts(channel, long).await? == (2, 2));

    // `anon` is refreshed with a short expiry, `i1-1` with a long one: only `anon` expires.
    let short = bounds(Duration::from_millis(300), 100);
    store.refresh(channel, &["i1-2".into()], short).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Several callers prune (two instances asking, one refreshing): one leave logged.
    store.members(channel, long).await?;
    store.counts(channel, long).await?;
    let missing = store
        .refresh(channel, &["i1-1".into(), "i1-2".into()], long)
        .await?;
    ensure!(missing == ["i1-2"], "{missing:?}");
    let expired = store
        .changes(channel, Some(after_leave.cursor), 100)
        .await?;
    ensure!(expired.changes == [(false, anon)], "{expired:?}");
    ensure!(clients(&store.members(channel, long).await?) == ["i1-1"]);
    ensure!(store.counts(channel, long).await? == (1, 1));
    Ok(())
}

/// A storm of 1,000 joins against a cap of 50 members: exactly 50 accepted, the rest refused;
/// a change read with a smaller limit reports only the count, and one within the limit
/// lists every join.
pub async fn presence_caps_hold_under_a_storm_of_joins(s: Subject) -> Result<()> {
    let store = s.engine.presence_store();
    let capped = bounds(Duration::from_secs(60), 50);
    let channel = "room:storm";
    let cursor = store.changes(channel, None, 10).await?.cursor;
    let mut refused = 0;
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.push(member(&format!("c-{i}"), Some(&format!("u{}", i % 7))));
        if batch.len() == 100 {
            refused += store.join(channel, &batch, capped).await?.len();
            batch.clear();
        }
    }
    ensure!(refused == 950, "{refused} refused");
    ensure!(store.counts(channel, capped).await? == (50, 7));
    ensure!(store.members(channel, capped).await?.len() == 50);
    let over = store.changes(channel, Some(cursor), 20).await?;
    ensure!(
        over.changes.is_empty() && over.missed == 50,
        "{} listed, {} missed",
        over.changes.len(),
        over.missed
    );
    let all = store.changes(channel, Some(cursor), 100).await?;
    ensure!(all.changes.len() == 50 && all.missed == 0 && all.cursor == over.cursor);
    ensure!(all.changes.iter().all(|(join, _)| *join));
    Ok(())
}
