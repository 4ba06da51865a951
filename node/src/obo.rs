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
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
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
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
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
    /// The signer's certificate is revoked by its instance's CRL, as
    /// published into the federation peer's record.
    #[error(
        "the on-behalf-of record is signed by {id} (serial {serial}), whose certificate is revoked by federation peer {peer}'s CRL number {number}; that instance issues its node a new certificate"
    )]
    Revoked {
        /// The signer.
        id: String,
        /// Its certificate's serial.
        serial: String,
        /// The federation peer whose CRL revokes it.
        peer: String,
        /// The CRL's number.
        number: u64,
    },
    /// The signer is not a node.
    #[error("the on-behalf-of record is signed by {0}, not an agency's node")]
    NotANode(String),
    /// A record handed over by a caller whose certificate is not the
    /// record's.
    #[error(
        "the on-behalf-of record names {named} (certificate serial {named_serial}), but the caller is {caller} (serial {caller_serial}); a node sends only records it signed itself"
    )]
    NotTheCaller {
        /// Who the record's certificate names.
        named: String,
        /// Its serial.
        named_serial: String,
        /// Who called.
        caller: String,
        /// The caller's certificate's serial.
        caller_serial: String,
    },
    /// A record for a REST caller not signed by this province's hub.
    #[error(
        "the on-behalf-of record of a REST caller is signed by {0}, not by this province's hub"
    )]
    NotAHub(String),
}

/// The digest a record binds: SHA-256 of the encoded envelope.
pub fn digest(envelope: &lgsp_proto::Envelope) -> [u8; 32] {
    Sha256::digest(envelope.encode_to_vec()).into()
}

fn signed_bytes(record: &[u8]) -> Vec<u8> {
    [DOMAIN, record].concat()
}

/// A node's key, ready to sign records (parsed once, not per call).
pub struct Signer {
    key: EcdsaKeyPair,
    certificate: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of the node whose credentials are `creds`.
    pub fn new(creds: &Credentials) -> Result<Self, OboError> {
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            creds.key.secret_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| OboError::Malformed(format!("the node's key cannot sign: {e}")))?;
        let certificate = creds.chain.first().map(|c| c.to_vec()).unwrap_or_default();
        // A key of another certificate would sign records every verifier
        // refuses as forged: say so here, where it can be fixed.
        let matches = X509Certificate::from_der(&certificate).is_ok_and(|(_, cert)| {
            cert.public_key().subject_public_key.data.as_ref() == key.public_key().as_ref()
        });
        if !matches {
            return Err(OboError::Malformed(
                "the node's key is not the key of its certificate".into(),
            ));
        }
        Ok(Self { key, certificate })
    }

    /// Signs a record for `envelope` at `at_unix_ms`.
    pub fn sign(
        &self,
        envelope: &lgsp_proto::Envelope,
        at_unix_ms: i64,
    ) -> Result<SignedOnBehalfOf, OboError> {
        self.sign_record(OnBehalfOf {
            certificate: self.certificate.clone(),
            request_id: envelope.request_id.clone(),
            request_sha256: digest(envelope).to_vec(),
            at_unix_ms,
            service_id: envelope.service_id.clone(),
            ..Default::default()
        })
    }

    /// Signs, with the hub's key, a record for `envelope` made on behalf of
    /// outside REST system `rest_client` (its catalog record's name), which
    /// presented `caller_certificate` (DER) to the hub.
    pub fn sign_for_rest_client(
        &self,
        envelope: &lgsp_proto::Envelope,
        at_unix_ms: i64,
        rest_client: &str,
        caller_certificate: &[u8],
    ) -> Result<SignedOnBehalfOf, OboError> {
        self.sign_record(OnBehalfOf {
            certificate: self.certificate.clone(),
            request_id: envelope.request_id.clone(),
            request_sha256: digest(envelope).to_vec(),
            at_unix_ms,
            service_id: envelope.service_id.clone(),
            rest_client: rest_client.to_owned(),
            caller_certificate: caller_certificate.to_vec(),
        })
    }

    fn sign_record(&self, record: OnBehalfOf) -> Result<SignedOnBehalfOf, OboError> {
        let record = record.encode_to_vec();
        let signature = self
            .key
            .sign(&SystemRandom::new(), &signed_bytes(&record))
            .map_err(|_| OboError::Malformed("signing failed".into()))?;
        Ok(SignedOnBehalfOf {
            record,
            signature: signature.as_ref().to_vec(),
        })
    }
}

/// Signs a record for `envelope` with the consumer node's key (parsing
/// the key each time: [`Signer`] keeps it).
pub fn sign(
    creds: &Credentials,
    envelope: &lgsp_proto::Envelope,
    at_unix_ms: i64,
) -> Result<SignedOnBehalfOf, OboError> {
    Signer::new(creds)?.sign(envelope, at_unix_ms)
}

/// A record that verified: the consumer it names.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The consumer node's identity, from its certificate.
    pub id: SpiffeId,
    /// What it signed.
    pub record: OnBehalfOf,
    /// The serial of the certificate that signed it, lower-case hex (what
    /// its instance's CRL names).
    pub serial: String,
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
    Verifier::default().verify(signed, envelope, roots, now_ms)
}

/// What a certificate that chains to a set of roots says, checked once.
#[derive(Clone, Debug)]
struct Known {
    id: SpiffeId,
    serial: String,
    public_key: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl Known {
    /// Whether the certificate is within its validity at `now_ms`.
    fn valid_at(&self, now_ms: i64) -> bool {
        (self.not_before..=self.not_after).contains(&now_ms.div_euclid(1000))
    }
}

/// Verifies records, remembering which certificates chain to which roots
/// (an ECDSA verification and two parses saved per call) and the peers'
/// CAs parsed from PEM. Only certificates that chain are remembered (junk
/// cannot crowd them out), and their validity is checked at each use.
#[derive(Debug, Default)]
pub struct Verifier {
    certs: Mutex<HashMap<CertAndRoots, Known>>,
    /// The trust domain each certificate seen names, by its digest.
    domains: Mutex<HashMap<[u8; 32], String>>,
    roots: Mutex<HashMap<[u8; 32], std::sync::Arc<Vec<CertificateDer<'static>>>>>,
}

/// A certificate's digest and its roots' digest.
type CertAndRoots = ([u8; 32], [u8; 32]);

/// The most certificates a verifier remembers before it starts afresh.
const MAX_REMEMBERED: usize = 10_000;

impl Verifier {
    /// A federation peer's CA certificates, parsed once per PEM.
    pub fn roots_of(
        &self,
        peer: &lgsp_proto::FederationPeer,
    ) -> std::sync::Arc<Vec<CertificateDer<'static>>> {
        let key: [u8; 32] = Sha256::digest(peer.ca_pem.as_bytes()).into();
        let mut roots = self
            .roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if roots.len() > 1_000 {
            roots.clear();
        }
        roots
            .entry(key)
            .or_insert_with(|| std::sync::Arc::new(peer_roots(peer)))
            .clone()
    }

    fn known(&self, certificate: &[u8], roots: &[CertificateDer<'_>]) -> Result<Known, OboError> {
        let mut hasher = Sha256::new();
        for r in roots {
            hasher.update(r.as_ref());
        }
        let key: ([u8; 32], [u8; 32]) =
            (Sha256::digest(certificate).into(), hasher.finalize().into());
        if let Some(k) = self
            .certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(k.clone());
        }
        let checked = check_certificate(certificate, roots)?;
        let mut certs = self
            .certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if certs.len() >= MAX_REMEMBERED {
            certs.clear();
        }
        certs.insert(key, checked.clone());
        Ok(checked)
    }

    /// [`claimed_domain`], remembered per certificate: the trust domain a
    /// record's certificate names, before it is verified (to choose the CA
    /// to verify it with).
    pub fn claimed_domain(&self, signed: &SignedOnBehalfOf) -> Option<String> {
        let record = OnBehalfOf::decode(signed.record.as_slice()).ok()?;
        let key: [u8; 32] = Sha256::digest(&record.certificate).into();
        let mut domains = self
            .domains
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(domain) = domains.get(&key) {
            return Some(domain.clone());
        }
        let domain = lgsp_certs::inspect::CertInfo::from_der(
            &record.certificate,
            std::path::Path::new("<on-behalf-of>"),
        )
        .ok()?
        .spiffe_id
        .ok()?
        .trust_domain;
        if domains.len() >= MAX_REMEMBERED {
            domains.clear();
        }
        domains.insert(key, domain.clone());
        Some(domain)
    }

    /// [`issued_by`], remembered: whether `der` chains to one of `roots`
    /// and is not expired at `now_ms`.
    pub fn issued(&self, der: &[u8], roots: &[CertificateDer<'_>], now_ms: i64) -> bool {
        self.known(der, roots).is_ok_and(|k| k.valid_at(now_ms))
    }

    /// [`verify`], with what this verifier remembers.
    pub fn verify(
        &self,
        signed: &SignedOnBehalfOf,
        envelope: &lgsp_proto::Envelope,
        roots: &[CertificateDer<'_>],
        now_ms: i64,
    ) -> Result<Verified, OboError> {
        let (known, record) = self.signed_by(signed, envelope, roots, now_ms)?;
        if known.id.role != lgsp_certs::Role::Node || !record.rest_client.is_empty() {
            return Err(OboError::NotANode(known.id.to_string()));
        }
        Ok(Verified {
            id: known.id,
            serial: known.serial,
            record,
        })
    }

    /// Checks a record that `caller` hands over on its own mTLS connection
    /// (a province node calling its hub): the record's certificate must be
    /// the caller's own (issued by one of `roots`, the same identity and
    /// serial), within its validity, a node's, and the record for this
    /// request and fresh. Its signature is not verified here: the caller
    /// proved it holds that certificate's key in the handshake, so the
    /// signature tells this hop nothing more. It is for the parties that
    /// see only a hub, the far hub and the provider node, which verify it
    /// with [`Self::verify`].
    pub fn check_from_signer(
        &self,
        signed: &SignedOnBehalfOf,
        envelope: &lgsp_proto::Envelope,
        roots: &[CertificateDer<'_>],
        caller: &lgsp_certs::Peer,
        now_ms: i64,
    ) -> Result<Verified, OboError> {
        let (known, record) = self.certified(signed, roots, now_ms)?;
        if known.id != caller.id || known.serial != caller.serial {
            return Err(OboError::NotTheCaller {
                named: known.id.to_string(),
                named_serial: known.serial,
                caller: caller.id.to_string(),
                caller_serial: caller.serial.clone(),
            });
        }
        if known.id.role != lgsp_certs::Role::Node || !record.rest_client.is_empty() {
            return Err(OboError::NotANode(known.id.to_string()));
        }
        for_this_request(&record, envelope, now_ms)?;
        Ok(Verified {
            id: known.id,
            serial: known.serial,
            record,
        })
    }

    /// Verifies a record a hub of this province (its certificate issued by
    /// one of `own_roots`, of trust domain `own_domain`) signed for a call
    /// from outside REST system `client`: the system's certificate in the
    /// record must chain to the client's CA. The consumer is then the
    /// client's agency, of its trust domain.
    pub fn verify_rest_client(
        &self,
        signed: &SignedOnBehalfOf,
        envelope: &lgsp_proto::Envelope,
        own_roots: &[CertificateDer<'_>],
        own_domain: &str,
        client: &lgsp_proto::RestClient,
        now_ms: i64,
    ) -> Result<Verified, OboError> {
        let (known, record) = self.signed_by(signed, envelope, own_roots, now_ms)?;
        if known.id.role != lgsp_certs::Role::Hub || known.id.trust_domain != own_domain {
            return Err(OboError::NotAHub(known.id.to_string()));
        }
        if record.rest_client != client.name {
            return Err(OboError::Malformed(format!(
                "the record names REST client {:?}, not {:?}",
                record.rest_client, client.name
            )));
        }
        let client_roots = rest_client_roots(client);
        if !issued_by(&record.caller_certificate, &client_roots) {
            return Err(OboError::Untrusted(format!(
                "the certificate of REST client {}",
                client.name
            )));
        }
        let agency = client
            .agency_code
            .parse()
            .map_err(|e| OboError::Malformed(format!("REST client {}: {e}", client.name)))?;
        let id = SpiffeId::new(
            &client.trust_domain,
            agency,
            lgsp_certs::Role::Node,
            &client.name,
        )
        .map_err(|e| OboError::Malformed(format!("REST client {}: {e}", client.name)))?;
        Ok(Verified {
            id,
            serial: known.serial,
            record,
        })
    }

    /// The record in `signed`, its signer's certificate checked against
    /// `roots` (and in its validity), its signature, request and time.
    fn signed_by(
        &self,
        signed: &SignedOnBehalfOf,
        envelope: &lgsp_proto::Envelope,
        roots: &[CertificateDer<'_>],
        now_ms: i64,
    ) -> Result<(Known, OnBehalfOf), OboError> {
        let (known, record) = self.certified(signed, roots, now_ms)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &known.public_key)
            .verify(&signed_bytes(&signed.record), &signed.signature)
            .map_err(|_| OboError::BadSignature)?;
        for_this_request(&record, envelope, now_ms)?;
        Ok((known, record))
    }

    /// The record in `signed` and what its certificate says, the
    /// certificate checked against `roots` and in its validity at `now_ms`.
    fn certified(
        &self,
        signed: &SignedOnBehalfOf,
        roots: &[CertificateDer<'_>],
        now_ms: i64,
    ) -> Result<(Known, OnBehalfOf), OboError> {
        let record = OnBehalfOf::decode(signed.record.as_slice())
            .map_err(|e| OboError::Malformed(e.to_string()))?;
        let known = self.known(&record.certificate, roots)?;
        if !known.valid_at(now_ms) {
            return Err(OboError::Untrusted(format!(
                "{} (outside its validity)",
                known.id
            )));
        }
        Ok((known, record))
    }
}

/// Refuses `record` unless it is for `envelope` (its digest and service)
/// and signed within the skew allowed of `now_ms`.
fn for_this_request(
    record: &OnBehalfOf,
    envelope: &lgsp_proto::Envelope,
    now_ms: i64,
) -> Result<(), OboError> {
    if record.request_sha256 != digest(envelope) || record.service_id != envelope.service_id {
        return Err(OboError::OtherRequest(envelope.request_id.clone()));
    }
    // In milliseconds: a record verifies for exactly twice the skew,
    // which the replay guard covers.
    let skew_ms = record.at_unix_ms - now_ms;
    if skew_ms.unsigned_abs() > MAX_SKEW.as_millis() as u64 {
        return Err(OboError::Expired(skew_ms / 1000));
    }
    Ok(())
}

/// What certificate `der` says, if it is issued by one of `roots`.
fn check_certificate(der: &[u8], roots: &[CertificateDer<'_>]) -> Result<Known, OboError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| OboError::Malformed(format!("its certificate: {e}")))?;
    let info = lgsp_certs::inspect::CertInfo::from_der(der, std::path::Path::new("<on-behalf-of>"))
        .map_err(|e| OboError::Malformed(e.to_string()))?;
    let id = info.spiffe_id.map_err(OboError::Malformed)?;
    if !signed_by_one_of(&cert, roots) {
        return Err(OboError::Untrusted(id.to_string()));
    }
    Ok(Known {
        id,
        serial: info.serial,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_before: info.not_before.unix_timestamp(),
        not_after: info.not_after.unix_timestamp(),
    })
}

/// Whether certificate `der` is in its validity and signed by one of `roots`.
pub fn issued_by(der: &[u8], roots: &[CertificateDer<'_>]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    cert.validity().is_valid() && signed_by_one_of(&cert, roots)
}

/// Whether `cert` is signed by one of `roots` (its validity aside).
/// Whether `cert` is signed by one of `roots` (its validity aside).
fn signed_by_one_of(cert: &X509Certificate<'_>, roots: &[CertificateDer<'_>]) -> bool {
    roots.iter().any(|root| {
        X509Certificate::from_der(root.as_ref()).is_ok_and(|(_, ca)| {
            ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok()
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

/// The CA certificates (DER) of an outside REST system, from its PEM.
pub fn rest_client_roots(client: &lgsp_proto::RestClient) -> Vec<CertificateDer<'static>> {
    lgsp_certs::inspect::pem_blocks(&client.ca_pem)
        .unwrap_or_default()
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| CertificateDer::from(der))
        .collect()
}

/// The REST client a record is made for (empty: a node's record), before
/// it is verified (to choose how to verify it).
pub fn claimed_rest_client(signed: &SignedOnBehalfOf) -> String {
    OnBehalfOf::decode(signed.record.as_slice())
        .map(|r| r.rest_client)
        .unwrap_or_default()
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
    /// Records seen, in buckets of [`BUCKET_MS`] by arrival: a record is
    /// looked up in every bucket still within the horizon, and a bucket
    /// past it is dropped whole (no scan of what was seen).
    buckets: Mutex<std::collections::VecDeque<(i64, std::collections::HashSet<[u8; 32]>)>>,
}

/// How much arrival time one bucket of a [`ReplayGuard`] covers.
const BUCKET_MS: i64 = 10_000;

impl ReplayGuard {
    /// Remembers `signed` (by the record it signs) at `now_ms`; refuses it
    /// if it was seen before. A record older than the skew allowed is
    /// refused by [`verify`] anyway, so what arrived longer ago than twice
    /// that is forgotten.
    pub fn check(
        &self,
        signed: &SignedOnBehalfOf,
        request_id: &str,
        now_ms: i64,
    ) -> Result<(), OboError> {
        // Keyed by what was signed, not by the signature: an ECDSA
        // signature can be rewritten into another valid one.
        let key: [u8; 32] = Sha256::digest(&signed.record).into();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A record verifies for twice the skew after it could first arrive;
        // a bucket is dropped only once all it holds is past that.
        let horizon = 2 * MAX_SKEW.as_millis() as i64 + 2 * BUCKET_MS;
        while buckets
            .front()
            .is_some_and(|(start, _)| now_ms - start > horizon)
        {
            buckets.pop_front();
        }
        if buckets.iter().any(|(_, seen)| seen.contains(&key)) {
            return Err(OboError::Replayed(request_id.to_owned()));
        }
        let start = now_ms - now_ms.rem_euclid(BUCKET_MS);
        match buckets.back_mut() {
            Some((last, seen)) if *last == start => {
                seen.insert(key);
            }
            _ => buckets.push_back((start, std::collections::HashSet::from([key]))),
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
    fn the_replay_guard_remembers_a_record_as_long_as_it_could_verify() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signed = sign(&creds, &envelope(), 0).unwrap();
        let guard = ReplayGuard::default();
        let t = 1_000_000_000;
        guard.check(&signed, "r-1", t).unwrap();
        let skew = MAX_SKEW.as_millis() as i64;
        // Still within twice the skew allowed: a replay.
        assert!(guard.check(&signed, "r-1", t + 2 * skew).is_err());
        // Long after: forgotten (verify refuses so old a record by its time).
        assert!(
            guard
                .check(&signed, "r-1", t + 2 * skew + 3 * BUCKET_MS)
                .is_ok()
        );
        assert!(
            guard.buckets.lock().unwrap().len() <= 2,
            "old buckets are dropped whole"
        );
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
        // The same record under other signature bytes (an ECDSA signature
        // can be rewritten into another valid one) is the same replay.
        let mut rewritten = signed.clone();
        rewritten.signature[40] ^= 1;
        assert!(guard.check(&rewritten, "r-1", now_ms()).is_err());
    }

    fn caller(creds: &Credentials) -> lgsp_certs::Peer {
        lgsp_certs::peer::peer_identity(&creds.chain[0]).unwrap()
    }

    #[test]
    fn the_own_hub_takes_only_the_callers_own_record_for_this_request() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let verifier = Verifier::default();
        let signed = sign(&creds, &envelope(), now_ms()).unwrap();
        let v = verifier
            .check_from_signer(
                &signed,
                &envelope(),
                &creds.roots,
                &caller(&creds),
                now_ms(),
            )
            .unwrap();
        assert_eq!(v.consumer(), "000.00.13.H62@p.example");
        // Another node's record, well signed by it, handed over by this one.
        let other = node(&mut p, "000.00.14.H62", lgsp_certs::Role::Node);
        let theirs = sign(&other, &envelope(), now_ms()).unwrap();
        assert!(matches!(
            verifier.check_from_signer(
                &theirs,
                &envelope(),
                &creds.roots,
                &caller(&creds),
                now_ms()
            ),
            Err(OboError::NotTheCaller { .. })
        ));
        // The same agency and name, another certificate (another serial).
        let renewed = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        assert!(matches!(
            verifier.check_from_signer(
                &signed,
                &envelope(),
                &creds.roots,
                &caller(&renewed),
                now_ms()
            ),
            Err(OboError::NotTheCaller { .. })
        ));
        // For another request, too old, of a CA not trusted, or a hub's.
        let mut changed = envelope();
        changed.operation = "list".into();
        assert!(matches!(
            verifier.check_from_signer(&signed, &changed, &creds.roots, &caller(&creds), now_ms()),
            Err(OboError::OtherRequest(_))
        ));
        let old = sign(&creds, &envelope(), now_ms() - 600_000).unwrap();
        assert!(matches!(
            verifier.check_from_signer(&old, &envelope(), &creds.roots, &caller(&creds), now_ms()),
            Err(OboError::Expired(_))
        ));
        let stranger = instance("p.example");
        assert!(matches!(
            verifier.check_from_signer(
                &signed,
                &envelope(),
                &[CertificateDer::from(pem_der(stranger.ca.cert_pem()))],
                &caller(&creds),
                now_ms()
            ),
            Err(OboError::Untrusted(_))
        ));
        let hub = node(&mut p, "000.00.00.H62", lgsp_certs::Role::Hub);
        let by_hub = sign(&hub, &envelope(), now_ms()).unwrap();
        assert!(matches!(
            verifier.check_from_signer(&by_hub, &envelope(), &creds.roots, &caller(&hub), now_ms()),
            Err(OboError::NotANode(_))
        ));
    }

    #[test]
    fn a_broken_signature_the_own_hub_passes_on_is_refused_by_the_far_side() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let mut signed = sign(&creds, &envelope(), now_ms()).unwrap();
        signed.signature[10] ^= 1;
        // The own hub knows the caller from the handshake and checks the
        // record is its own; the signature is for those who do not.
        Verifier::default()
            .check_from_signer(
                &signed,
                &envelope(),
                &creds.roots,
                &caller(&creds),
                now_ms(),
            )
            .unwrap();
        assert_eq!(
            Verifier::default()
                .verify(&signed, &envelope(), &creds.roots, now_ms())
                .unwrap_err(),
            OboError::BadSignature
        );
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        lgsp_certs::inspect::pem_blocks(pem).unwrap().remove(0).1
    }

    fn rest_client(outside: &Instance) -> lgsp_proto::RestClient {
        lgsp_proto::RestClient {
            name: "btp-hotich".into(),
            trust_domain: outside.ca.trust_domain().into(),
            ca_pem: outside.ca.cert_pem().into(),
            agency_code: "000.00.07.G01".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_hub_record_for_a_rest_client_names_the_outside_agency() {
        let mut p = instance("p.example");
        let mut outside = instance("moj.example");
        let hub = node(&mut p, "000.00.00.H62", lgsp_certs::Role::Hub);
        let caller = node(&mut outside, "000.00.07.G01", lgsp_certs::Role::Node);
        let client = rest_client(&outside);
        let signed = Signer::new(&hub)
            .unwrap()
            .sign_for_rest_client(&envelope(), now_ms(), "btp-hotich", &caller.chain[0])
            .unwrap();
        let v = Verifier::default()
            .verify_rest_client(
                &signed,
                &envelope(),
                &hub.roots,
                "p.example",
                &client,
                now_ms(),
            )
            .unwrap();
        assert_eq!(v.consumer(), "000.00.07.G01@moj.example");
        // Not a node's record: the federation path refuses it.
        assert!(matches!(
            verify(&signed, &envelope(), &hub.roots, now_ms()),
            Err(OboError::NotANode(_))
        ));
    }

    #[test]
    fn a_rest_client_record_not_signed_by_the_own_hub_or_for_another_ca_is_refused() {
        let mut p = instance("p.example");
        let mut outside = instance("moj.example");
        let mut stranger = instance("moj.example");
        let hub = node(&mut p, "000.00.00.H62", lgsp_certs::Role::Hub);
        let province_node = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let caller = node(&mut outside, "000.00.07.G01", lgsp_certs::Role::Node);
        let impostor = node(&mut stranger, "000.00.07.G01", lgsp_certs::Role::Node);
        let client = rest_client(&outside);
        let verify_as = |signer: &Credentials, cert: &[u8], name: &str| {
            let signed = Signer::new(signer)
                .unwrap()
                .sign_for_rest_client(&envelope(), now_ms(), name, cert)
                .unwrap();
            Verifier::default().verify_rest_client(
                &signed,
                &envelope(),
                &hub.roots,
                "p.example",
                &client,
                now_ms(),
            )
        };
        // A province node is not the hub.
        assert!(matches!(
            verify_as(&province_node, &caller.chain[0], "btp-hotich"),
            Err(OboError::NotAHub(_))
        ));
        // A certificate of a CA the record does not name.
        assert!(matches!(
            verify_as(&hub, &impostor.chain[0], "btp-hotich"),
            Err(OboError::Untrusted(_))
        ));
        // A record for another REST client.
        assert!(matches!(
            verify_as(&hub, &caller.chain[0], "other"),
            Err(OboError::Malformed(_))
        ));
    }
}
