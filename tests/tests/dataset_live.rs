//! Looking at live data: `lgsp dataset show|query|list` while the node that
//! serves the dataset runs (sled lets one process open it, so they go
//! through the node's admin socket), and without it once it stopped.

use lgsp_tests::lgsp;
use lgsp_tests::province::{A, HO_TICH_CSV, Province};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn dataset(data_dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["dataset", args[0], "--data-dir", data_dir.to_str().unwrap()];
    all.extend(&args[1..]);
    lgsp(&all)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// show, query and list, each as a person checking the data would run it.
fn look(data_dir: &Path) {
    let shown = ok(dataset(
        data_dir,
        &["show", "--service", "ho-tich", "--key", "001099012345"],
    ));
    assert!(shown.contains("Nguyễn Thị Hương"), "{shown}");
    let found = ok(dataset(
        data_dir,
        &[
            "query",
            "--service",
            "ho-tich",
            "--filter",
            "noi_sinh=Vĩnh Yên",
            "--fields",
            "ho_ten",
        ],
    ));
    assert_eq!(found.lines().count(), 2, "{found}");
    assert!(
        found.contains("Lê Thị Ánh") && !found.contains("noi_sinh"),
        "{found}"
    );
    let limited = dataset(data_dir, &["query", "--service", "ho-tich", "--limit", "1"]);
    assert_eq!(ok(limited.clone()).lines().count(), 1);
    assert!(String::from_utf8_lossy(&limited.stderr).contains("stopped at --limit 1"));
    let listed = ok(dataset(data_dir, &["list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ho-tich") && l.contains(" yes ") && l.contains("so_dinh_danh")),
        "{listed}"
    );
    let missing = dataset(
        data_dir,
        &["show", "--service", "ho-tich", "--key", "000000000000"],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no record with so_dinh_danh"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_show_query_and_list_work_while_the_node_runs_and_after_it_stops() {
    let mut province = Province::start().await;
    province.register_agency(A, "Sở Tư pháp").await;
    let mut node = province.prepare_node(
        A,
        "node-a",
        "[[services]]\nname = \"ho-tich\"\nkind = \"dataset\"\n",
    );
    let csv = node.dir.join("ho-tich.csv");
    std::fs::write(&csv, HO_TICH_CSV).unwrap();
    let data_dir = node.data_dir();
    ok(dataset(
        &data_dir,
        &[
            "import",
            "--service",
            "ho-tich",
            "--file",
            csv.to_str().unwrap(),
            "--key",
            "so_dinh_danh",
        ],
    ));
    node.start();
    province.wait_for_node(A, "node-a", &node).await;
    let socket = data_dir.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "no admin socket:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The socket's permission is the guard: the node's user only.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.sock mode {mode:o}");

    look(&data_dir);

    // Stopped, the node removes its socket and the commands open the
    // dataset themselves.
    node.stop();
    assert!(!socket.exists());
    look(&data_dir);
}
