//! An HTTPS/1.1 server for tests that stands for a system outside lgsp (a
//! ministry's REST API, an X-Road security server): its own CA, a server
//! certificate for 127.0.0.1, client certificates of a given CA asked for
//! but optional (each path decides), and answers from a function the test
//! gives.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// The server's CA and TLS configuration; [`serve`](Self::serve) runs it.
#[derive(Debug)]
pub struct HttpsServer {
    /// The server's CA certificate (PEM), for the client's `--ca`.
    pub ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl HttpsServer {
    /// A CA named `ca_name` and a server certificate for 127.0.0.1 and
    /// localhost; client certificates of `client_ca_pem` are asked for but
    /// optional.
    pub fn new(ca_name: &str, client_ca_pem: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), &ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for der in lgsp_certs::inspect::pem_blocks(client_ca_pem).unwrap() {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.1))
                .unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            config: Arc::new(config),
        }
    }

    /// Serves on `addr` until the returned sender is dropped or fired; each
    /// request is answered by `answer(request, whether the client presented
    /// a certificate)`.
    pub async fn serve<F, Fut>(
        &self,
        addr: SocketAddr,
        answer: F,
    ) -> tokio::sync::oneshot::Sender<()>
    where
        F: Fn(Request<hyper::body::Incoming>, bool) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = &mut stopped => return,
                };
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req, client_cert).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        stop
    }
}
