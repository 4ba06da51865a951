//! The commands the demo prints: what a watcher can type in another terminal
//! to do by hand what the demo does (calls, a query, the HTTP service, a
//! grant, the access procedure, the sharing log), with the demo's own
//! addresses and certificate directories filled in.

use super::{DEPARTMENT, DISTRICT, HEALTH, Ports};
use std::fmt;
use std::path::{Path, PathBuf};

/// One `lgsp` command line: the program and its arguments, shown quoted
/// for a POSIX shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shown {
    pub program: String,
    pub args: Vec<String>,
}

/// `word` as a POSIX shell reads it back: in single quotes unless it is
/// made of characters the shell leaves alone.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        Ok(())
    }
}

/// The key of a business registration the sample data holds.
pub(crate) const BUSINESS_KEY: &str = "2500101000";
/// A household record's key.
pub(crate) const HOUSEHOLD_KEY: &str = "TD-00105";
/// What the scenario's termination says, in the grant's history.
pub(crate) const TERMINATION_REASON: &str = "Demo: hết thời hạn thỏa thuận";
/// The scenario's suspension: why, and how Tam Dương restores access.
pub(crate) const SUSPENSION_REASON: &str = "Truy vấn vượt mục đích đăng ký";
pub(crate) const SUSPENSION_RESTORE: &str = "Gửi báo cáo giải trình cho Sở KH&ĐT";

/// The demo's commands, for one running province.
#[derive(Clone, Debug)]
pub(crate) struct Guide {
    /// How to run lgsp (this executable).
    pub lgsp: String,
    pub dir: PathBuf,
    pub ports: Ports,
}

impl Guide {
    pub(crate) fn new(dir: &Path, ports: Ports) -> Self {
        let lgsp = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "lgsp".into());
        Self {
            lgsp,
            dir: dir.to_owned(),
            ports,
        }
    }

    fn lgsp(&self, args: &[&str]) -> Shown {
        Shown {
            program: self.lgsp.clone(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// A registry command as the holder of the certificates in `tls` (a
    /// directory under the demo's).
    fn registry_cmd(&self, args: &[&str], tls: &str) -> Shown {
        let mut shown = self.lgsp(args);
        shown.args.extend([
            "--registry".to_owned(),
            self.ports.registry(),
            "--tls-dir".to_owned(),
            self.path(tls),
        ]);
        shown
    }

    fn node(port: u16) -> String {
        super::addr(port).to_string()
    }

    pub(crate) fn business_service() -> String {
        format!("{DEPARTMENT}/doanh-nghiep")
    }

    /// Tam Dương's application reads a citizen's record from the national
    /// population register, through its node and both hubs.
    pub(crate) fn call_national(&self) -> Shown {
        let node = Self::node(self.ports.district_apps());
        self.lgsp(&[
            "call",
            &super::national::Federation::population_service(),
            "--op",
            "get",
            "--param",
            &format!("key={}", super::national::CITIZEN_KEY),
            "--node",
            &node,
        ])
    }

    /// Tam Dương's application looks a taxpayer up in the Ministry of
    /// Finance's REST system, through its node and the province's hub.
    pub(crate) fn call_ministry(&self) -> Shown {
        let node = Self::node(self.ports.district_apps());
        self.lgsp(&[
            "call",
            &super::ministry::MinistryRest::service(),
            "--op",
            "get",
            "--param",
            &format!("key={}", super::ministry::TAX_CODE),
            "--node",
            &node,
        ])
    }

    /// Tam Dương's application reads one business registration.
    pub(crate) fn call_business(&self) -> Shown {
        let node = Self::node(self.ports.district_apps());
        self.lgsp(&[
            "call",
            &Self::business_service(),
            "--op",
            "get",
            "--param",
            &format!("key={BUSINESS_KEY}"),
            "--node",
            &node,
        ])
    }

    /// Tam Dương's application streams the businesses of one trade, two fields each.
    pub(crate) fn query_business(&self) -> Shown {
        let node = Self::node(self.ports.district_apps());
        self.lgsp(&[
            "call",
            &Self::business_service(),
            "--query",
            "--param",
            "nganh_nghe=Dịch vụ ăn uống",
            "--fields",
            "ma_so_doanh_nghiep,ten_doanh_nghiep",
            "--node",
            &node,
        ])
    }

    /// Tam Dương's application asks the department's HTTP licence system.
    pub(crate) fn call_licence(&self) -> Shown {
        let node = Self::node(self.ports.district_apps());
        self.lgsp(&[
            "call",
            &format!("{DEPARTMENT}/giay-phep"),
            "--op",
            "tra-cuu",
            "--json",
            &format!(r#"{{"ma_so_doanh_nghiep":"{BUSINESS_KEY}"}}"#),
            "--node",
            &node,
        ])
    }

    /// The department's application reads a household record.
    pub(crate) fn call_household(&self) -> Shown {
        let node = Self::node(self.ports.department_apps());
        self.lgsp(&[
            "call",
            &format!("{DISTRICT}/ho-gia-dinh"),
            "--op",
            "get",
            "--param",
            &format!("key={HOUSEHOLD_KEY}"),
            "--node",
            &node,
        ])
    }

    /// Sở Y tế's certificate straight at the department's provider port, as
    /// any gRPC client can call (grpcurl, through the node's reflection).
    pub(crate) fn health_call(&self) -> String {
        let tls = self.path("so-y-te-tls");
        format!(
            "grpcurl -cacert {tls}/ca.pem -cert {tls}/cert.pem -key {tls}/key.pem -d {} {} lgsp.v1.DataExchange/Call",
            quote(&format!(
                r#"{{"service_id":"{}","operation":"get","parameters":{{"key":"{BUSINESS_KEY}"}}}}"#,
                Self::business_service()
            )),
            Self::node(self.ports.department_provider())
        )
    }

    /// `args`, then the business registrations and `consumer` as the grant.
    fn grant_target(&self, args: &[&str], consumer: &str) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend([
            "--service".to_owned(),
            Self::business_service(),
            "--consumer".to_owned(),
            consumer.to_owned(),
        ]);
        all
    }

    /// The provincial admin terminates Tam Dương's grant to the business registrations.
    pub(crate) fn terminate(&self) -> Shown {
        let mut args = self.grant_target(&["access", "terminate"], DISTRICT);
        args.extend(
            ["--kind", "no-longer-needed", "--reason", TERMINATION_REASON].map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.registry_cmd(&args, "admin-tls")
    }

    /// The provincial admin grants Sở Y tế the business registrations directly.
    pub(crate) fn grant(&self) -> Shown {
        let mut args = self.grant_target(&["access", "grant"], HEALTH);
        args.extend(["--reason", "Công văn số 123/UBND"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.registry_cmd(&args, "admin-tls")
    }

    /// The grants of the business registrations, with their state.
    pub(crate) fn access_list(&self) -> Shown {
        self.registry_cmd(
            &["access", "list", "--service", &Self::business_service()],
            "admin-tls",
        )
    }

    /// Tam Dương's admin files an access request named `name`.
    pub(crate) fn file_request(&self, name: &str) -> Shown {
        let tls = format!("admin-{DISTRICT}-tls");
        self.registry_cmd(
            &[
                "requests",
                "file",
                "--service",
                &Self::business_service(),
                "--app-id",
                "mot-cua",
                "--app-name",
                "Một cửa điện tử xã Tam Dương",
                "--purpose",
                "Kiểm tra hộ kinh doanh trên địa bàn",
                "--frequency",
                "hàng ngày",
                "--name",
                name,
            ],
            &tls,
        )
    }

    /// The department's admin approves request `id`.
    pub(crate) fn approve(&self, id: &str) -> Shown {
        let tls = format!("admin-{DEPARTMENT}-tls");
        self.registry_cmd(
            &["requests", "approve", id, "--reason", "Đồng ý cung cấp"],
            &tls,
        )
    }

    /// The department's admin suspends Tam Dương for a breach.
    pub(crate) fn suspend(&self) -> Shown {
        let mut args = self.grant_target(&["access", "suspend"], DISTRICT);
        args.extend(
            [
                "--kind",
                "breach",
                "--reason",
                SUSPENSION_REASON,
                "--restore",
                SUSPENSION_RESTORE,
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.registry_cmd(&args, &format!("admin-{DEPARTMENT}-tls"))
    }

    /// What waits for the department's admin.
    pub(crate) fn inbox(&self) -> Shown {
        self.registry_cmd(&["inbox"], &format!("admin-{DEPARTMENT}-tls"))
    }

    /// The provincial catalog.
    pub(crate) fn service_list(&self) -> Shown {
        self.registry_cmd(&["service", "list"], "admin-tls")
    }

    /// The registry cluster: leader, members, versions.
    pub(crate) fn registry_status(&self) -> Shown {
        self.registry_cmd(&["registry", "status"], "admin-tls")
    }

    /// `agency`'s sharing log, verified against its node's certificate.
    pub(crate) fn audit_verify(&self, agency: &str) -> Shown {
        let log =
            lgsp_node::server::sharing_log_path(&self.dir.join(format!("node-{agency}/data")))
                .display()
                .to_string();
        let cert = self.path(&format!("node-{agency}/tls/cert.pem"));
        // --live: the node is running, and its newest entries wait for the next seal.
        self.lgsp(&["audit", "verify", "--log", &log, "--cert", &cert, "--live"])
    }

    /// The metrics of the department's node.
    pub(crate) fn metrics(&self) -> String {
        format!(
            "curl -s http://{}/metrics",
            Self::node(self.ports.department_metrics())
        )
    }

    /// Every `lgsp` command the guide and the scenario show, for the test
    /// that parses them.
    #[cfg(test)]
    pub(crate) fn all(&self) -> Vec<Shown> {
        vec![
            self.call_business(),
            self.query_business(),
            self.call_licence(),
            self.call_household(),
            self.terminate(),
            self.grant(),
            self.access_list(),
            self.file_request("demo-1"),
            self.approve(&format!("{DISTRICT}/demo-1")),
            self.suspend(),
            self.inbox(),
            self.service_list(),
            self.registry_status(),
            self.audit_verify(DEPARTMENT),
            self.audit_verify(DISTRICT),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn every_command_the_demo_shows_parses_as_an_lgsp_command() {
        let guide = Guide::new(Path::new("/tmp/lgsp-demo"), Ports::new(20000).unwrap());
        for shown in guide.all() {
            let argv = std::iter::once("lgsp".to_owned()).chain(shown.args.iter().cloned());
            if let Err(e) = crate::cli::Cli::try_parse_from(argv) {
                panic!("{shown}\ndoes not parse: {e}");
            }
        }
    }

    #[test]
    fn shown_commands_quote_what_the_shell_would_split() {
        let shown = Shown {
            program: "/usr/bin/lgsp".into(),
            args: vec![
                "call".into(),
                "--param".into(),
                "nganh_nghe=Dịch vụ ăn uống".into(),
                "--json".into(),
                r#"{"a":"it's"}"#.into(),
            ],
        };
        assert_eq!(
            shown.to_string(),
            r#"/usr/bin/lgsp call --param 'nganh_nghe=Dịch vụ ăn uống' --json '{"a":"it'\''s"}'"#
        );
    }

    #[test]
    fn the_commands_use_the_chosen_ports() {
        let guide = Guide::new(Path::new("/tmp/d"), Ports::new(20000).unwrap());
        assert!(
            guide
                .call_business()
                .to_string()
                .contains("--node 127.0.0.1:20009")
        );
        assert!(
            guide
                .call_household()
                .to_string()
                .contains("--node 127.0.0.1:20008")
        );
        assert!(guide.grant().to_string().contains(
            "--registry 127.0.0.1:20000,127.0.0.1:20001,127.0.0.1:20002 --tls-dir /tmp/d/admin-tls"
        ));
        assert!(guide.health_call().contains(" 127.0.0.1:20006 "));
        assert!(guide.metrics().ends_with("127.0.0.1:20010/metrics"));
    }
}
