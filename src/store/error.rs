use thiserror::Error;

/// Why a store call failed. [`StoreError::is_retryable`] tells a worker whether backing off
/// and trying again may help; fatal errors need an operator (wrong credentials, no such PPA).
#[derive(Debug, Error)]
pub enum StoreError {
    /// `412`: someone wrote the resource since we read it. Re-read and decide again.
    #[error("the resource changed since it was read (412 Precondition Failed)")]
    Conflict,
    /// `404`: no such archive or publication.
    #[error("not found in the store: {0}")]
    NotFound(String),
    /// `401` / `403`: the credentials are missing, wrong or lack permission.
    #[error("the store refused our credentials ({status}); check the credentials file")]
    Unauthorized { status: u16 },
    /// Another `4xx`: the request itself is wrong; retrying will not help.
    #[error("the store rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// `5xx`: the store failed; try again later.
    #[error("the store failed ({status}); will retry")]
    Unavailable { status: u16 },
    /// Timeout, refused or dropped connection.
    #[error("could not reach the store: {0}")]
    Transport(String),
    /// A `2xx` answer we could not read.
    #[error("unexpected answer from the store: {0}")]
    Protocol(String),
}

impl StoreError {
    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Transport(_) | StoreError::Protocol(_)
        )
    }
}
