//! The provincial certificate authority: a root key and certificate in a
//! directory, the certificates it issued and revoked, and the CRLs it signs.
//!
//! Layout of a CA directory: `ca.crt` (PEM), `ca.key` (PEM, mode 0600) and
//! `ca.json` (trust domain, issued and revoked serials, CRL number). Every
//! file is written whole to a temporary name and renamed, so a crash leaves
//! either the old or the new state.

use crate::error::{CertError, Result, io_err};
use crate::fsutil::{write_atomic, write_new};
use crate::identity::{SpiffeId, validate_trust_domain};
use crate::inspect::{normalize_serial, serial_hex};
use crate::name_policy::NamePolicy;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

const CERT_FILE: &str = "ca.crt";
const KEY_FILE: &str = "ca.key";
const STATE_FILE: &str = "ca.json";

/// The reasons a certificate can be revoked for, as RFC 5280 names them.
pub const REASONS: &str =
    "unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation";

/// Parses a revocation reason as [`REASONS`] spells it; fails with
/// [`CertError::Reason`] for any other word.
pub fn parse_reason(s: &str) -> Result<RevocationReason> {
    Ok(match s {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        other => return Err(CertError::Reason(other.to_owned(), REASONS)),
    })
}

fn reason_name(r: RevocationReason) -> &'static str {
    match r {
        RevocationReason::KeyCompromise => "key-compromise",
        RevocationReason::AffiliationChanged => "affiliation-changed",
        RevocationReason::Superseded => "superseded",
        RevocationReason::CessationOfOperation => "cessation-of-operation",
        _ => "unspecified",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CaState {
    trust_domain: String,
    name: String,
    crl_number: u64,
    issued: Vec<IssuedRecord>,
    revoked: Vec<RevokedRecord>,
    /// The host names the CA vouches for, per agency; absent in a CA made
    /// before there was a policy, which then vouches for none.
    #[serde(default)]
    names: NamePolicy,
}

/// One certificate the CA signed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// The certificate's serial, lower-case hex without leading zero bytes.
    pub serial: String,
    /// The SPIFFE ID the certificate names, `spiffe://…` as written in its SAN.
    pub spiffe_id: String,
    /// When the certificate expires, in seconds since the Unix epoch (UTC).
    pub not_after_unix: i64,
    /// When the CA signed it, in seconds since the Unix epoch (UTC).
    pub issued_unix: i64,
}

/// One certificate the CA revoked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokedRecord {
    /// The revoked certificate's serial, lower-case hex; always one the CA issued.
    pub serial: String,
    /// The RFC 5280 reason, spelled as in [`REASONS`] (`key-compromise`, ...).
    pub reason: String,
    /// When it was revoked, in seconds since the Unix epoch (UTC); the CRL's
    /// revocation time.
    pub revoked_unix: i64,
}

/// What a leaf certificate is for: its identity, display name, hosts and validity.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// The identity the certificate names, its one URI SAN; its trust domain
    /// must be the CA's.
    pub id: SpiffeId,
    /// Put in the subject's O attribute, UTF-8 (e.g. "Sở Tư pháp tỉnh Vĩnh Phúc").
    pub display_name: Option<String>,
    /// DNS names the holder serves under, as DNS SANs (none by default).
    pub dns: Vec<String>,
    /// IP addresses the holder serves on, as IP SANs (none by default).
    pub ips: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity: after this the certificate is refused even unrevoked.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A spec valid from five minutes ago (clock skew between servers) for `days` days,
    /// with no host names: a certificate carries only the names asked for.
    /// Fails with [`CertError::Days`] unless `days` is 1 to 3650.
    pub fn for_days(id: SpiffeId, days: i64) -> Result<Self> {
        check_days(days, 3650)?;
        let now = OffsetDateTime::now_utc();
        Ok(Self {
            id,
            display_name: None,
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(days),
        })
    }

    /// The SANs: the SPIFFE ID first, then DNS names and IP addresses.
    fn sans(&self) -> Result<Vec<SanType>> {
        let mut sans = vec![SanType::URI(self.id.to_string().try_into()?)];
        for d in &self.dns {
            validate_dns_name(d)?;
            sans.push(SanType::DnsName(d.clone().try_into()?));
        }
        sans.extend(self.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        Ok(sans)
    }

    /// What a CSR asks for: the subject and the SANs, nothing else (the CA
    /// decides validity and extensions).
    fn request_params(&self) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = self.sans()?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.id.name.as_str());
        if let Some(display) = &self.display_name {
            params.distinguished_name.push(
                DnType::OrganizationName,
                DnValue::Utf8String(display.clone()),
            );
        }
        Ok(params)
    }

    /// Certificate parameters for this leaf: client and server auth, no CA powers.
    fn params(&self, serial: SerialNumber) -> Result<CertificateParams> {
        let mut params = self.request_params()?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.id.name.as_str());
        if let Some(display) = &self.display_name {
            params.distinguished_name.push(
                DnType::OrganizationName,
                DnValue::Utf8String(display.clone()),
            );
        }
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, self.id.agency.as_str());
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.serial_number = Some(serial);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// Validates a DNS name for a SAN: labels of ASCII letters, digits and '-',
/// at most 63 bytes each and 253 in all. Fails with [`CertError::DnsName`].
pub fn validate_dns_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(CertError::DnsName(name.to_owned()))
    }
}

/// A key made here and the certificate the CA issued for it, both PEM.
pub struct Issued {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM: write it with mode 0600, never log it.
    pub key_pem: String,
    /// The certificate's serial, lower-case hex: what `lgsp ca revoke --serial` takes.
    pub serial: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs and panic messages.
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A CRL the CA signed, to publish to every node and server.
#[derive(Debug)]
pub struct SignedCrl {
    /// The CRL, PEM (`X509 CRL`): what `lgsp ca crl` writes to a file.
    pub pem: String,
    /// The same CRL, DER: what `lgsp ca publish-crl` puts in the registry's catalog.
    pub der: Vec<u8>,
    /// The CRL number; each CRL the CA signs has a greater one, so a peer can
    /// tell a newer list from an older.
    pub number: u64,
    /// Serials of every certificate it revokes, lower-case hex.
    pub revoked: Vec<String>,
}

/// The provincial CA, opened from its directory.
pub struct CertificateAuthority {
    dir: PathBuf,
    state: CaState,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("trust_domain", &self.state.trust_domain)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Makes a new root CA (ECDSA P-256) for `trust_domain` in `dir`, valid
    /// for `days` days, named `name` in its subject. Fails with
    /// [`CertError::CaExists`] when `dir` already holds one,
    /// [`CertError::TrustDomain`] or [`CertError::Days`] (1 to 7300) on bad
    /// input, and [`CertError::Io`] when the files cannot be written.
    pub fn init(dir: &Path, trust_domain: &str, name: &str, days: i64) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        check_days(days, 7300)?;
        if dir.join(KEY_FILE).exists() || dir.join(CERT_FILE).exists() {
            return Err(CertError::CaExists(dir.to_owned()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, DnValue::Utf8String(name.to_owned()));
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, trust_domain);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(days);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let state = CaState {
            trust_domain: trust_domain.to_owned(),
            name: name.to_owned(),
            crl_number: 0,
            issued: Vec::new(),
            revoked: Vec::new(),
            names: NamePolicy::default(),
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_new(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&dir.join(CERT_FILE), cert.pem().as_bytes(), 0o644)?;
        let ca = Self {
            dir: dir.to_owned(),
            state,
            cert_pem: cert.pem(),
            key,
        };
        ca.save()?;
        Ok(ca)
    }

    /// Opens the CA in `dir`; fails with [`CertError::NoCa`] when there is none,
    /// [`CertError::State`] or [`CertError::Parse`] when its files are damaged.
    pub fn open(dir: &Path) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        if !dir.join(KEY_FILE).exists() || !state_path.exists() || !dir.join(CERT_FILE).exists() {
            return Err(CertError::NoCa(dir.to_owned()));
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(io_err(path))
        };
        let state: CaState =
            serde_json::from_str(&read(STATE_FILE)?).map_err(|e| CertError::State {
                path: state_path.clone(),
                why: e.to_string(),
            })?;
        let key = KeyPair::from_pem(&read(KEY_FILE)?).map_err(|e| CertError::Parse {
            path: dir.join(KEY_FILE),
            what: "private key",
            why: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            state,
            cert_pem: read(CERT_FILE)?,
            key,
        })
    }

    /// The trust domain (`vinhphuc.gov.vn`) of every SPIFFE ID this CA signs.
    pub fn trust_domain(&self) -> &str {
        &self.state.trust_domain
    }

    /// The CA's display name, its certificate's common name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The CA certificate, PEM: the trust anchor every node and server loads.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    fn check_domain(&self, id: &SpiffeId) -> Result<()> {
        if id.trust_domain != self.state.trust_domain {
            return Err(CertError::ForeignTrustDomain {
                expected: self.state.trust_domain.clone(),
                found: id.trust_domain.clone(),
            });
        }
        Ok(())
    }

    /// Makes a key here and issues its certificate. For development and
    /// tests; in production a node sends a CSR so its key never leaves it.
    /// The host names in `spec` are the CA holder's own choice, so the name
    /// policy is not consulted (a CSR's are: see [`Self::sign`]).
    /// Fails with [`CertError::ForeignTrustDomain`] for an identity outside
    /// the CA's trust domain, and when the CA state cannot be saved.
    pub fn issue(&mut self, spec: &LeafSpec) -> Result<Issued> {
        self.check_domain(&spec.id)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let serial = random_serial();
        let cert = spec
            .params(serial.clone())?
            .signed_by(&key, &self.issuer()?)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_hex(serial.as_ref()),
        };
        self.record_issued(spec, &issued.serial)?;
        Ok(issued)
    }

    /// Parses and verifies a CSR, checks the identity it asks for, and returns
    /// what to issue for it. The CA decides every extension itself; of the
    /// CSR it keeps only the public key, the SANs and the display name.
    /// The certificate will be valid for `days` days; `origin` names the CSR in
    /// errors. Fails with [`CertError::Parse`] for a CSR that does not parse or
    /// verify, [`CertError::NoSpiffeId`] or [`CertError::ManySpiffeIds`] unless
    /// it asks for exactly one SPIFFE ID, and
    /// [`CertError::ForeignTrustDomain`] for another trust domain.
    pub fn check_csr(&self, csr_pem: &str, origin: &Path, days: i64) -> Result<CsrRequest> {
        let bad = |why: String| CertError::Parse {
            path: origin.to_owned(),
            what: "certificate signing request",
            why,
        };
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| bad(format!("{e} (expected a PEM block 'CERTIFICATE REQUEST')")))?;
        let mut id = None;
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(uri) => {
                    if id.is_some() {
                        return Err(CertError::ManySpiffeIds(2));
                    }
                    id = Some(SpiffeId::parse(uri.as_str())?);
                }
                SanType::DnsName(d) => {
                    validate_dns_name(d.as_str())?;
                    dns.push(d.as_str().to_owned());
                }
                SanType::IpAddress(ip) => ips.push(*ip),
                other => return Err(bad(format!("it asks for an unsupported SAN {other:?}"))),
            }
        }
        let id = id.ok_or(CertError::NoSpiffeId)?;
        self.check_domain(&id)?;
        let display_name = match csr.params.distinguished_name.get(&DnType::OrganizationName) {
            Some(DnValue::Utf8String(s)) => Some(s.clone()),
            Some(DnValue::PrintableString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        let mut spec = LeafSpec::for_days(id, days)?;
        spec.display_name = display_name;
        spec.dns = dns;
        spec.ips = ips;
        Ok(CsrRequest {
            csr,
            spec,
            ips_vouched: false,
        })
    }

    /// The host names the CA vouches for, per agency.
    pub fn name_policy(&self) -> &NamePolicy {
        &self.state.names
    }

    /// Lets `agency` (an agency code, or [`crate::name_policy::EVERY_AGENCY`])
    /// ask for DNS names under `dns_suffixes` and for `ips`, and saves it.
    /// Fails on a malformed agency code or suffix, or when the state cannot
    /// be saved.
    pub fn allow_names(
        &mut self,
        agency: &str,
        dns_suffixes: &[String],
        ips: &[IpAddr],
    ) -> Result<()> {
        self.state.names.allow(agency, dns_suffixes, ips)?;
        self.save()
    }

    /// Refuses, with [`CertError::HostNotVouched`], a request for a DNS name
    /// or IP address the name policy does not allow its agency (IP
    /// addresses pass after [`CsrRequest::vouch_for_ips`]).
    pub fn check_names(&self, request: &CsrRequest) -> Result<()> {
        let spec = &request.spec;
        self.state
            .names
            .check(&spec.id.agency, &spec.dns, &spec.ips, request.ips_vouched)
    }

    /// Signs a checked CSR; returns the certificate PEM and its serial
    /// (lower-case hex). Fails with [`CertError::HostNotVouched`] for a host
    /// name the policy does not allow (see [`Self::check_names`]), and when
    /// signing fails or the CA state cannot be saved.
    pub fn sign(&mut self, request: CsrRequest) -> Result<(String, String)> {
        self.check_names(&request)?;
        let CsrRequest { mut csr, spec, .. } = request;
        let serial = random_serial();
        csr.params = spec.params(serial.clone())?;
        let cert = csr.signed_by(&self.issuer()?)?;
        let serial = serial_hex(serial.as_ref());
        self.record_issued(&spec, &serial)?;
        Ok((cert.pem(), serial))
    }

    fn record_issued(&mut self, spec: &LeafSpec, serial: &str) -> Result<()> {
        self.state.issued.push(IssuedRecord {
            serial: serial.to_owned(),
            spiffe_id: spec.id.to_string(),
            not_after_unix: spec.not_after.unix_timestamp(),
            issued_unix: OffsetDateTime::now_utc().unix_timestamp(),
        });
        self.save()
    }

    /// The certificates this CA issued for `id` that are still live: not
    /// revoked and not expired. A second live certificate for one identity
    /// lets two holders act as it, so `lgsp ca sign` refuses one unless the
    /// operator says it renews the first.
    pub fn live_for(&self, id: &SpiffeId) -> Vec<IssuedRecord> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let id = id.to_string();
        self.state
            .issued
            .iter()
            .filter(|r| r.spiffe_id == id && r.not_after_unix > now)
            .filter(|r| !self.state.revoked.iter().any(|x| x.serial == r.serial))
            .cloned()
            .collect()
    }

    /// Whether this CA ever issued a certificate for `id` (live or not).
    pub fn has_issued(&self, id: &SpiffeId) -> bool {
        let id = id.to_string();
        self.state.issued.iter().any(|r| r.spiffe_id == id)
    }

    /// Marks `serial` revoked. It takes effect for peers when the next CRL
    /// from [`Self::sign_crl`] reaches them. Accepts a serial as a person types
    /// it (`3A:0F`, `0x3a0f`) and returns it normalised to lower-case hex.
    /// Fails with [`CertError::UnknownSerial`] for a serial this CA never
    /// issued and [`CertError::AlreadyRevoked`] for one revoked before.
    pub fn revoke(&mut self, serial: &str, reason: RevocationReason) -> Result<String> {
        let serial =
            normalize_serial(serial).ok_or_else(|| CertError::UnknownSerial(serial.to_owned()))?;
        if !self.state.issued.iter().any(|r| r.serial == serial) {
            return Err(CertError::UnknownSerial(serial));
        }
        if self.state.revoked.iter().any(|r| r.serial == serial) {
            return Err(CertError::AlreadyRevoked(serial));
        }
        self.state.revoked.push(RevokedRecord {
            serial: serial.clone(),
            reason: reason_name(reason).to_owned(),
            revoked_unix: OffsetDateTime::now_utc().unix_timestamp(),
        });
        self.save()?;
        Ok(serial)
    }

    /// Signs a CRL of every revoked serial, valid for `days` days, with the
    /// next CRL number. Fails with [`CertError::Days`] unless `days` is 1 to
    /// 365, and when the CA state cannot be saved.
    pub fn sign_crl(&mut self, days: i64) -> Result<SignedCrl> {
        check_days(days, 365)?;
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for r in &self.state.revoked {
            let bytes = hex::decode(&r.serial).map_err(|e| CertError::State {
                path: self.dir.join(STATE_FILE),
                why: format!("serial {}: {e}", r.serial),
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_unix).unwrap_or(now),
                reason_code: Some(parse_reason(&r.reason)?),
                invalidity_date: None,
            });
        }
        let number = self.state.crl_number + 1;
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(days),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        self.state.crl_number = number;
        self.save()?;
        Ok(SignedCrl {
            pem: crl.pem()?,
            der: crl.der().to_vec(),
            number,
            revoked: self
                .state
                .revoked
                .iter()
                .map(|r| r.serial.clone())
                .collect(),
        })
    }

    fn save(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.state).map_err(|e| CertError::State {
            path: self.dir.join(STATE_FILE),
            why: e.to_string(),
        })?;
        write_atomic(&self.dir.join(STATE_FILE), &json, 0o600)
    }
}

/// A CSR that passed [`CertificateAuthority::check_csr`], ready to sign.
#[derive(Debug)]
pub struct CsrRequest {
    csr: CertificateSigningRequestParams,
    /// What will be issued: the identity, hosts and display name the CSR asks
    /// for, with the validity the CA chose. Show it to the operator before signing.
    pub spec: LeafSpec,
    ips_vouched: bool,
}

impl CsrRequest {
    /// The operator checked the IP addresses this CSR asks for: sign them
    /// even where the name policy does not list them (`lgsp ca sign
    /// --allow-ip`). DNS names still need the policy.
    pub fn vouch_for_ips(&mut self) {
        self.ips_vouched = true;
    }
}

/// A key made where it will be used, and a CSR asking for `spec`'s identity:
/// returns `(csr_pem, key_pem)`. The key stays with the caller; only the CSR
/// goes to the CA. Fails when `spec` holds a SAN rcgen refuses.
pub fn make_csr(spec: &LeafSpec) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = spec.request_params()?.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// A positive 128-bit serial with no leading zero byte, from the system's
/// secure random source.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system random source failed");
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Refuses a validity outside 1..=`max` days, saying the bound.
fn check_days(days: i64, max: i64) -> Result<()> {
    if (1..=max).contains(&days) {
        Ok(())
    } else {
        Err(CertError::Days { days, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{AgencyCode, Role};
    use crate::inspect::{CertInfo, CrlInfo, pem_blocks};

    const DOMAIN: &str = "vinhphuc.gov.vn";

    fn ca() -> (tempfile::TempDir, CertificateAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(&dir.path().join("ca"), DOMAIN, "CA thử", 30).unwrap();
        (dir, ca)
    }

    fn spec(domain: &str, agency: &str, role: Role, name: &str) -> LeafSpec {
        let id = SpiffeId::new(domain, AgencyCode::new(agency).unwrap(), role, name).unwrap();
        LeafSpec::for_days(id, 1).unwrap()
    }

    fn info(pem: &str) -> CertInfo {
        let (_, der) = pem_blocks(pem).unwrap().remove(0);
        CertInfo::from_der(&der, Path::new("test")).unwrap()
    }

    #[test]
    fn an_issued_certificate_names_its_holder_and_keeps_the_display_name_in_utf8() {
        let (_dir, mut ca) = ca();
        let mut leaf = spec(DOMAIN, "000.00.12.H62", Role::Node, "node-1");
        leaf.display_name = Some("Sở Tư pháp tỉnh Vĩnh Phúc".into());
        let issued = ca.issue(&leaf).unwrap();
        let cert = info(&issued.cert_pem);
        let id = cert.spiffe_id.unwrap();
        assert_eq!(id.agency.as_str(), "000.00.12.H62");
        assert_eq!(id.role, Role::Node);
        assert_eq!(id.name, "node-1");
        assert!(
            cert.subject.contains("Sở Tư pháp tỉnh Vĩnh Phúc"),
            "{}",
            cert.subject
        );
        assert_eq!(cert.serial, issued.serial);
        assert!(!cert.is_ca);
    }

    #[test]
    fn the_trust_domain_is_read_back_from_the_ca_certificate_not_a_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca =
            CertificateAuthority::init(&dir.path().join("ca"), "tinh-mau.gov.vn", "CA", 30)
                .unwrap();
        let read = crate::inspect::ca_trust_domain(ca.cert_pem(), Path::new("ca.crt"));
        assert_eq!(read.unwrap(), "tinh-mau.gov.vn");
        let leaf = ca
            .issue(&spec("tinh-mau.gov.vn", "000.00.12.H62", Role::Node, "n"))
            .unwrap();
        let err =
            crate::inspect::ca_trust_domain(&leaf.cert_pem, Path::new("cert.pem")).unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
    }

    #[test]
    fn a_ca_refuses_identities_of_another_trust_domain() {
        let (_dir, mut ca) = ca();
        let foreign = spec("hanoi.gov.vn", "000.00.12.H01", Role::Node, "node-1");
        assert!(matches!(
            ca.issue(&foreign),
            Err(CertError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn a_csr_is_signed_with_the_identity_it_asks_for_and_the_key_it_carries() {
        let (dir, mut ca) = ca();
        let leaf = spec(DOMAIN, "000.00.31.H62", Role::Node, "node-2");
        let (csr, _key) = make_csr(&leaf).unwrap();
        let request = ca.check_csr(&csr, &dir.path().join("csr.pem"), 30).unwrap();
        assert_eq!(request.spec.id, leaf.id);
        let (cert_pem, serial) = ca.sign(request).unwrap();
        let cert = info(&cert_pem);
        assert_eq!(cert.spiffe_id.unwrap(), leaf.id);
        assert_eq!(cert.serial, serial);
    }

    #[test]
    fn a_certificate_carries_no_host_names_unless_asked() {
        let (_dir, mut ca) = ca();
        let issued = ca
            .issue(&spec(DOMAIN, "000.00.12.H62", Role::Node, "node-1"))
            .unwrap();
        let cert = info(&issued.cert_pem);
        assert!(cert.dns_names.is_empty(), "{:?}", cert.dns_names);
        assert!(cert.ip_addresses.is_empty(), "{:?}", cert.ip_addresses);
    }

    #[test]
    fn a_csr_for_a_host_the_policy_does_not_allow_is_refused_until_allowed() {
        let (dir, mut ca) = ca();
        let mut leaf = spec(DOMAIN, "000.00.31.H62", Role::Node, "node-2");
        leaf.dns = vec!["dichvucong.gov.vn".into()];
        let (csr, _key) = make_csr(&leaf).unwrap();
        let origin = dir.path().join("csr.pem");
        let refused = ca
            .sign(ca.check_csr(&csr, &origin, 30).unwrap())
            .unwrap_err();
        assert!(
            matches!(&refused, CertError::HostNotVouched { host, .. } if host == "dichvucong.gov.vn"),
            "{refused}"
        );
        assert!(ca.live_for(&leaf.id).is_empty(), "nothing was signed");

        ca.allow_names("000.00.31.H62", &["dichvucong.gov.vn".into()], &[])
            .unwrap();
        let mut reopened = CertificateAuthority::open(&dir.path().join("ca")).unwrap();
        let (cert, _) = reopened
            .sign(reopened.check_csr(&csr, &origin, 30).unwrap())
            .unwrap();
        assert_eq!(info(&cert).dns_names, ["dichvucong.gov.vn"]);
    }

    #[test]
    fn a_csr_for_another_trust_domain_is_refused() {
        let (dir, ca) = ca();
        let leaf = spec("hanoi.gov.vn", "000.00.31.H01", Role::Node, "node-2");
        let (csr, _key) = make_csr(&leaf).unwrap();
        assert!(matches!(
            ca.check_csr(&csr, &dir.path().join("csr.pem"), 30),
            Err(CertError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn revoking_twice_or_an_unknown_serial_is_refused_and_the_crl_lists_each_once() {
        let (_dir, mut ca) = ca();
        let issued = ca
            .issue(&spec(DOMAIN, "000.00.12.H62", Role::Node, "node-1"))
            .unwrap();
        let serial = ca
            .revoke(&issued.serial, RevocationReason::KeyCompromise)
            .unwrap();
        assert!(matches!(
            ca.revoke(&issued.serial, RevocationReason::KeyCompromise),
            Err(CertError::AlreadyRevoked(_))
        ));
        assert!(matches!(
            ca.revoke("abcdef", RevocationReason::KeyCompromise),
            Err(CertError::UnknownSerial(_))
        ));
        let first = ca.sign_crl(1).unwrap();
        let second = ca.sign_crl(1).unwrap();
        assert_eq!(first.revoked, std::slice::from_ref(&serial));
        assert!(second.number > first.number, "CRL numbers only grow");
        let parsed = CrlInfo::from_der(&second.der, Path::new("crl")).unwrap();
        assert_eq!(parsed.number, Some(second.number));
        assert_eq!(parsed.revoked, [serial]);
    }

    #[test]
    fn the_ca_state_survives_reopening_from_its_directory() {
        let (dir, mut ca) = ca();
        let issued = ca
            .issue(&spec(DOMAIN, "000.00.12.H62", Role::Node, "node-1"))
            .unwrap();
        ca.revoke(&issued.serial, RevocationReason::Superseded)
            .unwrap();
        let number = ca.sign_crl(1).unwrap().number;
        let mut reopened = CertificateAuthority::open(&dir.path().join("ca")).unwrap();
        assert_eq!(reopened.trust_domain(), DOMAIN);
        assert!(matches!(
            reopened.revoke(&issued.serial, RevocationReason::Superseded),
            Err(CertError::AlreadyRevoked(_))
        ));
        assert_eq!(reopened.sign_crl(1).unwrap().number, number + 1);
        assert!(matches!(
            CertificateAuthority::init(&dir.path().join("ca"), DOMAIN, "again", 30),
            Err(CertError::CaExists(_))
        ));
    }

    #[test]
    fn revocation_reasons_parse_by_their_rfc_names_and_junk_is_refused() {
        for name in REASONS.split(", ") {
            let reason = parse_reason(name).unwrap();
            assert_eq!(reason_name(reason), name);
        }
        assert!(parse_reason("lost").is_err());
    }

    #[test]
    fn dns_names_are_labels_of_letters_digits_and_hyphens() {
        assert!(validate_dns_name("node.stp.vinhphuc.gov.vn").is_ok());
        for bad in ["", "a..b", "có-dấu.vn", "a b.vn", &"x".repeat(64)] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_crl_verifies_only_against_the_ca_that_signed_it_not_one_of_the_same_name() {
        let (_dir, mut ca) = ca();
        let (_other_dir, mut impostor) = {
            let dir = tempfile::tempdir().unwrap();
            // Same trust domain and the same subject name: only the key differs.
            let other =
                CertificateAuthority::init(&dir.path().join("ca"), DOMAIN, "CA thử", 30).unwrap();
            (dir, other)
        };
        let roots = |ca: &CertificateAuthority| {
            pem_blocks(ca.cert_pem())
                .unwrap()
                .into_iter()
                .map(|(_, der)| rustls_pki_types::CertificateDer::from(der))
                .collect::<Vec<_>>()
        };
        let good = ca.sign_crl(1).unwrap();
        let bad = impostor.sign_crl(1).unwrap();
        let info = crate::inspect::verify_crl(&good.der, &roots(&ca)).unwrap();
        assert_eq!(info.number, Some(good.number));
        let refused = crate::inspect::verify_crl(&bad.der, &roots(&ca)).unwrap_err();
        assert!(
            matches!(refused, CertError::CrlSignature { .. }),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("the CRL in force stays"),
            "{refused}"
        );
    }
}
