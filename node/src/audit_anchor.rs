//! Anchoring the sharing log outside the node: its newest seal goes to the
//! registry as this node's `AuditAnchor` record every `[audit]
//! anchor_interval_s` (a minute by default) and once more when the node stops,
//! after a last seal. `lgsp audit verify --anchor` then fails a log cut at its
//! end together with its last seals, which the file alone cannot show.
//!
//! Only this node's certificate may write its anchor, and the registry refuses
//! one that goes back (`lgsp_registry::audit_anchor`).

use lgsp_proto::AuditAnchor;
use lgsp_proto::catalog_record::Value;
use lgsp_registry::RegistryClient;
use lgsp_sharing_log::{Seal, SharingLog};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long the anchor published when the node stops may take: the node's
/// stop waits for it.
const LAST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// The record that anchors `seal` of node `name` of `agency`.
pub fn anchor_record(agency: &str, name: &str, seal: &Seal) -> AuditAnchor {
    AuditAnchor {
        agency_code: agency.to_owned(),
        node: name.to_owned(),
        seal_version: seal.v.unwrap_or(1),
        seq: seal.seq,
        head: seal.head.clone(),
        seal_time: seal.time.clone(),
        signer: seal.signer.clone(),
        cert_sha256: seal.cert.clone().unwrap_or_default(),
        signature: seal.signature.clone(),
    }
}

/// The seal an anchor record carries, as it is in the log.
pub fn seal_of(anchor: &AuditAnchor) -> Seal {
    Seal {
        v: (anchor.seal_version != 1).then_some(anchor.seal_version),
        seq: anchor.seq,
        head: anchor.head.clone(),
        time: anchor.seal_time.clone(),
        signer: anchor.signer.clone(),
        cert: (!anchor.cert_sha256.is_empty()).then(|| anchor.cert_sha256.clone()),
        signature: anchor.signature.clone(),
    }
}

/// Publishes the log's newest seal, when it changed, every `every` until
/// `shutdown` turns true (or its sender is dropped); then seals and publishes
/// once more, within a few seconds. Refusals and an unreachable registry are
/// logged and tried again at the next tick.
pub async fn publish_anchors(
    log: Arc<SharingLog>,
    registry: RegistryClient,
    agency: String,
    name: String,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut published: Option<Seal> = None;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = ticks.tick() => publish(&log, &registry, &agency, &name, &mut published).await,
            changed = shutdown.changed() => if changed.is_err() { break },
        }
    }
    // A last seal, so that the anchor covers every entry written before the stop.
    let sealing = Arc::clone(&log);
    match tokio::task::spawn_blocking(move || sealing.seal()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, "cannot seal the sharing log before anchoring it")
        }
        Err(error) => tracing::error!(%error, "the sharing log seal before anchoring panicked"),
    }
    let last = publish(&log, &registry, &agency, &name, &mut published);
    if tokio::time::timeout(LAST_PUBLISH_TIMEOUT, last)
        .await
        .is_err()
    {
        tracing::warn!(
            "the registry did not take the sharing log's last anchor within {} s; the anchor there is the one before",
            LAST_PUBLISH_TIMEOUT.as_secs()
        );
    }
}

async fn publish(
    log: &SharingLog,
    registry: &RegistryClient,
    agency: &str,
    name: &str,
    published: &mut Option<Seal>,
) {
    let Some(seal) = log.last_seal() else {
        return;
    };
    if published.as_ref() == Some(&seal) {
        return;
    }
    let record = anchor_record(agency, name, &seal);
    match registry.put(Value::AuditAnchor(record), 0).await {
        Ok(response) => {
            tracing::debug!(
                seq = seal.seq,
                revision = response.revision,
                "sharing log anchored in the registry"
            );
            *published = Some(seal);
        }
        Err(status) => tracing::warn!(
            seq = seal.seq,
            error = %status.message(),
            "cannot anchor the sharing log in the registry; trying again at the next interval"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_record_carries_the_seal_field_for_field() {
        let seal = Seal {
            v: Some(2),
            seq: 42,
            head: "ab".repeat(32),
            time: "2026-12-07T01:02:03.456Z".into(),
            signer: "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1".into(),
            cert: Some("cd".repeat(32)),
            signature: "ef".repeat(64),
        };
        let record = anchor_record("000.00.12.H62", "node-1", &seal);
        assert_eq!(
            (
                record.agency_code.as_str(),
                record.node.as_str(),
                record.seal_version
            ),
            ("000.00.12.H62", "node-1", 2)
        );
        assert_eq!(seal_of(&record), seal);
        assert_eq!(seal_of(&record).message(), seal.message());
    }
}
