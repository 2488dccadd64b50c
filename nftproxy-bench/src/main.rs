//! `nftproxy-bench`: how full and incremental syncs scale, measured against a ruleset shaped like
//! kube-proxy's nftables mode in the same run.
//!
//! For every N in `--services` it generates a synthetic cluster of N services × M endpoints (see
//! [`cluster`]) and measures:
//!
//! 1. in process, with nftproxy-core linked: parse, compile, render, full plan, and compile + plan
//!    of a one-endpoint change ([`inproc`]);
//! 2. `nftproxy apply` of the N services into a fresh network namespace (wall time, operations,
//!    peak RSS of nftproxy and of its nft children, time spent in nft), then incremental applies
//!    of one change each on top ([`kernel`]);
//! 3. `nft -f` of the kube-proxy-shaped reference (`../shared/bench/kube-proxy-shape.py` from the
//!    repository root) for the same N × M in another fresh namespace;
//! 4. TCP connect latency through one ClusterIP with 100 services loaded and with N, in two
//!    topologies measured in alternating rounds ([`dataplane`]);
//! 5. the `nftproxy run` daemon against a real kube-apiserver (`scripts/realapi`) loaded with the
//!    N services: first full sync, network programming latency (EndpointSlice patched → sync
//!    done) over 100 changes, peak RSS ([`netprog`]; `--no-apiserver` skips it, `--only-apiserver`
//!    runs only it); with `--kube-proxy`, then the real kube-proxy in nftables mode on the same API
//!    server and objects: its first full sync, one-endpoint syncs until the kernel has them, its
//!    and its nft children's peak RSS, and the ratios to the daemon's figures.
//!
//! It prints one table, with PASS/MISS next to each target, and optionally writes JSON. Everything
//! touching the kernel happens in throwaway namespaces (`nftp-bench-<pid>-*`), deleted on the way
//! out; namespaces left by a killed run are removed at the next start.
//!
//! ```text
//! cargo build --release -p nftproxy-bin -p nftproxy-bench
//! target/release/nftproxy-bench --services 10000,30000 --endpoints 10 --json bench.json
//! ```
//! (`scripts/bench` does both.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod cluster;
mod daemon;
mod dataplane;
mod inproc;
mod kernel;
mod netns;
mod netprog;
mod report;

/// mimalloc instead of glibc's allocator: after a full load frees hundreds of thousands of
/// small allocations, glibc's next allocations consolidate them for 100+ ms (the first
/// one-endpoint sync after a full sync took 133 ms at 10k services; 0.55 ms with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cluster::{Cluster, Format};
use kernel::Nftproxy;
use netns::Netns;
use report::{DataPlane, Machine, Report, ScaleResult, Step};

/// The node being programmed, as passed to `nftproxy apply`.
const NODE_NAME: &str = "node-0";
/// Its IP.
const NODE_IP: &str = "192.168.0.2";
/// The cluster (pod) CIDR.
const CLUSTER_CIDR: &str = "10.0.0.0/8";

/// Benchmark nftproxy's full and incremental syncs against a kube-proxy-shaped reference.
#[derive(Debug, Parser)]
#[command(name = "nftproxy-bench", about)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    /// Numbers of services, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 30_000])]
    services: Vec<usize>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Skip the kube-proxy-shaped reference above this many services (it can take minutes).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    reference_max: usize,
    /// TCP connects per data-plane measurement (each with a 1 s timeout), in 20 alternating rounds.
    #[arg(long, default_value_t = 2000)]
    connects: u32,
    /// Services loaded for the data-plane baseline.
    #[arg(long, value_name = "N", default_value_t = 100)]
    dataplane_base: usize,
    /// Snapshot file format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Runs of each in-process measurement (the median is shown).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Only the in-process measurements (no root, namespaces or nft needed).
    #[arg(long)]
    in_process_only: bool,
    /// Where snapshots, scripts and logs go (default: `<target dir>/nftproxy-bench`).
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Keep the generated snapshot files (they are large at 30k services).
    #[arg(long)]
    keep_files: bool,
    /// The `nftproxy` binary (default: next to this one, i.e. the release build).
    #[arg(long, value_name = "PATH")]
    nftproxy: Option<PathBuf>,
    /// The repository root, where `../shared/bench/kube-proxy-shape.py` is looked for.
    #[arg(long, value_name = "DIR")]
    repo_root: Option<PathBuf>,
    /// Skip the daemon against a real API server (`scripts/realapi`).
    #[arg(long, conflicts_with = "only_apiserver")]
    no_apiserver: bool,
    /// Only the daemon against a real API server (no in-process, apply, reference, data plane).
    #[arg(long, conflicts_with = "in_process_only")]
    only_apiserver: bool,
    /// EndpointSlice changes whose network programming latency is measured, per run.
    #[arg(long, value_name = "N", default_value_t = 100)]
    netprog_changes: usize,
    /// The daemon's minSyncPeriods to measure with, one daemon run each (1s is the default).
    #[arg(long, value_delimiter = ',', default_values_t = ["1s".to_owned(), "0s".to_owned()],
          value_parser = ["1s", "0s"])]
    netprog_min_sync_periods: Vec<String>,
    /// Requests in flight while loading the API server.
    #[arg(long, value_name = "N", default_value_t = 32)]
    netprog_concurrency: usize,
    /// Also measure the real kube-proxy (nftables mode, built by `scripts/realapi`) against the
    /// same API server and objects, after the daemon (minutes at 10k services).
    #[arg(long, overrides_with = "no_kube_proxy")]
    kube_proxy: bool,
    /// Do not measure kube-proxy (the default; overrides an earlier --kube-proxy).
    #[arg(long, overrides_with = "kube_proxy")]
    no_kube_proxy: bool,
    /// One-endpoint changes timed with kube-proxy (each takes seconds at 10k services).
    #[arg(long, value_name = "N", default_value_t = 5)]
    kube_proxy_changes: usize,
}

/// Run by the benchmark itself inside the data-plane pod namespaces.
#[derive(Debug, Subcommand)]
enum Internal {
    /// Accept TCP connections and close them, until stdin closes or the lifetime ends.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        lifetime_s: u64,
    },
    /// Sequential TCP connects; prints `ok <us>` or `fail <why>` per connect.
    #[command(hide = true)]
    Connect {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        timeout_ms: u64,
    },
    /// The real-API-server measurement, inside its namespace; prints JSON.
    #[command(hide = true)]
    Netprog {
        #[arg(long)]
        spec: PathBuf,
    },
}

/// Paths and settings shared by every scale.
struct Bench {
    cli: Cli,
    exe: PathBuf,
    workdir: PathBuf,
    reference_script: Option<PathBuf>,
    nftproxy: Option<Nftproxy>,
    /// The real-API-server stage, or why it is skipped.
    netprog: std::result::Result<netprog::Setup, String>,
}

/// The snapshot files of one scale.
struct Files {
    base: PathBuf,
    /// The base with one endpoint added (for the in-process change measurement).
    changed: PathBuf,
    /// Applied in sequence on top of the base: change description and file.
    steps: Vec<(String, PathBuf)>,
    /// One more endpoint added on top of the last step, applied instrumented.
    instrumented: (String, PathBuf),
    /// The data-plane baseline.
    dataplane_base: PathBuf,
}

impl Files {
    fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.base.as_path(), &self.changed, &self.dataplane_base];
        v.extend(self.steps.iter().map(|(_, p)| p.as_path()));
        v.push(&self.instrumented.1);
        v
    }
}

fn log(n: usize, m: usize, what: &str) {
    eprintln!("[{n} x {m}] {what}");
}

fn generate(ctx: &Bench, n: usize, r: &mut ScaleResult) -> Result<Files> {
    let m = ctx.cli.endpoints;
    let ext = match ctx.cli.format {
        Format::Json => "json",
        Format::Yaml => "yaml",
    };
    let path = |tag: &str| ctx.workdir.join(format!("snapshot-{n}x{m}-{tag}.{ext}"));
    let start = Instant::now();
    let mut cluster = Cluster::generate(n, m)?;
    let base = path("base");
    r.snapshot = cluster.write(&base, ctx.cli.format)?;
    let mut changed_cluster = cluster.clone();
    changed_cluster.add_endpoint(1, 2)?;
    let changed = path("changed");
    changed_cluster.write(&changed, ctx.cli.format)?;

    let mut steps = Vec::new();
    let name = cluster.add_endpoint(1, 2)?;
    steps.push((format!("+1 endpoint ({name})"), path("1-endpoint-added")));
    cluster.write(&steps[0].1, ctx.cli.format)?;
    let name = cluster.remove_endpoint()?;
    steps.push((format!("-1 endpoint ({name})"), path("2-endpoint-removed")));
    cluster.write(&steps[1].1, ctx.cli.format)?;
    let name = cluster.add_service(m)?;
    steps.push((format!("+1 service ({name})"), path("3-service-added")));
    cluster.write(&steps[2].1, ctx.cli.format)?;
    let name = cluster.delete_service()?;
    steps.push((format!("-1 service ({name})"), path("4-service-deleted")));
    cluster.write(&steps[3].1, ctx.cli.format)?;
    steps.push(("same snapshot again".to_owned(), steps[3].1.clone()));
    // Another service than step 1's, so that this change is of the same kind.
    let name = cluster.add_endpoint(1, 4)?;
    let instrumented = (
        format!("+1 endpoint ({name}), instrumented"),
        path("5-endpoint-added"),
    );
    cluster.write(&instrumented.1, ctx.cli.format)?;

    let dataplane_base = path(&format!("dataplane-{}", ctx.cli.dataplane_base));
    Cluster::generate(ctx.cli.dataplane_base.max(1), m)?.write(&dataplane_base, ctx.cli.format)?;
    r.generate_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(Files {
        base,
        changed,
        steps,
        instrumented,
        dataplane_base,
    })
}

/// Runs a stage, which may fill in `r` as it goes; a failure is recorded and the next stage runs.
fn stage<T>(
    r: &mut ScaleResult,
    name: &str,
    f: impl FnOnce(&mut ScaleResult) -> Result<T>,
) -> Option<T> {
    log(r.services, r.endpoints_per_service, name);
    match f(r) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = format!("{name}: {e:#}");
            eprintln!("  failed: {msg}");
            r.errors.push(msg);
            None
        }
    }
}

fn kernel_applies(nftproxy: &Nftproxy, files: &Files, r: &mut ScaleResult) -> Result<()> {
    let ns = Netns::new("apply")?;
    let full = nftproxy.apply(&ns, &files.base, true)?;
    log(
        r.services,
        r.endpoints_per_service,
        &format!("  full apply: {:.0} ms, {}", full.wall_ms, full.stdout),
    );
    r.full_apply = Some(full);
    for (change, path) in &files.steps {
        let run = nftproxy.apply(&ns, path, false)?;
        log(
            r.services,
            r.endpoints_per_service,
            &format!("  {change}: {:.1} ms, {}", run.wall_ms, run.stdout),
        );
        r.incremental.push(Step {
            change: change.clone(),
            run,
        });
    }
    let (change, path) = &files.instrumented;
    let run = nftproxy.apply(&ns, path, true)?;
    r.incremental_instrumented = Some(Step {
        change: change.clone(),
        run,
    });
    Ok(())
}

fn reference(ctx: &Bench, nftproxy: &Nftproxy, r: &mut ScaleResult) -> Result<()> {
    let (n, m) = (r.services, r.endpoints_per_service);
    let script = ctx.reference_script.as_ref().context(
        "the reference script ../shared/bench/kube-proxy-shape.py (relative to the repository \
         root) is missing; pass --repo-root or --reference-max 0",
    )?;
    let out = ctx.workdir.join(format!("reference-{n}x{m}.nft"));
    let file = std::fs::File::create(&out)?;
    let status = Command::new("python3")
        .arg(script)
        .args([n.to_string(), m.to_string()])
        .stdout(file)
        .stderr(Stdio::inherit())
        .status()
        .context("running python3")?;
    if !status.success() {
        bail!("{} {n} {m} failed ({status})", script.display());
    }
    let ns = Netns::new("reference")?;
    let run = nftproxy.reference(&ns, &out);
    if !ctx.cli.keep_files {
        let _ = std::fs::remove_file(&out);
    }
    r.reference = Some(run?);
    Ok(())
}

/// Rounds the data-plane connects are split into, alternating between the two topologies.
const DATAPLANE_ROUNDS: u32 = 20;

fn dataplane(ctx: &Bench, nftproxy: &Nftproxy, files: &Files) -> Result<DataPlane> {
    let small = dataplane::Topology::new(&ctx.exe)?;
    let large = dataplane::Topology::new(&ctx.exe)?;
    nftproxy.apply(&small.node, &files.dataplane_base, false)?;
    let load = nftproxy.apply(&large.node, &files.base, false)?;
    let per_round = ctx.cli.connects.div_ceil(DATAPLANE_ROUNDS).max(1);
    let (mut base, mut scaled) = ((Vec::new(), 0), (Vec::new(), 0));
    for round in 0..DATAPLANE_ROUNDS {
        let mut pair = [(&small, &mut base), (&large, &mut scaled)];
        if round % 2 == 1 {
            pair.reverse();
        }
        for (topo, acc) in pair {
            let (samples, failed) = topo.connects(&ctx.exe, per_round)?;
            acc.0.extend(samples);
            acc.1 += failed;
        }
    }
    Ok(DataPlane {
        base_services: ctx.cli.dataplane_base.max(1),
        base: dataplane::latency(base.0, base.1),
        scaled: dataplane::latency(scaled.0, scaled.1),
        load,
    })
}

fn run_scale(ctx: &Bench, n: usize) -> ScaleResult {
    let m = ctx.cli.endpoints;
    let mut r = ScaleResult {
        services: n,
        endpoints_per_service: m,
        ..ScaleResult::default()
    };
    let Some(files) = stage(&mut r, "generating snapshots", |r| generate(ctx, n, r)) else {
        return r;
    };
    let all = !ctx.cli.only_apiserver;
    if all {
        r.in_process = stage(&mut r, "in-process: parse, compile, render, plan", |_| {
            inproc::measure(&files.base, &files.changed, ctx.cli.repeat)
        });
    }
    if let Some(nftproxy) = ctx.nftproxy.as_ref().filter(|_| all) {
        stage(
            &mut r,
            "kernel: full apply, then incremental applies",
            |r| kernel_applies(nftproxy, &files, r),
        );
        if n > ctx.cli.reference_max {
            r.reference_skipped = Some(format!("N > --reference-max {}", ctx.cli.reference_max));
        } else {
            stage(&mut r, "reference: nft -f kube-proxy shape", |r| {
                reference(ctx, nftproxy, r)
            });
        }
        if let Some((full, steps)) = stage(&mut r, "daemon: in-process incremental syncs", |_| {
            daemon::measure(&files.base, &files.steps)
        }) {
            r.daemon_full = Some(full);
            r.daemon = steps;
        }
        r.dataplane = stage(&mut r, "data plane: connect latency", |_| {
            dataplane(ctx, nftproxy, &files)
        });
    }
    match &ctx.netprog {
        Ok(setup) => {
            r.netprog = stage(
                &mut r,
                "daemon: real API server, network programming latency",
                |_| netprog::measure(setup, &files.base, n, m),
            );
            if let Some(p) = &r.netprog {
                r.errors
                    .extend(p.problems.iter().map(|e| format!("real API server: {e}")));
            }
        }
        Err(why) => r.netprog_skipped = Some(why.clone()),
    }
    if !ctx.cli.keep_files {
        for f in files.all() {
            let _ = std::fs::remove_file(f);
        }
    }
    r
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "not installed".to_owned());
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        nft,
        load_start: loadavg(),
        load_end: String::new(),
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(cli: Cli) -> Result<bool> {
    if cli.services.is_empty() || cli.services.contains(&0) || cli.endpoints == 0 {
        bail!("--services and --endpoints must be positive");
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let bin_dir = exe
        .parent()
        .context("executable has no directory")?
        .to_owned();
    let workdir = match &cli.workdir {
        Some(d) => d.clone(),
        None => bin_dir.parent().unwrap_or(&bin_dir).join("nftproxy-bench"),
    };
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let repo_root = cli
        .repo_root
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let script = repo_root.join("../shared/bench/kube-proxy-shape.py");
    let reference_script = script.is_file().then_some(script.clone());
    let mut nftproxy_bin = None;
    let nftproxy = if cli.in_process_only {
        None
    } else {
        if !is_root() {
            bail!("the kernel measurements need root (network namespaces); use --in-process-only");
        }
        for stale in netns::remove_stale() {
            eprintln!("removed namespace {stale} left by an earlier run");
        }
        if reference_script.is_none()
            && !cli.only_apiserver
            && cli.services.iter().any(|&n| n <= cli.reference_max)
        {
            bail!(
                "reference script not found at {} (it lives at ../shared/bench/kube-proxy-shape.py \
                 relative to the repository root); pass --repo-root, or --reference-max 0 to skip it",
                script.display()
            );
        }
        let bin = cli
            .nftproxy
            .clone()
            .unwrap_or_else(|| bin_dir.join("nftproxy"));
        let n = Nftproxy::new(bin.clone(), &workdir)?;
        nftproxy_bin = Some(bin);
        if !n.has_time() {
            eprintln!("note: /usr/bin/time is missing (apt-get install time): no nft RSS figures");
        }
        Some(n)
    };
    let netprog = match nftproxy_bin {
        None => Err("--in-process-only".to_owned()),
        Some(_) if cli.no_apiserver => Err("--no-apiserver".to_owned()),
        Some(_) if cli.netprog_changes == 0 => Err("--netprog-changes 0".to_owned()),
        Some(bin) => {
            let script = repo_root.join("scripts/realapi");
            netprog::realapi_built(&script).map(|bin_dir| netprog::Setup {
                kube_proxy: (cli.kube_proxy && cli.kube_proxy_changes > 0)
                    .then(|| (bin_dir.join("kube-proxy"), cli.kube_proxy_changes)),
                script,
                exe: exe.clone(),
                nftproxy: bin,
                workdir: workdir.clone(),
                min_sync_periods: cli.netprog_min_sync_periods.clone(),
                changes: cli.netprog_changes,
                concurrency: cli.netprog_concurrency,
            })
        }
    };
    match &netprog {
        Ok(setup) => netprog::remove_stale(setup),
        Err(why) if !cli.in_process_only && !cli.no_apiserver => {
            eprintln!("note: skipping the real API server stage: {why}");
        }
        Err(_) => {}
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let machine = machine();
    eprintln!(
        "machine: {} CPUs ({}), kernel {}, {}",
        machine.nproc, machine.cpu, machine.kernel, machine.nft
    );
    let ctx = Bench {
        cli,
        exe,
        workdir,
        reference_script,
        nftproxy,
        netprog,
    };
    let results: Vec<ScaleResult> = ctx
        .cli
        .services
        .iter()
        .map(|&n| run_scale(&ctx, n))
        .collect();
    let mut machine = machine;
    machine.load_end = loadavg();
    let report = Report {
        targets: report::evaluate(&results),
        machine,
        command,
        rss_method: "nftproxy: VmHWM from /proc/<pid>/status polled every 2 ms (cross-check: \
                     /usr/bin/time %M, which includes its nft children); nft: each call run by an \
                     NFTPROXY_NFT wrapper under /usr/bin/time -f %M; nftproxy run (real API server): \
                     VmHWM of the daemon process at the end of each run, the larger shown; \
                     kube-proxy: its VmHWM, and its nft children's through an nft wrapper first on \
                     its PATH running nft under /usr/bin/time -f %M",
        results,
    };
    print_report(&report);
    if let Some(path) = &ctx.cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report.results.iter().all(|r| r.errors.is_empty()))
}

fn print_report(report: &Report) {
    let m = &report.machine;
    println!(
        "machine: {} CPUs, {}; kernel {}; {}",
        m.nproc, m.cpu, m.kernel, m.nft
    );
    println!("command: {}", report.command);
    println!(
        "load average (1/5/15 min) at start: {}; at end: {}",
        m.load_start, m.load_end
    );
    println!();
    print!("{}", report::table(report));
    println!();
    for r in &report.results {
        if let Some(s) = &r.incremental_instrumented {
            let nft: Vec<String> = s
                .run
                .nft_calls
                .iter()
                .map(|c| format!("`nft {}` {:.1} ms", c.args, c.wall_ms))
                .collect();
            println!(
                "{} x {}: {}: {}",
                r.services,
                r.endpoints_per_service,
                s.change,
                nft.join(", ")
            );
        }
        for e in &r.errors {
            println!("{} x {}: ERROR {e}", r.services, r.endpoints_per_service);
        }
    }
    if report
        .results
        .iter()
        .any(|r| r.netprog.as_ref().is_some_and(|p| p.kube_proxy.is_some()))
    {
        println!(
            "kube-proxy: first full sync = its start to its first IPv4 `SyncProxyRules complete` \
             line (-v=2); one-endpoint sync = PATCH until its nft transaction carrying the change \
             has exited (the kernel has committed it; seen in its nft wrapper's log within 2 ms), \
             all changes then checked in one listing of its table; ours = PATCH to the daemon's \
             `sync done` line, which follows its nft transaction's exit (so the ratio is if \
             anything understated); the daemon's rows also show PATCH to the kernel's commit \
             (nft monitor) where nft monitor could start (not at 10k)"
        );
    }
    println!("peak RSS: {}", report.rss_method);
    let (pass, miss) =
        report.targets.iter().fold(
            (0, 0),
            |(p, f), t| {
                if t.pass {
                    (p + 1, f)
                } else {
                    (p, f + 1)
                }
            },
        );
    println!("targets: {pass} PASS, {miss} MISS");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.internal {
        Some(Internal::Serve { listen, lifetime_s }) => {
            dataplane::serve(listen, Duration::from_secs(lifetime_s)).map(|()| true)
        }
        Some(Internal::Connect {
            addr,
            count,
            timeout_ms,
        }) => dataplane::connect(addr, count, Duration::from_millis(timeout_ms.min(2_000)))
            .map(|()| true),
        Some(Internal::Netprog { spec }) => netprog::child(&spec).map(|()| true),
        None => run(cli),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
