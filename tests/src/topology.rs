//! A one-node cluster in throwaway network namespaces, for real-traffic tests.
//!
//! ```text
//!   external (192.168.0.100/24, 203.0.113.2/32, 203.0.113.200/32; 1.2.3.0/24 via the node)
//!      │ eth0
//!      │ ext0
//!   node "node-a" (192.168.0.2/24, ip_forward; nftproxy's ruleset lives here)
//!      │ veth-a          │ veth-b          │ veth-c
//!      │ eth0            │ eth0            │ eth0
//!   pod-a 10.0.1.5    pod-b 10.0.1.6    pod-c 10.0.1.7
//! ```
//!
//! Every pod reaches everything through the node's stack: its only route is a default route via
//! 169.254.1.1 (on the node's loopback, link scope, so it answers ARP on every pod veth but is never
//! picked as a masquerade source). The node routes each pod's /32 to its veth, 203.0.113.0/24 and
//! the ClusterIP range 172.30.0.0/16 to the external namespace, which does not forward: traffic to a
//! ClusterIP port nftproxy does not reject there is silently dropped. Masqueraded traffic reaches a
//! pod from 192.168.0.2, the node's only global address.
//!
//! Every pod runs `nftproxy-echo serve --name <pod> --tcp 0.0.0.0:8080 --udp 0.0.0.0:8080`.
//! No namespace is linked to the root namespace, and everything (servers, clients, namespaces) is
//! torn down when the [`Topology`] drops, also when a test panics.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;

use crate::netns::Netns;

/// The node's name in the snapshots.
pub const NODE_NAME: &str = "node-a";
/// The node's address (on its link to the external client).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The external client's address on the node's link.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 100);
/// An extra external client address inside the allowed `loadBalancerSourceRanges` (203.0.113.0/25).
pub const CLIENT_ALLOWED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// An extra external client address outside the allowed `loadBalancerSourceRanges`.
pub const CLIENT_BLOCKED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
/// The cluster (pod) CIDR passed to nftproxy.
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";
/// The port every pod's echo server listens on (TCP and UDP).
pub const POD_PORT: u16 = 8080;

/// The link-local next hop pods route through.
const POD_GATEWAY: &str = "169.254.1.1";
/// How long an echo server may live (it also exits when the test process goes away).
const SERVER_LIFETIME_MS: &str = "120000";

/// A namespace of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The node, where nftproxy programs nftables.
    Node,
    /// The client outside the cluster.
    External,
    /// A pod.
    Pod(Pod),
}

/// One of the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pod {
    /// `pod-a`, 10.0.1.5, on node-a in the snapshots.
    A,
    /// `pod-b`, 10.0.1.6, on node-a in the snapshots.
    B,
    /// `pod-c`, 10.0.1.7, on node-b in the snapshots (physically here, to test "not local").
    C,
}

/// All pods.
pub const PODS: [Pod; 3] = [Pod::A, Pod::B, Pod::C];

impl Pod {
    /// Its name, which its echo server answers with.
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "pod-a",
            Self::B => "pod-b",
            Self::C => "pod-c",
        }
    }

    /// Its address.
    pub fn ip(self) -> Ipv4Addr {
        match self {
            Self::A => Ipv4Addr::new(10, 0, 1, 5),
            Self::B => Ipv4Addr::new(10, 0, 1, 6),
            Self::C => Ipv4Addr::new(10, 0, 1, 7),
        }
    }

    /// The node side of its veth pair.
    fn node_link(self) -> &'static str {
        match self {
            Self::A => "veth-a",
            Self::B => "veth-b",
            Self::C => "veth-c",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
            Self::C => 2,
        }
    }
}

/// Transport protocol of a client attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Options of `nftproxy-echo connect`.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// Per connect (or reply) timeout in milliseconds; the client caps it at 2000.
    pub timeout_ms: u64,
    /// Number of attempts, each a new connection (or UDP socket); the client stops at the first
    /// attempt that gets no answer.
    pub count: u32,
    /// Hold one TCP connection open this long, sending a line every 100 ms.
    pub hold_ms: Option<u64>,
    /// Source address to bind.
    pub bind: Option<IpAddr>,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        Self {
            timeout_ms: 1000,
            count: 1,
            hold_ms: None,
            bind: None,
        }
    }
}

impl ConnectOpts {
    /// `count` attempts with the default timeout.
    pub fn count(count: u32) -> Self {
        Self {
            count,
            ..Self::default()
        }
    }

    /// Binds the client to `src`.
    pub fn bind(mut self, src: impl Into<IpAddr>) -> Self {
        self.bind = Some(src.into());
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    fn args(&self, proto: Proto, addr: SocketAddr) -> Vec<String> {
        let mut out = vec![
            "connect".to_string(),
            match proto {
                Proto::Tcp => "--tcp".to_string(),
                Proto::Udp => "--udp".to_string(),
            },
            addr.to_string(),
            "--timeout-ms".to_string(),
            self.timeout_ms.to_string(),
            "--count".to_string(),
            self.count.to_string(),
        ];
        if let Some(ms) = self.hold_ms {
            out.extend(["--hold-ms".to_string(), ms.to_string()]);
        }
        if let Some(src) = self.bind {
            out.extend(["--bind".to_string(), src.to_string()]);
        }
        out
    }
}

/// A child process killed (and reaped) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An echo server; its stdin is kept open so it exits when the test process goes away.
struct Server {
    _stdin: Option<ChildStdin>,
    _child: Reaped,
}

/// A client holding a TCP connection open (`--hold-ms`), started by [`Topology::hold`].
pub struct HeldConnection {
    stdout: BufReader<ChildStdout>,
    child: Reaped,
}

impl HeldConnection {
    /// Waits for the next line the client prints (the first is the answer to connecting).
    pub fn next_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_string()),
        }
    }

    /// Waits for the client to finish and returns the lines it printed since the last
    /// [`next_line`](Self::next_line).
    pub fn finish(mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(line) = self.next_line() {
            rest.push(line);
        }
        let _ = self.child.0.wait();
        rest
    }
}

/// The one-node cluster; see the module documentation.
pub struct Topology {
    // Fields drop in order: processes before the namespaces they run in.
    servers: Vec<Server>,
    echo: PathBuf,
    /// The node namespace.
    pub node: Netns,
    /// The external client namespace.
    pub external: Netns,
    /// The pod namespaces, in [`PODS`] order.
    pub pods: Vec<Netns>,
}

impl Topology {
    /// Builds the namespaces, links and routes and starts an echo server in every pod.
    /// `echo` is the `nftproxy-echo` binary (`env!("CARGO_BIN_EXE_nftproxy-echo")`).
    pub fn new(echo: impl Into<PathBuf>) -> Self {
        let node = Netns::new("node");
        let external = Netns::new("ext");
        let pods: Vec<Netns> = PODS.iter().map(|_| Netns::new("pod")).collect();
        let mut topo = Self {
            servers: Vec::new(),
            echo: echo.into(),
            node,
            external,
            pods,
        };
        topo.wire();
        for pod in PODS {
            topo.start_server(pod);
        }
        topo
    }

    fn wire(&self) {
        let (node, ext) = (&self.node, &self.external);
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            // Hairpin traffic leaves by the link it came in on; an ICMP redirect for it would use
            // up the per-host ICMP rate limit and suppress the port-unreachable of a reject.
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
        ] {
            node.ok(&["sysctl", "-q", "-w", sysctl]);
        }
        // Node <-> external client; the veth is created inside the node namespace.
        ip(
            node,
            &format!(
                "link add name ext0 type veth peer name eth0 netns {}",
                ext.name
            ),
        );
        ip(node, &format!("addr add {NODE_IP}/24 dev ext0"));
        ip(node, "link set ext0 up");
        ip(ext, &format!("addr add {EXTERNAL_IP}/24 dev eth0"));
        ip(ext, &format!("addr add {CLIENT_ALLOWED}/32 dev eth0"));
        ip(ext, &format!("addr add {CLIENT_BLOCKED}/32 dev eth0"));
        ip(ext, "link set eth0 up");
        // LoadBalancer IPs are announced by the node.
        ip(ext, &format!("route add 1.2.3.0/24 via {NODE_IP}"));
        ip(node, &format!("route add 203.0.113.0/24 via {EXTERNAL_IP}"));
        // ClusterIPs: routed somewhere (as a default route would) so that traffic to undefined
        // ports reaches the forward hook; the external namespace does not forward, so it drops.
        ip(node, &format!("route add 172.30.0.0/16 via {EXTERNAL_IP}"));
        // The pods' gateway: local to the node, link scope so masquerading never picks it.
        ip(
            node,
            &format!("addr add {POD_GATEWAY}/32 dev lo scope link"),
        );
        for pod in PODS {
            let ns = &self.pods[pod.index()];
            let link = pod.node_link();
            ip(
                node,
                &format!(
                    "link add name {link} type veth peer name eth0 netns {}",
                    ns.name
                ),
            );
            ip(node, &format!("link set {link} up"));
            ip(node, &format!("route add {}/32 dev {link}", pod.ip()));
            ip(ns, &format!("addr add {}/32 dev eth0", pod.ip()));
            ip(ns, "link set eth0 up");
            ip(
                ns,
                &format!("route add default via {POD_GATEWAY} dev eth0 onlink"),
            );
        }
    }

    fn start_server(&mut self, pod: Pod) {
        let ns = &self.pods[pod.index()];
        let listen = format!("0.0.0.0:{POD_PORT}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&self.echo)
            .args([
                "serve",
                "--name",
                pod.name(),
                "--tcp",
                &listen,
                "--udp",
                &listen,
            ])
            .args(["--lifetime-ms", SERVER_LIFETIME_MS])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} in {}: {e}", self.echo.display(), ns.name));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let child = Reaped(child);
        let mut ready = String::new();
        let _ = BufReader::new(stdout).read_line(&mut ready);
        assert_eq!(
            ready.trim_end(),
            "ready",
            "echo server in {} did not start",
            pod.name()
        );
        self.servers.push(Server {
            _stdin: stdin,
            _child: child,
        });
    }

    /// The namespace of a place.
    pub fn ns(&self, place: Place) -> &Netns {
        match place {
            Place::Node => &self.node,
            Place::External => &self.external,
            Place::Pod(pod) => &self.pods[pod.index()],
        }
    }

    /// Runs a command in a place.
    pub fn exec(&self, place: Place, argv: &[&str]) -> Output {
        self.ns(place).run(argv)
    }

    /// Runs `nftproxy-echo connect` in `from` and returns the lines it printed: one per attempt,
    /// the server's answer (`pod-a 192.168.0.2`) or `refused`, `timeout`, `unreachable`,
    /// `error: ...`.
    pub fn connect(
        &self,
        from: Place,
        proto: Proto,
        addr: impl Into<SocketAddr>,
        opts: &ConnectOpts,
    ) -> Vec<String> {
        let args = opts.args(proto, addr.into());
        let mut argv: Vec<&str> = vec![self.echo.to_str().expect("utf-8 path")];
        argv.extend(args.iter().map(String::as_str));
        let out = self.exec(from, &argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Starts a client in `from` that holds one TCP connection to `addr` open for `hold_ms`,
    /// sending a line every 100 ms and printing every answer.
    pub fn hold(&self, from: Place, addr: impl Into<SocketAddr>, hold_ms: u64) -> HeldConnection {
        let opts = ConnectOpts {
            hold_ms: Some(hold_ms),
            ..ConnectOpts::default()
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(from).name])
            .arg(&self.echo)
            .args(opts.args(Proto::Tcp, addr.into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nftproxy-echo connect");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        HeldConnection {
            stdout,
            child: Reaped(child),
        }
    }

    /// Programs the node from a snapshot the way nftproxy runs on node-a, inside the node
    /// namespace; returns the command's output (check `status`). Uses `nftproxy apply`, or
    /// [`apply_via_render`] while nftproxy has no `apply` subcommand or when
    /// `NFTPROXY_TRAFFIC_VIA_RENDER=1` (to tell the compiler's faults from `apply`'s).
    pub fn apply(&self, snapshot: &Path) -> Output {
        let bin = nftproxy_bin();
        let snapshot = snapshot.to_str().expect("utf-8 path");
        let mut argv = vec![bin.to_str().expect("utf-8 path")];
        let node_ip = NODE_IP.to_string();
        let flags = [
            "--snapshot",
            snapshot,
            "--node-name",
            NODE_NAME,
            "--node-ip",
            &node_ip,
            "--cluster-cidr",
            CLUSTER_CIDR,
        ];
        let via_render = std::env::var_os("NFTPROXY_TRAFFIC_VIA_RENDER").is_some_and(|v| v == "1");
        if has_subcommand("apply") && !via_render {
            argv.push("apply");
            argv.extend(flags);
            self.node.run(&argv)
        } else {
            apply_via_render(&self.node, &bin, &flags)
        }
    }

    /// Runs `nftproxy cleanup` in the node namespace, or returns `None` while nftproxy has no
    /// `cleanup` subcommand.
    pub fn cleanup(&self) -> Option<Output> {
        if !has_subcommand("cleanup") {
            return None;
        }
        let bin = nftproxy_bin();
        Some(
            self.node
                .run(&[bin.to_str().expect("utf-8 path"), "cleanup"]),
        )
    }
}

/// Stand-in for `nftproxy apply` until it exists: `nftproxy render --format json`, loaded with
/// `nft -j -f -` in one transaction that first deletes the previous tables (so a re-apply is
/// atomic, like the real thing, and established connections keep their conntrack entries).
fn apply_via_render(node: &Netns, bin: &Path, flags: &[&str]) -> Output {
    let mut argv = vec![
        bin.to_str().expect("utf-8 path"),
        "render",
        "--format",
        "json",
    ];
    argv.extend(flags);
    let rendered = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("run nftproxy render");
    if !rendered.status.success() {
        return rendered;
    }
    let mut doc: serde_json::Value = match serde_json::from_slice(&rendered.stdout) {
        Ok(doc) => doc,
        Err(e) => panic!("nftproxy render --format json printed invalid JSON: {e}"),
    };
    let commands = doc["nftables"]
        .as_array_mut()
        .expect("render JSON has an nftables array");
    let tables: Vec<serde_json::Value> = commands
        .iter()
        .filter_map(|c| {
            c.get("table")
                .or_else(|| c.get("add").and_then(|a| a.get("table")))
        })
        .map(|t| serde_json::json!({ "family": t["family"], "name": t["name"] }))
        .collect();
    let mut prefix = Vec::new();
    for table in tables {
        prefix.push(serde_json::json!({ "add": { "table": table.clone() } }));
        prefix.push(serde_json::json!({ "delete": { "table": table } }));
    }
    let at = usize::from(
        commands
            .first()
            .is_some_and(|c| c.get("metainfo").is_some()),
    );
    commands.splice(at..at, prefix);
    node.run_stdin(&["nft", "-j", "-f", "-"], Some(&doc.to_string()))
}

/// Runs `ip ARGS` (split at spaces) in a namespace; panics unless it succeeds.
fn ip(ns: &Netns, args: &str) {
    let mut argv = vec!["ip"];
    argv.extend(args.split(' '));
    ns.ok(&argv);
}

/// True when `nftproxy --help` lists the subcommand.
fn has_subcommand(name: &str) -> bool {
    static HELP: OnceLock<String> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        let out = Command::new(nftproxy_bin())
            .arg("--help")
            .output()
            .expect("run nftproxy --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    help.lines()
        .any(|l| l.starts_with("  ") && l.split_whitespace().next() == Some(name))
}

/// The `nftproxy` binary: `$NFTPROXY_BIN`, else `target/debug/nftproxy` of the workspace,
/// built with `cargo build -p nftproxy-bin` if it is missing. (A stale binary is used as is:
/// `scripts/test` builds the workspace before testing.)
pub fn nftproxy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("NFTPROXY_BIN") {
            return PathBuf::from(path);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // Test executables live in <target>/debug/deps; the binary in <target>/debug.
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join("nftproxy")));
        let candidates = beside
            .into_iter()
            .chain([workspace.join("target/debug/nftproxy")]);
        for path in candidates {
            if path.is_file() {
                return path;
            }
        }
        // Built in a separate target directory: the outer `cargo test` may hold the lock on ours.
        let target = workspace.join("target/traffic-tests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "nftproxy-bin", "--target-dir"])
            .arg(&target)
            .current_dir(&workspace)
            .status()
            .expect("run cargo build -p nftproxy-bin");
        assert!(status.success(), "cargo build -p nftproxy-bin failed");
        target.join("debug/nftproxy")
    })
    .clone()
}
