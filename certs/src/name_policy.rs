//! Which host names the CA vouches for: per agency, the DNS suffixes its
//! servers may be named under and the IP addresses they may be reached on.
//!
//! A certificate's DNS and IP SANs are a claim the CA makes to any client
//! that checks host names (browsers, `curl`, the tools' `client_endpoint`):
//! "this key belongs to that host". An agency asking for another agency's
//! host name, or a ministry's, must not get it just by writing it in a CSR.
//! The policy is kept in the CA's state file and changed with
//! `lgsp ca policy allow`.

use crate::error::{CertError, Result};
use crate::identity::AgencyCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The agency entry that applies to every agency: for a province run on one
/// host (tests, the demo), where every server is `localhost`.
pub const EVERY_AGENCY: &str = "*";

/// The host names one agency's certificates may carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgencyNames {
    /// DNS suffixes, lower case without a leading dot: `stp.vinhphuc.gov.vn`
    /// allows that name and every name under it (`node1.stp.vinhphuc.gov.vn`),
    /// not `xstp.vinhphuc.gov.vn`.
    #[serde(default)]
    pub dns_suffixes: Vec<String>,
    /// IP addresses, each allowed exactly.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// The host names the CA vouches for, per agency code (or [`EVERY_AGENCY`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NamePolicy {
    agencies: BTreeMap<String, AgencyNames>,
}

impl NamePolicy {
    /// Adds `dns_suffixes` (a leading dot is optional) and `ips` to what
    /// `agency` (an agency code or [`EVERY_AGENCY`]) may ask for. Fails with
    /// [`CertError::DnsName`] for a suffix that is not a DNS name, and
    /// [`CertError::AgencyCode`] for a malformed agency code.
    pub fn allow(&mut self, agency: &str, dns_suffixes: &[String], ips: &[IpAddr]) -> Result<()> {
        if agency != EVERY_AGENCY {
            AgencyCode::new(agency)?;
        }
        let mut suffixes = Vec::with_capacity(dns_suffixes.len());
        for s in dns_suffixes {
            let s = s.strip_prefix('.').unwrap_or(s).to_ascii_lowercase();
            crate::ca::validate_dns_name(&s)?;
            suffixes.push(s);
        }
        let entry = self.agencies.entry(agency.to_owned()).or_default();
        for s in suffixes {
            if !entry.dns_suffixes.contains(&s) {
                entry.dns_suffixes.push(s);
            }
        }
        for ip in ips {
            if !entry.ips.contains(ip) {
                entry.ips.push(*ip);
            }
        }
        Ok(())
    }

    /// Every entry, by agency code (`*` first).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &AgencyNames)> {
        self.agencies.iter().map(|(a, n)| (a.as_str(), n))
    }

    fn applying_to<'a>(&'a self, agency: &'a str) -> impl Iterator<Item = &'a AgencyNames> {
        [EVERY_AGENCY, agency]
            .into_iter()
            .filter_map(|a| self.agencies.get(a))
    }

    /// Whether `agency` may carry DNS name `name`.
    pub fn allows_dns(&self, agency: &str, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.applying_to(agency).any(|n| {
            n.dns_suffixes.iter().any(|s| {
                name == *s
                    || name
                        .strip_suffix(s.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            })
        })
    }

    /// Whether `agency` may carry IP address `ip`.
    pub fn allows_ip(&self, agency: &str, ip: IpAddr) -> bool {
        self.applying_to(agency).any(|n| n.ips.contains(&ip))
    }

    /// Refuses the first of `dns` and `ips` that `agency` may not carry;
    /// IP addresses pass unlisted when `any_ip` (the operator checked them).
    /// The error names the host and the command that would allow it.
    pub fn check(
        &self,
        agency: &AgencyCode,
        dns: &[String],
        ips: &[IpAddr],
        any_ip: bool,
    ) -> Result<()> {
        let agency = agency.as_str();
        if let Some(name) = dns.iter().find(|d| !self.allows_dns(agency, d)) {
            return Err(CertError::HostNotVouched {
                host: name.clone(),
                agency: agency.to_owned(),
                allowed: self.describe(agency),
                fix: format!("lgsp ca policy allow --ca DIR --agency {agency} --dns-suffix {name}"),
            });
        }
        if !any_ip && let Some(ip) = ips.iter().find(|ip| !self.allows_ip(agency, **ip)) {
            return Err(CertError::HostNotVouched {
                host: ip.to_string(),
                agency: agency.to_owned(),
                allowed: self.describe(agency),
                fix: format!(
                    "lgsp ca policy allow --ca DIR --agency {agency} --ip {ip}`, or sign this once with `--allow-ip"
                ),
            });
        }
        Ok(())
    }

    /// What `agency` may carry, in words.
    fn describe(&self, agency: &str) -> String {
        let mut hosts: Vec<String> = Vec::new();
        for n in self.applying_to(agency) {
            hosts.extend(n.dns_suffixes.iter().map(|s| format!("*.{s}")));
            hosts.extend(n.ips.iter().map(ToString::to_string));
        }
        if hosts.is_empty() {
            "none".to_owned()
        } else {
            hosts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> AgencyCode {
        AgencyCode::new(s).unwrap()
    }

    #[test]
    fn a_suffix_allows_itself_and_names_under_it_for_its_agency_only() {
        let mut policy = NamePolicy::default();
        policy
            .allow("000.00.12.H62", &[".STP.vinhphuc.gov.vn".into()], &[])
            .unwrap();
        let stp = "000.00.12.H62";
        assert!(policy.allows_dns(stp, "stp.vinhphuc.gov.vn"));
        assert!(policy.allows_dns(stp, "Node1.stp.vinhphuc.gov.vn"));
        assert!(!policy.allows_dns(stp, "xstp.vinhphuc.gov.vn"));
        assert!(!policy.allows_dns(stp, "stp.vinhphuc.gov.vn.evil.example"));
        assert!(!policy.allows_dns("000.00.13.H62", "node1.stp.vinhphuc.gov.vn"));
        let refused = policy
            .check(&code(stp), &["localhost".into()], &[], false)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("\"localhost\""), "{refused}");
        assert!(refused.contains("--dns-suffix localhost"), "{refused}");
    }

    #[test]
    fn ips_pass_when_listed_or_when_the_operator_vouches_for_them() {
        let mut policy = NamePolicy::default();
        let ip: IpAddr = "10.0.0.8".parse().unwrap();
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        policy.allow(EVERY_AGENCY, &[], &[ip]).unwrap();
        let stp = code("000.00.12.H62");
        assert!(policy.check(&stp, &[], &[ip], false).is_ok());
        let refused = policy.check(&stp, &[], &[other], false).unwrap_err();
        assert!(refused.to_string().contains("--allow-ip"), "{refused}");
        assert!(policy.check(&stp, &[], &[other], true).is_ok());
    }

    #[test]
    fn a_malformed_agency_or_suffix_is_refused() {
        let mut policy = NamePolicy::default();
        assert!(policy.allow("not a code", &[], &[]).is_err());
        assert!(
            policy
                .allow("000.00.12.H62", &["a..b".into()], &[])
                .is_err()
        );
        assert_eq!(policy, NamePolicy::default());
    }
}
