//! A running agency node: both listeners, the catalog cache that follows
//! the registry, the sharing log's sealer and its anchor in the registry,
//! metrics, and the node's own registration in the catalog.

use crate::catalog_cache::{CacheError, CatalogCache, open_db};
use crate::config::NodeConfig;
use crate::consumer::Consumer;
use crate::context::NodeContext;
use crate::link::{FRAMING as LINK_FRAMING, LinkServer};
use crate::listener::Guard;
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::shutdown::Shutdown;
use lgsp_certs::inspect::CertInfo;
use lgsp_certs::{Authenticator, CertError, ClientTrust, Credentials, Role, ServerTls, WhoAmI};
use lgsp_dataset::{DatasetCache, DatasetStore};
use lgsp_proto::NodeRecord;
use lgsp_proto::data_exchange_server::DataExchangeServer;
use lgsp_proto::identity_service_server::IdentityServiceServer;
use lgsp_proto::node_link_server::NodeLinkServer;
use lgsp_registry::{Catalog, RegistryClient};
use lgsp_sharing_log::{AuditError, SharingLog, Signer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt as _;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node's certificate, key or CA file cannot be used.
    #[error("the node's TLS files are not ready (is the signed certificate in {}?)", cert.display())]
    TlsFiles {
        /// The certificate file named in `[tls]`.
        cert: PathBuf,
        /// Why the files could not be loaded.
        #[source]
        source: CertError,
    },
    /// The certificate says nothing usable about who holds it.
    #[error("{}: {why}", cert.display())]
    Identity {
        /// The certificate file named in `[tls]`.
        cert: PathBuf,
        /// Why it names no lgsp identity (no SPIFFE id, a malformed one).
        why: String,
    },
    /// The certificate is another node's than `node.toml` describes.
    #[error(
        "{} is the certificate of {holder}, but node.toml says agency {agency} node {name}: they must match",
        cert.display()
    )]
    NotThisNode {
        /// The certificate file named in `[tls]`.
        cert: PathBuf,
        /// The identity the certificate was issued to.
        holder: String,
        /// The agency `node.toml` names.
        agency: String,
        /// The node name `node.toml` names.
        name: String,
    },
    /// The node's certificate was not issued by the CA in its `ca.pem`: no
    /// other node would accept it, so the node would only warn for ever.
    #[error(
        "{} was not signed by the CA in {}: ask the provincial IT department (Sở KH&CN) for a certificate signed by the provincial CA, or put that CA's certificate in {}",
        cert.display(),
        ca.display(),
        ca.display()
    )]
    NotIssuedByCa {
        /// The node's certificate file.
        cert: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
    },
    /// The node's instance id (in its data directory) cannot be read or made.
    #[error("the node's instance id")]
    InstanceId(#[source] std::io::Error),
    /// Another live process holds this node's name in the catalog (the same
    /// certificate on another server or data directory); the registry's
    /// refusal says which and what to do.
    #[error("{0}")]
    NameInUse(String),
    /// The consumer listener's own TLS files cannot be used.
    #[error("the consumer listener's TLS files ([consumer.tls])")]
    ConsumerTls(#[source] CertError),
    /// A certificate or TLS setting failed.
    #[error(transparent)]
    Tls(#[from] CertError),
    /// The node's copy of the catalog cannot be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The sharing log cannot be opened or signed.
    #[error(transparent)]
    SharingLog(#[from] AuditError),
    /// A listener's address cannot be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// Why (in use, not an address of this host, no permission).
        #[source]
        source: std::io::Error,
    },
    /// The replay guard's journal of on-behalf-of records cannot be used.
    #[error(
        "the replay guard's journal in {} cannot be read or written (the node remembers the on-behalf-of records it served there across restarts)",
        dir.display()
    )]
    ReplayJournal {
        /// The journal's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service cannot be built.
    #[error("reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
}

impl NodeError {
    /// Whether the configuration (files, identity) is at fault, so that a
    /// restart cannot help: the process exits with the usage code (2), which
    /// the systemd unit does not restart.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            NodeError::TlsFiles { .. }
                | NodeError::Identity { .. }
                | NodeError::NotThisNode { .. }
                | NodeError::NotIssuedByCa { .. }
                | NodeError::ConsumerTls(_)
                | NodeError::InstanceId(_)
                | NodeError::NameInUse(_)
        )
    }
}

/// Whether the first certificate of `creds` is signed by one of its CA
/// certificates.
fn issued_by_ca(creds: &Credentials) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Some(leaf) = creds.chain.first() else {
        return false;
    };
    let Ok((_, leaf)) = X509Certificate::from_der(leaf.as_ref()) else {
        return false;
    };
    creds.roots.iter().any(|root| {
        X509Certificate::from_der(root.as_ref()).is_ok_and(|(_, ca)| {
            ca.subject() == leaf.issuer() && leaf.verify_signature(Some(ca.public_key())).is_ok()
        })
    })
}

fn listen_error(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::Listen { addr, source }
}

/// A running node.
#[derive(Debug)]
pub struct NodeServer {
    /// Where the provider side listens, as bound (the port chosen when the
    /// configuration asked for port 0).
    pub provider_addr: SocketAddr,
    /// Where the consumer side listens for the agency's applications, as
    /// bound.
    pub consumer_addr: SocketAddr,
    /// Where Prometheus metrics are served (as bound), when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// What both sides share: configuration, catalog copy, sharing log,
    /// limits, metrics.
    pub ctx: Arc<NodeContext>,
    /// The provider listener's TLS state; the node sets each new CRL from
    /// the catalog on it, refusing revoked certificates without a restart.
    pub tls: Arc<ServerTls>,
    shutdown: Shutdown,
    registration: Registration,
}

/// What the node needs to give its catalog entry up when it stops.
#[derive(Debug)]
struct Registration {
    catalog: Catalog,
    record: NodeRecord,
    registered: Arc<std::sync::atomic::AtomicBool>,
    fatal: Option<tokio::sync::oneshot::Receiver<NodeError>>,
}

impl NodeServer {
    /// Starts the node described by `config`: checks its certificate is this
    /// node's, opens its catalog copy and sharing log, binds the listeners,
    /// and registers the node in the catalog in the background. Fails with a
    /// [`NodeError`] naming what could not be used.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let files = &config.tls;
        let creds = Credentials::load(files).map_err(|source| NodeError::TlsFiles {
            cert: files.cert.clone(),
            source,
        })?;
        if !issued_by_ca(&creds) {
            return Err(NodeError::NotIssuedByCa {
                cert: files.cert.clone(),
                ca: files.ca.clone(),
            });
        }
        let own = CertInfo::from_der(&creds.chain[0], &files.cert)?;
        let id = own.spiffe_id.map_err(|why| NodeError::Identity {
            cert: files.cert.clone(),
            why: why.to_string(),
        })?;
        if !matches!(id.role, Role::Node | Role::Hub)
            || id.agency.as_str() != config.agency
            || id.name != config.name
        {
            return Err(NodeError::NotThisNode {
                cert: files.cert.clone(),
                holder: id.to_string(),
                agency: config.agency.clone(),
                name: config.name.clone(),
            });
        }

        let instance =
            crate::registration::instance_id(&config.data_dir).map_err(NodeError::InstanceId)?;
        let db = open_db(&config.data_dir)?;
        let cache = CatalogCache::open(&db)?;
        let trust = ClientTrust::new(&creds)?;
        let registry = RegistryClient::with_trust(&config.registry, &creds, trust.clone())?;
        let mut shutdown = Shutdown::new();
        let shutdown_rx = shutdown.receiver();
        shutdown.spawn(
            "catalog cache",
            cache.clone().follow(registry.clone(), shutdown_rx.clone()),
        );

        let tls = ServerTls::new(creds.clone())?;

        let signer = Signer::from_pem(&creds.key_pem, &creds.cert_pem)?;
        let log = Arc::new(SharingLog::open(
            &sharing_log_dir(&config.data_dir),
            signer,
        )?);
        shutdown.adopt(
            "sharing log sealer",
            log.clone()
                .spawn_sealer(Duration::from_secs(1), shutdown_rx.clone()),
        );

        let metrics = Metrics::new();
        metrics.set_certificate_expiry(own.not_after.unix_timestamp());
        let datasets = DatasetCache::new(DatasetStore::new(&config.data_dir.join("datasets")));
        let max = config.limits.max_message_bytes;
        let ctx = NodeContext::new(
            config.clone(),
            cache.clone(),
            datasets,
            log,
            creds,
            trust.clone(),
            id.trust_domain.clone(),
            metrics.clone(),
        );
        let journal = config.data_dir.join("obo-seen");
        let remembered = ctx
            .replays
            .open_journal(&journal, lgsp_registry::calendar::unix_now_ms())
            .map_err(|source| NodeError::ReplayJournal {
                dir: journal.clone(),
                source,
            })?;
        tracing::debug!(remembered, "replay guard read back its journal");

        shutdown.spawn(
            "CRL follower",
            follow_crl(
                cache.clone(),
                tls.clone(),
                trust.clone(),
                ctx.clone(),
                shutdown.stopped(),
            ),
        );

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<DataExchangeServer<Provider>>().await;
        // Reflection lists what each listener serves, nothing more.
        let reflection_of = |services: &[&str]| {
            services
                .iter()
                .fold(
                    tonic_reflection::server::Builder::configure()
                        .register_encoded_file_descriptor_set(lgsp_proto::FILE_DESCRIPTOR_SET),
                    |builder, name| builder.with_service_name(*name),
                )
                .build_v1()
                .map_err(NodeError::Reflection)
        };
        let provider_reflection = reflection_of(&[
            "lgsp.v1.DataExchange",
            "lgsp.v1.NodeLink",
            "lgsp.v1.IdentityService",
        ])?;
        let reflection = reflection_of(&["lgsp.v1.DataExchange"])?;

        let provider_listener = tokio::net::TcpListener::bind(config.provider.listen)
            .await
            .map_err(listen_error(config.provider.listen))?;
        let provider_addr = provider_listener
            .local_addr()
            .map_err(listen_error(config.provider.listen))?;
        // Refusals name times on the province's clocks, as the catalog's
        // calendar says them (the default zone until the cache has one).
        let auth = Authenticator::new(tls.clone(), &id.trust_domain).showing_times({
            let cache = cache.clone();
            move |unix| {
                lgsp_registry::calendar::WorkCalendar::from_record(cache.calendar().as_ref())
                    .unwrap_or_default()
                    .show(unix)
            }
        });
        // The interceptor authenticates (it puts the caller in the
        // request); the provider's pipeline does the rest, per call, for
        // unary calls and calls on node links alike.
        let provider = Provider::new(ctx.clone(), auth.clone());
        let data_exchange = tonic::service::interceptor::InterceptedService::new(
            DataExchangeServer::new(provider.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            auth.clone(),
        );
        let link = tonic::service::interceptor::InterceptedService::new(
            NodeLinkServer::new(LinkServer::new(provider, shutdown_rx.clone()))
                .max_decoding_message_size(max + LINK_FRAMING)
                .max_encoding_message_size(max + LINK_FRAMING),
            auth.clone(),
        );
        health.set_serving::<NodeLinkServer<LinkServer>>().await;
        let incoming = tls.clone().incoming(provider_listener);
        let stop = shutdown.stopped();
        // On the province-facing listener, health and reflection answer
        // only certificates the authenticator accepts (of this trust
        // domain, not revoked), like every other service there.
        let h = tonic::service::interceptor::InterceptedService::new(
            health_service.clone(),
            auth.clone(),
        );
        let r =
            tonic::service::interceptor::InterceptedService::new(provider_reflection, auth.clone());
        shutdown.spawn("provider listener", async move {
            // A consumer node that vanished without closing its connection
            // (power cut, cable pulled) is found out within half a minute:
            // its streams end, its node links among them, and their slots
            // and the count of its links are given back.
            let result = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(data_exchange)
                .add_service(link)
                .add_service(IdentityServiceServer::with_interceptor(WhoAmI, auth))
                .add_service(h)
                .add_service(r)
                .serve_with_incoming_shutdown(incoming, stop)
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "provider listener failed");
            }
        });

        let consumer_listener = tokio::net::TcpListener::bind(config.consumer.listen)
            .await
            .map_err(listen_error(config.consumer.listen))?;
        let consumer_addr = consumer_listener
            .local_addr()
            .map_err(listen_error(config.consumer.listen))?;
        let consumer = DataExchangeServer::new(Consumer::new(ctx.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let consumer_tls = match &config.consumer.tls {
            Some(files) => {
                let creds = Credentials::load(files).map_err(NodeError::ConsumerTls)?;
                Some(ServerTls::new(creds)?)
            }
            None => None,
        };
        // Bounded: a flood of connections here must not take the provider
        // listener's open files (see listener.rs).
        let guard = Guard {
            max_connections: config.consumer.max_connections,
            preface: Duration::from_secs(config.consumer.preface_timeout_s),
            idle: Duration::from_secs(config.consumer.idle_timeout_s),
        }
        .within_file_limit();
        let accepted = crate::listener::accept(consumer_listener, guard);
        let stop = shutdown.stopped();
        let router = tonic::transport::Server::builder()
            .add_service(consumer)
            .add_service(health_service)
            .add_service(reflection);
        shutdown.spawn("consumer listener", async move {
            let result = match consumer_tls {
                Some(tls) => {
                    router
                        .serve_with_incoming_shutdown(tls.handshakes(accepted), stop)
                        .await
                }
                None => {
                    let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted)
                        .map(Ok::<_, std::io::Error>);
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
            };
            if let Err(error) = result {
                tracing::error!(%error, "consumer listener failed");
            }
        });

        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(listen_error(addr))?;
                let bound = listener.local_addr().map_err(listen_error(addr))?;
                shutdown.spawn(
                    "metrics listener",
                    crate::metrics::serve(listener, metrics, cache.clone(), shutdown_rx.clone()),
                );
                Some(bound)
            }
            None => None,
        };

        // The admin socket: `lgsp dataset show|query|list` read the live
        // datasets through it while this process holds them open.
        let admin_socket = crate::admin::socket_path(&config.data_dir);
        match crate::admin::bind(&admin_socket) {
            Ok(listener) => shutdown.spawn(
                "admin socket",
                crate::admin::serve(
                    listener,
                    ctx.clone(),
                    DatasetStore::new(&config.data_dir.join("datasets")),
                    shutdown.stopped(),
                ),
            ),
            Err(error) => tracing::warn!(
                %error,
                socket = %admin_socket.display(),
                "cannot listen on the admin socket; `lgsp dataset show|query|list` cannot read this node's datasets while it runs"
            ),
        }

        let record = NodeRecord {
            agency_code: config.agency.clone(),
            name: config.name.clone(),
            endpoint: if config.provider.listen.port() == 0 {
                provider_addr.to_string()
            } else {
                config.provider.advertise.clone()
            },
            cert_sha256: own.sha256.clone(),
            instance_id: instance,
            version: crate::metrics::build_version(),
            capabilities: vec![crate::obo::BATCH_CAPABILITY.to_owned()],
            ..Default::default()
        };
        let catalog = Catalog::new(registry.clone());
        let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
        shutdown.spawn(
            "sharing log anchor",
            crate::audit_anchor::publish_anchors(
                ctx.log.clone(),
                registry.clone(),
                config.agency.clone(),
                config.name.clone(),
                Duration::from_secs(config.audit.anchor_interval_s),
                shutdown_rx.clone(),
            ),
        );
        shutdown.spawn(
            "catalog registration",
            crate::registration::keep_registered(
                catalog.clone(),
                record.clone(),
                shutdown_rx.clone(),
                fatal_tx,
                registered.clone(),
            ),
        );
        shutdown.spawn(
            "contender warnings",
            crate::registration::warn_of_contenders(cache.clone(), record.clone(), shutdown_rx),
        );
        tracing::info!(%provider_addr, %consumer_addr, agency = %config.agency, node = %config.name, "node started");
        Ok(Self {
            provider_addr,
            consumer_addr,
            metrics_addr,
            ctx,
            tls,
            shutdown,
            registration: Registration {
                catalog,
                record,
                registered,
                fatal: Some(fatal_rx),
            },
        })
    }

    /// Resolves when the node cannot go on: another live instance holds its
    /// name in the catalog. Never resolves otherwise (nor a second time).
    pub async fn failure(&mut self) -> NodeError {
        match self.registration.fatal.take() {
            Some(rx) => match rx.await {
                Ok(error) => error,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Stops both listeners and background work (each task at most 5 s),
    /// then seals the sharing log.
    pub async fn shutdown(self) {
        self.shutdown.stop(Duration::from_secs(5)).await;
        if let Err(error) = self.ctx.log.seal() {
            tracing::error!(%error, "cannot seal the sharing log");
        }
        let _ = std::fs::remove_file(crate::admin::socket_path(&self.ctx.config.data_dir));
        let r = &self.registration;
        if r.registered.load(std::sync::atomic::Ordering::SeqCst) {
            crate::registration::release(&r.catalog, &r.record).await;
        }
    }
}

/// Puts the catalog's CRL in force on the provider listener whenever it changes.
async fn follow_crl(
    cache: Arc<CatalogCache>,
    tls: Arc<ServerTls>,
    trust: Arc<ClientTrust>,
    ctx: Arc<NodeContext>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut changes = cache.subscribe();
    let mut current: Option<Vec<u8>> = None;
    tokio::pin!(stop);
    loop {
        let crl = cache.crl();
        if crl.is_some() && crl != current {
            let der = crl.as_deref().unwrap_or_default();
            // The same CRL for callers (server side) and for the nodes and
            // registry servers this node calls (client side).
            match tls.set_crl(der).and_then(|()| trust.set_crl(der)) {
                Ok(()) => {
                    current = crl;
                    // New handshakes check providers against this CRL.
                    // When it revokes this node itself, reconnecting only
                    // trades the providers' per-call answer ("revoked",
                    // naming the serial) for a refused handshake.
                    if !tls.is_revoked(&ctx.serial) {
                        ctx.forget_connections();
                    }
                }
                Err(error) => tracing::warn!(%error, "the CRL in the catalog is unusable"),
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = &mut stop => return,
        }
    }
}

/// Where the node keeps its sharing log, under its data directory.
fn sharing_log_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("sharing-log")
}

/// The node's data directory layout, for tools.
pub fn sharing_log_path(data_dir: &Path) -> std::path::PathBuf {
    sharing_log_dir(data_dir).join(lgsp_sharing_log::LOG_FILE)
}
