//! Calling an agency's own HTTP/JSON system on behalf of a consumer.

use crate::config::HttpMethod;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Status;

/// A pooled HTTP/1.1 client for backends.
#[derive(Clone, Debug)]
pub struct HttpBackend {
    client: Client<HttpConnector, Full<Bytes>>,
    max_response: usize,
}

impl HttpBackend {
    /// A client that refuses backend responses larger than `max_response`
    /// bytes.
    pub fn new(max_response: usize) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            max_response,
        }
    }

    /// Sends `payload` to `url` (the backend of `service`, `{op}` in it
    /// replaced by the operation) with `method`, waiting at most `timeout`;
    /// returns the response body.
    // The request's parts and the backend's settings, each used once: a
    // struct for them would only be taken apart here.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        service: &str,
        url: &str,
        method: HttpMethod,
        timeout: Duration,
        op: &str,
        parameters: &HashMap<String, String>,
        payload: &[u8],
        request_id: &str,
        consumer: &str,
    ) -> Result<Vec<u8>, Status> {
        let request = http_request(url, method, op, parameters, payload, request_id, consumer)?;
        let response = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await.map_err(|e| {
                Status::unavailable(format!(
                    "the agency's backend for {service} is unreachable: {e}"
                ))
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.max_response)
                .collect()
                .await
                .map_err(|e| {
                    Status::unavailable(format!("reading the backend's response failed: {e}"))
                })?
                .to_bytes();
            Ok::<_, Status>((status, body))
        })
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "the agency's backend for {service} did not answer within {timeout:?}"
            ))
        })??;
        let (status, body) = response;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        Err(match status.as_u16() {
            404 => Status::not_found(format!("the backend found nothing: {text}")),
            400..=499 => Status::invalid_argument(format!(
                "the backend refused the request ({status}): {text}"
            )),
            _ => Status::unavailable(format!("the backend failed ({status}): {text}")),
        })
    }
}

/// The HTTP request for a call: `url` with `{op}` replaced by the
/// operation (refused when it would walk the backend's path), the
/// parameters as a query string for GET, the payload as the body otherwise.
/// Fails with `InvalidArgument` for a bad operation and `Internal` when the
/// URL is unusable.
pub fn http_request(
    url: &str,
    method: HttpMethod,
    op: &str,
    parameters: &HashMap<String, String>,
    payload: &[u8],
    request_id: &str,
    consumer: &str,
) -> Result<hyper::Request<Full<Bytes>>, Status> {
    // `.` and `..` (or any `..`) would walk the backend's URL path.
    if !op
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || op.is_empty()
        || op.contains("..")
        || op == "."
    {
        return Err(Status::invalid_argument(format!(
            "operation {op:?} is not allowed: use letters, digits, '-', '_' and '.' (not '.' or '..')"
        )));
    }
    let mut url = url.replace("{op}", op);
    if method == HttpMethod::Get && !parameters.is_empty() {
        let mut pairs: Vec<_> = parameters.iter().collect();
        pairs.sort();
        let query: Vec<String> = pairs
            .into_iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&query.join("&"));
    }
    let body = if method == HttpMethod::Get {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(payload)
    };
    hyper::Request::builder()
        .method(method.as_str())
        .uri(&url)
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .header("x-lgsp-consumer-agency", consumer)
        .body(Full::new(body))
        .map_err(|e| Status::internal(format!("backend URL {url:?} is unusable: {e}")))
}

/// Percent-encodes a query-string component (RFC 3986 unreserved kept).
fn encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_components_keep_unreserved_bytes_and_percent_encode_the_rest() {
        assert_eq!(super::encode("ma-so_1.2~"), "ma-so_1.2~");
        assert_eq!(super::encode("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(super::encode("Vĩnh Yên"), "V%C4%A9nh%20Y%C3%AAn");
    }
}

#[cfg(test)]
mod operation_tests {
    use super::*;

    #[tokio::test]
    async fn operations_that_would_walk_the_backend_path_are_refused_before_any_call() {
        let backend = HttpBackend::new(1 << 20);
        for op in ["..", ".", "a..b", "../admin", "a/b", ""] {
            let refused = backend
                .call(
                    "000.00.12.H62/dkkd",
                    // Nothing listens there: a refusal that came from a call
                    // would say "unreachable".
                    "http://127.0.0.1:9/api/{op}",
                    HttpMethod::Post,
                    Duration::from_secs(1),
                    op,
                    &HashMap::new(),
                    b"{}",
                    "req-1",
                    "000.00.13.H62",
                )
                .await
                .unwrap_err();
            assert_eq!(
                refused.code(),
                tonic::Code::InvalidArgument,
                "{op:?}: {refused:?}"
            );
        }
    }
}
