//! Reading a ruleset back from libnftables JSON (`nft -j list table ...` output, or our own
//! rendered JSON) into the AST.

use crate::ruleset::Ruleset;

/// Why JSON could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    /// Placeholder.
    #[error("reading back JSON is not implemented yet")]
    Todo,
}

/// Reads libnftables JSON into a ruleset.
pub fn from_nft_json(_json: &str) -> Result<Ruleset, ReadbackError> {
    Err(ReadbackError::Todo)
}
