//! A whole registry server: storage, consensus loop, transport, and the two
//! mTLS listeners (clients; peers, which accept registry certificates only).

use crate::bootstrap::{self, StoredMembership};
use crate::catalog;
use crate::config::RegistryConfig;
use crate::error::RegistryError;
use crate::incarnation;
use crate::raft_node::{self, LoopConfig, RaftHandle};
use crate::service::{PeerService, RegistryService};
use crate::storage::RaftStore;
#[cfg(feature = "faults")]
use crate::transport::Faults;
use crate::transport::{Network as _, Transport};
use lgsp_certs::inspect::CertInfo;
use lgsp_certs::{Authenticator, Credentials, Role, ServerTls, WhoAmI};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::identity_service_server::IdentityServiceServer;
use lgsp_proto::registry_peer_server::RegistryPeerServer;
use lgsp_proto::registry_server::RegistryServer as RegistryGrpc;
use lgsp_proto::{Member, RecordKind};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running registry server.
#[derive(Debug)]
pub struct RegistryServer {
    /// This server's Raft id, from its configuration.
    pub id: u64,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    raft: RaftHandle,
    tls: Arc<ServerTls>,
    #[cfg(feature = "faults")]
    faults: Arc<Faults>,
    shutdown: tokio::sync::watch::Sender<bool>,
    consensus: Option<JoinHandle<Result<(), RegistryError>>>,
    /// A condition found outside the consensus loop that stops the server.
    fatal: tokio::sync::mpsc::Receiver<RegistryError>,
    tasks: Vec<JoinHandle<()>>,
}

impl RegistryServer {
    /// Binds both listeners, opens the data directory and starts serving.
    /// An empty data directory founds a new cluster (or, with `join`,
    /// waits to be sent a snapshot) once the peers agree it may (see
    /// `bootstrap.rs`). Fails with [`RegistryError::Config`] when the
    /// configuration cannot work: a port taken, a peer that knows this
    /// server from a data directory it no longer has, `peers` that disagree
    /// with the membership the data directory holds.
    pub async fn start(config: RegistryConfig) -> Result<Self, RegistryError> {
        config.validate()?;
        let creds = Credentials::load(config.tls.as_ref().expect("validated"))?;
        let own = CertInfo::from_der(&creds.chain[0], Path::new("server certificate"))?;
        let own_id = own.spiffe_id.map_err(|why| {
            RegistryError::Config(format!(
                "the server certificate names no lgsp identity: {why}"
            ))
        })?;
        if own_id.role != Role::Registry {
            return Err(RegistryError::Config(format!(
                "the server certificate is for {own_id}, a {}; a registry server needs a registry certificate (lgsp ca issue --role registry)",
                own_id.role
            )));
        }

        // The key that signs backups, checked now: a server that could not
        // sign one says so at start, not when the catalog is lost.
        let signer =
            Arc::new(crate::backup::BackupSigner::new(&creds).map_err(RegistryError::Config)?);

        // A port that is taken fails the start before the data directory is
        // written. The listeners are bound again once the store is ready:
        // until then, peers asking this server (founders start together)
        // are refused at once instead of waiting for an answer.
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| RegistryError::Config(format!("cannot listen on {addr}: {e}")))
        };
        drop((bind(config.listen).await?, bind(config.peer_listen).await?));

        // Opening reads both files whole and may wait up to 2 s for the
        // data directory's lock: off the runtime's threads.
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || {
            RaftStore::open(&data_dir, Arc::new(catalog::Catalog))
        })
        .await
        .map_err(|e| RegistryError::Storage(format!("opening the store stopped: {e}")))??;
        let incarnation = incarnation::own(store.db())?;
        // Peers that did not answer before this server founded a cluster:
        // asked again once it runs (see `recheck_peers`).
        let mut unanswered = Vec::new();
        if store.is_initialized()? {
            let cs = store.conf_state()?;
            let stored = StoredMembership {
                first_peers: incarnation::first_peers(store.db())?,
                current: cs
                    .voters
                    .iter()
                    .chain(&cs.voters_outgoing)
                    .chain(&cs.learners)
                    .copied()
                    .collect(),
            };
            bootstrap::check_restart(&config, &stored)?;
        } else {
            let answers = bootstrap::ask_peers(&config, &creds).await;
            for (peer, answer) in &answers {
                if let Err(why) = answer {
                    tracing::info!(peer, %why, "a peer did not answer before this server's first start");
                }
            }
            bootstrap::check_empty_start(&config, incarnation, &answers)?;
            if !config.join {
                unanswered = answers
                    .iter()
                    .filter(|(_, answer)| answer.is_err())
                    .filter_map(|(id, _)| config.peers.iter().find(|p| p.id == *id).cloned())
                    .collect();
            }
            let mut batch = crate::kv::Staged::new(store.db());
            incarnation::put_first_peers(&mut batch, &bootstrap::configured_ids(&config));
            if config.join {
                batch.commit()?;
                tracing::info!(
                    id = config.id,
                    "empty data directory: joining, waiting for a snapshot from the leader"
                );
            } else {
                for p in &config.peers {
                    catalog::put_member(
                        &mut batch,
                        &Member {
                            id: p.id,
                            peer_address: p.peer.clone(),
                            client_address: p.client.clone(),
                            voter: true,
                            incarnation: 0,
                        },
                    );
                }
                let voters: Vec<u64> = config.peers.iter().map(|p| p.id).collect();
                incarnation::put_founders(&mut batch, &voters.iter().copied().collect());
                batch.commit()?;
                store.bootstrap(&voters)?;
                tracing::info!(id = config.id, ?voters, "bootstrapped a new cluster");
            }
        }

        let (reports_tx, reports_rx) = tokio::sync::mpsc::unbounded_channel();
        let transport = Arc::new(Transport::new(
            config.id,
            incarnation,
            creds.clone(),
            reports_tx,
            Duration::from_millis(config.peer_timeout_ms),
        ));
        #[cfg(feature = "faults")]
        let faults = transport.faults.clone();
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let (raft, consensus) = raft_node::start(
            store.clone(),
            transport.clone(),
            reports_rx,
            LoopConfig {
                id: config.id,
                tick: Duration::from_millis(config.tick_ms),
                election_ticks: config.election_ticks,
                heartbeat_ticks: config.heartbeat_ticks,
                snapshot_entries: config.snapshot_entries,
                watch_history: config.watch_history,
                propose_timeout: Duration::from_millis(config.propose_timeout_ms),
                ca: creds.roots.clone(),
                province: own_id.agency.clone(),
                incarnation,
            },
            shutdown_rx.clone(),
        )?;
        // Addresses given on the command line win over remembered ones.
        for p in &config.peers {
            transport.set_address(p.id, &p.peer);
        }

        let creds_for_recheck = creds.clone();
        let tls = ServerTls::new(creds)?;
        let client_listener = bind(config.listen).await?;
        let peer_listener = bind(config.peer_listen).await?;
        if let Some(crl) = current_crl(store.db())
            && let Err(error) = tls.set_crl(&crl)
        {
            tracing::warn!(%error, "the CRL in the catalog is unusable");
        }
        let client_addr = client_listener
            .local_addr()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        let peer_addr = peer_listener
            .local_addr()
            .map_err(|e| RegistryError::Config(e.to_string()))?;

        let trust_domain = own_id.trust_domain.clone();
        // Refusals name times on the province's clocks, as the catalog's
        // calendar says them (the default zone until it holds one).
        let auth = Authenticator::new(tls.clone(), &trust_domain).showing_times({
            let db = raft.db().clone();
            move |unix| {
                crate::procedure::calendar(&db)
                    .unwrap_or_default()
                    .show(unix)
            }
        });
        // Every server applies the catalog's rules with the province taken
        // from its own certificate: peers of another agency would decide
        // differently, so they are not peers.
        let peer_auth = Authenticator::new(tls.clone(), &trust_domain)
            .only(&[Role::Registry])
            .of_agency(own_id.agency.clone());
        let mut tasks = Vec::new();

        let stop = wait_for(shutdown_rx.clone());
        let incoming = tls.clone().incoming(client_listener);
        let registry = RegistryGrpc::with_interceptor(
            RegistryService::new(raft.clone(), auth.clone(), config.watch_limits(), signer),
            auth.clone(),
        );
        // Standard gRPC health for load balancers and monitoring, behind
        // the same mTLS and authenticator as the catalog itself.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<lgsp_proto::registry_server::RegistryServer<RegistryService>>()
            .await;
        let health_service =
            tonic::service::interceptor::InterceptedService::new(health_service, auth.clone());
        tasks.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(registry)
                .add_service(health_service)
                .add_service(IdentityServiceServer::with_interceptor(WhoAmI, auth))
                .serve_with_incoming_shutdown(incoming, stop)
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "client listener failed");
            }
        }));

        let stop = wait_for(shutdown_rx.clone());
        let incoming = tls.clone().incoming(peer_listener);
        let peer = tonic::service::interceptor::InterceptedService::new(
            RegistryPeerServer::new(PeerService::new(raft.clone()))
                .max_decoding_message_size(crate::transport::MAX_PEER_MESSAGE)
                .max_encoding_message_size(crate::transport::MAX_PEER_MESSAGE),
            peer_auth,
        );
        tasks.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(peer)
                .serve_with_incoming_shutdown(incoming, stop)
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "peer listener failed");
            }
        }));

        let (fatal_tx, fatal) = tokio::sync::mpsc::channel(1);
        if !unanswered.is_empty() {
            tasks.push(tokio::spawn(recheck_peers(
                config.clone(),
                creds_for_recheck,
                incarnation,
                unanswered,
                fatal_tx,
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(follow_crl(
            raft.clone(),
            tls.clone(),
            shutdown_rx,
        )));

        tracing::info!(id = config.id, %client_addr, %peer_addr, "registry server started");
        Ok(Self {
            id: config.id,
            client_addr,
            peer_addr,
            raft,
            tls,
            #[cfg(feature = "faults")]
            faults,
            shutdown,
            consensus: Some(consensus),
            fatal,
            tasks,
        })
    }

    /// Where clients connect.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// Where other registry servers connect.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The handle to this server's consensus loop: propose, read, status.
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// The TLS state both listeners share; a new CRL set on it refuses
    /// revoked certificates without a restart.
    pub fn tls(&self) -> &Arc<ServerTls> {
        &self.tls
    }

    /// Network faults for tests: isolate this server from some peers.
    #[cfg(feature = "faults")]
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Waits until the consensus loop stops by itself (a fatal condition,
    /// returned) or is shut down.
    pub async fn wait(&mut self) -> Result<(), RegistryError> {
        let Some(task) = self.consensus.as_mut() else {
            return Ok(());
        };
        let fatal = tokio::select! {
            result = task => {
                self.consensus = None;
                return result.unwrap_or_else(|e| Err(RegistryError::Raft(e.to_string())));
            }
            Some(fatal) = self.fatal.recv() => fatal,
        };
        tracing::error!(error = %fatal, "registry server stopping");
        let _ = self.shutdown.send(true);
        if let Some(task) = self.consensus.take() {
            let _ = task.await;
        }
        Err(fatal)
    }

    /// Stops serving, flushes and closes the store.
    pub async fn shutdown(mut self) -> Result<(), RegistryError> {
        // A leader hands over first, so that writes go on at once instead
        // of waiting an election timeout for the others to notice it gone.
        if let Ok(Some(to)) = self.raft.transfer_leadership().await {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < deadline {
                match self.raft.status().await {
                    Ok(status) if status.leader_id == to => break,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        let _ = self.shutdown.send(true);
        let result = self.wait().await;
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        result
    }
}

/// A server that founded a cluster while some peers did not answer asks
/// them again, every second, until each has answered once: one that knows
/// this server from a data directory it no longer has (it was wiped while
/// the others were down) stops it, with the configuration error
/// [`bootstrap::check_empty_start`] gives.
async fn recheck_peers(
    config: RegistryConfig,
    creds: lgsp_certs::Credentials,
    incarnation: u64,
    mut unanswered: Vec<crate::config::PeerConfig>,
    fatal: tokio::sync::mpsc::Sender<RegistryError>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let stop = wait_for(shutdown);
    tokio::pin!(stop);
    while !unanswered.is_empty() {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut stop => return,
        }
        let mut still = Vec::new();
        for peer in unanswered {
            let answer =
                crate::transport::ask_peer(&peer.peer, &creds, config.id, Duration::from_secs(2))
                    .await;
            match answer {
                Ok(answer) => {
                    if let Err(error) =
                        bootstrap::check_empty_start(&config, incarnation, &[(peer.id, Ok(answer))])
                    {
                        let error = RegistryError::Config(format!(
                            "{error} (it founded a cluster while server {} did not answer, and stops now that it does)",
                            peer.id
                        ));
                        let _ = fatal.send(error).await;
                        return;
                    }
                }
                Err(_) => still.push(peer),
            }
        }
        unanswered = still;
    }
}

async fn wait_for(mut rx: tokio::sync::watch::Receiver<bool>) {
    // Also ends when the sender is gone.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The CRL published in the catalog, if any; a failed read is logged, and
/// the CRL in force stays.
fn current_crl(db: &crate::kv::Kv) -> Option<Vec<u8>> {
    match catalog::get(db, RecordKind::Crl, "current") {
        Ok(record) => match record?.value? {
            Value::Crl(crl) => Some(crl.der),
            _ => None,
        },
        Err(error) => {
            tracing::error!(%error, "cannot read the CRL from the catalog");
            None
        }
    }
}

/// Puts each CRL published in the catalog into force on this server's listeners.
async fn follow_crl(
    raft: RaftHandle,
    tls: Arc<ServerTls>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut events = raft.subscribe();
    let stop = wait_for(shutdown);
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            () = &mut stop => return,
        };
        let changed = match event {
            Ok(e) => {
                e.record.is_some_and(|r| r.kind == RecordKind::Crl as i32)
                    || e.r#type == lgsp_proto::watch_event::Type::Compacted as i32
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
            Err(_) => return,
        };
        if changed
            && let Some(der) = current_crl(raft.db())
            && let Err(error) = tls.set_crl(&der)
        {
            tracing::warn!(%error, "the CRL published in the catalog is unusable");
        }
    }
}
