//! Stopping a node in order: one signal every background task watches, and
//! the tasks themselves, owned here and awaited when the node stops, so
//! that nothing the node started outlives it unnoticed.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The stop signal of a node and the tasks that end on it.
#[derive(Debug)]
pub struct Shutdown {
    signal: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not given yet, and no tasks.
    pub fn new() -> Self {
        Self {
            signal: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// What a task watches: it turns true when the node stops (and the
    /// task should end).
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// A future that ends when the node stops.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.receiver();
        async move {
            // Also ends when the sender is gone.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Runs `task` (named `what`, for the log) until it ends by itself or
    /// after the signal; [`Self::stop`] waits for it.
    pub fn spawn(&mut self, what: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((what, tokio::spawn(task)));
    }

    /// Owns `task`, already running, as [`Self::spawn`] would.
    pub fn adopt(&mut self, what: &'static str, task: JoinHandle<()>) {
        self.tasks.push((what, task));
    }

    /// Gives the signal and waits for every task, each at most `grace`;
    /// names the tasks that did not end in time (they are abandoned).
    pub async fn stop(self, grace: Duration) {
        let _ = self.signal.send(true);
        for (what, task) in self.tasks {
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(task = what, %error, "a node task failed"),
                Err(_) => tracing::warn!(
                    task = what,
                    grace_ms = grace.as_millis() as u64,
                    "a node task did not stop in time; abandoned"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn stop_signals_every_task_and_waits_for_it_to_end() {
        let mut shutdown = Shutdown::new();
        let ended = Arc::new(AtomicBool::new(false));
        let (stopped, flag) = (shutdown.stopped(), ended.clone());
        shutdown.spawn("watcher", async move {
            stopped.await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            flag.store(true, Ordering::SeqCst);
        });
        shutdown.stop(Duration::from_secs(5)).await;
        assert!(
            ended.load(Ordering::SeqCst),
            "stop returned before the task ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_signal_is_abandoned_after_the_grace_period() {
        let mut shutdown = Shutdown::new();
        shutdown.spawn("stubborn", std::future::pending());
        let started = tokio::time::Instant::now();
        shutdown.stop(Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
