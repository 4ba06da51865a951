//! The watch stream against the in-memory store: what a watcher is sent
//! when the history it asked for is compacted under it.

use super::*;
use crate::mem_kv::MemKv;
use lgsp_certs::identity::{AgencyCode, Role, SpiffeId};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::command::Op;

const AGENCY: &str = "000.00.12.H62";

fn admin() -> SpiffeId {
    SpiffeId::new(
        "lgsp.test",
        AgencyCode::new("000.00.01.H62").unwrap(),
        Role::Admin,
        "ops",
    )
    .unwrap()
}

/// Registers or renames the test agency, as one applied entry.
fn rename(db: &Kv, name: &str) {
    let command = Command {
        op: Some(Op::Put(CatalogRecord {
            value: Some(Value::Agency(Agency {
                code: AGENCY.into(),
                name: name.into(),
                focal_point: None,
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    let province = AgencyCode::new("000.00.01.H62").unwrap();
    let who = admin();
    let asker = catalog::Asker {
        actor: &who,
        province: &province,
        now_unix: 0,
    };
    let checked = catalog::check(db, &asker, &command).unwrap();
    let mut batch = crate::kv::Staged::new(db);
    catalog::apply(&mut batch, checked).unwrap();
    batch.commit().unwrap();
}

/// Everything a watch from `from` sends until the live feed closes.
async fn watch_all(db: Kv, from: u64) -> Vec<Result<WatchEvent, Status>> {
    let (live_tx, live) = broadcast::channel(16);
    drop(live_tx);
    let (tx, mut rx) = mpsc::channel(64);
    stream_changes(db, from, live, std::future::pending(), tx).await;
    let mut sent = Vec::new();
    while let Some(item) = rx.recv().await {
        sent.push(item);
    }
    sent
}

#[tokio::test]
async fn a_watch_whose_history_is_compacted_while_it_catches_up_is_told_compacted() {
    let engine = MemKv::default();
    let db = Kv::new(engine.clone());
    for i in 1..=10 {
        rename(&db, &format!("v{i}"));
    }
    // The compaction commits right after the watch checked the oldest
    // revision it may start from, and before it reads the history.
    let compactor = db.clone();
    engine.before_range(b"w:", move || {
        catalog::compact_history(&compactor, 4, 1024).unwrap();
    });
    let sent = watch_all(db.clone(), 1).await;
    assert!(catalog::compact_revision(&db).unwrap() > 1, "compacted");
    let types: Vec<(i32, u64)> = sent
        .iter()
        .map(|e| {
            let e = e.as_ref().expect("an event");
            (e.r#type, e.revision)
        })
        .collect();
    assert_eq!(
        types,
        vec![(EventType::Compacted as i32, 10)],
        "revision 1 was compacted away: the watcher must reload, not skip to the events left"
    );
}

#[tokio::test]
async fn a_watch_from_a_revision_still_in_the_history_gets_every_event_then_synced() {
    let db = Kv::new(MemKv::default());
    for i in 1..=10 {
        rename(&db, &format!("v{i}"));
    }
    catalog::compact_history(&db, 4, 1024).unwrap();
    let from = catalog::compact_revision(&db).unwrap();
    let sent = watch_all(db, from).await;
    let revisions: Vec<u64> = sent
        .iter()
        .map(|e| e.as_ref().expect("an event").revision)
        .collect();
    let expected: Vec<u64> = (from..=10).chain([10]).collect();
    assert_eq!(revisions, expected);
    let last = sent.last().unwrap().as_ref().unwrap();
    assert_eq!(last.r#type, EventType::Synced as i32);
}

#[tokio::test]
async fn a_watcher_far_behind_is_sent_the_history_a_chunk_at_a_time_not_all_at_once() {
    let engine = MemKv::default();
    let db = Kv::new(engine.clone());
    let lag: u64 = 2_560;
    assert!(lag > 4 * CATCH_UP_CHUNK, "a lag of several chunks");

    for i in 1..=lag {
        rename(&db, &format!("v{i}"));
    }
    let (live_tx, live) = broadcast::channel(16);
    let (tx, mut rx) = mpsc::channel(16);
    let before = engine.pairs_read();
    let watch = tokio::spawn(stream_changes(
        db.clone(),
        1,
        live,
        std::future::pending(),
        tx,
    ));
    // The watcher takes nothing yet: the watch fills its channel and waits.
    let mut held = 0;
    for _ in 0..500 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        if rx.len() == rx.max_capacity() {
            held = engine.pairs_read() - before;
            break;
        }
    }
    assert!(held > 0, "the watch filled its channel");
    assert!(
        held as u64 <= CATCH_UP_CHUNK + 16 && (held as u64) < lag / 4,
        "{held} history events read for a watcher that has taken none, of a lag of {lag}: \
         at most one chunk ({CATCH_UP_CHUNK}) may be"
    );
    let mut revisions = Vec::new();
    while let Some(event) = rx.recv().await {
        let event = event.expect("an event");
        if event.r#type == EventType::Synced as i32 {
            break;
        }
        revisions.push(event.revision);
    }
    assert_eq!(
        revisions,
        (1..=lag).collect::<Vec<_>>(),
        "every event, in order"
    );
    drop(live_tx);
    watch.await.unwrap();
}
