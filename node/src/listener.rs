//! Accepting the agency's applications on the consumer listener without
//! letting them exhaust the node.
//!
//! Whatever connects to the consumer listener (it is plain HTTP/2 unless
//! `[consumer.tls]` is set, so anything on the agency's network can) gets
//! a bounded share of the node: at most `max_connections` at once (beyond
//! that a connection is closed as soon as it is accepted), the first bytes
//! within a preface timeout, and no connection silent in both directions
//! for longer than the idle timeout. Open files are the node's to share
//! with the provider listener, which other agencies depend on: the cap
//! keeps most of them for it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

/// How the consumer listener bounds its connections.
#[derive(Clone, Copy, Debug)]
pub struct Guard {
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// How long a new connection may stay silent before its first bytes.
    pub preface: Duration,
    /// How long a connection may carry no bytes either way.
    pub idle: Duration,
}

impl Guard {
    /// `max_connections`, but at most a quarter of the open files the
    /// process may have (from `/proc/self/limits`), so that the provider
    /// listener, the stores and the registry keep the rest.
    pub fn within_file_limit(mut self) -> Self {
        if let Some(files) = open_file_limit() {
            self.max_connections = self.max_connections.min((files / 4).max(16));
        }
        self
    }
}

/// The soft limit on open files of this process, if it can be read.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Accepts connections on `listener` for as long as the returned receiver
/// lives, each guarded by `guard`.
pub fn accept(listener: TcpListener, guard: Guard) -> mpsc::Receiver<Watched<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(guard.max_connections));
    tokio::spawn(async move {
        let mut refused = 0u64;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of open files (EMFILE) among others: wait for some
                    // to be given back instead of spinning.
                    tracing::warn!(%error, "consumer listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        client.addr = %addr,
                        max = guard.max_connections,
                        refused,
                        "consumer listener: connection limit reached; closing new connections"
                    );
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if tx
                .send(Watched::new(tcp, addr, permit, guard))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// A connection that holds one of the listener's slots and ends with
/// `TimedOut` when it stays silent too long.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    deadline: Pin<Box<Sleep>>,
    /// The last time bytes moved; the deadline is moved past it only when it
    /// falls (no timer work per read or write).
    last_active: Option<Instant>,
    idle: Duration,
    addr: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

impl<S> Watched<S> {
    fn new(inner: S, addr: SocketAddr, slot: OwnedSemaphorePermit, guard: Guard) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(guard.preface)),
            last_active: None,
            idle: guard.idle,
            addr,
            _slot: slot,
        }
    }

    /// Notes that bytes just moved.
    fn active(&mut self) {
        self.last_active = Some(Instant::now());
    }

    /// Whether the connection has been silent past its deadline. When the
    /// timer falls but bytes moved since, it is set `idle` past that.
    fn poll_silent(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match self.last_active {
                Some(at) if at + self.idle > self.deadline.deadline() => {
                    let next = at + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                _ => return Poll::Ready(()),
            }
        }
    }
}

fn silent(addr: SocketAddr) -> io::Error {
    tracing::debug!(client.addr = %addr, "consumer connection closed: silent too long");
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the connection was silent too long",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Nothing to read: the connection is over if it has been silent
            // past its deadline (the timer wakes this task when it falls).
            Poll::Pending => match self.poll_silent(cx) {
                Poll::Ready(()) => Poll::Ready(Err(silent(self.addr))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Watched<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guard(max_connections: usize) -> Guard {
        Guard {
            max_connections,
            preface: Duration::from_millis(300),
            idle: Duration::from_millis(600),
        }
    }

    async fn listen(guard: Guard) -> (SocketAddr, mpsc::Receiver<Watched<TcpStream>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, accept(listener, guard))
    }

    #[tokio::test]
    async fn a_connection_silent_past_the_preface_timeout_is_closed() {
        let (addr, mut accepted) = listen(guard(8)).await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = accepted.recv().await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn traffic_keeps_a_connection_open_and_silence_then_closes_it() {
        let (addr, mut accepted) = listen(guard(8)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut conn = accepted.recv().await.unwrap();
        let mut buf = [0u8; 16];
        // Active for longer than the idle timeout, in steps shorter than it.
        for _ in 0..5 {
            client.write_all(b"ping").await.unwrap();
            assert_eq!(conn.read(&mut buf).await.unwrap(), 4);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn past_the_cap_new_connections_are_closed_and_a_slot_comes_back() {
        let (addr, mut accepted) = listen(guard(2)).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = accepted.recv().await.unwrap();
        let _second = accepted.recv().await.unwrap();
        // The third is accepted and closed at once: it reads end of stream.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // One closes: the next is served.
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), accepted.recv())
            .await
            .expect("a slot came back")
            .unwrap();
    }
}
