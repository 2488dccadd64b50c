//! Renderers: nft text (for review and golden files) and libnftables JSON (for applying).

use crate::ruleset::Ruleset;

/// Renders the ruleset as an nft script (`table ip NAME { ... }` blocks), stable and sorted.
pub fn to_nft_text(_ruleset: &Ruleset) -> String {
    String::new()
}

/// Renders the ruleset as libnftables JSON that `nft -j -f` loads into an empty namespace.
pub fn to_json(_ruleset: &Ruleset) -> String {
    String::new()
}
