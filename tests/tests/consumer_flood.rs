//! A flood of idle connections on a node's consumer listener (anything on
//! the agency's network can open them) cannot exhaust the node: they are
//! capped, closed when silent, and the provider listener, which other
//! agencies depend on, keeps serving throughout.

use lgsp_certs::tls::client_endpoint;
use lgsp_tests::call_who_am_i;
use lgsp_tests::province::{HO_TICH_CSV, two_agencies_custom, wait_until_callable};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_closed_and_the_provider_port_keeps_serving() {
    let (_province, a, b) = two_agencies_custom(1, "", "", HO_TICH_CSV, |_, b| {
        let path = b.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let bounded = text.replacen(
            "[consumer]\n",
            "[consumer]\nmax_connections = 50\npreface_timeout_s = 2\nidle_timeout_s = 3\n",
            1,
        );
        assert_ne!(text, bounded, "node.toml has a [consumer] table");
        std::fs::write(&path, bounded).unwrap();
    })
    .await;
    wait_until_callable(&b).await;

    // 300 connections that never say anything.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&b.consumer).await.unwrap());
    }

    // The provider listener serves another agency's node meanwhile.
    let channel = client_endpoint(&b.provider, &a.creds, None)
        .unwrap()
        .connect()
        .await
        .expect("B's provider listener accepts A's node");
    let mut who = lgsp_proto::identity_service_client::IdentityServiceClient::new(channel);
    call_who_am_i(&mut who)
        .await
        .expect("B's provider listener answers");

    // Every idle connection is closed by the node: the 250 past the cap at
    // once, the others when silent past the preface timeout. (What the node
    // sends first, its HTTP/2 settings, is read and ignored.)
    let deadline = Instant::now() + Duration::from_secs(10);
    for (n, conn) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("idle connection {n} still open after 10 s"),
            }
        }
    }
    drop(idle);

    // And the applications are served again.
    wait_until_callable(&b).await;
}
