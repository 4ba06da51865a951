//! The certificates seals are checked against: reading them from PEM and taking the
//! P-256 public key that signed.

use crate::error::AuditError;
use lgsp_certs::inspect::pem_blocks;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

pub(crate) fn certificates(pem: &str) -> Result<Vec<Vec<u8>>, AuditError> {
    let blocks = pem_blocks(pem).map_err(|e| AuditError::Cert(e.to_string()))?;
    Ok(blocks
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| der)
        .collect())
}

pub(crate) fn first_certificate(pem: &str) -> Result<Vec<u8>, AuditError> {
    certificates(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| AuditError::Cert("the PEM holds no CERTIFICATE".into()))
}

/// The uncompressed EC point (65 bytes, `04‖x‖y`) of a P-256 certificate's public key,
/// taken from its SubjectPublicKeyInfo.
///
/// Fails with [`AuditError::Cert`] when the DER is not a certificate, its key is not
/// ECDSA P-256, or the point is not uncompressed (ring verifies only that form).
pub(crate) fn public_key_point(cert_der: &[u8]) -> Result<Vec<u8>, AuditError> {
    let bad = |why: &str| AuditError::Cert(why.to_owned());
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|_| bad("malformed certificate DER"))?;
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(bad("the certificate's key is not ECDSA P-256"));
    }
    let key = &spki.subject_public_key;
    match key.data.as_ref() {
        point @ [0x04, ..] if point.len() == 65 && key.unused_bits == 0 => Ok(point.to_vec()),
        _ => Err(bad(
            "the certificate's P-256 key is not an uncompressed point",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Fixture;
    use lgsp_certs::inspect::pem_blocks;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

    #[test]
    fn public_key_point_is_read_from_an_issued_certificate() {
        let f = Fixture::new("point");
        let der = first_certificate(&f.cert).unwrap();
        let point = public_key_point(&der).unwrap();
        assert_eq!((point.len(), point[0]), (65, 0x04));
        let key_der = pem_blocks(&f.key).unwrap().remove(0).1;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_der,
            &SystemRandom::new(),
        )
        .unwrap();
        assert_eq!(key.public_key().as_ref(), point.as_slice());
        assert!(public_key_point(&der[..der.len() / 2]).is_err());
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let f = Fixture::new("no-cert");
        assert!(certificates(&f.key).unwrap().is_empty());
        match first_certificate(&f.key) {
            Err(AuditError::Cert(why)) => assert_eq!(why, "the PEM holds no CERTIFICATE"),
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }
}
