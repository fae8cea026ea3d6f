//! Errors of connecting, migrating and querying, and which of them are worth a retry.
//!
//! The trait methods report [`StoreError`]; [`ScyllaError`] is what [`super::ScyllaStore::connect`]
//! and [`super::migrate`] return, with the cause kept for the operator.

use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};

use crate::store::StoreError;

/// Why the CQL store could not start, migrate or run a request.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    /// The configuration is unusable.
    #[error("invalid scylla config: {0}")]
    Config(String),
    /// Reading the TLS files or building the TLS config failed.
    #[error("scylla TLS setup: {0}")]
    Tls(String),
    /// No session could be opened to the contact points.
    #[error("cannot connect to {contact_points:?}: {source}")]
    Connect {
        contact_points: Vec<String>,
        #[source]
        source: Box<NewSessionError>,
    },
    /// Preparing a statement failed.
    #[error("preparing `{statement}`: {source}")]
    Prepare {
        statement: String,
        #[source]
        source: Box<PrepareError>,
    },
    /// A request failed.
    #[error("running `{statement}`: {source}")]
    Query {
        statement: String,
        #[source]
        source: Box<ExecutionError>,
    },
    /// The nodes did not agree on the schema after a change.
    #[error("schema agreement: {0}")]
    SchemaAgreement(String),
    /// The stored schema or settings are not what this build understands.
    #[error("incompatible schema: {0}")]
    Incompatible(String),
    /// A row could not be read back.
    #[error("bad row: {0}")]
    Row(String),
}

impl ScyllaError {
    pub(crate) fn query(statement: &str, source: ExecutionError) -> Self {
        ScyllaError::Query {
            statement: statement.to_owned(),
            source: Box::new(source),
        }
    }

    /// True when repeating the same request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ScyllaError::Query { source, .. } => is_transient(source),
            ScyllaError::Connect { .. } | ScyllaError::SchemaAgreement(_) => true,
            _ => false,
        }
    }
}

impl From<ScyllaError> for StoreError {
    fn from(e: ScyllaError) -> Self {
        match e {
            ScyllaError::Row(m) | ScyllaError::Incompatible(m) => StoreError::Corrupt(m),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Errors after which the same idempotent request may well succeed: the node, the network or
/// the replicas were the problem, not the request.
pub fn is_transient(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::UnableToAllocStreamId
            | RequestAttemptError::BrokenConnectionError(_) => true,
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                DbError::Unavailable { .. }
                    | DbError::Overloaded
                    | DbError::IsBootstrapping
                    | DbError::ReadTimeout { .. }
                    | DbError::WriteTimeout { .. }
                    | DbError::ReadFailure { .. }
                    | DbError::WriteFailure { .. }
                    | DbError::TruncateError
                    | DbError::ServerError
                    | DbError::RateLimitReached { .. }
            ),
            _ => false,
        },
        ExecutionError::PrepareError(p) => prepare_is_transient(p),
        _ => false,
    }
}

/// [`is_transient`] for a failed prepare.
pub fn prepare_is_transient(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => matches!(
            first_attempt,
            RequestAttemptError::BrokenConnectionError(_)
                | RequestAttemptError::UnableToAllocStreamId
                | RequestAttemptError::DbError(DbError::Overloaded | DbError::IsBootstrapping, _)
        ),
        _ => false,
    }
}
