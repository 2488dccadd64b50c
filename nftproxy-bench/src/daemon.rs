//! The long-running proxy's path: the in-process proxy engine, which keeps the snapshot and the
//! compiled state in memory and recompiles only what changed, driven against the kernel with the
//! same sequence of changes as the CLI measurement, in its own fresh namespace.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nftproxy_bin::nft::{Backend, Nft};
use nftproxy_bin::sync::{drive, Driven, Kernel};
use nftproxy_core::engine::ResourceKind;
use nftproxy_core::parse::parse_snapshot;
use nftproxy_core::{Engine, ProxyConfig, Snapshot, SyncTiming};
use serde::Serialize;

use crate::netns::Netns;

/// One sync of the in-process syncer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DaemonStep {
    pub(crate) change: String,
    pub(crate) ops: usize,
    /// Recompiling the changed services and planning.
    pub(crate) compile_plan_ms: f64,
    /// nft applying the transaction.
    pub(crate) apply_ms: f64,
    /// The whole sync (compile, plan, nft, conntrack).
    pub(crate) wall_ms: f64,
}

impl DaemonStep {
    fn new(change: &str, d: &Driven, wall_ms: f64) -> Result<Self> {
        // No action at all: nothing differed (the engine sends nothing).
        let ops = match d.report() {
            None if d.actions.is_empty() => 0,
            None => bail!("{change}: the engine did not finish a sync"),
            Some(r) => match &r.error {
                Some(e) => bail!("{change}: sync failed: {e}"),
                None => r.ops,
            },
        };
        Ok(Self {
            change: change.to_owned(),
            ops,
            compile_plan_ms: d.engine_time.as_secs_f64() * 1e3,
            apply_ms: d.apply_time().as_secs_f64() * 1e3,
            wall_ms,
        })
    }
}

fn load(path: &Path) -> Result<Snapshot> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_snapshot(&text)?.snapshot)
}

/// Full sync of `base`, then each step with only its changed services.
pub(crate) fn measure(
    base: &Path,
    steps: &[(String, std::path::PathBuf)],
) -> Result<(DaemonStep, Vec<DaemonStep>)> {
    let ns = Netns::new("daemon")?;
    let config = ProxyConfig {
        node_name: "node-0".into(),
        node_ips: vec!["192.168.0.2".parse()?],
        cluster_cidrs: vec!["10.0.0.0/8".parse()?],
        ..ProxyConfig::default()
    };
    let kernel = Kernel {
        nft: Nft::in_netns(&ns.name),
        backend: Backend::Netlink,
        table: config.table_name.clone(),
    };
    let timing = SyncTiming {
        min_sync_period: Duration::ZERO,
        ..SyncTiming::default()
    };
    let kinds = [
        ResourceKind::Service,
        ResourceKind::EndpointSlice,
        ResourceKind::Node,
    ];
    let mut engine = Engine::new(config, timing, &kinds, Instant::now())?;
    let start = Instant::now();
    engine.replace_snapshot(load(base)?, Instant::now());
    let full = DaemonStep::new(
        "full sync",
        &drive(&mut engine, &kernel),
        start.elapsed().as_secs_f64() * 1e3,
    )?;
    let mut out = Vec::new();
    for (change, path) in steps {
        let next = load(path)?;
        // The snapshot hand-over (diffing objects) is what a watch event does; not timed.
        engine.replace_snapshot(next, Instant::now());
        let start = Instant::now();
        let driven = drive(&mut engine, &kernel);
        out.push(DaemonStep::new(
            change,
            &driven,
            start.elapsed().as_secs_f64() * 1e3,
        )?);
    }
    Ok((full, out))
}
