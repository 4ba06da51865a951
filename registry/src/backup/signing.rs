//! Who vouches for a backup: the registry server that took it signs the
//! catalog with its own key (ECDSA P-256, the key of its `registry`
//! certificate), and a restore checks the signature against the province
//! CA. A SHA-256 alone tells a damaged file from a good one, not a forged
//! one: anyone who can write the file can recompute it.
//!
//! The server, not the admin who saves the file, signs: the server reads
//! the catalog, so its signature covers what the registry held, and no
//! admin workstation (nor anyone with write access to the backup store)
//! can make a catalog a restore accepts without a registry server's key.

use lgsp_certs::Credentials;
use lgsp_certs::identity::{AgencyCode, Role, SpiffeId};
use lgsp_certs::inspect::CertInfo;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// What a backup signature covers before the backup's bytes, so that a
/// signature made for anything else never verifies as a backup's.
const DOMAIN: &[u8] = b"lgsp registry backup v2\0";

fn signed_bytes(backup: &[u8]) -> Vec<u8> {
    [DOMAIN, backup].concat()
}

/// A registry server's key, ready to sign backups.
pub struct BackupSigner {
    key: EcdsaKeyPair,
    certificate: Vec<u8>,
}

impl std::fmt::Debug for BackupSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSigner").finish_non_exhaustive()
    }
}

impl BackupSigner {
    /// The signer of the server whose credentials are `creds`. Fails, saying
    /// why, when the key is not an ECDSA P-256 key (PKCS#8, as `lgsp ca`
    /// makes them) or not the key of the certificate.
    pub fn new(creds: &Credentials) -> Result<Self, String> {
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            creds.key.secret_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| {
            format!("the server's key cannot sign backups (an ECDSA P-256 key is needed, as `lgsp ca issue` makes): {e}")
        })?;
        let certificate = creds.chain.first().map(|c| c.to_vec()).unwrap_or_default();
        let matches = X509Certificate::from_der(&certificate).is_ok_and(|(_, cert)| {
            cert.public_key().subject_public_key.data.as_ref() == key.public_key().as_ref()
        });
        if !matches {
            return Err("the server's key is not the key of its certificate".into());
        }
        Ok(Self { key, certificate })
    }

    /// The signer's certificate (DER) and its signature over `backup` (the
    /// encoded `RegistryBackup`).
    pub fn sign(&self, backup: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let signature = self
            .key
            .sign(&SystemRandom::new(), &signed_bytes(backup))
            .map_err(|_| "signing the backup failed".to_owned())?;
        Ok((self.certificate.clone(), signature.as_ref().to_vec()))
    }
}

/// The registry server whose signature a backup carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedBy {
    /// Its identity, from its certificate.
    pub id: SpiffeId,
    /// Its certificate's serial, lower-case hex.
    pub serial: String,
}

/// Why a backup's signature is not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The signature, or the certificate it was made with, does not show
    /// that a registry server of the province signed these contents.
    Signature(String),
    /// The CRL given to check the signer against cannot be used.
    Crl(String),
    /// The signer's certificate is on the CRL.
    Revoked {
        /// The signer's identity.
        signer: String,
        /// Its certificate's serial, lower-case hex.
        serial: String,
        /// The number of the CRL that lists it.
        crl_number: u64,
    },
    /// The signer's certificate has expired since, and that was not accepted.
    Expired {
        /// The signer's identity.
        signer: String,
        /// Its certificate's serial, lower-case hex.
        serial: String,
        /// When it expired (UTC).
        not_after: String,
    },
}

/// What the signer's certificate is checked against, besides the CA.
#[derive(Clone, Copy, Debug)]
pub(super) struct Checks<'a> {
    /// The province CA's CRL (DER); `None`: not checked, as asked.
    pub crl: Option<&'a [u8]>,
    /// Accept a signer whose certificate has expired since the backup.
    pub accept_expired: bool,
    /// Now, in seconds since the Unix epoch.
    pub now_unix: i64,
}

/// Checks that `signature` over `backup` was made with the key of
/// `certificate`, a registry certificate issued by one of `roots` (of
/// agency `province`, when given) and valid at `taken_unix_ms`, when the
/// backup says it was taken; then, as `checks` says, that the certificate
/// is not on the CRL of the CA that issued it (the CRL signed by that CA and
/// not past its next update) and has not expired since. Returns the signer
/// and the number of the CRL checked; fails saying which of these does not
/// hold.
pub(super) fn verify(
    backup: &[u8],
    certificate: &[u8],
    signature: &[u8],
    roots: &[CertificateDer<'_>],
    province: Option<&AgencyCode>,
    taken_unix_ms: i64,
    checks: Checks<'_>,
) -> Result<(SignedBy, Option<u64>), Refusal> {
    let (_, cert) = X509Certificate::from_der(certificate)
        .map_err(|e| Refusal::Signature(format!("its signer's certificate cannot be read: {e}")))?;
    let info = CertInfo::from_der(
        certificate,
        std::path::Path::new("the signer's certificate"),
    )
    .map_err(|e| Refusal::Signature(e.to_string()))?;
    let id = info.spiffe_id.map_err(|why| {
        Refusal::Signature(format!(
            "its signer's certificate names no lgsp identity: {why}"
        ))
    })?;
    let Some(issuer) = roots
        .iter()
        .find(|root| lgsp_certs::inspect::signed_by_one_of(&cert, std::slice::from_ref(*root)))
    else {
        return Err(Refusal::Signature(format!(
            "its signer's certificate ({id}) is not issued by the province CA given"
        )));
    };
    if id.role != Role::Registry {
        return Err(Refusal::Signature(format!(
            "it is signed by {id}, a {} certificate; only a registry server signs backups",
            id.role
        )));
    }
    if let Some(province) = province
        && id.agency != *province
    {
        return Err(Refusal::Signature(format!(
            "it is signed by {id}, a registry server of agency {}, not of the province's registry ({province})",
            id.agency
        )));
    }
    let taken = taken_unix_ms.div_euclid(1000);
    if taken < info.not_before.unix_timestamp() || taken > info.not_after.unix_timestamp() {
        return Err(Refusal::Signature(format!(
            "its signer's certificate ({id}, serial {}) was not valid when the backup says it was taken",
            info.serial
        )));
    }
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&signed_bytes(backup), signature)
    .map_err(|_| {
        Refusal::Signature(format!("the signature of {id} does not match the contents: they were changed after the backup was taken"))
    })?;
    // The time above is the signer's word: a key that leaked signs any
    // time it likes. Only the CRL and the clock here are not.
    let crl_number = match checks.crl {
        Some(der) => Some(check_crl(der, issuer, &id, &info.serial, checks.now_unix)?),
        None => None,
    };
    if !checks.accept_expired && checks.now_unix > info.not_after.unix_timestamp() {
        return Err(Refusal::Expired {
            signer: id.to_string(),
            serial: info.serial,
            not_after: utc(info.not_after.unix_timestamp()),
        });
    }
    Ok((
        SignedBy {
            id,
            serial: info.serial,
        },
        crl_number,
    ))
}

/// A time in seconds since the Unix epoch as people read it, in UTC.
fn utc(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map_or_else(|_| format!("{unix} (Unix time)"), |t| t.to_string())
}

/// Checks that the CRL `der` is signed by `issuer` (the CA that issued the
/// signer's certificate), is not past its next update at `now_unix`, and
/// does not list `serial`; returns its number.
fn check_crl(
    der: &[u8],
    issuer: &CertificateDer<'_>,
    signer: &SpiffeId,
    serial: &str,
    now_unix: i64,
) -> Result<u64, Refusal> {
    let crl = lgsp_certs::inspect::verify_crl(der, std::slice::from_ref(issuer)).map_err(|e| {
        Refusal::Crl(match e {
            lgsp_certs::CertError::CrlSignature { issuer, number, why } => format!(
                "it (issuer {issuer}, number {number}) is not signed by the CA that issued the backup's signer ({why})"
            ),
            other => other.to_string(),
        })
    })?;
    let number = crl.number.ok_or_else(|| {
        Refusal::Crl("it carries no CRL number, so nothing shows it is the one in force".into())
    })?;
    if let Some(next) = crl.next_update
        && next.unix_timestamp() < now_unix
    {
        return Err(Refusal::Crl(format!(
            "CRL number {number} was due to be replaced at {}: it may miss later revocations",
            utc(next.unix_timestamp())
        )));
    }
    if crl.revoked.iter().any(|r| r == serial) {
        return Err(Refusal::Revoked {
            signer: signer.to_string(),
            serial: serial.to_owned(),
            crl_number: number,
        });
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_certs::{CertificateAuthority, LeafSpec};
    use time::{Duration, OffsetDateTime};

    const PROVINCE: &str = "000.00.01.H62";

    fn ca(dir: &tempfile::TempDir, name: &str) -> CertificateAuthority {
        CertificateAuthority::init(&dir.path().join(name), "vinhphuc.gov.vn", "CA thử", 30).unwrap()
    }

    /// A registry server's credentials from `ca`, valid from `from` to `to`.
    fn registry_server(
        ca: &mut CertificateAuthority,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> (Credentials, String) {
        let id = SpiffeId::new(
            ca.trust_domain(),
            AgencyCode::new(PROVINCE).unwrap(),
            Role::Registry,
            "registry-1",
        )
        .unwrap();
        let mut spec = LeafSpec::for_days(id, 1).unwrap();
        spec.not_before = from;
        spec.not_after = to;
        let issued = ca.issue(&spec).unwrap();
        let creds =
            Credentials::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem()).unwrap();
        (creds, issued.serial)
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// A catalog signed by `creds`, taken at `taken` (Unix ms).
    struct Signed {
        cert: Vec<u8>,
        signature: Vec<u8>,
    }

    fn sign(creds: &Credentials) -> Signed {
        let (cert, signature) = BackupSigner::new(creds).unwrap().sign(b"catalog").unwrap();
        Signed { cert, signature }
    }

    fn check(
        signed: &Signed,
        roots: &[CertificateDer<'_>],
        taken_unix_ms: i64,
        checks: Checks<'_>,
    ) -> Result<(SignedBy, Option<u64>), Refusal> {
        let province = AgencyCode::new(PROVINCE).unwrap();
        verify(
            b"catalog",
            &signed.cert,
            &signed.signature,
            roots,
            Some(&province),
            taken_unix_ms,
            checks,
        )
    }

    fn with_crl(crl: &[u8]) -> Checks<'_> {
        Checks {
            crl: Some(crl),
            accept_expired: false,
            now_unix: now().unix_timestamp(),
        }
    }

    fn today_ms() -> i64 {
        now().unix_timestamp() * 1000
    }

    #[test]
    fn a_signer_on_the_province_crl_is_refused_naming_its_serial_and_the_crl_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = ca(&dir, "ca");
        let (creds, serial) = registry_server(
            &mut ca,
            now() - Duration::days(1),
            now() + Duration::days(1),
        );
        let signed = sign(&creds);
        // Signed while its certificate was good, revoked since: the time
        // the backup carries is the signer's word, so it does not help.
        ca.revoke(
            &serial,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .unwrap();
        let crl = ca.sign_crl(1).unwrap();
        match check(
            &signed,
            &creds.roots,
            today_ms() - 3_600_000,
            with_crl(&crl.der),
        ) {
            Err(Refusal::Revoked {
                serial: s,
                crl_number,
                signer,
            }) => {
                assert_eq!(s, serial);
                assert_eq!(crl_number, crl.number);
                assert!(signer.ends_with("/registry/registry-1"), "{signer}");
            }
            other => panic!("a revoked signer was accepted: {other:?}"),
        }
        // Not checked, as asked: the signature alone verifies.
        let unchecked = Checks {
            crl: None,
            ..with_crl(&crl.der)
        };
        let (_, number) = check(&signed, &creds.roots, today_ms(), unchecked).unwrap();
        assert_eq!(number, None);
    }

    #[test]
    fn a_crl_of_another_ca_is_refused_even_under_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = ca(&dir, "ca");
        // Same trust domain and display name, so the same subject: only
        // the key tells them apart.
        let mut impostor = self::ca(&dir, "impostor");
        let (creds, _) = registry_server(
            &mut ca,
            now() - Duration::days(1),
            now() + Duration::days(1),
        );
        let foreign = impostor.sign_crl(1).unwrap();
        match check(
            &sign(&creds),
            &creds.roots,
            today_ms(),
            with_crl(&foreign.der),
        ) {
            Err(Refusal::Crl(why)) => {
                assert!(why.contains("not signed by the CA that issued"), "{why}")
            }
            other => panic!("another CA's CRL was used: {other:?}"),
        }
        match check(
            &sign(&creds),
            &creds.roots,
            today_ms(),
            with_crl(b"not a CRL"),
        ) {
            Err(Refusal::Crl(_)) => {}
            other => panic!("garbage was used as a CRL: {other:?}"),
        }
    }

    #[test]
    fn a_crl_past_its_next_update_is_refused_as_out_of_date() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = ca(&dir, "ca");
        let (creds, _) = registry_server(
            &mut ca,
            now() - Duration::days(1),
            now() + Duration::days(9),
        );
        let crl = ca.sign_crl(1).unwrap();
        let later = Checks {
            now_unix: (now() + Duration::days(2)).unix_timestamp(),
            ..with_crl(&crl.der)
        };
        match check(&sign(&creds), &creds.roots, today_ms(), later) {
            Err(Refusal::Crl(why)) => {
                assert!(
                    why.contains(&format!("CRL number {} was due", crl.number)),
                    "{why}"
                )
            }
            other => panic!("an out-of-date CRL was used: {other:?}"),
        }
    }

    #[test]
    fn a_signer_not_on_a_current_crl_of_its_ca_passes_naming_the_crl_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = ca(&dir, "ca");
        let (creds, serial) = registry_server(
            &mut ca,
            now() - Duration::days(1),
            now() + Duration::days(1),
        );
        // Another server's certificate is revoked; this one is not.
        let (_, other) = registry_server(
            &mut ca,
            now() - Duration::days(1),
            now() + Duration::days(1),
        );
        ca.revoke(&other, lgsp_certs::ca::parse_reason("superseded").unwrap())
            .unwrap();
        let crl = ca.sign_crl(1).unwrap();
        let (by, number) =
            check(&sign(&creds), &creds.roots, today_ms(), with_crl(&crl.der)).unwrap();
        assert_eq!(by.serial, serial);
        assert_eq!(number, Some(crl.number));
    }

    #[test]
    fn a_signer_expired_at_restore_time_is_refused_unless_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = ca(&dir, "ca");
        let (creds, serial) = registry_server(
            &mut ca,
            now() - Duration::days(3),
            now() - Duration::days(1),
        );
        let crl = ca.sign_crl(1).unwrap();
        let taken = (now() - Duration::days(2)).unix_timestamp() * 1000;
        let signed = sign(&creds);
        match check(&signed, &creds.roots, taken, with_crl(&crl.der)) {
            Err(Refusal::Expired { serial: s, .. }) => assert_eq!(s, serial),
            other => panic!("an expired signer was accepted: {other:?}"),
        }
        let accepted = Checks {
            accept_expired: true,
            ..with_crl(&crl.der)
        };
        check(&signed, &creds.roots, taken, accepted).unwrap();
        // Accepting an expired signer never accepts a revoked one.
        ca.revoke(
            &serial,
            lgsp_certs::ca::parse_reason("cessation-of-operation").unwrap(),
        )
        .unwrap();
        let crl = ca.sign_crl(1).unwrap();
        let accepted = Checks {
            accept_expired: true,
            ..with_crl(&crl.der)
        };
        assert!(matches!(
            check(&signed, &creds.roots, taken, accepted),
            Err(Refusal::Revoked { .. })
        ));
    }
}
