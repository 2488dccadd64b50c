//! The long-running proxy's path: an in-process [`Syncer`] that keeps the compiled state in
//! memory and is told which services changed (as a watch event stream tells it), applying the same
//! sequence of changes as the CLI measurement, in its own fresh namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use nftproxy_bin::nft::{Backend, Nft};
use nftproxy_bin::sync::{SyncReport, Syncer};
use nftproxy_core::parse::parse_snapshot;
use nftproxy_core::snapshot::{EndpointSlice, ObjectName};
use nftproxy_core::{ProxyConfig, Snapshot};
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
    fn new(change: &str, r: &SyncReport, wall_ms: f64) -> Self {
        Self {
            change: change.to_owned(),
            ops: r.ops,
            compile_plan_ms: r.compile_plan.as_secs_f64() * 1e3,
            apply_ms: r.apply.as_secs_f64() * 1e3,
            wall_ms,
        }
    }
}

fn load(path: &Path) -> Result<Snapshot> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_snapshot(&text)?.snapshot)
}

/// Services whose Service object or EndpointSlices differ between two snapshots (what a watch
/// would report).
fn changed_services(a: &Snapshot, b: &Snapshot) -> Vec<ObjectName> {
    fn slices(s: &Snapshot) -> BTreeMap<ObjectName, Vec<&EndpointSlice>> {
        let mut out: BTreeMap<ObjectName, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in s.slices.values() {
            if let Some(svc) = &slice.service_name {
                out.entry(ObjectName::new(slice.name.namespace.clone(), svc.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        out
    }
    let (sa, sb) = (slices(a), slices(b));
    let names: BTreeSet<&ObjectName> = a
        .services
        .keys()
        .chain(b.services.keys())
        .chain(sa.keys())
        .chain(sb.keys())
        .collect();
    names
        .into_iter()
        .filter(|n| a.services.get(*n) != b.services.get(*n) || sa.get(*n) != sb.get(*n))
        .cloned()
        .collect()
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
    let mut syncer = Syncer::new(config, Nft::in_netns(&ns.name), Backend::Json)?;
    let mut prev = load(base)?;
    let start = Instant::now();
    let report = syncer.sync(&prev, None)?;
    let full = DaemonStep::new("full sync", &report, start.elapsed().as_secs_f64() * 1e3);
    let mut out = Vec::new();
    for (change, path) in steps {
        let next = load(path)?;
        let changed = changed_services(&prev, &next);
        let start = Instant::now();
        let report = syncer.sync(&next, Some(&changed))?;
        out.push(DaemonStep::new(
            change,
            &report,
            start.elapsed().as_secs_f64() * 1e3,
        ));
        prev = next;
    }
    Ok((full, out))
}
