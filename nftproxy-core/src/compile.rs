//! Snapshot + config → ruleset.

use crate::config::ProxyConfig;
use crate::ruleset::Ruleset;
use crate::snapshot::{Snapshot, Warning};

/// The compiled ruleset and what was skipped on the way.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The ruleset.
    pub ruleset: Ruleset,
    /// Objects or parts skipped.
    pub warnings: Vec<Warning>,
}

/// Why a snapshot could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Placeholder.
    #[error("not implemented")]
    Todo,
}

/// Compiles a snapshot.
pub fn compile(_snapshot: &Snapshot, _config: &ProxyConfig) -> Result<Compiled, CompileError> {
    Err(CompileError::Todo)
}
