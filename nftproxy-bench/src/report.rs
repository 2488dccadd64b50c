//! The results of a run, the targets they are held against, and the one table (and JSON) that
//! shows both.

use serde::Serialize;

use crate::cluster::Counts;
use crate::dataplane::Latency;
use crate::inproc::InProcess;
use crate::kernel::{ApplyRun, ReferenceRun};
use crate::netprog::{quantiles, KubeProxyRun};

/// The machine the run happened on.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) nft: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute load averages when the run started and ended (other
    /// jobs on the machine show here).
    pub(crate) load_start: String,
    pub(crate) load_end: String,
}

/// One incremental apply.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    /// What changed, e.g. `+1 endpoint (ns-12/svc-005012)`.
    pub(crate) change: String,
    pub(crate) run: ApplyRun,
}

/// The data-plane measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DataPlane {
    /// Services loaded for the baseline.
    pub(crate) base_services: usize,
    pub(crate) base: Latency,
    pub(crate) scaled: Latency,
    /// Loading the N-service ruleset into the second topology's node.
    pub(crate) load: ApplyRun,
}

impl DataPlane {
    fn ratio(&self) -> f64 {
        self.scaled.median_us / self.base.median_us
    }
}

/// Everything measured for one N × M.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ScaleResult {
    pub(crate) services: usize,
    pub(crate) endpoints_per_service: usize,
    pub(crate) snapshot: Counts,
    pub(crate) generate_ms: f64,
    pub(crate) in_process: Option<InProcess>,
    pub(crate) full_apply: Option<ApplyRun>,
    pub(crate) incremental: Vec<Step>,
    /// The same change as `incremental[0]`, once more, with the nft wrapper, for the breakdown.
    pub(crate) incremental_instrumented: Option<Step>,
    pub(crate) reference: Option<ReferenceRun>,
    /// Why the reference was not run.
    pub(crate) reference_skipped: Option<String>,
    pub(crate) dataplane: Option<DataPlane>,
    /// The in-process syncer: full sync of the base snapshot.
    pub(crate) daemon_full: Option<crate::daemon::DaemonStep>,
    /// The in-process syncer: the same steps as `incremental`.
    pub(crate) daemon: Vec<crate::daemon::DaemonStep>,
    /// `nftproxy run` against a real API server.
    pub(crate) netprog: Option<crate::netprog::NetProg>,
    /// Why that was not run.
    pub(crate) netprog_skipped: Option<String>,
    /// Stages that failed.
    pub(crate) errors: Vec<String>,
}

impl ScaleResult {
    fn ratio_reference(&self) -> Option<f64> {
        Some(self.reference.as_ref()?.wall_ms / self.full_apply.as_ref()?.wall_ms)
    }

    fn kube_proxy(&self) -> Option<&KubeProxyRun> {
        self.netprog.as_ref()?.kube_proxy.as_ref()
    }

    /// The daemon's run against the real API server that the kube-proxy ratios compare with:
    /// minSyncPeriod 1s, kube-proxy's default too.
    fn daemon_run(&self) -> Option<&crate::netprog::Run> {
        let p = self.netprog.as_ref()?;
        p.run("1s").or(p.runs.first())
    }

    /// kube-proxy's first full sync over the daemon's (both from process start).
    fn ratio_kube_proxy_first_sync(&self) -> Option<f64> {
        Some(self.kube_proxy()?.first_sync_ms / self.daemon_run()?.first_sync_ms)
    }

    /// kube-proxy's one-endpoint latency p50 over the daemon's: PATCH until each one's nft
    /// transaction has exited (the daemon's `sync done` line comes just after).
    fn ratio_kube_proxy_endpoint(&self) -> Option<f64> {
        Some(self.kube_proxy()?.latency?.p50 / self.daemon_run()?.latency?.p50)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) command: String,
    pub(crate) rss_method: &'static str,
    pub(crate) results: Vec<ScaleResult>,
    pub(crate) targets: Vec<TargetResult>,
}

/// A target held against one result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetResult {
    pub(crate) target: String,
    pub(crate) services: usize,
    pub(crate) pass: bool,
}

/// A target: a check that applies at one scale (with 10 endpoints per service) or at every scale.
struct Target {
    text: &'static str,
    /// `Some(n)`: only for `n` services × 10 endpoints.
    at: Option<usize>,
    check: fn(&ScaleResult) -> Option<bool>,
}

impl Target {
    fn applies(&self, r: &ScaleResult) -> bool {
        self.at
            .is_none_or(|n| r.services == n && r.endpoints_per_service == 10)
    }
}

const ENDPOINT_OPS_MAX: usize = 8;
const ENDPOINT_MS_MAX: f64 = 30.0;

fn step_ok(r: &ScaleResult, i: usize) -> Option<bool> {
    let s = r.incremental.get(i)?;
    Some(s.run.ops <= ENDPOINT_OPS_MAX && s.run.wall_ms < ENDPOINT_MS_MAX)
}

/// The row (by label) each target is shown on.
fn targets() -> Vec<(&'static str, Target)> {
    vec![
        (
            "compile + plan, 1 endpoint change",
            Target {
                text: "< 5 ms @10k",
                at: Some(10_000),
                check: |r| Some(r.in_process.as_ref()?.change_compile_plan_ms < 5.0),
            },
        ),
        (
            "full apply (wall, ops)",
            Target {
                text: "< 3 s @10k",
                at: Some(10_000),
                check: |r| Some(r.full_apply.as_ref()?.wall_ms < 3_000.0),
            },
        ),
        (
            "full apply (wall, ops)",
            Target {
                text: "< 15 s @30k",
                at: Some(30_000),
                check: |r| Some(r.full_apply.as_ref()?.wall_ms < 15_000.0),
            },
        ),
        (
            "peak RSS nftproxy (VmHWM)",
            Target {
                text: "< 300 MB @10k",
                at: Some(10_000),
                check: |r| Some(r.full_apply.as_ref()?.nftproxy_rss_kib? as f64 * 1024.0 < 300e6),
            },
        ),
        (
            "+1 endpoint",
            Target {
                text: "<= 8 ops, < 30 ms @10k",
                at: Some(10_000),
                check: |r| step_ok(r, 0),
            },
        ),
        (
            "-1 endpoint",
            Target {
                text: "<= 8 ops, < 30 ms @10k",
                at: Some(10_000),
                check: |r| step_ok(r, 1),
            },
        ),
        (
            "same snapshot again",
            Target {
                text: "0 ops",
                at: None,
                check: |r| Some(r.incremental.get(4)?.run.ops == 0),
            },
        ),
        (
            "daemon: +1 endpoint (ops, compile+plan, nft, total)",
            Target {
                text: "<= 8 ops, < 30 ms @10k",
                at: Some(10_000),
                check: |r| daemon_ok(r, 0),
            },
        ),
        (
            "daemon: -1 endpoint (ops, compile+plan, nft, total)",
            Target {
                text: "<= 8 ops, < 30 ms @10k",
                at: Some(10_000),
                check: |r| daemon_ok(r, 1),
            },
        ),
        (
            "daemon: +1 endpoint (ops, compile+plan, nft, total)",
            Target {
                text: "compile+plan < 5 ms @10k",
                at: Some(10_000),
                check: |r| Some(r.daemon.first()?.compile_plan_ms < 5.0),
            },
        ),
        (
            "daemon: same snapshot again",
            Target {
                text: "0 ops",
                at: None,
                check: |r| Some(r.daemon.get(4)?.ops == 0),
            },
        ),
        (
            "daemon: peak RSS (VmHWM)",
            Target {
                text: "< 400 MB @10k",
                at: Some(10_000),
                check: |r| Some(r.netprog.as_ref()?.daemon_hwm_kib()? as f64 * 1024.0 < 400e6),
            },
        ),
        (
            "reference / ours (full apply)",
            Target {
                text: ">= 30x @10k",
                at: Some(10_000),
                check: |r| Some(r.ratio_reference()? >= 30.0),
            },
        ),
        (
            "data plane: median N / median base",
            Target {
                text: "<= 1.3x",
                at: None,
                check: |r| Some(r.dataplane.as_ref()?.ratio() <= 1.3),
            },
        ),
    ]
}

/// An in-process sync step within the ops and time budget.
fn daemon_ok(r: &ScaleResult, i: usize) -> Option<bool> {
    let s = r.daemon.get(i)?;
    Some(s.ops <= 8 && s.wall_ms < 30.0)
}

/// Evaluates every target that applies to a result.
pub(crate) fn evaluate(results: &[ScaleResult]) -> Vec<TargetResult> {
    let mut out = Vec::new();
    for (label, t) in targets() {
        for r in results.iter().filter(|r| t.applies(r)) {
            if let Some(pass) = (t.check)(r) {
                out.push(TargetResult {
                    target: format!("{label}: {}", t.text),
                    services: r.services,
                    pass,
                });
            }
        }
    }
    out
}

/// Latency quantiles of the real-API-server run with this minSyncPeriod.
fn netprog_latency(r: &ScaleResult, period: &str) -> Option<String> {
    let run = r.netprog.as_ref()?.run(period)?;
    let l = run.latency.as_ref()?;
    let mut text = format!("{} / {} / {}", ms(l.p50), ms(l.p99), ms(l.max));
    if run.changes.len() != 100 {
        text.push_str(&format!(" ({} changes)", run.changes.len()));
    }
    Some(text)
}

/// PATCH to the kernel's commit, as measured for kube-proxy, in the run with this minSyncPeriod.
fn netprog_kernel(r: &ScaleResult, period: &str) -> Option<String> {
    let run = r.netprog.as_ref()?.run(period)?;
    if let Some(why) = &run.kernel_skipped {
        return Some(format!("not measured ({why})"));
    }
    let k = run.kernel.as_ref()?;
    let seen = run.changes.iter().filter(|c| c.kernel_ms.is_some()).count();
    let mut text = format!("{} / {} / {}", ms(k.p50), ms(k.p99), ms(k.max));
    if seen != run.changes.len() {
        text.push_str(&format!(" ({seen} of {} changes seen)", run.changes.len()));
    }
    Some(text)
}

/// The daemon's own sync time and the PATCH round trip of that run.
fn netprog_parts(r: &ScaleResult, period: &str) -> Option<String> {
    let run = r.netprog.as_ref()?.run(period)?;
    let (s, q) = (run.sync.as_ref()?, run.request.as_ref()?);
    Some(format!("{} / {}; {}", ms(s.p50), ms(s.p99), ms(q.p50)))
}

fn daemon_cell(r: &ScaleResult, i: usize) -> Option<String> {
    let d = r.daemon.get(i)?;
    Some(format!(
        "{} ops, {:.2} / {:.1} / {:.1} ms",
        d.ops, d.compile_plan_ms, d.apply_ms, d.wall_ms
    ))
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// Milliseconds below 10 s, else seconds.
fn ms_or_secs(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1e3)
    } else {
        ms(v)
    }
}

fn secs(v_ms: f64) -> String {
    format!("{:.2} s", v_ms / 1e3)
}

fn mb_kib(kib: u64) -> String {
    format!("{:.0} MB", kib as f64 * 1024.0 / 1e6)
}

fn apply_cell(run: &ApplyRun) -> String {
    let wall = if run.wall_ms >= 1_000.0 {
        secs(run.wall_ms)
    } else {
        ms(run.wall_ms)
    };
    format!("{wall}, {} ops", run.ops)
}

/// Wall time of the nft calls of a run split into readback (`list`), capability probe (`--check`,
/// `--version`) and the batch itself.
fn nft_breakdown(run: &ApplyRun) -> (f64, f64, f64) {
    let list = run.nft_ms_matching("list");
    let probe: f64 = run
        .nft_calls
        .iter()
        .filter(|c| c.args.contains("--check") || c.args.contains("--version"))
        .map(|c| c.wall_ms)
        .sum();
    (list, probe, run.nft_ms() - list - probe)
}

type Cell = fn(&ScaleResult) -> Option<String>;

/// Rows: label and how to fill a cell from a result.
fn rows() -> Vec<(&'static str, Cell)> {
    vec![
        ("snapshot: services / slices / endpoints", |r| {
            Some(format!(
                "{} / {} / {}",
                r.snapshot.services, r.snapshot.slices, r.snapshot.endpoints
            ))
        }),
        ("snapshot: file size, generate time", |r| {
            Some(format!(
                "{:.1} MB, {}",
                r.snapshot.bytes as f64 / 1e6,
                secs(r.generate_ms)
            ))
        }),
        ("parse", |r| Some(ms(r.in_process.as_ref()?.parse_ms))),
        ("compile", |r| Some(ms(r.in_process.as_ref()?.compile_ms))),
        ("render ruleset JSON (time, size)", |r| {
            let p = r.in_process.as_ref()?;
            Some(format!(
                "{}, {:.1} MB",
                ms(p.render_json_ms),
                p.render_json_bytes as f64 / 1e6
            ))
        }),
        ("plan empty -> N (time, ops)", |r| {
            let p = r.in_process.as_ref()?;
            Some(format!("{}, {} ops", ms(p.full_plan_ms), p.full_plan_ops))
        }),
        ("full plan as JSON batch", |r| {
            Some(ms(r.in_process.as_ref()?.full_plan_json_ms))
        }),
        ("1 endpoint change: compile", |r| {
            Some(ms(r.in_process.as_ref()?.change_compile_ms))
        }),
        ("1 endpoint change: plan (time, ops)", |r| {
            let p = r.in_process.as_ref()?;
            Some(format!("{}, {} ops", ms(p.change_plan_ms), p.change_ops))
        }),
        ("compile + plan, 1 endpoint change", |r| {
            Some(ms(r.in_process.as_ref()?.change_compile_plan_ms))
        }),
        ("full apply (wall, ops)", |r| {
            Some(apply_cell(r.full_apply.as_ref()?))
        }),
        ("  nft calls: list / probe / batch", |r| {
            let (l, p, b) = nft_breakdown(r.full_apply.as_ref()?);
            Some(format!("{} / {} / {}", secs(l), secs(p), secs(b)))
        }),
        ("  nftproxy itself (wall - nft calls)", |r| {
            let a = r.full_apply.as_ref()?;
            Some(secs(a.wall_ms - a.nft_ms()))
        }),
        ("peak RSS nftproxy (VmHWM)", |r| {
            Some(mb_kib(r.full_apply.as_ref()?.nftproxy_rss_kib?))
        }),
        ("peak RSS largest nft child", |r| {
            Some(mb_kib(r.full_apply.as_ref()?.nft_rss_kib()?))
        }),
        ("+1 endpoint", |r| {
            Some(apply_cell(&r.incremental.first()?.run))
        }),
        ("-1 endpoint", |r| {
            Some(apply_cell(&r.incremental.get(1)?.run))
        }),
        ("+1 service", |r| {
            Some(apply_cell(&r.incremental.get(2)?.run))
        }),
        ("-1 service", |r| {
            Some(apply_cell(&r.incremental.get(3)?.run))
        }),
        ("same snapshot again", |r| {
            Some(apply_cell(&r.incremental.get(4)?.run))
        }),
        ("daemon: full sync (wall, ops)", |r| {
            let d = r.daemon_full.as_ref()?;
            Some(format!("{}, {} ops", secs(d.wall_ms), d.ops))
        }),
        ("daemon: +1 endpoint (ops, compile+plan, nft, total)", |r| {
            daemon_cell(r, 0)
        }),
        ("daemon: -1 endpoint (ops, compile+plan, nft, total)", |r| {
            daemon_cell(r, 1)
        }),
        ("daemon: +1 service (ops, compile+plan, nft, total)", |r| {
            daemon_cell(r, 2)
        }),
        ("daemon: -1 service (ops, compile+plan, nft, total)", |r| {
            daemon_cell(r, 3)
        }),
        ("daemon: same snapshot again", |r| daemon_cell(r, 4)),
        ("+1 endpoint, instrumented (wall, ops)", |r| {
            Some(apply_cell(&r.incremental_instrumented.as_ref()?.run))
        }),
        ("  nft calls: list / probe / batch", |r| {
            let (l, p, b) = nft_breakdown(&r.incremental_instrumented.as_ref()?.run);
            Some(format!("{} / {} / {}", ms(l), ms(p), ms(b)))
        }),
        ("  nftproxy itself (wall - nft calls)", |r| {
            let a = &r.incremental_instrumented.as_ref()?.run;
            Some(ms(a.wall_ms - a.nft_ms()))
        }),
        ("reference: nft -f kube-proxy shape", |r| {
            if let Some(why) = &r.reference_skipped {
                return Some(format!("skipped ({why})"));
            }
            let re = r.reference.as_ref()?;
            Some(format!("{}, {} cmds", secs(re.wall_ms), re.lines))
        }),
        ("  reference nft peak RSS", |r| {
            Some(mb_kib(r.reference.as_ref()?.rss_kib?))
        }),
        ("reference / ours (full apply)", |r| {
            Some(format!("{:.1}x", r.ratio_reference()?))
        }),
        (
            "kube-proxy / ours (first full sync, real API server, from process start)",
            |r| Some(format!("{:.1}x", r.ratio_kube_proxy_first_sync()?)),
        ),
        (
            "kube-proxy / ours (one-endpoint sync p50, real API server, minSyncPeriod 1s)",
            |r| Some(format!("{:.1}x", r.ratio_kube_proxy_endpoint()?)),
        ),
        ("data plane: base services, median / p99", |r| {
            let d = r.dataplane.as_ref()?;
            Some(format!(
                "{}: {:.0} / {:.0} us",
                d.base_services, d.base.median_us, d.base.p99_us
            ))
        }),
        ("data plane: N services, median / p99", |r| {
            let d = r.dataplane.as_ref()?;
            Some(format!(
                "{:.0} / {:.0} us ({} ok, {} failed)",
                d.scaled.median_us, d.scaled.p99_us, d.scaled.ok, d.scaled.failed
            ))
        }),
        ("data plane: median N / median base", |r| {
            Some(format!("{:.2}x", r.dataplane.as_ref()?.ratio()))
        }),
        (
            "daemon (real API server): load (wall, objects; NodePort/LB past port 32767 made ClusterIP)",
            |r| {
                if let Some(why) = &r.netprog_skipped {
                    return Some(format!("skipped ({why})"));
                }
                let p = r.netprog.as_ref()?;
                Some(format!(
                    "{}, {} objects ({:.0} req/s, {} in flight), {} made ClusterIP",
                    secs(p.load_ms),
                    p.objects,
                    p.requests as f64 / (p.load_ms / 1e3),
                    p.concurrency,
                    p.made_cluster_ip
                ))
            },
        ),
        (
            "daemon (real API server): first full sync (wall, ops)",
            |r| {
                let p = r.netprog.as_ref()?;
                let run = p.run("1s").or(p.runs.first())?;
                Some(format!(
                    "{}, {} ops (lists {}, sync {})",
                    secs(run.first_sync_ms),
                    run.first_sync.ops,
                    secs(run.initial_lists_ms?),
                    secs(run.first_sync.duration_ms)
                ))
            },
        ),
        (
            "daemon: network programming latency p50 / p99 / max (100 changes, minSyncPeriod 1s)",
            |r| netprog_latency(r, "1s"),
        ),
        (
            "  sync itself p50 / p99; PATCH round trip p50 (minSyncPeriod 1s)",
            |r| netprog_parts(r, "1s"),
        ),
        (
            "  PATCH to kernel commit (nft monitor) p50 / p99 / max (minSyncPeriod 1s)",
            |r| netprog_kernel(r, "1s"),
        ),
        (
            "daemon: network programming latency p50 / p99 / max (100 changes, minSyncPeriod 0s)",
            |r| netprog_latency(r, "0s"),
        ),
        (
            "  sync itself p50 / p99; PATCH round trip p50 (minSyncPeriod 0s)",
            |r| netprog_parts(r, "0s"),
        ),
        ("daemon: peak RSS (VmHWM)", |r| {
            let p = r.netprog.as_ref()?;
            let end = p.runs.iter().filter_map(|r| r.daemon_rss_kib).max();
            Some(format!(
                "{} (VmRSS at end {})",
                mb_kib(p.daemon_hwm_kib()?),
                end.map_or_else(|| "-".to_owned(), mb_kib)
            ))
        }),
        ("  kube-apiserver / etcd peak RSS (VmHWM)", |r| {
            let p = r.netprog.as_ref()?;
            Some(format!(
                "{} / {}",
                mb_kib(p.apiserver_hwm_kib?),
                mb_kib(p.etcd_hwm_kib?)
            ))
        }),
        (
            "kube-proxy (real API server): first full sync (wall; its elapsed; its metrics)",
            |r| {
                let p = r.netprog.as_ref()?;
                if let Some(why) = &p.kube_proxy_skipped {
                    return Some(format!("not run ({why})"));
                }
                let k = p.kube_proxy.as_ref()?;
                let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), secs);
                Some(format!(
                    "{} (elapsed {}; metrics: full sync {}, last sync {} after start)",
                    secs(k.first_sync_ms),
                    opt(k.first_sync_elapsed_ms),
                    opt(k.metric_full_sync_ms),
                    opt(k.metric_last_sync_ms)
                ))
            },
        ),
        ("  kube-proxy's table: chains / rules / set+map elements", |r| {
            let t = r.kube_proxy()?.table?;
            Some(format!("{} / {} / {}", t.chains, t.rules, t.elements))
        }),
        (
            "kube-proxy: one-endpoint sync, PATCH to its nft transaction's exit p50 / p99 / max",
            |r| {
                let k = r.kube_proxy()?;
                let l = k.latency?;
                let confirmed = k.changes.iter().filter(|c| c.confirmed).count();
                Some(format!(
                    "{} / {} / {} ({} changes, {} then in its table)",
                    ms_or_secs(l.p50),
                    ms_or_secs(l.p99),
                    ms_or_secs(l.max),
                    k.changes.len(),
                    confirmed
                ))
            },
        ),
        ("  its nft per sync: listing its table / transaction p50", |r| {
            let k = r.kube_proxy()?;
            let list = quantiles(k.changes.iter().map(|c| c.nft_list_ms).collect())?;
            let tx = quantiles(k.changes.iter().map(|c| c.nft_transaction_ms).collect())?;
            Some(format!("{} / {}", ms_or_secs(list.p50), ms_or_secs(tx.p50)))
        }),
        ("  its own sync (SyncProxyRules elapsed) p50 / p99", |r| {
            let s = r.kube_proxy()?.sync?;
            Some(format!("{} / {}", ms_or_secs(s.p50), ms_or_secs(s.p99)))
        }),
        (
            "kube-proxy: peak RSS (VmHWM) after first sync / at end; largest nft child",
            |r| {
                let k = r.kube_proxy()?;
                let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), mb_kib);
                Some(format!(
                    "{} / {}; nft {} ({} calls)",
                    opt(k.hwm_first_sync_kib),
                    opt(k.hwm_kib),
                    opt(k.nft_hwm_kib),
                    k.nft_calls
                ))
            },
        ),
        ("  stage wall time (servers up to down)", |r| {
            let p = r.netprog.as_ref()?;
            Some(format!(
                "{:.0} s (API server start {})",
                p.stage_ms / 1e3,
                secs(p.apiserver_start_ms)
            ))
        }),
    ]
}

/// The table, as text.
pub(crate) fn table(report: &Report) -> String {
    let results = &report.results;
    let targets = targets();
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["services x endpoints".to_owned()];
    header.extend(
        results
            .iter()
            .map(|r| format!("{} x {}", r.services, r.endpoints_per_service)),
    );
    header.push("target".to_owned());
    lines.push(header);
    for (label, cell) in rows() {
        let row_targets: Vec<&Target> = targets
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, t)| t)
            .collect();
        let mut line = vec![label.to_owned()];
        for r in results {
            let mut text = cell(r).unwrap_or_else(|| "-".to_owned());
            for t in row_targets.iter().filter(|t| t.applies(r)) {
                if let Some(pass) = (t.check)(r) {
                    text.push_str(if pass { " PASS" } else { " MISS" });
                }
            }
            line.push(text);
        }
        line.push(
            row_targets
                .iter()
                .map(|t| t.text)
                .collect::<Vec<_>>()
                .join("; "),
        );
        lines.push(line);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("-+-"));
            out.push('\n');
        }
    }
    out
}
