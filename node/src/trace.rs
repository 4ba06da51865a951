//! One exchange as the sharing log and the metrics see it, and the request
//! ids that tie the two sides' log entries together.

use crate::context::NodeContext;
use crate::deadline::Deadline;
use crate::refusal::{Refusal, code_name};
use lgsp_sharing_log::Exchange;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;
use tonic::Status;

/// The longest request id a caller may choose, in bytes.
pub(crate) const MAX_REQUEST_ID: usize = 128;
/// The most of a caller's service id and operation the sharing log keeps,
/// in bytes: a service id in the catalog is far shorter, and anything
/// longer is an attempt to fill the log.
const MAX_LOGGED_NAME: usize = 256;
/// The metrics label of every service that is not in the catalog: callers
/// choose service ids freely, and a label per id would grow the metrics
/// without bound.
pub(crate) const OTHER_SERVICE: &str = "(not in the catalog)";

/// Checks a request id a caller chose: at most [`MAX_REQUEST_ID`] bytes of
/// letters, digits, '-', '_', '.' and ':'. (An empty one is replaced by a
/// new id, not refused.)
pub(crate) fn check_request_id(id: &str) -> Result<(), Refusal> {
    let fine = id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if fine {
        Ok(())
    } else {
        Err(Refusal::BadRequestId {
            length: id.len(),
            max: MAX_REQUEST_ID,
        })
    }
}

/// Makes `id` (a request id the caller chose, or none) one the node logs:
/// an empty or bad one is replaced by a new id. Returns the refusal to
/// answer when the caller's id was bad (the call is still logged, under the
/// new id).
pub fn own_request_id(id: &mut String) -> Option<Refusal> {
    let refusal = check_request_id(id).err();
    if id.is_empty() || refusal.is_some() {
        *id = new_request_id();
    }
    refusal
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The ids an external system (an X-Road security server) gives an
/// exchange, by header name, which a failed exchange's status carries in its
/// metadata for the log entry: `x-road-id` and `x-road-request-id`.
pub const EXTERNAL_ID_HEADERS: [&str; 2] = ["x-road-id", "x-road-request-id"];

/// The most bytes of an external id kept from another instance's answer.
const MAX_EXTERNAL_ID: usize = 256;

/// Whether `name: value` is an external id this side takes from another
/// ([`EXTERNAL_ID_HEADERS`]): at most 256 bytes of visible ASCII, spaces
/// within and none around (HTTP/2 calls a field value with spaces around
/// it malformed: a proxy on the way would refuse the answer).
fn is_external_id(name: &str, value: &str) -> bool {
    EXTERNAL_ID_HEADERS.contains(&name)
        && !value.is_empty()
        && value.len() <= MAX_EXTERNAL_ID
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && value.trim() == value
}

/// Of what another instance's hub said of an exchange (its
/// `CallResponse.metadata`), the external ids only (see [`is_external_id`]):
/// what crosses the federation to the caller and into this side's log, and
/// nothing else a peer sends.
pub fn external_ids_only(
    metadata: std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, String> {
    metadata
        .into_iter()
        .filter(|(name, value)| is_external_id(name, value))
        .collect()
}

/// The external ids a failed exchange's status carries in its metadata,
/// checked as [`external_ids_only`] checks them.
pub fn status_external_ids(status: &tonic::Status) -> std::collections::HashMap<String, String> {
    external_ids_only(
        EXTERNAL_ID_HEADERS
            .iter()
            .filter_map(|name| {
                let value = status.metadata().get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect(),
    )
}

/// Puts the external ids of `ids` (see [`is_external_id`]) in `to`: as a
/// unary call's status carries them, and as the application gets them
/// with an answer.
pub fn put_external_ids(
    ids: &std::collections::HashMap<String, String>,
    to: &mut tonic::metadata::MetadataMap,
) {
    for (name, value) in ids.iter().filter(|(n, v)| is_external_id(n, v)) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()),
            tonic::metadata::AsciiMetadataValue::try_from(value.as_str()),
        ) {
            to.insert(key, value);
        }
    }
}

/// One exchange as the sharing log and the metrics see it: who, what and
/// when, taken as the call starts; `finish` adds the outcome and writes it.
/// A trace dropped unfinished (the caller cancelled, or its deadline passed
/// and the call was abandoned) is written then, with that outcome: every
/// exchange that started is in the log.
pub struct Trace {
    ctx: Arc<NodeContext>,
    side: &'static str,
    request_id: String,
    consumer: String,
    service_id: String,
    operation: String,
    request_sha256: String,
    bytes_in: u64,
    started: Instant,
    deadline: Option<Deadline>,
    external_ids: std::collections::BTreeMap<String, String>,
    on_behalf_of: Option<String>,
    written: bool,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("side", &self.side)
            .field("request_id", &self.request_id)
            .field("consumer", &self.consumer)
            .field("service_id", &self.service_id)
            .finish_non_exhaustive()
    }
}

impl Trace {
    /// Starts tracing an exchange on `side` ("provider", "consumer", "hub")
    /// for `consumer` (an agency code, or `agency@trust-domain` for one of
    /// another instance).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        ctx: &Arc<NodeContext>,
        side: &'static str,
        request_id: &str,
        consumer: &str,
        service_id: &str,
        operation: &str,
        request: &[u8],
        started: Instant,
        deadline: Option<Deadline>,
    ) -> Self {
        Self {
            ctx: ctx.clone(),
            side,
            request_id: bounded(request_id, MAX_REQUEST_ID),
            consumer: consumer.to_owned(),
            service_id: bounded(service_id, MAX_LOGGED_NAME),
            operation: bounded(operation, MAX_LOGGED_NAME),
            request_sha256: hex::encode(Sha256::digest(request)),
            bytes_in: request.len() as u64,
            started,
            deadline,
            external_ids: Default::default(),
            on_behalf_of: None,
            written: false,
        }
    }

    /// Keeps `signed`, the record of on whose behalf the exchange is made,
    /// in its log entry: only a record this node signed, verified or
    /// checked and carried on (one it refused is not kept, so a caller
    /// cannot put junk in the log).
    pub fn on_behalf_of(&mut self, signed: &lgsp_proto::SignedOnBehalfOf) {
        self.on_behalf_of = Some(crate::obo::for_log(signed));
    }

    /// Notes the ids an external system gave the exchange (by header
    /// name), for its log entry.
    pub fn external_ids(&mut self, ids: &std::collections::HashMap<String, String>) {
        self.external_ids
            .extend(ids.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Notes the ids an external system gave an exchange that failed, as
    /// the hub puts them in the status's metadata (see
    /// [`EXTERNAL_ID_HEADERS`]).
    pub fn external_ids_of(&mut self, status: &tonic::Status) {
        self.external_ids.extend(status_external_ids(status));
    }

    /// Records that the exchange was refused with `refusal` before any work,
    /// and returns the status to answer.
    pub fn refuse(self, refusal: Refusal) -> Status {
        let status = Status::from(refusal);
        self.finish(&Sha256::digest([]), status.code(), 0);
        status
    }

    /// Records the outcome: `response_sha256` is the digest of the payload
    /// (of every page, for a query), `bytes_out` its size, `code` how the
    /// exchange ended.
    pub fn finish(mut self, response_sha256: &[u8], code: tonic::Code, bytes_out: u64) {
        self.write(response_sha256, code, bytes_out);
    }

    fn write(&mut self, response_sha256: &[u8], code: tonic::Code, bytes_out: u64) {
        self.written = true;
        let latency = self.started.elapsed();
        let ctx = &self.ctx;
        // A call that succeeded was for a catalog service (it was
        // authorized or routed by it): only a failed call needs the lookup.
        let in_catalog = code == tonic::Code::Ok || ctx.cache.has_service(&self.service_id);
        let service_label = if in_catalog {
            self.service_id.as_str()
        } else {
            OTHER_SERVICE
        };
        ctx.metrics.observe(
            self.side,
            service_label,
            &self.consumer,
            code,
            latency,
            self.bytes_in,
            bytes_out,
        );
        let service = std::mem::take(&mut self.service_id);
        let entry = Exchange {
            provider: service.split('/').next().unwrap_or_default().to_owned(),
            request_id: std::mem::take(&mut self.request_id),
            side: self.side.to_owned(),
            consumer: std::mem::take(&mut self.consumer),
            service,
            operation: std::mem::take(&mut self.operation),
            request_sha256: std::mem::take(&mut self.request_sha256),
            response_sha256: hex::encode(response_sha256),
            status: code_name(code).to_owned(),
            latency_us: latency.as_micros() as u64,
            bytes_in: self.bytes_in,
            bytes_out,
            external_ids: std::mem::take(&mut self.external_ids),
            on_behalf_of: self.on_behalf_of.take(),
        };
        if let Err(error) = ctx.log.append(entry) {
            tracing::error!(%error, "cannot write the sharing log");
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let expired = self.deadline.is_some_and(|d| d.is_near_or_past());
        let code = if std::thread::panicking() {
            // Serving it failed; the caller is answered INTERNAL.
            tonic::Code::Internal
        } else if expired {
            tonic::Code::DeadlineExceeded
        } else {
            tonic::Code::Cancelled
        };
        self.write(&Sha256::digest([]), code, 0);
    }
}

/// The status code an exchange ended with.
pub fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    result.as_ref().err().map_or(tonic::Code::Ok, Status::code)
}

/// A request id for an exchange that came without one: 8 random bytes drawn
/// once per process, then a counter (32 hex digits). Unique without a
/// system call per exchange; not a secret.
pub fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        bytes
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(prefix);
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_and_plain_or_refused() {
        assert!(check_request_id("4f2a-01:x.y_z").is_ok());
        assert!(check_request_id("").is_ok());
        assert!(check_request_id(&"a".repeat(MAX_REQUEST_ID)).is_ok());
        assert!(check_request_id(&"a".repeat(MAX_REQUEST_ID + 1)).is_err());
        for bad in ["a b", "a\nb", "mã-số", "a\"b", "a/b"] {
            assert!(check_request_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn of_a_peers_answer_only_bounded_plain_external_ids_are_kept() {
        let from_peer: std::collections::HashMap<String, String> = [
            ("x-road-id", "lien-thong-001"),
            ("x-road-request-id", "c0ffee 42"),
            ("x-lgsp-consumer-agency", "000.00.07.G01"),
            ("authorization", "Bearer stolen"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let kept = external_ids_only(from_peer);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept["x-road-id"], "lien-thong-001");
        assert_eq!(kept["x-road-request-id"], "c0ffee 42");
        for bad in [
            "",
            "xr\r\nset-cookie: a",
            "mã-số",
            &"x".repeat(257),
            " xr-0001",
            "xr-0001 ",
            " ",
        ] {
            let one = [("x-road-id".to_owned(), bad.to_owned())].into();
            assert!(external_ids_only(one).is_empty(), "{bad:?} kept");
        }
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("ho-tich", 256), "ho-tich");
        let cut = bounded(&"đ".repeat(200), 255);
        assert!(cut.len() <= 255 + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
