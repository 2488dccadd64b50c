//! The IO side of nftproxy: running nft, talking nfnetlink ([`netlink`]), probing its capabilities, applying transactions,
//! flushing stale conntrack entries, carrying out the proxy engine's actions ([`sync`]), and the
//! `nftproxy run` daemon that watches the API server ([`run`]).

pub mod apply;
pub mod check;
pub mod conntrack;
pub mod lock;
pub mod netlink;
pub mod nft;
pub mod probe;
pub mod run;
pub mod serve;
pub mod sync;
pub mod sysctl;
