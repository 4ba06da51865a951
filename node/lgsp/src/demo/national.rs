//! The demo's national instance beside the province: the national data
//! exchange platform (NDXP) as a second lgsp instance with its own CA, a
//! one-server registry, its hub and one agency node (the Ministry of Public
//! Security's population register), federated with the province's hub.
//! The ministry's `dan-cu` service is exported to the province and imported
//! into the provincial catalog, and granted to the province's commune, so
//! that the commune's application calls it through its own node, the
//! province's hub and the national hub, as it calls a province service.
//!
//! One function per instance ([`province_hub`], [`national`]); another
//! outside system (a ministry's REST system) is one more beside them.

use super::{DISTRICT, PROVINCE, leaf, node_tls};
use anyhow::{Context as _, Result};
use lgsp_certs::ca::CertificateAuthority;
use lgsp_certs::{AgencyCode, Role, TlsFiles};
use lgsp_dataset::DatasetStore;
use lgsp_node::config::{Backend, LimitsConfig, NodeConfig, ServiceConfig};
use lgsp_node::server::NodeServer;
use lgsp_proto::{FederationPeer, ServiceKind};
use lgsp_province::registry::{self, RegistryCluster};
use lgsp_province::wait;
use lgsp_registry::{Catalog, GrantKey, Publication, RegistryClient, ServiceId, Validity};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The national instance (example data, as every instance's names are).
pub(crate) const NATIONAL_DOMAIN: &str = "ndxp.gov.vn";
/// The national platform's operator, whose hub it is.
const NATIONAL: &str = "000.00.00.G01";
/// Bộ Công an: the population register.
pub(crate) const MINISTRY: &str = "000.00.05.G01";
/// The ministry's service, as both catalogs name it.
pub(crate) const POPULATION_SERVICE: &str = "dan-cu";
/// A citizen in the ministry's sample register.
pub(crate) const CITIZEN_KEY: &str = "025090000123";
/// What the province calls the national platform, and the reverse.
const PEER_NATIONAL: &str = "ndxp";
const PEER_PROVINCE: &str = "phutho";

/// The national instance and the province's hub, running.
pub(crate) struct Federation {
    province_hub: lgsp_hub::HubServer,
    national_hub: lgsp_hub::HubServer,
    national_node: NodeServer,
    national_registry: RegistryCluster,
    /// The national registry's client address, as `--registry` takes it.
    pub national_registry_addr: String,
    /// The province hub's outward listener (where peers' hubs connect).
    pub province_outward: SocketAddr,
    /// The national hub's outward listener.
    pub national_outward: SocketAddr,
}

impl Federation {
    /// The service id of the ministry's population register.
    pub(crate) fn population_service() -> String {
        format!("{MINISTRY}/{POPULATION_SERVICE}")
    }

    pub(crate) async fn stop(self) {
        self.national_node.shutdown().await;
        self.national_hub.shutdown().await;
        self.province_hub.shutdown().await;
        let _ = self.national_registry.shutdown().await;
    }
}

/// A hub or node of the demo with its listeners on free ports.
fn config(
    dir: &Path,
    agency: &str,
    name: &str,
    registry: &[String],
    tls: TlsFiles,
    services: Vec<ServiceConfig>,
) -> NodeConfig {
    let limits = LimitsConfig::default();
    crate::loopback::node_config(dir, agency, name, registry, tls, services, limits)
}

/// Starts the province's hub (with a hub certificate of the provincial CA),
/// after naming the national platform as a federation peer and importing
/// its population register into the provincial catalog.
async fn province_hub(
    dir: &Path,
    ca: &mut CertificateAuthority,
    catalog: &Catalog,
    registry: &[String],
    national: &FederationPeer,
    outward: SocketAddr,
) -> Result<lgsp_hub::HubServer> {
    catalog
        .register_agency(
            &AgencyCode::new(PROVINCE)?,
            "Sở Khoa học và Công nghệ tỉnh Phú Thọ",
            None,
        )
        .await
        .map_err(|s| anyhow::anyhow!("registering the hub's agency: {}", s.message()))?;
    catalog
        .add_peer(national.clone())
        .await
        .map_err(|s| anyhow::anyhow!("adding the national peer: {}", s.message()))?;
    catalog
        .import(PEER_NATIONAL, &Federation::population_service().parse()?)
        .await
        .map_err(|s| anyhow::anyhow!("importing the population register: {}", s.message()))?;
    let hub_dir = dir.join("hub-phutho");
    let creds = leaf(
        ca,
        PROVINCE,
        Role::Hub,
        "hub",
        Some("Nền tảng tích hợp, chia sẻ dữ liệu tỉnh Phú Thọ"),
    )?;
    let tls = TlsFiles::write(&hub_dir.join("tls"), &creds)?;
    // It reads the secrets of the REST systems it calls (the ministry's,
    // see `ministry.rs`) from its own directory.
    let options = lgsp_hub::HubOptions {
        rest_secrets: Some(rest_secrets(dir)),
        ..lgsp_hub::HubOptions::new(outward)
    };
    lgsp_hub::HubServer::start_with(
        config(&hub_dir, PROVINCE, "hub", registry, tls, Vec::new()),
        options,
    )
    .await
    .context("starting the province's hub")
}

/// Where the province's hub reads the secrets of the REST systems it calls.
pub(crate) fn rest_secrets(dir: &Path) -> std::path::PathBuf {
    dir.join("hub-phutho").join("rest-secrets")
}

/// What [`national`] started.
struct National {
    /// Its CA certificate (PEM), which the province trusts for it.
    ca_pem: String,
    registry: RegistryCluster,
    hub: lgsp_hub::HubServer,
    node: NodeServer,
}

/// Starts the national instance in `dir`: its CA, a one-server registry,
/// the ministry's node serving the population register, and its hub on
/// `outward`; the province (`province`) is its federation peer, the
/// register is exported to it and granted to the province's commune.
async fn national(dir: &Path, province: &FederationPeer, outward: SocketAddr) -> Result<National> {
    let mut ca = CertificateAuthority::init(
        &dir.join("ca"),
        NATIONAL_DOMAIN,
        "CA Nền tảng NDXP (demo)",
        30,
    )?;
    let members = registry::members(1)?;
    let configs = registry::plan(
        &mut ca,
        NATIONAL,
        Some("Cục Chuyển đổi số quốc gia"),
        &dir.join("registry"),
        &members,
        |_| {},
    )?;
    let registry = RegistryCluster::start(configs, Duration::from_secs(15)).await?;
    let addrs = registry.client_addrs();
    let admin = leaf(&mut ca, NATIONAL, Role::Admin, "ndxp", None)?;
    TlsFiles::write(&dir.join("admin-tls"), &admin)?;
    let client = RegistryClient::new(&addrs, &admin)?;
    let catalog = Catalog::new(client.clone());
    for (code, name) in [
        (NATIONAL, "Cục Chuyển đổi số quốc gia"),
        (MINISTRY, "Bộ Công an"),
    ] {
        catalog
            .register_agency(&AgencyCode::new(code)?, name, None)
            .await
            .map_err(|s| anyhow::anyhow!("registering agency {code}: {}", s.message()))?;
    }

    // The ministry's node and its register.
    let node_dir = dir.join(format!("node-{MINISTRY}"));
    let tls = node_tls(&mut ca, &node_dir, MINISTRY, "node-1", "Bộ Công an")?;
    let csv = node_dir.join("dan-cu.csv");
    std::fs::write(
        &csv,
        format!(
            "so_dinh_danh,ho_ten,ngay_sinh,noi_thuong_tru\n\
             {CITIZEN_KEY},Nguyễn Thị Thu Hà,1990-03-12,Xã Tam Dương tỉnh Phú Thọ\n\
             025088000456,Trần Quốc Bảo,1988-11-02,Phường Việt Trì tỉnh Phú Thọ\n"
        ),
    )?;
    let data_dir = node_dir.join("data");
    DatasetStore::new(&data_dir.join("datasets")).import(
        POPULATION_SERVICE,
        &csv,
        "so_dinh_danh",
        None,
        &|_, _| {},
    )?;
    let service = ServiceConfig {
        name: POPULATION_SERVICE.into(),
        description: String::new(),
        backend: Backend::Dataset,
    };
    let node = NodeServer::start(config(
        &node_dir,
        MINISTRY,
        "node-1",
        &addrs,
        tls,
        vec![service],
    ))
    .await
    .context("starting the ministry's node")?;
    wait::node_registered(&client, MINISTRY, "node-1", Duration::from_secs(20)).await?;
    let id: ServiceId = Federation::population_service().parse()?;
    catalog
        .publish(Publication::new(
            id.clone(),
            ServiceKind::Dataset,
            "node-1",
            "Cơ sở dữ liệu quốc gia về dân cư: họ tên, ngày sinh, nơi thường trú",
        ))
        .await
        .map_err(|s| anyhow::anyhow!("publishing: {}", s.message()))?;

    // The province: a peer, the register exported to it and granted to its commune.
    catalog
        .add_peer(province.clone())
        .await
        .map_err(|s| anyhow::anyhow!("adding the province as a peer: {}", s.message()))?;
    catalog
        .export(&id, &province.name)
        .await
        .map_err(|s| anyhow::anyhow!("exporting: {}", s.message()))?;
    catalog
        .register_foreign_agency(
            &AgencyCode::new(DISTRICT)?,
            "UBND xã Tam Dương",
            None,
            &province.trust_domain,
        )
        .await
        .map_err(|s| anyhow::anyhow!("registering the commune: {}", s.message()))?;
    catalog
        .grant(
            &GrantKey {
                service: id,
                consumer: AgencyCode::new(DISTRICT)?,
            },
            Validity::Open,
            "Xác minh thông tin công dân khi giải quyết thủ tục hành chính",
        )
        .await
        .map_err(|s| anyhow::anyhow!("granting: {}", s.message()))?;

    let hub_dir = dir.join("hub");
    let creds = leaf(&mut ca, NATIONAL, Role::Hub, "hub", Some("Nền tảng NDXP"))?;
    let tls = TlsFiles::write(&hub_dir.join("tls"), &creds)?;
    let hub = lgsp_hub::HubServer::start(
        config(&hub_dir, NATIONAL, "hub", &addrs, tls, Vec::new()),
        outward,
    )
    .await
    .context("starting the national hub")?;
    Ok(National {
        ca_pem: ca.cert_pem().to_owned(),
        registry,
        hub,
        node,
    })
}

/// Starts the national instance in `dir/national` and the province's hub,
/// federated: the province's CA is `ca` (its catalog `catalog`, its
/// registry at `registry`).
pub(crate) async fn start(
    dir: &Path,
    ca: &mut CertificateAuthority,
    catalog: &Catalog,
    registry: &[String],
) -> Result<Federation> {
    // Each hub is named in the other's catalog before it starts.
    let province_outward = lgsp_province::net::free_addr()?;
    let national_outward = lgsp_province::net::free_addr()?;
    let national_dir = dir.join("national");
    let province_peer = FederationPeer {
        name: PEER_PROVINCE.into(),
        trust_domain: ca.trust_domain().to_owned(),
        ca_pem: ca.cert_pem().to_owned(),
        hub_endpoint: province_outward.to_string(),
        ..Default::default()
    };
    let n = national(&national_dir, &province_peer, national_outward).await?;
    let national_peer = FederationPeer {
        name: PEER_NATIONAL.into(),
        trust_domain: NATIONAL_DOMAIN.into(),
        ca_pem: n.ca_pem.clone(),
        hub_endpoint: national_outward.to_string(),
        ..Default::default()
    };
    let province_hub =
        province_hub(dir, ca, catalog, registry, &national_peer, province_outward).await?;
    Ok(Federation {
        province_hub,
        national_registry_addr: n.registry.client_addrs().join(","),
        national_hub: n.hub,
        national_node: n.node,
        national_registry: n.registry,
        province_outward,
        national_outward,
    })
}
