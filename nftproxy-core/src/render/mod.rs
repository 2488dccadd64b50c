//! Renderers: nft text (for review and golden files) and libnftables JSON (for applying).
