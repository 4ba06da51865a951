//! The certificates seals are checked against: reading them from PEM and taking the
//! P-256 public key that signed.

use crate::error::AuditError;
use lgsp_certs::inspect::pem_blocks;

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

/// Splits one DER element off `input`: its tag, its content and what follows it.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The uncompressed EC point (65 bytes, `04‖x‖y`) of a P-256 certificate's public key.
///
/// Walks the DER to the SubjectPublicKeyInfo, the seventh field of TBSCertificate
/// (counting the optional version), rather than searching for byte patterns.
pub(crate) fn public_key_point(cert_der: &[u8]) -> Result<Vec<u8>, AuditError> {
    const SEQUENCE: u8 = 0x30;
    const BIT_STRING: u8 = 0x03;
    const VERSION: u8 = 0xa0;
    // AlgorithmIdentifier content: id-ecPublicKey, prime256v1.
    const EC_P256: &[u8] = &[
        0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
        0x3d, 0x03, 0x01, 0x07,
    ];
    let bad = |why: &str| AuditError::Cert(why.to_owned());
    let malformed = || bad("malformed certificate DER");
    let (tag, cert, _) = der_next(cert_der).ok_or_else(malformed)?;
    let (tbs_tag, tbs, _) = der_next(cert).ok_or_else(malformed)?;
    if tag != SEQUENCE || tbs_tag != SEQUENCE {
        return Err(malformed());
    }
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = der_next(rest).ok_or_else(malformed)?.2;
    }
    // serial, signature algorithm, issuer, validity, subject
    for _ in 0..5 {
        rest = der_next(rest).ok_or_else(malformed)?.2;
    }
    let (spki_tag, spki, _) = der_next(rest).ok_or_else(malformed)?;
    let (alg_tag, alg, after_alg) = der_next(spki).ok_or_else(malformed)?;
    if spki_tag != SEQUENCE || alg_tag != SEQUENCE {
        return Err(malformed());
    }
    if alg != EC_P256 {
        return Err(bad("the certificate's key is not ECDSA P-256"));
    }
    match der_next(after_alg) {
        Some((BIT_STRING, [0x00, point @ ..], _)) if point.len() == 65 && point[0] == 0x04 => {
            Ok(point.to_vec())
        }
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
}
