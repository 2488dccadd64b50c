//! Capability probe: which nft is installed and which backend can express our ruleset.
//!
//! The probe compiles a built-in cluster that makes the compiler emit every construct it has, and
//! asks nft to check (`--check`: nothing is committed) the full ruleset in JSON and in text. If the
//! JSON form is refused, each rule is checked on its own to name the constructs that fail.
//!
//! Netlink has no `--check`: the probe sends the full ruleset as one batch that ends with an op
//! bound to fail (deleting a table that does not exist). The kernel validates every message,
//! refuses the last one and so commits nothing; netlink works when that last op is the only
//! one refused.

use anyhow::{bail, Result};
use nftproxy_core::parse::parse_snapshot;
use nftproxy_core::plan::{self, Op, Transaction};
use nftproxy_core::{compile, ProxyConfig, Ruleset};

use crate::netlink::{NetlinkError, NetlinkSocket};
use crate::nft::{call_timeout, Backend, Nft};

const PROBE_SNAPSHOT: &str = include_str!("probe.yaml");
const PROBE_TABLE: &str = "nftproxy-probe";

/// What the probe found.
#[derive(Debug)]
pub struct Capabilities {
    /// `nft --version`.
    pub version: String,
    /// Netlink batches are accepted by the kernel (else the reason).
    pub netlink: Result<(), String>,
    /// JSON backend accepted the full ruleset (else the reason).
    pub json: Result<(), String>,
    /// Text backend accepted the full ruleset (else the reason).
    pub text: Result<(), String>,
}

impl Capabilities {
    /// Picks the requested backend, or netlink when it works, else JSON, else text.
    pub fn choose(&self, requested: Option<Backend>) -> Result<Backend> {
        let pick = |b: Backend| match b {
            Backend::Netlink => &self.netlink,
            Backend::Json => &self.json,
            Backend::Text => &self.text,
        };
        match requested {
            Some(b) => match pick(b) {
                Ok(()) => Ok(b),
                Err(why) => bail!(
                    "the {} backend does not work with nft {}: {why}",
                    b.as_str(),
                    self.version
                ),
            },
            None => [Backend::Netlink, Backend::Json, Backend::Text]
                .into_iter()
                .find(|b| pick(*b).is_ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "nft {} accepts neither JSON ({}) nor text ({})",
                        self.version,
                        self.json.as_ref().err().map_or("ok", |s| s.as_str()),
                        self.text.as_ref().err().map_or("ok", |s| s.as_str())
                    )
                }),
        }
    }
}

fn probe_ruleset() -> Result<Ruleset> {
    let snapshot = parse_snapshot(PROBE_SNAPSHOT)?.snapshot;
    let config = ProxyConfig {
        node_name: "probe".into(),
        cluster_cidrs: vec!["10.0.0.0/8".parse()?, "fd00:10::/48".parse()?],
        table_name: PROBE_TABLE.into(),
        ..ProxyConfig::default()
    };
    Ok(compile(&snapshot, &config)?.ruleset)
}

fn render(tx: &Transaction, backend: Backend) -> String {
    match backend {
        Backend::Json => tx.to_json_compact(),
        // Netlink is not checked through nft (see `check_netlink`); the text form stands in.
        Backend::Text | Backend::Netlink => tx.to_string(),
    }
}

/// The sentinel that ends the netlink probe batch: deleting a table that does not exist.
const SENTINEL_TABLE: &str = "nftproxy-probe-absent";

/// Sends the probe ruleset over netlink in a batch that cannot commit (see the module doc).
fn check_netlink(nft: &Nft, tx: &Transaction) -> Result<(), String> {
    let mut probe = tx.clone();
    let sentinel = plan::TableRef {
        family: nftproxy_core::snapshot::IpFamily::V4,
        name: SENTINEL_TABLE.into(),
    };
    probe.ops.push(Op::DeleteTable(sentinel));
    let last = probe.ops.len() - 1;
    let mut sock = NetlinkSocket::open(nft.netns()).map_err(|e| e.to_string())?;
    match sock.transact(&probe, call_timeout()) {
        Err(NetlinkError::Refused { index, .. }) if index == last => Ok(()),
        Err(e) => Err(e.to_string()),
        Ok(()) => Err(format!(
            "the kernel committed a batch that deletes the absent table ip {SENTINEL_TABLE}"
        )),
    }
}

/// Checks the probe ruleset with one backend; on failure, names the rules nft refuses.
fn check(nft: &Nft, backend: Backend, tx: &Transaction) -> Result<(), String> {
    let Err(e) = nft.batch(backend, &render(tx, backend), true) else {
        return Ok(());
    };
    let skeleton: Vec<Op> = tx
        .ops
        .iter()
        .filter(|op| !matches!(op, Op::AddRule { .. }))
        .cloned()
        .collect();
    let mut refused = Vec::new();
    for op in tx.ops.iter().filter(|op| matches!(op, Op::AddRule { .. })) {
        let mut one = Transaction {
            ops: skeleton.clone(),
        };
        one.ops.push(op.clone());
        if nft.batch(backend, &render(&one, backend), true).is_err() {
            refused.push(op.object_text());
        }
    }
    if refused.is_empty() {
        Err(e.to_string())
    } else {
        Err(format!("refused: {}", refused.join("; ")))
    }
}

/// Probes the installed nft.
pub fn probe(nft: &Nft) -> Result<Capabilities> {
    let version = nft.version()?;
    let tx = plan::full(&probe_ruleset()?);
    Ok(Capabilities {
        version,
        netlink: check_netlink(nft, &tx),
        json: check(nft, Backend::Json, &tx),
        text: check(nft, Backend::Text, &tx),
    })
}
