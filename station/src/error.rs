//! The station's error type and its HTTP form: every 4xx/5xx response has a
//! JSON body `{ "error": code, "message": text }`. Messages name ids and
//! limits, never report content or people.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldreport_core::sync::wire::ErrorBody;
use fieldreport_core::Error as CoreError;

#[derive(Debug, thiserror::Error)]
pub enum StationError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("missing or invalid credential")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    /// A new change signed by a device that is revoked (whoever pushed it):
    /// 403 `device_revoked`. Names only ids.
    #[error("change {change} is signed by device {device}, which is revoked: the station takes no new change of a revoked device")]
    DeviceRevoked { device: uuid::Uuid, change: String },
    #[error("not found")]
    NotFound,
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("internal error")]
    Internal(String),
    /// A backing service (the database) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StationError {
    fn from(e: rusqlite::Error) -> Self {
        StationError::Core(e.into())
    }
}

impl From<std::io::Error> for StationError {
    fn from(e: std::io::Error) -> Self {
        StationError::Core(e.into())
    }
}

impl StationError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StationError::*;
        match self {
            BadRequest(c, _) => (StatusCode::BAD_REQUEST, c),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            DeviceRevoked { .. } => (StatusCode::FORBIDDEN, "device_revoked"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Conflict(c, _) => (StatusCode::CONFLICT, c),
            Unprocessable(c, _) => (StatusCode::UNPROCESSABLE_ENTITY, c),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Core(e) => match e {
                CoreError::MalformedChange { .. } => (StatusCode::BAD_REQUEST, "malformed_change"),
                CoreError::InvalidOperation { .. } => {
                    (StatusCode::BAD_REQUEST, "invalid_operation")
                }
                CoreError::BadSignature { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "bad_signature")
                }
                CoreError::UnknownDevice { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "unknown_device")
                }
                CoreError::BrokenChain { .. } => (StatusCode::CONFLICT, "broken_chain"),
                CoreError::NotPermitted { .. } => (StatusCode::FORBIDDEN, "not_permitted"),
                CoreError::Equivocation { .. } => (StatusCode::CONFLICT, "equivocation"),
                CoreError::StorageFull => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// Whether the request was the client's fault (its bytes are kept for audit).
    pub fn is_client_error(&self) -> bool {
        self.status_and_code().0.is_client_error()
    }
}

impl IntoResponse for StationError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error".to_string()
        } else {
            self.to_string()
        };
        (
            status,
            Json(ErrorBody {
                error: code.to_string(),
                message,
            }),
        )
            .into_response()
    }
}

pub type Result<T, E = StationError> = std::result::Result<T, E>;
