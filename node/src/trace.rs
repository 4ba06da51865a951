//! One exchange as the sharing log and the metrics see it, and the request
//! ids that tie the two sides' log entries together.

use crate::context::NodeContext;
use crate::deadline::Deadline;
use crate::refusal::code_name;
use lgsp_sharing_log::Exchange;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;
use tonic::Status;

/// One exchange as the sharing log and the metrics see it: who, what and
/// when, taken as the call starts; `finish` adds the outcome and writes it.
/// A trace dropped unfinished (the caller cancelled, or its deadline passed
/// and the call was abandoned) is written then, with that outcome: every
/// exchange that started is in the log.
pub(crate) struct Trace {
    ctx: Arc<NodeContext>,
    side: &'static str,
    request_id: String,
    consumer: String,
    service_id: String,
    operation: String,
    request_sha256: String,
    bytes_in: u64,
    started: Instant,
    deadline: Option<Deadline>,
    written: bool,
}

impl Trace {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        ctx: &Arc<NodeContext>,
        side: &'static str,
        request_id: &str,
        consumer: &str,
        service_id: &str,
        operation: &str,
        request: &[u8],
        started: Instant,
        deadline: Option<Deadline>,
    ) -> Self {
        Self {
            ctx: ctx.clone(),
            side,
            request_id: request_id.to_owned(),
            consumer: consumer.to_owned(),
            service_id: service_id.to_owned(),
            operation: operation.to_owned(),
            request_sha256: hex::encode(Sha256::digest(request)),
            bytes_in: request.len() as u64,
            started,
            deadline,
            written: false,
        }
    }

    /// Records the outcome: `response_sha256` is the digest of the payload
    /// (of every page, for a query), `bytes_out` its size, `code` how the
    /// exchange ended.
    pub(crate) fn finish(mut self, response_sha256: &[u8], code: tonic::Code, bytes_out: u64) {
        self.write(response_sha256, code, bytes_out);
    }

    fn write(&mut self, response_sha256: &[u8], code: tonic::Code, bytes_out: u64) {
        self.written = true;
        let latency = self.started.elapsed();
        let ctx = &self.ctx;
        ctx.metrics.observe(
            self.side,
            &self.service_id,
            &self.consumer,
            code,
            latency,
            self.bytes_in,
            bytes_out,
        );
        let service = std::mem::take(&mut self.service_id);
        let entry = Exchange {
            provider: service.split('/').next().unwrap_or_default().to_owned(),
            request_id: std::mem::take(&mut self.request_id),
            side: self.side.to_owned(),
            consumer: std::mem::take(&mut self.consumer),
            service,
            operation: std::mem::take(&mut self.operation),
            request_sha256: std::mem::take(&mut self.request_sha256),
            response_sha256: hex::encode(response_sha256),
            status: code_name(code).to_owned(),
            latency_us: latency.as_micros() as u64,
            bytes_in: self.bytes_in,
            bytes_out,
        };
        if let Err(error) = ctx.log.append(entry) {
            tracing::error!(%error, "cannot write the sharing log");
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let expired = self.deadline.is_some_and(|d| d.is_near_or_past());
        let code = if std::thread::panicking() {
            // Serving it failed; the caller is answered INTERNAL.
            tonic::Code::Internal
        } else if expired {
            tonic::Code::DeadlineExceeded
        } else {
            tonic::Code::Cancelled
        };
        self.write(&Sha256::digest([]), code, 0);
    }
}

/// The status code an exchange ended with.
pub(crate) fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    result.as_ref().err().map_or(tonic::Code::Ok, Status::code)
}

/// A request id for an exchange that came without one: 8 random bytes drawn
/// once per process, then a counter (32 hex digits). Unique without a
/// system call per exchange; not a secret.
pub fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        bytes
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(prefix);
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    hex::encode(bytes)
}
