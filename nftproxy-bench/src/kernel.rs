//! Programming the kernel: `nftproxy apply` and the reference `nft -f`, timed, in throwaway
//! namespaces.
//!
//! # How peak memory is measured
//!
//! * **nftproxy itself**: while it runs, `VmHWM` (the kernel's high-water mark of its resident
//!   set) is read from `/proc/<pid>/status` every 2 ms; the last value read before it exits is its
//!   peak. As a cross-check nftproxy runs under `/usr/bin/time -f %M`, whose figure comes from
//!   wait4's rusage and is the maximum over nftproxy *and* its waited-for children (nft), so it
//!   cannot tell the two apart on its own.
//! * **its nft children**: `NFTPROXY_NFT` points nftproxy at a wrapper script that runs the real
//!   `nft` under `/usr/bin/time -f %M` and appends, per call, the wall time (ns), peak RSS (KiB)
//!   and arguments to a log.
//!
//! Instrumented runs (full applies and one extra incremental one) pay a few milliseconds per nft
//! call for the wrapper; the incremental applies in the table are timed without it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::netns::Netns;

const TIME: &str = "/usr/bin/time";

/// One nft invocation seen by the wrapper.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NftCall {
    /// Its arguments, e.g. `-j list table ip nftproxy`.
    pub(crate) args: String,
    /// Wall time in milliseconds (including the wrapper's own `time`).
    pub(crate) wall_ms: f64,
    /// Peak RSS in KiB, if `/usr/bin/time` is installed.
    pub(crate) rss_kib: Option<u64>,
}

/// One `nftproxy apply` run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ApplyRun {
    /// Wall time of the whole command, in milliseconds.
    pub(crate) wall_ms: f64,
    /// Operations sent, from its stdout.
    pub(crate) ops: usize,
    /// Its stdout, trimmed.
    pub(crate) stdout: String,
    /// The nft calls it made (instrumented runs only).
    pub(crate) nft_calls: Vec<NftCall>,
    /// nftproxy's own peak RSS in KiB (`VmHWM`, instrumented runs only).
    pub(crate) nftproxy_rss_kib: Option<u64>,
    /// `/usr/bin/time` peak RSS of nftproxy and its children (instrumented runs only).
    pub(crate) tree_rss_kib: Option<u64>,
}

impl ApplyRun {
    /// Total wall time of the nft calls, in milliseconds.
    pub(crate) fn nft_ms(&self) -> f64 {
        self.nft_calls.iter().map(|c| c.wall_ms).sum()
    }

    /// Wall time of the nft calls whose arguments contain `what`, in milliseconds.
    pub(crate) fn nft_ms_matching(&self, what: &str) -> f64 {
        self.nft_calls
            .iter()
            .filter(|c| c.args.contains(what))
            .map(|c| c.wall_ms)
            .sum()
    }

    /// The largest nft child's peak RSS, in KiB.
    pub(crate) fn nft_rss_kib(&self) -> Option<u64> {
        self.nft_calls.iter().filter_map(|c| c.rss_kib).max()
    }
}

/// The reference load.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReferenceRun {
    /// Wall time of `nft -f FILE`, in milliseconds.
    pub(crate) wall_ms: f64,
    /// Lines (nft commands) in the file.
    pub(crate) lines: usize,
    /// Size of the file.
    pub(crate) bytes: u64,
    /// Peak RSS of nft, KiB.
    pub(crate) rss_kib: Option<u64>,
}

/// How `nftproxy apply` is run.
pub(crate) struct Nftproxy {
    bin: PathBuf,
    workdir: PathBuf,
    wrapper: PathBuf,
    has_time: bool,
}

impl Nftproxy {
    /// `bin` is the release `nftproxy`; the nft wrapper and logs go to `workdir`.
    pub(crate) fn new(bin: PathBuf, workdir: &Path) -> Result<Self> {
        if !bin.is_file() {
            bail!(
                "{} not found: build it first with `cargo build --release -p nftproxy-bin` \
                 (scripts/bench does), or pass --nftproxy",
                bin.display()
            );
        }
        let has_time = Path::new(TIME).is_file();
        let wrapper = workdir.join("nft-wrapper.sh");
        std::fs::write(&wrapper, WRAPPER)
            .with_context(|| format!("writing {}", wrapper.display()))?;
        set_executable(&wrapper)?;
        Ok(Self {
            bin,
            workdir: workdir.to_owned(),
            wrapper,
            has_time,
        })
    }

    /// Whether `/usr/bin/time` is there (else RSS figures are missing).
    pub(crate) fn has_time(&self) -> bool {
        self.has_time
    }

    /// Applies `snapshot` in `ns`; `instrument` adds the RSS and nft-call measurements.
    pub(crate) fn apply(&self, ns: &Netns, snapshot: &Path, instrument: bool) -> Result<ApplyRun> {
        let snapshot = snapshot.to_str().context("snapshot path is not utf-8")?;
        let bin = self.bin.to_str().context("nftproxy path is not utf-8")?;
        let log = self.workdir.join(format!("nft-calls-{}.log", ns.name));
        let tree_rss = self.workdir.join(format!("nftproxy-rss-{}.txt", ns.name));
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&tree_rss);
        let mut argv: Vec<&str> = Vec::new();
        let timed = instrument && self.has_time;
        let tree_rss_str = tree_rss.to_str().context("workdir path is not utf-8")?;
        if timed {
            argv.extend([TIME, "-o", tree_rss_str, "-f", "%M"]);
        }
        argv.extend([
            bin,
            "apply",
            "--snapshot",
            snapshot,
            "--node-name",
            crate::NODE_NAME,
            "--node-ip",
            crate::NODE_IP,
            "--cluster-cidr",
            crate::CLUSTER_CIDR,
            "--backend",
            "netlink",
        ]);
        let mut cmd = ns.command(&argv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NFTPROXY_LOG", "warn");
        if instrument {
            cmd.env("NFTPROXY_NFT", &self.wrapper)
                .env("NFTPROXY_BENCH_LOG", &log);
        }
        let start = Instant::now();
        let child = cmd.spawn().context("starting nftproxy apply")?;
        let pid = child.id();
        let poller = instrument.then(|| std::thread::spawn(move || poll_hwm(pid, timed)));
        let out = child.wait_with_output().context("waiting for nftproxy")?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let nftproxy_rss_kib = poller.and_then(|p| p.join().ok().flatten());
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() {
            bail!(
                "nftproxy apply --snapshot {snapshot} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let ops = parse_ops(&stdout)
            .with_context(|| format!("unexpected output of nftproxy apply: {stdout:?}"))?;
        let nft_calls = if instrument {
            read_calls(&log)?
        } else {
            Vec::new()
        };
        let tree_rss_kib = timed.then(|| last_number(&tree_rss)).flatten();
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&tree_rss);
        Ok(ApplyRun {
            wall_ms,
            ops,
            stdout,
            nft_calls,
            nftproxy_rss_kib,
            tree_rss_kib,
        })
    }

    /// Loads a reference nft script in `ns` with `nft -f`.
    pub(crate) fn reference(&self, ns: &Netns, script: &Path) -> Result<ReferenceRun> {
        let script_str = script.to_str().context("script path is not utf-8")?;
        let rss = self.workdir.join(format!("reference-rss-{}.txt", ns.name));
        let rss_str = rss.to_str().context("workdir path is not utf-8")?;
        let mut argv: Vec<&str> = Vec::new();
        if self.has_time {
            argv.extend([TIME, "-o", rss_str, "-f", "%M"]);
        }
        argv.extend(["nft", "-f", script_str]);
        let start = Instant::now();
        let out = ns.run(&argv)?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!(
                "nft -f {script_str} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = std::fs::read_to_string(script)?;
        let rss_kib = if self.has_time {
            last_number(&rss)
        } else {
            None
        };
        let _ = std::fs::remove_file(&rss);
        Ok(ReferenceRun {
            wall_ms,
            lines: text.lines().count(),
            bytes: text.len() as u64,
            rss_kib,
        })
    }
}

/// The nft wrapper (see the module documentation). Falls back to plain nft without `time`.
const WRAPPER: &str = r#"#!/bin/sh
# Written by nftproxy-bench: runs nft, appending "<wall ns> <peak RSS KiB> <args>" to
# $NFTPROXY_BENCH_LOG.
log="${NFTPROXY_BENCH_LOG:?}"
rss="$log.rss.$$"
s=$(date +%s%N)
if [ -x /usr/bin/time ]; then
    /usr/bin/time -o "$rss" -f '%M' nft "$@"
    rc=$?
    m=$(tail -n 1 "$rss" 2>/dev/null)
    rm -f "$rss"
else
    nft "$@"
    rc=$?
    m=-
fi
e=$(date +%s%N)
echo "$((e - s)) ${m:--} $*" >> "$log"
exit $rc
"#;

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `applied N operations ...` or `up to date: sent 0 operations`.
fn parse_ops(stdout: &str) -> Option<usize> {
    let line = stdout.lines().last()?;
    if line.starts_with("up to date") {
        return Some(0);
    }
    line.strip_prefix("applied ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn read_calls(log: &Path) -> Result<Vec<NftCall>> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
    };
    let mut calls = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(ns), Some(rss)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(ns) = ns.parse::<u64>() else { continue };
        calls.push(NftCall {
            args: parts.next().unwrap_or("").to_owned(),
            wall_ms: ns as f64 / 1e6,
            rss_kib: rss.parse().ok(),
        });
    }
    Ok(calls)
}

/// The last line of a `/usr/bin/time -o` file, as a number.
fn last_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}

/// Polls nftproxy's `VmHWM` until it exits; `pid` is `ip netns exec`, which execs in place
/// (into `time` when `under_time`, whose child is then nftproxy).
fn poll_hwm(pid: u32, under_time: bool) -> Option<u64> {
    let mut peak = None;
    let mut target = (!under_time).then_some(pid);
    let deadline = Instant::now() + Duration::from_secs(3600);
    while Instant::now() < deadline {
        if target.is_none() {
            // The first child of `time` is nftproxy (after its exec; before, HWM is tiny).
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
            match children {
                Ok(c) => target = c.split_whitespace().next().and_then(|p| p.parse().ok()),
                Err(_) => return peak,
            }
        }
        if let Some(t) = target {
            match read_hwm(t) {
                Some(kib) => peak = Some(kib),
                None if peak.is_some() => return peak,
                None => {}
            }
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return peak;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    peak
}

/// `VmHWM` of a process in KiB; `None` once it has exited (or is a zombie).
fn read_hwm(pid: u32) -> Option<u64> {
    let mut s = String::new();
    std::fs::File::open(format!("/proc/{pid}/status"))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_from_stdout() {
        assert_eq!(
            parse_ops("applied 12 operations (3 elements, 0 rules) with the json backend"),
            Some(12)
        );
        assert_eq!(parse_ops("up to date: sent 0 operations"), Some(0));
        assert_eq!(parse_ops("something else"), None);
    }
}
