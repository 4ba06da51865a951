//! Why a provider node refuses a call, and the one place a refusal becomes
//! a gRPC status.
//!
//! Every check the regulation rests on (who the caller is, whether its
//! grant is in force, its limits, the service's state) ends in a
//! [`Refusal`], whichever path the call came by (a unary call or a node
//! link), so a consumer sees the same code and words for the same cause.
//! Each message says what is missing and who can fix it.

use std::time::Duration;
use tonic::{Code, Status};

/// A call the provider will not serve, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller's certificate is not a node's or the hub's.
    #[error("{caller} has role {role}; only agency nodes and the hub call data-sharing services")]
    WrongRole {
        /// The caller's SPIFFE id, from its certificate.
        caller: String,
        /// The role its certificate names (registry, admin, ...).
        role: String,
    },
    /// The caller's certificate was refused when checked again (revoked
    /// since the connection opened).
    #[error("{0}")]
    Certificate(String),
    /// The service id is not `<agency>/<name>`.
    #[error("{0}")]
    BadServiceId(String),
    /// The service belongs to another agency than this node's.
    #[error(
        "this node serves agency {own}; service {service} belongs to agency {agency} (call that agency's node)"
    )]
    OtherAgency {
        /// This node's agency code.
        own: String,
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The agency the service id names, whose node serves it.
        agency: String,
    },
    /// The service is not in this node's copy of the catalog.
    #[error(
        "service {service} is not in the provincial catalog (not published, or withdrawn and removed)"
    )]
    NotInCatalog {
        /// The service id, `<agency>/<name>`.
        service: String,
    },
    /// The provider suspended the service.
    #[error(
        "service {service} is suspended by agency {provider}; ask its focal point when it will be restored"
    )]
    ServiceSuspended {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The provider agency's code, which owns the service.
        provider: String,
    },
    /// The provider withdrew the service.
    #[error("service {service} has been withdrawn by agency {provider}")]
    ServiceWithdrawn {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The provider agency's code, which owns the service.
        provider: String,
    },
    /// The service is in the catalog, but this node has no backend for it.
    #[error(
        "service {service} is in the catalog but this node is not configured to serve it (add it to node.toml)"
    )]
    NotServedHere {
        /// The service id, `<agency>/<name>`.
        service: String,
    },
    /// The consumer agency holds no grant for the service.
    #[error(
        "agency {consumer} has no grant for service {service}; agency {consumer} files an access request with `lgsp requests file --service {service} ...` and agency {provider} decides it (or the provincial admin grants it with `lgsp access grant --service {service} --consumer {consumer}`)"
    )]
    NoGrant {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The consumer agency's code.
        consumer: String,
        /// The provider agency's code, which owns the service.
        provider: String,
    },
    /// The grant is suspended.
    #[error(
        "the grant of service {service} to agency {consumer} is suspended{}; agency {provider} can restore it",
        because(reason)
    )]
    GrantSuspended {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The consumer agency's code.
        consumer: String,
        /// The provider agency's code, which owns the service.
        provider: String,
        /// The reason recorded on the grant; may be empty.
        reason: String,
    },
    /// A hub's record of on whose behalf it calls does not verify.
    #[error("{0}")]
    OnBehalfOf(String),
    /// A record of on whose behalf refused by its checks, or by the replay
    /// guard (full, or its journal unwritable): the code is
    /// [`OboError::code`](crate::obo::OboError::code).
    #[error(transparent)]
    Record(#[from] crate::obo::OboError),
    /// The service is in a maintenance window (D47 Art. 43).
    #[error(
        "service {service} of agency {provider} is suspended for maintenance{} until {until} (expected restore time)",
        because(reason)
    )]
    ServiceMaintenance {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The provider agency's code.
        provider: String,
        /// What and why, as announced.
        reason: String,
        /// The expected restore time, as the province's clocks show it.
        until: String,
    },
    /// The call asks for data items the consumer was not granted.
    #[error(
        "agency {consumer} is not granted item(s) {} of service {service}; it is granted: {}. File an access request for more",
        items.join(", "),
        granted.join(", ")
    )]
    ItemsNotGranted {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The consumer agency's code.
        consumer: String,
        /// The items asked for and not granted.
        items: Vec<String>,
        /// The items granted.
        granted: Vec<String>,
    },
    /// The grant's validity ended.
    #[error(
        "the grant of service {service} to agency {consumer} expired{}; ask agency {provider} to renew it",
        because(reason)
    )]
    GrantExpired {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The consumer agency's code.
        consumer: String,
        /// The provider agency's code, which owns the service.
        provider: String,
        /// The reason recorded on the grant; may be empty.
        reason: String,
    },
    /// The grant was terminated (D47 Art. 44).
    #[error(
        "the grant of service {service} to agency {consumer} was terminated{}",
        because(reason)
    )]
    GrantTerminated {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The consumer agency's code.
        consumer: String,
        /// The reason recorded on the grant; may be empty.
        reason: String,
    },
    /// The consumer agency has as many calls in flight as it may.
    #[error(
        "agency {consumer} already has {max} calls in flight, the most this node allows; retry when some finish"
    )]
    TooManyInFlight {
        /// The consumer agency's code.
        consumer: String,
        /// The most calls in flight this node allows one consumer agency.
        max: usize,
    },
    /// The consumer agency calls faster than it may.
    #[error("agency {consumer} exceeds {rate} calls per second on this node; slow down and retry")]
    OverRate {
        /// The consumer agency's code.
        consumer: String,
        /// The rate this node allows one consumer agency, in calls per second.
        rate: u32,
    },
    /// The consumer agency has as many node links open as it may.
    #[error("agency {consumer} already has {max} node links open to this node, the most it allows")]
    TooManyLinks {
        /// The consumer agency's code.
        consumer: String,
        /// The most node links this node allows one consumer agency.
        max: usize,
    },
    /// The request is larger than this node takes.
    #[error("the envelope is {size} bytes; this node accepts at most {max}")]
    EnvelopeTooLarge {
        /// The envelope's encoded size, in bytes.
        size: usize,
        /// The largest envelope this node accepts, in bytes.
        max: usize,
    },
    /// The response is larger than the consumer takes.
    #[error("the response is {size} bytes; the consumer accepts at most {limit}")]
    ResponseTooLarge {
        /// The response's size, in bytes.
        size: usize,
        /// The largest response the consumer said it accepts, in bytes.
        limit: usize,
    },
    /// A query page larger than the consumer takes.
    #[error(
        "a page of {size} bytes exceeds the largest message the consumer takes ({limit}); ask for a smaller page_size or fewer fields"
    )]
    PageTooLarge {
        /// The page's encoded size, in bytes.
        size: usize,
        /// The largest the consumer takes, in bytes.
        limit: usize,
    },
    /// The caller's deadline passed while the call was served.
    #[error("{service} did not answer within the caller's deadline ({} ms)", total.as_millis())]
    DeadlineExceeded {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The caller's whole deadline, as it sent it.
        total: Duration,
    },
    /// A dataset answers `get` and the `Query` stream only.
    #[error(
        "dataset {service} supports the operation \"get\" (parameter \"key\") and the Query stream, not {operation:?}"
    )]
    UnsupportedOperation {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The operation the envelope asked for.
        operation: String,
    },
    /// `get` without its key.
    #[error("operation \"get\" needs the parameter \"key\"")]
    MissingKey,
    /// A `Query` stream on a service that is not a dataset.
    #[error("{service} is not a dataset: use Call")]
    NotADataset {
        /// The service id, `<agency>/<name>`.
        service: String,
    },
    /// A request id the caller chose that is too long or holds other
    /// characters than letters, digits, '-', '_', '.' and ':'.
    #[error(
        "the request id is {length} bytes or holds characters other than letters, digits, '-', '_', '.' and ':'; at most {max} such characters are allowed (or leave it empty: the node makes one)"
    )]
    BadRequestId {
        /// Its length in bytes.
        length: usize,
        /// The longest allowed.
        max: usize,
    },
    /// No record has the key asked for.
    #[error("no record with key {key:?} in {service}")]
    RecordNotFound {
        /// The service id, `<agency>/<name>`.
        service: String,
        /// The key asked for (the `get` operation's `key` parameter).
        key: String,
    },
}

fn because(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

impl Refusal {
    /// The gRPC code a consumer sees: `PermissionDenied` for what a grant
    /// would fix, `FailedPrecondition` for a state the provider can lift,
    /// `ResourceExhausted` for limits, `InvalidArgument` for a bad request.
    pub fn code(&self) -> Code {
        use Refusal::*;
        match self {
            WrongRole { .. } | NoGrant { .. } | GrantExpired { .. } | GrantTerminated { .. } => {
                Code::PermissionDenied
            }
            Certificate(_) => Code::Unauthenticated,
            BadServiceId(_)
            | UnsupportedOperation { .. }
            | MissingKey
            | NotADataset { .. }
            | BadRequestId { .. } => Code::InvalidArgument,
            OtherAgency { .. } | NotInCatalog { .. } | RecordNotFound { .. } => Code::NotFound,
            ServiceSuspended { .. } | ServiceWithdrawn { .. } | GrantSuspended { .. } => {
                Code::FailedPrecondition
            }
            ServiceMaintenance { .. } => Code::Unavailable,
            ItemsNotGranted { .. } => Code::PermissionDenied,
            OnBehalfOf(_) => Code::Unauthenticated,
            Record(e) => e.code(),
            NotServedHere { .. } => Code::Unimplemented,
            TooManyInFlight { .. }
            | OverRate { .. }
            | TooManyLinks { .. }
            | ResponseTooLarge { .. }
            | PageTooLarge { .. } => Code::ResourceExhausted,
            EnvelopeTooLarge { .. } => Code::OutOfRange,
            DeadlineExceeded { .. } => Code::DeadlineExceeded,
        }
    }
}

/// The metadata key a status carries when the far side answered it (a peer's
/// hub, or a provider over a node link), as opposed to a connection that
/// failed on the way: a hub counts only the latter against a peer's circuit
/// breaker. A service in maintenance answers `UNAVAILABLE` too.
pub const ANSWERED: &str = "lgsp-answered";

/// `status`, marked as answered by the far side ([`ANSWERED`]).
pub fn answered(status: Status) -> Status {
    let mut metadata = status.metadata().clone();
    metadata.insert(ANSWERED, tonic::metadata::MetadataValue::from_static("1"));
    Status::with_details_and_metadata(
        status.code(),
        status.message(),
        status.details().to_vec().into(),
        metadata,
    )
}

/// Whether `status` says the far side was not reached (or went away), not
/// that it answered with a refusal ([`ANSWERED`]).
pub fn is_unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
    ) && status.metadata().get(ANSWERED).is_none()
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        Status::new(refusal.code(), refusal.to_string())
    }
}

/// The gRPC name of a status code (`PERMISSION_DENIED`), as logs show it.
pub fn code_name(code: Code) -> &'static str {
    use Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(reason: &str) -> (String, String, String, String) {
        (
            "000.00.12.H62/ho-tich".into(),
            "000.00.31.H62".into(),
            "000.00.12.H62".into(),
            reason.into(),
        )
    }

    #[test]
    fn each_refusal_maps_to_the_code_its_cause_calls_for() {
        let (service, consumer, provider, reason) = grant("");
        let cases = [
            (
                Refusal::NoGrant {
                    service: service.clone(),
                    consumer: consumer.clone(),
                    provider: provider.clone(),
                },
                Code::PermissionDenied,
            ),
            (
                Refusal::GrantSuspended {
                    service: service.clone(),
                    consumer: consumer.clone(),
                    provider: provider.clone(),
                    reason: reason.clone(),
                },
                Code::FailedPrecondition,
            ),
            (
                Refusal::GrantExpired {
                    service: service.clone(),
                    consumer: consumer.clone(),
                    provider: provider.clone(),
                    reason: reason.clone(),
                },
                Code::PermissionDenied,
            ),
            (
                Refusal::Certificate("revoked".into()),
                Code::Unauthenticated,
            ),
            (
                Refusal::TooManyInFlight {
                    consumer: consumer.clone(),
                    max: 4,
                },
                Code::ResourceExhausted,
            ),
            (
                Refusal::EnvelopeTooLarge { size: 9, max: 8 },
                Code::OutOfRange,
            ),
            (
                Refusal::NotServedHere {
                    service: service.clone(),
                },
                Code::Unimplemented,
            ),
            (Refusal::MissingKey, Code::InvalidArgument),
        ];
        for (refusal, code) in cases {
            let status = Status::from(refusal.clone());
            assert_eq!(status.code(), code, "{refusal:?}");
            assert_eq!(status.message(), refusal.to_string());
        }
    }

    #[test]
    fn a_refusal_names_the_fix_and_shows_a_reason_only_when_given() {
        let (service, consumer, provider, _) = grant("");
        let no_grant = Refusal::NoGrant {
            service: service.clone(),
            consumer: consumer.clone(),
            provider: provider.clone(),
        }
        .to_string();
        assert!(
            no_grant.contains(
                "lgsp access grant --service 000.00.12.H62/ho-tich --consumer 000.00.31.H62"
            ),
            "{no_grant}"
        );
        let suspended = |reason: &str| {
            Refusal::GrantSuspended {
                service: service.clone(),
                consumer: consumer.clone(),
                provider: provider.clone(),
                reason: reason.into(),
            }
            .to_string()
        };
        assert!(suspended("").contains("is suspended; agency 000.00.12.H62 can restore it"));
        assert!(suspended("kiểm tra an ninh").contains("is suspended (kiểm tra an ninh);"));
    }

    #[test]
    fn an_answered_unavailable_is_not_a_peer_unreachable_but_a_local_one_is() {
        let maintenance = Status::unavailable("service X is suspended for maintenance");
        assert!(
            is_unreachable(&maintenance),
            "not marked: the far side was not heard"
        );
        let answered = answered(maintenance);
        assert!(!is_unreachable(&answered));
        assert_eq!(answered.code(), Code::Unavailable);
        assert_eq!(answered.message(), "service X is suspended for maintenance");
        assert!(is_unreachable(&Status::deadline_exceeded(
            "no answer in 3 s"
        )));
        assert!(!is_unreachable(&Status::permission_denied("no grant")));
    }

    #[test]
    fn code_names_are_the_grpc_spelling() {
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }
}
