//! Relaying a query stream's pages from the hop that answers them to the
//! hop that asked: a consumer node to its application, a hub to the node or
//! hub that called it. One page at a time (a channel of one: the reader's
//! pace reaches the provider through HTTP/2 flow control, nothing piles up
//! here), within the caller's deadline, and the upstream stream is dropped
//! (cancelled on the wire) as soon as the reader goes away. A caller that
//! set no deadline (or a long one) is bounded all the same: by the longest
//! a relayed stream lasts, and by an idle time without a page, so a stalled
//! provider or reader cannot hold a slot for ever. The exchange is
//! logged once, when the stream ends, with the digest of every page relayed.

use crate::deadline::Deadline;
use crate::provider::PageStream;
use crate::refusal::Refusal;
#[cfg(doc)]
use crate::trace::Trace;
use crate::trace::code_of;
use futures::{Stream, StreamExt};
use lgsp_proto::QueryPage;
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tonic::Status;
use tracing::Instrument;

/// The bounds of every relayed query stream, whatever its caller asked
/// (`[limits]` `max_query_stream_s` and `query_page_idle_s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// The longest a stream lasts when its caller set no earlier deadline.
    pub max_duration: Duration,
    /// A stream on which no page moves for this long (none arrives from
    /// upstream, or the reader takes none) ends.
    pub page_idle: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        crate::config::LimitsConfig::default().relay()
    }
}

/// Relays `upstream`'s pages for service `service` to the returned stream
/// until upstream ends or fails, `deadline` (the caller's, if any) or the
/// longest a stream lasts (`limits.max_duration`) passes, no page moves for
/// `limits.page_idle` (each of these then ends it with `DEADLINE_EXCEEDED`
/// saying which), or the returned stream is dropped (then upstream is
/// dropped too, and the outcome is `CANCELLED`). `finish` gets the
/// outcome (the digest of every page relayed, the code, the bytes) to log
/// it, usually [`Trace::finish`]; `hold` (permits, slots) is kept until the
/// end.
pub fn relay<S>(
    upstream: S,
    service: &str,
    deadline: Option<Deadline>,
    limits: RelayLimits,
    finish: impl FnOnce(&[u8], tonic::Code, u64) + Send + 'static,
    hold: impl Send + 'static,
    span: tracing::Span,
) -> PageStream
where
    S: Stream<Item = Result<QueryPage, Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<QueryPage, Status>>(1);
    let service = service.to_owned();
    tokio::spawn(
        async move {
            let hold = hold;
            let mut upstream = Box::pin(upstream);
            let longest = tokio::time::Instant::now() + limits.max_duration;
            // The caller's deadline, unless the longest a stream may last
            // falls first.
            let (end, callers) = match deadline {
                Some(d) if tokio::time::Instant::from_std(d.at) <= longest => {
                    (tokio::time::Instant::from_std(d.at), true)
                }
                _ => (longest, false),
            };
            let expired = tokio::time::sleep_until(end);
            tokio::pin!(expired);
            let idle = tokio::time::sleep(limits.page_idle);
            tokio::pin!(idle);
            let late = || -> Status {
                if callers {
                    Refusal::DeadlineExceeded {
                        service: service.clone(),
                        total: deadline.map(|d| d.total).unwrap_or_default(),
                    }
                    .into()
                } else {
                    Status::deadline_exceeded(format!(
                        "the query stream of {service} reached the longest a relayed stream lasts ({} s, limits.max_query_stream_s); ask for fewer rows (a filter, fewer fields) or resume from the last page's resume_token",
                        limits.max_duration.as_secs()
                    ))
                }
            };
            let stalled = || {
                Status::deadline_exceeded(format!(
                    "no page of the query stream of {service} moved for {} s (limits.query_page_idle_s): the provider sent none or the reader took none; the stream was ended and its slot freed, resume from the last page's resume_token",
                    limits.page_idle.as_secs()
                ))
            };
            let gone = || Status::cancelled("the reader of the query stream went away");
            let mut digest = Sha256::new();
            let mut bytes_out = 0u64;
            let outcome = loop {
                let next = tokio::select! {
                    biased;
                    () = tx.closed() => break Err(gone()),
                    () = &mut expired => break Err(late()),
                    () = &mut idle => break Err(stalled()),
                    next = upstream.next() => next,
                };
                let page = match next {
                    Some(Ok(page)) => page,
                    Some(Err(status)) => break Err(status),
                    None => break Ok(()),
                };
                idle.as_mut().reset(tokio::time::Instant::now() + limits.page_idle);
                let encoded = page.encode_to_vec();
                let sent = tokio::select! {
                    biased;
                    () = &mut expired => break Err(late()),
                    () = &mut idle => break Err(stalled()),
                    sent = tx.send(Ok(page)) => sent,
                };
                if sent.is_err() {
                    break Err(gone());
                }
                idle.as_mut().reset(tokio::time::Instant::now() + limits.page_idle);
                digest.update(&encoded);
                bytes_out += encoded.len() as u64;
            };
            // Cancelling upstream now, not when this task's locals go.
            drop(upstream);
            if let Err(status) = &outcome
                && status.code() != tonic::Code::Cancelled
            {
                // The reader learns why, unless it stopped reading (then
                // the slot goes after another idle time at most).
                tokio::select! {
                    _ = tx.send(Err(status.clone())) => {}
                    () = tx.closed() => {}
                    () = tokio::time::sleep(limits.page_idle) => {}
                }
            }
            drop(hold);
            finish(&digest.finalize(), code_of(&outcome), bytes_out);
        }
        .instrument(span),
    );
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::{mpsc, oneshot};

    fn page(key: &str) -> Result<QueryPage, Status> {
        Ok(QueryPage {
            records: vec![lgsp_proto::Record {
                key: key.into(),
                json: format!("{{\"ho_ten\":\"Nguyễn Văn {key}\"}}"),
            }],
            resume_token: String::new(),
        })
    }

    /// Where a test sends upstream pages.
    type Upstream = mpsc::Sender<Result<QueryPage, Status>>;

    /// A relay of what is sent on the returned sender, and the outcome it
    /// logs (code, bytes).
    fn relayed(
        deadline: Option<Deadline>,
    ) -> (Upstream, PageStream, oneshot::Receiver<(tonic::Code, u64)>) {
        let (up, stream, logged, _slot) = relayed_with(deadline, RelayLimits::default());
        (up, stream, logged)
    }

    /// As [`relayed`], within `limits`; also a slot the relay holds (its
    /// strong count falls to 1 when the relay lets it go).
    fn relayed_with(
        deadline: Option<Deadline>,
        limits: RelayLimits,
    ) -> (
        Upstream,
        PageStream,
        oneshot::Receiver<(tonic::Code, u64)>,
        Arc<()>,
    ) {
        let (up_tx, up_rx) = mpsc::channel(1);
        let (logged_tx, logged) = oneshot::channel();
        let slot = Arc::new(());
        let stream = relay(
            tokio_stream::wrappers::ReceiverStream::new(up_rx),
            "000.00.12.H62/ho-tich",
            deadline,
            limits,
            move |_, code, bytes| {
                let _ = logged_tx.send((code, bytes));
            },
            slot.clone(),
            tracing::Span::none(),
        );
        (up_tx, stream, logged, slot)
    }

    /// Limits of ten minutes in all and a minute without a page.
    const LIMITS: RelayLimits = RelayLimits {
        max_duration: Duration::from_secs(600),
        page_idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_relayed_stream_without_a_caller_deadline_ends_at_the_longest_duration() {
        let (up, mut stream, logged, slot) = relayed_with(None, LIMITS);
        let started = tokio::time::Instant::now();
        // A page every 30 s, for ever: never idle, never finished.
        let sender = tokio::spawn(async move {
            loop {
                if up.send(page("1")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        let end = loop {
            match stream.next().await.expect("the stream ends with a status") {
                Ok(_) => {}
                Err(status) => break status,
            }
        };
        let took = started.elapsed();
        assert_eq!(end.code(), tonic::Code::DeadlineExceeded, "{end:?}");
        assert!(end.message().contains("600 s"), "{end:?}");
        assert!(
            took >= Duration::from_secs(600) && took < Duration::from_secs(601),
            "{took:?}"
        );
        assert!(stream.next().await.is_none());
        assert_eq!(logged.await.unwrap().0, tonic::Code::DeadlineExceeded);
        sender.await.unwrap();
        assert_eq!(Arc::strong_count(&slot), 1, "the slot is freed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relayed_stream_with_no_page_for_the_idle_time_ends_and_frees_its_slot() {
        let (up, mut stream, logged, slot) = relayed_with(None, LIMITS);
        up.send(page("1")).await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        let started = tokio::time::Instant::now();
        // Upstream stays open and sends nothing more.
        let end = stream.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::DeadlineExceeded, "{end:?}");
        assert!(end.message().contains("no page"), "{end:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(60) && took < Duration::from_secs(61),
            "{took:?}"
        );
        assert_eq!(logged.await.unwrap().0, tonic::Code::DeadlineExceeded);
        up.closed().await;
        assert_eq!(Arc::strong_count(&slot), 1, "the slot is freed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_takes_no_page_frees_the_slot_after_the_idle_time() {
        let (up, stream, logged, slot) = relayed_with(None, LIMITS);
        for key in ["1", "2", "3"] {
            up.send(page(key)).await.unwrap();
        }
        // The reader holds the stream open and never reads.
        let logged = tokio::time::timeout(Duration::from_secs(200), logged)
            .await
            .expect("the relay ends without the reader")
            .unwrap();
        assert_eq!(logged.0, tonic::Code::DeadlineExceeded);
        assert_eq!(Arc::strong_count(&slot), 1, "the slot is freed");
        drop(stream);
    }

    #[tokio::test]
    async fn a_relay_passes_every_page_and_logs_ok_with_their_size() {
        let (up, mut stream, logged) = relayed(None);
        let sender = tokio::spawn(async move {
            for key in ["1", "2", "3"] {
                up.send(page(key)).await.unwrap();
            }
        });
        let mut keys = Vec::new();
        while let Some(p) = stream.next().await {
            let p = p.unwrap();
            assert!(p.records[0].json.contains("Nguyễn Văn"));
            keys.push(p.records[0].key.clone());
        }
        sender.await.unwrap();
        assert_eq!(keys, ["1", "2", "3"]);
        let (code, bytes) = logged.await.unwrap();
        assert_eq!(code, tonic::Code::Ok);
        let expected: usize = ["1", "2", "3"]
            .iter()
            .map(|k| page(k).unwrap().encoded_len())
            .sum();
        assert_eq!(bytes, expected as u64);
    }

    #[tokio::test]
    async fn dropping_the_relayed_stream_cancels_upstream() {
        let (up, mut stream, logged) = relayed(None);
        up.send(page("1")).await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        drop(stream);
        tokio::time::timeout(Duration::from_secs(5), up.closed())
            .await
            .expect("upstream is dropped when the reader goes away");
        assert_eq!(logged.await.unwrap().0, tonic::Code::Cancelled);
    }

    #[tokio::test]
    async fn a_relayed_stream_ends_at_the_deadline_with_deadline_exceeded() {
        let deadline = Deadline::after(Instant::now(), Duration::from_millis(200));
        let (up, mut stream, logged) = relayed(Some(deadline));
        up.send(page("1")).await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        // Upstream sends nothing more: the deadline ends the stream.
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the deadline ends the stream")
            .unwrap()
            .unwrap_err();
        assert_eq!(end.code(), tonic::Code::DeadlineExceeded, "{end:?}");
        assert!(stream.next().await.is_none());
        tokio::time::timeout(Duration::from_secs(5), up.closed())
            .await
            .expect("upstream is dropped at the deadline");
        assert_eq!(logged.await.unwrap().0, tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_slow_reader_holds_upstream_back_with_at_most_two_pages_in_the_relay() {
        let (up, mut stream, _logged) = relayed(None);
        // The relay's channel slot, the page it holds while sending, and
        // upstream's own slot fill; then upstream waits for the reader.
        for key in ["1", "2", "3"] {
            up.send(page(key)).await.unwrap();
        }
        let blocked = tokio::time::timeout(Duration::from_millis(300), up.send(page("4"))).await;
        assert!(blocked.is_err(), "upstream was not held by a slow reader");
        for key in ["1", "2", "3"] {
            let got = stream.next().await.unwrap().unwrap();
            assert_eq!(got.records[0].key, key);
        }
    }

    #[tokio::test]
    async fn an_upstream_failure_reaches_the_reader_and_the_log() {
        let (up, mut stream, logged) = relayed(None);
        up.send(page("1")).await.unwrap();
        up.send(Err(Status::permission_denied("no grant")))
            .await
            .unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(logged.await.unwrap().0, tonic::Code::PermissionDenied);
    }
}
