//! Registry servers as real `lgsp registry start` processes, for tests that
//! kill them with SIGKILL and start them again from their data directories.

use crate::cluster::{PROVINCE, free_addr, write_creds};
use crate::{Pki, TRUST_DOMAIN, lgsp_bin};
use lgsp_certs::{Credentials, Role};
use lgsp_registry::RegistryClient;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One registry server process and how to start it again.
#[derive(Debug)]
pub struct ServerProcess {
    /// The server's Raft id.
    pub id: u64,
    /// host:port of its client API listener.
    pub client: String,
    /// host:port of its Raft peer listener; empty for a process from
    /// [`ProcessCluster::spawn_extra`].
    pub peer: String,
    /// Its directory: `server.log`, and for a founding member its `data`
    /// and `tls` directories.
    pub dir: PathBuf,
    args: Vec<String>,
    /// The binary to run instead of `lgsp_bin()` (see [`Self::set_program`]).
    program: Option<PathBuf>,
    /// Environment variables set for the process (see [`Self::set_env`]).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl ServerProcess {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let program = self.program.clone().unwrap_or_else(lgsp_bin);
        let child = Command::new(program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start lgsp registry");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL, if it runs, and starts it again with
    /// the same arguments, from its data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs `program` (e.g. an upgraded copy of `lgsp`) instead of the
    /// tests' `lgsp` from the next start on.
    pub fn set_program(&mut self, program: PathBuf) {
        self.program = Some(program);
    }

    /// Sets the environment of the process from its next start on
    /// (e.g. an `LD_PRELOAD` layer); an empty `env` clears it.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// Waits for the process to exit by itself; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// What the process has written to `server.log` so far; empty when
    /// there is no log yet.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what each server said, the last of it.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- registry server {} (last lines of its log) ---",
                self.id
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The arguments of `lgsp registry start` for server `id` listening for
/// clients on `client` and peers on `peer`, founding with `peers` (as
/// `--peers` says them), from `data` with the credentials in `tls`.
pub fn registry_start_args(
    id: u64,
    client: &str,
    peer: &str,
    peers: &str,
    data: &std::path::Path,
    tls: &std::path::Path,
) -> Vec<String> {
    let id = id.to_string();
    let (data, tls) = (data.display().to_string(), tls.display().to_string());
    [
        "registry",
        "start",
        "--id",
        &id,
        "--listen",
        client,
        "--peer-listen",
        peer,
        "--peers",
        peers,
        "--data-dir",
        &data,
        "--tls-dir",
        &tls,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A cluster of registry processes.
#[derive(Debug)]
pub struct ProcessCluster {
    /// The CA that issued the servers' and the admin's certificates; its
    /// directory holds each server's `registry-<id>` directory.
    pub pki: Pki,
    /// The provincial admin's credentials (`so-tttt`), which the clients
    /// present.
    pub admin: Credentials,
    /// The founding members, ids 1 to n in order.
    pub servers: Vec<ServerProcess>,
}

impl ProcessCluster {
    /// Starts `n` `lgsp registry start` processes (ids 1..=n) on free ports
    /// as the founding members, without waiting for a leader (see
    /// [`Self::leader`]). Panics when a process cannot be started.
    pub fn start(n: u64) -> Self {
        Self::start_in(n, TRUST_DOMAIN, PROVINCE)
    }

    /// [`Self::start`] for another instance: its own CA for
    /// `trust_domain`, run by agency `province` (the admin's and the
    /// servers' agency).
    pub fn start_in(n: u64, trust_domain: &str, province: &str) -> Self {
        Self::start_with_env_in(n, trust_domain, province, |_, _| Vec::new())
    }

    /// [`Self::start`], each server `id` with the environment `env(id, dir)`
    /// gives, `dir` being its directory (see [`ServerProcess::dir`]).
    pub fn start_with_env(
        n: u64,
        env: impl Fn(u64, &std::path::Path) -> Vec<(String, String)>,
    ) -> Self {
        Self::start_with_env_in(n, TRUST_DOMAIN, PROVINCE, env)
    }

    fn start_with_env_in(
        n: u64,
        trust_domain: &str,
        province: &str,
        env: impl Fn(u64, &std::path::Path) -> Vec<(String, String)>,
    ) -> Self {
        let mut pki = Pki::new(trust_domain);
        let (admin, _) = pki.issue(province, Role::Admin, "so-tttt");
        let addrs: Vec<(u64, String, String)> = (1..=n)
            .map(|id| (id, free_addr().to_string(), free_addr().to_string()))
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, client, peer)| format!("{id}={peer}/{client}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (id, client, peer) in &addrs {
            let dir = pki.dir.path().join(format!("registry-{id}"));
            let (creds, _) = pki.issue(province, Role::Registry, &format!("registry-{id}"));
            write_creds(&dir.join("tls"), &creds);
            let args = registry_start_args(
                *id,
                client,
                peer,
                &peers,
                &dir.join("data"),
                &dir.join("tls"),
            );
            let mut s = ServerProcess {
                id: *id,
                client: client.clone(),
                peer: peer.clone(),
                env: env(*id, &dir),
                dir,
                args,
                program: None,
                child: None,
            };
            s.spawn();
            servers.push(s);
        }
        Self {
            pki,
            admin,
            servers,
        }
    }

    /// Starts another `lgsp` process with `args` (e.g. a server joining the
    /// cluster), logging into `dir`.
    pub fn spawn_extra(
        &self,
        id: u64,
        client: &str,
        args: Vec<String>,
        dir: PathBuf,
    ) -> ServerProcess {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut s = ServerProcess {
            id,
            client: client.to_owned(),
            peer: String::new(),
            dir,
            args,
            program: None,
            env: Vec::new(),
            child: None,
        };
        s.spawn();
        s
    }

    /// An admin client of every founding member.
    pub fn client(&self) -> RegistryClient {
        let endpoints: Vec<String> = self.servers.iter().map(|s| s.client.clone()).collect();
        RegistryClient::new(&endpoints, &self.admin).expect("client")
    }

    /// An admin client of server `id` alone. Panics when there is no such
    /// server.
    pub fn client_of(&self, id: u64) -> RegistryClient {
        let s = self.server(id);
        RegistryClient::new(std::slice::from_ref(&s.client), &self.admin).expect("client")
    }

    /// Server `id`'s process. Panics when there is no such server.
    pub fn server(&self, id: u64) -> &ServerProcess {
        self.servers.iter().find(|s| s.id == id).expect("server id")
    }

    /// Server `id`'s process, to kill or restart it. Panics when there is no
    /// such server.
    pub fn server_mut(&mut self, id: u64) -> &mut ServerProcess {
        self.servers
            .iter_mut()
            .find(|s| s.id == id)
            .expect("server id")
    }

    /// The leader the servers agree on, waiting up to 15 s.
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(s) = self.client().status().await
                && s.leader_id != 0
            {
                return s.leader_id;
            }
            assert!(Instant::now() < deadline, "no leader in 15 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
