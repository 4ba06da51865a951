//! A registry server bounds the watches one certificate holds open, over
//! real mTLS: one more is refused with the reason, and admitted again once
//! the client closes one.

use lgsp_proto::WatchRequest;
use lgsp_tests::cluster::Cluster;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_watch_limit_is_refused_with_the_reason_and_served_once_one_closes() {
    let cluster = Cluster::start_with(1, |c| c.max_watches_per_client = 2).await;
    cluster.wait_for_leader().await;
    let client = cluster.admin_client();
    let watch = || {
        let mut server = client.server(0);
        async move { server.watch(WatchRequest { from_revision: 1 }).await }
    };
    let first = watch().await.expect("first watch").into_inner();
    let _second = watch().await.expect("second watch").into_inner();
    let refused = watch().await.expect_err("a third watch of one certificate");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("already holds 2 watches")
            && refused.message().contains("max_watches_per_client"),
        "the refusal says why and what to do: {}",
        refused.message()
    );
    // Closing a watch frees its slot once the server sees the stream end.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match watch().await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    Instant::now() < deadline,
                    "a closed watch still counted after 5 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
    }
    cluster.shutdown().await;
}
