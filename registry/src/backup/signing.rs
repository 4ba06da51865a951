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

/// Checks that `signature` over `backup` was made with the key of
/// `certificate`, a registry certificate issued by one of `roots` (of
/// agency `province`, when given) and valid at `taken_unix_ms`, when the
/// backup says it was taken. Fails saying which of these does not hold.
pub(super) fn verify(
    backup: &[u8],
    certificate: &[u8],
    signature: &[u8],
    roots: &[CertificateDer<'_>],
    province: Option<&AgencyCode>,
    taken_unix_ms: i64,
) -> Result<SignedBy, String> {
    let (_, cert) = X509Certificate::from_der(certificate)
        .map_err(|e| format!("its signer's certificate cannot be read: {e}"))?;
    let info = CertInfo::from_der(
        certificate,
        std::path::Path::new("the signer's certificate"),
    )
    .map_err(|e| e.to_string())?;
    let id = info
        .spiffe_id
        .map_err(|why| format!("its signer's certificate names no lgsp identity: {why}"))?;
    if !lgsp_certs::inspect::signed_by_one_of(&cert, roots) {
        return Err(format!(
            "its signer's certificate ({id}) is not issued by the province CA given"
        ));
    }
    if id.role != Role::Registry {
        return Err(format!(
            "it is signed by {id}, a {} certificate; only a registry server signs backups",
            id.role
        ));
    }
    if let Some(province) = province
        && id.agency != *province
    {
        return Err(format!(
            "it is signed by {id}, a registry server of agency {}, not of the province's registry ({province})",
            id.agency
        ));
    }
    let taken = taken_unix_ms.div_euclid(1000);
    if taken < info.not_before.unix_timestamp() || taken > info.not_after.unix_timestamp() {
        return Err(format!(
            "its signer's certificate ({id}, serial {}) was not valid when the backup says it was taken",
            info.serial
        ));
    }
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&signed_bytes(backup), signature)
    .map_err(|_| {
        format!("the signature of {id} does not match the contents: they were changed after the backup was taken")
    })?;
    Ok(SignedBy {
        id,
        serial: info.serial,
    })
}
