//! Federation peers' CRLs as a provider node applies them to on-behalf-of
//! records: a record signed by a foreign node certificate that its
//! instance's CRL (published into the peer record with `lgsp hub peer crl`)
//! revokes is refused here too, not only at the hub, which may not have
//! loaded the CRL yet, or may be bypassed. Outside REST systems' CRLs
//! (published into their `RestClient` record with `lgsp hub rest-client
//! crl`) are followed the same way, by the hub's REST endpoint and by the
//! provider.
//!
//! A CRL is followed from the catalog record at the call that needs it, so
//! there is no window between the catalog change and its use. It is put in
//! force only when its signature verifies against the record's CA and its
//! number is higher than the one in force; otherwise the last good one
//! stays (a CRL that does not verify would let anyone lift revocations, an
//! older one would bring revoked certificates back). A change of the
//! record's CA drops the CRL in force (it was verified against the old one).

use lgsp_proto::{FederationPeer, RestClient};
use rustls_pki_types::CertificateDer;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// A peer's CRL, checked: its number and the serials it revokes.
#[derive(Clone, Debug)]
pub struct CheckedCrl {
    /// Its CRL number.
    pub number: u64,
    /// The serials it revokes, lower-case hex.
    pub revoked: HashSet<String>,
}

/// Verifies `peer`'s record CRL against the peer's CA, and that it is newer
/// than `in_force` (the number of the one in force, if any). Says why not.
pub fn check(peer: &FederationPeer, in_force: Option<u64>) -> Result<CheckedCrl, String> {
    check_der(&crate::obo::peer_roots(peer), &peer.crl_der, in_force)
}

/// Verifies CRL `der` against `roots` (a record's CA certificates), and
/// that it is newer than `in_force`. Says why not.
pub fn check_der(
    roots: &[CertificateDer<'_>],
    der: &[u8],
    in_force: Option<u64>,
) -> Result<CheckedCrl, String> {
    let info = lgsp_certs::inspect::verify_crl(der, roots).map_err(|e| e.to_string())?;
    let number = info
        .number
        .ok_or_else(|| "the CRL has no CRL number".to_owned())?;
    if let Some(current) = in_force
        && current >= number
    {
        return Err(format!(
            "CRL number {number} is not newer than the one in force ({current})"
        ));
    }
    Ok(CheckedCrl {
        number,
        revoked: info.revoked.into_iter().collect(),
    })
}

/// One record's CRL as followed: the one in force and the record last seen.
#[derive(Debug, Default)]
struct Followed {
    /// The record's CA when the CRL in force was checked.
    ca_pem: String,
    /// The record's CRL last looked at (in force or refused): a record
    /// unchanged since is not checked again.
    seen: Vec<u8>,
    in_force: Option<CheckedCrl>,
}

/// The CRLs in force for each federation peer (or, in another instance,
/// each outside REST system), by record name.
#[derive(Debug, Default)]
pub struct PeerCrls {
    peers: Mutex<HashMap<String, Followed>>,
}

impl PeerCrls {
    /// The number of the CRL in force for `peer` (its catalog record, as
    /// now) if it revokes the certificate with `serial` (lower-case hex).
    /// Brings the CRL in force up to the record first.
    pub fn revoked(&self, peer: &FederationPeer, serial: &str) -> Option<u64> {
        self.revoked_by(
            &format!("federation peer {}", peer.name),
            &peer.ca_pem,
            &peer.crl_der,
            serial,
        )
    }

    /// As [`PeerCrls::revoked`], for outside REST system `client`'s record.
    pub fn rest_client_revoked(&self, client: &RestClient, serial: &str) -> Option<u64> {
        self.revoked_by(
            &format!("REST client {}", client.name),
            &client.ca_pem,
            &client.crl_der,
            serial,
        )
    }

    /// Refuses `certificate` (DER), presented by outside REST system
    /// `client`, when the CRL in force for the client revokes it, naming its
    /// serial and the CRL's number.
    pub fn check_rest_client(
        &self,
        client: &RestClient,
        certificate: &[u8],
    ) -> Result<(), crate::obo::OboError> {
        // The registry never lets a record drop its CRL while its CA is the
        // same, and a new CA drops the CRL in force: none to check.
        if client.crl_der.is_empty() {
            return Ok(());
        }
        let serial = crate::obo::serial_of(certificate).ok_or_else(|| {
            crate::obo::OboError::Malformed("the client certificate cannot be read".into())
        })?;
        match self.rest_client_revoked(client, &serial) {
            Some(number) => Err(crate::obo::OboError::RevokedRestClient {
                client: client.name.clone(),
                serial,
                number,
            }),
            None => Ok(()),
        }
    }

    /// The number of the CRL in force for the record `name` (whose CA is
    /// `ca_pem` and CRL `crl_der` now) if it revokes `serial`.
    fn revoked_by(&self, name: &str, ca_pem: &str, crl_der: &[u8], serial: &str) -> Option<u64> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.len() > 1_000 && !peers.contains_key(name) {
            peers.clear();
        }
        let followed = peers.entry(name.to_owned()).or_default();
        if followed.ca_pem != ca_pem {
            *followed = Followed {
                ca_pem: ca_pem.to_owned(),
                ..Followed::default()
            };
        }
        if followed.seen != crl_der {
            followed.seen = crl_der.to_vec();
            if !crl_der.is_empty() {
                let roots = crate::obo::pem_roots(ca_pem);
                match check_der(
                    &roots,
                    crl_der,
                    followed.in_force.as_ref().map(|c| c.number),
                ) {
                    Ok(next) => {
                        tracing::info!(record = %name, number = next.number, "CRL in force");
                        followed.in_force = Some(next);
                    }
                    Err(why) => {
                        tracing::warn!(record = %name, %why, "CRL refused; the last good one stays");
                    }
                }
            }
        }
        followed
            .in_force
            .as_ref()
            .filter(|c| c.revoked.contains(serial))
            .map(|c| c.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_certs::ca::{CertificateAuthority, LeafSpec};
    use lgsp_certs::{AgencyCode, Role, SpiffeId};

    fn peer(ca: &CertificateAuthority, crl: Vec<u8>) -> FederationPeer {
        FederationPeer {
            name: "ndxp".into(),
            trust_domain: "ndxp.gov.vn".into(),
            ca_pem: ca.cert_pem().to_owned(),
            hub_endpoint: "127.0.0.1:1".into(),
            crl_der: crl,
            ..Default::default()
        }
    }

    fn node_serial(ca: &mut CertificateAuthority) -> String {
        let id = SpiffeId::new(
            "ndxp.gov.vn",
            "000.00.07.G01".parse::<AgencyCode>().unwrap(),
            Role::Node,
            "node-1",
        )
        .unwrap();
        ca.issue(&LeafSpec::for_days(id, 10).unwrap())
            .unwrap()
            .serial
    }

    #[test]
    fn a_serial_the_peer_record_crl_revokes_is_revoked_from_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = CertificateAuthority::init(dir.path(), "ndxp.gov.vn", "CA", 30).unwrap();
        let serial = node_serial(&mut q);
        let crls = PeerCrls::default();
        assert_eq!(crls.revoked(&peer(&q, Vec::new()), &serial), None);
        let before = q.sign_crl(1).unwrap().der;
        assert_eq!(crls.revoked(&peer(&q, before.clone()), &serial), None);
        q.revoke(
            &serial,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .unwrap();
        let after = q.sign_crl(1).unwrap().der;
        assert!(crls.revoked(&peer(&q, after), &serial).is_some());
        // The older CRL put back in the record does not lift the revocation.
        assert!(crls.revoked(&peer(&q, before), &serial).is_some());
    }

    #[test]
    fn a_rest_client_certificate_its_records_crl_revokes_is_refused_naming_serial_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = CertificateAuthority::init(dir.path(), "moj.gov.vn", "CA", 30).unwrap();
        let id = SpiffeId::new(
            "moj.gov.vn",
            "000.00.07.G01".parse::<AgencyCode>().unwrap(),
            Role::Node,
            "hotich-app",
        )
        .unwrap();
        let issued = q.issue(&LeafSpec::for_days(id, 10).unwrap()).unwrap();
        let der = lgsp_certs::inspect::pem_blocks(&issued.cert_pem).unwrap()[0]
            .1
            .clone();
        let ca_pem = q.cert_pem().to_owned();
        let client = |crl: Vec<u8>| RestClient {
            name: "btp-hotich".into(),
            ca_pem: ca_pem.clone(),
            crl_der: crl,
            ..Default::default()
        };
        let crls = PeerCrls::default();
        let before = q.sign_crl(1).unwrap().der;
        crls.check_rest_client(&client(Vec::new()), &der).unwrap();
        crls.check_rest_client(&client(before.clone()), &der)
            .unwrap();
        q.revoke(
            &issued.serial,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .unwrap();
        let after = q.sign_crl(1).unwrap();
        let why = crls
            .check_rest_client(&client(after.der), &der)
            .unwrap_err()
            .to_string();
        assert!(why.contains(&issued.serial), "{why}");
        assert!(why.contains("CRL number 2"), "{why}");
        // The older CRL put back does not lift it.
        assert!(crls.check_rest_client(&client(before), &der).is_err());
    }

    #[test]
    fn a_crl_the_peer_ca_did_not_sign_lifts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut q = CertificateAuthority::init(dir.path(), "ndxp.gov.vn", "CA", 30).unwrap();
        let mut stranger =
            CertificateAuthority::init(other.path(), "ndxp.gov.vn", "CA", 30).unwrap();
        let serial = node_serial(&mut q);
        q.revoke(
            &serial,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .unwrap();
        let crls = PeerCrls::default();
        let good = q.sign_crl(1).unwrap().der;
        assert!(crls.revoked(&peer(&q, good), &serial).is_some());
        let forged = {
            stranger.sign_crl(1).unwrap();
            stranger.sign_crl(1).unwrap().der
        };
        assert!(crls.revoked(&peer(&q, forged), &serial).is_some());
    }
}
