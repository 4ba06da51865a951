//! The node's own copy of the provincial catalog: loaded from disk at start,
//! kept current by the registry's `Watch`, and used for every decision on
//! the data path, so the node keeps serving (and enforcing) while the
//! registry is unreachable.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::{
    CatalogRecord, Grant, GrantStatus, ListRequest, NodeRecord, RecordKind, Service, WatchEvent,
};
use lgsp_registry::RegistryClient;
use prost::Message as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

const REVISION_KEY: &[u8] = b"revision";

/// Why the node's copy of the catalog could not be read, kept or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The node's own database failed.
    #[error(transparent)]
    Store(#[from] sled::Error),
    /// The data directory could not be made.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The registry did not answer a reload.
    #[error("{}", .0.message())]
    Registry(#[from] tonic::Status),
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    /// By kind then key: the records of one kind are one range.
    records: BTreeMap<(i32, String), CatalogRecord>,
}

impl State {
    /// The records of `kind`, in key order.
    fn of_kind(&self, kind: RecordKind) -> impl Iterator<Item = &CatalogRecord> {
        let k = kind as i32;
        self.records
            .range((k, String::new())..(k + 1, String::new()))
            .map(|(_, r)| r)
    }
}

/// The catalog as this node last heard it.
#[derive(Debug)]
pub struct CatalogCache {
    state: RwLock<State>,
    db: sled::Tree,
    /// When the cache was last known to match the registry (a live watch).
    fresh_at: RwLock<Option<SystemTime>>,
    live: std::sync::atomic::AtomicBool,
    changes: watch::Sender<u64>,
}

impl CatalogCache {
    /// Opens the cache persisted in `db`'s tree `catalog`.
    pub fn open(db: &sled::Db) -> Result<Arc<Self>, CacheError> {
        let tree = db.open_tree("catalog")?;
        let mut state = State::default();
        for item in tree.iter() {
            let (k, v) = item?;
            if k.as_ref() == REVISION_KEY {
                state.revision = u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default());
            } else if let Ok(record) = CatalogRecord::decode(v.as_ref()) {
                state
                    .records
                    .insert((record.kind, record.key.clone()), record);
            }
        }
        let (changes, _) = watch::channel(state.revision);
        tracing::info!(
            revision = state.revision,
            records = state.records.len(),
            "catalog cache loaded"
        );
        Ok(Arc::new(Self {
            state: RwLock::new(state),
            db: tree,
            fresh_at: RwLock::new(None),
            live: std::sync::atomic::AtomicBool::new(false),
            changes,
        }))
    }

    /// The catalog revision this copy reflects: the newest change applied,
    /// persisted with the records (0 for a node that never heard the
    /// registry).
    pub fn revision(&self) -> u64 {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revision
    }

    /// Notified with the revision after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a watch is live now.
    pub fn is_live(&self) -> bool {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seconds since the cache was last known current (None: never).
    pub fn age(&self) -> Option<Duration> {
        if self.is_live() {
            return Some(Duration::ZERO);
        }
        self.fresh_at
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .and_then(|t| t.elapsed().ok())
    }

    /// The value of record `kind`/`key`, copied (that record alone).
    pub fn get(&self, kind: RecordKind, key: &str) -> Option<Value> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .get(&(kind as i32, key.to_owned()))
            .and_then(|r| r.value.clone())
    }

    /// Whether service `id` is in the catalog (any status), without copying
    /// its record: what the metrics ask before giving it a label of its own.
    pub fn has_service(&self, id: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .contains_key(&(RecordKind::Service as i32, id.to_owned()))
    }

    /// Service `id` (`<agency>/<name>`) as this node last heard it, looked
    /// at in place (no copy of its history), if it is in the catalog.
    pub fn with_service<R>(&self, id: &str, f: impl FnOnce(&Service) -> R) -> Option<R> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        match state
            .records
            .get(&(RecordKind::Service as i32, id.to_owned()))?
            .value
            .as_ref()?
        {
            Value::Service(s) => Some(f(s)),
            _ => None,
        }
    }

    /// Grant of `service_id` to `consumer`, looked at in place (no copy of
    /// its history), if there is one.
    pub fn with_grant<R>(
        &self,
        service_id: &str,
        consumer: &str,
        f: impl FnOnce(&Grant) -> R,
    ) -> Option<R> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        match state
            .records
            .get(&(RecordKind::Grant as i32, format!("{service_id}|{consumer}")))?
            .value
            .as_ref()?
        {
            Value::Grant(g) => Some(f(g)),
            _ => None,
        }
    }

    /// The federation peer of `trust_domain` (another lgsp instance), if
    /// the province federates with it.
    pub fn peer_of_domain(&self, trust_domain: &str) -> Option<lgsp_proto::FederationPeer> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state
            .of_kind(RecordKind::Peer)
            .find_map(|r| match &r.value {
                Some(Value::Peer(p)) if p.trust_domain == trust_domain => Some(p.clone()),
                _ => None,
            })
    }

    /// Federation peer `name`, as the catalog holds it.
    pub fn peer(&self, name: &str) -> Option<lgsp_proto::FederationPeer> {
        match self.get(RecordKind::Peer, name)? {
            Value::Peer(p) => Some(p),
            _ => None,
        }
    }

    /// Outside REST system `name`, as the catalog holds it.
    pub fn rest_client(&self, name: &str) -> Option<lgsp_proto::RestClient> {
        match self.get(RecordKind::RestClient, name)? {
            Value::RestClient(c) => Some(c),
            _ => None,
        }
    }

    /// Every outside REST system of the catalog.
    pub fn rest_clients(&self) -> Vec<lgsp_proto::RestClient> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state
            .of_kind(RecordKind::RestClient)
            .filter_map(|r| match &r.value {
                Some(Value::RestClient(c)) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// The display name of agency `code`, if registered.
    pub fn agency_name(&self, code: &str) -> Option<String> {
        match self.get(RecordKind::Agency, code)? {
            Value::Agency(a) => Some(a.name),
            _ => None,
        }
    }

    /// Every record of `kind`, copied.
    pub fn all_of(&self, kind: RecordKind) -> Vec<CatalogRecord> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.of_kind(kind).cloned().collect()
    }

    /// Whether record `kind`/`key` is in the catalog.
    pub fn has(&self, kind: RecordKind, key: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .contains_key(&(kind as i32, key.to_owned()))
    }

    /// The province's calendar (time zone, holidays), if the catalog has one.
    pub fn calendar(&self) -> Option<lgsp_proto::Calendar> {
        match self.get(RecordKind::Calendar, "province")? {
            Value::Calendar(c) => Some(c),
            _ => None,
        }
    }

    /// Service `id`, copied, if it is in the catalog.
    pub fn service(&self, id: &str) -> Option<Service> {
        match self.get(RecordKind::Service, id)? {
            Value::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The record of node `name` of `agency` (its endpoint and certificate
    /// fingerprint), if it is registered.
    pub fn node(&self, agency: &str, name: &str) -> Option<NodeRecord> {
        match self.get(RecordKind::Node, &format!("{agency}/{name}"))? {
            Value::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The grant of `service_id` to agency `consumer`, whatever its state
    /// (see [`grant_is_active`](Self::grant_is_active) for whether it is usable).
    pub fn grant(&self, service_id: &str, consumer: &str) -> Option<Grant> {
        match self.get(RecordKind::Grant, &format!("{service_id}|{consumer}"))? {
            Value::Grant(g) => Some(g),
            _ => None,
        }
    }

    /// Whether the grant is usable at `now` (Unix seconds).
    pub fn grant_is_active_at(grant: &Grant, now: i64) -> bool {
        grant.status == GrantStatus::Active as i32
            && (grant.expires_unix == 0 || grant.expires_unix > now)
    }

    /// Whether the grant is usable now.
    pub fn grant_is_active(grant: &Grant) -> bool {
        Self::grant_is_active_at(grant, lgsp_registry::calendar::unix_now())
    }

    /// The CRL in the catalog, DER.
    pub fn crl(&self) -> Option<Vec<u8>> {
        match self.get(RecordKind::Crl, "current")? {
            Value::Crl(c) => Some(c.der),
            _ => None,
        }
    }

    fn apply(&self, event: &WatchEvent) -> Result<(), CacheError> {
        let Some(record) = &event.record else {
            return Ok(());
        };
        let db_key = format!("{}:{}", record.kind, record.key);
        let mut batch = sled::Batch::default();
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // After a reload, events the lists already reflected are replayed:
        // never let an older event replace a newer record.
        let held = state
            .records
            .get(&(record.kind, record.key.clone()))
            .and_then(|r| r.meta.as_ref())
            .map_or(0, |m| m.mod_revision);
        if held >= event.revision {
            // Held already (a listing after a reload had it): nothing to
            // change, but this copy reflects the event's revision all the
            // same, or it would look behind the registry for good.
            if event.revision > state.revision {
                state.revision = event.revision;
                self.db
                    .insert(REVISION_KEY, &state.revision.to_be_bytes())?;
                drop(state);
                let _ = self.changes.send(event.revision);
            }
            return Ok(());
        }
        if record.kind == RecordKind::AuditAnchor as i32 {
            // Every node's anchor changes every minute and no node reads
            // another's: only the revision is kept, not the record.
        } else if event.r#type == EventType::Delete as i32 {
            state.records.remove(&(record.kind, record.key.clone()));
            batch.remove(db_key.as_bytes());
        } else {
            state
                .records
                .insert((record.kind, record.key.clone()), record.clone());
            batch.insert(db_key.as_bytes(), record.encode_to_vec());
        }
        state.revision = state.revision.max(event.revision);
        batch.insert(REVISION_KEY, &state.revision.to_be_bytes());
        self.db.apply_batch(batch)?;
        let revision = state.revision;
        drop(state);
        let _ = self.changes.send(revision);
        Ok(())
    }

    pub(crate) fn replace(
        &self,
        records: Vec<CatalogRecord>,
        revision: u64,
    ) -> Result<(), CacheError> {
        let mut batch = sled::Batch::default();
        for key in self.db.iter().keys() {
            batch.remove(key?);
        }
        let mut map = BTreeMap::new();
        for r in records {
            batch.insert(
                format!("{}:{}", r.kind, r.key).as_bytes(),
                r.encode_to_vec(),
            );
            map.insert((r.kind, r.key.clone()), r);
        }
        batch.insert(REVISION_KEY, &revision.to_be_bytes());
        self.db.apply_batch(batch)?;
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.records = map;
        state.revision = revision;
        drop(state);
        let _ = self.changes.send(revision);
        Ok(())
    }

    /// Reloads everything from the registry (first start, or after the
    /// registry compacted the revisions this cache needed).
    async fn reload(&self, client: &RegistryClient) -> Result<u64, CacheError> {
        // Each kind is listed at its own revision; the cache is consistent
        // from the oldest of them, and the watch replays from there.
        let mut all = Vec::new();
        let mut revision = u64::MAX;
        for kind in [
            RecordKind::Agency,
            RecordKind::Node,
            RecordKind::Service,
            RecordKind::Grant,
            RecordKind::Crl,
            RecordKind::Calendar,
            RecordKind::Peer,
            RecordKind::Export,
            RecordKind::Import,
            RecordKind::RestClient,
        ] {
            let (records, rev) = client
                .list_all(ListRequest {
                    kind: kind as i32,
                    page_size: 1000,
                    ..Default::default()
                })
                .await?;
            all.extend(records);
            revision = revision.min(rev);
        }
        self.replace(all, revision)?;
        tracing::info!(revision, "catalog cache reloaded from the registry");
        Ok(revision)
    }

    /// Follows the registry for as long as `shutdown` stays false: reloads
    /// when needed, applies every change, and says when the cache goes stale.
    pub async fn follow(
        self: Arc<Self>,
        client: RegistryClient,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut stale_since: Option<Instant> = None;
        // The registry went back behind this copy and a reload is owed.
        let mut reload = false;
        // The registry's revision at the last check: what the copy owes,
        // kept across watches (a copy behind when its watch restarts is
        // still behind).
        let mut owed: Option<u64> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let from = if self.revision() == 0 || reload {
                match self.reload(&client).await {
                    Ok(rev) => {
                        reload = false;
                        // A new copy owes only what the next check says.
                        owed = None;
                        rev + 1
                    }
                    Err(error) => {
                        self.mark_stale(&mut stale_since, &error.to_string());
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            } else {
                self.revision() + 1
            };
            let mut events = client.watch(from);
            let mut check = tokio::time::interval(CHECK_EVERY);
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = check.tick() => {
                        // A quiet watch, a dead one and one on a server cut
                        // off from its leader look alike: once a second, a
                        // linearizable read of the registry's revision (see
                        // `registry_revision`). (The watch resumes on another
                        // server by itself.)
                        match registry_revision(&client, CHECK_EVERY.mul_f32(0.9)).await {
                            Ok(now) => match freshness(self.revision(), owed.replace(now), now) {
                                Freshness::Current => self.mark_live(&mut stale_since),
                                Freshness::Behind(why) => self.mark_stale(&mut stale_since, &why),
                                Freshness::WentBack(why) => {
                                    tracing::warn!("{why}; reloading");
                                    self.mark_stale(&mut stale_since, &why);
                                    reload = true;
                                    break;
                                }
                                Freshness::Unknown => {}
                            },
                            Err(why) => self.mark_stale(&mut stale_since, &why),
                        }
                        continue;
                    }
                    _ = shutdown.changed() => return,
                };
                let Some(event) = event else { break };
                match EventType::try_from(event.r#type) {
                    Ok(EventType::Synced) => {
                        if event.revision < self.revision()
                            && self.registry_went_back(&client).await
                        {
                            tracing::warn!(
                                cache = self.revision(),
                                registry = event.revision,
                                "the registry's catalog is older than this node's copy (restored from a backup?); reloading"
                            );
                            match self.reload(&client).await {
                                Ok(_) => owed = None,
                                Err(error) => {
                                    self.mark_stale(&mut stale_since, &error.to_string());
                                    reload = true;
                                }
                            }
                            break;
                        }
                        if owed.is_none_or(|owed| self.revision() >= owed) {
                            self.mark_live(&mut stale_since);
                        }
                    }
                    Ok(EventType::Compacted) => {
                        tracing::info!(
                            "the registry compacted past this cache's revision; reloading"
                        );
                        match self.reload(&client).await {
                            Ok(_) => owed = None,
                            Err(error) => {
                                self.mark_stale(&mut stale_since, &error.to_string());
                                reload = true;
                            }
                        }
                        break;
                    }
                    Ok(EventType::Put | EventType::Delete) => {
                        if let Err(error) = self.apply(&event) {
                            tracing::error!(%error, "cannot persist a catalog change");
                        }
                        // Live once it holds what the registry had at the
                        // last check, not on any event (a watch far behind
                        // would flap between live and stale).
                        if owed.is_none_or(|owed| self.revision() >= owed) {
                            self.mark_live(&mut stale_since);
                        }
                    }
                    Err(_) => {}
                }
            }
            self.live.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether the registry, asked for a linearizable read, is behind this
    /// cache: a server that is merely lagging is not, a restored registry is.
    async fn registry_went_back(&self, client: &RegistryClient) -> bool {
        let probe = client
            .list(ListRequest {
                kind: RecordKind::Crl as i32,
                page_size: 1,
                ..Default::default()
            })
            .await;
        matches!(probe, Ok(r) if r.revision < self.revision())
    }

    fn mark_live(&self, stale_since: &mut Option<Instant>) {
        if !self.is_live() {
            self.live.store(true, std::sync::atomic::Ordering::Relaxed);
            if stale_since.take().is_some() {
                tracing::info!(revision = self.revision(), "catalog cache is current again");
            }
        }
        *self
            .fresh_at
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
    }

    fn mark_stale(&self, stale_since: &mut Option<Instant>, why: &str) {
        if self.live.swap(false, std::sync::atomic::Ordering::Relaxed) {
            *self
                .fresh_at
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
        }
        let since = *stale_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_millis(1500)
            || since.elapsed().as_secs().is_multiple_of(30)
        {
            tracing::warn!(
                revision = self.revision(),
                stale_for_s = since.elapsed().as_secs(),
                %why,
                "catalog cache is stale: serving and enforcing from the local copy"
            );
        }
    }
}

/// How often the follow loop checks that its copy is current.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What one check says of the copy (see [`freshness`]).
#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    /// It holds every change the registry had made by the last check.
    Current,
    /// It does not: why, for the log.
    Behind(String),
    /// The registry is at a revision before the copy's: restored from a
    /// backup. Why, for the log; the copy is reloaded.
    WentBack(String),
    /// The first check of a watch, with changes still on their way.
    Unknown,
}

/// Judges a copy at revision `copy` against the registry's revision at the
/// last check (`owed`, a second ago) and now (`now`): current when it holds
/// every change made by the last check, a second being ample for a live
/// watch to deliver them; behind otherwise, unless this is the first check
/// (nothing owed yet) and the copy is catching up. A registry whose
/// revision, read linearizably, is before the copy's went back (a restore):
/// its changes up to the copy's revision would never be delivered.
fn freshness(copy: u64, owed: Option<u64>, now: u64) -> Freshness {
    if now < copy {
        return Freshness::WentBack(format!(
            "the registry's catalog (revision {now}) is older than this node's copy (revision {copy}): restored from a backup?"
        ));
    }
    match owed {
        Some(owed) if copy < owed => Freshness::Behind(format!(
            "the registry was at revision {owed} a second ago and this copy is still at {copy}: its watch is not delivering"
        )),
        Some(_) => Freshness::Current,
        None if copy >= now => Freshness::Current,
        None => Freshness::Unknown,
    }
}

/// The check the follow loop makes: a linearizable read of the registry's
/// revision, which a server answers only with a leader and a quorum behind
/// it. A status call is answered from the server's own state, so a server
/// cut off from its leader would vouch for a copy that misses revocations.
/// Every server is asked at once, each for the whole of `within` (a cut-off
/// server holds a linearizable read for seconds before it gives up); the
/// first answer counts. Why not, when none answered.
async fn registry_revision(client: &RegistryClient, within: Duration) -> Result<u64, String> {
    use futures::StreamExt as _;
    let servers = client.endpoints();
    let mut reads: futures::stream::FuturesUnordered<_> = (0..servers.len())
        .map(|i| async move {
            let mut server = client.server(i);
            let read = server.list(ListRequest {
                kind: RecordKind::Crl as i32,
                page_size: 1,
                ..Default::default()
            });
            (i, tokio::time::timeout(within, read).await)
        })
        .collect();
    let mut why = Vec::new();
    while let Some((i, read)) = reads.next().await {
        match read {
            Ok(Ok(answer)) => return Ok(answer.into_inner().revision),
            Ok(Err(status)) => why.push(format!("{}: {}", servers[i], status.message())),
            Err(_) => why.push(format!(
                "{}: no linearizable read within {} ms",
                servers[i],
                within.as_millis()
            )),
        }
    }
    Err(format!(
        "no registry server confirmed the catalog's revision with a quorum ({})",
        why.join("; ")
    ))
}

/// Opens the node's database in `dir`, first rewriting it into a fresh one
/// when its files hold far more than its data (sled keeps the space of
/// deleted records; see `lgsp_registry::sled_kv::compact_if_wasteful`).
pub fn open_db(dir: &Path) -> Result<sled::Db, CacheError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("node.sled");
    lgsp_registry::sled_kv::compact_if_wasteful(
        &path,
        lgsp_registry::sled_kv::COMPACT_RATIO,
        lgsp_registry::sled_kv::COMPACT_MIN_BYTES,
    )
    .map_err(|e| std::io::Error::other(format!("compacting {}: {e}", path.display())))?;
    Ok(sled::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_proto::{Agency, Meta};

    fn agency(code: &str, name: &str, revision: u64) -> CatalogRecord {
        CatalogRecord {
            kind: RecordKind::Agency as i32,
            key: code.into(),
            meta: Some(Meta {
                create_revision: revision,
                mod_revision: revision,
            }),
            value: Some(Value::Agency(Agency {
                code: code.into(),
                name: name.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_copy_is_current_only_when_it_holds_every_change_the_registry_had_a_check_ago() {
        // First check of a watch: current if caught up already, else wait.
        assert_eq!(freshness(10, None, 10), Freshness::Current);
        assert_eq!(freshness(7, None, 10), Freshness::Unknown);
        // Later checks: what the registry had a second ago must be here.
        assert_eq!(freshness(10, Some(10), 12), Freshness::Current);
        assert_eq!(freshness(11, Some(10), 14), Freshness::Current);
        // A registry behind the copy went back (a restore): reload.
        match freshness(12, Some(12), 9) {
            Freshness::WentBack(why) => assert!(
                why.contains("revision 9") && why.contains("copy (revision 12)"),
                "{why}"
            ),
            other => panic!("a registry behind the copy is {other:?}"),
        }
        match freshness(9, Some(10), 10) {
            Freshness::Behind(why) => assert!(
                why.contains("revision 10") && why.contains("still at 9"),
                "{why}"
            ),
            other => panic!("a copy missing a change is {other:?}"),
        }
    }

    #[test]
    fn an_event_a_reload_already_held_still_moves_the_copys_revision() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let cache = CatalogCache::open(&db).unwrap();
        // A reload: agencies listed at revision 12 (one changed at 12),
        // another kind at 10: consistent from 10, the watch replays 11 on.
        let record = agency("000.00.01.H62", "Văn phòng UBND tỉnh", 12);
        cache.replace(vec![record.clone()], 10).unwrap();
        assert_eq!(cache.revision(), 10);
        cache
            .apply(&WatchEvent {
                r#type: EventType::Put as i32,
                revision: 12,
                record: Some(record),
            })
            .unwrap();
        assert_eq!(
            cache.revision(),
            12,
            "the copy reflects revision 12, or it would look behind the registry for good"
        );
        drop(cache);
        let cache = CatalogCache::open(&db).unwrap();
        assert_eq!(cache.revision(), 12, "persisted");
        assert_eq!(
            cache.agency_name("000.00.01.H62").as_deref(),
            Some("Văn phòng UBND tỉnh")
        );
    }
}
