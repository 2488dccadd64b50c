//! The kernel side of nftproxy: running nft, probing its capabilities, applying transactions,
//! flushing stale conntrack entries, and [`sync::Syncer`], which keeps the compiled state in
//! memory and sends only what changed (what a long-running proxy does on every sync).

pub mod apply;
pub mod conntrack;
pub mod nft;
pub mod probe;
pub mod sync;
