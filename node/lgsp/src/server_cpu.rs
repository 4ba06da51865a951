//! Each server of a bench on a runtime of its own, and the CPU time each
//! spends, so that `lgsp bench` can say what a call costs every server on
//! its path, and how fast the path would run with a core per server as in a
//! deployment, besides how fast it runs with every server sharing this
//! machine's cores.
//!
//! A server's runtime names its threads `srv:<server>`; the time a thread
//! ran comes from Linux's `/proc/self/task/<tid>/schedstat`. The registry
//! servers' own threads (consensus `raft-<id>`, snapshot, backup and log
//! rewrite threads) count as the `registry` server's; threads that are not
//! a server's (the bench's clients) count as "other". A whole process's
//! time (etcd's members, or this one) comes from `/proc/<pid>/stat`, which
//! keeps the time of threads that ended. Elsewhere than Linux nothing is
//! measured and the bench says so.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};

/// The prefix of the names of a server's threads.
const PREFIX: &str = "srv:";

/// The runtimes of the servers of a bench, by server name.
#[derive(Default)]
pub(crate) struct Servers {
    runtimes: Vec<(String, Runtime)>,
}

impl Servers {
    /// The runtime of `server`, made on first use: as many workers as the
    /// machine has cores, its threads named after it (at most 11 bytes of
    /// the name fit Linux's 15-byte thread names).
    pub(crate) fn handle(&mut self, server: &str) -> Result<Handle> {
        if let Some((_, rt)) = self.runtimes.iter().find(|(name, _)| name == server) {
            return Ok(rt.handle().clone());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(format!("{PREFIX}{server}"))
            .build()
            .with_context(|| format!("cannot start the runtime of {server}"))?;
        let handle = rt.handle().clone();
        self.runtimes.push((server.to_owned(), rt));
        Ok(handle)
    }

    /// Runs `task` on `server`'s runtime (what it spawns stays there) and
    /// waits for its result.
    pub(crate) async fn run<T, F>(&mut self, server: &str, task: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let handle = self.handle(server)?;
        handle
            .spawn(task)
            .await
            .with_context(|| format!("a task of {server} failed"))
    }

    /// Stops every runtime without waiting for what still runs on it (the
    /// servers were shut down already).
    pub(crate) fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Servers {
    /// A runtime dropped inside another one's `block_on` panics: dropped
    /// early (a bench that fails part-way), the runtimes are stopped in the
    /// background instead, and the bench's error is what the user sees.
    fn drop(&mut self) {
        for (_, rt) in self.runtimes.drain(..) {
            rt.shutdown_background();
        }
    }
}

/// The CPU time each thread of this process has run, with its server.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    threads: HashMap<u32, (String, Duration)>,
}

impl Sample {
    /// Reads every thread's run time now; `None` where Linux's per-thread
    /// scheduler statistics cannot be read.
    pub(crate) fn now() -> Option<Self> {
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task").ok()? {
            let Ok(entry) = entry else { continue };
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread that ended between the listing and the reads is
            // skipped.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(entry.path().join("comm")),
                std::fs::read_to_string(entry.path().join("schedstat")),
            ) else {
                continue;
            };
            let Some(ran) = parse_schedstat(&stat) else {
                continue;
            };
            threads.insert(tid, (server_of(comm.trim()).to_owned(), ran));
        }
        Some(Self { threads })
    }

    /// CPU time per server from `earlier` to this sample. A thread that
    /// ended in between loses its time since `earlier`.
    pub(crate) fn since(&self, earlier: &Sample) -> BTreeMap<String, Duration> {
        let mut by_server = BTreeMap::new();
        for (tid, (server, ran)) in &self.threads {
            let before = earlier
                .threads
                .get(tid)
                .filter(|(s, _)| s == server)
                .map_or(Duration::ZERO, |(_, d)| *d);
            *by_server.entry(server.clone()).or_insert(Duration::ZERO) +=
                ran.saturating_sub(before);
        }
        by_server
    }
}

/// The server a thread named `comm` works for, or "other".
fn server_of(comm: &str) -> &str {
    if let Some(server) = comm.strip_prefix(PREFIX) {
        return server;
    }
    // Threads a registry server starts of its own (Linux keeps 15 bytes of
    // a name: "rewrite catalog.log" is "rewrite catalo").
    let registry = ["raft-", "rewrite ", "registry-backup"];
    if registry.iter().any(|prefix| comm.starts_with(prefix)) {
        return REGISTRY;
    }
    "other"
}

/// The server name under which the registry servers' own threads count.
pub(crate) const REGISTRY: &str = "registry";

/// Clock ticks per second of the times in `/proc/<pid>/stat`: Linux's
/// `USER_HZ`, part of its interface, 100 on x86-64 and arm64.
const USER_HZ: u64 = 100;

/// The CPU time (user and system) process `pid` has run so far, every
/// thread's, those that ended included, to the 10 ms tick; `None` where it
/// cannot be read.
pub(crate) fn process_ran(pid: u32) -> Option<Duration> {
    parse_stat_times(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime` + `stime` of a `/proc/<pid>/stat` line (fields 14 and 15).
fn parse_stat_times(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses: fields are counted from its last `)`, state first.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// The time a thread ran, the first field of its `schedstat`
/// (nanoseconds).
fn parse_schedstat(stat: &str) -> Option<Duration> {
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Adds `more` to `total`, server by server.
pub(crate) fn add(total: &mut BTreeMap<String, Duration>, more: BTreeMap<String, Duration>) {
    for (server, d) in more {
        *total.entry(server).or_insert(Duration::ZERO) += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_server_is_its_name_after_the_prefix_or_the_registry_for_its_own_threads() {
        assert_eq!(server_of("srv:hub-p"), "hub-p");
        assert_eq!(server_of("tokio-runtime-w"), "other");
        // A registry server's own threads are the registry's.
        assert_eq!(server_of("raft-1"), "registry");
        assert_eq!(server_of("raft-snapshot"), "registry");
        assert_eq!(server_of("rewrite catalo"), "registry");
        assert_eq!(server_of("registry-backup"), "registry");
    }

    #[test]
    fn the_run_time_is_the_first_schedstat_field_in_nanoseconds() {
        assert_eq!(
            parse_schedstat("123456789 5000 12\n"),
            Some(Duration::from_nanos(123_456_789))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn time_per_server_counts_only_what_each_thread_ran_since_the_earlier_sample() {
        let sample = |threads: &[(u32, &str, u64)]| Sample {
            threads: threads
                .iter()
                .map(|(tid, s, ms)| (*tid, (s.to_string(), Duration::from_millis(*ms))))
                .collect(),
        };
        let earlier = sample(&[(1, "hub-p", 100), (2, "hub-p", 50), (3, "node-a", 10)]);
        // Thread 4 started since; thread 3 ended.
        let later = sample(&[(1, "hub-p", 130), (2, "hub-p", 60), (4, "node-a", 7)]);
        let spent = later.since(&earlier);
        assert_eq!(spent["hub-p"], Duration::from_millis(40));
        assert_eq!(spent["node-a"], Duration::from_millis(7));
        // A thread id reused by another server's thread counts from zero.
        let reused = sample(&[(1, "node-c", 5)]);
        assert_eq!(reused.since(&earlier)["node-c"], Duration::from_millis(5));
    }

    #[test]
    fn this_process_threads_are_sampled_on_linux() {
        if cfg!(target_os = "linux") {
            let sample = Sample::now().expect("/proc/self/task is readable on Linux");
            assert!(!sample.threads.is_empty());
        }
    }

    #[test]
    fn a_process_time_is_its_user_and_system_ticks_and_keeps_ended_threads() {
        // A name with a space and a parenthesis, then 1,234 + 66 ticks.
        let line =
            "4242 (etcd (m0) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 66 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_times(line), Some(Duration::from_millis(13_000)));
        assert_eq!(parse_stat_times("4242 (etcd) S 1"), None);
        if cfg!(target_os = "linux") {
            let before = process_ran(std::process::id()).expect("readable on Linux");
            // Work on a thread that ends before the second reading.
            std::thread::spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(60) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
            .join()
            .unwrap();
            let after = process_ran(std::process::id()).unwrap();
            assert!(
                after >= before + Duration::from_millis(40),
                "{before:?} → {after:?}"
            );
            assert_eq!(process_ran(u32::MAX), None, "no such process");
        }
    }

    #[tokio::test]
    async fn a_task_run_on_a_servers_runtime_runs_on_its_named_threads() {
        let mut servers = Servers::default();
        let name = servers
            .run("hub-p", async {
                std::thread::current().name().map(str::to_owned)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("srv:hub-p"));
        servers.shutdown();
    }
}
