//! Registry servers losing power together: an acknowledged write is on
//! stable storage (synced with fsync/fdatasync), not only handed to the
//! kernel. Each server runs under the power-cut layer
//! (`tests/power_cut/power_cut.c`), which keeps only what the server
//! synced; after SIGKILL every server restarts from that copy.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Agency, CatalogRecord, Command, RecordKind, command::Op};
use lgsp_tests::power_cut::PowerCut;
use lgsp_tests::process::ProcessCluster;
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn code(writer: usize, n: usize) -> String {
    format!("000.{writer:02}.{n:04}.H62")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_power_cut_of_every_server() {
    let layer = PowerCut::build();
    let mut cluster = ProcessCluster::start_with_env(3, |_, dir| layer.env(&dir.join("data")));
    cluster.leader().await;

    // Writers spread over every server, until the power goes.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = cluster.client_of(w as u64 % 3 + 1);
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let command = Command {
                        op: Some(Op::Put(CatalogRecord {
                            value: Some(Value::Agency(Agency {
                                code: code(w, n),
                                name: format!("Ủy ban nhân dân xã {w}-{n}"),
                                focal_point: None,
                                ..Default::default()
                            })),
                            ..Default::default()
                        })),
                        expected_mod_revision: 0,
                        must_not_exist: true,
                    };
                    if client.apply(command).await.is_ok() {
                        acknowledged.lock().unwrap().push(code(w, n));
                    }
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The power goes on every server at once, writes in flight.
    for server in &mut cluster.servers {
        server.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!("{} writes acknowledged before the cut", acknowledged.len());
    assert!(
        acknowledged.len() >= 20,
        "only {} writes were acknowledged before the cut",
        acknowledged.len()
    );

    // The power comes back: each server starts from what it synced.
    for server in &mut cluster.servers {
        PowerCut::cut(&server.dir.join("data"));
        server.set_env(Vec::new());
        server.restart();
    }
    cluster.leader().await;
    let client = cluster.client();
    let mut lost = Vec::new();
    for code in &acknowledged {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get(RecordKind::Agency, code, false).await {
                Ok(r) if r.record.is_some() => break,
                Ok(_) => {
                    lost.push(code.clone());
                    break;
                }
                Err(e) if e.code() == tonic::Code::NotFound => {
                    lost.push(code.clone());
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "reading {code}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost in the power cut: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

#[test]
fn the_power_cut_layer_keeps_what_was_synced_and_drops_the_rest() {
    let layer = PowerCut::build();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let status = Process::new("sh")
        .arg("-c")
        .arg(
            "echo lost > unsynced && \
             printf kept | dd of=synced conv=fsync status=none && \
             mkdir sub && printf kept | dd of=sub/synced conv=fsync status=none && \
             echo after >> synced",
        )
        .current_dir(&dir)
        .envs(layer.env(&dir))
        .status()
        .unwrap();
    assert!(status.success());
    PowerCut::cut(&dir);
    assert!(
        !dir.join("unsynced").exists(),
        "a file never synced survived"
    );
    assert_eq!(std::fs::read_to_string(dir.join("synced")).unwrap(), "kept");
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/synced")).unwrap(),
        "kept"
    );
}
