//! `lgsp hub rest`: external REST systems the hub calls (a ministry's
//! HTTP/JSON API, or an X-Road security server) and the province services
//! carried to them (provincial admin). Secrets stay on the hub's server.

use super::{RegistryArgs, UsageError, records_of};
use anyhow::{Context, Result, anyhow};
use clap::{Subcommand, ValueEnum};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{RecordKind, RestAuth, RestOperation, RestRoute, RestSystem};
use lgsp_registry::ServiceId;
use lgsp_registry::rest_system;
use std::path::{Path, PathBuf};

/// How the hub authenticates to a REST system.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum Auth {
    /// TLS client certificate: the hub's own.
    ClientCert,
    /// An API key in a header, from the hub's secrets directory.
    ApiKey,
    /// OAuth2 client credentials; the secret from the hub's secrets directory.
    Oauth2,
}

#[derive(Debug, Subcommand)]
pub(super) enum RestCommand {
    /// Add (or update) an external REST system the hub calls over HTTPS.
    /// The catalog holds only what is not secret; an API key or OAuth2
    /// client secret given here is copied into --secrets-dir (run it on the
    /// hub's server, with the directory `lgsp hub start --rest-secrets`
    /// reads), never into the catalog.
    ///
    /// Example: lgsp hub rest add --name bo-tai-chinh --base-url https://api.mof.gov.vn/v1
    /// --ca mof-ca.pem --auth api-key --api-key-header X-API-Key --api-key-file key.txt
    /// --secrets-dir /etc/lgsp-hub/rest-secrets
    Add {
        #[command(flatten)]
        registry: RegistryArgs,
        /// A short name for the system.
        #[arg(long)]
        name: String,
        /// Its base URL, https:// (for an X-Road security server, its
        /// address: calls go to {base-url}/r1/...).
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// The CA certificate(s), PEM, its server certificate chains to.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// How the hub authenticates.
        #[arg(long, value_enum)]
        auth: Auth,
        /// API key auth: the header carrying the key.
        #[arg(long, value_name = "HEADER", default_value = "X-API-Key")]
        api_key_header: String,
        /// API key auth: a file holding the key, copied into --secrets-dir.
        #[arg(long, value_name = "FILE")]
        api_key_file: Option<PathBuf>,
        /// OAuth2: the token endpoint, https://.
        #[arg(long, value_name = "URL")]
        token_url: Option<String>,
        /// OAuth2: the client id.
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
        /// OAuth2: a file holding the client secret, copied into --secrets-dir.
        #[arg(long, value_name = "FILE")]
        client_secret_file: Option<PathBuf>,
        /// The hub's secrets directory, where a given secret file is
        /// installed as <name>.api-key or <name>.client-secret (mode 0600).
        #[arg(long, value_name = "DIR")]
        secrets_dir: Option<PathBuf>,
        /// The deadline of each call, in milliseconds (default 10000).
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u32>,
        /// Calls in flight at once to the system (default 256); more are
        /// refused with RESOURCE_EXHAUSTED.
        #[arg(long, value_name = "N")]
        max_in_flight: Option<u32>,
        /// Calls per second to the system (default 10000); more are refused
        /// with RESOURCE_EXHAUSTED.
        #[arg(long, value_name = "N")]
        rate: Option<u32>,
        /// The system is an X-Road security server, and the hub calls as
        /// this X-Road client: INSTANCE/CLASS/MEMBER[/SUBSYSTEM].
        #[arg(long, value_name = "ID")]
        xroad_client: Option<String>,
    },
    /// Carry a province service (published under the hub's agency, served
    /// by the hub's node) to a REST system: each --op maps an operation to
    /// a method and a path template; `?a,b` names the parameters sent as
    /// the query; the payload is the JSON body of POST, PUT and PATCH.
    ///
    /// Example: lgsp hub rest route --service 000.00.00.H62/thue --system bo-tai-chinh
    /// --op 'get=GET /citizens/{id}?nam,loai' --op 'create=POST /citizens'
    Route {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The province service.
        #[arg(long)]
        service: ServiceId,
        /// The REST system's name.
        #[arg(long)]
        system: String,
        /// An operation: NAME=METHOD /path/{param}[?query,params]; repeat
        /// for each.
        #[arg(long = "op", value_name = "SPEC", required = true)]
        ops: Vec<String>,
        /// For an X-Road security server: the provider's service id,
        /// INSTANCE/CLASS/MEMBER[/SUBSYSTEM]/SERVICE.
        #[arg(long, value_name = "ID")]
        xroad_service: Option<String>,
    },
    /// Stop carrying a service to its REST system (calls to it are then
    /// refused as not served).
    ///
    /// Example: lgsp hub rest unroute --service 000.00.00.H62/thue
    Unroute {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The province service.
        #[arg(long)]
        service: ServiceId,
    },
    /// Remove a REST system; its routes go first (`lgsp hub rest unroute`).
    ///
    /// Example: lgsp hub rest remove --name bo-tai-chinh
    Remove {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The system's name.
        #[arg(long)]
        name: String,
    },
    /// List the REST systems and the services carried to them.
    ///
    /// Example: lgsp hub rest list
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
}

/// Parses `NAME=METHOD /path[?q1,q2]`.
pub(super) fn parse_op(spec: &str) -> Result<RestOperation, String> {
    let usage = || {
        format!(
            "operation {spec:?} is not NAME=METHOD /path[?query,params], e.g. 'get=GET /citizens/{{id}}?nam'"
        )
    };
    let (name, rest) = spec.split_once('=').ok_or_else(usage)?;
    let (method, target) = rest.trim().split_once(' ').ok_or_else(usage)?;
    let target = target.trim();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (
            p,
            q.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        None => (target, Vec::new()),
    };
    let op = RestOperation {
        name: name.trim().to_owned(),
        method: method.trim().to_ascii_uppercase(),
        path: path.to_owned(),
        query,
    };
    rest_system::check_operation(&op)?;
    Ok(op)
}

fn install_secret(dir: &Path, name: &str, kind: &str, from: &Path) -> Result<PathBuf> {
    let secret =
        std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
    if secret.trim().is_empty() {
        return Err(UsageError(format!("{} is empty", from.display())).into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.{kind}"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, secret.trim().as_bytes())?;
    Ok(path)
}

async fn record_revision(
    client: &lgsp_registry::RegistryClient,
    kind: RecordKind,
    key: &str,
) -> Result<Option<(Value, u64)>> {
    match client.get(kind, key, false).await {
        Ok(r) => {
            let record = r.record.unwrap_or_default();
            let revision = record.meta.as_ref().map_or(0, |m| m.mod_revision);
            Ok(record.value.map(|v| (v, revision)))
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(anyhow!(s)),
    }
}

pub(super) async fn run(cmd: RestCommand) -> Result<()> {
    match cmd {
        RestCommand::Add {
            registry,
            name,
            base_url,
            ca,
            auth,
            api_key_header,
            api_key_file,
            token_url,
            client_id,
            client_secret_file,
            secrets_dir,
            timeout_ms,
            max_in_flight,
            rate,
            xroad_client,
        } => {
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("cannot read {}", ca.display()))?;
            let xroad = xroad_client
                .as_deref()
                .map(rest_system::parse_xroad_client)
                .transpose()
                .map_err(UsageError)?;
            let mut system = RestSystem {
                name: name.clone(),
                base_url,
                ca_pem,
                timeout_ms: timeout_ms.unwrap_or(0),
                max_in_flight: max_in_flight.unwrap_or(0),
                rate_per_second: rate.unwrap_or(0),
                xroad,
                ..Default::default()
            };
            let secret = match auth {
                Auth::ClientCert => {
                    system.auth = RestAuth::ClientCert as i32;
                    None
                }
                Auth::ApiKey => {
                    system.auth = RestAuth::ApiKey as i32;
                    system.api_key_header = api_key_header;
                    api_key_file.map(|f| ("api-key", f))
                }
                Auth::Oauth2 => {
                    system.auth = RestAuth::Oauth2 as i32;
                    system.token_url = token_url.ok_or_else(|| {
                        UsageError("--auth oauth2 needs --token-url and --client-id".into())
                    })?;
                    system.client_id = client_id.ok_or_else(|| {
                        UsageError("--auth oauth2 needs --token-url and --client-id".into())
                    })?;
                    client_secret_file.map(|f| ("client-secret", f))
                }
            };
            let installed = match secret {
                Some((kind, file)) => {
                    let dir = secrets_dir.ok_or_else(|| {
                        UsageError(format!(
                            "a secret file needs --secrets-dir: the hub's directory (lgsp hub start --rest-secrets) where it is installed as {name}.{kind}"
                        ))
                    })?;
                    Some(install_secret(&dir, &name, kind, &file)?)
                }
                None => None,
            };
            let client = registry.client()?;
            let revision = record_revision(&client, RecordKind::RestSystem, &name)
                .await?
                .map_or(0, |(_, r)| r);
            let rev = client
                .put(Value::RestSystem(system), revision)
                .await?
                .revision;
            println!("REST system {name} set (revision {rev})");
            if let Some(path) = installed {
                println!("Its secret is in {} (not in the catalog)", path.display());
            }
        }
        RestCommand::Route {
            registry,
            service,
            system,
            ops,
            xroad_service,
        } => {
            let operations = ops
                .iter()
                .map(|o| parse_op(o))
                .collect::<Result<Vec<_>, _>>()
                .map_err(UsageError)?;
            let route = RestRoute {
                service_id: service.to_string(),
                system: system.clone(),
                operations,
                xroad_service: xroad_service.unwrap_or_default(),
            };
            let client = registry.client()?;
            let revision = record_revision(&client, RecordKind::RestRoute, &route.service_id)
                .await?
                .map_or(0, |(_, r)| r);
            let rev = client
                .put(Value::RestRoute(route), revision)
                .await?
                .revision;
            println!("{service} is carried to REST system {system} (revision {rev})");
        }
        RestCommand::Unroute { registry, service } => {
            let client = registry.client()?;
            let key = service.to_string();
            let Some((_, revision)) = record_revision(&client, RecordKind::RestRoute, &key).await?
            else {
                return Err(anyhow!(
                    "{service} is not carried to a REST system (see `lgsp hub rest list`)"
                ));
            };
            let rev = client
                .delete(RecordKind::RestRoute, &key, revision)
                .await?
                .revision;
            println!("{service} is no longer carried to a REST system (revision {rev})");
        }
        RestCommand::Remove { registry, name } => {
            let client = registry.client()?;
            let Some((_, revision)) =
                record_revision(&client, RecordKind::RestSystem, &name).await?
            else {
                return Err(anyhow!(
                    "there is no REST system {name:?} (see `lgsp hub rest list`)"
                ));
            };
            let rev = client
                .delete(RecordKind::RestSystem, &name, revision)
                .await?
                .revision;
            println!("REST system {name} removed (revision {rev})");
        }
        RestCommand::List { registry, output } => {
            let client = registry.client()?;
            let routes = records_of(&client, RecordKind::RestRoute, |v| match v {
                Value::RestRoute(r) => Some(r),
                _ => None,
            })
            .await?;
            let mut listing = super::output::Listing::new("rest_systems");
            for v in records_of(&client, RecordKind::RestSystem, Some).await? {
                let Value::RestSystem(s) = v else { continue };
                let auth = match RestAuth::try_from(s.auth) {
                    Ok(RestAuth::ClientCert) => "client-cert".to_owned(),
                    Ok(RestAuth::ApiKey) => format!("api-key ({})", s.api_key_header),
                    Ok(RestAuth::Oauth2) => format!("oauth2 ({})", s.client_id),
                    _ => "?".to_owned(),
                };
                let xroad = s
                    .xroad
                    .as_ref()
                    .map(rest_system::xroad_client_header)
                    .unwrap_or_default();
                let carried: Vec<&RestRoute> =
                    routes.iter().filter(|r| r.system == s.name).collect();
                let mut line = format!(
                    "{:<16} {:<40} {}{}",
                    s.name,
                    s.base_url,
                    auth,
                    if xroad.is_empty() {
                        String::new()
                    } else {
                        format!(" X-Road client {xroad}")
                    }
                );
                for r in &carried {
                    let ops: Vec<String> = r
                        .operations
                        .iter()
                        .map(|o| format!("{}={} {}", o.name, o.method, o.path))
                        .collect();
                    line.push_str(&format!("\n  carries {}: {}", r.service_id, ops.join("; ")));
                }
                listing.row(
                    line,
                    serde_json::json!({
                        "name": s.name,
                        "base_url": s.base_url,
                        "auth": auth,
                        "xroad_client": xroad,
                        "timeout_ms": s.timeout_ms,
                        "services": carried.iter().map(|r| r.service_id.clone()).collect::<Vec<_>>(),
                    }),
                );
            }
            output
                .print(&listing.when_empty("No REST systems (add one with `lgsp hub rest add`)"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_op;

    #[test]
    fn an_operation_spec_gives_method_path_and_query() {
        let op = parse_op("get=GET /citizens/{id}?nam, loai").unwrap();
        assert_eq!(op.name, "get");
        assert_eq!(op.method, "GET");
        assert_eq!(op.path, "/citizens/{id}");
        assert_eq!(op.query, ["nam", "loai"]);
        let op = parse_op("tao=post /citizens").unwrap();
        assert_eq!((op.method.as_str(), op.query.len()), ("POST", 0));
        assert!(parse_op("get GET /x").unwrap_err().contains("NAME=METHOD"));
        assert!(parse_op("get=GET x").unwrap_err().contains("start with /"));
    }
}
