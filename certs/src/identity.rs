//! Identities in certificates: the SPIFFE ID
//! `spiffe://<trust-domain>/agency/<agency-code>/<role>/<name>` that every
//! lgsp certificate carries as its one URI SAN, and its parts, validated.

use crate::error::{CertError, Result};
use std::fmt;
use std::str::FromStr;

/// A QCVN 102 agency code (`000.00.12.H62`): 1 to 35 characters of `[0-9A-Z.]`,
/// treated as an opaque validated string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgencyCode(String);

impl AgencyCode {
    /// Validates `code`; fails with [`CertError::AgencyCode`] saying what is wrong.
    pub fn new(code: &str) -> Result<Self> {
        let bad = |why| CertError::AgencyCode {
            code: code.to_owned(),
            why,
        };
        if code.is_empty() {
            return Err(bad("it is empty"));
        }
        if code.len() > 35 {
            return Err(bad("it is longer than 35 characters"));
        }
        if !code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b'.')
        {
            return Err(bad("it has a character outside 0-9, A-Z and '.'"));
        }
        if code.starts_with('.') || code.ends_with('.') || code.contains("..") {
            return Err(bad("it has an empty segment between dots"));
        }
        Ok(Self(code.to_owned()))
    }

    /// The code as written in a SPIFFE ID and the certificate's OU (`000.00.12.H62`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgencyCode {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl fmt::Display for AgencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a certificate lets its holder be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agency node.
    Node,
    /// A registry server.
    Registry,
    /// The provincial hub.
    Hub,
    /// The provincial IT department's administrators and tools.
    Admin,
}

impl Role {
    /// Every role, in the order error messages list them.
    pub const ALL: [Role; 4] = [Role::Node, Role::Registry, Role::Hub, Role::Admin];

    /// The role as a SPIFFE ID spells it: `node`, `registry`, `hub` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Registry => "registry",
            Role::Hub => "hub",
            Role::Admin => "admin",
        }
    }

    /// The same role in the wire protocol.
    pub fn to_proto(self) -> lgsp_proto::Role {
        match self {
            Role::Node => lgsp_proto::Role::Node,
            Role::Registry => lgsp_proto::Role::Registry,
            Role::Hub => lgsp_proto::Role::Hub,
            Role::Admin => lgsp_proto::Role::Admin,
        }
    }
}

impl FromStr for Role {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| CertError::Role(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validates a trust domain: a lower-case DNS name (`vinhphuc.gov.vn`).
/// Fails with [`CertError::TrustDomain`].
pub fn validate_trust_domain(domain: &str) -> Result<()> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(CertError::TrustDomain(domain.to_owned()))
    }
}

/// Validates the last segment of a SPIFFE ID: the node's, server's or person's name,
/// 1 to 63 bytes of ASCII letters, digits, '-', '_' and '.'. Fails with
/// [`CertError::Name`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why| CertError::Name {
        name: name.to_owned(),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 63 {
        return Err(bad("it is longer than 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad("it has a character that is not allowed"));
    }
    if name == "." || name == ".." {
        return Err(bad("it is a path segment"));
    }
    Ok(())
}

/// Who a certificate names: one agency's node, registry server, hub or admin.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The province's trust domain (`vinhphuc.gov.vn`); a CA signs only its own.
    pub trust_domain: String,
    /// The agency (cơ quan) the holder belongs to.
    pub agency: AgencyCode,
    /// What the holder may act as.
    pub role: Role,
    /// Which node, server or person of that agency and role (`node-1`).
    pub name: String,
}

impl SpiffeId {
    /// Builds an ID from validated parts; fails with
    /// [`CertError::TrustDomain`] or [`CertError::Name`] for a malformed one.
    pub fn new(trust_domain: &str, agency: AgencyCode, role: Role, name: &str) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        validate_name(name)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            agency,
            role,
            name: name.to_owned(),
        })
    }

    /// Parses `spiffe://<trust-domain>/agency/<code>/<role>/<name>`; fails
    /// with [`CertError::SpiffeId`] saying which part is wrong.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |why: String| CertError::SpiffeId {
            id: uri.to_owned(),
            why,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it does not start with spiffe://".into()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [domain, "agency", code, role, name] = parts.as_slice() else {
            return Err(bad("it does not have the five parts".into()));
        };
        validate_trust_domain(domain).map_err(|e| bad(e.to_string()))?;
        let agency = AgencyCode::new(code).map_err(|e| bad(e.to_string()))?;
        let role = role.parse::<Role>().map_err(|e| bad(e.to_string()))?;
        validate_name(name).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            trust_domain: (*domain).to_owned(),
            agency,
            role,
            name: (*name).to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/agency/{}/{}/{}",
            self.trust_domain, self.agency, self.role, self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_codes_follow_qcvn_102_alphabet() {
        assert!(AgencyCode::new("000.00.12.H62").is_ok());
        assert!(AgencyCode::new("H62").is_ok());
        for bad in [
            "",
            "000.00.12.h62",
            "000 00",
            "Sở",
            ".000",
            "000..1",
            &"1".repeat(36),
        ] {
            assert!(AgencyCode::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn spiffe_id_round_trips() {
        let id = "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1";
        let parsed = SpiffeId::parse(id).unwrap();
        assert_eq!(parsed.role, Role::Node);
        assert_eq!(parsed.agency.as_str(), "000.00.12.H62");
        assert_eq!(parsed.to_string(), id);
    }

    #[test]
    fn spiffe_id_refuses_wrong_shapes() {
        for bad in [
            "https://vinhphuc.gov.vn/agency/H62/node/n",
            "spiffe://vinhphuc.gov.vn/agency/H62/node",
            "spiffe://vinhphuc.gov.vn/org/H62/node/n",
            "spiffe://vinhphuc.gov.vn/agency/h62/node/n",
            "spiffe://vinhphuc.gov.vn/agency/H62/king/n",
            "spiffe://VinhPhuc/agency/H62/node/n",
            "spiffe://vinhphuc.gov.vn/agency/H62/node/n/extra",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
