//! The error every request can end in, and the one place where module errors become it.
//!
//! Module errors (`ModelError`, `RuntimeError`, `StoreError`, `WorkspaceError`) stay
//! specific; the `From` impls here decide which wire kind each one is. Nothing else maps
//! errors to kinds.

use serde::Serialize;

use crate::model::ModelError;
use crate::runtime::RuntimeError;
use crate::store::StoreError;
use crate::workspace::WorkspaceError;

/// The `data.kind` of a protocol error; the set is fixed by the public interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InvalidName,
    NotFound,
    AlreadyExists,
    RuntimeUnavailable,
    RuntimeError,
    Timeout,
    Busy,
    TooLarge,
    Forbidden,
    Internal,
}

impl ErrorKind {
    /// The JSON-RPC `code`: the standard ones where JSON-RPC has them, else server codes.
    pub fn code(self) -> i64 {
        match self {
            ErrorKind::ParseError => -32700,
            ErrorKind::InvalidRequest => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams | ErrorKind::InvalidName => -32602,
            ErrorKind::Internal => -32603,
            ErrorKind::NotFound => -32004,
            ErrorKind::AlreadyExists => -32009,
            ErrorKind::RuntimeUnavailable => -32010,
            ErrorKind::RuntimeError => -32011,
            ErrorKind::Timeout => -32012,
            ErrorKind::Busy => -32013,
            ErrorKind::TooLarge => -32014,
            ErrorKind::Forbidden => -32003,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ParseError => "parse_error",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MethodNotFound => "method_not_found",
            ErrorKind::InvalidParams => "invalid_params",
            ErrorKind::InvalidName => "invalid_name",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::RuntimeUnavailable => "runtime_unavailable",
            ErrorKind::RuntimeError => "runtime_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Busy => "busy",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A request's failure: a kind and a sentence naming the value involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParams, message)
    }

    pub fn not_found(name: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, format!("project {name} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        let kind = match e {
            ModelError::Name(_) => ErrorKind::InvalidName,
            ModelError::Param(_) => ErrorKind::InvalidParams,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        let kind = match &e {
            RuntimeError::Unavailable(_) => ErrorKind::RuntimeUnavailable,
            RuntimeError::Timeout(_) => ErrorKind::Timeout,
            RuntimeError::InvalidWorkdir(_) => ErrorKind::InvalidParams,
            RuntimeError::Forbidden(_) => ErrorKind::Forbidden,
            RuntimeError::Engine(_)
            | RuntimeError::Unreadable(_)
            | RuntimeError::NotFound(_)
            | RuntimeError::Conflict(_)
            | RuntimeError::Image { .. }
            | RuntimeError::Io(_) => ErrorKind::RuntimeError,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(_) => Error::new(ErrorKind::AlreadyExists, e.to_string()),
            StoreError::Missing(_) => Error::new(ErrorKind::NotFound, e.to_string()),
            _ => Error::internal(e.to_string()),
        }
    }
}

impl From<WorkspaceError> for Error {
    fn from(e: WorkspaceError) -> Self {
        Error::internal(e.to_string())
    }
}

/// Turns a failed actor call into an error the caller can act on (never a hang).
pub fn actor_call_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what}: {e}"))
}
