//! Sharing-log anchors (mốc nhật ký chia sẻ): each node publishes the newest
//! seal of its sharing log to the catalog, so that a log cut at its end
//! together with its last seals fails `lgsp audit verify --anchor`.
//!
//! The registry does not check the seal's signature (it does not hold the
//! node's certificate, only its SPIFFE ID and fingerprint); the verifier
//! does, against the node's certificate. What the registry guarantees is
//! who wrote the anchor, that it is bounded, and that it only moves forward:
//! only the node itself (its certificate's SPIFFE ID names that agency and
//! node) writes it, its seal names that node as signer and the certificate
//! the catalog holds for it, and a new anchor never names an earlier entry
//! (nor another head for the same entry) than the one it replaces.

use crate::catalog::get;
use crate::error::CatalogError;
use crate::keys::NodeKey;
use crate::procedure::Asker;
use lgsp_certs::identity::{AgencyCode, Role, validate_name};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{AuditAnchor, RecordKind};

/// The seal format an anchor carries (the sharing log's version 2: the
/// signature covers every field).
pub const ANCHOR_SEAL_VERSION: u32 = 2;

/// Whether `asker` is the node whose anchor `key` is: a node or hub
/// certificate of that agency, with that name.
pub fn is_that_node(asker: &Asker<'_>, key: &str) -> bool {
    matches!(asker.actor.role, Role::Node | Role::Hub)
        && NodeKey::format(asker.actor.agency.as_str(), &asker.actor.name) == key
}

fn invalid(why: String) -> CatalogError {
    CatalogError::InvalidArgument(why)
}

fn hex_of_len(field: &str, value: &str, len: usize) -> Result<(), CatalogError> {
    if value.len() != len
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(invalid(format!(
            "anchor {field} must be {len} lower-case hex digits"
        )));
    }
    Ok(())
}

/// Checks an anchor put by `asker`, against the anchor it replaces and the
/// node's record: bounded fields, written by that node, signed (as it says)
/// by the certificate the catalog holds for the node, and not behind the
/// anchor before it. Fails with `PermissionDenied` when another
/// certificate writes it, `InvalidArgument` for a malformed field, and
/// `FailedPrecondition` for a node not registered, another certificate, or
/// an anchor that goes back.
pub fn check(
    db: &impl crate::kv::KvRead,
    asker: &Asker<'_>,
    anchor: &AuditAnchor,
    previous: Option<&AuditAnchor>,
) -> Result<(), CatalogError> {
    AgencyCode::new(&anchor.agency_code).map_err(|e| invalid(e.to_string()))?;
    validate_name(&anchor.node).map_err(|e| invalid(e.to_string()))?;
    let key = NodeKey::format(&anchor.agency_code, &anchor.node);
    if !is_that_node(asker, &key) {
        return Err(asker.needs(
            &format!("publishing the sharing-log anchor of node {key}"),
            &format!(
                "that node's own certificate (spiffe://…/agency/{}/node/{})",
                anchor.agency_code, anchor.node
            ),
        ));
    }
    if anchor.seal_version != ANCHOR_SEAL_VERSION {
        return Err(invalid(format!(
            "anchor seal version {} is not {ANCHOR_SEAL_VERSION}, the only one an anchor carries",
            anchor.seal_version
        )));
    }
    if anchor.seq == 0 {
        return Err(invalid("anchor names entry 0; entries start at 1".into()));
    }
    hex_of_len("head", &anchor.head, 64)?;
    hex_of_len("certificate fingerprint", &anchor.cert_sha256, 64)?;
    // ECDSA P-256, fixed width: 64 bytes.
    hex_of_len("signature", &anchor.signature, 128)?;
    let time_ok = anchor.seal_time.len() <= 40
        && anchor.seal_time.bytes().all(|b| b.is_ascii_graphic())
        && !anchor.seal_time.is_empty();
    if !time_ok {
        return Err(invalid(format!(
            "anchor seal time {:?} is not an RFC 3339 time",
            anchor.seal_time.chars().take(40).collect::<String>()
        )));
    }
    let signer = asker.actor.to_string();
    if anchor.signer != signer {
        return Err(invalid(format!(
            "anchor seal names signer {:?}, but it is published by {signer}: a node anchors only its own log",
            anchor.signer.chars().take(200).collect::<String>()
        )));
    }
    let node =
        get(db, RecordKind::Node, &key).map_err(|e| CatalogError::Internal(e.to_string()))?;
    let Some(Value::Node(node)) = node.and_then(|r| r.value) else {
        return Err(CatalogError::FailedPrecondition(format!(
            "node {key} is not registered; a node registers itself when it starts, then anchors its log"
        )));
    };
    if !node.cert_sha256.is_empty() && node.cert_sha256 != anchor.cert_sha256 {
        return Err(CatalogError::FailedPrecondition(format!(
            "the anchor's seal names certificate sha256 {}, but the catalog holds {} for node {key}: restart the node with its current certificate so it registers it",
            anchor.cert_sha256, node.cert_sha256
        )));
    }
    if let Some(before) = previous {
        let back =
            anchor.seq < before.seq || (anchor.seq == before.seq && anchor.head != before.head);
        if back {
            return Err(CatalogError::FailedPrecondition(format!(
                "the sharing-log anchor of node {key} is at entry {} (head {}, sealed {}); this one names entry {} (head {}): a sharing log only grows, so this node's log was cut or replaced. Keep its data directory and report it; if the log was replaced on purpose (a new data directory), the provincial admin removes the old anchor with `lgsp audit anchor remove --node {key}`",
                before.seq, before.head, before.seal_time, anchor.seq, anchor.head
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
