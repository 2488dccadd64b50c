//! Parsing Kubernetes objects (YAML or JSON) and KubeProxyConfiguration into validated types.

use crate::config::ProxyConfig;
use crate::snapshot::{Snapshot, Warning};

/// A parsed snapshot with the warnings produced while reading it.
#[derive(Debug, Clone, Default)]
pub struct ParsedSnapshot {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Objects or parts skipped (unknown kinds, invalid endpoint addresses, ...).
    pub warnings: Vec<Warning>,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Placeholder.
    #[error("not implemented")]
    Todo,
}

/// Why a proxy configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Placeholder.
    #[error("not implemented")]
    Todo,
}

/// Reads a `kind: List`, multi-document YAML or JSON.
pub fn parse_snapshot(_input: &str) -> Result<ParsedSnapshot, ParseError> {
    Err(ParseError::Todo)
}

/// Reads a `KubeProxyConfiguration` document.
pub fn parse_config(_input: &str) -> Result<ProxyConfig, ConfigError> {
    Err(ConfigError::Todo)
}
