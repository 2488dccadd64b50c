//! In-process timings of nftproxy-core: parse, compile, render and plan, each the median of a few
//! runs.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use nftproxy_core::{compile, parse, plan, render, ProxyConfig, Ruleset, Snapshot};
use serde::Serialize;

/// What the in-process measurements found (times in milliseconds).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct InProcess {
    /// `parse_snapshot` of the N-service file.
    pub(crate) parse_ms: f64,
    /// `compile` of the N-service snapshot.
    pub(crate) compile_ms: f64,
    /// `render::to_json` of the compiled ruleset.
    pub(crate) render_json_ms: f64,
    /// Size of that JSON.
    pub(crate) render_json_bytes: usize,
    /// `plan(empty, ruleset)`.
    pub(crate) full_plan_ms: f64,
    /// Operations of the full plan.
    pub(crate) full_plan_ops: usize,
    /// Rendering the full plan as the JSON batch `nftproxy apply` sends.
    pub(crate) full_plan_json_ms: f64,
    /// `compile` of the snapshot with one endpoint added.
    pub(crate) change_compile_ms: f64,
    /// `plan(previous ruleset, changed ruleset)`.
    pub(crate) change_plan_ms: f64,
    /// The sum of the two: what one endpoint change costs before nft runs.
    pub(crate) change_compile_plan_ms: f64,
    /// Operations of that plan.
    pub(crate) change_ops: usize,
}

/// The config every measurement uses, matching the `nftproxy apply` flags.
pub(crate) fn config() -> Result<ProxyConfig> {
    Ok(ProxyConfig {
        node_name: crate::NODE_NAME.into(),
        node_ips: vec![crate::NODE_IP.parse()?],
        cluster_cidrs: vec![crate::CLUSTER_CIDR.parse()?],
        ..ProxyConfig::default()
    })
}

/// Median wall time of `repeat` runs of `f` (at least one), in milliseconds, and the last result.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut once = || -> Result<(f64, T)> {
        let start = Instant::now();
        let out = black_box(f()?);
        Ok((start.elapsed().as_secs_f64() * 1e3, out))
    };
    let (first, mut last) = once()?;
    let mut times = vec![first];
    for _ in 1..repeat {
        let (ms, out) = once()?;
        times.push(ms);
        last = out;
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], last))
}

fn load(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn compile_ruleset(snapshot: &Snapshot, config: &ProxyConfig) -> Result<Ruleset> {
    Ok(compile(snapshot, config)?.ruleset)
}

/// Measures the base snapshot `base` and the one-endpoint change `changed`.
pub(crate) fn measure(base: &Path, changed: &Path, repeat: usize) -> Result<InProcess> {
    let config = config()?;
    let text = load(base)?;
    let (parse_ms, parsed) = timed(repeat, || Ok(parse::parse_snapshot(&text)?))?;
    drop(text);
    let (compile_ms, ruleset) = timed(repeat, || compile_ruleset(&parsed.snapshot, &config))?;
    let (render_json_ms, json) = timed(repeat, || Ok(render::to_json(&ruleset)))?;
    let (full_plan_ms, full) = timed(repeat, || Ok(plan::plan(&Ruleset::default(), &ruleset)))?;
    let (full_plan_json_ms, _) = timed(repeat, || Ok(full.to_json().len()))?;
    let changed = parse::parse_snapshot(&load(changed)?)?.snapshot;
    let (change_compile_ms, new_ruleset) = timed(repeat, || compile_ruleset(&changed, &config))?;
    let (change_plan_ms, tx) = timed(repeat, || Ok(plan::plan(&ruleset, &new_ruleset)))?;
    Ok(InProcess {
        parse_ms,
        compile_ms,
        render_json_ms,
        render_json_bytes: json.len(),
        full_plan_ms,
        full_plan_ops: full.len(),
        full_plan_json_ms,
        change_compile_ms,
        change_plan_ms,
        change_compile_plan_ms: change_compile_ms + change_plan_ms,
        change_ops: tx.len(),
    })
}
