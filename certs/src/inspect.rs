//! Reading certificates and CRLs back: the identity a peer certificate
//! carries, and the plain-words summary `lgsp ca show` prints.

use crate::error::{CertError, Result};
use crate::identity::SpiffeId;
use sha2::{Digest, Sha256};
use std::fmt;
use x509_parser::prelude::*;

/// Lower-case hex of a serial number without leading zero bytes, the one
/// spelling used everywhere in lgsp (CA index, CRL checks, logs).
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    hex::encode(&raw[start..])
}

/// Normalises a serial typed by a person (`3A:0F..`, `0x3a0f`, `3a0f`) to the
/// spelling of [`serial_hex`]; `None` when it is not hex or is empty.
pub fn normalize_serial(input: &str) -> Option<String> {
    let s = input.trim().trim_start_matches("0x").replace(':', "");
    let bytes = hex::decode(if s.len() % 2 == 1 { format!("0{s}") } else { s }).ok()?;
    (!bytes.is_empty()).then(|| serial_hex(&bytes))
}

/// What a certificate says, in the terms an operator needs.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The subject, `CN=…, O=…, OU=…`, UTF-8 kept (Vietnamese names intact).
    pub subject: String,
    /// The issuer, spelled as the subject is: the CA that signed it.
    pub issuer: String,
    /// The serial, lower-case hex: what `lgsp ca revoke --serial` takes.
    pub serial: String,
    /// Start of validity (UTC).
    pub not_before: ::time::OffsetDateTime,
    /// End of validity (UTC).
    pub not_after: ::time::OffsetDateTime,
    /// The SPIFFE ID, or the reason there is none usable.
    pub spiffe_id: std::result::Result<SpiffeId, String>,
    /// The DNS SANs: host names it may serve under.
    pub dns_names: Vec<String>,
    /// The IP SANs, as text (`127.0.0.1`, `::1`).
    pub ip_addresses: Vec<String>,
    /// Whether it is a CA certificate rather than a node's or a person's.
    pub is_ca: bool,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256: String,
}

impl CertInfo {
    /// Parses a DER certificate; fails with [`CertError::Parse`] naming `origin`.
    pub fn from_der(der: &[u8], origin: &std::path::Path) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse {
            path: origin.to_owned(),
            what: "X.509 certificate",
            why: e.to_string(),
        })?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(ip) => ip_addresses.push(format_ip(ip)),
                    _ => {}
                }
            }
        }
        let spiffe_id = match uris.as_slice() {
            [] => Err(CertError::NoSpiffeId.to_string()),
            [one] => SpiffeId::parse(one).map_err(|e| e.to_string()),
            many => Err(CertError::ManySpiffeIds(many.len()).to_string()),
        };
        Ok(Self {
            subject: dn_to_string(cert.subject()),
            issuer: dn_to_string(cert.issuer()),
            serial: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            spiffe_id,
            dns_names,
            ip_addresses,
            is_ca: cert.is_ca(),
            sha256: hex::encode(Sha256::digest(der)),
        })
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = ::time::OffsetDateTime::now_utc();
        let state = if now < self.not_before {
            "not yet valid"
        } else if now > self.not_after {
            "EXPIRED"
        } else {
            "valid now"
        };
        writeln!(f, "Subject:     {}", self.subject)?;
        match &self.spiffe_id {
            Ok(id) => {
                writeln!(f, "SPIFFE ID:   {id}")?;
                writeln!(
                    f,
                    "  agency {}, role {}, name {}",
                    id.agency, id.role, id.name
                )?;
            }
            Err(why) if self.is_ca => writeln!(f, "SPIFFE ID:   none (a CA certificate; {why})")?,
            Err(why) => writeln!(f, "SPIFFE ID:   none usable: {why}")?,
        }
        writeln!(f, "Serial:      {}", self.serial)?;
        writeln!(f, "Valid from:  {}", fmt_zoned(self.not_before))?;
        writeln!(f, "Valid until: {} ({state})", fmt_zoned(self.not_after))?;
        writeln!(f, "Issuer:      {}", self.issuer)?;
        if !self.dns_names.is_empty() || !self.ip_addresses.is_empty() {
            let all: Vec<&str> = self
                .dns_names
                .iter()
                .chain(&self.ip_addresses)
                .map(String::as_str)
                .collect();
            writeln!(f, "Hosts:       {}", all.join(", "))?;
        }
        writeln!(
            f,
            "Kind:        {}",
            if self.is_ca {
                "certificate authority"
            } else {
                "end entity"
            }
        )?;
        write!(f, "SHA-256:     {}", self.sha256)
    }
}

/// What a CRL says.
#[derive(Clone, Debug)]
pub struct CrlInfo {
    /// The CA that signed it, spelled as [`CertInfo::subject`] is.
    pub issuer: String,
    /// The CRL number, which grows with each CRL; `None` when absent or
    /// beyond 64 bits.
    pub number: Option<u64>,
    /// When it was signed (UTC).
    pub this_update: ::time::OffsetDateTime,
    /// When the next CRL is due (UTC), if it says.
    pub next_update: Option<::time::OffsetDateTime>,
    /// Serials of the certificates it revokes, lower-case hex.
    pub revoked: Vec<String>,
}

impl CrlInfo {
    /// Parses a DER CRL; fails with [`CertError::Parse`] naming `origin`.
    pub fn from_der(der: &[u8], origin: &std::path::Path) -> Result<Self> {
        let (_, crl) = CertificateRevocationList::from_der(der).map_err(|e| CertError::Parse {
            path: origin.to_owned(),
            what: "certificate revocation list",
            why: e.to_string(),
        })?;
        Ok(Self {
            issuer: dn_to_string(crl.issuer()),
            number: crl.crl_number().and_then(|n| u64::try_from(n.clone()).ok()),
            this_update: crl.last_update().to_datetime(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| serial_hex(r.raw_serial()))
                .collect(),
        })
    }
}

impl fmt::Display for CrlInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Revocation list of: {}", self.issuer)?;
        if let Some(n) = self.number {
            writeln!(f, "Number:      {n}")?;
        }
        writeln!(f, "Issued:      {}", fmt_zoned(self.this_update))?;
        if let Some(next) = self.next_update {
            writeln!(f, "Next update: {}", fmt_zoned(next))?;
        }
        write!(f, "Revoked:     {}", self.revoked.len())?;
        for s in &self.revoked {
            write!(f, "\n  {s}")?;
        }
        Ok(())
    }
}

/// A time with its offset, as lgsp shows it to people: `2025-03-12
/// 08:00:00 UTC`, or `2025-03-12 15:00:00 +07:00` once a caller has moved
/// it to the province's offset (`OffsetDateTime::to_offset`).
fn fmt_zoned(t: ::time::OffsetDateTime) -> String {
    let offset = t.offset();
    if offset.is_utc() {
        return format!("{} UTC", fmt_time(t));
    }
    let (h, m, _) = offset.as_hms();
    let sign = if offset.is_negative() { '-' } else { '+' };
    format!("{} {sign}{:02}:{:02}", fmt_time(t), h.abs(), m.abs())
}

/// A UTC time as lgsp prints it to people: `2025-03-12 08:00:00`.
pub(crate) fn fmt_time(t: ::time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn format_ip(raw: &[u8]) -> String {
    match raw.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(raw).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(raw).unwrap_or_default()).to_string(),
        _ => hex::encode(raw),
    }
}

/// Renders a distinguished name, keeping UTF-8 text (Vietnamese names) intact.
fn dn_to_string(name: &X509Name<'_>) -> String {
    let parts: Vec<String> = name
        .iter_attributes()
        .map(|attr| {
            let key = match attr.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.6" => "C",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                other => return format!("{other}={}", attr_text(attr)),
            };
            format!("{key}={}", attr_text(attr))
        })
        .collect();
    parts.join(", ")
}

fn attr_text(attr: &AttributeTypeAndValue<'_>) -> String {
    attr.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|_| hex::encode(attr.attr_value().data))
}

/// The PEM blocks of `text`, labelled as PEM names them ("CERTIFICATE",
/// "X509 CRL", "CERTIFICATE REQUEST", "PRIVATE KEY"...). Blocks of other kinds
/// are skipped. Fails with [`CertError::Parse`] for a malformed block.
pub fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let mut blocks = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) = item.map_err(|e| CertError::Parse {
            path: "<pem>".into(),
            what: "PEM file",
            why: e.to_string(),
        })?;
        let label = match kind {
            SectionKind::Certificate => "CERTIFICATE",
            SectionKind::Crl => "X509 CRL",
            SectionKind::Csr => "CERTIFICATE REQUEST",
            _ => "PRIVATE KEY",
        };
        blocks.push((label.to_owned(), der));
    }
    Ok(blocks)
}

/// The certificates (DER, in order) of PEM text `pem`; none when it is not
/// PEM. Other blocks (keys, CRLs) are skipped.
pub fn pem_certificates(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    pem_blocks(pem)
        .unwrap_or_default()
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| der.into())
        .collect()
}

/// Whether PEM texts `a` and `b` hold the same certificates, compared as
/// DER: a CA re-exported with other line endings, wrapping or a trailing
/// newline is the same CA. Texts holding no certificate are the same only
/// when they are equal.
pub fn same_certificates(a: &str, b: &str) -> bool {
    let (ca, cb) = (pem_certificates(a), pem_certificates(b));
    if ca.is_empty() || cb.is_empty() {
        return a == b;
    }
    ca == cb
}

/// Whether `cert` is signed by one of `roots` (CA certificates, DER): a
/// root whose subject is the certificate's issuer and whose key verifies its
/// signature. Its validity period is not looked at.
pub fn signed_by_one_of(
    cert: &X509Certificate<'_>,
    roots: &[rustls_pki_types::CertificateDer<'_>],
) -> bool {
    roots.iter().any(|root| {
        X509Certificate::from_der(root.as_ref()).is_ok_and(|(_, ca)| {
            ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    })
}

/// The trust domain of the provincial CA whose certificate is in `pem`
/// (`ca.crt`, a node's `ca.pem`): `lgsp ca init` writes it as the subject's
/// OU. Tools take the province from there instead of a built-in name.
/// Fails with [`CertError::Parse`] naming `origin` when the file holds no CA
/// certificate, or none with a trust domain as its OU.
pub fn ca_trust_domain(pem: &str, origin: &std::path::Path) -> Result<String> {
    let bad = |why: &str| CertError::Parse {
        path: origin.to_owned(),
        what: "CA certificate",
        why: why.to_owned(),
    };
    let mut saw_ca = false;
    for (label, der) in pem_blocks(pem).map_err(|_| bad("not a PEM file"))? {
        if label != "CERTIFICATE" {
            continue;
        }
        let Ok((_, cert)) = X509Certificate::from_der(&der) else {
            continue;
        };
        if !cert.is_ca() {
            continue;
        }
        saw_ca = true;
        let domain = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .find(|ou| crate::identity::validate_trust_domain(ou).is_ok());
        if let Some(domain) = domain {
            return Ok(domain.to_owned());
        }
    }
    Err(bad(if saw_ca {
        "its subject names no trust domain (lgsp ca init puts it in the OU); give --trust-domain"
    } else {
        "it holds no CA certificate (expected the provincial CA's ca.crt)"
    }))
}

/// What a certificate signing request asks for.
#[derive(Clone, Debug)]
pub struct CsrInfo {
    /// The subject it asks for, spelled as [`CertInfo::subject`] is.
    pub subject: String,
    /// Every URI SAN it asks for; the CA signs only a request with exactly
    /// one SPIFFE ID.
    pub spiffe_ids: Vec<String>,
    /// The DNS names and IP addresses it asks for, as text.
    pub hosts: Vec<String>,
}

impl CsrInfo {
    /// Parses a DER CSR; fails with [`CertError::Parse`] naming `origin`.
    pub fn from_der(der: &[u8], origin: &std::path::Path) -> Result<Self> {
        let (_, csr) = X509CertificationRequest::from_der(der).map_err(|e| CertError::Parse {
            path: origin.to_owned(),
            what: "certificate signing request",
            why: e.to_string(),
        })?;
        let mut spiffe_ids = Vec::new();
        let mut hosts = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => spiffe_ids.push(u.to_string()),
                        GeneralName::DNSName(d) => hosts.push(d.to_string()),
                        GeneralName::IPAddress(ip) => hosts.push(format_ip(ip)),
                        _ => {}
                    }
                }
            }
        }
        Ok(Self {
            subject: dn_to_string(&csr.certification_request_info.subject),
            spiffe_ids,
            hosts,
        })
    }
}

impl fmt::Display for CsrInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Signing request")?;
        writeln!(f, "Subject:     {}", self.subject)?;
        writeln!(f, "Asks for:    {}", self.spiffe_ids.join(", "))?;
        write!(f, "Hosts:       {}", self.hosts.join(", "))
    }
}

/// Parses the CRL `der` and checks that one of `roots` (CA certificates,
/// DER) issued and signed it; returns what it says. A CRL signed by another
/// key, even one with the same subject name as the CA, fails with
/// [`CertError::CrlSignature`].
pub fn verify_crl(der: &[u8], roots: &[rustls_pki_types::CertificateDer<'_>]) -> Result<CrlInfo> {
    let info = CrlInfo::from_der(der, std::path::Path::new("<crl>"))?;
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|e| CertError::Parse {
        path: "<crl>".into(),
        what: "certificate revocation list",
        why: e.to_string(),
    })?;
    let mut why = "no trusted CA certificate names its issuer".to_owned();
    for root in roots {
        let Ok((_, ca)) = X509Certificate::from_der(root.as_ref()) else {
            continue;
        };
        if ca.subject() != crl.issuer() {
            continue;
        }
        match crl.verify_signature(ca.public_key()) {
            Ok(()) => return Ok(info),
            Err(e) => why = format!("its signature does not verify with the CA's key ({e})"),
        }
    }
    Err(CertError::CrlSignature {
        issuer: info.issuer.clone(),
        number: info
            .number
            .map_or_else(|| "none".to_owned(), |n| n.to_string()),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_re_exported_with_crlf_and_a_trailing_newline_is_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let ca = crate::ca::CertificateAuthority::init(dir.path(), "moj.gov.vn", "CA", 30).unwrap();
        let pem = ca.cert_pem().to_owned();
        let re_exported = format!("{}\r\n\r\n", pem.trim_end().replace('\n', "\r\n"));
        assert_ne!(pem, re_exported);
        assert!(same_certificates(&pem, &re_exported));
        let stranger =
            crate::ca::CertificateAuthority::init(other.path(), "moj.gov.vn", "CA", 30).unwrap();
        assert!(!same_certificates(&pem, stranger.cert_pem()));
        // A bundle is the same only with the same certificates.
        let bundle = format!("{pem}{}", stranger.cert_pem());
        assert!(!same_certificates(&pem, &bundle));
        assert!(same_certificates(&bundle, &bundle.replace('\n', "\r\n")));
        assert!(!same_certificates("not pem", &pem));
    }

    #[test]
    fn a_certificate_is_signed_by_its_ca_and_not_by_a_stranger_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut ca =
            crate::ca::CertificateAuthority::init(dir.path(), "moj.gov.vn", "CA", 30).unwrap();
        let stranger =
            crate::ca::CertificateAuthority::init(other.path(), "moj.gov.vn", "CA", 30).unwrap();
        let id = SpiffeId::new(
            "moj.gov.vn",
            "000.00.07.G01".parse().unwrap(),
            crate::Role::Node,
            "app",
        )
        .unwrap();
        let issued = ca
            .issue(&crate::ca::LeafSpec::for_days(id, 10).unwrap())
            .unwrap();
        let der = pem_certificates(&issued.cert_pem).remove(0);
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        assert!(signed_by_one_of(&cert, &pem_certificates(ca.cert_pem())));
        assert!(!signed_by_one_of(
            &cert,
            &pem_certificates(stranger.cert_pem())
        ));
        assert!(!signed_by_one_of(&cert, &[]));
    }
}
