//! The real peer: kube-proxy (built by `scripts/realapi` from the same Kubernetes modules as the
//! API server) in nftables mode, against the same API server and objects as the daemon, after the
//! daemon's runs (its tables deleted first; the two never program the kernel at the same time).
//! It runs only here, inside the throwaway namespace, with its own configuration file (see
//! [`config`]) and kube-proxy's credentials.
//!
//! Measured:
//!
//! * **first full sync**: from starting kube-proxy to its first IPv4 `SyncProxyRules complete`
//!   log line (`-v=2`), cross-checked with its metrics (`kubeproxy_sync_full_proxy_rules_duration_seconds`,
//!   `kubeproxy_sync_proxy_rules_last_timestamp_seconds`) and by counting the chains, rules and
//!   set/map elements of its `ip kube-proxy` table in the kernel;
//! * **one-endpoint sync**: an endpoint is added to one EndpointSlice (a different service each
//!   time); t0 is taken just before the PATCH, t1 when kube-proxy's next nft transaction
//!   (`nft -f -`) is seen to have exited, i.e. the kernel has committed it: the nft wrapper below
//!   appends a line per call as it exits, and the log is looked at every 2 ms. (`nft monitor`
//!   would give the commit itself, but at 10k services it reads kube-proxy's table for minutes
//!   before it reports anything, and listing one chain costs nft as much as listing the table.)
//!   kube-proxy's own `elapsed` of that sync is read from its log; one listing of its table after
//!   the changes checks that every added address is there. Changes are spaced like the daemon's
//!   (minSyncPeriod + 100 ms after kube-proxy's sync line);
//! * **peak RSS**: kube-proxy's `VmHWM` after the first sync and at the end; its nft children's
//!   peak RSS, from a wrapper put first on its PATH that runs the real nft under
//!   `/usr/bin/time -f %M`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{has_ip, proc_status_kib, quantiles, say, Child, Daemon, Output, Quantiles, SPACING};

/// Longest wait for kube-proxy's first full sync (162-218 s were seen at 10k services).
const FIRST_SYNC_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest wait for one change to reach the kernel (17-25 s were seen at 10k services).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);
/// kube-proxy's minSyncPeriod (its default, written to the configuration anyway).
const MIN_SYNC: Duration = Duration::from_secs(1);
/// Its metrics server, on the namespace's loopback.
const METRICS_ADDR: &str = "127.0.0.1:10249";
/// A table created and deleted to see that `nft monitor` is listening.
const MONITOR_PROBE_TABLE: &str = "nftp-bench-monitor-probe";

/// What the child needs to run kube-proxy, part of the [`super::Spec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KubeProxySpec {
    /// The kube-proxy binary.
    pub(crate) bin: PathBuf,
    /// One-endpoint changes to time.
    pub(crate) changes: usize,
    /// Its stderr goes here.
    pub(crate) log: PathBuf,
}

/// One endpoint added, as kube-proxy saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KubeProxyChange {
    /// e.g. `+10.37.200.0 ns-01/svc-000101-00000`.
    pub(crate) what: String,
    /// PATCH sent → kube-proxy's nft transaction carrying it has exited (its line in the nft
    /// wrapper's log, looked for every 2 ms).
    pub(crate) latency_ms: f64,
    /// The PATCH request's round trip.
    pub(crate) request_ms: f64,
    /// kube-proxy's own `elapsed` of the sync, from its log.
    pub(crate) sync_ms: Option<f64>,
    /// Its nft calls for the sync (from the wrapper's log, 10 ms resolution): the listings
    /// (`nft --json --terse list table ...`) and the transaction.
    pub(crate) nft_list_ms: f64,
    pub(crate) nft_transaction_ms: f64,
    /// Whether the listing of kube-proxy's table after the changes shows the address.
    pub(crate) confirmed: bool,
}

/// The objects of kube-proxy's `ip kube-proxy` table.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct TableCounts {
    pub(crate) chains: usize,
    pub(crate) rules: usize,
    pub(crate) sets: usize,
    /// Elements of its named sets and maps.
    pub(crate) elements: usize,
}

/// The kube-proxy run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KubeProxyRun {
    /// `kube-proxy --version`.
    pub(crate) version: String,
    /// kube-proxy start → its first IPv4 `SyncProxyRules complete` line.
    pub(crate) first_sync_ms: f64,
    /// That sync's own `elapsed` (log line).
    pub(crate) first_sync_elapsed_ms: Option<f64>,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds` sum (IPv4) after the first sync.
    pub(crate) metric_full_sync_ms: Option<f64>,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds` (IPv4) − kube-proxy's start.
    pub(crate) metric_last_sync_ms: Option<f64>,
    /// Its table after the first sync.
    pub(crate) table: Option<TableCounts>,
    /// `nft -j list table ip kube-proxy`, for the counts.
    pub(crate) table_list_ms: f64,
    pub(crate) changes: Vec<KubeProxyChange>,
    /// The listing of its table that checks the changes.
    pub(crate) check_list_ms: f64,
    /// PATCH → kernel.
    pub(crate) latency: Option<Quantiles>,
    /// kube-proxy's own `elapsed` of those syncs.
    pub(crate) sync: Option<Quantiles>,
    /// IPv4 syncs that belonged to no change (after the first).
    pub(crate) extra_syncs: usize,
    /// kube-proxy's `VmHWM` after the first sync and at the end, `VmRSS` at the end, KiB.
    pub(crate) hwm_first_sync_kib: Option<u64>,
    pub(crate) hwm_kib: Option<u64>,
    pub(crate) rss_kib: Option<u64>,
    /// nft calls kube-proxy made up to the end of the first sync, and in all.
    pub(crate) nft_calls_first_sync: usize,
    pub(crate) nft_calls: usize,
    /// The largest of its nft children's peak RSS up to the end of the first sync, and in all, KiB.
    pub(crate) nft_hwm_first_sync_kib: Option<u64>,
    pub(crate) nft_hwm_kib: Option<u64>,
    /// Error and warning lines of its log (besides the expected one, see [`expected_error`]), and
    /// steps that failed after the first sync.
    pub(crate) problems: Vec<String>,
    pub(crate) log: PathBuf,
}

/// kube-proxy's configuration: nftables mode, this node, the namespace's addresses, and nothing
/// that sets sysctls (conntrack limits and timeouts are 0 = leave alone; a network namespace
/// cannot set `nf_conntrack_max`). `oomScoreAdj: 0` so that the machine's OOM killer is not told
/// to spare it.
fn config(child: &Child) -> String {
    let spec = &child.spec;
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node}
clusterCIDR: {cluster_cidr}
bindAddress: {node_ip}
healthzBindAddress: {node_ip}:10256
metricsBindAddress: {METRICS_ADDR}
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
nftables:
  minSyncPeriod: {min_sync}s
  syncPeriod: 30s
",
        kubeconfig = spec.proxy_kubeconfig.display(),
        node = spec.node_name,
        cluster_cidr = spec.cluster_cidr,
        node_ip = spec.node_ip,
        min_sync = MIN_SYNC.as_secs(),
    )
}

/// The nft wrapper kube-proxy finds first on its PATH: the real nft under `/usr/bin/time`,
/// appending `<elapsed s> <peak RSS KiB> <command line>` per call to `log` (and a
/// `Command exited with non-zero status` line before it when nft fails).
fn nft_wrapper(nft: &Path, log: &Path) -> String {
    format!(
        "#!/bin/sh\n# Written by nftproxy-bench for kube-proxy's nft calls.\n\
         exec /usr/bin/time -a -o '{}' -f '%e %M %C' '{}' \"$@\"\n",
        log.display(),
        nft.display()
    )
}

/// `(calls, largest peak RSS KiB)` of a wrapper log.
fn nft_calls(log: &Path) -> (usize, Option<u64>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let rss: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.next()?.parse::<f64>().ok()?;
            w.next()?.parse().ok()
        })
        .collect();
    (rss.len(), rss.iter().copied().max())
}

/// The nft binary on PATH.
pub(super) fn find_nft() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .context("no nft on PATH")
}

/// `nft monitor` (printing every object a commit adds or deletes, then `# new generation`), once
/// it is seen to report a commit.
pub(super) fn monitor(nft: &Path, log: PathBuf, timeout: Duration) -> Result<Daemon> {
    let mut cmd = Command::new(nft);
    cmd.arg("monitor");
    let stderr = super::stderr_log(&log);
    let monitor = Daemon::spawn(cmd, Output::Stdout, log).context("starting nft monitor")?;
    let deadline = Instant::now() + timeout;
    let probe = format!("table ip {MONITOR_PROBE_TABLE}");
    loop {
        let out = Command::new(nft)
            .args(["add", "table", "ip", MONITOR_PROBE_TABLE])
            .output()?;
        ensure!(
            out.status.success(),
            "nft add table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let _ = Command::new(nft)
            .args(["delete", "table", "ip", MONITOR_PROBE_TABLE])
            .output();
        let wait = Instant::now() + Duration::from_secs(2);
        let mut seen = false;
        loop {
            let left = wait.saturating_duration_since(Instant::now());
            match monitor.lines.recv_timeout(left) {
                Ok((_, l)) if l.contains(&probe) => {
                    seen = true;
                    break;
                }
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "nft monitor exited: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default().trim()
                ),
            }
        }
        if seen {
            break;
        }
        if Instant::now() > deadline {
            bail!("nft monitor did not report a commit within {timeout:?}");
        }
    }
    Ok(monitor)
}

/// A Go `time.Duration` as printed (`207.215738ms`, `1m2.5s`, `850µs`), in milliseconds.
fn go_duration_ms(text: &str) -> Option<f64> {
    let mut rest = text.trim();
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            "µs" | "us" => 1e-3,
            "ns" => 1e-6,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// `Some(elapsed ms)` if `line` is kube-proxy's `SyncProxyRules complete` line for IPv4.
fn sync_complete(line: &str) -> Option<Option<f64>> {
    if !line.contains("\"SyncProxyRules complete\"") || !line.contains("ipFamily=\"IPv4\"") {
        return None;
    }
    let elapsed = line
        .split_once("elapsed=\"")
        .and_then(|(_, r)| r.split_once('"'))
        .and_then(|(d, _)| go_duration_ms(d));
    Some(elapsed)
}

/// The one error kube-proxy logs on every start into an empty namespace, once per IP family: it
/// lists its table before it has created it. Accepted until the changes start.
fn expected_error(line: &str) -> bool {
    line.contains("\"Failed to list existing nftables objects\"")
}

/// Whether a klog line is an error or a warning (`E1202 00:44:12.764168 ...`).
fn is_problem(line: &str) -> bool {
    let mut c = line.chars();
    matches!(c.next(), Some('E' | 'W')) && c.take(4).all(|c| c.is_ascii_digit())
}

/// A sample of a Prometheus text exposition: `name{labels} value`, the labels containing `label`.
fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels.contains(label).then(|| value.trim().parse().ok())?
    })
}

/// GET `/metrics` from kube-proxy's metrics server.
fn scrape() -> Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = METRICS_ADDR.parse()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .context("connecting to kube-proxy's metrics server")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {METRICS_ADDR}\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (head, body) = body
        .split_once("\r\n\r\n")
        .context("no HTTP header end in kube-proxy's metrics answer")?;
    ensure!(
        head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"),
        "kube-proxy's /metrics: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

/// Counts the objects of `nft -j list table` output.
fn count_table(json: &Value) -> TableCounts {
    let mut c = TableCounts::default();
    for o in json["nftables"].as_array().into_iter().flatten() {
        if o.get("chain").is_some() {
            c.chains += 1;
        } else if o.get("rule").is_some() {
            c.rules += 1;
        } else if let Some(s) = o.get("set").or_else(|| o.get("map")) {
            c.sets += 1;
            c.elements += s["elem"].as_array().map_or(0, Vec::len);
        }
    }
    c
}

/// The arrival of the `# new generation` line of the first commit reported after `t0` that
/// mentions `ip` in table `table` (e.g. `ip kube-proxy`), and the line that did, waiting until
/// `deadline`.
pub(super) fn commit_with(
    monitor: &Daemon,
    table: &str,
    ip: &str,
    deadline: Instant,
) -> Result<(Instant, Vec<String>)> {
    let mut seen = Vec::new();
    loop {
        let (t, line) = monitor.line(deadline)?;
        if line.contains(table) && has_ip(&line, ip) {
            seen.push(line);
        } else if !seen.is_empty() && line.starts_with("# new generation") {
            return Ok((t, seen));
        }
    }
}

/// The log of kube-proxy's nft calls, read as it grows: a line is written when a call exits.
struct CallLog {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl CallLog {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last read.
    fn read(&mut self) -> Result<Vec<String>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = String::new();
        self.offset += f.read_to_string(&mut buf)? as u64;
        self.partial.push_str(&buf);
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(Vec::new());
        };
        let rest = self.partial.split_off(end + 1);
        let lines = std::mem::replace(&mut self.partial, rest);
        Ok(lines.lines().map(str::to_owned).collect())
    }

    /// Forgets the calls so far.
    fn skip(&mut self) -> Result<()> {
        self.read().map(drop)
    }

    /// When the next transaction (`nft -f -`, not `--check`) was seen to exit, looking every 2 ms,
    /// and the calls up to it (the transaction last).
    fn next_transaction(&mut self, deadline: Instant) -> Result<(Instant, Vec<String>)> {
        let mut seen = Vec::new();
        loop {
            let lines = self.read()?;
            let now = Instant::now();
            for l in lines {
                let done = is_transaction(&l);
                seen.push(l);
                if done {
                    return Ok((now, seen));
                }
            }
            ensure!(now < deadline, "no transaction in time");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Seconds of the listing calls (`list`) and of the transaction among `calls`, in milliseconds.
fn split_calls(calls: &[String]) -> (f64, f64) {
    let secs = |l: &str| {
        l.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default()
            * 1e3
    };
    let list = calls
        .iter()
        .filter(|l| l.contains(" list "))
        .map(|l| secs(l))
        .sum();
    let tx = calls
        .iter()
        .filter(|l| is_transaction(l))
        .map(|l| secs(l))
        .sum();
    (list, tx)
}

/// Whether a line of the nft wrapper's log is a transaction (`<s> <KiB> /usr/sbin/nft -f -`).
fn is_transaction(line: &str) -> bool {
    line.ends_with(" -f -") && !line.contains("--check")
}

impl Child {
    /// kube-proxy's run: start, first full sync, the changes, RSS; killed on the way out.
    pub(super) fn kube_proxy(&mut self, kp: &KubeProxySpec) -> Result<KubeProxyRun> {
        let dir = self.spec.realapi_dir.join("kube-proxy");
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config(self))?;
        let nft = find_nft()?;
        let nft_log = dir.join("nft-calls.log");
        let _ = std::fs::remove_file(&nft_log);
        let mut path = std::ffi::OsString::new();
        if Path::new("/usr/bin/time").is_file() {
            let wrapper_dir = dir.join("nft-wrapper");
            std::fs::create_dir_all(&wrapper_dir)?;
            let wrapper = wrapper_dir.join("nft");
            std::fs::write(&wrapper, nft_wrapper(&nft, &nft_log))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
            path.push(&wrapper_dir);
            path.push(":");
        }
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let version = Command::new(&kp.bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        say(&self.spec, &format!("  {version}, nftables mode"));

        let mut cmd = Command::new(&kp.bin);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("-v=2")
            .env("PATH", &path);
        let start_wall = SystemTime::now();
        let start = Instant::now();
        let proc = Daemon::spawn(cmd, Output::Stderr, kp.log.clone())
            .with_context(|| format!("starting {}", kp.bin.display()))?;
        let mut run = KubeProxyRun {
            version,
            log: kp.log.clone(),
            ..KubeProxyRun::default()
        };
        let note = |run: &mut KubeProxyRun, line: &str, changes_started: bool| {
            let expected = !changes_started && expected_error(line);
            if is_problem(line) && !expected {
                run.problems.push(line.chars().take(300).collect());
            }
        };
        let deadline = start + FIRST_SYNC_TIMEOUT;
        let mut full = false;
        loop {
            let (t, line) = proc.line(deadline).context("kube-proxy's first sync")?;
            note(&mut run, &line, false);
            if line.contains("\"Syncing nftables rules\"") && line.contains("ipFamily=\"IPv4\"") {
                full = line.contains("fullSync=true");
            }
            if let Some(elapsed) = sync_complete(&line) {
                run.first_sync_ms = (t - start).as_secs_f64() * 1e3;
                run.first_sync_elapsed_ms = elapsed;
                break;
            }
        }
        if !full {
            run.problems
                .push("its first IPv4 sync was not logged as a full one".to_owned());
        }
        run.hwm_first_sync_kib = proc_status_kib(proc.pid, "VmHWM");
        (run.nft_calls_first_sync, run.nft_hwm_first_sync_kib) = nft_calls(&nft_log);
        match scrape() {
            Ok(m) => {
                run.metric_full_sync_ms = metric(
                    &m,
                    "kubeproxy_sync_full_proxy_rules_duration_seconds_sum",
                    "ip_family=\"IPv4\"",
                )
                .map(|s| s * 1e3);
                let start_s = start_wall
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                run.metric_last_sync_ms = metric(
                    &m,
                    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                    "ip_family=\"IPv4\"",
                )
                .map(|t| (t - start_s) * 1e3);
                let failures = metric(
                    &m,
                    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                    "ip_family=\"IPv4\"",
                );
                if failures.is_some_and(|f| f > 0.0) {
                    run.problems.push(format!(
                        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total (IPv4) is {}",
                        failures.unwrap_or_default()
                    ));
                }
            }
            Err(e) => run.problems.push(format!("metrics: {e:#}")),
        }
        say(
            &self.spec,
            &format!(
                "    first full sync {:.2} s after start (its own elapsed {:.2} s; metrics: full sync \
                 {:.2} s, last sync at {:.2} s); peak RSS {} KiB, nft {} KiB",
                run.first_sync_ms / 1e3,
                run.first_sync_elapsed_ms.unwrap_or_default() / 1e3,
                run.metric_full_sync_ms.unwrap_or_default() / 1e3,
                run.metric_last_sync_ms.unwrap_or_default() / 1e3,
                run.hwm_first_sync_kib.unwrap_or_default(),
                run.nft_hwm_first_sync_kib.unwrap_or_default()
            ),
        );
        // Let the startup settle (the IPv6 proxier's sync, maybe a second IPv4 one).
        let settle = Instant::now() + MIN_SYNC + Duration::from_millis(500);
        while let Ok((_, line)) = proc.line(settle) {
            note(&mut run, &line, false);
        }

        if let Err(e) = self.kube_proxy_table(&nft, &mut run) {
            run.problems.push(format!("counting its table: {e:#}"));
        }
        if let Err(e) = self.kube_proxy_changes(&proc, &nft, &nft_log, kp, &mut run) {
            run.problems.push(format!("one-endpoint changes: {e:#}"));
        }
        run.latency = quantiles(run.changes.iter().map(|c| c.latency_ms).collect());
        run.sync = quantiles(run.changes.iter().filter_map(|c| c.sync_ms).collect());
        run.hwm_kib = proc_status_kib(proc.pid, "VmHWM");
        run.rss_kib = proc_status_kib(proc.pid, "VmRSS");
        drop(proc);
        (run.nft_calls, run.nft_hwm_kib) = nft_calls(&nft_log);
        if let Some(l) = &run.latency {
            say(
                &self.spec,
                &format!(
                    "    {} changes: PATCH to kernel p50 {:.0} / p99 {:.0} / max {:.0} ms; peak RSS {} KiB, \
                     nft {} KiB ({} nft calls)",
                    run.changes.len(),
                    l.p50,
                    l.p99,
                    l.max,
                    run.hwm_kib.unwrap_or_default(),
                    run.nft_hwm_kib.unwrap_or_default(),
                    run.nft_calls
                ),
            );
        }
        Ok(run)
    }

    /// Counts the objects of kube-proxy's table after its first sync.
    fn kube_proxy_table(&self, nft: &Path, run: &mut KubeProxyRun) -> Result<()> {
        let t = Instant::now();
        let out = Command::new(nft)
            .args(["-j", "list", "table", "ip", "kube-proxy"])
            .output()?;
        run.table_list_ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.status.success(),
            "nft -j list table ip kube-proxy: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let table = count_table(&serde_json::from_slice(&out.stdout)?);
        drop(out);
        say(
            &self.spec,
            &format!(
                "    its table: {} chains, {} rules, {} sets/maps with {} elements (listed in {:.1} s)",
                table.chains,
                table.rules,
                table.sets,
                table.elements,
                run.table_list_ms / 1e3
            ),
        );
        run.table = Some(table);

        Ok(())
    }

    /// The one-endpoint changes, each timed until kube-proxy's nft transaction carrying it has
    /// exited (the kernel has committed it), then all checked in one listing of its table.
    fn kube_proxy_changes(
        &mut self,
        proc: &Daemon,
        nft: &Path,
        nft_log: &Path,
        kp: &KubeProxySpec,
        run: &mut KubeProxyRun,
    ) -> Result<()> {
        let note = |run: &mut KubeProxyRun, line: &str| {
            if is_problem(line) {
                run.problems.push(line.chars().take(300).collect());
            }
        };
        ensure!(
            nft_log.exists(),
            "no log of kube-proxy's nft calls (is /usr/bin/time installed?)"
        );
        let mut calls = CallLog::new(nft_log);
        // Spread over the slices, between the daemon's (1..: 0 is the probe's).
        let usable = self.slices.len().saturating_sub(1).max(1);
        let total = kp.changes.max(1);
        let mut added = Vec::new();
        for k in 0..kp.changes {
            let slice = (1 + (2 * k + 1) * usable / (2 * total)).min(self.slices.len() - 1);
            let (eps, what, ip, _) = self.next_change(slice, true);
            while let Ok((_, l)) = proc.lines.try_recv() {
                note(run, &l);
                if sync_complete(&l).is_some() {
                    run.extra_syncs += 1;
                }
            }
            calls.skip()?;
            let s = &self.slices[slice];
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &s.namespace);
            let body = Patch::Merge(json!({ "endpoints": eps }));
            let t0 = Instant::now();
            self.rt
                .block_on(api.patch(&s.name, &PatchParams::default(), &body))
                .with_context(|| format!("patching {}/{}", s.namespace, s.name))?;
            let request_ms = t0.elapsed().as_secs_f64() * 1e3;
            let (t1, nft_calls) = calls
                .next_transaction(t0 + CHANGE_TIMEOUT)
                .with_context(|| format!("change {what}: waiting for kube-proxy's transaction"))?;
            let (nft_list_ms, nft_transaction_ms) = split_calls(&nft_calls);
            // kube-proxy's log line for the sync comes right after the transaction.
            let (mut sync_ms, mut sync_end) = (None, t1);
            let until = Instant::now() + Duration::from_secs(30);
            while let Ok((t, l)) = proc.line(until) {
                note(run, &l);
                if let Some(e) = sync_complete(&l) {
                    if t >= t0 {
                        (sync_ms, sync_end) = (e, t);
                        break;
                    }
                    run.extra_syncs += 1;
                }
            }
            self.slices[slice].endpoints = eps;
            let c = KubeProxyChange {
                what,
                latency_ms: (t1 - t0).as_secs_f64() * 1e3,
                request_ms,
                sync_ms,
                nft_list_ms,
                nft_transaction_ms,
                confirmed: false,
            };
            say(
                &self.spec,
                &format!(
                    "    {}: {:.1} ms to its transaction's end (kube-proxy's sync {:.1} ms; nft: \
                     listing {:.0} ms, transaction {:.0} ms)",
                    c.what,
                    c.latency_ms,
                    c.sync_ms.unwrap_or_default(),
                    c.nft_list_ms,
                    c.nft_transaction_ms,
                ),
            );
            run.changes.push(c);
            added.push(ip);
            // minSyncPeriod counts from the end of kube-proxy's sync.
            let quiet = sync_end.max(t1) + MIN_SYNC + SPACING;
            while let Ok((_, l)) = proc.line(quiet) {
                note(run, &l);
                if sync_complete(&l).is_some() {
                    run.extra_syncs += 1;
                }
            }
        }
        let t = Instant::now();
        let out = Command::new(nft)
            .args(["list", "table", "ip", "kube-proxy"])
            .output()?;
        run.check_list_ms = t.elapsed().as_secs_f64() * 1e3;
        let text = String::from_utf8_lossy(&out.stdout);
        for (c, ip) in run.changes.iter_mut().zip(&added) {
            c.confirmed = has_ip(&text, ip);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("207.5ms"), Some(207.5));
        assert_eq!(go_duration_ms("1m2.5s"), Some(62_500.0));
        assert_eq!(go_duration_ms("850µs"), Some(0.85));
        assert_eq!(go_duration_ms("3x"), None);
        assert_eq!(go_duration_ms(""), None);
    }

    #[test]
    fn log_lines() {
        let l = "I1202 00:44:12.929148   25655 proxier.go:1088] \"SyncProxyRules complete\" \
                 ipFamily=\"IPv4\" elapsed=\"207.215738ms\"";
        assert_eq!(sync_complete(l), Some(Some(207.215738)));
        assert_eq!(sync_complete(&l.replace("IPv4", "IPv6")), None);
        assert!(is_problem(
            "E1202 00:44:12.764168   25655 proxier.go:1169] \"Failed\""
        ));
        assert!(!is_problem("I1202 00:44:12.764168   25655 x"));
        assert!(!is_problem("\tfailed to run nft"));
    }

    #[test]
    fn metrics() {
        let text =
            "# HELP x\nkubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} \
                    1.7961722529239051e+09\nkubeproxy_sync_proxy_rules_last_timestamp_seconds\
                    {ip_family=\"IPv6\"} 2\nplain 3\n";
        let name = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
        assert_eq!(
            metric(text, name, "ip_family=\"IPv4\""),
            Some(1.796_172_252_923_905_1e9)
        );
        assert_eq!(metric(text, name, "ip_family=\"IPv6\""), Some(2.0));
        assert_eq!(metric(text, "plain", ""), Some(3.0));
        assert_eq!(metric(text, "missing", ""), None);
    }

    #[test]
    fn call_log() {
        let dir = std::env::temp_dir().join(format!("nftp-bench-calllog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("calls.log");
        std::fs::write(
            &path,
            "0.00 3000 /usr/sbin/nft --version\n0.01 4000 /usr/sbin/nft -f -\n",
        )
        .unwrap();
        let mut log = CallLog::new(&path);
        log.skip().unwrap();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(
            f,
            "0.01 4000 /usr/sbin/nft --check -f -\n0.02 5000 /usr/sbin/nft -"
        )
        .unwrap();
        assert!(log.next_transaction(Instant::now()).is_err());
        writeln!(f, "f -").unwrap();
        let (_, calls) = log.next_transaction(Instant::now()).unwrap();
        assert_eq!(split_calls(&calls), (0.0, 20.0));
        let list = ["1.50 9 /usr/sbin/nft --json --terse list table ip kube-proxy".to_owned()];
        assert_eq!(split_calls(&list), (1500.0, 0.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn table_counts() {
        let j = json!({ "nftables": [
            { "metainfo": {} }, { "table": {} }, { "chain": {} }, { "chain": {} },
            { "rule": {} }, { "set": { "elem": [1, 2] } }, { "map": { "elem": [3] } }, { "set": {} },
        ] });
        let c = count_table(&j);
        assert_eq!((c.chains, c.rules, c.sets, c.elements), (2, 1, 3, 3));
    }
}
