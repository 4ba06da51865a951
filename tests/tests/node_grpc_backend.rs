//! A node fronting one of its agency's own gRPC systems: the call reaches
//! the system with the consumer agency taken from the certificate, and the
//! answer comes back through both nodes.

use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::data_exchange_server::{DataExchange, DataExchangeServer};
use lgsp_proto::{CallResponse, Envelope, GrantStatus, QueryPage, QueryRequest, ServiceKind};
use lgsp_tests::province::{A, B, Province};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The agency's tax system, speaking lgsp.v1.DataExchange itself.
struct TaxSystem;

#[tonic::async_trait]
impl DataExchange for TaxSystem {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        let consumer = request
            .metadata()
            .get("x-lgsp-consumer-agency")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let env = request.into_inner();
        let reply = serde_json::json!({
            "operation": env.operation,
            "consumer": consumer,
            "ma_so_thue": env.parameters.get("mst"),
            "tinh_trang": "Đang hoạt động",
        });
        Ok(Response::new(CallResponse {
            payload: reply.to_string().into_bytes(),
            request_id: env.request_id,
            metadata: Default::default(),
        }))
    }

    type QueryStream = tokio_stream::wrappers::ReceiverStream<Result<QueryPage, Status>>;

    async fn query(&self, _: Request<QueryRequest>) -> Result<Response<Self::QueryStream>, Status> {
        Err(Status::unimplemented("the tax system answers Call only"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_backend_is_called_through_both_nodes_with_the_consumer_from_the_certificate() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DataExchangeServer::new(TaxSystem))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut province = Province::start().await;
    province.register_agency(A, "Cục Thuế tỉnh Vĩnh Phúc").await;
    province.register_agency(B, "UBND huyện Tam Dương").await;
    let mut a = province.prepare_node(
        A,
        "node-a",
        &format!("[[services]]\nname = \"thue\"\nkind = \"grpc\"\nurl = \"http://{backend}\"\ntimeout_ms = 3000\n"),
    );
    let mut b = province.prepare_node(B, "node-b", "");
    a.start();
    b.start();
    province.wait_for_node(A, "node-a", &a).await;
    let service = format!("{A}/thue");
    province
        .publish(&service, ServiceKind::Grpc, "node-a", "Tra cứu mã số thuế")
        .await;
    province.grant(&service, B, GrantStatus::Active).await;

    let mut app = DataExchangeClient::new(b.app_channel().await);
    let env = Envelope {
        service_id: service.clone(),
        operation: "tra-cuu".into(),
        parameters: [("mst".to_owned(), "2500150335".to_owned())].into(),
        ..Default::default()
    };
    let mut last = None;
    for _ in 0..100 {
        match app.call(env.clone()).await {
            Ok(r) => {
                let v: serde_json::Value = serde_json::from_slice(&r.into_inner().payload).unwrap();
                assert_eq!(v["consumer"], B);
                assert_eq!(v["operation"], "tra-cuu");
                assert_eq!(v["ma_so_thue"], "2500150335");
                assert_eq!(v["tinh_trang"], "Đang hoạt động");
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gRPC backend was never reached: {last:?}\n{}", a.log());
}
