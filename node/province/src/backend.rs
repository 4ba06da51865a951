//! An agency's own HTTP system that a node fronts (an `http` service): an
//! HTTP/1.1 server on loopback answering every request with a handler.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A request as the handler sees it.
#[derive(Debug)]
pub struct HttpCall {
    /// The request's path, e.g. `/giay-phep/tra-cuu`.
    pub path: String,
    /// The consumer agency the node says it serves (`x-lgsp-consumer-agency`).
    pub consumer: String,
    /// The request body, collected whole.
    pub body: Bytes,
}

/// Serves HTTP on `listener`, answering each request with `handler`'s
/// body (status 200), until `stop` turns true (or its sender is dropped).
/// Returns the address and the accepting task; fails only if the
/// listener's local address cannot be read.
pub fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)>
where
    H: Fn(HttpCall) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Bytes> + Send + 'static,
{
    start(listener, handler, stop, None)
}

/// As [`serve`], for as long as the runtime runs (or the returned task is
/// aborted).
pub fn serve_forever<H, F>(
    listener: TcpListener,
    handler: H,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)>
where
    H: Fn(HttpCall) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Bytes> + Send + 'static,
{
    let (never, stop) = watch::channel(false);
    start(listener, handler, stop, Some(never))
}

fn start<H, F>(
    listener: TcpListener,
    handler: H,
    stop: watch::Receiver<bool>,
    never: Option<watch::Sender<bool>>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)>
where
    H: Fn(HttpCall) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Bytes> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // Held by the accepting task: a server with no stop of its own
        // never sees its stop signal change.
        let _never = never;
        let mut accepting = stop.clone();
        loop {
            let stream = tokio::select! {
                a = listener.accept() => match a {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = accepting.changed() => return,
            };
            // Without TCP_NODELAY a reply waits on the peer's delayed ACK.
            let _ = stream.set_nodelay(true);
            let mut stop = stop.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let consumer = req
                                .headers()
                                .get("x-lgsp-consumer-agency")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let reply = handler(HttpCall {
                                path,
                                consumer,
                                body,
                            })
                            .await;
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(reply)))
                        }
                    },
                );
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = stop.changed() => {}
                }
            });
        }
    });
    Ok((addr, task))
}
