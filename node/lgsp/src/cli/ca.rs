//! `lgsp ca`: the provincial PKI from the command line.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lgsp_certs::ca::{CertificateAuthority, LeafSpec, make_csr, parse_reason};
use lgsp_certs::inspect::{CertInfo, CrlInfo};
use lgsp_certs::{AgencyCode, Role, SpiffeId, TlsFiles, write_atomic, write_new};
use lgsp_registry::calendar::WorkCalendar;
use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// Make a new root CA (ECDSA P-256) in DIR. Run once, at the provincial IT
    /// department; the key file is written with mode 0600 and an existing CA
    /// is never overwritten.
    ///
    /// Example: lgsp ca init --ca /etc/lgsp/ca --trust-domain phutho.gov.vn --name "CA tỉnh Phú
    /// Thọ"
    Init {
        /// Directory for ca.crt, ca.key and ca.json (created if missing):
        /// the CA directory every other `lgsp ca` command takes as --ca.
        /// (`--dir` is the old spelling, still accepted.)
        #[arg(long = "ca", alias = "dir", value_name = "DIR")]
        dir: PathBuf,
        /// The province's trust domain, a DNS name, e.g. phutho.gov.vn.
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: String,
        /// Display name of the CA (UTF-8), e.g. "CA tỉnh Phú Thọ".
        #[arg(long)]
        name: Option<String>,
        /// How long the CA certificate is valid, in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Make a key and issue its certificate in one step (development and
    /// tests). In production use `csr` on the agency's server and `sign` here,
    /// so the key never leaves the server that uses it.
    ///
    /// Example: lgsp ca issue --ca /etc/lgsp/ca --role admin --agency 000.00.12.H62 --name admin-1
    /// --out /etc/lgsp/admin
    Issue {
        /// The CA directory made by `lgsp ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[command(flatten)]
        leaf: LeafArgs,
        /// Directory for cert.pem, key.pem (mode 0600) and ca.pem.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// On the agency's server: make a key and a certificate signing request
    /// (CSR) for the CA. The key stays in DIR; send only csr.pem.
    ///
    /// Example: lgsp ca csr --role node --agency 000.00.12.H62 --name node-1 --trust-domain
    /// phutho.gov.vn --dns node.stp.phutho.gov.vn --out /etc/lgsp/tls
    Csr {
        #[command(flatten)]
        leaf: LeafArgs,
        /// The province's trust domain, e.g. phutho.gov.vn.
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: String,
        /// Directory for key.pem (mode 0600) and csr.pem.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// At the provincial IT department: check a CSR and sign it. A CSR whose
    /// identity is malformed or of another trust domain is refused.
    ///
    /// Example: lgsp ca sign --ca /etc/lgsp/ca --csr csr.pem --out cert.pem --days 365
    Sign {
        /// The CA directory made by `lgsp ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The csr.pem made by `lgsp ca csr`.
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Where to write the signed certificate (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// The identity already has a live certificate and this one succeeds
        /// it (renewal): sign anyway. Revoke the old one once the new one is
        /// installed.
        #[arg(long)]
        renew: bool,
        /// Sign an `admin` or `registry` certificate for an identity this CA
        /// never issued before: such a certificate can change the catalog
        /// or join the registry.
        #[arg(long)]
        privileged: bool,
        /// Sign the IP addresses the CSR asks for even where the name
        /// policy does not list them: you checked that the agency serves
        /// there. DNS names always need the policy (`lgsp ca policy`).
        #[arg(long)]
        allow_ip: bool,
        /// Do not ask for confirmation at a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Which host names the CA vouches for: `ca sign` refuses a DNS name or
    /// IP address the policy does not allow the agency asking.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Revoke a certificate the CA issued. Then publish a new CRL (`lgsp ca
    /// publish-crl`) for peers to refuse it.
    ///
    /// Example: lgsp ca revoke --ca /etc/lgsp/ca --serial 5c:34:7d:83 --reason key-compromise &&
    /// lgsp ca publish-crl --ca /etc/lgsp/ca
    Revoke {
        /// The CA directory made by `lgsp ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The serial in hex, as `lgsp ca show` prints it (colons allowed).
        #[arg(long)]
        serial: String,
        /// unspecified, key-compromise, affiliation-changed, superseded or
        /// cessation-of-operation.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Sign a certificate revocation list of every revoked certificate.
    ///
    /// Example: lgsp ca crl --ca /etc/lgsp/ca --out crl.pem --days 7
    Crl {
        /// The CA directory made by `lgsp ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Where to write the CRL (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Days until the next CRL is due.
        #[arg(long, default_value_t = 7)]
        days: i64,
    },
    /// Sign a CRL and publish it in the registry's catalog: every node and
    /// registry server refuses the revoked certificates within a second,
    /// without restart. Needs an admin certificate.
    ///
    /// Example: lgsp ca publish-crl --ca /etc/lgsp/ca --registry 10.0.0.11:7101 --tls-dir
    /// /etc/lgsp/admin
    PublishCrl {
        /// The CA directory made by `lgsp ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[command(flatten)]
        registry: super::RegistryArgs,
        /// Days until the next CRL is due.
        #[arg(long, default_value_t = 7)]
        days: i64,
    },
    /// Print what a certificate, CSR or CRL file says, in plain words.
    ///
    /// Example: lgsp ca show /etc/lgsp/tls/cert.pem
    Show {
        /// A PEM or DER file.
        file: PathBuf,
        #[command(flatten)]
        zone: super::time::ZoneArg,
    },
}

/// The identity and hosts a certificate is for.
#[derive(Debug, Args)]
pub(super) struct LeafArgs {
    /// node, registry, hub or admin.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// The agency's QCVN 102 code, e.g. 000.00.12.H62.
    #[arg(long, value_name = "CODE")]
    agency: AgencyCode,
    /// The holder's name, the SPIFFE ID's last part (e.g. node-1).
    #[arg(long)]
    name: String,
    /// The agency's display name (UTF-8), e.g. "Sở Tư pháp tỉnh Phú Thọ".
    #[arg(long)]
    display_name: Option<String>,
    /// DNS names the holder serves under (repeat the flag for several; none
    /// by default: a certificate carries only the names asked for).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// IP addresses the holder serves on (repeat the flag for several; none
    /// by default).
    #[arg(long = "ip", value_name = "ADDR")]
    ip: Vec<IpAddr>,
}

/// `lgsp ca policy`.
#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Let an agency's certificates carry DNS names under a suffix, or IP
    /// addresses.
    ///
    /// Example: lgsp ca policy allow --ca /etc/lgsp/ca --agency 000.00.12.H62
    /// --dns-suffix .stp.phutho.gov.vn --ip 10.0.12.5
    Allow {
        /// The CA directory made by `lgsp ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The agency's QCVN 102 code, or `*` for every agency (a province
        /// run on one host).
        #[arg(long, value_name = "CODE")]
        agency: String,
        /// A DNS suffix, e.g. .stp.phutho.gov.vn: that name and every name
        /// under it (repeat for several).
        #[arg(long = "dns-suffix", value_name = "SUFFIX")]
        dns_suffixes: Vec<String>,
        /// An IP address, allowed exactly (repeat for several).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<IpAddr>,
    },
    /// Print the policy.
    ///
    /// Example: lgsp ca policy show --ca /etc/lgsp/ca
    Show {
        /// The CA directory made by `lgsp ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
    },
}

fn run_policy(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Allow {
            ca,
            agency,
            dns_suffixes,
            ips,
        } => {
            if dns_suffixes.is_empty() && ips.is_empty() {
                return Err(super::UsageError(
                    "name at least one --dns-suffix or --ip to allow".into(),
                )
                .into());
            }
            let mut ca = CertificateAuthority::open(&ca)?;
            ca.allow_names(&agency, &dns_suffixes, &ips)?;
            println!("Agency {agency} may now ask for:");
            print_names(&ca, Some(&agency));
        }
        PolicyCommand::Show { ca } => {
            let ca = CertificateAuthority::open(&ca)?;
            print_names(&ca, None);
        }
    }
    Ok(())
}

fn print_names(ca: &CertificateAuthority, only: Option<&str>) {
    let mut any = false;
    for (agency, names) in ca.name_policy().entries() {
        if only.is_some_and(|o| o != agency) {
            continue;
        }
        any = true;
        let hosts: Vec<String> = names
            .dns_suffixes
            .iter()
            .map(|s| format!("*.{s}"))
            .chain(names.ips.iter().map(ToString::to_string))
            .collect();
        println!("  {agency}: {}", hosts.join(", "));
    }
    if !any {
        println!("  (nothing: certificates signed from CSRs carry no DNS name or IP address)");
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: lgsp_certs::CertError| e.to_string())
}

impl LeafArgs {
    fn spec(&self, trust_domain: &str, days: i64) -> Result<LeafSpec> {
        let id = SpiffeId::new(trust_domain, self.agency.clone(), self.role, &self.name)?;
        let mut spec = LeafSpec::for_days(id, days)?;
        spec.display_name = self.display_name.clone();
        spec.dns = self.dns.clone();
        spec.ips = self.ip.clone();
        for d in &spec.dns {
            lgsp_certs::ca::validate_dns_name(d)?;
        }
        Ok(spec)
    }
}

pub(super) fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init {
            dir,
            trust_domain,
            name,
            days,
        } => {
            let name = name.unwrap_or_else(|| format!("lgsp provincial CA {trust_domain}"));
            let ca = CertificateAuthority::init(&dir, &trust_domain, &name, days)?;
            println!(
                "Made CA {:?} for trust domain {} in {}",
                ca.name(),
                ca.trust_domain(),
                dir.display()
            );
            println!(
                "  {} is the trust anchor to give every node and server",
                dir.join("ca.crt").display()
            );
            println!(
                "  {} is the CA key (mode 0600): keep it offline and backed up",
                dir.join("ca.key").display()
            );
        }
        CaCommand::Issue {
            ca,
            leaf,
            out,
            days,
        } => {
            let mut ca = CertificateAuthority::open(&ca)?;
            let spec = leaf.spec(ca.trust_domain(), days)?;
            let files = TlsFiles::in_dir(&out);
            refuse_existing(&[&files.cert, &files.key])?;
            let issued = ca.issue(&spec)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            write_new(&files.key, issued.key_pem.as_bytes(), 0o600)?;
            write_new(&files.cert, issued.cert_pem.as_bytes(), 0o644)?;
            write_atomic(&files.ca, ca.cert_pem().as_bytes(), 0o644)?;
            println!("Issued {} (serial {})", spec.id, issued.serial);
            println!(
                "  wrote {}, {} (mode 0600) and {}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            );
        }
        CaCommand::Csr {
            leaf,
            trust_domain,
            out,
        } => {
            let spec = leaf.spec(&trust_domain, 365)?;
            let key_path = out.join("key.pem");
            let csr_path = out.join("csr.pem");
            refuse_existing(&[&key_path, &csr_path])?;
            let (csr_pem, key_pem) = make_csr(&spec)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            write_new(&key_path, key_pem.as_bytes(), 0o600)?;
            write_new(&csr_path, csr_pem.as_bytes(), 0o644)?;
            println!("Made a key and a signing request for {}", spec.id);
            println!(
                "  {} stays here (mode 0600); send {} to the provincial IT department (Sở KH&CN)",
                key_path.display(),
                csr_path.display()
            );
        }
        CaCommand::Sign {
            ca,
            csr,
            out,
            days,
            renew,
            privileged,
            allow_ip,
            yes,
        } => {
            let mut ca = CertificateAuthority::open(&ca)?;
            let pem = std::fs::read_to_string(&csr)
                .with_context(|| format!("cannot read {}", csr.display()))?;
            let mut request = ca.check_csr(&pem, &csr, days)?;
            if allow_ip {
                request.vouch_for_ips();
            }
            ca.check_names(&request)?;
            refuse_existing(&[&out])?;
            let spec = &request.spec;
            let id = spec.id.clone();
            show_request(spec);
            let live = ca.live_for(&id);
            if let Some(first) = live.first()
                && !renew
            {
                anyhow::bail!(
                    "{id} already has a live certificate (serial {}, valid until {}): a second one would let two holders act as it. Renewing it? Pass --renew, install the new certificate, then revoke serial {} (`lgsp ca revoke --reason superseded`)",
                    first.serial,
                    unix_date(first.not_after_unix),
                    first.serial
                );
            }
            if matches!(id.role, Role::Admin | Role::Registry) && !ca.has_issued(&id) && !privileged
            {
                anyhow::bail!(
                    "{id} is a{} {} certificate for a new identity: it {}. Pass --privileged if that is intended",
                    if id.role == Role::Admin { "n" } else { "" },
                    id.role,
                    if id.role == Role::Admin {
                        "may change every record of the provincial catalog"
                    } else {
                        "may join the provincial registry and receive every catalog change"
                    }
                );
            }
            if !yes && std::io::stdin().is_terminal() && !confirm("Sign this certificate?")? {
                anyhow::bail!("not signed: the operator declined");
            }
            let (cert_pem, serial) = ca.sign(request)?;
            write_new(&out, cert_pem.as_bytes(), 0o644)?;
            println!("Signed {id} (serial {serial}) into {}", out.display());
        }
        CaCommand::Revoke { ca, serial, reason } => {
            let reason = parse_reason(&reason)?;
            let ca_dir = ca.clone();
            let mut ca = CertificateAuthority::open(&ca)?;
            let serial = ca.revoke(&serial, reason)?;
            println!(
                "Revoked serial {serial}. Peers refuse it once the new CRL is published: run \
                 `lgsp ca publish-crl --ca {}` (with LGSP_REGISTRY and an admin LGSP_TLS_DIR); \
                 `lgsp ca crl` only writes a CRL file",
                ca_dir.display()
            );
        }
        CaCommand::Crl { ca, out, days } => {
            let mut ca = CertificateAuthority::open(&ca)?;
            let crl = ca.sign_crl(days)?;
            write_atomic(&out, crl.pem.as_bytes(), 0o644)?;
            println!(
                "Signed CRL number {} listing {} revoked certificate(s) into {}",
                crl.number,
                crl.revoked.len(),
                out.display()
            );
        }
        CaCommand::PublishCrl { ca, registry, days } => {
            let mut ca = CertificateAuthority::open(&ca)?;
            let rt = super::runtime()?;
            let crl = ca.sign_crl(days)?;
            let revision = rt.block_on(async {
                let client = registry.client()?;
                let r = client
                    .put(
                        lgsp_proto::catalog_record::Value::Crl(lgsp_proto::Crl {
                            der: crl.der.clone(),
                            number: crl.number,
                            revoked_serials: crl.revoked.clone(),
                        }),
                        0,
                    )
                    .await?;
                anyhow::Ok(r.revision)
            })?;
            println!(
                "Published CRL number {} ({} revoked certificate(s)) at catalog revision {revision}",
                crl.number,
                crl.revoked.len(),
            );
        }
        CaCommand::Show { file, zone } => show(&file, &zone.calendar()?)?,
        CaCommand::Policy(cmd) => run_policy(cmd)?,
    }
    Ok(())
}

fn refuse_existing(paths: &[&Path]) -> Result<()> {
    for p in paths {
        if p.exists() {
            bail!("{} already exists; refusing to overwrite it", p.display());
        }
    }
    Ok(())
}

/// `t` on the province's clocks (the offset its time zone has at `t`).
fn in_zone(cal: &WorkCalendar, t: time::OffsetDateTime) -> time::OffsetDateTime {
    let offset = jiff::tz::TimeZone::get(cal.time_zone())
        .ok()
        .zip(jiff::Timestamp::from_second(t.unix_timestamp()).ok())
        .map_or(0, |(tz, at)| tz.to_offset(at).seconds());
    time::UtcOffset::from_whole_seconds(offset).map_or(t, |o| t.to_offset(o))
}

fn show(file: &Path, cal: &WorkCalendar) -> Result<()> {
    let cert = |der: &[u8]| -> Result<CertInfo> {
        let mut info = CertInfo::from_der(der, file)?;
        info.not_before = in_zone(cal, info.not_before);
        info.not_after = in_zone(cal, info.not_after);
        Ok(info)
    };
    let crl = |der: &[u8]| -> Result<CrlInfo> {
        let mut info = CrlInfo::from_der(der, file)?;
        info.this_update = in_zone(cal, info.this_update);
        info.next_update = info.next_update.map(|t| in_zone(cal, t));
        Ok(info)
    };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let blocks = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => pem_blocks(text, file)?,
        _ => vec![(String::new(), bytes)],
    };
    for (i, (label, der)) in blocks.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match label.as_str() {
            "CERTIFICATE" => println!("{}", cert(der)?),
            "X509 CRL" => println!("{}", crl(der)?),
            "CERTIFICATE REQUEST" => show_csr(der, file)?,
            "" => match cert(der) {
                Ok(info) => println!("{info}"),
                Err(_) => println!(
                    "{}",
                    crl(der).with_context(|| {
                        format!("{} is neither a certificate nor a CRL", file.display())
                    })?
                ),
            },
            other => bail!(
                "{}: a PEM block {other:?} is not something lgsp shows (certificates, CSRs and CRLs are)",
                file.display()
            ),
        }
    }
    Ok(())
}

fn pem_blocks(text: &str, file: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    use lgsp_certs::inspect::pem_blocks as parse;
    parse(text).with_context(|| format!("{}: malformed PEM", file.display()))
}

fn show_csr(der: &[u8], file: &Path) -> Result<()> {
    let info = lgsp_certs::inspect::CsrInfo::from_der(der, file)?;
    println!("{info}");
    Ok(())
}

/// Prints what a certificate from `spec` will say, for the operator to
/// check before it is signed.
fn show_request(spec: &lgsp_certs::LeafSpec) {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            items.join(", ")
        }
    };
    println!("About to sign:");
    println!("  identity:      {}", spec.id);
    println!(
        "  organisation:  {}",
        spec.display_name.as_deref().unwrap_or("(none)")
    );
    println!("  DNS names:     {}", list(spec.dns.clone()));
    println!(
        "  IP addresses:  {}",
        list(spec.ips.iter().map(ToString::to_string).collect())
    );
    println!(
        "  valid:         {} to {}",
        unix_date(spec.not_before.unix_timestamp()),
        unix_date(spec.not_after.unix_timestamp())
    );
}

/// `unix` seconds as a UTC date, YYYY-MM-DD.
fn unix_date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(
        |_| unix.to_string(),
        |t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
    )
}

/// Asks `question` at the terminal; true on "y" or "yes".
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}
