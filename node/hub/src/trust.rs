//! Whom the hub's outward listener trusts, kept equal to the catalog's
//! federation peers while the hub runs: each peer's CA certificates, and
//! each peer's CRL once the provincial admin has published one into the
//! peer record (`lgsp hub peer crl`).
//!
//! A peer's CRL is put in force only when its signature verifies against
//! that peer's CA and its number is higher than the one in force for that
//! peer; otherwise the last good one stays (a CRL that does not verify
//! would let anyone lift revocations, an older one would bring revoked
//! certificates back). A peer added is trusted at the next handshake, a
//! peer removed is refused at the next handshake and, on connections
//! already open, at the next call.

use lgsp_proto::FederationPeer;
use rustls_pki_types::CertificateDer;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// The CRL in force for one peer.
#[derive(Clone, Debug)]
struct InForce {
    /// The CA it was verified against (the record's PEM then).
    ca_pem: String,
    number: u64,
    der: Vec<u8>,
    revoked: HashSet<String>,
}

/// What happened to a peer's CRL at an update, for the log and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrlChange {
    /// A new CRL is in force.
    Installed {
        /// The peer.
        peer: String,
        /// Its number.
        number: u64,
    },
    /// The record's CRL was refused; the last good one (if any) stays.
    Refused {
        /// The peer.
        peer: String,
        /// Why.
        why: String,
    },
}

/// Each peer's CRL in force.
#[derive(Debug, Default)]
pub struct PeerTrust {
    crls: Mutex<HashMap<String, InForce>>,
}

impl PeerTrust {
    /// Brings the CRLs in force in line with `peers` (the catalog's):
    /// verifies each record's CRL that is new, forgets removed peers, and
    /// forgets a peer's CRL when its CA changed (it was verified against
    /// the old one). Returns what changed.
    pub fn update(&self, peers: &[FederationPeer]) -> Vec<CrlChange> {
        let mut crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        crls.retain(|name, f| {
            peers
                .iter()
                .any(|p| &p.name == name && p.ca_pem == f.ca_pem)
        });
        let mut changes = Vec::new();
        for peer in peers {
            if peer.crl_der.is_empty() {
                continue;
            }
            let current = crls.get(&peer.name);
            if current.is_some_and(|c| c.der == peer.crl_der) {
                continue;
            }
            match check(peer, current.map(|c| c.number)) {
                Ok(next) => {
                    changes.push(CrlChange::Installed {
                        peer: peer.name.clone(),
                        number: next.number,
                    });
                    crls.insert(peer.name.clone(), next);
                }
                Err(why) => {
                    // Said once per record, not at every catalog change.
                    let said = CrlChange::Refused {
                        peer: peer.name.clone(),
                        why,
                    };
                    changes.push(said);
                }
            }
        }
        changes
    }

    /// The number of the CRL in force for `peer` if it revokes the
    /// certificate with `serial` (lower-case hex).
    pub fn revoked(&self, peer: &str, serial: &str) -> Option<u64> {
        let crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        crls.get(peer)
            .filter(|c| c.revoked.contains(serial))
            .map(|c| c.number)
    }

    /// The number of the CRL in force for `peer`.
    pub fn crl_number_of(&self, peer: &str) -> Option<u64> {
        let crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        crls.get(peer).map(|c| c.number)
    }

    /// The CRL in force for `peer` (DER), and its number.
    pub fn crl_of(&self, peer: &str) -> Option<(u64, Vec<u8>)> {
        let crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        crls.get(peer).map(|c| (c.number, c.der.clone()))
    }

    /// What the outward listener should trust for `peers`: their CA
    /// certificates and the CRLs in force.
    pub fn listener_trust(
        &self,
        peers: &[FederationPeer],
    ) -> (Vec<CertificateDer<'static>>, Vec<Vec<u8>>) {
        let roots = peers.iter().flat_map(lgsp_node::obo::peer_roots).collect();
        let crls = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        let ders = peers
            .iter()
            .filter_map(|p| crls.get(&p.name).map(|c| c.der.clone()))
            .collect();
        (roots, ders)
    }
}

/// Whether a CRL fetched from `peer`'s hub should be put in force in the
/// catalog: `Ok(Some(number))` when it verifies against the peer's CA and is
/// newer than the record's, `Ok(None)` when it is the record's or older (a
/// hub that has not caught up yet), and an error when it does not verify.
pub fn fetched_is_newer(peer: &FederationPeer, fetched: &[u8]) -> Result<Option<u64>, String> {
    if fetched.is_empty() || fetched == peer.crl_der.as_slice() {
        return Ok(None);
    }
    let in_force =
        lgsp_certs::inspect::CrlInfo::from_der(&peer.crl_der, std::path::Path::new("<crl>"))
            .ok()
            .and_then(|c| c.number);
    let candidate = FederationPeer {
        crl_der: fetched.to_vec(),
        ..peer.clone()
    };
    match check(&candidate, in_force) {
        Ok(next) => Ok(Some(next.number)),
        Err(why) if why.contains("not newer") => Ok(None),
        Err(why) => Err(why),
    }
}

/// Verifies `peer`'s record CRL against its CA, newer than `in_force` (as
/// provider nodes do for on-behalf-of records).
fn check(peer: &FederationPeer, in_force: Option<u64>) -> Result<InForce, String> {
    let checked = lgsp_node::peer_crl::check(peer, in_force)?;
    Ok(InForce {
        ca_pem: peer.ca_pem.clone(),
        number: checked.number,
        der: peer.crl_der.clone(),
        revoked: checked.revoked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_certs::ca::{CertificateAuthority, LeafSpec};
    use lgsp_certs::{AgencyCode, Role, SpiffeId};

    fn ca(dir: &std::path::Path, domain: &str) -> CertificateAuthority {
        CertificateAuthority::init(dir, domain, "CA", 30).unwrap()
    }

    fn peer(name: &str, ca: &CertificateAuthority, crl: Vec<u8>) -> FederationPeer {
        FederationPeer {
            name: name.into(),
            trust_domain: "ndxp.gov.vn".into(),
            ca_pem: ca.cert_pem().to_owned(),
            hub_endpoint: "127.0.0.1:1".into(),
            crl_der: crl,
            ..Default::default()
        }
    }

    fn hub_serial(ca: &mut CertificateAuthority) -> String {
        let id = SpiffeId::new(
            "ndxp.gov.vn",
            "000.00.00.G01".parse::<AgencyCode>().unwrap(),
            Role::Hub,
            "hub",
        )
        .unwrap();
        let issued = ca.issue(&LeafSpec::for_days(id, 10).unwrap()).unwrap();
        issued.serial.clone()
    }

    #[test]
    fn a_peer_crl_verified_by_its_ca_revokes_and_a_newer_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = ca(dir.path(), "ndxp.gov.vn");
        let serial = hub_serial(&mut q);
        let trust = PeerTrust::default();
        let first = q.sign_crl(1).unwrap().der;
        q.revoke(
            &serial,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .unwrap();
        let second = q.sign_crl(1).unwrap().der;
        assert!(matches!(
            trust.update(&[peer("ndxp", &q, first.clone())])[..],
            [CrlChange::Installed { .. }]
        ));
        assert_eq!(trust.revoked("ndxp", &serial), None);
        trust.update(&[peer("ndxp", &q, second.clone())]);
        assert!(trust.revoked("ndxp", &serial).is_some());
        // The older one again: refused, the newer stays.
        let changes = trust.update(&[peer("ndxp", &q, first)]);
        assert!(
            matches!(&changes[..], [CrlChange::Refused { why, .. }] if why.contains("not newer")),
            "{changes:?}"
        );
        assert!(trust.revoked("ndxp", &serial).is_some());
    }

    #[test]
    fn a_fetched_crl_is_followed_only_when_its_ca_signed_it_and_it_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let mut q = ca(dir.path(), "ndxp.gov.vn");
        let mut stranger = ca(other_dir.path(), "ndxp.gov.vn");
        let first = q.sign_crl(1).unwrap().der;
        let second = q.sign_crl(1).unwrap().der;
        // No CRL in the record yet: the peer's first one is followed.
        let n1 = fetched_is_newer(&peer("ndxp", &q, Vec::new()), &first).unwrap();
        assert!(n1.is_some());
        let with_first = peer("ndxp", &q, first.clone());
        assert_eq!(fetched_is_newer(&with_first, &[]), Ok(None));
        assert_eq!(fetched_is_newer(&with_first, &first), Ok(None));
        let n2 = fetched_is_newer(&with_first, &second).unwrap();
        assert!(n2 > n1, "{n2:?} after {n1:?}");
        // A peer hub still serving an older one: not a step back.
        assert_eq!(
            fetched_is_newer(&peer("ndxp", &q, second), &first),
            Ok(None)
        );
        let forged = stranger.sign_crl(9).unwrap().der;
        assert!(fetched_is_newer(&with_first, &forged).is_err());
    }

    #[test]
    fn a_crl_signed_by_another_ca_is_refused_and_the_last_good_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let mut q = ca(dir.path(), "ndxp.gov.vn");
        let mut stranger = ca(other_dir.path(), "ndxp.gov.vn");
        let serial = hub_serial(&mut q);
        q.revoke(
            &serial,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .unwrap();
        let trust = PeerTrust::default();
        let good = q.sign_crl(1).unwrap().der;
        trust.update(&[peer("ndxp", &q, good)]);
        // A forged, empty CRL with a higher number, signed by another key.
        let forged = {
            stranger.sign_crl(1).unwrap();
            stranger.sign_crl(1).unwrap();
            stranger.sign_crl(1).unwrap().der
        };
        let changes = trust.update(&[peer("ndxp", &q, forged)]);
        assert!(
            matches!(&changes[..], [CrlChange::Refused { .. }]),
            "{changes:?}"
        );
        assert!(trust.revoked("ndxp", &serial).is_some());
    }

    #[test]
    fn a_removed_peer_leaves_the_listener_trust() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = ca(dir.path(), "ndxp.gov.vn");
        let trust = PeerTrust::default();
        let crl = q.sign_crl(1).unwrap().der;
        let peers = [peer("ndxp", &q, crl)];
        trust.update(&peers);
        let (roots, crls) = trust.listener_trust(&peers);
        assert_eq!((roots.len(), crls.len()), (1, 1));
        trust.update(&[]);
        assert_eq!(trust.crl_of("ndxp"), None);
        let (roots, crls) = trust.listener_trust(&[]);
        assert!(roots.is_empty() && crls.is_empty());
    }
}
