//! Per-consumer-agency limits on the provider side, as a tower layer: calls
//! in flight and calls per second. It sits inside the authenticator (which
//! puts the caller's [`Peer`] in the request) and in front of the service,
//! and holds a call's slot until its response body ends, so a long query
//! stream counts as in flight for as long as it streams.

use bytes::Bytes;
use lgsp_certs::Peer;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Status;
use tonic::codegen::http;

#[derive(Debug)]
struct Bucket {
    /// The consumer's name, shared with its permits.
    name: Arc<str>,
    tokens: f64,
    at: Instant,
    in_flight: usize,
}

/// Calls in flight and calls per second, per consumer agency.
#[derive(Debug)]
pub struct Limits {
    max_in_flight: usize,
    rate: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

/// Holds one in-flight slot of a consumer until dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    consumer: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self
            .limits
            .buckets
            .lock()
            .expect("limits lock")
            .get_mut(&self.consumer)
        {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

impl Limits {
    pub fn new(max_in_flight: usize, rate_per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight: max_in_flight.max(1),
            rate: f64::from(rate_per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `consumer`, or says which limit it hit.
    pub fn acquire(self: &Arc<Self>, consumer: &str) -> Result<Permit, Status> {
        let mut buckets = self.buckets.lock().expect("limits lock");
        let now = Instant::now();
        if !buckets.contains_key(consumer) {
            let name: Arc<str> = Arc::from(consumer);
            let fresh = Bucket {
                name: name.clone(),
                tokens: self.rate,
                at: now,
                in_flight: 0,
            };
            buckets.insert(name, fresh);
        }
        let b = buckets.get_mut(consumer).expect("inserted above");
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate);
        b.at = now;
        if b.in_flight >= self.max_in_flight {
            return Err(Status::resource_exhausted(format!(
                "agency {consumer} already has {} calls in flight, the most this node allows; retry when some finish",
                self.max_in_flight
            )));
        }
        if b.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "agency {consumer} exceeds {} calls per second on this node; slow down and retry",
                self.rate
            )));
        }
        b.tokens -= 1.0;
        b.in_flight += 1;
        Ok(Permit {
            limits: self.clone(),
            consumer: b.name.clone(),
        })
    }
}

/// The tower layer applying [`Limits`].
#[derive(Clone, Debug)]
pub struct LimitLayer {
    limits: Arc<Limits>,
}

impl LimitLayer {
    pub fn new(limits: Arc<Limits>) -> Self {
        Self { limits }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// A service behind [`LimitLayer`].
#[derive(Clone, Debug)]
pub struct LimitService<S> {
    inner: S,
    limits: Arc<Limits>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for LimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // No peer means the authenticator did not run: let the service refuse it.
        let permit = match request.extensions().get::<Peer>() {
            Some(peer) => match self.limits.acquire(peer.id.agency.as_str()) {
                Ok(permit) => Some(permit),
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            },
            None => None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(HoldingBody {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body that keeps its call's slot until the body is done.
struct HoldingBody {
    body: tonic::body::Body,
    _permit: Option<Permit>,
}

impl hyper::body::Body for HoldingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for LimitService<S> {
    const NAME: &'static str = S::NAME;
}
