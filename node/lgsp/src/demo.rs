//! `lgsp demo`: a whole province on loopback in one process: the provincial
//! CA, three registry servers, two agencies with nodes, real sample data
//! (a department's business registrations, a district's households), an
//! HTTP backend, and grants between them. `--scenario` walks through it.

use anyhow::{Result, bail};
use bytes::Bytes;
use lgsp_certs::ca::{CertificateAuthority, LeafSpec, make_csr};
use lgsp_certs::{AgencyCode, Credentials, Role, SpiffeId, TlsFiles};
use lgsp_dataset::DatasetStore;
use lgsp_node::config::{
    Backend, ConsumerConfig, DEFAULT_BACKEND_TIMEOUT, HttpMethod, LimitsConfig, NodeConfig,
    ProviderConfig, ServiceConfig,
};
use lgsp_node::server::NodeServer;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{
    AccessRequest, Envelope, FocalPoint, GrantStatus, ServiceKind, SuspensionKind, TerminationKind,
};
use lgsp_province::backend::{self, HttpCall};
use lgsp_province::pki::{self, Holder};
use lgsp_province::registry::{self, Member, RegistryCluster};
use lgsp_province::wait;
use lgsp_registry::{Catalog, Decision, GrantKey, Publication, RegistryClient, Validity};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod guide;
mod ministry;
mod national;
mod ports;

use guide::{
    BUSINESS_KEY, Guide, HOUSEHOLD_KEY, SUSPENSION_REASON, SUSPENSION_RESTORE, TERMINATION_REASON,
};
pub(crate) use ports::Ports;
use ports::addr;

/// The demo's example province (tỉnh Phú Thọ, after the 2025 merger of
/// provinces and the end of the district level): names and codes are
/// example data, as every province's are configuration.
const TRUST_DOMAIN: &str = "phutho.gov.vn";
const PROVINCE: &str = "000.00.00.H62";
/// Sở Tài chính (business registration since the 2025 merger): business registrations.
pub(crate) const DEPARTMENT: &str = "000.00.07.H62";
/// UBND xã Tam Dương: household records.
pub(crate) const DISTRICT: &str = "000.00.40.H62";
/// Sở Y tế: registered, but granted nothing.
const HEALTH: &str = "000.00.09.H62";

/// The demo's HTTP backend at `url`, called with POST.
fn http_backend(url: String) -> Backend {
    Backend::Http {
        url,
        method: HttpMethod::Post,
        timeout: DEFAULT_BACKEND_TIMEOUT,
    }
}

fn leaf(
    ca: &mut CertificateAuthority,
    agency: &str,
    role: Role,
    name: &str,
    display: Option<&str>,
) -> Result<Credentials> {
    let holder = Holder {
        agency,
        role,
        name,
        display,
    };
    Ok(pki::issue(ca, holder, 30)?.creds)
}

/// An agency node made the production way: key and CSR on "its server", signed by the CA.
fn node_tls(
    ca: &mut CertificateAuthority,
    dir: &Path,
    agency: &str,
    name: &str,
    display: &str,
) -> Result<TlsFiles> {
    let id = SpiffeId::new(
        ca.trust_domain(),
        AgencyCode::new(agency)?,
        Role::Node,
        name,
    )?;
    let mut spec = LeafSpec::for_days(id, 30)?;
    spec.display_name = Some(display.to_owned());
    // The demo's tools reach the node as 127.0.0.1; the CA vouches for that
    // on this one-host province only.
    spec.ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    ca.allow_names(agency, &[], &spec.ips)?;
    let (csr, key) = make_csr(&spec)?;
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    lgsp_certs::write_atomic(&tls.join("key.pem"), key.as_bytes(), 0o600)?;
    std::fs::write(tls.join("csr.pem"), &csr)?;
    let request = ca.check_csr(&csr, &tls.join("csr.pem"), 30)?;
    let (cert, _) = ca.sign(request)?;
    let files = TlsFiles::in_dir(&tls);
    std::fs::write(&files.cert, cert)?;
    std::fs::write(&files.ca, ca.cert_pem())?;
    Ok(files)
}

const SURNAMES: [&str; 8] = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi"];
const MIDDLE: [&str; 6] = ["Văn", "Thị", "Đức", "Minh", "Thu", "Quốc"];
const GIVEN: [&str; 10] = [
    "An", "Bình", "Cường", "Dung", "Hương", "Khánh", "Lan", "Phúc", "Thảo", "Yến",
];
const COMMUNES: [&str; 5] = ["Hợp Hòa", "Kim Long", "Hướng Đạo", "Đạo Tú", "Hoàng Hoa"];
const TRADES: [&str; 5] = [
    "Sản xuất gạch ngói",
    "Bán buôn nông sản",
    "Dịch vụ ăn uống",
    "Vận tải hàng hóa",
    "Xây dựng dân dụng",
];

fn person(i: usize) -> String {
    format!(
        "{} {} {}",
        SURNAMES[i % 8],
        MIDDLE[(i / 8) % 6],
        GIVEN[(i * 7) % 10]
    )
}

/// Writes the sample datasets; returns (business CSV, household CSV).
fn sample_data(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let business = dir.join("doanh-nghiep.csv");
    let mut w = csv::Writer::from_path(&business)?;
    w.write_record([
        "ma_so_doanh_nghiep",
        "ten_doanh_nghiep",
        "nguoi_dai_dien",
        "nganh_nghe",
        "dia_chi",
        "ngay_cap",
    ])?;
    for i in 0..60 {
        w.write_record([
            format!("25001{:05}", 1000 + i * 37),
            format!("Công ty TNHH {} {}", GIVEN[i % 10], COMMUNES[i % 5]),
            person(i),
            TRADES[i % 5].to_owned(),
            format!("Xã {}, tỉnh Phú Thọ", COMMUNES[(i + 2) % 5]),
            format!("20{:02}-{:02}-{:02}", 10 + i % 15, 1 + i % 12, 1 + i % 28),
        ])?;
    }
    w.flush()?;
    let households = dir.join("ho-gia-dinh.csv");
    let mut w = csv::Writer::from_path(&households)?;
    w.write_record(["so_ho", "chu_ho", "so_nhan_khau", "xa", "thon"])?;
    for i in 0..80 {
        w.write_record([
            format!("TD-{:05}", 100 + i),
            person(i + 3),
            (1 + i % 6).to_string(),
            COMMUNES[i % 5].to_owned(),
            format!("Thôn {}", 1 + i % 9),
        ])?;
    }
    w.flush()?;
    Ok((business, households))
}

/// The department's HTTP/JSON licence system, fronted by its node; it
/// stops when the returned sender is dropped.
async fn start_backend(ports: Ports) -> Result<tokio::sync::watch::Sender<bool>> {
    let listener = tokio::net::TcpListener::bind(addr(ports.backend())).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    backend::serve(
        listener,
        |call: HttpCall| async move {
            let asked: serde_json::Value = serde_json::from_slice(&call.body).unwrap_or_default();
            let reply = serde_json::json!({
                "he_thong": "Hệ thống cấp phép của Sở Tài chính",
                "thao_tac": call.path.trim_start_matches("/giay-phep/"),
                "ma_so_doanh_nghiep": asked.get("ma_so_doanh_nghiep"),
                "giay_phep": "Còn hiệu lực",
            });
            Bytes::from(reply.to_string())
        },
        stopped,
    )?;
    Ok(stop)
}

/// Everything the demo started.
pub(crate) struct Province {
    pub dir: PathBuf,
    /// Where everything listens.
    pub ports: Ports,
    registries: RegistryCluster,
    /// Stops the department's HTTP system when dropped.
    _backend: tokio::sync::watch::Sender<bool>,
    nodes: Vec<NodeServer>,
    /// The catalog, changed as the provincial admin.
    pub catalog: Catalog,
    pub health_tls: PathBuf,
    /// The department's admin (an agency admin: decides requests for its services).
    pub department_admin: Catalog,
    /// Tam Dương's admin (files requests).
    pub district_admin: Catalog,
    /// The national instance and the province's hub.
    pub federation: national::Federation,
    /// The ministry's REST system behind the province's hub.
    pub ministry: ministry::MinistryRest,
}

impl Province {
    pub(crate) async fn stop(self) {
        drop(self.ministry);
        self.federation.stop().await;
        for n in self.nodes {
            n.shutdown().await;
        }
        let _ = self.registries.shutdown().await;
    }
}

/// Starts the province in `dir` (replacing a previous demo there).
pub(crate) async fn start(dir: &Path, ports: Ports) -> Result<Province> {
    if dir.exists() {
        if !dir.join("ca").join("ca.json").exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} exists and is not an lgsp demo directory; choose another --dir",
                dir.display()
            );
        }
        println!("Replacing the previous demo in {}", dir.display());
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let mut ca =
        CertificateAuthority::init(&dir.join("ca"), TRUST_DOMAIN, "CA tỉnh Phú Thọ (demo)", 30)?;

    let members: Vec<Member> = (1..=3u16)
        .map(|i| Member {
            id: u64::from(i),
            client: addr(ports.registry_client(i)),
            peer: addr(ports.registry_peer(i)),
        })
        .collect();
    let configs = registry::plan(
        &mut ca,
        PROVINCE,
        Some("Sở Thông tin và Truyền thông"),
        dir,
        &members,
        |_| {},
    )?;
    let registries = RegistryCluster::start(configs, Duration::from_secs(15)).await?;
    let admin_creds = leaf(
        &mut ca,
        PROVINCE,
        Role::Admin,
        "so-tttt",
        Some("Sở Thông tin và Truyền thông"),
    )?;
    let admin_tls = dir.join("admin-tls");
    TlsFiles::write(&admin_tls, &admin_creds)?;
    let registry_addrs = registries.client_addrs();
    let admin = RegistryClient::new(&registry_addrs, &admin_creds)?;
    let catalog = Catalog::new(admin.clone());
    let health_creds = leaf(
        &mut ca,
        HEALTH,
        Role::Node,
        "node-1",
        Some("Sở Y tế tỉnh Phú Thọ"),
    )?;
    let health_tls = dir.join("so-y-te-tls");
    TlsFiles::write(&health_tls, &health_creds)?;
    // Each agency's admin certificate: it files and decides access requests.
    let mut agency_admin = |agency: &str, display: &str| -> Result<Catalog> {
        let creds = leaf(&mut ca, agency, Role::Admin, "quan-tri", Some(display))?;
        TlsFiles::write(&dir.join(format!("admin-{agency}-tls")), &creds)?;
        Ok(Catalog::new(RegistryClient::new(&registry_addrs, &creds)?))
    };
    let department_admin = agency_admin(DEPARTMENT, "Sở Tài chính tỉnh Phú Thọ")?;
    let district_admin = agency_admin(DISTRICT, "UBND xã Tam Dương")?;

    for (code, name, focal, phone) in [
        (
            DEPARTMENT,
            "Sở Tài chính tỉnh Phú Thọ",
            "Trần Thu Hà",
            "0211 3862 480",
        ),
        (
            DISTRICT,
            "UBND xã Tam Dương",
            "Nguyễn Văn Dũng",
            "0211 3896 125",
        ),
        (
            HEALTH,
            "Sở Y tế tỉnh Phú Thọ",
            "Lê Minh Tâm",
            "0211 3862 154",
        ),
    ] {
        let focal_point = FocalPoint {
            name: focal.into(),
            phone: phone.into(),
            email: format!(
                "daumoi@{}.phutho.gov.vn",
                code.replace('.', "-").to_lowercase()
            ),
            role: "Đầu mối chia sẻ dữ liệu".into(),
        };
        catalog
            .register_agency(&AgencyCode::new(code)?, name, Some(focal_point))
            .await
            .map_err(|s| anyhow::anyhow!("registering agency {code}: {}", s.message()))?;
    }

    let (business_csv, households_csv) = sample_data(&dir.join("sample-data"))?;
    let backend = start_backend(ports).await?;
    let mut nodes = Vec::new();
    for (agency, display, provider, apps, metrics, services, dataset) in [
        (
            DEPARTMENT,
            "Sở Tài chính tỉnh Phú Thọ",
            ports.department_provider(),
            ports.department_apps(),
            ports.department_metrics(),
            vec![
                ("doanh-nghiep", Backend::Dataset),
                (
                    "giay-phep",
                    http_backend(format!("http://{}/giay-phep/{{op}}", addr(ports.backend()))),
                ),
            ],
            ("doanh-nghiep", &business_csv, "ma_so_doanh_nghiep"),
        ),
        (
            DISTRICT,
            "UBND xã Tam Dương",
            ports.district_provider(),
            ports.district_apps(),
            ports.district_metrics(),
            vec![("ho-gia-dinh", Backend::Dataset)],
            ("ho-gia-dinh", &households_csv, "so_ho"),
        ),
    ] {
        let ndir = dir.join(format!("node-{agency}"));
        let tls = node_tls(&mut ca, &ndir, agency, "node-1", display)?;
        let data_dir = ndir.join("data");
        DatasetStore::new(&data_dir.join("datasets")).import(
            dataset.0,
            dataset.1,
            dataset.2,
            None,
            &|_, _| {},
        )?;
        let config = NodeConfig {
            agency: agency.into(),
            name: "node-1".into(),
            data_dir,
            registry: registry_addrs.clone(),
            tls,
            provider: ProviderConfig {
                listen: addr(provider),
                advertise: addr(provider).to_string(),
            },
            consumer: ConsumerConfig::plain(addr(apps)),
            metrics_listen: Some(addr(metrics)),
            limits: LimitsConfig::default(),
            audit: Default::default(),
            services: services
                .iter()
                .map(|(name, backend)| ServiceConfig {
                    name: (*name).into(),
                    description: String::new(),
                    backend: backend.clone(),
                })
                .collect(),
            hub: Default::default(),
        };
        nodes.push(NodeServer::start(config).await?);
    }
    for agency in [DEPARTMENT, DISTRICT] {
        wait::node_registered(&admin, agency, "node-1", Duration::from_secs(20)).await?;
    }
    for (id, kind, description) in [
        (
            format!("{DEPARTMENT}/doanh-nghiep"),
            ServiceKind::Dataset,
            "Đăng ký doanh nghiệp: mã số, tên, người đại diện, ngành nghề",
        ),
        (
            format!("{DEPARTMENT}/giay-phep"),
            ServiceKind::Http,
            "Tra cứu giấy phép kinh doanh (hệ thống cấp phép)",
        ),
        (
            format!("{DISTRICT}/ho-gia-dinh"),
            ServiceKind::Dataset,
            "Hộ gia đình xã Tam Dương: chủ hộ, số nhân khẩu, xã, thôn",
        ),
    ] {
        catalog
            .publish(Publication::new(id.parse()?, kind, "node-1", description))
            .await
            .map_err(|s| anyhow::anyhow!("publishing: {}", s.message()))?;
    }
    for (service, consumer, reason) in [
        (
            format!("{DEPARTMENT}/doanh-nghiep"),
            DISTRICT,
            "Kiểm tra hộ kinh doanh trên địa bàn",
        ),
        (
            format!("{DEPARTMENT}/giay-phep"),
            DISTRICT,
            "Kiểm tra giấy phép",
        ),
        (
            format!("{DISTRICT}/ho-gia-dinh"),
            DEPARTMENT,
            "Xác minh địa chỉ người đại diện",
        ),
    ] {
        grant(&catalog, &service, consumer, GrantStatus::Active, reason).await?;
    }
    let federation = national::start(dir, &mut ca, &catalog, &registry_addrs).await?;
    let ministry = ministry::start(&catalog, &national::rest_secrets(dir)).await?;
    // Wait until both nodes' caches know everything, and the commune's
    // node can call the national register through both hubs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(
        ports.department_apps(),
        &format!("{DISTRICT}/ho-gia-dinh"),
        "get",
        &[("key", "TD-00100")],
        "",
    )
    .await
    .is_err()
        || call(
            ports.district_apps(),
            &format!("{DEPARTMENT}/doanh-nghiep"),
            "get",
            &[("key", BUSINESS_KEY)],
            "",
        )
        .await
        .is_err()
        || call(
            ports.district_apps(),
            &national::Federation::population_service(),
            "get",
            &[("key", national::CITIZEN_KEY)],
            "",
        )
        .await
        .is_err()
        || call(
            ports.district_apps(),
            &ministry::MinistryRest::service(),
            "get",
            &[("key", ministry::TAX_CODE)],
            "",
        )
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "the nodes did not learn the catalog, or the national register (through the hubs) or the ministry's REST system (through the hub) was not callable, in 20 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Province {
        dir: dir.to_owned(),
        ports,
        registries,
        _backend: backend,
        nodes,
        catalog,
        health_tls,
        department_admin,
        district_admin,
        federation,
        ministry,
    })
}

async fn grant(
    catalog: &Catalog,
    service: &str,
    consumer: &str,
    status: GrantStatus,
    reason: &str,
) -> Result<()> {
    let key = GrantKey {
        service: service.parse()?,
        consumer: AgencyCode::new(consumer)?,
    };
    let written = match status {
        GrantStatus::Suspended => {
            catalog
                .suspend(&key, SuspensionKind::Breach, reason, "liên hệ Sở TT&TT")
                .await
        }
        GrantStatus::Terminated => {
            catalog
                .terminate(&key, TerminationKind::NoLongerNeeded, reason)
                .await
        }
        _ => catalog.grant(&key, Validity::Open, reason).await,
    };
    written.map_err(|s| anyhow::anyhow!("grant: {}", s.message()))?;
    Ok(())
}

/// Calls `service` as an application of the agency whose node listens on `port`.
async fn call(
    port: u16,
    service: &str,
    op: &str,
    params: &[(&str, &str)],
    payload: &str,
) -> Result<serde_json::Value, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addr(port)))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = DataExchangeClient::new(channel)
        .call(Envelope {
            service_id: service.into(),
            operation: op.into(),
            parameters: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            payload: payload.as_bytes().to_vec(),
            request_id: String::new(),
        })
        .await?;
    serde_json::from_slice(&r.into_inner().payload)
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

fn print_guide(p: &Province) {
    let ports = p.ports;
    let guide = Guide::new(&p.dir, ports);
    let at = |port: u16| addr(port).to_string();
    println!();
    println!(
        "A province is running on 127.0.0.1 (tỉnh Phú Thọ, example names; trust domain {TRUST_DOMAIN}):"
    );
    println!("  provincial CA           {}", p.dir.join("ca").display());
    println!(
        "  registry servers 1-3    clients on {}, peers on {}, {}, {} (Raft, mTLS)",
        ports.registry().replace(',', ", "),
        at(ports.registry_peer(1)),
        at(ports.registry_peer(2)),
        at(ports.registry_peer(3)),
    );
    println!(
        "  Sở Tài chính            agency {DEPARTMENT}: node on {} (agencies, mTLS), {} (its apps)",
        at(ports.department_provider()),
        at(ports.department_apps())
    );
    println!(
        "                          serves doanh-nghiep (60 business registrations) and giay-phep (HTTP system on {})",
        at(ports.backend())
    );
    println!(
        "  UBND xã Tam Dương       agency {DISTRICT}: node on {} (agencies, mTLS), {} (its apps)",
        at(ports.district_provider()),
        at(ports.district_apps())
    );
    println!("                          serves ho-gia-dinh (80 household records)");
    println!(
        "  grants                  Tam Dương may call doanh-nghiep and giay-phep; the department may call ho-gia-dinh"
    );
    let f = &p.federation;
    println!(
        "  provincial hub          agency {PROVINCE}: outward listener {} (federation peers, mTLS)",
        f.province_outward
    );
    println!(
        "  national instance       trust domain {}, its own CA in {}, registry on {}, hub on {}",
        national::NATIONAL_DOMAIN,
        p.dir.join("national").join("ca").display(),
        f.national_registry_addr,
        f.national_outward
    );
    println!(
        "                          Bộ Công an ({}) serves {}, exported to the province, imported here and granted to Tam Dương",
        national::MINISTRY,
        national::Federation::population_service()
    );
    println!(
        "  ministry REST system    Bộ Tài chính's tax register on https://{} (HTTP/JSON, API key), carried by the",
        p.ministry.addr()
    );
    println!(
        "                          province's hub as {} and granted to Tam Dương",
        ministry::MinistryRest::service()
    );
    println!(
        "  metrics                 http://{}/metrics and http://{}/metrics",
        at(ports.department_metrics()),
        at(ports.district_metrics())
    );
    println!();
    println!("Try, from another terminal:");
    println!("  # Tam Dương's application asks the department for a business registration:");
    println!("  {}", guide.call_business());
    println!("  # …queries the businesses of one trade, two fields each (a stream of records):");
    println!("  {}", guide.query_business());
    println!("  # …and calls the department's HTTP licence system through the same node:");
    println!("  {}", guide.call_licence());
    println!("  # The department's application reads a household record from Tam Dương:");
    println!("  {}", guide.call_household());
    println!(
        "  # Tam Dương's application reads a citizen from the national population register, through its"
    );
    println!(
        "  # node, the province's hub and the national hub (a signed on-behalf-of record on the way):"
    );
    println!("  {}", guide.call_national());
    println!(
        "  # …and a taxpayer from the Ministry of Finance's REST system, which the province's hub calls:"
    );
    println!("  {}", guide.call_ministry());
    println!(
        "  # The provincial admin grants Sở Y tế the business registrations directly, and lists the grants:"
    );
    println!("  {}", guide.grant());
    println!("  {}", guide.access_list());
    println!(
        "  # Sở Y tế has no node here: it calls the department's node with its own certificate (grpcurl):"
    );
    println!("  {}", guide.health_call());
    println!(
        "  # The provincial admin terminates Tam Dương's grant: its call above is refused within a second."
    );
    println!("  {}", guide.terminate());
    println!(
        "  # Access requests (D47 Art. 35): Tam Dương's admin files one, the department's admin sees it and"
    );
    println!("  # approves it, and the call works again:");
    println!("  {}", guide.file_request("mot-cua-1"));
    println!("  {}", guide.inbox());
    println!("  {}", guide.approve(&format!("{DISTRICT}/mot-cua-1")));
    println!("  # The provincial catalog and the registry cluster:");
    println!("  {}", guide.service_list());
    println!("  {}", guide.registry_status());
    println!("  # The department's sharing log, verified (hash chain and signatures):");
    println!("  {}", guide.audit_verify(DEPARTMENT));
    println!("  # The department's node's metrics:");
    println!("  {}", guide.metrics());
    println!();
    println!(
        "Press Ctrl-C to stop the province. Running `lgsp demo` again replaces {}.",
        p.dir.display()
    );
}

/// Calls `service` from Tam Dương's apps until `done` accepts the outcome,
/// for up to 3 s; returns the last outcome.
async fn until_outcome(
    ports: Ports,
    service: &str,
    done: impl Fn(&Result<serde_json::Value, tonic::Status>) -> bool,
) -> Result<serde_json::Value, tonic::Status> {
    let started = Instant::now();
    loop {
        let outcome = call(
            ports.district_apps(),
            service,
            "get",
            &[("key", BUSINESS_KEY)],
            "",
        )
        .await;
        if done(&outcome) || started.elapsed() > Duration::from_secs(3) {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The walkthrough's report: each step with the commands that do the same
/// by hand, and whether it did what it should.
#[derive(Debug, Default)]
struct Steps {
    failed: usize,
}

impl Steps {
    fn step(&mut self, n: usize, what: &str, commands: &[String], ok: bool, detail: String) {
        println!("{} step {n}: {what}", if ok { "PASS" } else { "FAIL" });
        for c in commands {
            println!("         $ {c}");
        }
        println!("         {detail}");
        if !ok {
            self.failed += 1;
        }
    }
}

/// Runs the walkthrough; returns how many steps failed.
async fn scenario(p: &Province) -> usize {
    let ports = p.ports;
    let guide = Guide::new(&p.dir, ports);
    let mut steps = Steps::default();
    let biz = Guide::business_service();
    let described = |r: Result<serde_json::Value, tonic::Status>,
                     check: &dyn Fn(&serde_json::Value) -> bool| match r {
        Ok(v) => (check(&v), v.to_string()),
        Err(s) => (false, s.to_string()),
    };
    let (ok, detail) = described(
        call(
            ports.district_apps(),
            &biz,
            "get",
            &[("key", BUSINESS_KEY)],
            "",
        )
        .await,
        &|v| v["ten_doanh_nghiep"].is_string(),
    );
    steps.step(
        1,
        "Tam Dương's app reads a business registration from the department",
        &[guide.call_business().to_string()],
        ok,
        detail,
    );
    let (ok, detail) = described(
        call(
            ports.district_apps(),
            &format!("{DEPARTMENT}/giay-phep"),
            "tra-cuu",
            &[],
            &format!(r#"{{"ma_so_doanh_nghiep":"{BUSINESS_KEY}"}}"#),
        )
        .await,
        &|v| v["giay_phep"] == "Còn hiệu lực",
    );
    steps.step(
        2,
        "…and checks its licence in the department's HTTP system",
        &[guide.call_licence().to_string()],
        ok,
        detail,
    );
    let (ok, detail) = described(
        call(
            ports.department_apps(),
            &format!("{DISTRICT}/ho-gia-dinh"),
            "get",
            &[("key", HOUSEHOLD_KEY)],
            "",
        )
        .await,
        &|v| v["chu_ho"].is_string(),
    );
    steps.step(
        3,
        "the department's app reads a household record from Tam Dương",
        &[guide.call_household().to_string()],
        ok,
        detail,
    );
    let refused = async {
        let creds = Credentials::load(&TlsFiles::in_dir(&p.health_tls))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let channel = lgsp_certs::tls::client_endpoint(
            &addr(ports.department_provider()).to_string(),
            &creds,
            None,
        )
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        DataExchangeClient::new(channel)
            .call(Envelope {
                service_id: biz.clone(),
                operation: "get".into(),
                parameters: HashMap::from([("key".into(), BUSINESS_KEY.into())]),
                ..Default::default()
            })
            .await
    }
    .await;
    let (ok, detail) = match refused {
        Err(s) if s.code() == tonic::Code::PermissionDenied => (true, s.message().to_owned()),
        other => (false, format!("{other:?}")),
    };
    steps.step(
        4,
        "Sở Y tế, without a grant, is refused",
        &[guide.health_call()],
        ok,
        detail,
    );
    let started = Instant::now();
    let revoked = grant(
        &p.catalog,
        &biz,
        DISTRICT,
        GrantStatus::Terminated,
        TERMINATION_REASON,
    )
    .await;
    let mut outcome = Err(tonic::Status::unknown("not tried"));
    while started.elapsed() < Duration::from_secs(3) {
        outcome = call(
            ports.district_apps(),
            &biz,
            "get",
            &[("key", BUSINESS_KEY)],
            "",
        )
        .await;
        if matches!(&outcome, Err(s) if s.code() == tonic::Code::PermissionDenied) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let (ok, detail) = match (&revoked, &outcome) {
        (Ok(()), Err(s))
            if s.code() == tonic::Code::PermissionDenied && took < Duration::from_millis(1500) =>
        {
            (true, format!("after {took:?}: {}", s.message()))
        }
        _ => (false, format!("{revoked:?} {outcome:?} after {took:?}")),
    };
    steps.step(
        5,
        "the provincial admin terminates the grant; Tam Dương is refused within a second",
        &[
            guide.terminate().to_string(),
            guide.call_business().to_string(),
        ],
        ok,
        detail,
    );
    // The procedure of D47 Art. 35: Tam Dương files a request, the
    // department approves it, then suspends it for a breach (Art. 43).
    let name = format!("demo-{}", std::process::id());
    let request = format!("{DISTRICT}/{name}");
    let filed = p
        .district_admin
        .file_request(AccessRequest {
            id: request.clone(),
            service_id: biz.clone(),
            application_id: "mot-cua".into(),
            application_name: "Một cửa điện tử xã Tam Dương".into(),
            purpose: "Kiểm tra hộ kinh doanh trên địa bàn".into(),
            frequency: "hàng ngày".into(),
            ..Default::default()
        })
        .await;
    let approved = match filed {
        Ok(_) => p
            .department_admin
            .decide(
                &request,
                Decision::Approve {
                    items: Vec::new(),
                    until: lgsp_registry::Validity::Open,
                    agreement: None,
                    reason: "Đồng ý cung cấp".into(),
                },
            )
            .await
            .map(drop),
        Err(s) => Err(s),
    };
    let served = until_outcome(ports, &biz, |o| o.is_ok()).await;
    steps.step(
        6,
        "Tam Dương files an access request; the department approves it and the grant works",
        &[
            guide.file_request(&name).to_string(),
            guide.approve(&request).to_string(),
            guide.call_business().to_string(),
        ],
        approved.is_ok() && served.is_ok(),
        format!("request {request}: {approved:?}; then {served:?}"),
    );
    let key = GrantKey {
        service: biz.parse().expect("a service id"),
        consumer: AgencyCode::new(DISTRICT).expect("an agency code"),
    };
    let suspended = p
        .department_admin
        .suspend(
            &key,
            SuspensionKind::Breach,
            SUSPENSION_REASON,
            SUSPENSION_RESTORE,
        )
        .await;
    let refused = until_outcome(ports, &biz, |o| o.is_err()).await;
    steps.step(
        7,
        "the department suspends it for a breach; Tam Dương is told why and how to restore",
        &[
            guide.suspend().to_string(),
            guide.call_business().to_string(),
        ],
        suspended.is_ok()
            && matches!(&refused, Err(s) if s.code() == tonic::Code::FailedPrecondition
                && s.message().contains(&format!("breach: {SUSPENSION_REASON}"))
                && s.message().contains(&format!("to restore: {SUSPENSION_RESTORE}"))),
        format!("{:?}", refused.as_ref().map_err(|s| s.message().to_owned())),
    );
    let _ = p.department_admin.resume(&key, "Đã giải trình").await;
    let _ = until_outcome(ports, &biz, |o| o.is_ok()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the sealer sign the latest entries
    for (n, agency) in [(8, DEPARTMENT), (9, DISTRICT)] {
        let ndir = p.dir.join(format!("node-{agency}"));
        let log = lgsp_node::server::sharing_log_path(&ndir.join("data"));
        let cert = std::fs::read_to_string(ndir.join("tls/cert.pem")).unwrap_or_default();
        let (ok, detail) = match lgsp_sharing_log::verify(&log, &cert) {
            Ok(report) => (report.entries > 0, report.to_string()),
            Err(e) => (false, e.to_string()),
        };
        steps.step(
            n,
            &format!("agency {agency}'s sharing log verifies"),
            &[guide.audit_verify(agency).to_string()],
            ok,
            detail,
        );
    }
    steps.failed
}

/// `lgsp demo`.
pub(crate) async fn run(dir: &Path, base_port: Option<u16>, walkthrough: bool) -> Result<()> {
    let ports = Ports::choose(base_port)?;
    println!(
        "Starting a province in {} on 127.0.0.1, ports {} …",
        dir.display(),
        ports.range()
    );
    let province = start(dir, ports).await?;
    if walkthrough {
        println!("Walking through the province:");
        let failed = scenario(&province).await;
        province.stop().await;
        if failed > 0 {
            bail!("{failed} step(s) of the walkthrough failed");
        }
        println!("Every step did what it should.");
        return Ok(());
    }
    print_guide(&province);
    crate::signal::stop_signal().await?;
    println!("\nStopping the province …");
    province.stop().await;
    println!(
        "Stopped. The data stays in {} until the next `lgsp demo`.",
        dir.display()
    );
    Ok(())
}
