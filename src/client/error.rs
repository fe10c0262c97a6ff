//! Why a call of the [`Client`](super::Client) failed, and whether trying again may help.

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The assigner answered an error.
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        /// The API's machine-readable code (`no_slot`, `not_held`, …; DESIGN §4).
        code: String,
        message: String,
        /// Seconds the assigner asked the client to wait before trying again.
        retry_after: Option<u64>,
    },
    /// The assigner could not be reached, or the connection broke or timed out.
    #[error(
        "cannot reach the assigner at {url}: {reason}; is it running (`berth dev` starts one)?"
    )]
    Unreachable { url: String, reason: String },
    /// The assigner's TLS certificate was not trusted (or TLS failed on a certificate).
    #[error(
        "TLS with the assigner at {url} failed: {reason}; if its certificate is from a private CA, pass that CA with --ca-file (BERTH_CA_FILE)"
    )]
    Certificate { url: String, reason: String },
    /// The assigner answered something this client cannot read.
    #[error("unexpected answer from the assigner: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Whether the failure is temporary: the assigner is down, restarting, cut off from the
    /// broker or from a slot's worker, or busy (`503`, `502`, `504`, no connection, a
    /// timeout). `no_slot` is temporary too: a slot may come free later.
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => matches!(status, 502..=504),
            ClientError::Unreachable { .. } => true,
            ClientError::Certificate { .. } | ClientError::Unexpected(_) => false,
        }
    }

    /// The API's error code, if the assigner answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether no slot came free within the wait (`503 no_slot`).
    pub fn is_no_slot(&self) -> bool {
        self.code() == Some("no_slot")
    }

    /// Whether the lease is not (or no longer) this holder's: `403 wrong_token` or
    /// `409 not_held` (not `403 forbidden`: the client's role or pools forbid the call).
    pub fn is_lease_lost(&self) -> bool {
        match self {
            ClientError::Api { status: 409, .. } => true,
            ClientError::Api {
                status: 403, code, ..
            } => code != "forbidden",
            _ => false,
        }
    }

    /// Exit code of the client commands: [`EXIT_NO_SLOT`], [`EXIT_NOT_HOLDER`], or 1.
    pub fn exit_code(&self) -> u8 {
        if self.is_no_slot() {
            EXIT_NO_SLOT
        } else if self.is_lease_lost() {
            EXIT_NOT_HOLDER
        } else {
            1
        }
    }
}

/// Exit code of `acquire`, `renew`, `release`, `status`: no slot came free within the wait.
pub const EXIT_NO_SLOT: u8 = 3;
/// Exit code of `acquire`, `renew`, `release`, `status`: the lease token is wrong or the
/// slot is not held.
pub const EXIT_NOT_HOLDER: u8 = 4;
