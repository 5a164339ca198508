//! [`Failure`]: why a connection must be failed, shared by the decoder and the inflater.

use crate::code;

/// Why the connection must be failed, with the code its close frame carries (1002, 1007, 1008
/// or 1009: see [`crate::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The close code to send.
    pub code: u16,
    /// What the peer did, for the close reason and logs.
    pub reason: String,
}

impl Failure {
    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self { code: code::PROTOCOL_ERROR, reason: reason.into() }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self { code: code::INVALID_PAYLOAD, reason: reason.into() }
    }

    pub(crate) fn policy(reason: impl Into<String>) -> Self {
        Self { code: code::POLICY_VIOLATION, reason: reason.into() }
    }

    pub(crate) fn too_big(reason: impl Into<String>) -> Self {
        Self { code: code::MESSAGE_TOO_BIG, reason: reason.into() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Failure {}
