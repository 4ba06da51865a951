//! Relaying a query stream's pages from the hop that answers them to the
//! hop that asked: a consumer node to its application, a hub to the node or
//! hub that called it. One page at a time (a channel of one: the reader's
//! pace reaches the provider through HTTP/2 flow control, nothing piles up
//! here), within the caller's deadline, and the upstream stream is dropped
//! (cancelled on the wire) as soon as the reader goes away. The exchange is
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
use tonic::Status;
use tracing::Instrument;

/// Relays `upstream`'s pages for service `service` to the returned stream
/// until upstream ends or fails, `deadline` passes (then
/// `DEADLINE_EXCEEDED`) or the returned stream is dropped (then upstream is
/// dropped too, and the outcome is `CANCELLED`). `finish` gets the
/// outcome (the digest of every page relayed, the code, the bytes) to log
/// it, usually [`Trace::finish`]; `hold` (permits, slots) is kept until the
/// end.
pub fn relay<S>(
    upstream: S,
    service: &str,
    deadline: Option<Deadline>,
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
            let _hold = hold;
            let mut upstream = Box::pin(upstream);
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
            let late = || -> Status {
                Refusal::DeadlineExceeded {
                    service: service.clone(),
                    total: deadline.map(|d| d.total).unwrap_or_default(),
                }
                .into()
            };
            let gone = || Status::cancelled("the reader of the query stream went away");
            let mut digest = Sha256::new();
            let mut bytes_out = 0u64;
            let outcome = loop {
                let next = tokio::select! {
                    biased;
                    () = tx.closed() => break Err(gone()),
                    () = &mut expired => break Err(late()),
                    next = upstream.next() => next,
                };
                let page = match next {
                    Some(Ok(page)) => page,
                    Some(Err(status)) => break Err(status),
                    None => break Ok(()),
                };
                let encoded = page.encode_to_vec();
                let sent = tokio::select! {
                    biased;
                    () = &mut expired => break Err(late()),
                    sent = tx.send(Ok(page)) => sent,
                };
                if sent.is_err() {
                    break Err(gone());
                }
                digest.update(&encoded);
                bytes_out += encoded.len() as u64;
            };
            // Cancelling upstream now, not when this task's locals go.
            drop(upstream);
            if let Err(status) = &outcome
                && status.code() != tonic::Code::Cancelled
            {
                // The reader learns why, unless it stopped reading.
                tokio::select! {
                    _ = tx.send(Err(status.clone())) => {}
                    () = tx.closed() => {}
                    () = &mut expired => {}
                }
            }
            finish(&digest.finalize(), code_of(&outcome), bytes_out);
        }
        .instrument(span),
    );
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let (up_tx, up_rx) = mpsc::channel(1);
        let (logged_tx, logged) = oneshot::channel();
        let stream = relay(
            tokio_stream::wrappers::ReceiverStream::new(up_rx),
            "000.00.12.H62/ho-tich",
            deadline,
            move |_, code, bytes| {
                let _ = logged_tx.send((code, bytes));
            },
            (),
            tracing::Span::none(),
        );
        (up_tx, stream, logged)
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
