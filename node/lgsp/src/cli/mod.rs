//! The `lgsp` command line: one binary for the CA, the registry, agency
//! nodes, the hub and their operators.
//!
//! Usage errors (a bad flag or value) exit with code 2 and a message naming
//! the flag; failures of the work itself exit with code 1 and one line
//! saying what went wrong.

mod access;
mod audit;
mod bench;
mod ca;
mod call;
mod catalog;
mod dataset;
mod demo;
mod hub;
mod hub_rest;
mod node;
mod output;
mod registry;
mod requests;
mod status;
mod time;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lgsp_certs::{Credentials, TlsFiles};
use std::path::PathBuf;
use std::process::ExitCode;

/// lgsp: the provincial data-exchange platform (Nền tảng chia sẻ, tích hợp dùng chung, LGSP).
///
/// Every agency runs a node that serves its data over gRPC with mutual TLS; a
/// Raft-replicated registry keeps the shared service catalog. Start with
/// `lgsp demo`, a whole province on this machine.
///
/// Example: lgsp demo
#[derive(Debug, Parser)]
#[command(
    name = "lgsp",
    version = VERSION,
    propagate_version = true,
    after_long_help = ENVIRONMENT
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `lgsp --version`: the release and the commit it was built from.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LGSP_GIT_COMMIT"),
    ")"
);

/// The environment variables every command reads, listed once here rather
/// than on each flag's line.
const ENVIRONMENT: &str = "\
Environment:
  LGSP_REGISTRY   registry client addresses, comma-separated (--registry)
  LGSP_TLS_DIR    directory with this side's cert.pem, key.pem and ca.pem (--tls-dir)
  LGSP_DATA_DIR   a node's data directory, for `lgsp dataset` (--data-dir)
  LGSP_NODE       this agency's node, for `lgsp call` (--node)
  LGSP_TIME_ZONE  the province's time zone where no registry says it, for
                  `lgsp audit export`, `audit verify`, `dataset list`, `ca show`
                  (--time-zone; default Asia/Ho_Chi_Minh)
  RUST_LOG        how much to log, e.g. info (the default), debug, lgsp_node=debug

Exit codes: 0 done; 1 the work failed; 2 a usage or configuration error;
141 the reader of the output went away (as with `| head`).";

#[derive(Debug, Subcommand)]
enum Command {
    /// The provincial certificate authority: make the CA, issue and sign
    /// certificates, revoke them, publish CRLs, show what a certificate says.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// The Raft-replicated service catalog: run a server, see the cluster,
    /// add and remove servers.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Agencies in the catalog: register, list.
    #[command(subcommand)]
    Agency(catalog::AgencyCommand),
    /// Data-sharing services in the catalog: publish, show, list, withdraw.
    #[command(subcommand)]
    Service(catalog::ServiceCommand),
    /// Access grants (who may call what): list, show; suspend, resume and
    /// terminate (provider agency); grant directly (provincial admin).
    #[command(subcommand)]
    Access(access::AccessCommand),
    /// Access requests (D47 Art. 35): file one, approve or refuse it within
    /// 5 working days, list mine, incoming and overdue.
    #[command(subcommand)]
    Requests(requests::RequestsCommand),
    /// What waits for your agency: requests to decide, decisions received,
    /// maintenance announced, suspensions.
    ///
    /// Example: lgsp inbox --tls-dir /etc/lgsp/admin
    Inbox(requests::InboxArgs),
    /// The province's calendar: time zone and holidays, for working-day
    /// deadlines (provincial admin).
    #[command(subcommand)]
    Calendar(requests::CalendarCommand),
    /// The provincial hub: federation with other lgsp instances (run it;
    /// peers, exports, imports).
    #[command(subcommand)]
    Hub(hub::HubCommand),
    /// Call another agency's service through this agency's node.
    ///
    /// Example: lgsp call 000.00.12.H62/ho-tich --param key=001099012345 (or --query --param
    /// huyen="Tam Dương" --fields so_dinh_danh,ho_ten)
    Call(call::CallArgs),
    /// Run a whole province on this machine: CA, three registry servers,
    /// two agencies with nodes and data. Prints the commands to try from
    /// another terminal; `--scenario` walks through it, showing the command
    /// behind each step.
    ///
    /// Example: lgsp demo --dir /tmp/lgsp-demo --scenario
    ///
    /// Example: lgsp demo --dir /tmp/lgsp-demo-2 --base-port 17101 (beside another demo)
    Demo(demo::DemoArgs),
    /// An agency node: prepare it (key, CSR, node.toml), run it.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Datasets this node serves itself: import CSV or JSON Lines, show, query.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
    /// The sharing log (nhật ký chia sẻ, D47 Art. 45): verify it, export it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// One screen for a node's host: this build, whether the node answers,
    /// the registry and its leader, the age of the node's catalog copy, its
    /// certificate's expiry, its datasets (rows, generation) and the node
    /// links open. Exits 1, naming them, when something needs attention.
    ///
    /// Example: lgsp status --config /etc/lgsp/node.toml
    ///
    /// Example: lgsp status --config /etc/lgsp/node.toml -o json
    Status(status::StatusArgs),
    /// Benchmarks, each reported next to a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a shell completion script for lgsp's commands and flags.
    ///
    /// Example: lgsp completion bash > /etc/bash_completion.d/lgsp
    ///
    /// Example: lgsp completion zsh > "${fpath[1]}/_lgsp"; lgsp completion fish >
    /// ~/.config/fish/completions/lgsp.fish
    Completion {
        /// The shell: bash, zsh, fish (also elvish, powershell).
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write a man page for lgsp and for every subcommand (lgsp.1,
    /// lgsp-node-start.1, ...) into DIR, made from the same help as
    /// `--help`.
    ///
    /// Example: lgsp man /usr/local/share/man/man1 && man lgsp-node-start
    Man {
        /// The directory to write the pages into (made if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// How to reach the registry: its servers and this side's certificate.
#[derive(Debug, Args)]
pub(crate) struct RegistryArgs {
    /// Registry client addresses, comma-separated (any server will do; the
    /// others are tried when one is down).
    #[arg(
        long,
        env = "LGSP_REGISTRY",
        value_name = "ADDRS",
        default_value = "127.0.0.1:7101"
    )]
    registry: String,
    /// Directory with this side's cert.pem, key.pem and ca.pem.
    #[arg(long, env = "LGSP_TLS_DIR", value_name = "DIR")]
    tls_dir: PathBuf,
    /// Run the command again after a write whose outcome was unknown, under
    /// the key (32 hex digits) the error printed: what the first run wrote
    /// is not written twice. Leave it out otherwise (each run its own key).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

/// The registry clients this run made, for the error's advice: after a
/// write whose outcome is unknown, the key to run the command again under.
static CLIENTS: std::sync::Mutex<Vec<lgsp_registry::RegistryClient>> =
    std::sync::Mutex::new(Vec::new());

/// How to resolve `error` safely: after a registry write whose outcome is
/// unknown (it may or may not have been applied), the same command again
/// under the key of this run's writes; after a run under such a key whose
/// write the registry refused as another write's, what that means. `None`
/// for any other error.
fn unknown_write_advice(error: &anyhow::Error) -> Option<String> {
    let clients = CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(client) = clients.iter().find(|c| c.write_outcome_unknown()) {
        return Some(advice(client.key_seed()));
    }
    let given = clients.iter().any(|c| c.writes_keyed() > 0)
        && KEY_GIVEN.load(std::sync::atomic::Ordering::Relaxed);
    let status = error
        .chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>())?;
    (given && status.message().contains(lgsp_registry::idempotency::KEY_REUSED)).then(|| {
        "the earlier run under this --idempotency-key reached the registry with a write this run did \
         not repeat as it was (the command read the catalog or the clock anew), so nothing was written \
         now: check the catalog for the earlier write, and write again without the key if it is still \
         needed"
            .to_owned()
    })
}

/// `--idempotency-key` was given.
static KEY_GIVEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What to do after a write whose outcome is unknown, for a run whose
/// writes were keyed from `seed`.
fn advice(seed: &[u8]) -> String {
    format!(
        "the outcome of the last write is unknown (it may or may not have been made): within 10 minutes, run the same command again with --idempotency-key {}; what was made answers with its result instead of being made twice",
        hex::encode(seed)
    )
}

impl RegistryArgs {
    fn addresses(&self) -> Vec<String> {
        self.registry
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn credentials(&self) -> anyhow::Result<Credentials> {
        Credentials::load(&TlsFiles::in_dir(&self.tls_dir))
            .with_context(|| format!("cannot load the TLS files in {}", self.tls_dir.display()))
    }

    fn client(&self) -> anyhow::Result<lgsp_registry::RegistryClient> {
        let mut client =
            lgsp_registry::RegistryClient::new(&self.addresses(), &self.credentials()?)?;
        if let Some(text) = &self.idempotency_key {
            client = client.with_key_seed(key_seed(text)?);
            KEY_GIVEN.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        CLIENTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(client.clone());
        Ok(client)
    }
}

/// The seed of `--idempotency-key` (hex, as an earlier run printed it).
fn key_seed(text: &str) -> anyhow::Result<Vec<u8>> {
    match hex::decode(text.trim()) {
        Ok(key) if key.len() == lgsp_registry::idempotency::KEY_LEN => Ok(key),
        _ => Err(UsageError(format!(
            "--idempotency-key: {text:?} is not a key printed by an earlier run ({} hex digits); leave it out for a new command",
            2 * lgsp_registry::idempotency::KEY_LEN
        ))
        .into()),
    }
}

/// Every record of `kind` in the catalog that `pick` takes (e.g. the
/// requests out of their values).
async fn records_of<T>(
    client: &lgsp_registry::RegistryClient,
    kind: lgsp_proto::RecordKind,
    pick: fn(lgsp_proto::catalog_record::Value) -> Option<T>,
) -> anyhow::Result<Vec<T>> {
    let (records, _) = client
        .list_all(lgsp_proto::ListRequest {
            kind: kind as i32,
            ..Default::default()
        })
        .await?;
    Ok(records
        .into_iter()
        .filter_map(|r| r.value.and_then(pick))
        .collect())
}

/// A configuration or usage problem found after parsing: exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs the command line; returns the process exit code.
pub(crate) fn main() -> ExitCode {
    quiet_on_broken_pipe();
    lgsp_node::metrics::set_build_commit(env!("LGSP_GIT_COMMIT"));
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
        Command::Registry(cmd) => registry::run(cmd),
        Command::Agency(cmd) => catalog::run_agency(cmd),
        Command::Service(cmd) => catalog::run_service(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Access(cmd) => access::run(cmd),
        Command::Requests(cmd) => requests::run(cmd),
        Command::Inbox(args) => requests::inbox(args),
        Command::Calendar(cmd) => requests::calendar(cmd),
        Command::Call(args) => call::run(args),
        Command::Hub(cmd) => hub::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Node(cmd) => node::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Dataset(cmd) => dataset::run(cmd),
        Command::Status(args) => status::run(args),
        Command::Completion { shell } => completion(shell),
        Command::Man { dir } => man_pages(&dir).map(|written| {
            println!("Wrote {} man page(s) into {}", written.len(), dir.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            if let Some(advice) = unknown_write_advice(&error) {
                eprintln!("{advice}");
            }
            let bad_config = matches!(
                error.downcast_ref::<lgsp_node::config::ConfigError>(),
                Some(lgsp_node::config::ConfigError::Invalid { .. })
            );
            let bad_node_files = error
                .downcast_ref::<lgsp_node::server::NodeError>()
                .is_some_and(lgsp_node::server::NodeError::is_configuration);
            if error.is::<UsageError>() || bad_config || bad_node_files {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Writes the completion script for `shell` to standard output.
fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lgsp", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(())
}

/// Writes a man page for `lgsp` and for each subcommand, at every depth,
/// into `dir`; returns the files written.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot make the directory {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    write_man(&cmd, "lgsp", dir, &mut written)?;
    Ok(written)
}

fn write_man(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    // A subcommand's page is named and titled by its whole path, as git's are.
    // clap names commands with &'static str (without its "string"
    // feature); a page name lives as long as this short command anyway.
    let title: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let usage: &'static str = Box::leak(name.replace('-', " ").into_boxed_str());
    let page = cmd.clone().name(title).bin_name(usage);
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_man(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

/// What a command exits with when its reader went away (`lgsp call ... |
/// head`): 128 + SIGPIPE, as a shell reports a process the signal ended.
const BROKEN_PIPE_EXIT: u8 = 141;

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Rust ignores SIGPIPE, so `println!` into a closed pipe panics (exit
/// 101, with a backtrace hint). A reader that stopped reading is not a
/// failure: exit quietly with [`BROKEN_PIPE_EXIT`] instead.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT.into());
        }
        default(info);
    }));
}

/// An error and its causes on one line: `what failed: why: root cause`.
fn one_line(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return format!(
            "{} ({:?})",
            status.message().replace('\n', " "),
            status.code()
        );
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: not into journald or a file.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command path with what is missing from its help: an argument
    /// without help text, or a leaf command without an `Example:` line.
    fn missing_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = if path.is_empty() {
            cmd.get_name().to_owned()
        } else {
            format!("{path} {}", cmd.get_name())
        };
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path}: --{id} has no help"));
            }
        }
        let subcommands: Vec<_> = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .collect();
        if subcommands.is_empty() {
            let long = cmd
                .get_long_about()
                .map(|t| t.to_string())
                .unwrap_or_default();
            let after = cmd
                .get_after_long_help()
                .or(cmd.get_after_help())
                .map(|t| t.to_string())
                .unwrap_or_default();
            if !long.contains("Example:") && !after.contains("Example:") {
                missing.push(format!("{path}: no Example: in its long help"));
            }
        }
        for sub in subcommands {
            missing_help(sub, &path, missing);
        }
    }

    #[test]
    fn every_flag_has_help_and_every_command_an_example() {
        use clap::CommandFactory;
        let mut missing = Vec::new();
        missing_help(&Cli::command(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "{} missing:\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    #[test]
    fn the_environment_variables_are_listed_once_in_the_top_help() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "LGSP_REGISTRY",
            "LGSP_TLS_DIR",
            "LGSP_DATA_DIR",
            "LGSP_NODE",
            "LGSP_TIME_ZONE",
            "RUST_LOG",
        ] {
            assert_eq!(help.matches(var).count(), 1, "{var} in:\n{help}");
        }
    }

    /// Every command path whose last word is `list` or `status`.
    fn listing_commands(cmd: &clap::Command, path: &str, found: &mut Vec<(String, bool)>) {
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            if ["list", "status"].contains(&sub.get_name()) {
                let has_output = sub
                    .get_arguments()
                    .any(|a| a.get_long() == Some("output") && a.get_short() == Some('o'));
                found.push((path.clone(), has_output));
            }
            listing_commands(sub, &path, found);
        }
    }

    #[test]
    fn every_listing_command_takes_output_json() {
        use clap::CommandFactory;
        let mut found = Vec::new();
        listing_commands(&Cli::command(), "lgsp", &mut found);
        let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        for expected in [
            "lgsp node list",
            "lgsp service list",
            "lgsp agency list",
            "lgsp access list",
            "lgsp requests list",
            "lgsp dataset list",
            "lgsp registry status",
            "lgsp hub peer list",
        ] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
        let without: Vec<&str> = found
            .iter()
            .filter(|(_, has)| !has)
            .map(|(p, _)| p.as_str())
            .collect();
        assert!(without.is_empty(), "no -o/--output on: {without:?}");
    }

    #[test]
    fn man_pages_cover_every_command_with_its_flags_and_examples() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let mut commands = 0;
        fn count(cmd: &clap::Command, n: &mut usize) {
            *n += 1;
            for s in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                count(s, n);
            }
        }
        count(&Cli::command(), &mut commands);
        assert_eq!(written.len(), commands);
        let page = std::fs::read_to_string(dir.path().join("lgsp-node-start.1")).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains("lgsp\\-node\\-start"), "{page}");
        assert!(page.contains("\\-\\-config"), "{page}");
        assert!(page.contains("Example:"), "{page}");
        let top = std::fs::read_to_string(dir.path().join("lgsp.1")).unwrap();
        assert!(
            top.contains("LGSP_REGISTRY"),
            "the environment section: {top}"
        );
    }

    /// The long help of the command at `path` (e.g. ["service", "publish"]).
    fn long_help(path: &[&str]) -> String {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        let mut at = &mut cmd;
        for name in path {
            at = at.find_subcommand_mut(name).unwrap();
        }
        at.render_long_help().to_string()
    }

    fn parsed(args: &[&str]) -> String {
        let mut argv = vec!["lgsp"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(&argv) {
            Ok(cli) => format!("{:?}", cli.command),
            Err(e) => panic!("{argv:?} refused: {e}"),
        }
    }

    #[test]
    fn old_flag_spellings_still_parse_as_the_new_ones() {
        let r = ["--registry", "127.0.0.1:1", "--tls-dir", "/t"];
        let publish = |id: &[&str]| {
            let mut a = vec!["service", "publish"];
            a.extend_from_slice(id);
            a.extend_from_slice(&["--kind", "dataset", "--node", "n1"]);
            a.extend_from_slice(&r);
            parsed(&a)
                .replace("old_id: None, ", "")
                .replace("id: None, old_id: ", "id: ")
        };
        assert_eq!(
            publish(&["--id", "000.00.12.H62/ho-tich"]),
            publish(&["000.00.12.H62/ho-tich"])
        );
        let maintenance = |id: &[&str]| {
            let mut a = vec!["service", "maintenance"];
            a.extend_from_slice(id);
            a.extend_from_slice(&[
                "--force-majeure",
                "--end",
                "2026-12-21 12:00",
                "--reason",
                "x",
            ]);
            a.extend_from_slice(&r);
            parsed(&a)
                .replace("old_id: None, ", "")
                .replace("id: None, old_id: ", "id: ")
        };
        assert_eq!(
            maintenance(&["--id", "000.00.12.H62/ho-tich"]),
            maintenance(&["000.00.12.H62/ho-tich"])
        );
        assert_eq!(
            parsed(&["ca", "init", "--dir", "/ca", "--trust-domain", "t.gov.vn"]),
            parsed(&["ca", "init", "--ca", "/ca", "--trust-domain", "t.gov.vn"])
        );
        let q = [
            "dataset",
            "query",
            "--data-dir",
            "/d",
            "--service",
            "ho-tich",
        ];
        assert_eq!(
            parsed(&[&q[..], &["--filter", "huyen=Tam Dương"]].concat()),
            parsed(&[&q[..], &["--param", "huyen=Tam Dương"]].concat())
        );
        // Both spellings of the service at once is a mistake, said as one.
        assert!(
            Cli::try_parse_from([
                "lgsp",
                "service",
                "publish",
                "000.00.12.H62/a",
                "--id",
                "000.00.12.H62/b",
                "--kind",
                "dataset",
                "--tls-dir",
                "/t",
            ])
            .is_err()
        );
    }

    #[test]
    fn help_shows_the_new_flag_spellings_and_hides_the_old() {
        let publish = long_help(&["service", "publish"]);
        assert!(publish.contains("<SERVICE>"), "{publish}");
        // (`--idempotency-key` is another flag.)
        assert!(!publish.contains("--id <"), "{publish}");
        assert!(
            publish.contains("Example: lgsp service publish 000.00.12.H62/ho-tich"),
            "{publish}"
        );
        let maintenance = long_help(&["service", "maintenance"]);
        assert!(
            maintenance.contains("<SERVICE>") && !maintenance.contains("--id <"),
            "{maintenance}"
        );
        let init = long_help(&["ca", "init"]);
        assert!(init.contains("--ca <DIR>"), "{init}");
        assert!(!init.contains("--dir <"), "{init}");
        let query = long_help(&["dataset", "query"]);
        assert!(query.contains("--param <FIELD=VALUE>"), "{query}");
        assert!(!query.contains("--filter <"), "{query}");
    }

    #[test]
    fn reason_is_optional_on_every_grant_command() {
        let t = [
            "--service",
            "000.00.12.H62/ho-tich",
            "--consumer",
            "000.00.13.H62",
            "--tls-dir",
            "/t",
        ];
        parsed(
            &[
                &["access", "suspend", "--kind", "breach", "--restore", "x"][..],
                &t,
            ]
            .concat(),
        );
        parsed(&[&["access", "terminate", "--kind", "ordered"][..], &t].concat());
        parsed(&[&["access", "revoke", "--kind", "ordered"][..], &t].concat());
        parsed(&[&["access", "resume"][..], &t].concat());
    }

    #[test]
    fn node_init_and_registry_start_read_their_environment() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let env_of = |path: &[&str], flag: &str| {
            let mut at = &cmd;
            for name in path {
                at = at.find_subcommand(name).unwrap();
            }
            at.get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(
            env_of(&["node", "init"], "registry").as_deref(),
            Some("LGSP_REGISTRY")
        );
        assert_eq!(
            env_of(&["registry", "start"], "tls-dir").as_deref(),
            Some("LGSP_TLS_DIR")
        );
        assert_eq!(
            env_of(&["node", "list"], "registry").as_deref(),
            Some("LGSP_REGISTRY")
        );
    }

    #[test]
    fn every_subcommand_has_consistent_arguments() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
