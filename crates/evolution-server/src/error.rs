//! Evolution-style error bodies: `{"status":400,"error":"Bad Request","response":{"message":[...]}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use evolution_events::ValidationErrors;
use evolution_outbox::{OutboxError, StoreError};
use evolution_sinks::EmitError;

/// An error answer of the REST API.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    messages: Vec<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            messages: vec![message.into()],
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn many(status: StatusCode, messages: Vec<String>) -> Self {
        Self {
            status,
            messages,
            retry_after: None,
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> Self {
        Self::many(
            StatusCode::BAD_REQUEST,
            e.0.iter().map(ToString::to_string).collect(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            other => {
                tracing::error!(error = %other, "storage failed");
                Self::unavailable(other.to_string(), 1)
            }
        }
    }
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Full { .. } => Self::unavailable(e.to_string(), 1),
            other => {
                tracing::error!(error = %other, "outbox failed");
                Self::unavailable(format!("{other}; nothing was stored, retry later"), 1)
            }
        }
    }
}

impl From<EmitError> for ApiError {
    fn from(e: EmitError) -> Self {
        match e {
            EmitError::Outbox(inner) => inner.into(),
            EmitError::Closed => Self::unavailable(
                "the server is shutting down; retry on another replica or later",
                5,
            ),
            EmitError::Routing(inner) => Self::bad_request(inner.to_string()),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::json!({
            "status": self.status.as_u16(),
            "error": reason,
            "response": {"message": self.messages},
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
