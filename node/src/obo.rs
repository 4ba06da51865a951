//! On-behalf-of records: who a call across lgsp instances is made for.
//!
//! A consumer node calling a service of another instance (imported through
//! the hub) signs a record naming itself (its certificate), the request id,
//! a digest of the request, the service and the time, with its own key.
//! The hubs carry it; the far hub and the provider node verify it against
//! the consumer instance's CA before serving, so the far side knows the
//! agency, not only the hub, and its sharing log can prove it. A forged,
//! altered, replayed, expired or unsigned record is refused.

use lgsp_certs::{Credentials, SpiffeId};
use lgsp_proto::{OnBehalfOf, SignedOnBehalfOf};
use prost::Message as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The request header that carries a [`SignedOnBehalfOf`], encoded.
pub const HEADER: &str = "x-lgsp-obo-bin";

/// How far a record's time may be from the verifier's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(120);

const DOMAIN: &[u8] = b"lgsp-obo-v1\0";

/// Why a record is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OboError {
    /// The record or its certificate cannot be read.
    #[error("the on-behalf-of record is malformed: {0}")]
    Malformed(String),
    /// The certificate is not issued by the CA expected.
    #[error(
        "the on-behalf-of record's certificate ({0}) is not issued by a CA trusted for its instance"
    )]
    Untrusted(String),
    /// The signature does not verify: forged or altered.
    #[error(
        "the on-behalf-of record's signature does not verify with its certificate: forged or altered"
    )]
    BadSignature,
    /// The record is for another request.
    #[error("the on-behalf-of record is for another request ({0})")]
    OtherRequest(String),
    /// Too old, or from the future.
    #[error("the on-behalf-of record was signed {0} s from now, outside the {max} s allowed", max = MAX_SKEW.as_secs())]
    Expired(i64),
    /// Seen before.
    #[error("the on-behalf-of record of request {0} was already used: a replay")]
    Replayed(String),
    /// The signer is not a node.
    #[error("the on-behalf-of record is signed by {0}, not an agency's node")]
    NotANode(String),
}

/// The digest a record binds: SHA-256 of the encoded envelope.
pub fn digest(envelope: &lgsp_proto::Envelope) -> [u8; 32] {
    Sha256::digest(envelope.encode_to_vec()).into()
}

fn signed_bytes(record: &[u8]) -> Vec<u8> {
    [DOMAIN, record].concat()
}

/// Signs a record for `envelope` with the consumer node's key.
pub fn sign(
    creds: &Credentials,
    envelope: &lgsp_proto::Envelope,
    at_unix_ms: i64,
) -> Result<SignedOnBehalfOf, OboError> {
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        creds.key.secret_der(),
        &SystemRandom::new(),
    )
    .map_err(|e| OboError::Malformed(format!("the node's key cannot sign: {e}")))?;
    let record = OnBehalfOf {
        certificate: creds.chain.first().map(|c| c.to_vec()).unwrap_or_default(),
        request_id: envelope.request_id.clone(),
        request_sha256: digest(envelope).to_vec(),
        at_unix_ms,
        service_id: envelope.service_id.clone(),
    }
    .encode_to_vec();
    let signature = key
        .sign(&SystemRandom::new(), &signed_bytes(&record))
        .map_err(|_| OboError::Malformed("signing failed".into()))?;
    Ok(SignedOnBehalfOf {
        record,
        signature: signature.as_ref().to_vec(),
    })
}

/// A record that verified: the consumer it names.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The consumer node's identity, from its certificate.
    pub id: SpiffeId,
    /// What it signed.
    pub record: OnBehalfOf,
}

impl Verified {
    /// The consumer as the sharing log names it: `agency@trust-domain`.
    pub fn consumer(&self) -> String {
        format!("{}@{}", self.id.agency, self.id.trust_domain)
    }
}

/// Verifies `signed` for `envelope` at `now_ms`: its certificate is issued
/// by one of `roots` and names a node, its signature verifies with that
/// certificate, it is for this request and fresh.
pub fn verify(
    signed: &SignedOnBehalfOf,
    envelope: &lgsp_proto::Envelope,
    roots: &[CertificateDer<'_>],
    now_ms: i64,
) -> Result<Verified, OboError> {
    let record = OnBehalfOf::decode(signed.record.as_slice())
        .map_err(|e| OboError::Malformed(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&record.certificate)
        .map_err(|e| OboError::Malformed(format!("its certificate: {e}")))?;
    let info = lgsp_certs::inspect::CertInfo::from_der(
        &record.certificate,
        std::path::Path::new("<on-behalf-of>"),
    )
    .map_err(|e| OboError::Malformed(e.to_string()))?;
    let id = info.spiffe_id.map_err(OboError::Malformed)?;
    if !issued_by(&record.certificate, roots) {
        return Err(OboError::Untrusted(id.to_string()));
    }
    if id.role != lgsp_certs::Role::Node {
        return Err(OboError::NotANode(id.to_string()));
    }
    let key = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_FIXED,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(&signed_bytes(&signed.record), &signed.signature)
        .map_err(|_| OboError::BadSignature)?;
    if record.request_sha256 != digest(envelope) || record.service_id != envelope.service_id {
        return Err(OboError::OtherRequest(envelope.request_id.clone()));
    }
    let skew = (record.at_unix_ms - now_ms) / 1000;
    if skew.unsigned_abs() > MAX_SKEW.as_secs() {
        return Err(OboError::Expired(skew));
    }
    Ok(Verified { id, record })
}

/// Whether certificate `der` is in its validity and signed by one of `roots`.
pub fn issued_by(der: &[u8], roots: &[CertificateDer<'_>]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    cert.validity().is_valid()
        && roots.iter().any(|root| {
            X509Certificate::from_der(root.as_ref()).is_ok_and(|(_, ca)| {
                ca.subject() == cert.issuer()
                    && cert.verify_signature(Some(ca.public_key())).is_ok()
            })
        })
}

/// The CA certificates (DER) of a federation peer, from its PEM.
pub fn peer_roots(peer: &lgsp_proto::FederationPeer) -> Vec<CertificateDer<'static>> {
    lgsp_certs::inspect::pem_blocks(&peer.ca_pem)
        .unwrap_or_default()
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| CertificateDer::from(der))
        .collect()
}

/// The trust domain a record's certificate names, before it is verified
/// (to choose the CA to verify it with).
pub fn claimed_domain(signed: &SignedOnBehalfOf) -> Option<String> {
    let record = OnBehalfOf::decode(signed.record.as_slice()).ok()?;
    lgsp_certs::inspect::CertInfo::from_der(
        &record.certificate,
        std::path::Path::new("<on-behalf-of>"),
    )
    .ok()?
    .spiffe_id
    .ok()
    .map(|id| id.trust_domain)
}

/// Records already used, kept as long as they could still verify: a record
/// seen twice is a replay.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<Vec<u8>, i64>>,
}

impl ReplayGuard {
    /// Remembers `signed` (by its signature) at `now_ms`; refuses it if it
    /// was seen before.
    pub fn check(
        &self,
        signed: &SignedOnBehalfOf,
        request_id: &str,
        now_ms: i64,
    ) -> Result<(), OboError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let horizon = 2 * MAX_SKEW.as_millis() as i64;
        if seen.len() > 10_000 {
            seen.retain(|_, at| now_ms - *at < horizon);
        }
        if seen.insert(signed.signature.clone(), now_ms).is_some() {
            return Err(OboError::Replayed(request_id.to_owned()));
        }
        Ok(())
    }
}

/// The record in request headers, if any.
pub fn from_metadata(
    metadata: &tonic::metadata::MetadataMap,
) -> Option<Result<SignedOnBehalfOf, OboError>> {
    let value = metadata.get_bin(HEADER)?;
    Some(
        value
            .to_bytes()
            .map_err(|e| OboError::Malformed(e.to_string()))
            .and_then(|b| {
                SignedOnBehalfOf::decode(b.as_ref()).map_err(|e| OboError::Malformed(e.to_string()))
            }),
    )
}

/// Puts `signed` in request headers.
pub fn to_metadata(metadata: &mut tonic::metadata::MetadataMap, signed: &SignedOnBehalfOf) {
    metadata.insert_bin(
        HEADER,
        tonic::metadata::MetadataValue::from_bytes(&signed.encode_to_vec()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_certs::ca::CertificateAuthority;
    use lgsp_proto::Envelope;

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    struct Instance {
        _dir: tempfile::TempDir,
        ca: CertificateAuthority,
    }

    fn instance(domain: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(&dir.path().join("ca"), domain, "CA", 30).unwrap();
        Instance { _dir: dir, ca }
    }

    fn node(i: &mut Instance, agency: &str, role: lgsp_certs::Role) -> Credentials {
        let id = SpiffeId::new(
            i.ca.trust_domain(),
            lgsp_certs::AgencyCode::new(agency).unwrap(),
            role,
            "node-1",
        )
        .unwrap();
        let spec = lgsp_certs::ca::LeafSpec::for_days(id, 30).unwrap();
        let issued = i.ca.issue(&spec).unwrap();
        Credentials::from_pem(&issued.cert_pem, &issued.key_pem, i.ca.cert_pem()).unwrap()
    }

    fn envelope() -> Envelope {
        Envelope {
            service_id: "G01.00.01/dan-cu".into(),
            operation: "get".into(),
            request_id: "r-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_signed_by_the_consumer_node_verifies_and_names_its_agency() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signed = sign(&creds, &envelope(), now_ms()).unwrap();
        let v = verify(&signed, &envelope(), &creds.roots, now_ms()).unwrap();
        assert_eq!(v.consumer(), "000.00.13.H62@p.example");
    }

    #[test]
    fn altered_forged_expired_and_replayed_records_are_refused() {
        let mut p = instance("p.example");
        let mut other = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signed = sign(&creds, &envelope(), now_ms()).unwrap();
        // Another request than the one signed.
        let mut changed = envelope();
        changed.parameters.insert("key".into(), "x".into());
        assert!(matches!(
            verify(&signed, &changed, &creds.roots, now_ms()),
            Err(OboError::OtherRequest(_))
        ));
        // The record altered after signing (another agency's certificate swapped in).
        let intruder = node(&mut p, "000.00.14.H62", lgsp_certs::Role::Node);
        let mut record = OnBehalfOf::decode(signed.record.as_slice()).unwrap();
        record.certificate = intruder.chain[0].to_vec();
        let forged = SignedOnBehalfOf {
            record: record.encode_to_vec(),
            signature: signed.signature.clone(),
        };
        assert_eq!(
            verify(&forged, &envelope(), &creds.roots, now_ms()).unwrap_err(),
            OboError::BadSignature
        );
        // Signed by a certificate of a CA not trusted for the instance (same name).
        let stranger = node(&mut other, "000.00.13.H62", lgsp_certs::Role::Node);
        let foreign = sign(&stranger, &envelope(), now_ms()).unwrap();
        assert!(matches!(
            verify(&foreign, &envelope(), &creds.roots, now_ms()),
            Err(OboError::Untrusted(_))
        ));
        // Old.
        let old = sign(&creds, &envelope(), now_ms() - 600_000).unwrap();
        assert!(matches!(
            verify(&old, &envelope(), &creds.roots, now_ms()),
            Err(OboError::Expired(_))
        ));
        // Signed by a hub, not a node.
        let hub = node(&mut p, "000.00.00.H62", lgsp_certs::Role::Hub);
        let by_hub = sign(&hub, &envelope(), now_ms()).unwrap();
        assert!(matches!(
            verify(&by_hub, &envelope(), &creds.roots, now_ms()),
            Err(OboError::NotANode(_))
        ));
        // Replayed.
        let guard = ReplayGuard::default();
        guard.check(&signed, "r-1", now_ms()).unwrap();
        assert_eq!(
            guard.check(&signed, "r-1", now_ms()).unwrap_err(),
            OboError::Replayed("r-1".into())
        );
    }
}
