//! Who is calling: the identity of a gRPC peer, read from its verified
//! certificate and checked against the current CRL and the certificate's
//! expiry on every call, never taken from headers a client can set.
//!
//! A TLS handshake checks a certificate once; a connection, and a stream
//! on it, can outlive that check by hours. So each call is checked again,
//! and a long stream is checked before each message and whenever a new CRL
//! comes into force ([`Authenticator::while_admitted`]).

use crate::identity::{Role, SpiffeId};
use crate::inspect::{fmt_time, serial_hex};
use crate::tls::ServerTls;
use futures::{Stream, StreamExt as _};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use time::OffsetDateTime;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The authenticated caller, put in each request's extensions by [`Authenticator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Who the caller is: agency, role and name, from its certificate's SPIFFE ID.
    pub id: SpiffeId,
    /// Its certificate's serial, lower-case hex: the one a CRL would list.
    pub serial: String,
    /// When its certificate expires (UTC): past it, the peer is refused,
    /// even on a connection opened while the certificate was valid.
    pub not_after: OffsetDateTime,
}

impl Peer {
    /// The peer of a request that passed [`Authenticator`]. Fails with
    /// `Unauthenticated` when the request carries none, which means the
    /// server was built without the authenticator.
    pub fn of<T>(request: &Request<T>) -> Result<&Peer, Status> {
        request.extensions().get::<Peer>().ok_or_else(|| {
            Status::unauthenticated("no authenticated peer on this request (server misconfigured: the authenticator is not installed)")
        })
    }

    /// The same identity in the wire protocol.
    pub fn to_proto(&self) -> lgsp_proto::Identity {
        lgsp_proto::Identity {
            trust_domain: self.id.trust_domain.clone(),
            agency_code: self.id.agency.to_string(),
            role: self.id.role.to_proto() as i32,
            name: self.id.name.clone(),
            spiffe_id: self.id.to_string(),
            serial: self.serial.clone(),
        }
    }
}

/// A tonic interceptor that authenticates every call: a verified client
/// certificate with one SPIFFE ID in this server's trust domain, not revoked
/// by the CRL in force now, and (optionally) one of the allowed roles.
#[derive(Clone, Debug)]
pub struct Authenticator {
    tls: Arc<ServerTls>,
    trust_domain: String,
    roles: Option<Vec<Role>>,
    /// When set, only peers of this agency (a registry's peer port: every
    /// server of a cluster is run by one agency, the province's).
    agency: Option<crate::identity::AgencyCode>,
    connections: Arc<ConnectionIdentities>,
    /// How refusals show a time (see [`Self::showing_times`]); UTC without.
    show_time: Option<ShowTime>,
}

/// Turns Unix seconds into the text a refusal shows.
#[derive(Clone)]
struct ShowTime(Arc<dyn Fn(i64) -> String + Send + Sync>);

impl std::fmt::Debug for ShowTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShowTime")
    }
}

type PeerChain = Vec<CertificateDer<'static>>;

/// A connection's chain (weakly held, to tell a live connection from a
/// closed one whose address was reused) and the peer read from it.
type Known = (Weak<PeerChain>, Peer);

/// The peer read from each live connection's certificate chain. Every
/// call on a connection carries the same chain (one `Arc` per connection),
/// so the certificate is parsed once per connection, not once per call;
/// trust domain, revocation, expiry and role are still checked on every call.
#[derive(Debug, Default)]
struct ConnectionIdentities {
    known: Mutex<HashMap<usize, Known>>,
}

/// Connections remembered before closed ones are forgotten.
const REMEMBERED_CONNECTIONS: usize = 1024;

impl ConnectionIdentities {
    fn identity(&self, chain: &Arc<PeerChain>) -> Result<Peer, Status> {
        let key = Arc::as_ptr(chain) as usize;
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        // The address alone could be a closed connection's, reused: the
        // weak reference must still point at this very chain.
        if let Some((weak, peer)) = known.get(&key)
            && weak.upgrade().is_some_and(|live| Arc::ptr_eq(&live, chain))
        {
            return Ok(peer.clone());
        }
        drop(known);
        let leaf = chain.first().ok_or_else(|| {
            Status::unauthenticated("the client presented an empty certificate chain")
        })?;
        let peer = peer_identity(leaf).map_err(|why| {
            Status::unauthenticated(format!(
                "the client certificate names no lgsp identity: {why}"
            ))
        })?;
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= REMEMBERED_CONNECTIONS {
            known.retain(|_, (weak, _)| weak.strong_count() > 0);
        }
        if known.len() < REMEMBERED_CONNECTIONS {
            known.insert(key, (Arc::downgrade(chain), peer.clone()));
        }
        Ok(peer)
    }
}

impl Authenticator {
    /// An authenticator for a server running on `tls` that accepts peers of
    /// `trust_domain` in any role (narrow with [`Self::only`]).
    pub fn new(tls: Arc<ServerTls>, trust_domain: &str) -> Self {
        Self {
            tls,
            trust_domain: trust_domain.to_owned(),
            roles: None,
            agency: None,
            connections: Arc::default(),
            show_time: None,
        }
    }

    /// Shows the times in refusals (a certificate's expiry) with `show`,
    /// given Unix seconds: the province's clocks, as the rest of lgsp shows
    /// times. Without it they are shown in UTC, saying so.
    pub fn showing_times(mut self, show: impl Fn(i64) -> String + Send + Sync + 'static) -> Self {
        self.show_time = Some(ShowTime(Arc::new(show)));
        self
    }

    /// Accepts only peers holding one of `roles`.
    pub fn only(mut self, roles: &[Role]) -> Self {
        self.roles = Some(roles.to_vec());
        self
    }

    /// Accepts only peers of `agency`.
    pub fn of_agency(mut self, agency: crate::identity::AgencyCode) -> Self {
        self.agency = Some(agency);
        self
    }

    /// Authenticates a request's peer; the reason for a refusal is in the
    /// status: `Unauthenticated` for a missing, foreign, malformed, revoked
    /// or expired certificate, `PermissionDenied` for a role this service
    /// does not accept.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated("no client certificate: this service requires mutual TLS with a certificate from the provincial CA")
        })?;
        let peer = self.connections.identity(&certs)?;
        let id = &peer.id;
        if id.trust_domain != self.trust_domain {
            return Err(Status::unauthenticated(format!(
                "the client certificate belongs to trust domain {:?}, not {:?}",
                id.trust_domain, self.trust_domain
            )));
        }
        self.recheck(&peer)?;
        if let Some(roles) = self.roles.as_ref().filter(|r| !r.contains(&id.role)) {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "{id} has role {}, but this service accepts only {}",
                id.role,
                allowed.join(", ")
            )));
        }
        if let Some(agency) = self.agency.as_ref().filter(|a| **a != id.agency) {
            return Err(Status::permission_denied(format!(
                "{id} is of agency {}; this service accepts only agency {agency}'s",
                id.agency
            )));
        }
        Ok(peer)
    }

    /// Checks again that `peer`, authenticated when its connection or
    /// stream opened, is neither revoked by the CRL in force now nor
    /// expired: for connections and streams that carry many calls, each
    /// call is checked as if it came alone. Cheap (a set lookup and a clock
    /// read). Fails with `Unauthenticated` once its serial is revoked or
    /// its certificate has expired.
    pub fn recheck(&self, peer: &Peer) -> Result<(), Status> {
        self.check_not_revoked(&peer.serial)?;
        check_not_expired(peer, OffsetDateTime::now_utc(), self.show_time.as_ref())
    }

    /// Waits until `peer` would be refused, and returns the refusal: a new
    /// CRL that revokes it, or the expiry of its certificate. Returns at
    /// once when it is refused already; never returns while it stays
    /// admitted.
    pub async fn refusal(&self, peer: &Peer) -> Status {
        // Subscribed before the check: a CRL put in force between the two
        // is seen as a change, not missed.
        let mut crl = self.tls.crl_changes();
        loop {
            if let Err(status) = self.recheck(peer) {
                return status;
            }
            let left = Duration::try_from(peer.not_after - OffsetDateTime::now_utc())
                .unwrap_or_default()
                .clamp(EXPIRY_FLOOR, EXPIRY_LOOK);
            let crl_changed = async {
                if crl.changed().await.is_err() {
                    // The TLS state is gone with its server: no CRL comes
                    // again, and the expiry is still watched.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = crl_changed => {}
                () = tokio::time::sleep(left) => {}
            }
        }
    }

    /// `stream`, for as long as `peer` stays admitted: `peer` is checked
    /// again before each item, and while the stream waits for its next
    /// item a new CRL or the certificate's expiry is noticed too. Then the
    /// stream ends with the refusal (`Unauthenticated`, naming the serial),
    /// and items it had not handed over yet are dropped.
    pub fn while_admitted<S, T>(
        &self,
        peer: Peer,
        stream: S,
    ) -> impl Stream<Item = Result<T, Status>> + Send + 'static
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let open = Some((self.clone(), peer, Box::pin(stream)));
        futures::stream::unfold(open, |open| async move {
            let (auth, peer, mut stream) = open?;
            let next = tokio::select! {
                // The check first: an item already waiting is not handed
                // to a peer refused since.
                biased;
                refusal = auth.refusal(&peer) => Err(refusal),
                item = stream.next() => Ok(item),
            };
            match next {
                Ok(Some(item)) => Some((item, Some((auth, peer, stream)))),
                Ok(None) => None,
                Err(refusal) => {
                    tracing::info!(peer = %peer.id, serial = %peer.serial, reason = %refusal.message(), "stream ended: its peer's certificate is no longer accepted");
                    Some((Err(refusal), None))
                }
            }
        })
    }

    fn check_not_revoked(&self, serial: &str) -> Result<(), Status> {
        if self.tls.is_revoked(serial) {
            return Err(Status::unauthenticated(format!(
                "the client certificate (serial {serial}) is revoked; ask the provincial IT department (Sở KH&CN) for a new one"
            )));
        }
        Ok(())
    }
}

/// How soon [`Authenticator::refusal`] looks at the clock again at the
/// latest: the expiry is wall-clock time, and the wall clock can jump.
const EXPIRY_LOOK: Duration = Duration::from_secs(60);
/// How soon it looks again at the earliest, so that a certificate expiring
/// within the second (validity is counted in whole seconds) is not polled
/// in a busy loop.
const EXPIRY_FLOOR: Duration = Duration::from_millis(100);

/// Refuses `peer` when its certificate expired before `now`.
fn check_not_expired(
    peer: &Peer,
    now: OffsetDateTime,
    show: Option<&ShowTime>,
) -> Result<(), Status> {
    if now > peer.not_after {
        let at = match show {
            Some(ShowTime(show)) => show(peer.not_after.unix_timestamp()),
            None => format!("{} UTC", fmt_time(peer.not_after)),
        };
        return Err(Status::unauthenticated(format!(
            "the client certificate expired at {at} (serial {}); ask the provincial IT department (Sở KH&CN) for a new one",
            peer.serial
        )));
    }
    Ok(())
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = self.authenticate(&request)?;
        request.extensions_mut().insert(peer);
        Ok(request)
    }
}

/// The `IdentityService` every lgsp server answers: tells a caller who it is
/// according to its certificate.
#[derive(Clone, Copy, Debug, Default)]
pub struct WhoAmI;

#[tonic::async_trait]
impl lgsp_proto::identity_service_server::IdentityService for WhoAmI {
    async fn who_am_i(
        &self,
        request: Request<lgsp_proto::WhoAmIRequest>,
    ) -> Result<tonic::Response<lgsp_proto::WhoAmIResponse>, Status> {
        let peer = Peer::of(&request)?;
        Ok(tonic::Response::new(lgsp_proto::WhoAmIResponse {
            identity: Some(peer.to_proto()),
        }))
    }
}

/// The identity, serial and end of validity of a peer certificate: the
/// part of [`CertInfo`] every call needs, without the names and fingerprint
/// an operator reads. The serial is lower-case hex. Fails, with the reason
/// in words, for a certificate that does not parse or carries no single
/// SPIFFE ID.
pub fn peer_identity(der: &[u8]) -> std::result::Result<Peer, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name
                && u.starts_with("spiffe://")
            {
                uris.push(*u);
            }
        }
    }
    let id = match uris.as_slice() {
        [] => Err(crate::CertError::NoSpiffeId.to_string()),
        [one] => crate::SpiffeId::parse(one).map_err(|e| e.to_string()),
        many => Err(crate::CertError::ManySpiffeIds(many.len()).to_string()),
    }?;
    Ok(Peer {
        id,
        serial: serial_hex(cert.raw_serial()),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CertificateAuthority, LeafSpec};
    use crate::identity::AgencyCode;
    use crate::inspect::pem_blocks;
    use crate::tls::Credentials;

    const DOMAIN: &str = "vinhphuc.gov.vn";

    /// A CA, and an authenticator on a server holding one of its certificates.
    fn server() -> (tempfile::TempDir, CertificateAuthority, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let mut ca =
            CertificateAuthority::init(&dir.path().join("ca"), DOMAIN, "CA thử", 30).unwrap();
        let own = ca.issue(&spec("000.00.12.H62", "node-a")).unwrap();
        let creds = Credentials::from_pem(&own.cert_pem, &own.key_pem, ca.cert_pem()).unwrap();
        let auth = Authenticator::new(ServerTls::new(creds).unwrap(), DOMAIN);
        (dir, ca, auth)
    }

    fn spec(agency: &str, name: &str) -> LeafSpec {
        let id = SpiffeId::new(DOMAIN, AgencyCode::new(agency).unwrap(), Role::Node, name).unwrap();
        LeafSpec::for_days(id, 1).unwrap()
    }

    /// The peer a connection presenting `pem` would be.
    fn peer_of(pem: &str) -> Peer {
        let (_, der) = pem_blocks(pem).unwrap().remove(0);
        peer_identity(&der).unwrap()
    }

    #[test]
    fn a_peer_carries_the_expiry_written_in_its_certificate() {
        let (_dir, mut ca, _) = server();
        let mut leaf = spec("000.00.13.H62", "node-b");
        leaf.not_after = OffsetDateTime::now_utc() + time::Duration::hours(3);
        let issued = ca.issue(&leaf).unwrap();
        let peer = peer_of(&issued.cert_pem);
        assert_eq!(peer.serial, issued.serial);
        // X.509 keeps whole seconds.
        assert_eq!(
            peer.not_after.unix_timestamp(),
            leaf.not_after.unix_timestamp()
        );
    }

    #[test]
    fn a_peer_whose_certificate_expired_is_refused_by_recheck() {
        let (_dir, mut ca, auth) = server();
        let issued = ca.issue(&spec("000.00.13.H62", "node-b")).unwrap();
        let mut peer = peer_of(&issued.cert_pem);
        auth.recheck(&peer).expect("valid for a day");

        // The connection outlived its certificate.
        peer.not_after = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        let refused = auth.recheck(&peer).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            refused
                .message()
                .starts_with("the client certificate expired at ")
                && refused.message().contains(&issued.serial),
            "{refused:?}"
        );
    }

    #[test]
    fn an_expiry_refusal_shows_the_time_as_the_server_asks() {
        let (_dir, mut ca, auth) = server();
        let issued = ca.issue(&spec("000.00.13.H62", "node-b")).unwrap();
        let mut peer = peer_of(&issued.cert_pem);
        // 2026-11-30 17:30 UTC is 2026-12-01 00:30 in Vietnam.
        peer.not_after = OffsetDateTime::from_unix_timestamp(1_796_059_800).unwrap();
        let utc = auth.recheck(&peer).unwrap_err();
        assert!(
            utc.message().contains("expired at 2026-11-30 17:30:00 UTC"),
            "{utc:?}"
        );
        let local = auth
            .showing_times(|unix| format!("local {}", unix + 7 * 3600))
            .recheck(&peer)
            .unwrap_err();
        assert!(
            local.message().starts_with(&format!(
                "the client certificate expired at local {} (serial {})",
                1_796_059_800 + 7 * 3600,
                issued.serial
            )),
            "{local:?}"
        );
        assert!(!local.message().contains("UTC"), "{local:?}");
    }

    #[tokio::test]
    async fn a_stream_ends_unauthenticated_when_a_crl_revokes_its_peer_with_no_item_waiting() {
        let (_dir, mut ca, auth) = server();
        let issued = ca.issue(&spec("000.00.13.H62", "node-b")).unwrap();
        let peer = peer_of(&issued.cert_pem);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<u32, Status>>(4);
        let mut stream =
            Box::pin(auth.while_admitted(peer, tokio_stream::wrappers::ReceiverStream::new(rx)));
        tx.send(Ok(1)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);

        // Nothing more is sent: the CRL alone must end the stream.
        let waiting = tokio::spawn(async move { stream.next().await.map(|r| r.unwrap_err()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        ca.revoke(&issued.serial, rcgen::RevocationReason::KeyCompromise)
            .unwrap();
        auth.tls.set_crl(&ca.sign_crl(1).unwrap().der).unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("ended by the CRL")
            .unwrap()
            .expect("a refusal, not the end of the stream");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains(&issued.serial), "{refused:?}");
        // The item queued after the revocation is not handed over.
        assert!(tx.send(Ok(2)).await.is_err(), "the stream is dropped");
    }

    #[tokio::test]
    async fn a_stream_ends_unauthenticated_when_its_peer_certificate_expires() {
        let (_dir, mut ca, auth) = server();
        let issued = ca.issue(&spec("000.00.13.H62", "node-b")).unwrap();
        let mut peer = peer_of(&issued.cert_pem);
        peer.not_after = OffsetDateTime::now_utc() + time::Duration::milliseconds(300);
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<u32, Status>>(1);
        let mut stream =
            Box::pin(auth.while_admitted(peer, tokio_stream::wrappers::ReceiverStream::new(rx)));
        let refused = tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("ended at the expiry")
            .expect("a refusal, not the end of the stream")
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("expired at"), "{refused:?}");
        assert!(stream.next().await.is_none());
    }
}
