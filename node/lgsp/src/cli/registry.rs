//! `lgsp registry`: run a registry server and operate the cluster.

use super::{RegistryArgs, UsageError};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lgsp_proto::{AddMemberRequest, StatusResponse};
use lgsp_registry::config::parse_peers;
use lgsp_registry::{RegistryConfig, RegistryError, RegistryServer};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum RegistryCommand {
    /// Run a registry server until SIGTERM or Ctrl-C.
    ///
    /// A new cluster: start every founding server with the same --peers
    /// (each server's id=peer-address) and an empty --data-dir. A restart:
    /// the same command; the data directory has the state. A new member:
    /// `lgsp registry add-member` first, then start it with --join.
    ///
    /// An empty data directory founds (or joins) only if no peer knows this
    /// server's id from a data directory it no longer has; a restart whose
    /// --peers disagree with the membership its data directory holds is
    /// refused. Both exit with code 2 and say what to do.
    ///
    /// Example: lgsp registry start --config /etc/lgsp/registry.toml
    Start(StartArgs),
    /// Show each server's view: version, role, leader, term, applied index
    /// and lag, members (voters and learners).
    ///
    /// Example: lgsp registry status --registry 10.0.0.11:7101,10.0.0.12:7101
    Status {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
    /// Hand leadership to another voter (e.g. before maintenance on the
    /// leader's host); waits until the servers agree on it.
    ///
    /// Example: lgsp registry transfer-leader --to 2
    TransferLeader {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The voter to lead; without it the leader picks the most
        /// caught-up other voter.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Add a server to the cluster as a learner (joint consensus, left
    /// explicitly). Then start the new server with --join and an empty
    /// data directory; the leader promotes it to voter once it has caught
    /// up, so the quorum never depends on a server still catching up.
    ///
    /// The change is made by the leader: sent to another server, it goes on
    /// to the leader that server names. It carries an idempotency key, the
    /// same on every retry: if its outcome stays unknown, the command says
    /// so and prints the key; run it again with --idempotency-key KEY and a
    /// change already made answers with its result instead of "already a
    /// member".
    ///
    /// Example: lgsp registry add-member --id 4 --peer-addr 10.0.0.14:7102 --client-addr
    /// 10.0.0.14:7101
    AddMember {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The new server's id: never one used before, even by a removed server.
        #[arg(long)]
        id: u64,
        /// host:port of the new server's peer listener.
        #[arg(long, value_name = "ADDR")]
        peer_addr: String,
        /// host:port of the new server's client listener.
        #[arg(long, value_name = "ADDR", default_value = "")]
        client_addr: String,
    },
    /// Back up the catalog while the cluster runs, or make a data directory
    /// from a backup to found a new cluster (as `etcdctl snapshot`).
    ///
    /// Example: lgsp registry snapshot save /var/backups/lgsp/catalog.snap
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Remove a server from the cluster. Its id is never to be used again.
    ///
    /// Made by the leader, under an idempotency key, as add-member is: run
    /// again with the --idempotency-key it printed after an unknown outcome.
    ///
    /// Example: lgsp registry remove-member --id 4
    RemoveMember {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The id of the server to remove, as `lgsp registry status` shows it.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum SnapshotCommand {
    /// Save a consistent copy of the whole catalog to FILE while the
    /// cluster runs (admin certificate). The copy holds every write
    /// acknowledged before the command started, at one revision. The
    /// registry server that takes it signs it with its key; the file is
    /// checked (its SHA-256, and the signature against the CA in --tls-dir)
    /// and written to FILE atomically (a temporary file beside it, fsynced,
    /// renamed).
    ///
    /// Example: lgsp registry snapshot save /var/backups/lgsp/catalog-$(date +%F).snap
    Save {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Where to write the backup; replaced whole if it exists.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Make the data directory of one founding server of a new cluster from
    /// a backup. Run it for every founding server, from the same FILE with
    /// the same --peers, then start each with `lgsp registry start` and those
    /// --peers. The backup's members, history and log are not carried over:
    /// the new cluster starts at the backup's catalog revision.
    ///
    /// The file must be signed by a registry server of the province: its
    /// signature is checked against ca.pem in --tls-dir (the new server's
    /// TLS directory), and a file changed after it was taken is refused. A
    /// backup saved before backups were signed is refused too, unless
    /// --accept-unsigned says to trust it.
    ///
    /// The signer's certificate is checked against the province CA's CRL
    /// (--crl FILE, or --ca-dir DIR to sign a current one from the CA's
    /// own records): a backup signed by a revoked registry server is
    /// refused, whatever time it says it was taken, since whoever holds a
    /// leaked key chooses that time. Without a CRL the restore is refused
    /// unless --no-crl-check says so. A signer whose certificate has
    /// expired since is refused unless --accept-expired-signer.
    ///
    /// Example: lgsp registry snapshot restore catalog.snap --crl crl.pem --data-dir
    /// /var/lib/lgsp/registry --id 1 --peers
    /// 1=10.0.0.11:7201/10.0.0.11:7101,2=10.0.0.12:7201/10.0.0.12:7101,3=10.0.0.13:7201/10.0.0.13:7101
    Restore {
        /// The backup written by `lgsp registry snapshot save`.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The new, empty data directory of this server.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// This server's id in the new cluster.
        #[arg(long)]
        id: u64,
        /// Every founding server of the new cluster as
        /// ID=PEER_ADDR[/CLIENT_ADDR], comma-separated, as `registry start`
        /// takes them.
        #[arg(long, value_name = "LIST")]
        peers: String,
        /// Directory with ca.pem (the province CA the backup's signer must
        /// chain to) and cert.pem (whose agency is the province's): this
        /// server's TLS directory.
        #[arg(long, env = "LGSP_TLS_DIR", value_name = "DIR")]
        tls_dir: PathBuf,
        /// Restore a backup that carries no signature (saved by an lgsp
        /// from before backups were signed): only one whose origin you know.
        #[arg(long)]
        accept_unsigned: bool,
        /// The province CA's current CRL (PEM or DER), as `lgsp ca crl
        /// --out` writes it: a backup whose signer it lists is refused. It
        /// must be signed by the CA in --tls-dir's ca.pem and not be past
        /// its next update.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["ca_dir", "no_crl_check"])]
        crl: Option<PathBuf>,
        /// The province CA directory (`lgsp ca init --ca`): a CRL of every
        /// certificate the CA has revoked, published or not, is signed from
        /// it for this check (taking the next CRL number, as `lgsp ca crl`
        /// does; nothing is published).
        #[arg(long, value_name = "DIR", conflicts_with = "no_crl_check")]
        ca_dir: Option<PathBuf>,
        /// Restore without checking the signer against a CRL: only when no
        /// CRL of the province CA can be had any more. A backup signed with
        /// the key of a registry server revoked since (a decommissioned or
        /// stolen server) is then accepted.
        #[arg(long)]
        no_crl_check: bool,
        /// Restore a backup whose signer's certificate has expired since it
        /// was taken (it must still have been valid then, and not be
        /// revoked). An old backup needs it once the registry server that
        /// took it has renewed its certificate (registry certificates last
        /// a year by default); nobody revokes an expired certificate when
        /// its key leaks, so accept only a file from your own backup store.
        #[arg(long)]
        accept_expired_signer: bool,
    },
}

#[derive(Debug, Args)]
pub(super) struct StartArgs {
    /// A TOML file with any of the settings below (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This server's id (a positive number, unique, never reused).
    #[arg(long)]
    id: Option<u64>,
    /// Client API listener (mTLS), e.g. 127.0.0.1:7101.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Peer (Raft) listener (mTLS, registry certificates only), e.g. 127.0.0.1:7201.
    #[arg(long, value_name = "ADDR")]
    peer_listen: Option<SocketAddr>,
    /// Founding members as ID=PEER_ADDR[/CLIENT_ADDR], comma-separated,
    /// e.g. 1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203.
    #[arg(long, value_name = "LIST")]
    peers: Option<String>,
    /// Where the Raft log and the catalog are kept.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Directory with cert.pem, key.pem and ca.pem (a registry certificate).
    #[arg(long, env = "LGSP_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Join an existing cluster (after `add-member`) instead of founding one.
    #[arg(long)]
    join: bool,
}

fn config_from(args: StartArgs) -> Result<RegistryConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            RegistryConfig::from_toml(&text)
                .map_err(|e| UsageError(format!("{}: {e}", path.display())))?
        }
        None => RegistryConfig::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
    }
    if let Some(a) = args.listen {
        config.listen = a;
    }
    if let Some(a) = args.peer_listen {
        config.peer_listen = a;
    }
    if let Some(p) = args.peers {
        config.peers = parse_peers(&p).map_err(|e| UsageError(format!("--peers: {e}")))?;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(dir) = args.tls_dir {
        config.tls = Some(lgsp_certs::TlsFiles::in_dir(&dir));
    }
    config.join |= args.join;
    config.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(config)
}

pub(super) fn run(cmd: RegistryCommand) -> Result<()> {
    let rt = super::runtime()?;
    match cmd {
        RegistryCommand::Start(args) => {
            let config = config_from(args)?;
            rt.block_on(serve(config))
        }
        RegistryCommand::Status { registry, output } => rt.block_on(status(registry, output)),
        RegistryCommand::AddMember {
            registry,
            id,
            peer_addr,
            client_addr,
        } => rt.block_on(async {
            let client = registry.client()?;
            // Keyed by the client (see `--idempotency-key`).
            let r = client
                .add_member(AddMemberRequest {
                    id,
                    peer_address: peer_addr.clone(),
                    client_address: client_addr,
                    idempotency_key: Vec::new(),
                })
                .await?;
            println!("Server {id} ({peer_addr}) is a learner. Start it now with --join and an empty data directory; it becomes a voter once it has caught up.");
            print_members(&r.members);
            Ok(())
        }),
        RegistryCommand::TransferLeader { registry, to } => rt.block_on(async {
            let client = registry.client()?;
            let r = client.transfer_leader(to.unwrap_or(0)).await?;
            println!("Server {} leads now.", r.leader_id);
            Ok(())
        }),
        RegistryCommand::Snapshot { command } => snapshot(&rt, command),
        RegistryCommand::RemoveMember { registry, id } => rt.block_on(async {
            let client = registry.client()?;
            let r = client.remove_member(id).await?;
            println!("Server {id} is no longer a member; stop it, and never reuse id {id}.");
            print_members(&r.members);
            Ok(())
        }),
    }
}

/// What a backup must be signed by: a registry server issued by the CA
/// `creds` trust, of the agency `creds` belong to (the province's: its
/// admin or one of its registry servers), not on `revocation`'s CRL.
fn backup_trust(
    creds: &lgsp_certs::Credentials,
    accept_unsigned: bool,
    revocation: lgsp_registry::backup::Revocation,
    accept_expired_signer: bool,
) -> Result<lgsp_registry::backup::BackupTrust> {
    Ok(lgsp_registry::backup::BackupTrust {
        roots: creds.roots.clone(),
        province: Some(creds.spiffe_id()?.agency),
        accept_unsigned,
        revocation,
        accept_expired_signer,
    })
}

/// The CRL a restore checks the backup's signer against: the file `crl`,
/// or one signed now from the CA directory `ca_dir`; neither is refused
/// unless `no_crl_check`.
fn restore_revocation(
    crl: Option<&std::path::Path>,
    ca_dir: Option<&std::path::Path>,
    no_crl_check: bool,
) -> Result<lgsp_registry::backup::Revocation> {
    use lgsp_registry::backup::Revocation;
    if let Some(file) = crl {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read --crl {}", file.display()))?;
        let der = super::hub::crl_der(&bytes)
            .with_context(|| format!("--crl {} is not a CRL", file.display()))?;
        return Ok(Revocation::Crl {
            der,
            origin: file.display().to_string(),
        });
    }
    if let Some(dir) = ca_dir {
        let mut ca = lgsp_certs::CertificateAuthority::open(dir)
            .with_context(|| format!("--ca-dir {}", dir.display()))?;
        let crl = ca.sign_crl(1)?;
        return Ok(Revocation::Crl {
            der: crl.der,
            origin: format!(
                "number {} signed from the CA directory {}",
                crl.number,
                dir.display()
            ),
        });
    }
    if no_crl_check {
        return Ok(Revocation::NotChecked);
    }
    Err(UsageError(
        "a restore checks that the registry server which signed the backup has not been revoked since: \
         the key of a decommissioned or stolen server can sign a forged catalog dated while its certificate was good. \
         Give the province CA's current CRL with --crl FILE (`lgsp ca crl --ca DIR --out FILE` makes one), \
         or the CA directory with --ca-dir DIR; only if no CRL of the CA can be had any more, --no-crl-check"
            .into(),
    )
    .into())
}

fn signer_of(signed_by: &Option<lgsp_registry::backup::SignedBy>) -> String {
    match signed_by {
        Some(s) => format!("{} (certificate serial {})", s.id, s.serial),
        None => "nobody: an unsigned backup, accepted with --accept-unsigned".into(),
    }
}

fn snapshot(rt: &tokio::runtime::Runtime, command: SnapshotCommand) -> Result<()> {
    use lgsp_registry::backup;
    match command {
        SnapshotCommand::Save { registry, file } => {
            let bytes = rt.block_on(async {
                registry
                    .client()?
                    .snapshot()
                    .await
                    .map_err(anyhow::Error::from)
            })?;
            // The server that signed it just answered over mTLS as a
            // registry server; a restore checks the CRL.
            let trust = backup_trust(
                &registry.credentials()?,
                false,
                backup::Revocation::NotChecked,
                false,
            )?;
            let opened = backup::open(&file, &bytes, &trust).context(
                "the backup received is not the one its server signed; nothing was written",
            )?;
            backup::write_file(&file, &bytes)?;
            let saved = opened.backup;
            let catalog = saved.catalog.unwrap_or_default();
            println!(
                "Saved catalog revision {} (Raft index {}, {} records, {} members) from registry server {} to {} ({} bytes, SHA-256 {}, signed by {}).",
                saved.revision,
                saved.applied_index,
                catalog.records.len(),
                catalog.members.len(),
                saved.server_id,
                file.display(),
                bytes.len(),
                backup::checksum_of(&bytes),
                signer_of(&opened.signed_by)
            );
            Ok(())
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            id,
            peers,
            tls_dir,
            accept_unsigned,
            crl,
            ca_dir,
            no_crl_check,
            accept_expired_signer,
        } => {
            let peers = parse_peers(&peers).map_err(|e| UsageError(format!("--peers: {e}")))?;
            let revocation = restore_revocation(crl.as_deref(), ca_dir.as_deref(), no_crl_check)?;
            let creds = lgsp_certs::Credentials::load(&lgsp_certs::TlsFiles::in_dir(&tls_dir))
                .with_context(|| format!("cannot load the TLS files in {}", tls_dir.display()))?;
            let trust = backup_trust(&creds, accept_unsigned, revocation, accept_expired_signer)?;
            let opened = backup::read_file(&file, &trust)?;
            let saved = opened.backup;
            let restored = backup::restore(&saved, &data_dir, id, &peers)?;
            let revocation = match (&opened.signed_by, opened.crl_number) {
                (None, _) => "",
                (Some(_), Some(n)) => &format!(", not on CRL number {n}"),
                (Some(_), None) => ", not checked against a CRL (--no-crl-check)",
            };
            println!(
                "Restored catalog revision {} ({} records, taken by registry server {}, signed by {}{revocation}) into {} as server {id} of a new cluster of servers {:?}.",
                restored.revision,
                restored.records,
                saved.server_id,
                signer_of(&opened.signed_by),
                data_dir.display(),
                restored.voters
            );
            println!(
                "Restore the other founding servers from the same file with the same --peers, then start each with `lgsp registry start --id N --data-dir DIR --peers ...`."
            );
            Ok(())
        }
    }
}

async fn serve(config: RegistryConfig) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let mut server = match RegistryServer::start(config).await {
        Ok(s) => s,
        Err(RegistryError::Config(why) | RegistryError::Damaged(why)) => {
            return Err(UsageError(why).into());
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "registry server {} serving clients on {} and peers on {}, data in {}",
        server.id,
        server.client_addr(),
        server.peer_addr(),
        data_dir.display()
    );
    tokio::select! {
        result = server.wait() => match result {
            // Found while running (a leader says this server's data
            // directory lost entries): restarting cannot fix it.
            Err(RegistryError::Config(why)) => Err(UsageError(why).into()),
            other => Ok(other?),
        },
        signal = crate::signal::stop_signal() => {
            tracing::info!("{}; shutting down", signal?);
            server.shutdown().await?;
            Ok(())
        }
    }
}

/// What each registry server says of itself, asked one by one; an
/// unreachable server is a row too.
pub(super) async fn server_statuses(
    addresses: &[String],
    creds: &lgsp_certs::Credentials,
) -> Result<Vec<(String, Result<StatusResponse, tonic::Status>)>> {
    let mut answers = Vec::new();
    for addr in addresses {
        let client = lgsp_registry::RegistryClient::new(std::slice::from_ref(addr), creds)?;
        let answer = client.server(0).status(lgsp_proto::StatusRequest {}).await;
        answers.push((addr.clone(), answer.map(tonic::Response::into_inner)));
    }
    Ok(answers)
}

async fn status(registry: RegistryArgs, output: super::output::OutputArgs) -> Result<()> {
    let answers = server_statuses(&registry.addresses(), &registry.credentials()?).await?;
    // Lag is counted from the leader's commit index when the leader
    // answered, else from the highest commit index any server reported.
    let statuses: Vec<&StatusResponse> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .collect();
    let leader = statuses.iter().find(|s| s.role == "leader");
    let reference = leader
        .map(|l| l.commit_index)
        .or_else(|| statuses.iter().map(|s| s.commit_index).max())
        .unwrap_or(0);
    let mut listing = super::output::Listing::new("registry_servers");
    listing.fact("leader_id", leader.map(|l| l.id));
    let mut failures = 0;
    for (addr, answer) in &answers {
        match answer {
            Ok(s) => {
                let mut text = format!(
                    "{addr}: server {} (lgsp {}) is {}{}, term {}, {}",
                    s.id,
                    if s.version.is_empty() {
                        "?"
                    } else {
                        &s.version
                    },
                    s.role,
                    if s.joint_consensus {
                        " (joint consensus)"
                    } else {
                        ""
                    },
                    s.term,
                    if s.leader_id == 0 {
                        "no leader".to_owned()
                    } else {
                        format!("leader {}", s.leader_id)
                    }
                );
                text.push_str(&format!(
                    "\n  applied index {} (lag {}), commit index {}, catalog revision {}, watch history from revision {}",
                    s.applied_index,
                    reference.saturating_sub(s.applied_index),
                    s.commit_index,
                    s.revision,
                    s.compact_revision
                ));
                for m in &s.members {
                    text.push_str(&format!("\n{}", member_line(m)));
                }
                for r in &s.replicas {
                    text.push_str(&format!(
                        "\n  replication to {} ({}): matched index {} (lag {}), {}{}",
                        r.id,
                        if r.voter { "voter" } else { "learner" },
                        r.matched_index,
                        s.last_index.saturating_sub(r.matched_index),
                        r.state,
                        if r.recent_active {
                            ""
                        } else {
                            ", not heard from lately"
                        }
                    ));
                }
                listing.row(
                    text,
                    serde_json::json!({
                        "address": addr,
                        "reachable": true,
                        "id": s.id,
                        "version": s.version,
                        "role": s.role,
                        "joint_consensus": s.joint_consensus,
                        "term": s.term,
                        "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                        "applied_index": s.applied_index,
                        "lag": reference.saturating_sub(s.applied_index),
                        "commit_index": s.commit_index,
                        "catalog_revision": s.revision,
                        "compact_revision": s.compact_revision,
                        "members": s.members.iter().map(|m| serde_json::json!({
                            "id": m.id,
                            "voter": m.voter,
                            "peer_address": m.peer_address,
                            "client_address": m.client_address,
                        })).collect::<Vec<_>>(),
                        "replicas": s.replicas.iter().map(|r| serde_json::json!({
                            "id": r.id,
                            "voter": r.voter,
                            "matched_index": r.matched_index,
                            "lag": s.last_index.saturating_sub(r.matched_index),
                            "state": r.state,
                            "recent_active": r.recent_active,
                        })).collect::<Vec<_>>(),
                    }),
                );
            }
            Err(status) => {
                failures += 1;
                let why = lgsp_certs::tls::explain_status(status);
                listing.row(
                    format!("{addr}: unreachable: {why}"),
                    serde_json::json!({
                        "address": addr,
                        "reachable": false,
                        "error": why,
                    }),
                );
            }
        }
    }
    output.print(&listing)?;
    if failures > 0 && failures == answers.len() {
        anyhow::bail!("no registry server answered");
    }
    Ok(())
}

/// One member of the cluster, as `registry status` shows it.
fn member_line(m: &lgsp_proto::Member) -> String {
    format!(
        "  member {}: {} peer {} client {}",
        m.id,
        if m.voter { "voter" } else { "learner" },
        if m.peer_address.is_empty() {
            "?"
        } else {
            &m.peer_address
        },
        if m.client_address.is_empty() {
            "?"
        } else {
            &m.client_address
        },
    )
}

fn print_members(members: &[lgsp_proto::Member]) {
    for m in members {
        println!("{}", member_line(m));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_advice_after_an_unknown_outcome_prints_a_key_the_command_takes_back() {
        let seed = lgsp_registry::idempotency::new_key();
        let told = super::super::advice(&seed);
        assert!(
            told.contains(&format!("--idempotency-key {}", hex::encode(&seed)))
                && told.contains("within 10 minutes"),
            "{told}"
        );
        assert_eq!(super::super::key_seed(&hex::encode(&seed)).unwrap(), seed);
        let bad = super::super::key_seed("abc").unwrap_err().to_string();
        assert!(bad.contains("32 hex digits"), "{bad}");
    }
}
