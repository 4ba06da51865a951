//! Paging through a list while the catalog changes under it, against the
//! in-memory store.

use super::*;
use crate::catalog::{self, ListQuery};
use crate::kv::{Kv, Staged};
use crate::mem_kv::MemKv;
use lgsp_certs::identity::{AgencyCode, Role, SpiffeId};

/// Registers or renames agency `code`, as one applied entry.
fn put_agency(db: &Kv, code: &str, name: &str) {
    let command = Command {
        op: Some(command::Op::Put(CatalogRecord {
            value: Some(catalog_record::Value::Agency(Agency {
                code: code.into(),
                name: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    let province = AgencyCode::new("000.00.01.H62").unwrap();
    let admin = SpiffeId::new("lgsp.test", province.clone(), Role::Admin, "ops").unwrap();
    let asker = catalog::Asker {
        actor: &admin,
        province: &province,
        now_unix: 0,
    };
    let checked = catalog::check(db, &asker, &command).unwrap();
    let mut batch = Staged::new(db);
    catalog::apply(&mut batch, checked).unwrap();
    batch.commit().unwrap();
}

/// One `List` call answered from `db`, as a server answers it.
fn list_page(db: &Kv, request: &ListRequest) -> ListResponse {
    let revision = catalog::revision(db).unwrap();
    let (records, next_page_token) = catalog::list(
        db,
        &ListQuery {
            kind: request.kind,
            page_size: request.page_size,
            page_token: request.page_token.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    ListResponse {
        records,
        next_page_token,
        revision,
    }
}

#[tokio::test]
async fn a_watch_from_the_revision_list_all_reports_replays_a_write_made_between_pages() {
    let db = Kv::new(MemKv::default());
    let codes: Vec<String> = (1..=6).map(|i| format!("000.00.{i:02}.H62")).collect();
    for code in &codes {
        put_agency(&db, code, "Sở");
    }
    let mut pages = 0;
    let (records, revision) = all_pages(
        ListRequest {
            kind: RecordKind::Agency as i32,
            page_size: 2,
            ..Default::default()
        },
        |request| {
            pages += 1;
            if pages == 2 {
                // A record the first page already returned changes before
                // the second page is read.
                put_agency(&db, &codes[0], "Sở Tư pháp");
            }
            let page = list_page(&db, &request);
            async move { Ok(page) }
        },
    )
    .await
    .unwrap();
    assert_eq!(records.len(), codes.len());
    let first = records.iter().find(|r| r.key == codes[0]).unwrap();
    let Some(catalog_record::Value::Agency(listed)) = &first.value else {
        panic!("an agency");
    };
    assert_eq!(
        listed.name, "Sở",
        "the first page was read before the rename"
    );
    // What a cache does next: watch from the reported revision + 1.
    let replayed: Vec<WatchEvent> = catalog::history(&db, revision + 1)
        .map(|e| e.unwrap())
        .collect();
    assert!(
        replayed
            .iter()
            .any(|e| e.record.as_ref().is_some_and(|r| r.key == codes[0])),
        "the rename made between pages (revision {}) must be replayed by a watch from {}",
        catalog::revision(&db).unwrap(),
        revision + 1
    );
}
