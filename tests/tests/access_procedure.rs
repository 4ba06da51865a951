//! The regulation's access procedure, through the `lgsp` command line
//! against real processes (D47 Art. 35, 38, 43-44; Art. 1.2, 13.1): agency
//! A publishes a dataset service with open, default and special items; B
//! files a request; A refuses it without a reason (rejected), then with
//! one; B files again; A approves two items only; B gets those two and is
//! refused the third by name; A suspends B for a breach, B is told why and
//! how to restore; A resumes; maintenance needs 7 working days' notice, and
//! a force-majeure window starts and ends by itself; A terminates for an
//! Art. 44 reason. Each step is checked in the catalog, in the Watch stream
//! and in what B's calls get. Plus: roles acting outside their own, a
//! state-secret service, and an overdue request across a weekend and a
//! holiday, with an injected clock.

use lgsp_certs::Role;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, GrantStatus, QueryRequest, RecordKind, RequestStatus, WatchEvent};
use lgsp_registry::calendar::WorkCalendar;
use lgsp_tests::lgsp;
use lgsp_tests::province::{A, B, NodeProcess, Province, two_agencies};
use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};
use tonic::Code;

fn run(registry: &str, tls: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--registry", registry, "--tls-dir", tls.to_str().unwrap()]);
    lgsp(&all)
}

fn ok(registry: &str, tls: &Path, args: &[&str]) -> String {
    let out = run(registry, tls, args);
    assert!(
        out.status.success(),
        "lgsp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must be refused; returns its one error line.
fn refused(registry: &str, tls: &Path, args: &[&str]) -> String {
    let out = run(registry, tls, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "lgsp {args:?} should be refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn get(key: &str, fields: Option<&str>) -> Envelope {
    let mut parameters = HashMap::from([("key".to_owned(), key.to_owned())]);
    if let Some(f) = fields {
        parameters.insert("fields".into(), f.into());
    }
    Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters,
        ..Default::default()
    }
}

/// Calls through B's node until `check` accepts the outcome, for up to
/// 1.5 s (the bound for a catalog change to be enforced everywhere).
async fn until(
    b: &NodeProcess,
    what: &str,
    check: impl Fn(&Result<serde_json::Value, tonic::Status>) -> bool,
) -> Result<serde_json::Value, tonic::Status> {
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let start = Instant::now();
    loop {
        let outcome = app
            .call(get("001099012345", None))
            .await
            .map(|r| serde_json::from_slice(&r.into_inner().payload).unwrap());
        if check(&outcome) {
            return outcome;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{what}: not enforced within 1.5 s; last outcome {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every watch event so far, then none for 300 ms.
async fn drain(rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_goes_from_filing_to_grant_to_suspension_to_termination() {
    let (mut province, _a, b) = two_agencies().await;
    let registry = province.registry_addrs().join(",");
    let reg = registry.as_str();
    let service = format!("{A}/ho-tich");
    let (a_creds, _) = province.issue(A, Role::Admin, "quan-tri");
    let a_admin = province.tls_dir("a-admin", &a_creds);
    let (b_creds, _) = province.issue(B, Role::Admin, "quan-tri");
    let b_admin = province.tls_dir("b-admin", &b_creds);
    let b_node = b.dir.join("tls");
    let (p_creds, _) = province.issue(lgsp_tests::cluster::PROVINCE, Role::Admin, "so-kh-cn");
    let province_admin = province.tls_dir("province-admin", &p_creds);

    // The harness granted B everything; the provincial admin ends that, so
    // the procedure starts from nothing.
    ok(
        reg,
        &province_admin,
        &[
            "access",
            "terminate",
            "--service",
            &service,
            "--consumer",
            B,
            "--kind",
            "no-longer-needed",
            "--reason",
            "Chuyển sang quy trình yêu cầu",
        ],
    );
    let start_rev = province.admin.status().await.unwrap().revision + 1;
    let mut watch = province.admin.watch(start_rev);

    // A's admin publishes the service with its data items: open, default, special.
    ok(
        reg,
        &a_admin,
        &[
            "service",
            "publish",
            "--id",
            &service,
            "--kind",
            "dataset",
            "--node",
            "node-a",
            "--description",
            "Hộ tịch",
            "--item",
            "so_dinh_danh:open",
            "--item",
            "ho_ten:shared:Họ và tên",
            "--item",
            "ngay_sinh:shared",
            "--item",
            "noi_sinh:special:Nơi sinh",
            "--validity",
            "on-use",
            "--update-cycle",
            "hàng ngày",
            "--doc-url",
            "https://stp.example.gov.vn/api",
        ],
    );
    let shown = ok(reg, &b_admin, &["service", "show", &service]);
    assert!(
        shown.contains("noi_sinh") && shown.contains("special") && shown.contains("hàng ngày"),
        "{shown}"
    );
    // State secrets never enter the platform (Art. 1.2).
    let secret = refused(
        reg,
        &a_admin,
        &[
            "service",
            "publish",
            "--id",
            &format!("{A}/mat"),
            "--kind",
            "dataset",
            "--node",
            "node-a",
            "--security",
            "state-secret",
        ],
    );
    assert!(secret.contains("Art. 1.2"), "{secret}");

    // Roles: B's node may not file; A may not file for B.
    let file = |name: &'static str| {
        [
            "requests",
            "file",
            "--service",
            service.as_str(),
            "--items",
            "so_dinh_danh,ho_ten,ngay_sinh",
            "--app-id",
            "mot-cua",
            "--app-name",
            "Một cửa điện tử",
            "--purpose",
            "Giải quyết thủ tục hành chính",
            "--frequency",
            "hàng ngày",
            "--name",
            name,
        ]
    };
    let by_node = refused(reg, &b_node, &file("r0"));
    assert!(by_node.contains("needs an admin"), "{by_node}");
    let mut for_b = file("r0").to_vec();
    for_b.extend(["--consumer", B]);
    let by_a = refused(reg, &a_admin, &for_b);
    assert!(by_a.contains("consumer agency 000.00.13.H62"), "{by_a}");

    // B files; A refuses without a reason (rejected), then with one.
    let filed = ok(reg, &b_admin, &file("r1"));
    assert!(filed.contains(&format!("Filed request {B}/r1")), "{filed}");
    let r1 = format!("{B}/r1");
    let no_reason = refused(reg, &a_admin, &["requests", "refuse", &r1]);
    assert!(no_reason.contains("reason"), "{no_reason}");
    ok(
        reg,
        &a_admin,
        &[
            "requests",
            "refuse",
            &r1,
            "--reason",
            "Mục đích chưa rõ ràng, đề nghị bổ sung",
        ],
    );
    let shown = ok(reg, &b_admin, &["requests", "show", &r1]);
    assert!(
        shown.contains("refused") && shown.contains("Mục đích chưa rõ ràng, đề nghị bổ sung"),
        "{shown}"
    );

    // B files again; B may not decide it; A approves two of the three items.
    ok(reg, &b_admin, &file("r2"));
    let r2 = format!("{B}/r2");
    let by_consumer = refused(reg, &b_admin, &["requests", "approve", &r2]);
    assert!(
        by_consumer.contains("provider agency 000.00.12.H62"),
        "{by_consumer}"
    );
    ok(
        reg,
        &a_admin,
        &[
            "requests",
            "approve",
            &r2,
            "--items",
            "so_dinh_danh,ho_ten",
            "--until",
            "2099-12-31",
        ],
    );
    // In the catalog: the grant answers r2 and covers two items.
    let grant = match province
        .admin
        .get(RecordKind::Grant, &format!("{service}|{B}"), false)
        .await
        .unwrap()
        .record
        .and_then(|r| r.value)
    {
        Some(Value::Grant(g)) => g,
        other => panic!("no grant: {other:?}"),
    };
    assert_eq!(grant.request_id, r2);
    assert_eq!(grant.items, ["so_dinh_danh", "ho_ten"]);
    assert_eq!(grant.status, GrantStatus::Active as i32);
    // In the Watch stream: the refusal, the approval and the grant, in order.
    let events = drain(&mut watch).await;
    let requests: Vec<(String, i32)> = events
        .iter()
        .filter_map(|e| match e.record.as_ref()?.value.as_ref()? {
            Value::Request(r) => Some((r.id.clone(), r.status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        requests,
        [
            (r1.clone(), RequestStatus::Filed as i32),
            (r1.clone(), RequestStatus::Refused as i32),
            (r2.clone(), RequestStatus::Filed as i32),
            (r2.clone(), RequestStatus::Approved as i32),
        ]
    );
    let last = events.last().unwrap().record.as_ref().unwrap();
    assert!(
        matches!(&last.value, Some(Value::Grant(g)) if g.request_id == r2),
        "the grant follows its approval: {last:?}"
    );

    // What B's calls get: the two items granted, never the third.
    let record = until(&b, "the approval", |o| o.is_ok()).await.unwrap();
    let keys: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["so_dinh_danh", "ho_ten"], "{record}");
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let err = app
        .call(get("001099012345", Some("ho_ten,ngay_sinh")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("not granted item(s) ngay_sinh"),
        "{err:?}"
    );
    let mut pages = app
        .query(QueryRequest {
            service_id: service.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let page = pages.message().await.unwrap().unwrap();
    assert!(!page.records.is_empty(), "the query returned no record");
    for r in &page.records {
        let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["so_dinh_danh", "ho_ten"], "{v}");
    }
    // Asking for, or filtering on, an item not granted: refused by name.
    for (fields, filters) in [
        (vec!["ngay_sinh".to_owned()], vec![]),
        (
            vec![],
            vec![lgsp_proto::FieldFilter {
                field: "ngay_sinh".into(),
                equals: "1999-03-12".into(),
            }],
        ),
    ] {
        let err = app
            .query(QueryRequest {
                service_id: service.clone(),
                fields,
                filters,
                ..Default::default()
            })
            .await
            .map(drop)
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains("not granted item(s) ngay_sinh"),
            "{err:?}"
        );
    }

    // A suspends B for a breach: B is told why and how to restore.
    let by_node = refused(
        reg,
        &b_node,
        &[
            "access",
            "suspend",
            "--service",
            &service,
            "--consumer",
            B,
            "--kind",
            "breach",
            "--reason",
            "x",
            "--restore",
            "y",
        ],
    );
    assert!(
        by_node.contains("admin certificate of agency 000.00.12.H62"),
        "{by_node}"
    );
    ok(
        reg,
        &a_admin,
        &[
            "access",
            "suspend",
            "--service",
            &service,
            "--consumer",
            B,
            "--kind",
            "breach",
            "--reason",
            "Truy vấn vượt mục đích đăng ký",
            "--restore",
            "Gửi báo cáo giải trình",
        ],
    );
    let err = until(&b, "the suspension", |o| o.is_err())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("breach: Truy vấn vượt mục đích đăng ký; to restore: Gửi báo cáo giải trình"),
        "{err:?}"
    );
    ok(
        reg,
        &a_admin,
        &["access", "resume", "--service", &service, "--consumer", B],
    );
    until(&b, "the resumption", |o| o.is_ok()).await.unwrap();

    // Maintenance: 3 days' notice is refused; 7 working days' is taken.
    let cal = WorkCalendar::default();
    let now = lgsp_registry_now();
    let soon = cal.show(now + 3 * 86_400);
    let early = refused(
        reg,
        &a_admin,
        &[
            "service",
            "maintenance",
            "--id",
            &service,
            "--start",
            &soon[..16],
            "--end",
            &cal.show(now + 3 * 86_400 + 7200)[..16],
            "--reason",
            "Nâng cấp",
        ],
    );
    assert!(early.contains("needs 7"), "{early}");
    let start = cal.add_working_days(now, 8);
    ok(
        reg,
        &a_admin,
        &[
            "service",
            "maintenance",
            "--id",
            &service,
            "--start",
            &cal.show(start)[..16],
            "--end",
            &cal.show(start + 7200)[..16],
            "--reason",
            "Nâng cấp máy chủ định kỳ",
        ],
    );
    // Force majeure starts at once and ends by itself at its restore time.
    let end = now + 4;
    let end_text = local_seconds(end);
    ok(
        reg,
        &a_admin,
        &[
            "service",
            "maintenance",
            "--id",
            &service,
            "--force-majeure",
            "--end",
            &end_text,
            "--reason",
            "Mất điện tại trung tâm dữ liệu",
        ],
    );
    let err = until(&b, "the force-majeure window", |o| o.is_err())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("Mất điện tại trung tâm dữ liệu"),
        "{err:?}"
    );
    // The provider answered: its words reach the application as they are,
    // not as a node that could not be reached.
    assert!(
        err.message().starts_with(&format!("service {service} ")),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(end - lgsp_registry_now()).unwrap_or(0) + 1,
    ))
    .await;
    until(&b, "the end of the window", |o| o.is_ok())
        .await
        .unwrap();
    let inbox = ok(reg, &b_admin, &["inbox"]);
    assert!(inbox.contains("Nâng cấp máy chủ định kỳ"), "{inbox}");

    // A terminates for an Art. 44 reason.
    ok(
        reg,
        &a_admin,
        &[
            "access",
            "terminate",
            "--service",
            &service,
            "--consumer",
            B,
            "--kind",
            "purpose-mismatch",
            "--reason",
            "Mục đích sử dụng đã thay đổi",
        ],
    );
    let err = until(&b, "the termination", |o| o.is_err())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("the purpose no longer matches"),
        "{err:?}"
    );
    let list = ok(reg, &b_admin, &["access", "list", "--consumer", B]);
    assert!(list.contains("terminated"), "{list}");
    let shown = ok(
        reg,
        &a_admin,
        &["access", "show", "--service", &service, "--consumer", B],
    );
    for step in ["approved request", "suspended", "resumed", "terminated"] {
        assert!(
            shown.contains(step),
            "{step} missing from the history: {shown}"
        );
    }
}

/// The time now, Unix seconds.
fn lgsp_registry_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `unix` as "YYYY-MM-DD HH:MM:SS" in Vietnam (UTC+7 all year).
fn local_seconds(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix + 7 * 3600).unwrap();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_request_is_overdue_after_five_working_days_and_a_holiday() {
    let mut province = Province::start().await;
    province
        .register_agency(A, "Sở Tư pháp tỉnh Vĩnh Phúc")
        .await;
    province.register_agency(B, "UBND huyện Tam Dương").await;
    let registry = province.registry_addrs().join(",");
    let reg = registry.as_str();
    let (p_creds, _) = province.issue(lgsp_tests::cluster::PROVINCE, Role::Admin, "so-kh-cn");
    let province_admin = province.tls_dir("province-admin", &p_creds);
    let (a_creds, _) = province.issue(A, Role::Admin, "quan-tri");
    let a_admin = province.tls_dir("a-admin", &a_creds);
    let (b_creds, _) = province.issue(B, Role::Admin, "quan-tri");
    let b_admin = province.tls_dir("b-admin", &b_creds);
    ok(
        reg,
        &a_admin,
        &[
            "service",
            "publish",
            "--id",
            &format!("{A}/ho-tich"),
            "--kind",
            "http",
            // Synchronised between databases: no node of A runs here.
            "--sharing",
            "database-sync",
        ],
    );
    // Tomorrow and the day after are holidays (whatever day this runs).
    let cal = WorkCalendar::default();
    let now = lgsp_registry_now();
    let holidays: Vec<String> = [1, 2]
        .iter()
        .map(|d| cal.date_of(now + d * 86_400).to_string())
        .collect();
    let refused_cal = refused(reg, &a_admin, &["calendar", "add-holiday", &holidays[0]]);
    assert!(
        refused_cal.contains("the provincial admin"),
        "{refused_cal}"
    );
    let mut add = vec!["calendar", "add-holiday"];
    add.extend(holidays.iter().map(String::as_str));
    ok(reg, &province_admin, &add);

    ok(
        reg,
        &b_admin,
        &[
            "requests",
            "file",
            "--service",
            &format!("{A}/ho-tich"),
            "--app-id",
            "qlvb",
            "--app-name",
            "Quản lý văn bản",
            "--purpose",
            "Tra cứu",
            "--frequency",
            "hàng tuần",
            "--name",
            "r9",
        ],
    );
    let with_holidays = WorkCalendar::from_record(Some(&lgsp_proto::Calendar {
        time_zone: String::new(),
        holidays: holidays.clone(),
    }))
    .unwrap();
    let due = with_holidays.add_working_days(now, 5);
    // Independently of the calendar code: 5 working days and 2 holidays
    // are at least 7 days, and what the registry stored is that.
    let stored = match province
        .admin
        .get(RecordKind::Request, &format!("{B}/r9"), false)
        .await
        .unwrap()
        .record
        .and_then(|r| r.value)
    {
        Some(lgsp_proto::catalog_record::Value::Request(r)) => r.due_unix,
        other => panic!("no request: {other:?}"),
    };
    assert_eq!(stored, due);
    assert!(due >= now + 7 * 86_400, "due {due}, filed about {now}");
    let before = with_holidays.show(due - 60);
    let after = with_holidays.show(due + 60);
    for (who, tls) in [
        ("the provider", &a_admin),
        ("the provincial admin", &province_admin),
    ] {
        let early = ok(
            reg,
            tls,
            &[
                "requests",
                "list",
                "--overdue",
                "--all",
                "--at",
                &before[..16],
            ],
        );
        assert!(
            !early.contains("r9"),
            "{who}: overdue before its due time: {early}"
        );
        let late = ok(
            reg,
            tls,
            &[
                "requests",
                "list",
                "--overdue",
                "--all",
                "--at",
                &after[..16],
            ],
        );
        assert!(
            late.contains("r9") && late.contains("OVERDUE"),
            "{who}: {late}"
        );
    }
    // The requester's name came from the catalog, diacritics intact.
    let shown = ok(reg, &a_admin, &["requests", "show", &format!("{B}/r9")]);
    assert!(shown.contains("UBND huyện Tam Dương"), "{shown}");
    let inbox = ok(reg, &a_admin, &["inbox"]);
    assert!(inbox.contains(&format!("{B}/r9")), "{inbox}");
}
