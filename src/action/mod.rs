//! The restart-action contract: what the Restarter needs from whatever restarts a host.

use thiserror::Error;

use crate::message::Hostname;

/// Why a host restart failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RestartError {
    #[error("Could not restart {0}")]
    Failed(Hostname),
}
