//! The two kinds of line in the log, entries and seals: their fields, the bytes lgsp
//! writes for them, and reading them back with the entry's hash checked against its
//! bytes.

use crate::error::AuditError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The `prev` of entry 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a version 1 seal's signature covers, before the sequence number and the head.
const SEAL_CONTEXT_V1: &str = "lgsp-sharing-log-seal\n";

/// What a version 2 seal's signature covers, before the seal's own fields. The
/// version sits in the prefix, so no version 2 message reads as a version 1 one.
const SEAL_CONTEXT_V2: &str = "lgsp-sharing-log-seal/v2\n";

/// The seal format lgsp writes: the signature covers every field of the seal.
pub const SEAL_VERSION: u32 = 2;

/// One exchange as the node saw it: what the caller of
/// [`SharingLog::append`](crate::SharingLog::append) provides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// The request id that crosses nodes (and appears in `tracing` spans).
    pub request_id: String,
    /// `"provider"` when this node served the call, `"consumer"` when it made it.
    pub side: String,
    /// The consumer's agency code (QCVN 102), from its certificate.
    pub consumer: String,
    /// The provider's agency code.
    pub provider: String,
    /// The service id, `<provider agency code>/<service name>`.
    pub service: String,
    /// The operation called on the service, as the request envelope names it
    /// (`query` for a dataset query).
    pub operation: String,
    /// SHA-256 of the request message, lower-case hex.
    pub request_sha256: String,
    /// SHA-256 of the response (all of it, for a stream), lower-case hex.
    pub response_sha256: String,
    /// The gRPC status code name: `OK`, `PERMISSION_DENIED`...
    pub status: String,
    /// How long the exchange took on this node, in microseconds.
    pub latency_us: u64,
    /// Size of the request message, in bytes.
    pub bytes_in: u64,
    /// Size of the response (all of it, for a stream), in bytes.
    pub bytes_out: u64,
    /// The ids an external system gave the exchange, by header name (an
    /// X-Road security server's `x-road-id` and `x-road-request-id`), when
    /// this node called one; absent from the line when there are none, so
    /// entries without them read as before.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
    /// For an exchange made on behalf of a consumer of another instance (or
    /// of an outside REST system): the signed record this node signed or
    /// accepted, base64 of the encoded `SignedOnBehalfOf`, so that the log
    /// proves who asked, not only which hub called (`lgsp audit verify`
    /// checks its signature); absent from the line otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

/// An entry as read back from the log; the field order is the canonical one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The entry's sequence number: 1 for the first, one more for each after.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds: `2025-03-01T01:02:03.456Z`.
    pub time: String,
    /// As [`Exchange::request_id`].
    pub request_id: String,
    /// As [`Exchange::side`]: `"provider"` or `"consumer"`.
    pub side: String,
    /// As [`Exchange::consumer`]: the consumer's agency code.
    pub consumer: String,
    /// As [`Exchange::provider`]: the provider's agency code.
    pub provider: String,
    /// As [`Exchange::service`]: `<provider agency code>/<service name>`.
    pub service: String,
    /// As [`Exchange::operation`].
    pub operation: String,
    /// As [`Exchange::request_sha256`]: SHA-256 of the request, lower-case hex.
    pub request_sha256: String,
    /// As [`Exchange::response_sha256`]: SHA-256 of the response, lower-case hex.
    pub response_sha256: String,
    /// As [`Exchange::status`]: the gRPC status code name.
    pub status: String,
    /// As [`Exchange::latency_us`], in microseconds.
    pub latency_us: u64,
    /// As [`Exchange::bytes_in`], in bytes.
    pub bytes_in: u64,
    /// As [`Exchange::bytes_out`], in bytes.
    pub bytes_out: u64,
    /// As [`Exchange::external_ids`]; empty when the line has none.
    #[serde(default)]
    pub external_ids: BTreeMap<String, String>,
    /// As [`Exchange::on_behalf_of`]; `None` when the line has none.
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    /// The previous entry's hash ([`GENESIS`] for entry 1): the link of the chain.
    pub prev: String,
    /// SHA-256 of the entry's canonical form (every field but this one),
    /// lower-case hex; checked against the line's bytes when it is read.
    pub hash: String,
}

/// The canonical form of an entry: [`Entry`] without `hash`. serde writes a flattened
/// struct's fields in place, so the order is the same as [`Entry`]'s. The log writes
/// these bytes with [`encode_with_fields`]; this is the definition it is tested against.
#[cfg(test)]
#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    time: &'a str,
    #[serde(flatten)]
    exchange: &'a Exchange,
    prev: &'a str,
}

/// A seal: the node's signature over the chain up to entry `seq`.
///
/// In version 2 (`v` is 2) the signature covers every other field of the seal, so
/// its time and signer are as the node wrote them. A seal without `v` is version 1,
/// from lgsp before seals were versioned: its signature covers only `seq` and `head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// The seal format: `Some(2)` for the seals lgsp writes, `None` for version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// The newest entry the seal covers; it vouches for that entry and, through
    /// the chain, every one before it.
    pub seq: u64,
    /// The hash of entry `seq`.
    pub head: String,
    /// When the seal was signed, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The SPIFFE ID of the node that signed.
    pub signer: String,
    /// SHA-256 (lower-case hex) of the DER of the certificate whose key signed;
    /// `None` in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// ECDSA P-256 SHA-256, fixed-width `r‖s`, lower-case hex, over
    /// [`Seal::message`].
    pub signature: String,
}

impl Seal {
    /// The bytes the signature covers. Version 2: `"lgsp-sharing-log-seal/v2\n"` then the
    /// seal's JSON object without `signature` (`{"v":2,"seq":..,"head":..,"time":..,
    /// "signer":..,"cert":..}`, compact, in that order). Version 1:
    /// `"lgsp-sharing-log-seal\n" + seq + "\n" + head`.
    pub fn message(&self) -> Vec<u8> {
        if self.v.is_none() {
            return format!("{SEAL_CONTEXT_V1}{}\n{}", self.seq, self.head).into_bytes();
        }
        #[derive(Serialize)]
        struct Signed<'a> {
            v: Option<u32>,
            seq: u64,
            head: &'a str,
            time: &'a str,
            signer: &'a str,
            cert: Option<&'a str>,
        }
        let mut message = SEAL_CONTEXT_V2.as_bytes().to_vec();
        serde_json::to_writer(
            &mut message,
            &Signed {
                v: self.v,
                seq: self.seq,
                head: &self.head,
                time: &self.time,
                signer: &self.signer,
                cert: self.cert.as_deref(),
            },
        )
        .expect("a seal of strings and integers always serializes");
        message
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SealLine {
    pub(crate) seal: Seal,
}

pub(crate) const SEAL_PREFIX: &[u8] = b"{\"seal\":";

/// How an export begins: the line `{"export":{…}}` before its entries.
///
/// In version 2 the node's key signs the header ([`ExportHeader::message`]):
/// the range asked for, the first and last entries of the range (numbers, and
/// the chain heads before the first and at the last), the signer and its
/// certificate. An export cut short (its end removed, seals and all) no longer
/// reaches the last entry its header names, and fails on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// The export format: [`EXPORT_VERSION`] for the exports lgsp writes.
    pub v: u32,
    /// The start of the range asked for (RFC 3339 UTC), `None` for the log's beginning.
    pub from: Option<String>,
    /// The end of the range asked for, `None` for the log's end.
    pub to: Option<String>,
    /// The first exported entry's sequence number.
    pub first: u64,
    /// The chain head before it: the hash of entry `first - 1` ([`GENESIS`] when
    /// `first` is 1). The exported entries chain on from it to a seal.
    pub prev: String,
    /// The range's last exported entry: the export holds every entry up to it
    /// (and on to the seal that covers it). `None` in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
    /// The hash of entry `last`. `None` in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_head: Option<String>,
    /// The SPIFFE ID of the node whose key signed the header. `None` in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// SHA-256 (lower-case hex) of the signing certificate's DER. `None` in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// ECDSA P-256 SHA-256, fixed-width `r‖s`, lower-case hex, over
    /// [`ExportHeader::message`]. `None` in version 1, whose header is not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What an export header's signature covers, before the header's fields.
const EXPORT_CONTEXT_V2: &str = "lgsp-sharing-log-export/v2\n";

impl ExportHeader {
    /// The bytes the signature covers: `"lgsp-sharing-log-export/v2\n"` then the
    /// header's JSON object without `signature`, compact, in field order.
    pub fn message(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        let mut message = EXPORT_CONTEXT_V2.as_bytes().to_vec();
        serde_json::to_writer(&mut message, &unsigned)
            .expect("a header of strings and integers always serializes");
        message
    }
}

/// The export format `export` writes: version 2, whose header is signed.
pub const EXPORT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportLine {
    pub(crate) export: ExportHeader,
}

pub(crate) const EXPORT_PREFIX: &[u8] = b"{\"export\":";

/// The entry line for `exchange` as entry `seq` after `prev`, with its newline, and its hash.
#[cfg(test)]
pub(crate) fn encode_entry(
    seq: u64,
    time: &str,
    exchange: &Exchange,
    prev: &str,
) -> (Vec<u8>, String) {
    encode_with_fields(seq, time, &ExchangeFields::of(exchange), prev)
}

/// An exchange as the JSON members of its entry line (without braces): the
/// part of the line known before its place in the chain, written outside
/// the log's lock.
pub(crate) struct ExchangeFields(Vec<u8>);

impl ExchangeFields {
    pub(crate) fn of(exchange: &Exchange) -> Self {
        let mut object = serde_json::to_vec(exchange)
            .expect("an entry of strings and integers always serializes");
        object.pop(); // `}`
        object.remove(0); // `{`
        Self(object)
    }
}

/// The bytes serde_json writes for [`Canonical`], put together from their
/// parts (a unit test holds the two equal): `{"seq":..,"time":..,` the
/// exchange's members `,"prev":..}`.
pub(crate) fn encode_with_fields(
    seq: u64,
    time: &str,
    fields: &ExchangeFields,
    prev: &str,
) -> (Vec<u8>, String) {
    let mut line = Vec::with_capacity(fields.0.len() + time.len() + prev.len() + 120);
    line.extend_from_slice(b"{\"seq\":");
    line.extend_from_slice(seq.to_string().as_bytes());
    line.extend_from_slice(b",\"time\":");
    serde_json::to_writer(&mut line, time).expect("a string always serializes");
    line.push(b',');
    line.extend_from_slice(&fields.0);
    line.extend_from_slice(b",\"prev\":");
    serde_json::to_writer(&mut line, prev).expect("a string always serializes");
    line.push(b'}');
    let hash = hex::encode(Sha256::digest(&line));
    line.pop(); // the closing brace
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// Reads an entry line (without its newline) and checks its hash against its bytes.
pub(crate) fn decode_entry(line: &[u8], number: usize) -> Result<Entry, AuditError> {
    let entry: Entry = serde_json::from_slice(line).map_err(|e| not_json(number, &e))?;
    let tampered = |why: &str| AuditError::Tampered {
        line: number,
        seq: Some(entry.seq),
        why: why.to_owned(),
    };
    let suffix = format!(",\"hash\":\"{}\"}}", entry.hash);
    let Some(body) = line.strip_suffix(suffix.as_bytes()) else {
        return Err(tampered(
            "not in the form lgsp writes (`hash` must be the last field, with nothing after it)",
        ));
    };
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    if hex::encode(hasher.finalize()) != entry.hash {
        return Err(tampered("hash does not match its content"));
    }
    Ok(entry)
}

pub(crate) fn decode_seal(line: &[u8], number: usize) -> Result<Seal, AuditError> {
    serde_json::from_slice::<SealLine>(line)
        .map(|l| l.seal)
        .map_err(|e| not_json(number, &e))
}

pub(crate) fn decode_export_header(line: &[u8], number: usize) -> Result<ExportHeader, AuditError> {
    serde_json::from_slice::<ExportLine>(line)
        .map(|l| l.export)
        .map_err(|e| not_json(number, &e))
}

pub(crate) fn not_json(number: usize, error: &serde_json::Error) -> AuditError {
    let why = if error.is_data() {
        format!("not a valid entry or seal ({error})")
    } else {
        format!("not valid JSON ({error})")
    };
    AuditError::Tampered {
        line: number,
        seq: None,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, exchange};
    use crate::timestamp::parse_time;

    #[test]
    fn entry_lines_are_the_bytes_serde_writes_for_the_canonical_form() {
        let mut tricky = exchange(7);
        tricky.operation = "tra-cứu \"đặc biệt\"\\\n\t\u{1}".into();
        tricky.consumer = "Sở Tư pháp".into();
        for (seq, ex, prev) in [
            (1, exchange(1), "0".repeat(64)),
            (u64::MAX, tricky, "ab\"c".to_owned()),
        ] {
            let time = "2026-11-27T06:40:00.123Z";
            let expected = serde_json::to_vec(&Canonical {
                seq,
                time,
                exchange: &ex,
                prev: &prev,
            })
            .unwrap();
            let (line, hash) = encode_entry(seq, time, &ex, &prev);
            let body = &line[..line.len() - ",\"hash\":\"\"}\n".len() - hash.len()];
            assert_eq!(
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(&expected[..expected.len() - 1])
            );
            assert_eq!(hash, hex::encode(Sha256::digest(&expected)));
        }
    }

    #[test]
    fn entry_line_is_its_canonical_form_plus_hash() {
        let f = Fixture::new("canonical");
        let log = f.open();
        log.append(exchange(1)).unwrap();
        log.seal().unwrap();
        let line = &f.lines()[0];
        let entry: Entry = serde_json::from_str(line).unwrap();
        let canonical = format!(
            "{{\"seq\":1,\"time\":\"{}\",\"request_id\":\"req-1\",\"side\":\"provider\",\
             \"consumer\":\"000.00.12.H62\",\"provider\":\"000.00.15.H62\",\
             \"service\":\"ho-tich/khai-sinh\",\"operation\":\"query\",\
             \"request_sha256\":\"{}\",\"response_sha256\":\"{}\",\"status\":\"OK\",\
             \"latency_us\":1235,\"bytes_in\":100,\"bytes_out\":2048,\"prev\":\"{GENESIS}\"}}",
            entry.time, entry.request_sha256, entry.response_sha256
        );
        assert_eq!(entry.hash, hex::encode(Sha256::digest(&canonical)));
        assert_eq!(
            *line,
            format!(
                "{},\"hash\":\"{}\"}}",
                &canonical[..canonical.len() - 1],
                entry.hash
            )
        );
        assert!(parse_time(&entry.time).is_some());
        assert_eq!(entry.time.len(), "2025-03-01T01:02:03.456Z".len());
    }

    #[test]
    fn external_ids_are_hashed_with_the_entry_and_an_entry_without_them_reads_as_before() {
        let plain = exchange(4);
        let (line, _) = encode_entry(4, "2025-03-01T01:02:03.456Z", &plain, GENESIS);
        assert!(!String::from_utf8_lossy(&line).contains("external_ids"));
        let mut with = plain.clone();
        with.external_ids
            .insert("x-road-id".into(), "xr-0001".into());
        let (line, _) = encode_entry(4, "2025-03-01T01:02:03.456Z", &with, GENESIS);
        let entry = decode_entry(&line[..line.len() - 1], 1).unwrap();
        assert_eq!(entry.external_ids["x-road-id"], "xr-0001");
        // Changing them changes the hash: the line no longer verifies.
        let text = String::from_utf8(line)
            .unwrap()
            .replace("xr-0001", "xr-0002");
        assert!(decode_entry(&text.as_bytes()[..text.len() - 1], 1).is_err());
    }

    #[test]
    fn an_on_behalf_of_record_is_hashed_with_the_entry_and_an_entry_without_it_reads_as_before() {
        let plain = exchange(5);
        let (line, _) = encode_entry(5, "2025-03-01T01:02:03.456Z", &plain, GENESIS);
        assert!(!String::from_utf8_lossy(&line).contains("on_behalf_of"));
        let mut with = plain.clone();
        with.on_behalf_of = Some("CgRyZWNvcmQSA3NpZw==".into());
        let (line, _) = encode_entry(5, "2025-03-01T01:02:03.456Z", &with, GENESIS);
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.contains(r#""bytes_out":2048,"on_behalf_of":"CgRyZWNvcmQSA3NpZw==","prev":"#),
            "after the exchange's other fields, before prev: {text}"
        );
        let entry = decode_entry(&text.as_bytes()[..text.len() - 1], 1).unwrap();
        assert_eq!(entry.on_behalf_of.as_deref(), Some("CgRyZWNvcmQSA3NpZw=="));
        let altered = text.replace("CgRyZWNvcmQSA3NpZw==", "CgRyZWNvcmQSA3NpZx==");
        assert!(decode_entry(&altered.as_bytes()[..altered.len() - 1], 1).is_err());
    }

    #[test]
    fn vietnamese_entry_decodes_to_its_fields_with_diacritics_intact() {
        let mut ex = exchange(3);
        ex.consumer = "Sở Tư pháp tỉnh Vĩnh Phúc".into();
        ex.service = "Đăng ký hộ tịch: khai sinh, kết hôn".into();
        ex.operation = "truy vấn \"theo số định danh\"".into();
        let (line, hash) = encode_entry(3, "2025-03-01T01:02:03.456Z", &ex, GENESIS);
        let text = std::str::from_utf8(&line).unwrap();
        assert!(
            text.contains("Sở Tư pháp tỉnh Vĩnh Phúc"),
            "raw UTF-8, not \\u escapes"
        );
        let entry = decode_entry(&line[..line.len() - 1], 1).unwrap();
        let read_back = Exchange {
            request_id: entry.request_id,
            side: entry.side,
            consumer: entry.consumer,
            provider: entry.provider,
            service: entry.service,
            operation: entry.operation,
            request_sha256: entry.request_sha256,
            response_sha256: entry.response_sha256,
            status: entry.status,
            latency_us: entry.latency_us,
            bytes_in: entry.bytes_in,
            bytes_out: entry.bytes_out,
            external_ids: entry.external_ids,
            on_behalf_of: entry.on_behalf_of,
        };
        assert_eq!(read_back, ex);
        assert_eq!(
            (
                entry.seq,
                entry.time.as_str(),
                entry.prev.as_str(),
                entry.hash
            ),
            (3, "2025-03-01T01:02:03.456Z", GENESIS, hash)
        );
    }

    #[test]
    fn entry_with_hash_not_last_is_refused_though_its_hash_matches() {
        let (line, _) = encode_entry(1, "2025-03-01T01:02:03.456Z", &exchange(1), GENESIS);
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&line).unwrap();
        let hash = object.shift_remove("hash").unwrap();
        let mut reordered = serde_json::Map::new();
        reordered.insert("hash".into(), hash);
        reordered.extend(object);
        let line = serde_json::to_vec(&reordered).unwrap();
        match decode_entry(&line, 4) {
            Err(AuditError::Tampered { line, seq, why }) => {
                assert_eq!((line, seq), (4, Some(1)));
                assert!(why.starts_with("not in the form lgsp writes"), "{why}");
            }
            other => panic!("expected the entry to be refused, got {other:?}"),
        }
    }

    #[test]
    fn seal_line_round_trips() {
        let seal = Seal {
            v: Some(SEAL_VERSION),
            seq: 42,
            head: "ab".repeat(32),
            time: "2025-03-01T01:02:03.456Z".into(),
            signer: "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1".into(),
            cert: Some("ef".repeat(32)),
            signature: "cd".repeat(64),
        };
        let line = serde_json::to_vec(&SealLine { seal: seal.clone() }).unwrap();
        assert!(line.starts_with(SEAL_PREFIX));
        assert_eq!(decode_seal(&line, 1).unwrap(), seal);
    }

    fn v1_seal() -> Seal {
        Seal {
            v: None,
            seq: 7,
            head: "abc".into(),
            time: "2025-03-01T01:02:03.456Z".into(),
            signer: "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1".into(),
            cert: None,
            signature: String::new(),
        }
    }

    #[test]
    fn version_1_seal_message_binds_only_the_number_and_the_head() {
        let seal = v1_seal();
        assert_eq!(seal.message(), b"lgsp-sharing-log-seal\n7\nabc");
        let other = Seal {
            seq: 1,
            head: "7abc".into(),
            ..seal.clone()
        };
        assert_ne!(seal.message(), other.message());
        let line = br#"{"seal":{"seq":7,"head":"abc","time":"2025-03-01T01:02:03.456Z","signature":"","signer":"spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1"}}"#;
        assert_eq!(
            decode_seal(line, 1).unwrap(),
            seal,
            "the old line reads as v1"
        );
    }

    #[test]
    fn version_2_seal_message_binds_every_field_but_the_signature() {
        let seal = Seal {
            v: Some(2),
            cert: Some("ef".repeat(32)),
            ..v1_seal()
        };
        assert_eq!(
            String::from_utf8(seal.message()).unwrap(),
            format!(
                "lgsp-sharing-log-seal/v2\n{{\"v\":2,\"seq\":7,\"head\":\"abc\",\
                 \"time\":\"2025-03-01T01:02:03.456Z\",\
                 \"signer\":\"spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1\",\
                 \"cert\":\"{}\"}}",
                "ef".repeat(32)
            )
        );
        let edits: [fn(&mut Seal); 6] = [
            |s| s.seq += 1,
            |s| s.head.push('0'),
            |s| s.time = "2025-03-01T01:02:04.456Z".into(),
            |s| s.signer.push('x'),
            |s| s.cert = Some("ee".repeat(32)),
            |s| s.v = None,
        ];
        for edit in edits {
            let mut edited = seal.clone();
            edit(&mut edited);
            assert_ne!(edited.message(), seal.message(), "{edited:?}");
        }
        let mut resigned = seal.clone();
        resigned.signature = "00".into();
        assert_eq!(resigned.message(), seal.message());
    }
}
