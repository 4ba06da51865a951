//! The demo's ministry REST system beside the province: a small HTTPS
//! server speaking only HTTP/JSON (a tax register of the Ministry of
//! Finance, with an API key), published behind the province's hub. The
//! province's hub carries `thue` (a service of the hub's agency, routed to
//! the system by a `RestRoute` record) to it, so that the commune's
//! application calls it through its own node, as any province service.

use super::{DISTRICT, PROVINCE};
use crate::json_server::{self, JsonServer, json};
use anyhow::{Result, anyhow};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{RestAuth, RestOperation, RestRoute, RestSystem, ServiceKind};
use lgsp_registry::{Catalog, GrantKey, Publication, ServiceId, Validity};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The REST system's name in the catalog.
pub(crate) const SYSTEM: &str = "bo-tai-chinh";
/// The province service the hub carries to it.
pub(crate) const TAX_SERVICE: &str = "thue";
/// A taxpayer in the system's sample register.
pub(crate) const TAX_CODE: &str = "2500123456";
/// The header the system reads its API key from.
const KEY_HEADER: &str = "x-api-key";

/// The ministry's system, running (stopped when dropped).
pub(crate) struct MinistryRest {
    server: JsonServer,
}

impl MinistryRest {
    /// The province service carried to it.
    pub(crate) fn service() -> String {
        format!("{PROVINCE}/{TAX_SERVICE}")
    }

    /// Where it listens (HTTPS).
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }
}

/// `GET /nguoi-nop-thue/{ma_so_thue}` with the right API key: the taxpayer.
fn answer(req: &Request<hyper::body::Incoming>, api_key: &str) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if key != api_key {
        return json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"message": "Sai khóa API"}),
        );
    }
    let segments: Vec<&str> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    match (req.method().as_str(), segments.as_slice()) {
        ("GET", ["nguoi-nop-thue", code]) if *code == TAX_CODE => json(
            StatusCode::OK,
            &serde_json::json!({
                "ma_so_thue": TAX_CODE,
                "ten": "Hộ kinh doanh Nguyễn Văn Đông",
                "dia_chi": "Xã Tam Dương, tỉnh Phú Thọ",
                "tinh_trang": "Đang hoạt động",
            }),
        ),
        ("GET", ["nguoi-nop-thue", _]) => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"message": "Không tìm thấy mã số thuế"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"message": "Không có đường dẫn này"}),
        ),
    }
}

/// Starts the ministry's system and publishes it behind the province's hub
/// (already running, registered as node `hub` of the province's agency,
/// reading REST secrets from `secrets`): the system record, the `thue`
/// service served by the hub, its route, and a grant to the commune.
pub(crate) async fn start(catalog: &Catalog, secrets: &Path) -> Result<MinistryRest> {
    lgsp_province::wait::node_registered(
        catalog.client(),
        PROVINCE,
        "hub",
        Duration::from_secs(20),
    )
    .await?;
    // The key is the system's secret: only in the hub's secrets directory.
    let api_key = json_server::random_key()?;
    json_server::write_api_key(secrets, SYSTEM, &api_key)?;
    let handler: json_server::Handler = Arc::new(move |req| answer(req, &api_key));
    let server = json_server::start("CA Bộ Tài chính (demo)", handler).await?;
    let failed = |what: &str, s: tonic::Status| anyhow!("{what}: {}", s.message());
    catalog
        .client()
        .put(
            Value::RestSystem(RestSystem {
                name: SYSTEM.into(),
                base_url: format!("https://{}", server.addr),
                ca_pem: server.ca_pem.clone(),
                auth: RestAuth::ApiKey as i32,
                api_key_header: "X-API-Key".into(),
                timeout_ms: 5_000,
                ..Default::default()
            }),
            0,
        )
        .await
        .map_err(|s| failed("adding the ministry's REST system", s))?;
    let id: ServiceId = MinistryRest::service().parse()?;
    catalog
        .publish(Publication::new(
            id.clone(),
            ServiceKind::Http,
            "hub",
            "Tra cứu người nộp thuế (hệ thống REST của Bộ Tài chính, qua cổng kết nối tỉnh)",
        ))
        .await
        .map_err(|s| failed("publishing thue", s))?;
    catalog
        .client()
        .put(
            Value::RestRoute(RestRoute {
                service_id: id.to_string(),
                system: SYSTEM.into(),
                operations: vec![RestOperation {
                    name: "get".into(),
                    method: "GET".into(),
                    path: "/nguoi-nop-thue/{key}".into(),
                    query: Vec::new(),
                }],
                ..Default::default()
            }),
            0,
        )
        .await
        .map_err(|s| failed("routing thue to the ministry's system", s))?;
    catalog
        .grant(
            &GrantKey {
                service: id,
                consumer: lgsp_certs::AgencyCode::new(DISTRICT)?,
            },
            Validity::Open,
            "Xác minh mã số thuế hộ kinh doanh",
        )
        .await
        .map_err(|s| failed("granting thue", s))?;
    Ok(MinistryRest { server })
}
