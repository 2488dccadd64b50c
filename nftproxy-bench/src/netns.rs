//! Throwaway network namespaces and the processes started in them. A namespace is deleted when
//! its guard drops, also on error; namespaces are never linked to the root namespace.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace this program creates: `nftp-bench-<pid>-<n>`.
const PREFIX: &str = "nftp-bench-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace with loopback up, deleted on drop.
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    /// Creates a fresh, uniquely named namespace.
    pub(crate) fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "{PREFIX}{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("running ip netns add (is iproute2 installed?)")?;
        if !out.status.success() {
            bail!(
                "ip netns add {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let ns = Self { name };
        ns.ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns exec <ns>` with `argv`, not started.
    pub(crate) fn command<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs a command inside the namespace and collects its output.
    pub(crate) fn run<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Result<Output> {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running ip netns exec {}", self.name))
    }

    /// Runs a command and fails with its stderr unless it succeeds; returns stdout.
    pub(crate) fn ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.run(argv)?;
        if !out.status.success() {
            bail!(
                "`{}` failed in namespace {}: {}",
                argv.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_pids_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Kills every process still running in a namespace (by pid, as `ip netns pids` lists them).
fn kill_pids_in(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// Deletes namespaces left behind by earlier runs of this program that were killed before their
/// guards ran (their creating process is gone). Returns their names.
pub(crate) fn remove_stale() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_pids_in(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        removed.push(name.to_owned());
    }
    removed
}

/// A child process killed and reaped on drop.
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
