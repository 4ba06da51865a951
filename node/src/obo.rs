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
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use x509_parser::prelude::{FromDer, X509Certificate};

mod merkle;

/// The request header that carries a [`SignedOnBehalfOf`], encoded.
pub const HEADER: &str = "x-lgsp-obo-bin";

/// The capability a node or hub lists in its catalog record when it
/// verifies records signed in batches and, a hub, passes their batch fields
/// on (`NodeRecord.capabilities`).
pub const BATCH_CAPABILITY: &str = "obo-batch";

/// Whether a node or hub whose catalog record lists `capabilities`
/// verifies records signed in batches ([`BATCH_CAPABILITY`]); one of an
/// older version lists none, and a record for it is signed alone.
pub fn verifies_batches(capabilities: &[String]) -> bool {
    capabilities.iter().any(|c| c == BATCH_CAPABILITY)
}

/// Whether a record for a call through this province's hub (whose catalog
/// record is `hub`) to another instance's service is signed in a batch:
/// only when every hop verifies batches, the far side's hub and the
/// service's node as the import says (`far_side`), and this province's hub
/// as its own record says.
pub fn route_batches(far_side: bool, hub: &lgsp_proto::NodeRecord) -> bool {
    far_side && verifies_batches(&hub.capabilities)
}

/// How far a record's time may be from the verifier's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(120);

const DOMAIN: &[u8] = b"lgsp-obo-v1\0";

/// What a batch's signature covers, before the root of its records' tree.
const BATCH_DOMAIN: &[u8] = b"lgsp-obo-batch-v1\0";

/// How long a batch opened while the signer is busy waits for more records
/// (1-2 ms: the runtime's timers tick in milliseconds).
const BATCH_WINDOW: Duration = Duration::from_millis(1);

/// How long a record waits for the batch it joined before its caller signs
/// what is pending itself: the batch's own timer never failing to fire is
/// not taken on trust.
const BATCH_STALLED: Duration = Duration::from_secs(1);

/// The bytes of salt each batched record's leaf takes.
const SALT: usize = 32;

/// A signer that signed a batch this recently is busy (calls come about a
/// thousand a second or more): its next batch waits [`BATCH_WINDOW`] for
/// more records. Slower than that, a record is signed at once: waiting
/// would rarely find another to share the signature with.
const BUSY: Duration = Duration::from_millis(1);

/// The most records signed at once.
const MAX_BATCH: usize = 256;

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
    /// An outside REST system's certificate is revoked by the CRL its
    /// `RestClient` record holds.
    #[error(
        "the client certificate (serial {serial}) of REST client {client} is revoked by its CA's CRL number {number}, as the provincial admin published it (`lgsp hub rest-client crl`); the outside system needs a new certificate from its CA"
    )]
    RevokedRestClient {
        /// The REST client record's name.
        client: String,
        /// The certificate's serial, lower-case hex.
        serial: String,
        /// The CRL's number.
        number: u64,
    },
    /// The record is addressed to another instance (or, from an lgsp
    /// before audiences, to none).
    #[error(
        "the on-behalf-of record is addressed to {}, not to {here}: a record is served only by the instance its signer addressed (a record without an audience comes from an lgsp older than this one: upgrade the signing node)",
        if addressed.is_empty() { "no instance" } else { addressed.as_str() }
    )]
    OtherAudience {
        /// The trust domain the record names.
        addressed: String,
        /// This instance's.
        here: String,
    },
    /// The record names another hub than the one that carries it.
    #[error(
        "the on-behalf-of record is to be carried by {}, but {caller} carried it: a replay through another hub",
        if named.is_empty() { "no hub" } else { named.as_str() }
    )]
    OtherHub {
        /// The hub the record names.
        named: String,
        /// The hub that called.
        caller: String,
    },
    /// The replay guard remembers as many records as it may.
    #[error(
        "this node already remembers {0} on-behalf-of records of the last minutes (its replay guard's bound); retry shortly"
    )]
    GuardFull(usize),
    /// The replay guard cannot write the record to its journal.
    #[error(
        "this node cannot record the on-behalf-of record in its replay journal ({0}); it refuses the call rather than let the record be replayed after a restart: free disk space or fix the data directory"
    )]
    Unrecorded(String),
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

impl OboError {
    /// The gRPC code a caller gets for this refusal: `RESOURCE_EXHAUSTED`
    /// when the replay guard is full (retry shortly), `UNAVAILABLE` when
    /// this node cannot write its replay journal (its own disk, not the
    /// caller's fault), `UNAUTHENTICATED` for the record's own faults.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::GuardFull(_) => tonic::Code::ResourceExhausted,
            Self::Unrecorded(_) => tonic::Code::Unavailable,
            Self::Malformed(_)
            | Self::Untrusted(_)
            | Self::BadSignature
            | Self::OtherRequest(_)
            | Self::Expired(_)
            | Self::Replayed(_)
            | Self::Revoked { .. }
            | Self::RevokedRestClient { .. }
            | Self::OtherAudience { .. }
            | Self::OtherHub { .. }
            | Self::NotANode(_)
            | Self::NotAHub(_)
            | Self::NotTheCaller { .. } => tonic::Code::Unauthenticated,
        }
    }
}

/// The one conversion of a refused record to a gRPC status, with
/// [`OboError::code`] and the reason.
impl From<OboError> for tonic::Status {
    fn from(e: OboError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// The digest a record binds: SHA-256 of the envelope's protobuf encoding
/// with its parameters in key order.
///
/// `parameters` is a protobuf map, which prost keeps in a `HashMap`: each
/// decoded copy iterates (and so encodes) its entries in its own random
/// order, and a digest of `encode_to_vec()` made by the consumer would not
/// match the one its hub makes of the same call with two parameters or more.
/// Sorting the entries gives every party the same bytes; for up to one
/// parameter they are exactly `encode_to_vec()`'s.
pub fn digest(envelope: &lgsp_proto::Envelope) -> [u8; 32] {
    use prost::encoding::{btree_map, bytes, string};
    let parameters: std::collections::BTreeMap<String, String> = envelope
        .parameters
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let mut buf = Vec::with_capacity(envelope.encoded_len());
    if !envelope.service_id.is_empty() {
        string::encode(1, &envelope.service_id, &mut buf);
    }
    if !envelope.operation.is_empty() {
        string::encode(2, &envelope.operation, &mut buf);
    }
    btree_map::encode(
        string::encode,
        string::encoded_len,
        string::encode,
        string::encoded_len,
        3,
        &parameters,
        &mut buf,
    );
    if !envelope.payload.is_empty() {
        bytes::encode(4, &envelope.payload, &mut buf);
    }
    if !envelope.request_id.is_empty() {
        string::encode(5, &envelope.request_id, &mut buf);
    }
    Sha256::digest(&buf).into()
}

/// The request a record is signed for: a unary call's envelope, or a query
/// stream's request. Each verifies only for its own kind.
#[derive(Clone, Copy, Debug)]
pub enum Signed<'a> {
    /// A unary `Call`.
    Call(&'a lgsp_proto::Envelope),
    /// A `Query` stream.
    Query(&'a lgsp_proto::QueryRequest),
}

impl Signed<'_> {
    /// SHA-256 of the encoded request.
    pub fn digest(&self) -> [u8; 32] {
        match self {
            Self::Call(envelope) => digest(envelope),
            Self::Query(query) => Sha256::digest(query.encode_to_vec()).into(),
        }
    }

    /// The service it calls.
    pub fn service_id(&self) -> &str {
        match self {
            Self::Call(envelope) => &envelope.service_id,
            Self::Query(query) => &query.service_id,
        }
    }

    /// Its request id.
    pub fn request_id(&self) -> &str {
        match self {
            Self::Call(envelope) => &envelope.request_id,
            Self::Query(query) => &query.request_id,
        }
    }

    fn is_query(&self) -> bool {
        matches!(self, Self::Query(_))
    }
}

impl<'a> From<&'a lgsp_proto::Envelope> for Signed<'a> {
    fn from(envelope: &'a lgsp_proto::Envelope) -> Self {
        Self::Call(envelope)
    }
}

impl<'a> From<&'a lgsp_proto::QueryRequest> for Signed<'a> {
    fn from(query: &'a lgsp_proto::QueryRequest) -> Self {
        Self::Query(query)
    }
}

fn signed_bytes(record: &[u8]) -> Vec<u8> {
    [DOMAIN, record].concat()
}

/// A node's key, ready to sign records (parsed once, not per call).
pub struct Signer {
    key: Arc<EcdsaKeyPair>,
    certificate: Vec<u8>,
    batching: Arc<Batching>,
}

/// Records waiting to be signed together (see [`Signer::sign_batched`]).
struct Batching {
    key: Arc<EcdsaKeyPair>,
    pending: Mutex<Pending>,
}

type Answer = oneshot::Sender<Result<SignedOnBehalfOf, OboError>>;

#[derive(Default)]
struct Pending {
    records: Vec<(Vec<u8>, Answer)>,
    /// When the last batch was signed.
    last_signed: Option<tokio::time::Instant>,
}

impl Batching {
    /// Signs every record pending: one on its own, several as a batch
    /// (one signature over their tree's root, each with its audit path),
    /// and answers each.
    fn sign_pending(&self) {
        let records = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.records.is_empty() {
                return;
            }
            pending.last_signed = Some(tokio::time::Instant::now());
            std::mem::take(&mut pending.records)
        };
        if let [(record, _)] = records.as_slice() {
            let signed = sign_alone(&self.key, record.clone());
            if let Some((_, answer)) = records.into_iter().next() {
                let _ = answer.send(signed);
            }
            return;
        }
        let rng = SystemRandom::new();
        let mut salts = vec![[0u8; SALT]; records.len()];
        for salt in &mut salts {
            if ring::rand::SecureRandom::fill(&rng, salt).is_err() {
                for (_, answer) in records {
                    let _ = answer.send(Err(OboError::Malformed(
                        "no randomness to salt the batch with".into(),
                    )));
                }
                return;
            }
        }
        let leaves: Vec<merkle::Hash> = records
            .iter()
            .zip(&salts)
            .map(|((record, _), salt)| merkle::leaf_hash(salt, &signed_bytes(record)))
            .collect();
        let (root, paths) = merkle::root_and_paths(&leaves);
        let signature = self
            .key
            .sign(&rng, &[BATCH_DOMAIN, &root].concat())
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| OboError::Malformed("signing failed".into()));
        let size = records.len() as u32;
        for (i, (((record, answer), path), salt)) in
            records.into_iter().zip(paths).zip(salts).enumerate()
        {
            let _ = answer.send(signature.clone().map(|signature| SignedOnBehalfOf {
                record,
                signature,
                batch_size: size,
                leaf_index: i as u32,
                audit_path: path.iter().map(|h| h.to_vec()).collect(),
                leaf_salt: salt.to_vec(),
            }));
        }
    }
}

/// `record` signed on its own.
fn sign_alone(key: &EcdsaKeyPair, record: Vec<u8>) -> Result<SignedOnBehalfOf, OboError> {
    let signature = key
        .sign(&SystemRandom::new(), &signed_bytes(&record))
        .map_err(|_| OboError::Malformed("signing failed".into()))?;
    Ok(SignedOnBehalfOf {
        record,
        signature: signature.as_ref().to_vec(),
        ..Default::default()
    })
}

/// What the signature of `signed` covers: its record, or the root of the
/// batch it was signed in, which its audit path leads to.
fn signed_message(signed: &SignedOnBehalfOf) -> Result<Vec<u8>, OboError> {
    if signed.batch_size == 0 {
        return Ok(signed_bytes(&signed.record));
    }
    if signed.leaf_salt.len() != SALT {
        return Err(OboError::BadSignature);
    }
    let leaf = merkle::leaf_hash(&signed.leaf_salt, &signed_bytes(&signed.record));
    let root = merkle::root_from_path(
        leaf,
        u64::from(signed.leaf_index),
        u64::from(signed.batch_size),
        &signed.audit_path,
    )
    .ok_or(OboError::BadSignature)?;
    Ok([BATCH_DOMAIN, &root].concat())
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
        let key = Arc::new(key);
        Ok(Self {
            batching: Arc::new(Batching {
                key: key.clone(),
                pending: Mutex::default(),
            }),
            key,
            certificate,
        })
    }

    /// The record for `request` at `at_unix_ms`, addressed to `audience`.
    fn record_for(&self, request: Signed<'_>, at_unix_ms: i64, audience: &Audience) -> OnBehalfOf {
        OnBehalfOf {
            certificate: self.certificate.clone(),
            request_id: request.request_id().to_owned(),
            request_sha256: request.digest().to_vec(),
            at_unix_ms,
            service_id: request.service_id().to_owned(),
            audience: audience.trust_domain.clone(),
            via_hub: audience.via_hub.clone(),
            query: request.is_query(),
            ..Default::default()
        }
    }

    /// Signs a record for `request` (an envelope, or a query stream's
    /// request) at `at_unix_ms`, addressed to `audience`.
    pub fn sign<'a>(
        &self,
        request: impl Into<Signed<'a>>,
        at_unix_ms: i64,
        audience: &Audience,
    ) -> Result<SignedOnBehalfOf, OboError> {
        self.sign_record(self.record_for(request.into(), at_unix_ms, audience))
    }

    /// As [`Self::sign`], signing it in a batch with the records of other
    /// calls made at about the same time: one ECDSA signature over the
    /// root of their Merkle tree, each record with its salt and audit path,
    /// so that the far hub and the provider verify one signature per batch,
    /// not per call, and each record stays provable on its own. A record
    /// after a quiet spell is signed at once; while calls keep coming, a
    /// batch waits [`BATCH_WINDOW`] for more. Only for verifiers that know
    /// batches ([`BATCH_CAPABILITY`], `[consumer] batch_obo_signatures`).
    pub async fn sign_batched<'a>(
        &self,
        request: impl Into<Signed<'a>>,
        at_unix_ms: i64,
        audience: &Audience,
    ) -> Result<SignedOnBehalfOf, OboError> {
        let record = self
            .record_for(request.into(), at_unix_ms, audience)
            .encode_to_vec();
        let (answer, mut answered) = oneshot::channel();
        let now = tokio::time::Instant::now();
        // The record that opens a batch closes it: at once, or after the
        // window. Records added meanwhile are signed with it.
        let (opens, full, busy) = {
            let mut pending = self
                .batching
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.records.push((record, answer));
            let busy = pending
                .last_signed
                .is_some_and(|at| now.saturating_duration_since(at) < BUSY);
            (
                pending.records.len() == 1,
                pending.records.len() >= MAX_BATCH,
                busy,
            )
        };
        if full || (opens && !busy) {
            self.batching.sign_pending();
        } else if opens {
            let batching = self.batching.clone();
            tokio::spawn(async move {
                tokio::time::sleep(BATCH_WINDOW).await;
                batching.sign_pending();
            });
        }
        let answer = match tokio::time::timeout(BATCH_STALLED, &mut answered).await {
            Ok(answer) => answer,
            Err(_) => {
                // The batch's timer never signed it: sign what is pending here.
                self.batching.sign_pending();
                answered.await
            }
        };
        answer.map_err(|_| OboError::Malformed("signing was interrupted".into()))?
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
        // Addressed to the hub's own instance: its provider nodes.
        let audience = lgsp_certs::inspect::CertInfo::from_der(
            &self.certificate,
            std::path::Path::new("<hub>"),
        )
        .ok()
        .and_then(|info| info.spiffe_id.ok())
        .map(|id| id.trust_domain)
        .unwrap_or_default();
        self.sign_record(OnBehalfOf {
            certificate: self.certificate.clone(),
            request_id: envelope.request_id.clone(),
            request_sha256: digest(envelope).to_vec(),
            at_unix_ms,
            service_id: envelope.service_id.clone(),
            rest_client: rest_client.to_owned(),
            caller_certificate: caller_certificate.to_vec(),
            audience,
            via_hub: String::new(),
            query: false,
        })
    }

    fn sign_record(&self, record: OnBehalfOf) -> Result<SignedOnBehalfOf, OboError> {
        sign_alone(&self.key, record.encode_to_vec())
    }
}

/// Signs a record for `request` (an envelope, or a query stream's request)
/// with the consumer node's key, addressed to `audience` (parsing the key
/// each time: [`Signer`] keeps it).
pub fn sign<'a>(
    creds: &Credentials,
    request: impl Into<Signed<'a>>,
    at_unix_ms: i64,
    audience: &Audience,
) -> Result<SignedOnBehalfOf, OboError> {
    Signer::new(creds)?.sign(request, at_unix_ms, audience)
}

/// Whom a record is addressed to: it verifies only there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    /// The trust domain of the instance that serves the call.
    pub trust_domain: String,
    /// The SPIFFE ID of the hub of the signer's instance that carries the
    /// call out of it.
    pub via_hub: String,
}

impl Audience {
    /// A call to instance `trust_domain` carried out by hub `via_hub`.
    pub fn new(trust_domain: &str, via_hub: &SpiffeId) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            via_hub: via_hub.to_string(),
        }
    }
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

    /// Refuses the record unless it is addressed to instance `trust_domain`
    /// and, when `via_hub` is given, carried out of its instance by that
    /// hub (the one that called): a record captured on its way cannot be
    /// replayed to another instance, nor through another hub.
    pub fn addressed_to(&self, trust_domain: &str, via_hub: Option<&str>) -> Result<(), OboError> {
        if self.record.audience != trust_domain {
            return Err(OboError::OtherAudience {
                addressed: self.record.audience.clone(),
                here: trust_domain.to_owned(),
            });
        }
        match via_hub {
            Some(hub) if self.record.via_hub != hub => Err(OboError::OtherHub {
                named: self.record.via_hub.clone(),
                caller: hub.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// Verifies `signed` for `request` (an envelope, or a query stream's
/// request) at `now_ms`: its certificate is issued by one of `roots` and
/// names a node, its signature verifies with that certificate, it is for
/// this request and fresh.
pub fn verify<'a>(
    signed: &SignedOnBehalfOf,
    request: impl Into<Signed<'a>>,
    roots: &[CertificateDer<'_>],
    now_ms: i64,
) -> Result<Verified, OboError> {
    Verifier::default().verify(signed, request, roots, now_ms)
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
    /// Batch signatures that verified, by the digest of the key, the root
    /// and the signature: the other records of a batch verify without
    /// another ECDSA verification.
    batches: Mutex<HashSet<[u8; 32]>>,
    /// ECDSA verifications made.
    verifications: AtomicU64,
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
    pub fn verify<'a>(
        &self,
        signed: &SignedOnBehalfOf,
        request: impl Into<Signed<'a>>,
        roots: &[CertificateDer<'_>],
        now_ms: i64,
    ) -> Result<Verified, OboError> {
        let (known, record) = self.signed_by(signed, request.into(), roots, now_ms)?;
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
    /// request and fresh. Its signature is verified too: the caller proved
    /// it holds that certificate's key in the handshake, but this hop's
    /// sharing log keeps the record, and must keep only records that prove
    /// themselves to an audit (a record signed in a batch costs one check
    /// per batch).
    pub fn check_from_signer<'a>(
        &self,
        signed: &SignedOnBehalfOf,
        request: impl Into<Signed<'a>>,
        roots: &[CertificateDer<'_>],
        caller: &lgsp_certs::Peer,
        now_ms: i64,
    ) -> Result<Verified, OboError> {
        let (known, record) = self.signed_by(signed, request.into(), roots, now_ms)?;
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
    pub fn verify_rest_client<'a>(
        &self,
        signed: &SignedOnBehalfOf,
        request: impl Into<Signed<'a>>,
        own_roots: &[CertificateDer<'_>],
        own_domain: &str,
        client: &lgsp_proto::RestClient,
        now_ms: i64,
    ) -> Result<Verified, OboError> {
        let (known, record) = self.signed_by(signed, request.into(), own_roots, now_ms)?;
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
        request: Signed<'_>,
        roots: &[CertificateDer<'_>],
        now_ms: i64,
    ) -> Result<(Known, OnBehalfOf), OboError> {
        let (known, record) = self.certified(signed, roots, now_ms)?;
        let message = signed_message(signed)?;
        // A batch's signature, once verified, is remembered by what it
        // binds: this key, this root, these signature bytes.
        let batch = batch_key(signed, &known.public_key, &message);
        let seen = batch.is_some_and(|key| {
            self.batches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&key)
        });
        if !seen {
            self.verifications.fetch_add(1, Ordering::Relaxed);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &known.public_key)
                .verify(&message, &signed.signature)
                .map_err(|_| OboError::BadSignature)?;
            if let Some(key) = batch {
                let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
                if batches.len() >= MAX_REMEMBERED {
                    batches.clear();
                }
                batches.insert(key);
            }
        }
        for_this_request(&record, request, now_ms)?;
        Ok((known, record))
    }

    /// How many ECDSA signatures this verifier has checked.
    pub fn signatures_verified(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
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

/// Refuses `record` unless it is for `request` (its kind, digest and
/// service) and signed within the skew allowed of `now_ms`.
fn for_this_request(record: &OnBehalfOf, request: Signed<'_>, now_ms: i64) -> Result<(), OboError> {
    if record.query != request.is_query() {
        let (signed_for, used_for) = if record.query {
            ("a query stream", "a call")
        } else {
            ("a call", "a query stream")
        };
        return Err(OboError::OtherRequest(format!(
            "{}: it was signed for {signed_for}, not {used_for}",
            request.request_id()
        )));
    }
    // The digest covers the request id too; the record's own field is
    // what a sharing log keeps and an audit matches, so it must agree.
    if record.request_sha256 != request.digest()
        || record.service_id != request.service_id()
        || record.request_id != request.request_id()
    {
        return Err(OboError::OtherRequest(request.request_id().to_owned()));
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
    let (known, cert) = parse_certificate(der)?;
    if !lgsp_certs::inspect::signed_by_one_of(&cert, roots) {
        return Err(OboError::Untrusted(known.id.to_string()));
    }
    Ok(known)
}

/// What certificate `der` says, whoever issued it, and the certificate.
fn parse_certificate(der: &[u8]) -> Result<(Known, X509Certificate<'_>), OboError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| OboError::Malformed(format!("its certificate: {e}")))?;
    let info = lgsp_certs::inspect::CertInfo::from_der(der, std::path::Path::new("<on-behalf-of>"))
        .map_err(|e| OboError::Malformed(e.to_string()))?;
    let known = Known {
        id: info.spiffe_id.map_err(OboError::Malformed)?,
        serial: info.serial,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_before: info.not_before.unix_timestamp(),
        not_after: info.not_after.unix_timestamp(),
    };
    Ok((known, cert))
}

/// For a record signed in a batch, what binds its batch's signature: the
/// key, the signed root and the signature (a verified one is remembered by
/// it, and the batch's other records need no ECDSA check of their own).
fn batch_key(signed: &SignedOnBehalfOf, public_key: &[u8], message: &[u8]) -> Option<[u8; 32]> {
    (signed.batch_size > 0).then(|| {
        let mut h = Sha256::new();
        for part in [public_key, message, &signed.signature] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    })
}

/// The serial of certificate `der`, lower-case hex as CRLs are read
/// ([`lgsp_certs::inspect::serial_hex`]); `None` when it cannot be parsed.
pub fn serial_of(der: &[u8]) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, cert)| lgsp_certs::inspect::serial_hex(cert.raw_serial()))
}

/// Whether certificate `der` is in its validity and signed by one of `roots`.
pub fn issued_by(der: &[u8], roots: &[CertificateDer<'_>]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    cert.validity().is_valid() && lgsp_certs::inspect::signed_by_one_of(&cert, roots)
}

/// The CA certificates (DER) of a federation peer, from its PEM.
pub fn peer_roots(peer: &lgsp_proto::FederationPeer) -> Vec<CertificateDer<'static>> {
    pem_roots(&peer.ca_pem)
}

/// The CA certificates (DER) of an outside REST system, from its PEM.
pub fn rest_client_roots(client: &lgsp_proto::RestClient) -> Vec<CertificateDer<'static>> {
    pem_roots(&client.ca_pem)
}

/// The certificates (DER) in `pem`; none when it is not PEM.
pub fn pem_roots(pem: &str) -> Vec<CertificateDer<'static>> {
    lgsp_certs::inspect::pem_certificates(pem)
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

pub use crate::replay::ReplayGuard;

/// `signed` as a sharing-log entry keeps it (`on_behalf_of`): base64 of its
/// encoding.
pub fn for_log(signed: &SignedOnBehalfOf) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(signed.encode_to_vec())
}

/// What a record kept in a sharing log shows, checked by [`Auditor::audit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audited {
    /// Who signed: the consumer node, or for an outside REST system's call
    /// the hub that took it.
    pub signer: SpiffeId,
    /// The serial of the certificate that signed, lower-case hex.
    pub serial: String,
    /// The outside REST system it was signed for (empty: a node's record).
    pub rest_client: String,
}

/// Checks the records a sharing log keeps, after the fact: each certificate
/// is parsed once, and a batch's signature verified once for all its
/// records (as [`Verifier`] does live).
#[derive(Debug, Default)]
pub struct Auditor {
    /// What each certificate says, by its digest.
    certs: HashMap<[u8; 32], Known>,
    /// [`batch_key`]s of batch signatures that verified.
    batches: HashSet<[u8; 32]>,
}

impl Auditor {
    /// Checks a record a sharing-log entry keeps (`logged`, as [`for_log`]
    /// writes it): it decodes, its signature verifies with the key of the
    /// certificate it carries (for a record signed in a batch, through its
    /// audit path to the signed root), and it is for request `request_id`.
    /// What a log cannot show after the fact was checked by the hop that
    /// wrote the entry before it served: the certificate chained to its
    /// instance's CA and was neither expired nor revoked, and the record was
    /// fresh, addressed to it and not replayed. The signer's identity and
    /// serial are returned, to be checked against that CA's records.
    pub fn audit(&mut self, logged: &str, request_id: &str) -> Result<Audited, OboError> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(logged)
            .map_err(|e| OboError::Malformed(format!("not base64: {e}")))?;
        let signed = SignedOnBehalfOf::decode(bytes.as_slice())
            .map_err(|e| OboError::Malformed(e.to_string()))?;
        let record = OnBehalfOf::decode(signed.record.as_slice())
            .map_err(|e| OboError::Malformed(e.to_string()))?;
        let key: [u8; 32] = Sha256::digest(&record.certificate).into();
        let known = match self.certs.get(&key) {
            Some(known) => known.clone(),
            None => {
                let (known, _) = parse_certificate(&record.certificate)?;
                self.certs.insert(key, known.clone());
                known
            }
        };
        let message = signed_message(&signed)?;
        let batch = batch_key(&signed, &known.public_key, &message);
        if !batch.is_some_and(|b| self.batches.contains(&b)) {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &known.public_key)
                .verify(&message, &signed.signature)
                .map_err(|_| OboError::BadSignature)?;
            if let Some(b) = batch {
                self.batches.insert(b);
            }
        }
        if record.request_id != request_id {
            return Err(OboError::OtherRequest(format!(
                "it names request {:?}, the entry {request_id:?}",
                record.request_id
            )));
        }
        Ok(Audited {
            signer: known.id,
            serial: known.serial,
            rest_client: record.rest_client,
        })
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
mod status_tests {
    use super::*;

    #[test]
    fn a_full_replay_guard_asks_to_retry_and_an_unwritable_journal_is_unavailable() {
        let full = tonic::Status::from(OboError::GuardFull(10));
        assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
        assert!(full.message().contains("retry shortly"), "{full:?}");
        let disk = tonic::Status::from(OboError::Unrecorded("obo-seen: no space".into()));
        assert_eq!(disk.code(), tonic::Code::Unavailable, "{disk:?}");
        let replayed = tonic::Status::from(OboError::Replayed("r-1".into()));
        assert_eq!(replayed.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            crate::refusal::Refusal::from(OboError::GuardFull(10)).code(),
            tonic::Code::ResourceExhausted
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_is_signed_in_a_batch_only_when_every_hop_of_its_route_verifies_batches() {
        let hub = |capabilities: &[&str]| lgsp_proto::NodeRecord {
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        };
        assert!(super::route_batches(true, &hub(&["obo-batch"])));
        assert!(
            !super::route_batches(true, &hub(&[])),
            "this province's hub of an older version lists no capability"
        );
        assert!(
            !super::route_batches(true, &hub(&["something-else"])),
            "another capability is not this one"
        );
        assert!(
            !super::route_batches(false, &hub(&["obo-batch"])),
            "the far side's hub or the service's node does not verify batches"
        );
    }

    use super::*;
    use lgsp_certs::ca::CertificateAuthority;
    use lgsp_proto::Envelope;

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn an_envelopes_digest_does_not_depend_on_the_order_its_parameters_decode_in() {
        let envelope = Envelope {
            service_id: "000.00.12.H62/ho-tich".into(),
            operation: "get".into(),
            parameters: (0..24)
                .map(|i| (format!("tham-số-{i}"), format!("giá-trị-{i}")))
                .collect(),
            payload: b"{}".to_vec(),
            request_id: "req-1".into(),
        };
        // Each decoded copy is a new HashMap with its own iteration order, as
        // at the consumer's hub and at the far side.
        for _ in 0..8 {
            let copy = Envelope::decode(envelope.encode_to_vec().as_slice()).unwrap();
            assert_eq!(digest(&copy), digest(&envelope));
        }
        // With one parameter the digest is that of the plain encoding, as
        // before: records of nodes not yet upgraded still verify.
        let one = Envelope {
            parameters: [("key".to_owned(), "001099012345".to_owned())].into(),
            ..envelope
        };
        let plain: [u8; 32] = Sha256::digest(one.encode_to_vec()).into();
        assert_eq!(digest(&one), plain);
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

    /// Addressed to instance `q.example` through the hub of `p.example`.
    fn audience() -> Audience {
        Audience {
            trust_domain: "q.example".into(),
            via_hub: "spiffe://p.example/agency/000.00.00.H62/hub/hub".into(),
        }
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
        let signed = sign(&creds, &envelope(), now_ms(), &audience()).unwrap();
        let v = verify(&signed, &envelope(), &creds.roots, now_ms()).unwrap();
        assert_eq!(v.consumer(), "000.00.13.H62@p.example");
    }

    /// `n` envelopes of their own request ids.
    fn envelopes(n: usize) -> Vec<Envelope> {
        (0..n)
            .map(|i| Envelope {
                request_id: format!("r-{i}"),
                ..envelope()
            })
            .collect()
    }

    /// Signs `envelopes` at once while the signer is busy: a batch.
    async fn signed_in_one_batch(signer: &Signer, envelopes: &[Envelope]) -> Vec<SignedOnBehalfOf> {
        // A batch just signed makes the signer busy: the next waits for more.
        signer
            .sign_batched(&envelope(), now_ms(), &audience())
            .await
            .unwrap();
        let to = audience();
        let calls = envelopes
            .iter()
            .map(|env| signer.sign_batched(env, now_ms(), &to));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn records_signed_in_one_batch_each_verify_for_their_own_request_with_one_ecdsa_check() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signer = Signer::new(&creds).unwrap();
        let envs = envelopes(7);
        let signed = signed_in_one_batch(&signer, &envs).await;
        assert!(
            signed
                .iter()
                .all(|s| s.batch_size == 7 && s.signature == signed[0].signature)
        );
        let verifier = Verifier::default();
        for (s, env) in signed.iter().zip(&envs) {
            let v = verifier.verify(s, env, &creds.roots, now_ms()).unwrap();
            assert_eq!(v.record.request_id, env.request_id);
        }
        assert_eq!(
            verifier.signatures_verified(),
            1,
            "one ECDSA check for the batch"
        );
        // Each record is its own: it does not verify for another's request.
        assert!(matches!(
            verifier.verify(&signed[1], &envs[2], &creds.roots, now_ms()),
            Err(OboError::OtherRequest(_))
        ));
        // A record alone after a quiet spell is signed on its own, as before.
        tokio::time::advance(BUSY * 2).await;
        let alone = signer
            .sign_batched(&envelope(), now_ms(), &audience())
            .await
            .unwrap();
        assert_eq!((alone.batch_size, alone.audit_path.len()), (0, 0));
        verify(&alone, &envelope(), &creds.roots, now_ms()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_logged_record_verifies_after_the_fact_alone_or_in_a_batch_and_not_once_altered() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signer = Signer::new(&creds).unwrap();
        let alone = signer.sign(&envelope(), now_ms(), &audience()).unwrap();
        let audited = Auditor::default().audit(&for_log(&alone), "r-1").unwrap();
        assert_eq!(
            audited.signer.to_string(),
            "spiffe://p.example/agency/000.00.13.H62/node/node-1"
        );
        assert_eq!(Some(audited.serial), serial_of(&creds.chain[0]));
        let batch = signed_in_one_batch(&signer, &envelopes(3)).await;
        let mut auditor = Auditor::default();
        assert!(batch.iter().all(|s| s.batch_size == 3));
        for (i, signed) in batch.iter().enumerate() {
            auditor.audit(&for_log(signed), &format!("r-{i}")).unwrap();
        }
        // Kept with another entry's request id, altered, or signed by a key
        // that is not its certificate's: refused, saying why.
        assert!(matches!(
            Auditor::default().audit(&for_log(&alone), "r-2"),
            Err(OboError::OtherRequest(_))
        ));
        let mut altered = alone.clone();
        let mut record = OnBehalfOf::decode(altered.record.as_slice()).unwrap();
        record.service_id = "G01.00.01/khac".into();
        altered.record = record.encode_to_vec();
        assert!(matches!(
            Auditor::default().audit(&for_log(&altered), "r-1"),
            Err(OboError::BadSignature)
        ));
        // With the batch's signature remembered: a moved leaf is not covered.
        let mut moved = batch[1].clone();
        moved.leaf_index = 2;
        assert!(matches!(
            auditor.audit(&for_log(&moved), "r-1"),
            Err(OboError::BadSignature)
        ));
        let other = node(&mut p, "000.00.14.H62", lgsp_certs::Role::Node);
        let mut forged = alone.clone();
        forged.signature = Signer::new(&other)
            .unwrap()
            .sign(&envelope(), now_ms(), &audience())
            .unwrap()
            .signature;
        assert!(matches!(
            Auditor::default().audit(&for_log(&forged), "r-1"),
            Err(OboError::BadSignature)
        ));
        assert!(matches!(
            Auditor::default().audit("not base64!", "r-1"),
            Err(OboError::Malformed(_))
        ));
    }

    #[test]
    fn a_record_naming_another_request_id_than_the_request_it_signs_is_refused() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        // Signed by the node's own key, digest and service right, but the
        // record's request id is not the envelope's: a log would keep a
        // record no audit could match to its entry.
        let signed = sign(&creds, &envelope(), now_ms(), &audience()).unwrap();
        let mut record = OnBehalfOf::decode(signed.record.as_slice()).unwrap();
        record.request_id = "r-other".into();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            creds.key.secret_der(),
            &SystemRandom::new(),
        )
        .unwrap();
        let record = record.encode_to_vec();
        let signature = key
            .sign(&SystemRandom::new(), &signed_bytes(&record))
            .unwrap();
        let mismatched = SignedOnBehalfOf {
            record,
            signature: signature.as_ref().to_vec(),
            ..Default::default()
        };
        match verify(&mismatched, &envelope(), &creds.roots, now_ms()) {
            Err(OboError::OtherRequest(id)) => assert_eq!(id, "r-1"),
            other => panic!("accepted a record of another request id: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_whose_batch_is_never_closed_is_signed_by_its_own_caller_after_a_second() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signer = Signer::new(&creds).unwrap();
        // A batch opened whose closing never comes: a record is pending
        // with no timer to sign it.
        let (stranded, answer) = oneshot::channel();
        let first = signer
            .record_for((&envelopes(1)[0]).into(), now_ms(), &audience())
            .encode_to_vec();
        signer
            .batching
            .pending
            .lock()
            .unwrap()
            .records
            .push((first, stranded));
        let started = tokio::time::Instant::now();
        let env = envelope();
        let signed = signer
            .sign_batched(&env, now_ms(), &audience())
            .await
            .unwrap();
        assert_eq!(started.elapsed(), BATCH_STALLED);
        assert_eq!(signed.batch_size, 2, "signed with the stranded record");
        verify(&signed, &env, &creds.roots, now_ms()).unwrap();
        assert_eq!(answer.await.unwrap().unwrap().batch_size, 2);
        // Nothing pending: signing it is a no-op, not an empty batch.
        signer.batching.sign_pending();
        assert!(signer.batching.pending.lock().unwrap().records.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batched_record_altered_moved_or_given_another_path_or_signature_is_refused() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signer = Signer::new(&creds).unwrap();
        let envs = envelopes(5);
        let signed = signed_in_one_batch(&signer, &envs).await;
        // Another batch, of other calls (the same calls at the same
        // millisecond would make the same tree, which its signature covers
        // as well as the first's).
        let others: Vec<Envelope> = envelopes(5)
            .into_iter()
            .map(|env| Envelope {
                request_id: format!("other-{}", env.request_id),
                ..env
            })
            .collect();
        let other_batch = signed_in_one_batch(&signer, &others).await;
        let sizes: Vec<u32> = signed
            .iter()
            .chain(&other_batch)
            .map(|s| s.batch_size)
            .collect();
        assert_eq!(sizes, [5; 10], "two batches of five");
        let refused = |s: &SignedOnBehalfOf| {
            // A verifier that has seen the real batch: what it remembers
            // must not let an altered record through.
            let verifier = Verifier::default();
            verifier
                .verify(&signed[0], &envs[0], &creds.roots, now_ms())
                .unwrap();
            match verifier.verify(s, &envs[3], &creds.roots, now_ms()) {
                Ok(_) => panic!(
                    "an altered record verified: index {}, size {}, {} hashes of path, {} signature",
                    s.leaf_index,
                    s.batch_size,
                    s.audit_path.len(),
                    if s.signature == signed[3].signature {
                        "its own"
                    } else {
                        "another"
                    }
                ),
                Err(e) => e,
            }
        };
        let mut moved = signed[3].clone();
        moved.leaf_index = 2;
        assert_eq!(refused(&moved), OboError::BadSignature);
        // A size that makes it the last leaf: another shape of tree.
        let mut resized = signed[3].clone();
        resized.batch_size = 4;
        assert_eq!(refused(&resized), OboError::BadSignature);
        let mut other_path = signed[3].clone();
        other_path.audit_path = signed[2].audit_path.clone();
        assert_eq!(refused(&other_path), OboError::BadSignature);
        let mut other_signature = signed[3].clone();
        other_signature.signature = other_batch[3].signature.clone();
        assert_eq!(refused(&other_signature), OboError::BadSignature);
        // Without its salt, or with another leaf's, the leaf is another.
        let mut unsalted = signed[3].clone();
        unsalted.leaf_salt.clear();
        let mut other_salt = signed[3].clone();
        other_salt.leaf_salt = signed[2].leaf_salt.clone();
        assert_eq!(refused(&unsalted), OboError::BadSignature);
        assert_eq!(refused(&other_salt), OboError::BadSignature);
        // Presented as signed alone, a batch's signature covers nothing.
        let mut unbatched = signed[3].clone();
        (
            unbatched.batch_size,
            unbatched.leaf_index,
            unbatched.audit_path,
        ) = (0, 0, Vec::new());
        assert_eq!(refused(&unbatched), OboError::BadSignature);
        // Another record swapped into the leaf (another agency's certificate).
        let intruder = node(&mut p, "000.00.14.H62", lgsp_certs::Role::Node);
        let mut record = OnBehalfOf::decode(signed[3].record.as_slice()).unwrap();
        record.certificate = intruder.chain[0].to_vec();
        let mut swapped = signed[3].clone();
        swapped.record = record.encode_to_vec();
        assert_eq!(refused(&swapped), OboError::BadSignature);
        // The untouched record verifies.
        let verifier = Verifier::default();
        verifier
            .verify(&signed[3], &envs[3], &creds.roots, now_ms())
            .unwrap();
    }

    #[test]
    fn altered_forged_expired_and_replayed_records_are_refused() {
        let mut p = instance("p.example");
        let mut other = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signed = sign(&creds, &envelope(), now_ms(), &audience()).unwrap();
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
            ..Default::default()
        };
        assert_eq!(
            verify(&forged, &envelope(), &creds.roots, now_ms()).unwrap_err(),
            OboError::BadSignature
        );
        // Signed by a certificate of a CA not trusted for the instance (same name).
        let stranger = node(&mut other, "000.00.13.H62", lgsp_certs::Role::Node);
        let foreign = sign(&stranger, &envelope(), now_ms(), &audience()).unwrap();
        assert!(matches!(
            verify(&foreign, &envelope(), &creds.roots, now_ms()),
            Err(OboError::Untrusted(_))
        ));
        // Old.
        let old = sign(&creds, &envelope(), now_ms() - 600_000, &audience()).unwrap();
        assert!(matches!(
            verify(&old, &envelope(), &creds.roots, now_ms()),
            Err(OboError::Expired(_))
        ));
        // Signed by a hub, not a node.
        let hub = node(&mut p, "000.00.00.H62", lgsp_certs::Role::Hub);
        let by_hub = sign(&hub, &envelope(), now_ms(), &audience()).unwrap();
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

    fn query() -> lgsp_proto::QueryRequest {
        lgsp_proto::QueryRequest {
            service_id: "G01.00.01/dan-cu".into(),
            page_size: 100,
            request_id: "r-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_query_record_verifies_for_its_query_only_and_never_as_a_call() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signed = sign(&creds, &query(), now_ms(), &audience()).unwrap();
        let v = verify(&signed, &query(), &creds.roots, now_ms()).unwrap();
        assert_eq!(v.consumer(), "000.00.13.H62@p.example");
        assert!(v.record.query);
        // Another query (a filter added on the way): refused.
        let mut changed = query();
        changed.filters.push(lgsp_proto::FieldFilter {
            field: "ho_ten".into(),
            equals: "Nguyễn Văn A".into(),
        });
        assert!(matches!(
            verify(&signed, &changed, &creds.roots, now_ms()),
            Err(OboError::OtherRequest(_))
        ));
        // A query record presented with a call, and a call record with a
        // query, of the same service and request id: refused, saying which.
        let e = verify(&signed, &envelope(), &creds.roots, now_ms()).unwrap_err();
        assert!(e.to_string().contains("signed for a query stream"), "{e}");
        let call = sign(&creds, &envelope(), now_ms(), &audience()).unwrap();
        let e = verify(&call, &query(), &creds.roots, now_ms()).unwrap_err();
        assert!(e.to_string().contains("signed for a call"), "{e}");
    }

    #[test]
    fn a_record_is_served_only_by_the_instance_and_through_the_hub_it_is_addressed_to() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let signed = sign(&creds, &envelope(), now_ms(), &audience()).unwrap();
        let v = verify(&signed, &envelope(), &creds.roots, now_ms()).unwrap();
        let hub = audience().via_hub;
        v.addressed_to("q.example", Some(&hub)).unwrap();
        v.addressed_to("q.example", None).unwrap();
        // Replayed to another instance.
        assert!(matches!(
            v.addressed_to("r.example", None),
            Err(OboError::OtherAudience { .. })
        ));
        // Replayed through another hub of the signer's province.
        let other_hub = "spiffe://p.example/agency/000.00.00.H62/hub/hub-2";
        let e = v.addressed_to("q.example", Some(other_hub)).unwrap_err();
        assert!(matches!(e, OboError::OtherHub { .. }), "{e:?}");
        assert!(e.to_string().contains("hub-2"), "{e}");
        // A record that names no audience (an older signer): refused, saying so.
        let unaddressed = sign(&creds, &envelope(), now_ms(), &Audience::default()).unwrap();
        let e = verify(&unaddressed, &envelope(), &creds.roots, now_ms())
            .unwrap()
            .addressed_to("q.example", None)
            .unwrap_err();
        assert!(e.to_string().contains("no instance"), "{e}");
    }

    #[test]
    fn a_hub_record_for_a_rest_client_is_addressed_to_the_hubs_own_instance() {
        let mut p = instance("p.example");
        let mut outside = instance("moj.example");
        let hub = node(&mut p, "000.00.00.H62", lgsp_certs::Role::Hub);
        let caller = node(&mut outside, "000.00.07.G01", lgsp_certs::Role::Node);
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
                &rest_client(&outside),
                now_ms(),
            )
            .unwrap();
        v.addressed_to("p.example", None).unwrap();
        assert!(v.addressed_to("other.example", None).is_err());
    }

    fn caller(creds: &Credentials) -> lgsp_certs::Peer {
        lgsp_certs::peer::peer_identity(&creds.chain[0]).unwrap()
    }

    #[test]
    fn the_own_hub_takes_only_the_callers_own_record_for_this_request() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let verifier = Verifier::default();
        let signed = sign(&creds, &envelope(), now_ms(), &audience()).unwrap();
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
        let theirs = sign(&other, &envelope(), now_ms(), &audience()).unwrap();
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
        let old = sign(&creds, &envelope(), now_ms() - 600_000, &audience()).unwrap();
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
        let by_hub = sign(&hub, &envelope(), now_ms(), &audience()).unwrap();
        assert!(matches!(
            verifier.check_from_signer(&by_hub, &envelope(), &creds.roots, &caller(&hub), now_ms()),
            Err(OboError::NotANode(_))
        ));
    }

    #[test]
    fn a_broken_signature_is_refused_by_the_own_hub_too_so_that_no_log_keeps_it() {
        let mut p = instance("p.example");
        let creds = node(&mut p, "000.00.13.H62", lgsp_certs::Role::Node);
        let mut signed = sign(&creds, &envelope(), now_ms(), &audience()).unwrap();
        signed.signature[10] ^= 1;
        // The own hub knows the caller from the handshake, but keeps the
        // record in its log: it must prove itself there as at the far side.
        assert_eq!(
            Verifier::default()
                .check_from_signer(
                    &signed,
                    &envelope(),
                    &creds.roots,
                    &caller(&creds),
                    now_ms(),
                )
                .unwrap_err(),
            OboError::BadSignature
        );
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
