//! Data-plane latency: TCP connects from a client pod to the probe service's ClusterIP, DNATed by
//! the node's ruleset to a server pod, with a small and with a large ruleset loaded.
//!
//! Two identical topologies are built, one loaded with the small ruleset and one with the large;
//! the connects alternate between them in rounds, so that background load on the machine falls on
//! both alike.
//!
//! ```text
//!   client pod 10.255.255.3          server pod 10.255.255.2 (accept loop on :8080)
//!      │ eth0                            │ eth0
//!      │ veth-cli                        │ veth-srv
//!   node (ip_forward=1, 169.254.1.1/32 on lo as the pods' gateway; nftproxy's ruleset)
//! ```
//!
//! Each pod's only route is a default route via 169.254.1.1 (onlink); the node routes each pod's
//! /32 to its veth. All three are throwaway namespaces; none is linked to the root namespace. The
//! server and client are this program, re-executed inside the pod namespaces (`serve`,
//! `connect`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::{CLIENT_POD_IP, PROBE_CLUSTER_IP, PROBE_PORT, SERVER_POD_IP, SERVER_PORT};
use crate::netns::{Netns, Reaped};

const GATEWAY: &str = "169.254.1.1";
/// The server exits on its own after this long, whatever happens to this process.
const SERVER_LIFETIME_S: u64 = 1800;
/// A connect loop gives up after this long in total.
const CONNECT_DEADLINE_S: u64 = 120;
/// ... or after this many consecutive failures.
const MAX_CONSECUTIVE_FAILURES: u32 = 20;
/// Connects before measuring, to warm caches and ARP.
const WARMUP: u32 = 20;

/// Connect latencies through one ClusterIP.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    /// Successful connects measured.
    pub(crate) ok: usize,
    /// Failed connects (timeouts, refusals).
    pub(crate) failed: usize,
    /// Median, microseconds.
    pub(crate) median_us: f64,
    /// 99th percentile, microseconds.
    pub(crate) p99_us: f64,
}

/// The client, server and node namespaces; processes are stopped before the namespaces go.
pub(crate) struct Topology {
    server: Option<Reaped>,
    pub(crate) node: Netns,
    client: Netns,
    server_ns: Netns,
}

impl Topology {
    /// Builds the namespaces and links and starts the server.
    pub(crate) fn new(exe: &Path) -> Result<Self> {
        let mut topo = Self {
            server: None,
            node: Netns::new("node")?,
            client: Netns::new("client")?,
            server_ns: Netns::new("server")?,
        };
        topo.wire()?;
        topo.start_server(exe)?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        let node = &self.node;
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            node.ok(&["sysctl", "-q", "-w", sysctl])?;
        }
        node.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{GATEWAY}/32"),
            "dev",
            "lo",
            "scope",
            "link",
        ])?;
        for (pod, ip, link) in [
            (&self.client, CLIENT_POD_IP, "veth-cli"),
            (&self.server_ns, SERVER_POD_IP, "veth-srv"),
        ] {
            // Both ends are created inside namespaces: the node end in the node namespace, the
            // peer moved straight into the pod namespace.
            node.ok(&[
                "ip", "link", "add", "name", link, "type", "veth", "peer", "name", "eth0", "netns",
                &pod.name,
            ])?;
            node.ok(&["ip", "link", "set", link, "up"])?;
            node.ok(&["ip", "route", "add", &format!("{ip}/32"), "dev", link])?;
            pod.ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            pod.ok(&["ip", "link", "set", "eth0", "up"])?;
            pod.ok(&[
                "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink",
            ])?;
        }
        Ok(())
    }

    fn start_server(&mut self, exe: &Path) -> Result<()> {
        let exe = exe.to_str().context("executable path is not utf-8")?;
        let listen = format!("0.0.0.0:{SERVER_PORT}");
        let lifetime = SERVER_LIFETIME_S.to_string();
        let mut child = self
            .server_ns
            .command(&[exe, "serve", "--listen", &listen, "--lifetime-s", &lifetime])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server pod's accept loop")?;
        let stdout = child.stdout.take();
        self.server = Some(Reaped(child));
        let mut ready = String::new();
        if let Some(out) = stdout {
            BufReader::new(out).read_line(&mut ready)?;
        }
        if ready.trim() != "ready" {
            bail!("the server in {} did not start", self.server_ns.name);
        }
        Ok(())
    }

    /// Runs `count` connects from the client pod to the probe ClusterIP; returns the latencies
    /// (microseconds) of those that succeeded and the number that failed.
    pub(crate) fn connects(&self, exe: &Path, count: u32) -> Result<(Vec<f64>, usize)> {
        let exe = exe.to_str().context("executable path is not utf-8")?;
        let addr = format!("{PROBE_CLUSTER_IP}:{PROBE_PORT}");
        let out = self.client.run(&[
            exe,
            "connect",
            "--addr",
            &addr,
            "--count",
            &count.to_string(),
            "--timeout-ms",
            "1000",
        ])?;
        if !out.status.success() {
            bail!(
                "connect loop failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut samples = Vec::new();
        let mut failed = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            match line
                .strip_prefix("ok ")
                .and_then(|us| us.parse::<f64>().ok())
            {
                Some(us) => samples.push(us),
                None => failed += 1,
            }
        }
        if samples.is_empty() {
            bail!("no connect to {addr} succeeded ({failed} failed)");
        }
        Ok((samples, failed))
    }
}

/// Median and 99th percentile of the samples.
pub(crate) fn latency(mut samples: Vec<f64>, failed: usize) -> Latency {
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Latency {
        ok: samples.len(),
        failed,
        median_us: pick(0.5),
        p99_us: pick(0.99),
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.server.take();
    }
}

/// `serve`: accepts TCP connections and closes them at once, until stdin closes or `lifetime`.
pub(crate) fn serve(listen: SocketAddr, lifetime: Duration) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        std::process::exit(0);
    });
    // Exit when the parent goes away (it holds our stdin).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}

/// `connect`: `count` sequential TCP connects (after a short warm-up), each with `timeout`; prints
/// `ok <microseconds>` or `fail <why>` per connect. Stops early after too many consecutive
/// failures or [`CONNECT_DEADLINE_S`] in total.
pub(crate) fn connect(addr: SocketAddr, count: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(CONNECT_DEADLINE_S);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut consecutive_failures = 0;
    for i in 0..WARMUP + count {
        if Instant::now() > deadline || consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
            break;
        }
        let start = Instant::now();
        let result = TcpStream::connect_timeout(&addr, timeout);
        let us = start.elapsed().as_secs_f64() * 1e6;
        match result {
            Ok(stream) => {
                consecutive_failures = 0;
                drop(stream);
                if i >= WARMUP {
                    writeln!(out, "ok {us:.1}")?;
                }
            }
            Err(e) => {
                consecutive_failures += 1;
                let phase = if i >= WARMUP { "fail" } else { "warmup-fail" };
                writeln!(out, "{phase} {}", e.kind())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
