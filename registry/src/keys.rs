//! The keys of catalog records, parsed once into types: a service is
//! `<agency-code>/<service-name>`, a node `<agency-code>/<node-name>`, a
//! grant `<service-id>|<consumer-agency-code>`. Everything that builds or
//! reads a key (registry, node, command line) goes through these, so the
//! format is written down in one place.

use lgsp_certs::AgencyCode;
use lgsp_certs::identity::validate_name;
use std::fmt;
use std::str::FromStr;

/// A key that is not well formed for its kind; the message says what was
/// expected, with an example.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// A data-sharing service: `<agency-code>/<service-name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    agency: AgencyCode,
    name: String,
}

impl ServiceId {
    /// The service `name` of `agency`; fails when the name is not a valid
    /// lgsp name.
    pub fn new(agency: AgencyCode, name: &str) -> Result<Self, KeyError> {
        validate_name(name).map_err(|e| KeyError(format!("service name {name:?}: {e}")))?;
        Ok(Self {
            agency,
            name: name.to_owned(),
        })
    }

    /// The agency that provides the service.
    pub fn agency(&self) -> &AgencyCode {
        &self.agency
    }

    /// The service's name within its agency.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for ServiceId {
    type Err = KeyError;

    fn from_str(id: &str) -> Result<Self, KeyError> {
        let bad = |why: String| {
            KeyError(format!(
                "malformed service id {id:?}: {why} (expected <agency-code>/<service-name>, e.g. 000.00.12.H62/ho-tich)"
            ))
        };
        let (agency, name) = id.split_once('/').ok_or_else(|| bad("no '/'".into()))?;
        let agency = AgencyCode::new(agency).map_err(|e| bad(e.to_string()))?;
        validate_name(name).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            agency,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.agency, self.name)
    }
}

/// A node of an agency: `<agency-code>/<node-name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    agency: AgencyCode,
    name: String,
}

impl NodeKey {
    /// Node `name` of `agency`; fails when the name is not a valid lgsp name.
    pub fn new(agency: AgencyCode, name: &str) -> Result<Self, KeyError> {
        validate_name(name).map_err(|e| KeyError(format!("node name {name:?}: {e}")))?;
        Ok(Self {
            agency,
            name: name.to_owned(),
        })
    }

    /// The agency that runs the node.
    pub fn agency(&self) -> &AgencyCode {
        &self.agency
    }

    /// The node's name within its agency.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NodeKey {
    /// The key of node `name` of `agency` as written, for a record not
    /// checked yet (the catalog checks it with [`NodeKey::from_str`]).
    pub fn format(agency: &str, name: &str) -> String {
        format!("{agency}/{name}")
    }
}

impl FromStr for NodeKey {
    type Err = KeyError;

    fn from_str(key: &str) -> Result<Self, KeyError> {
        let (agency, name) = key.split_once('/').ok_or_else(|| {
            KeyError(format!(
                "malformed node key {key:?}: expected <agency-code>/<node-name>"
            ))
        })?;
        let agency = AgencyCode::new(agency).map_err(|e| KeyError(e.to_string()))?;
        validate_name(name).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self {
            agency,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.agency, self.name)
    }
}

/// A grant: which consumer agency may call which service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    /// The service granted.
    pub service: ServiceId,
    /// The agency that may call it.
    pub consumer: AgencyCode,
}

impl GrantKey {
    /// The key of the grant of `service` to `consumer` as written, for a
    /// record not checked yet (the catalog checks it with
    /// [`GrantKey::from_str`]).
    pub fn format(service: &str, consumer: &str) -> String {
        format!("{service}|{consumer}")
    }

    /// The prefix every grant key of `service` starts with, for listing them.
    pub fn prefix_of(service: &ServiceId) -> String {
        format!("{service}|")
    }
}

impl FromStr for GrantKey {
    type Err = KeyError;

    fn from_str(key: &str) -> Result<Self, KeyError> {
        let (service, consumer) = key.split_once('|').ok_or_else(|| {
            KeyError(format!(
                "malformed grant key {key:?}: expected <service-id>|<consumer-agency-code>"
            ))
        })?;
        Ok(Self {
            service: service.parse()?,
            consumer: AgencyCode::new(consumer).map_err(|e| KeyError(e.to_string()))?,
        })
    }
}

impl fmt::Display for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.service, self.consumer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_id_round_trips_and_names_its_agency() {
        let id: ServiceId = "000.00.12.H62/ho-tich".parse().unwrap();
        assert_eq!(id.agency().as_str(), "000.00.12.H62");
        assert_eq!(id.name(), "ho-tich");
        assert_eq!(id.to_string(), "000.00.12.H62/ho-tich");
    }

    #[test]
    fn malformed_service_ids_are_refused_with_the_expected_shape() {
        for bad in [
            "ho-tich",
            "not-a-code/ho-tich",
            "000.00.12.H62/",
            "000.00.12.H62/a b",
        ] {
            let err = bad.parse::<ServiceId>().unwrap_err().to_string();
            assert!(
                err.contains("expected <agency-code>/<service-name>"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_grant_key_is_the_service_and_the_consumer_and_round_trips() {
        let key: GrantKey = "000.00.12.H62/ho-tich|000.00.31.H62".parse().unwrap();
        assert_eq!(key.service.to_string(), "000.00.12.H62/ho-tich");
        assert_eq!(key.consumer.as_str(), "000.00.31.H62");
        assert_eq!(key.to_string(), "000.00.12.H62/ho-tich|000.00.31.H62");
        assert!(
            key.to_string()
                .starts_with(&GrantKey::prefix_of(&key.service))
        );
        assert!("000.00.12.H62/ho-tich".parse::<GrantKey>().is_err());
        assert!("000.00.12.H62/ho-tich|nobody".parse::<GrantKey>().is_err());
    }

    #[test]
    fn a_node_key_round_trips() {
        let key: NodeKey = "000.00.31.H62/node-1".parse().unwrap();
        assert_eq!(key.agency().as_str(), "000.00.31.H62");
        assert_eq!(key.name(), "node-1");
        assert_eq!(key.to_string(), "000.00.31.H62/node-1");
        assert!("000.00.31.H62".parse::<NodeKey>().is_err());
    }
}
