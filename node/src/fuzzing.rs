//! The node's handling of what a peer sends, without a network: the entry
//! points of the fuzz targets in `fuzz/` and of the tests that replay their
//! committed corpora. Each takes raw bytes as they arrive on the provider
//! port and must never panic, whatever they hold.

use crate::backend::http_request;
use crate::config::HttpMethod;
use crate::provider::query_of;
use crate::trace::own_request_id;
use lgsp_dataset::Dataset;
use lgsp_proto::{Envelope, QueryRequest};
use lgsp_registry::ServiceId;
use prost::Message as _;

/// The backend URL template the envelope target builds requests for.
const BACKEND: &str = "http://127.0.0.1:9/api/v1/{op}";

/// Pages read per query at most, so one input stays fast.
const MAX_PAGES: usize = 8;

/// Decodes `bytes` as a call's [`Envelope`] and runs the checks a provider
/// makes before its backend sees anything: the request id, the service id,
/// and the HTTP request built from the operation and parameters.
pub fn envelope(bytes: &[u8]) {
    let Ok(mut env) = Envelope::decode(bytes) else {
        return;
    };
    let refused = own_request_id(&mut env.request_id);
    assert!(
        !env.request_id.is_empty() && crate::trace::check_request_id(&env.request_id).is_ok(),
        "the id logged is always a good one (refused: {refused:?})"
    );
    let _ = env.service_id.parse::<ServiceId>();
    for method in [HttpMethod::Get, HttpMethod::Post] {
        if let Ok(request) = http_request(
            BACKEND,
            method,
            &env.operation,
            &env.parameters,
            &env.payload,
            &env.request_id,
            "000.00.13.H62",
        ) {
            let path = request.uri().path();
            assert!(
                path.starts_with("/api/v1/") && !path.contains("/../") && !path.ends_with("/.."),
                "the operation {:?} walked the backend path to {path}",
                env.operation
            );
        }
    }
}

/// Decodes `bytes` as a [`QueryRequest`] and runs it over `dataset` as the
/// provider would, page after page (a few at most).
pub fn query(bytes: &[u8], dataset: &Dataset) {
    let Ok(req) = QueryRequest::decode(bytes) else {
        return;
    };
    let mut query = query_of(&req);
    for _ in 0..MAX_PAGES {
        match dataset.query(&query) {
            Ok(page) if !page.resume_token.is_empty() => query.resume_token = page.resume_token,
            _ => return,
        }
    }
}
