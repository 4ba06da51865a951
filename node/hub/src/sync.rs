//! Keeps the provincial catalog's imported services equal to what each
//! federation peer exports to the province: every second the hub asks each
//! peer with imports for its exports, writes the imported services (and
//! their agencies, marked with the peer's trust domain) it does not have
//! yet or that changed, and removes those no longer exported or imported.
//! A removal on either side is gone from the other within seconds.

use crate::Hub;
use crate::health::Outcome;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::federation_client::FederationClient;
use lgsp_proto::{Agency, ExportsRequest, ExportsResponse, FederationPeer, RecordKind, Service};
use lgsp_registry::Catalog;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the hub asks its peers.
pub const EVERY: Duration = Duration::from_secs(1);

/// Runs until `stopped` turns true.
pub async fn run(hub: Arc<Hub>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let catalog = match lgsp_registry::RegistryClient::with_trust(
        &hub.ctx.config.registry,
        &hub.ctx.creds,
        hub.ctx.trust.clone(),
    ) {
        Ok(c) => Catalog::new(c),
        Err(error) => {
            tracing::error!(%error, "the hub cannot reach the registry: imports are not synchronised");
            return;
        }
    };
    loop {
        for peer in hub.peers() {
            if let Err(why) = once(&hub, &catalog, &peer).await {
                tracing::warn!(peer = %peer.name, %why, "imports from this peer not synchronised");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// The service ids imported from `peer`, by the catalog's import records.
fn imports_of(hub: &Hub, peer: &str) -> BTreeSet<String> {
    hub.ctx
        .cache
        .all_of(RecordKind::Import)
        .into_iter()
        .filter_map(|r| match r.value {
            Some(Value::Import(i)) if i.peer == peer => Some(i.service_id),
            _ => None,
        })
        .collect()
}

/// The services in the catalog that came from `peer` through this hub.
fn imported_now(hub: &Hub, peer: &str) -> BTreeMap<String, Service> {
    let key = hub.key();
    hub.ctx
        .cache
        .all_of(RecordKind::Service)
        .into_iter()
        .filter_map(|r| match r.value {
            Some(Value::Service(s)) if s.origin == peer && s.via_hub == key => {
                Some((s.id.clone(), s))
            }
            _ => None,
        })
        .collect()
}

/// What a service of the peer looks like in this catalog.
fn as_imported(hub: &Hub, peer: &FederationPeer, mut s: Service) -> Service {
    s.origin = peer.name.clone();
    s.via_hub = hub.key().to_owned();
    s.node.clear();
    s.history.clear();
    s.maintenance.clear();
    s
}

/// Whether two services say the same to a consumer.
fn same(a: &Service, b: &Service) -> bool {
    // The registry keeps its own history and version count.
    let strip = |s: &Service| Service {
        history: Vec::new(),
        maintenance: Vec::new(),
        version: String::new(),
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Asks `peer`'s hub what it exports to the province, under the peer's
/// breaker, and counts the call in its link's health: this is also how a
/// link with no traffic shows whether the peer is up.
async fn exports_of(hub: &Hub, peer: &FederationPeer) -> Result<ExportsResponse, String> {
    let health = hub.health_of(&peer.name);
    let crate::Link {
        channel, breaker, ..
    } = hub.link(peer).map_err(|s| s.message().to_owned())?;
    let attempt = breaker.attempt(Instant::now()).map_err(|_| {
        health.outward(Outcome::Refused, Duration::ZERO, "");
        format!("the circuit to {} is open", peer.hub_endpoint)
    })?;
    let mut request = tonic::Request::new(ExportsRequest {});
    request.set_timeout(Duration::from_secs(5));
    let sent = Instant::now();
    let answer = FederationClient::new(channel).exports(request).await;
    // Any answer means the peer is there; a refusal is still an answer.
    let reached = match &answer {
        Ok(_) => true,
        Err(s) => !lgsp_node::refusal::is_unreachable(s),
    };
    attempt.finish(reached);
    match &answer {
        Err(s) if !reached => health.outward(
            Outcome::Failed,
            sent.elapsed(),
            &lgsp_certs::tls::explain_status(s),
        ),
        _ => health.outward(Outcome::Answered, sent.elapsed(), ""),
    }
    answer
        .map(tonic::Response::into_inner)
        .map_err(|s| lgsp_certs::tls::explain_status(&s))
}

async fn once(hub: &Hub, catalog: &Catalog, peer: &FederationPeer) -> Result<(), String> {
    let wanted = imports_of(hub, &peer.name);
    let have = imported_now(hub, &peer.name);
    // Every round asks: the answer carries the peer's CRL, and the call
    // keeps the link's health current.
    let answer = match exports_of(hub, peer).await {
        Ok(answer) => answer,
        Err(why) if wanted.is_empty() && have.is_empty() => {
            tracing::debug!(peer = %peer.name, %why, "federation peer not reached");
            return Ok(());
        }
        Err(why) => return Err(why),
    };
    if answer.trust_domain != peer.trust_domain {
        return Err(format!(
            "the peer's hub says it is of {}, not {}",
            answer.trust_domain, peer.trust_domain
        ));
    }
    let client = catalog.client();
    follow_crl(client, peer, &answer.crl_der).await;
    if wanted.is_empty() && have.is_empty() {
        return Ok(());
    }
    let exported: BTreeMap<String, (Service, String)> = if wanted.is_empty() {
        BTreeMap::new()
    } else {
        answer
            .services
            .into_iter()
            .filter_map(|e| {
                let mut s = e.service?;
                // What the peer says of its own hops, kept with the import
                // for this province's nodes to read.
                s.verifies_batched_records = e.verifies_batched_records;
                Some((s.id.clone(), (s, e.agency_name)))
            })
            .collect()
    };
    for id in &wanted {
        let Some((service, agency_name)) = exported.get(id) else {
            continue;
        };
        let imported = as_imported(hub, peer, service.clone());
        if have.get(id).is_some_and(|s| same(s, &imported)) {
            continue;
        }
        let agency = Agency {
            code: imported.agency_code.clone(),
            name: agency_name.clone(),
            trust_domain: peer.trust_domain.clone(),
            ..Default::default()
        };
        let known = hub.ctx.cache.agency_name(&agency.code);
        if known.as_deref() != Some(agency_name.as_str()) {
            client.put(Value::Agency(agency), 0).await.map_err(|s| {
                format!(
                    "registering agency {}: {}",
                    imported.agency_code,
                    s.message()
                )
            })?;
        }
        client
            .put(Value::Service(imported), 0)
            .await
            .map_err(|s| format!("importing {id}: {}", s.message()))?;
        tracing::info!(peer = %peer.name, service = %id, "imported");
    }
    for id in have.keys() {
        if wanted.contains(id) && exported.contains_key(id) {
            continue;
        }
        client
            .delete(RecordKind::Service, id, 0)
            .await
            .map_err(|s| format!("removing {id}: {}", s.message()))?;
        tracing::info!(peer = %peer.name, service = %id, "no longer imported");
    }
    Ok(())
}

/// Puts the CRL `peer`'s hub says is in force there into the peer's catalog
/// record when it verifies against the peer's CA and is newer than the
/// record's: the province then refuses what the peer revoked (its hub in
/// the handshake, its nodes' on-behalf-of records) without the provincial
/// admin copying the file. The registry checks it again when it applies.
async fn follow_crl(client: &lgsp_registry::RegistryClient, peer: &FederationPeer, fetched: &[u8]) {
    match crate::trust::fetched_is_newer(peer, fetched) {
        Ok(None) => {}
        Ok(Some(number)) => {
            let record = FederationPeer {
                crl_der: fetched.to_vec(),
                ..peer.clone()
            };
            match client.put(Value::Peer(record), 0).await {
                Ok(_) => {
                    tracing::info!(peer = %peer.name, number, "the peer's newer CRL is in force")
                }
                Err(s) => {
                    tracing::warn!(peer = %peer.name, number, why = %s.message(), "the peer's newer CRL was not put in force")
                }
            }
        }
        Err(why) => {
            tracing::warn!(peer = %peer.name, %why, "the peer's hub served a CRL its CA did not sign; ignored")
        }
    }
}
