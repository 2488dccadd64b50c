//! The daemon against a real API server: `nftproxy run` watching a kube-apiserver + etcd started
//! by `scripts/realapi` in a throwaway network namespace, loaded with the N-service snapshot.
//!
//! Measured, for each minSyncPeriod asked for (`1s`, the default, as a user runs it; `0s`):
//!
//! * **first full sync**: from starting the daemon (after every object is in the API server) to
//!   its `sync done: kind=full` log line, and that sync's operations;
//! * **network programming latency**: one EndpointSlice is patched (an endpoint added, or the
//!   last one removed, alternately, a different service each time); t0 is taken just before the
//!   request, t1 when the daemon's next `sync done` line is read from its stderr (a thread reads
//!   and timestamps lines as they arrive). Changes are spaced so that each is its own sync: the
//!   next one is sent minSyncPeriod + 100 ms after the previous sync's line (minSyncPeriod counts
//!   from the end of a sync), so the figure is what one change costs, not coalescing. At the end
//!   the kernel's ruleset is listed and every change is checked (added endpoints present, removed
//!   ones absent);
//! * **peak RSS**: the daemon's `VmHWM` at the end of the run, and the API server's and etcd's.
//!
//! The API server's NodePort range is 30000-32767 (`scripts/realapi`), 2768 ports, while the
//! generator allocates node ports from 30000 up without bound: node ports (and the
//! `healthCheckNodePort` of LoadBalancer services with `externalTrafficPolicy: Local`) are handed
//! out again from the range in snapshot order, and the NodePort/LoadBalancer services that no
//! longer fit are loaded as ClusterIP services, and counted (about 800 of 10k). Objects are
//! created with `--netprog-concurrency` requests in flight.
//!
//! The namespace has its loopback and the node's IP ([`crate::NODE_IP`], where the daemon binds its
//! healthCheckNodePort servers) on a veth pair whose both ends stay inside it.
//!
//! The API server listens on the namespace's loopback only, so everything that talks to it runs
//! inside the namespace: this program re-executes itself there (`nftproxy-bench netprog --spec`),
//! loads the objects with kube-rs, starts the daemon as its own child and prints the results as
//! JSON. The parent starts and stops the servers; the daemon, the API server, etcd, the namespace
//! and the state directory are removed also on error (a namespace or directory left by a killed
//! run is removed at the next start).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::netns::{Netns, Reaped};

mod kubeproxy;

pub(crate) use kubeproxy::{KubeProxyRun, KubeProxySpec};

/// The API server's NodePort range (`scripts/realapi` passes `--service-node-port-range`).
const NODE_PORT_MAX: u64 = 32_767;
/// Pause after a change's sync line on top of minSyncPeriod.
const SPACING: Duration = Duration::from_millis(100);
/// Longest wait for one change's sync.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait, after the daemon's sync line, for `nft monitor` to report that sync's commit.
const MONITOR_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for `nft monitor` to be ready during the daemon's runs.
const MONITOR_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the first full sync.
const FIRST_SYNC_TIMEOUT: Duration = Duration::from_secs(900);
/// Prefix of the state directories in the work directory: `netprog-<pid>-<n>x<m>`.
const DIR_PREFIX: &str = "netprog-";
/// Endpoints added by the changes are pods of node-K at 10.K.X.Y with X from here up (the
/// generator's pods of a node start at 10.K.0.2 and stay far below), so that like a new pod's
/// they fall anywhere in a service's address order.
const ADDED_THIRD_OCTET: u32 = 200;

/// Quantiles over the changes (nearest rank), milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Quantiles {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) min: f64,
    pub(crate) mean: f64,
}

pub(crate) fn quantiles(mut v: Vec<f64>) -> Option<Quantiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Quantiles {
        p50: rank(0.5),
        p99: rank(0.99),
        max: v[v.len() - 1],
        min: v[0],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    })
}

/// A `sync done:` line of the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SyncLine {
    pub(crate) full: bool,
    pub(crate) ops: usize,
    pub(crate) elements: usize,
    pub(crate) services: usize,
    /// The daemon's own `duration_ms` (compile, plan, nft).
    pub(crate) duration_ms: f64,
}

impl SyncLine {
    /// `None` unless `line` is a `sync done:` line; an error for `sync failed:`.
    fn parse(line: &str) -> Result<Option<Self>> {
        if let Some(i) = line.find("sync failed:") {
            bail!("the daemon's sync failed: {}", &line[i..]);
        }
        let Some(i) = line.find("sync done:") else {
            return Ok(None);
        };
        let mut s = Self::default();
        for (k, v) in line[i + "sync done:".len()..]
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
        {
            match k {
                "kind" => s.full = v == "full",
                "ops" => s.ops = v.parse().unwrap_or_default(),
                "elements" => s.elements = v.parse().unwrap_or_default(),
                "services" => s.services = v.parse().unwrap_or_default(),
                "duration_ms" => s.duration_ms = v.parse().unwrap_or_default(),
                _ => {}
            }
        }
        Ok(Some(s))
    }
}

/// One EndpointSlice change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Change {
    /// e.g. `+10.201.0.1 ns-01/svc-000101-00000`.
    pub(crate) what: String,
    /// Request sent → the daemon's sync line read.
    pub(crate) latency_ms: f64,
    /// The PATCH request's round trip.
    pub(crate) request_ms: f64,
    /// Request sent → the kernel's commit of the change (`nft monitor`), as measured for
    /// kube-proxy.
    pub(crate) kernel_ms: Option<f64>,
    pub(crate) sync: SyncLine,
}

/// One daemon run: first full sync, then the changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Run {
    /// `1s` or `0s`.
    pub(crate) min_sync_period: String,
    /// Whether `--min-sync-period` was passed (not for the default).
    pub(crate) flag_passed: bool,
    /// Daemon start → `initial lists complete`.
    pub(crate) initial_lists_ms: Option<f64>,
    /// Daemon start → the `kind=full` sync line.
    pub(crate) first_sync_ms: f64,
    pub(crate) first_sync: SyncLine,
    pub(crate) changes: Vec<Change>,
    pub(crate) latency: Option<Quantiles>,
    /// Request sent → the kernel's commit (`nft monitor`), over the changes it was seen for.
    pub(crate) kernel: Option<Quantiles>,
    /// Why there are no kernel commit times.
    pub(crate) kernel_skipped: Option<String>,
    /// The daemon's `duration_ms` of the changes' syncs.
    pub(crate) sync: Option<Quantiles>,
    /// PATCH round trips.
    pub(crate) request: Option<Quantiles>,
    /// Sync lines that belonged to no change (expected: 0).
    pub(crate) extra_syncs: usize,
    /// Changes whose final state the kernel's ruleset shows.
    pub(crate) in_kernel: usize,
    /// The daemon's `VmHWM` and `VmRSS` at the end, KiB.
    pub(crate) daemon_hwm_kib: Option<u64>,
    pub(crate) daemon_rss_kib: Option<u64>,
    /// The daemon's stderr.
    pub(crate) log: PathBuf,
}

/// The whole stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct NetProg {
    /// `--service-cidr` the API server was started with.
    pub(crate) service_cidr: String,
    /// `scripts/realapi start` wall time.
    pub(crate) apiserver_start_ms: f64,
    /// Objects created (namespaces, the Node, Services, EndpointSlices).
    pub(crate) objects: usize,
    /// Requests made to create them (with status patches).
    pub(crate) requests: usize,
    /// NodePort/LoadBalancer services loaded as ClusterIP (the node port range was used up).
    pub(crate) made_cluster_ip: usize,
    /// Creating every object.
    pub(crate) load_ms: f64,
    /// Requests in flight while loading.
    pub(crate) concurrency: usize,
    pub(crate) runs: Vec<Run>,
    /// kube-apiserver's and etcd's `VmHWM` / `VmRSS` at the end, KiB.
    pub(crate) apiserver_hwm_kib: Option<u64>,
    pub(crate) apiserver_rss_kib: Option<u64>,
    pub(crate) etcd_hwm_kib: Option<u64>,
    /// kube-proxy on the same API server and objects, after the daemon's runs.
    pub(crate) kube_proxy: Option<KubeProxyRun>,
    /// Why that is missing.
    pub(crate) kube_proxy_skipped: Option<String>,
    /// The whole stage, servers' start to stop.
    pub(crate) stage_ms: f64,
    /// Checks that failed (each also an error of the scale).
    pub(crate) problems: Vec<String>,
}

impl NetProg {
    /// The run with this minSyncPeriod.
    pub(crate) fn run(&self, period: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.min_sync_period == period)
    }

    /// The largest daemon `VmHWM` of the runs, KiB.
    pub(crate) fn daemon_hwm_kib(&self) -> Option<u64> {
        self.runs.iter().filter_map(|r| r.daemon_hwm_kib).max()
    }
}

/// Settings shared by every scale.
pub(crate) struct Setup {
    /// `scripts/realapi`.
    pub(crate) script: PathBuf,
    /// This program, re-executed inside the namespace.
    pub(crate) exe: PathBuf,
    /// The `nftproxy` binary.
    pub(crate) nftproxy: PathBuf,
    pub(crate) workdir: PathBuf,
    pub(crate) min_sync_periods: Vec<String>,
    pub(crate) changes: usize,
    pub(crate) concurrency: usize,
    /// kube-proxy's binary and how many one-endpoint changes to time, if it is measured.
    pub(crate) kube_proxy: Option<(PathBuf, usize)>,
}

/// `scripts/realapi bin`: the directory of the built servers (and kube-proxy), else why not.
pub(crate) fn realapi_built(script: &Path) -> std::result::Result<PathBuf, String> {
    let out = Command::new(script)
        .arg("bin")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|d| d.is_dir());
    match dir {
        Some(dir) if out.status.success() => Ok(dir),
        _ => Err("kube-apiserver/etcd not built: run `scripts/realapi build`".to_owned()),
    }
}

/// Stops the servers of state directories left by killed runs and removes the directories.
pub(crate) fn remove_stale(setup: &Setup) {
    let Ok(entries) = std::fs::read_dir(&setup.workdir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Servers::stop(&setup.script, &e.path());
        let _ = std::fs::remove_dir_all(e.path());
        eprintln!("removed {} left by an earlier run", e.path().display());
    }
}

/// The API server and etcd of one state directory, stopped (and the directory removed) on drop.
struct Servers {
    script: PathBuf,
    dir: PathBuf,
}

impl Servers {
    fn stop(script: &Path, dir: &Path) -> Result<()> {
        let out = Command::new(script)
            .args(["stop", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "realapi stop: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Err(e) = Self::stop(&self.script, &self.dir) {
            eprintln!("  {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the re-executed program does, written by the parent as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// Log prefix, `[N x M]`.
    label: String,
    /// The parent's network namespace (`/proc/self/ns/net`), which must not be ours.
    parent_netns: String,
    snapshot: PathBuf,
    admin_kubeconfig: PathBuf,
    proxy_kubeconfig: PathBuf,
    /// The realapi state directory (for the servers' pid files).
    realapi_dir: PathBuf,
    nftproxy: PathBuf,
    /// The daemon's stderr goes to `<this>-<minSyncPeriod>.log`.
    daemon_log: PathBuf,
    service_cidr: String,
    min_sync_periods: Vec<String>,
    changes: usize,
    concurrency: usize,
    node_name: String,
    node_ip: String,
    cluster_cidr: String,
    /// kube-proxy, run after the daemon's runs.
    kube_proxy: Option<KubeProxySpec>,
}

/// The ClusterIP range for `n` generated services (172.16.0.10 upwards, see `cluster`).
fn service_cidr(n: usize) -> &'static str {
    if n + 10 < 65_534 {
        "172.16.0.0/16"
    } else {
        "172.16.0.0/12"
    }
}

/// Runs the stage for one scale: servers up, the measurement inside the namespace, servers down.
pub(crate) fn measure(setup: &Setup, snapshot: &Path, n: usize, m: usize) -> Result<NetProg> {
    let stage_start = Instant::now();
    let ns = Netns::new("realapi")?;
    // The node's IP (the Node's InternalIP), on a veth pair whose both ends stay in the namespace:
    // the daemon binds its healthCheckNodePort servers there.
    for cmd in [
        "ip link add node0 type veth peer name node0-peer".to_owned(),
        format!("ip addr add {}/24 dev node0", crate::NODE_IP),
        "ip link set node0 up".to_owned(),
        "ip link set node0-peer up".to_owned(),
    ] {
        ns.ok(&cmd.split_whitespace().collect::<Vec<_>>())?;
    }
    let dir = setup
        .workdir
        .join(format!("{DIR_PREFIX}{}-{n}x{m}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let servers = Servers {
        script: setup.script.clone(),
        dir: dir.clone(),
    };
    let cidr = service_cidr(n);
    let start = Instant::now();
    let out = Command::new(&setup.script)
        .args(["start", "--netns", &ns.name, "--dir"])
        .arg(&dir)
        .args(["--service-cidr", cidr])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/realapi start")?;
    ensure!(
        out.status.success(),
        "scripts/realapi start failed ({})",
        out.status
    );
    let apiserver_start_ms = start.elapsed().as_secs_f64() * 1e3;
    crate::log(
        n,
        m,
        &format!(
            "  API server up in {:.1} s (service CIDR {cidr})",
            apiserver_start_ms / 1e3
        ),
    );

    let spec = Spec {
        label: format!("[{n} x {m}]"),
        parent_netns: own_netns()?,
        snapshot: snapshot.to_owned(),
        admin_kubeconfig: dir.join("admin.kubeconfig"),
        proxy_kubeconfig: dir.join("kube-proxy.kubeconfig"),
        realapi_dir: dir.clone(),
        nftproxy: setup.nftproxy.clone(),
        daemon_log: setup.workdir.join(format!("netprog-daemon-{n}x{m}")),
        service_cidr: cidr.to_owned(),
        min_sync_periods: setup.min_sync_periods.clone(),
        changes: setup.changes,
        concurrency: setup.concurrency,
        node_name: crate::NODE_NAME.to_owned(),
        node_ip: crate::NODE_IP.to_owned(),
        cluster_cidr: crate::CLUSTER_CIDR.to_owned(),
        kube_proxy: setup
            .kube_proxy
            .as_ref()
            .map(|(bin, changes)| KubeProxySpec {
                bin: bin.clone(),
                changes: *changes,
                log: setup
                    .workdir
                    .join(format!("netprog-kube-proxy-{n}x{m}.log")),
            }),
    };
    let spec_path = dir.join("netprog-spec.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
    let child = ns
        .command(&[
            setup.exe.as_os_str(),
            "netprog".as_ref(),
            "--spec".as_ref(),
            spec_path.as_os_str(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the measurement in the namespace")?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the measurement in namespace {} failed ({})",
        ns.name,
        out.status
    );
    let mut result: NetProg =
        serde_json::from_slice(&out.stdout).context("reading the measurement's results")?;
    result.apiserver_start_ms = apiserver_start_ms;
    drop(servers);
    drop(ns);
    result.stage_ms = stage_start.elapsed().as_secs_f64() * 1e3;
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Inside the namespace

/// This process's network namespace, e.g. `net:[4026531833]`.
fn own_netns() -> Result<String> {
    Ok(std::fs::read_link("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .to_string_lossy()
        .into_owned())
}

/// `nftproxy-bench netprog --spec FILE`: prints the [`NetProg`] as JSON.
pub(crate) fn child(spec: &Path) -> Result<()> {
    let spec: Spec = serde_json::from_slice(
        &std::fs::read(spec).with_context(|| format!("reading {}", spec.display()))?,
    )?;
    ensure!(
        own_netns()? != spec.parent_netns,
        "netprog runs only inside a throwaway network namespace (it deletes nftables tables)"
    );
    let result = Child::new(spec)?.measure()?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &result)?;
    stdout.flush()?;
    Ok(())
}

/// An EndpointSlice as the changes see it.
struct Slice {
    namespace: String,
    name: String,
    endpoints: Vec<Value>,
}

struct Child {
    spec: Spec,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Every slice, in snapshot order (the probe service's first).
    slices: Vec<Slice>,
    /// Next address for an added endpoint.
    next_ip: u32,
}

fn say(spec: &Spec, what: &str) {
    eprintln!("{} {what}", spec.label);
}

/// The objects of a snapshot file (a JSON `List` or multi-document YAML).
fn read_objects(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(Value::Object(mut list)) = serde_json::from_str::<Value>(&text) {
        if let Some(Value::Array(items)) = list.remove("items") {
            return Ok(items);
        }
        bail!("{}: a JSON snapshot must be a List", path.display());
    }
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Node ports from the API server's range, handed out in snapshot order.
struct NodePorts {
    next: u64,
}

impl NodePorts {
    const FIRST: u64 = 30_000;

    /// Gives a NodePort/LoadBalancer service node ports from the range (renumbering the
    /// generator's, which run past it) and, for a LoadBalancer service with
    /// `externalTrafficPolicy: Local`, a `healthCheckNodePort` (else the API server would pick
    /// one at random, taking a port a later service holds); once the range is used up, makes the
    /// service a ClusterIP one instead and returns true.
    fn fit(&mut self, svc: &mut Value) -> bool {
        let kind = str_at(svc, &["spec", "type"]);
        if kind != "NodePort" && kind != "LoadBalancer" {
            return false;
        }
        let health =
            kind == "LoadBalancer" && str_at(svc, &["spec", "externalTrafficPolicy"]) == "Local";
        let spec = &mut svc["spec"];
        let ports = spec["ports"].as_array().map_or(0, Vec::len) as u64;
        let needed = ports + u64::from(health);
        if self.next + needed - 1 <= NODE_PORT_MAX {
            if let Some(ports) = spec["ports"].as_array_mut() {
                for p in ports {
                    p["nodePort"] = json!(self.next);
                    self.next += 1;
                }
            }
            if health {
                spec["healthCheckNodePort"] = json!(self.next);
                self.next += 1;
            }
            return false;
        }
        spec["type"] = json!("ClusterIP");
        if let Some(o) = spec.as_object_mut() {
            o.remove("externalTrafficPolicy");
            o.remove("loadBalancerIP");
            o.remove("healthCheckNodePort");
        }
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                if let Some(o) = p.as_object_mut() {
                    o.remove("nodePort");
                }
            }
        }
        if let Some(o) = svc.as_object_mut() {
            o.remove("status");
        }
        true
    }
}

/// Whether an error is worth another attempt (overload, timeouts, connection trouble).
fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        _ => true,
    }
}

/// Says why a request is retried (the first few times).
fn note_retry(what: &str, e: &kube::Error) {
    static SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 10 {
        eprintln!("  retrying ({what}): {e}");
    }
}

/// Runs `f` until it succeeds, at most 6 times with a growing pause.
async fn retried<T, F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match f().await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 6 && retryable(&e) => {
                note_retry(what, &e);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e).with_context(|| what.to_owned()),
        }
    }
    unreachable!()
}

/// Creates `obj`, retried like [`retried`]. A retried create whose first attempt got through is
/// a success, whether the server says AlreadyExists or rejects the node ports the object itself
/// holds.
async fn create<K>(api: &Api<K>, obj: &K, name: &str, what: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let pp = PostParams::default();
    let mut delay = Duration::from_millis(200);
    let mut again = false;
    for attempt in 1.. {
        let e = match api.create(&pp, obj).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if matches!(&e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists") {
            return Ok(());
        }
        if again && matches!(api.get_opt(name).await, Ok(Some(_))) {
            return Ok(());
        }
        if attempt < 6 && retryable(&e) {
            note_retry(what, &e);
            tokio::time::sleep(delay).await;
            delay *= 2;
            again = true;
        } else {
            return Err(e).with_context(|| what.to_owned());
        }
    }
    unreachable!()
}

fn typed<K: serde::de::DeserializeOwned>(v: &Value) -> Result<K> {
    serde_json::from_value(v.clone()).with_context(|| {
        format!(
            "converting {} {}/{}",
            str_at(v, &["kind"]),
            str_at(v, &["metadata", "namespace"]),
            str_at(v, &["metadata", "name"])
        )
    })
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `text` holds `ip` as a whole address (not as the start of a longer one).
fn has_ip(text: &str, ip: &str) -> bool {
    text.match_indices(ip).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + ip.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Which output of a [`Daemon`] is read line by line (stdout to nowhere, or stderr to a file).
#[derive(Debug, Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
}

/// Where a [`Daemon`] read on its stdout writes its stderr: `<log>.stderr`.
fn stderr_log(log: &Path) -> PathBuf {
    PathBuf::from(format!("{}.stderr", log.display()))
}

/// A running daemon and its stderr (or stdout), line by line with the time each was read; the
/// lines are also written to a log file. Killed and reaped on drop.
struct Daemon {
    pid: u32,
    child: Option<Reaped>,
    lines: mpsc::Receiver<(Instant, String)>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (stdin from /dev/null) and a thread that reads and timestamps `output`'s
    /// lines as they arrive, copying them to the file `log`.
    fn spawn(mut cmd: Command, output: Output, log: PathBuf) -> Result<Self> {
        let mut file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null());
        match output {
            Output::Stdout => {
                let err = stderr_log(&log);
                let file = std::fs::File::create(&err)
                    .with_context(|| format!("creating {}", err.display()))?;
                cmd.stdout(Stdio::piped()).stderr(file)
            }
            Output::Stderr => cmd.stdout(Stdio::null()).stderr(Stdio::piped()),
        };
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let pipe: Box<dyn std::io::Read + Send> = match output {
            Output::Stdout => Box::new(child.stdout.take().context("no stdout pipe")?),
            Output::Stderr => Box::new(child.stderr.take().context("no stderr pipe")?),
        };
        let child = Reaped(child);
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let t = Instant::now();
                let _ = writeln!(file, "{line}");
                if tx.send((t, line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            pid,
            child: Some(child),
            lines: rx,
            reader: Some(reader),
            log,
        })
    }

    /// The next line, waiting until `deadline`.
    fn line(&self, deadline: Instant) -> Result<(Instant, String)> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(l) => Ok(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "no line from the daemon within the time allowed (log: {})",
                    self.log.display()
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the daemon exited (log: {})", self.log.display())
            }
        }
    }

    /// Reads lines until `until`; returns how many sync lines came meanwhile.
    fn quiet_until(&self, until: Instant) -> Result<usize> {
        let mut syncs = 0;
        loop {
            let wait = until.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Ok(syncs);
            }
            match self.lines.recv_timeout(wait) {
                Ok((_, l)) => {
                    if SyncLine::parse(&l)?.is_some() {
                        syncs += 1;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(syncs),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the daemon exited (log: {})", self.log.display())
                }
            }
        }
    }

    fn stop(&mut self) {
        self.child.take();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Child {
    fn new(spec: Spec) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(async {
            let kc = Kubeconfig::read_from(&spec.admin_kubeconfig)?;
            let config =
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            anyhow::Ok(Client::try_from(config)?)
        })?;
        Ok(Self {
            spec,
            rt,
            client,
            slices: Vec::new(),
            next_ip: 0,
        })
    }

    fn measure(mut self) -> Result<NetProg> {
        let mut result = NetProg {
            service_cidr: self.spec.service_cidr.clone(),
            concurrency: self.spec.concurrency,
            ..NetProg::default()
        };
        self.load(&mut result)?;
        let periods = self.spec.min_sync_periods.clone();
        for (i, period) in periods.iter().enumerate() {
            if i > 0 {
                self.delete_tables()?;
            }
            let run = self.run(period, i, periods.len(), &mut result.problems)?;
            result.runs.push(run);
        }
        if let Some(kp) = self.spec.kube_proxy.clone() {
            self.delete_tables()?;
            match self.kube_proxy(&kp) {
                Ok(run) => {
                    result
                        .problems
                        .extend(run.problems.iter().map(|l| format!("kube-proxy: {l}")));
                    result.kube_proxy = Some(run);
                }
                Err(e) => {
                    result.problems.push(format!("kube-proxy: {e:#}"));
                    result.kube_proxy_skipped = Some("failed".to_owned());
                }
            }
            self.delete_tables()?;
        } else {
            result.kube_proxy_skipped = Some("no --kube-proxy".to_owned());
        }
        let dir = &self.spec.realapi_dir;
        if let Some(pid) = pid_file(&dir.join("apiserver.pid")) {
            result.apiserver_hwm_kib = proc_status_kib(pid, "VmHWM");
            result.apiserver_rss_kib = proc_status_kib(pid, "VmRSS");
        }
        if let Some(pid) = pid_file(&dir.join("etcd.pid")) {
            result.etcd_hwm_kib = proc_status_kib(pid, "VmHWM");
        }
        Ok(result)
    }

    /// Creates every object of the snapshot, the namespaces and the Node.
    fn load(&mut self, result: &mut NetProg) -> Result<()> {
        let spec = &self.spec;
        let mut objects = read_objects(&spec.snapshot)?;
        let net: ipnet::Ipv4Net = spec.service_cidr.parse()?;
        let (mut services, mut slices, mut namespaces) = (Vec::new(), Vec::new(), BTreeSet::new());
        let mut lb_status = Vec::new();
        let mut node_ports = NodePorts {
            next: NodePorts::FIRST,
        };
        for mut o in objects.drain(..) {
            namespaces.insert(str_at(&o, &["metadata", "namespace"]).to_owned());
            match str_at(&o, &["kind"]) {
                "Service" => {
                    let ip = str_at(&o, &["spec", "clusterIP"]);
                    if let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() {
                        ensure!(net.contains(&ip), "ClusterIP {ip} is outside {net}");
                    }
                    if node_ports.fit(&mut o) {
                        result.made_cluster_ip += 1;
                    }
                    if let Some(status) = o
                        .get("status")
                        .filter(|_| str_at(&o, &["spec", "type"]) == "LoadBalancer")
                    {
                        lb_status.push((
                            str_at(&o, &["metadata", "namespace"]).to_owned(),
                            str_at(&o, &["metadata", "name"]).to_owned(),
                            status.clone(),
                        ));
                    }
                    services.push(o);
                }
                "EndpointSlice" => slices.push(o),
                other => bail!("unexpected {other} in the snapshot"),
            }
        }
        namespaces.remove("");
        namespaces.remove("default");
        say(
            spec,
            &format!(
                "  loading {} namespaces, 1 node, {} services ({} NodePort/LoadBalancer made ClusterIP: \
                 node ports 30000-{NODE_PORT_MAX} used up), {} endpoint slices, {} requests in flight",
                namespaces.len(),
                services.len(),
                result.made_cluster_ip,
                slices.len(),
                spec.concurrency
            ),
        );
        let client = self.client.clone();
        let conc = spec.concurrency.max(1);
        let start = Instant::now();
        let patch = PatchParams::default();
        self.rt.block_on(async {
            let nsapi: Api<Namespace> = Api::all(client.clone());
            futures::stream::iter(namespaces.iter().map(anyhow::Ok))
                .try_for_each_concurrent(conc, |name| {
                    let nsapi = &nsapi;
                    async move {
                        let obj: Namespace = typed(&json!({ "metadata": { "name": name } }))?;
                        create(nsapi, &obj, name, &format!("creating namespace {name}")).await
                    }
                })
                .await?;
            let nodes: Api<Node> = Api::all(client.clone());
            let name = &spec.node_name;
            let node: Node = typed(&json!({
                "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            }))?;
            create(&nodes, &node, name, "creating the Node").await?;
            let status = Patch::Merge(json!({ "status": { "addresses": [
                { "type": "InternalIP", "address": spec.node_ip },
                { "type": "Hostname", "address": name },
            ] } }));
            retried("patching the Node's status", || {
                nodes.patch_status(name, &patch, &status)
            })
            .await?;
            let t = Instant::now();
            futures::stream::iter(services.iter().map(anyhow::Ok))
                .try_for_each_concurrent(conc, |v| {
                    let client = &client;
                    async move {
                        let api: Api<Service> =
                            Api::namespaced(client.clone(), str_at(v, &["metadata", "namespace"]));
                        let obj: Service = typed(v)?;
                        let name = str_at(v, &["metadata", "name"]);
                        create(&api, &obj, name, &format!("creating service {name}")).await
                    }
                })
                .await?;
            say(
                spec,
                &format!(
                    "  {} services in {:.1} s",
                    services.len(),
                    t.elapsed().as_secs_f64()
                ),
            );
            futures::stream::iter(lb_status.iter().map(anyhow::Ok))
                .try_for_each_concurrent(conc, |(ns, name, status)| {
                    let (client, patch) = (&client, &patch);
                    async move {
                        let api: Api<Service> = Api::namespaced(client.clone(), ns);
                        let p = Patch::Merge(json!({ "status": status }));
                        retried(&format!("patching the status of {ns}/{name}"), || {
                            api.patch_status(name, patch, &p)
                        })
                        .await
                    }
                })
                .await?;
            let t = Instant::now();
            futures::stream::iter(slices.iter().map(anyhow::Ok))
                .try_for_each_concurrent(conc, |v| {
                    let client = &client;
                    async move {
                        let api: Api<EndpointSlice> =
                            Api::namespaced(client.clone(), str_at(v, &["metadata", "namespace"]));
                        let obj: EndpointSlice = typed(v)?;
                        let name = str_at(v, &["metadata", "name"]);
                        create(&api, &obj, name, &format!("creating slice {name}")).await
                    }
                })
                .await?;
            say(
                spec,
                &format!(
                    "  {} endpoint slices in {:.1} s",
                    slices.len(),
                    t.elapsed().as_secs_f64()
                ),
            );
            anyhow::Ok(())
        })?;
        result.load_ms = start.elapsed().as_secs_f64() * 1e3;
        result.objects = namespaces.len() + 1 + services.len() + slices.len();
        result.requests = result.objects + 1 + lb_status.len();
        say(
            spec,
            &format!(
                "  loaded {} objects in {:.1} s ({:.0} requests/s)",
                result.objects,
                result.load_ms / 1e3,
                result.requests as f64 / (result.load_ms / 1e3)
            ),
        );
        self.slices = slices
            .into_iter()
            .map(|v| Slice {
                namespace: str_at(&v, &["metadata", "namespace"]).to_owned(),
                name: str_at(&v, &["metadata", "name"]).to_owned(),
                endpoints: v["endpoints"].as_array().cloned().unwrap_or_default(),
            })
            .collect();
        Ok(())
    }

    /// Deletes the daemon's tables, so that the next run's first sync starts from nothing.
    fn delete_tables(&self) -> Result<()> {
        let out = Command::new("nft").args(["list", "tables"]).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["table", family, name] = words[..] {
                let _ = Command::new("nft")
                    .args(["delete", "table", family, name])
                    .status();
            }
        }
        Ok(())
    }

    fn spawn_daemon(&self, period: &str, flag: bool) -> Result<Daemon> {
        let spec = &self.spec;
        let log = PathBuf::from(format!("{}-{period}.log", spec.daemon_log.display()));
        let mut cmd = Command::new(&spec.nftproxy);
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(&spec.proxy_kubeconfig)
            .args(["--hostname-override", &spec.node_name])
            .args(["--cluster-cidr", &spec.cluster_cidr]);
        if flag {
            cmd.args(["--min-sync-period", period]);
        }
        cmd.env_remove("NFTPROXY_LOG").env_remove("NFTPROXY_NFT");
        Daemon::spawn(cmd, Output::Stderr, log)
            .with_context(|| format!("starting {} run", spec.nftproxy.display()))
    }

    /// The next change: slice index, the new endpoint list, a description, and the endpoint
    /// address with whether it is now there.
    fn next_change(&mut self, slice: usize, add: bool) -> (Vec<Value>, String, String, bool) {
        let s = &self.slices[slice];
        let mut eps = s.endpoints.clone();
        let (ip, present) = if add || eps.is_empty() {
            let k = self.next_ip;
            self.next_ip += 1;
            // Nodes spread by a stride coprime to their number.
            let node = (k * 37) % crate::cluster::NODES;
            let (c, d) = (ADDED_THIRD_OCTET + k / 250, k % 250 + 1);
            let ip = format!("10.{node}.{c}.{d}");
            eps.push(json!({
                "addresses": [ip],
                "conditions": { "ready": true, "serving": true, "terminating": false },
                "nodeName": format!("node-{node}"),
            }));
            (ip, true)
        } else {
            let gone = eps.pop().unwrap_or_default();
            (
                gone["addresses"][0].as_str().unwrap_or_default().to_owned(),
                false,
            )
        };
        let what = format!(
            "{}{ip} {}/{}",
            if present { '+' } else { '-' },
            s.namespace,
            s.name
        );
        (eps, what, ip, present)
    }

    /// One daemon run: start, first full sync, the changes, the kernel check, RSS.
    fn run(
        &mut self,
        period: &str,
        index: usize,
        runs: usize,
        problems: &mut Vec<String>,
    ) -> Result<Run> {
        let min_sync = nftproxy_core::parse::parse_duration(period)
            .with_context(|| format!("bad minSyncPeriod {period:?}"))?;
        // The default as a user runs it, unless the daemon's default is something else.
        let default = nftproxy_core::parse::DaemonConfig::default()
            .timing
            .min_sync_period;
        let flag = min_sync != default;
        say(
            &self.spec,
            &format!(
                "  daemon run, minSyncPeriod {period}{}",
                if flag {
                    " (--min-sync-period)"
                } else {
                    " (the default)"
                }
            ),
        );
        let start = Instant::now();
        let mut daemon = self.spawn_daemon(period, flag)?;
        let mut run = Run {
            min_sync_period: period.to_owned(),
            flag_passed: flag,
            log: daemon.log.clone(),
            ..Run::default()
        };
        let deadline = start + FIRST_SYNC_TIMEOUT;
        loop {
            let (t, line) = daemon.line(deadline)?;
            if line.contains("initial lists complete") {
                run.initial_lists_ms = Some((t - start).as_secs_f64() * 1e3);
            }
            if let Some(s) = SyncLine::parse(&line)? {
                ensure!(s.full, "the daemon's first sync was not a full one: {line}");
                run.first_sync_ms = (t - start).as_secs_f64() * 1e3;
                run.first_sync = s;
                break;
            }
        }
        say(
            &self.spec,
            &format!(
                "    first full sync {:.2} s after start ({} ops, sync itself {:.0} ms)",
                run.first_sync_ms / 1e3,
                run.first_sync.ops,
                run.first_sync.duration_ms
            ),
        );
        run.extra_syncs +=
            daemon.quiet_until(Instant::now() + min_sync + Duration::from_millis(500))?;
        // Best effort: at 10k services `nft monitor` reading the daemon's ~500k elements first
        // was not ready within minutes.
        let monitor = kubeproxy::find_nft()
            .and_then(|nft| {
                let log = PathBuf::from(format!("{}.monitor", run.log.display()));
                kubeproxy::monitor(&nft, log, MONITOR_READY_TIMEOUT)
            })
            .map_err(|e| {
                let why = format!("{e:#}");
                say(&self.spec, &format!("    no kernel commit times: {why}"));
                run.kernel_skipped = Some(why);
            })
            .ok();

        // Different services in every run: slices 1.. (0 is the probe's), spread evenly.
        let total = self.spec.changes * runs;
        let usable = self.slices.len().saturating_sub(1).max(1);
        let mut expect: BTreeMap<String, (bool, String)> = BTreeMap::new();
        for k in 0..self.spec.changes {
            let slot = k * runs + index;
            let slice = (1 + slot * usable / total.max(1)).min(self.slices.len() - 1);
            let (eps, what, ip, present) = self.next_change(slice, k % 2 == 0);
            while let Ok((_, l)) = daemon.lines.try_recv() {
                if SyncLine::parse(&l)?.is_some() {
                    run.extra_syncs += 1;
                }
            }
            if let Some(m) = &monitor {
                while m.lines.try_recv().is_ok() {}
            }
            let s = &self.slices[slice];
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &s.namespace);
            let body = Patch::Merge(json!({ "endpoints": eps }));
            let t0 = Instant::now();
            self.rt
                .block_on(api.patch(&s.name, &PatchParams::default(), &body))
                .with_context(|| format!("patching {}/{}", s.namespace, s.name))?;
            let request_ms = t0.elapsed().as_secs_f64() * 1e3;
            let (t1, sync) = loop {
                let (t, line) = daemon.line(t0 + CHANGE_TIMEOUT)?;
                if let Some(sync) = SyncLine::parse(&line)? {
                    if t < t0 {
                        run.extra_syncs += 1;
                        continue;
                    }
                    break (t, sync);
                }
            };
            // The commit was reported before or just after the sync line.
            let kernel_ms = monitor.as_ref().and_then(|m| {
                kubeproxy::commit_with(m, "ip nftproxy", &ip, t1 + MONITOR_WAIT)
                    .ok()
                    .map(|(t, _)| (t - t0).as_secs_f64() * 1e3)
            });
            self.slices[slice].endpoints = eps;
            expect.insert(ip, (present, what.clone()));
            run.changes.push(Change {
                what,
                latency_ms: (t1 - t0).as_secs_f64() * 1e3,
                request_ms,
                kernel_ms,
                sync,
            });
            run.extra_syncs += daemon.quiet_until(t1 + min_sync + SPACING)?;
        }
        drop(monitor);
        run.latency = quantiles(run.changes.iter().map(|c| c.latency_ms).collect());
        run.kernel = quantiles(run.changes.iter().filter_map(|c| c.kernel_ms).collect());
        run.sync = quantiles(run.changes.iter().map(|c| c.sync.duration_ms).collect());
        run.request = quantiles(run.changes.iter().map(|c| c.request_ms).collect());
        run.daemon_hwm_kib = proc_status_kib(daemon.pid, "VmHWM");
        run.daemon_rss_kib = proc_status_kib(daemon.pid, "VmRSS");

        let out = Command::new("nft").args(["list", "ruleset"]).output()?;
        ensure!(
            out.status.success(),
            "nft list ruleset failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ruleset = String::from_utf8_lossy(&out.stdout);
        for (ip, (present, what)) in &expect {
            if has_ip(&ruleset, ip) == *present {
                run.in_kernel += 1;
            } else {
                problems.push(format!(
                    "minSyncPeriod {period}: change {what}: the kernel's ruleset {} {ip}",
                    if *present { "lacks" } else { "still has" }
                ));
            }
        }
        if run.extra_syncs > 0 {
            problems.push(format!(
                "minSyncPeriod {period}: {} sync(s) belonged to no change (see {})",
                run.extra_syncs,
                run.log.display()
            ));
        }
        for c in &run.changes {
            if c.sync.full || c.sync.ops == 0 {
                problems.push(format!(
                    "minSyncPeriod {period}: change {}: unexpected sync (full={}, ops={})",
                    c.what, c.sync.full, c.sync.ops
                ));
            }
        }
        daemon.stop();
        if let Some(l) = &run.latency {
            say(
                &self.spec,
                &format!(
                    "    {} changes: latency p50 {:.1} / p99 {:.1} / max {:.1} ms (to the kernel's commit \
                     p50 {:.1} ms); {}/{} in the kernel; peak RSS {} KiB",
                    run.changes.len(),
                    l.p50,
                    l.p99,
                    l.max,
                    run.kernel.map_or(f64::NAN, |k| k.p50),
                    run.in_kernel,
                    expect.len(),
                    run.daemon_hwm_kib.unwrap_or_default()
                ),
            );
        }
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_lines() {
        let l = "2026-01-01T00:00:00.000Z  INFO sync done: kind=partial ops=3 elements=2 \
                 services=1 duration_ms=4.5";
        let s = SyncLine::parse(l).unwrap().unwrap();
        assert!(!s.full);
        assert_eq!((s.ops, s.elements, s.services), (3, 2, 1));
        assert_eq!(s.duration_ms, 4.5);
        assert!(SyncLine::parse("INFO initial lists complete: 3 services")
            .unwrap()
            .is_none());
        assert!(SyncLine::parse("WARN sync failed: kind=full ops=0").is_err());
    }

    #[test]
    fn whole_addresses() {
        let text = "10.201.0.10 . tcp . 80 : 10.201.0.2, 110.201.0.1 }";
        assert!(has_ip(text, "10.201.0.10"));
        assert!(has_ip(text, "10.201.0.2"));
        assert!(!has_ip(text, "10.201.0.1"));
    }

    #[test]
    fn nearest_rank() {
        let q = quantiles((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((q.p50, q.p99, q.max), (50.0, 99.0, 100.0));
    }

    #[test]
    fn node_ports_from_the_range() {
        let mut np = NodePorts { next: 32_765 };
        let mut lb = json!({ "spec": { "type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{ "port": 80, "nodePort": 40000 }] } });
        assert!(!np.fit(&mut lb));
        assert_eq!(lb["spec"]["ports"][0]["nodePort"], json!(32_765));
        assert_eq!(lb["spec"]["healthCheckNodePort"], json!(32_766));
        let mut two = json!({ "spec": { "type": "NodePort", "externalTrafficPolicy": "Cluster",
            "ports": [{ "port": 80, "nodePort": 40001 }, { "port": 443, "nodePort": 40002 }] },
            "status": {} });
        assert!(np.fit(&mut two));
        assert_eq!(
            two,
            json!({ "spec": { "type": "ClusterIP", "ports": [{ "port": 80 }, { "port": 443 }] } })
        );
        let mut one = json!({ "spec": { "type": "NodePort", "ports": [{ "nodePort": 40003 }] } });
        assert!(!np.fit(&mut one));
        assert_eq!(one["spec"]["ports"][0]["nodePort"], json!(32_767));
        let mut cip = json!({ "spec": { "type": "ClusterIP", "ports": [{ "port": 80 }] } });
        assert!(!np.fit(&mut cip));
    }
}
