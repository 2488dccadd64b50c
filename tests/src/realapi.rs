//! End-to-end kit: a real kube-apiserver + etcd (`scripts/realapi`) inside a topology's node
//! namespace, Kubernetes objects as JSON, and the `nftproxy run` daemon with its log readable while
//! it runs.
//!
//! ```text
//!   Cluster::new(echo)          topology (see `topology`) + ApiServer in its node namespace
//!                               + Node "node-a" with status.addresses InternalIP 192.168.0.2
//!   cluster.api.apply(&[obj])   kubectl apply -f - (objects from `service`, `slice`, ...)
//!   cluster.daemon(User::KubeProxy, &[])
//!                               ip netns exec <node> nftproxy run --kubeconfig ... (log in a file)
//!   daemon.wait_for_sync(0, t)  the first `sync done`/`sync failed` line, parsed
//! ```
//!
//! Every wait is bounded. The daemon is killed (SIGKILL) when its [`Daemon`] drops, the API server
//! and etcd are stopped and their state directory removed when the [`ApiServer`] drops, also when
//! a test panics; a panicking test prints the tail of the daemon's log.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::Netns;
use crate::topology::{nftproxy_bin, Topology, CLUSTER_CIDR, NODE_IP, NODE_NAME};

/// The Service CIDR the API server allocates from: the range the topology routes.
pub const SERVICE_CIDR: &str = "172.30.0.0/16";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `scripts/realapi` of this workspace.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/realapi")
}

/// The directory holding kube-apiserver, etcd, kubectl and kube-proxy, or `None` when
/// `scripts/realapi bin` says they are not built (`scripts/realapi build` builds them).
pub fn bin_dir() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(script()).arg("bin").output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(text.lines().last()?.trim());
        dir.join("kube-apiserver").is_file().then_some(dir)
    })
    .clone()
}

/// Skips the calling test (with a message) unless the real API server's binaries are built.
#[macro_export]
macro_rules! require_realapi {
    () => {
        if $crate::realapi::bin_dir().is_none() {
            eprintln!(
                "skipped: kube-apiserver/etcd/kubectl are not built (`scripts/realapi bin` failed); \
                 run `scripts/realapi build`"
            );
            return;
        }
    };
}

/// Polls `f` every `every` until it returns `Some`, at most for `timeout` (`f` runs at least
/// once). Returns the value and when it came, measured from the call.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(every.min(timeout.saturating_sub(start.elapsed())));
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        lossy(&out.stdout).trim(),
        lossy(&out.stderr).trim()
    )
}

// ---------------------------------------------------------------------------------------------
// The API server

/// Whose credentials a client uses (the kubeconfigs `scripts/realapi start` writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// `admin` (system:masters).
    Admin,
    /// `system:kube-proxy`: bound to `system:node-proxier`, kube-proxy's own rights.
    KubeProxy,
    /// `nftproxy-node`: authenticated, no rights at all.
    NoRights,
}

impl User {
    fn file(self) -> &'static str {
        match self {
            Self::Admin => "admin.kubeconfig",
            Self::KubeProxy => "kube-proxy.kubeconfig",
            Self::NoRights => "nftproxy-node.kubeconfig",
        }
    }
}

/// etcd + kube-apiserver on 127.0.0.1:6443 inside a network namespace, state in a fresh directory
/// under /tmp. Stopped, and the directory removed, on drop.
pub struct ApiServer {
    dir: PathBuf,
    netns: String,
    kubectl: PathBuf,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver (Service CIDR [`SERVICE_CIDR`]) inside `ns`; returns once
    /// the API server is ready. Panics if the binaries are not built (see [`require_realapi!`]).
    pub fn start(ns: &Netns) -> Self {
        let bin = bin_dir().expect("kube-apiserver not built: scripts/realapi build");
        let dir = std::env::temp_dir().join(format!(
            "nftproxy-e2e-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the API server's state directory");
        let api = Self {
            dir,
            netns: ns.name.clone(),
            kubectl: bin.join("kubectl"),
        };
        api.start_again();
        api
    }

    /// The state directory (kubeconfigs, logs, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubeconfig of a user.
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.join(user.file())
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new(script())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/realapi")
    }

    /// Starts whatever of etcd and the API server is not running (all of it, the first time);
    /// returns once the API server is ready (the script gives up after 60 s).
    pub fn start_again(&self) {
        let out = self.script(&[
            "start",
            "--netns",
            &self.netns,
            "--service-cidr",
            SERVICE_CIDR,
        ]);
        assert!(
            out.status.success(),
            "scripts/realapi start: {}",
            describe(&out)
        );
    }

    /// Stops the API server only (etcd keeps its data and keeps running).
    pub fn stop_apiserver(&self) {
        let out = self.script(&["stop", "--only", "apiserver"]);
        assert!(
            out.status.success(),
            "scripts/realapi stop --only apiserver: {}",
            describe(&out)
        );
    }

    /// Runs kubectl (as admin) inside the namespace.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig(User::Admin))
            .arg("--cache-dir")
            .arg(self.dir.join(".kubecache"))
            .arg("--request-timeout=10s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        drop(pipe);
        child.wait_with_output().expect("wait for kubectl")
    }

    /// Runs kubectl and panics unless it succeeds; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(out.status.success(), "kubectl {args:?}: {}", describe(&out));
        lossy(&out.stdout)
    }

    /// `kubectl apply -f -` of the objects (created, or changed to exactly these).
    pub fn apply(&self, objects: &[Value]) {
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects });
        self.kubectl_ok(&["apply", "-f", "-"], Some(&list.to_string()));
    }

    /// Deletes an object of namespace `default` (`kind` as kubectl spells it: `service`,
    /// `endpointslice`, ...).
    pub fn delete(&self, kind: &str, name: &str) {
        self.kubectl_ok(
            &["delete", "-n", "default", kind, name, "--wait=false"],
            None,
        );
    }

    /// Creates a Node with `status.addresses` (InternalIP `ip`, Hostname `name`): status is a
    /// subresource, so it is patched in after the create.
    pub fn create_node(&self, name: &str, ip: Ipv4Addr) {
        self.apply(&[json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        })]);
        let status = json!({ "status": { "addresses": [
            { "type": "InternalIP", "address": ip.to_string() },
            { "type": "Hostname", "address": name },
        ] } });
        self.kubectl_ok(
            &[
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        );
    }

    /// The last `lines` lines of the API server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(
            &lossy(&fs::read(self.dir.join("apiserver.log")).unwrap_or_default()),
            lines,
        )
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- tail of {}/apiserver.log\n{}\n-----",
                self.dir.display(),
                self.log_tail(15)
            );
        }
        let _ = self.script(&["stop"]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Objects

/// One port of a Service (and of its EndpointSlices: `name`, `protocol`, `target_port`).
#[derive(Debug, Clone, Copy)]
pub struct SvcPort {
    /// Port name (`http`).
    pub name: &'static str,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// The Service port.
    pub port: u16,
    /// The pods' port.
    pub target_port: u16,
    /// The NodePort, for a NodePort Service.
    pub node_port: Option<u16>,
}

/// A TCP port.
pub fn tcp(name: &'static str, port: u16, target_port: u16) -> SvcPort {
    SvcPort {
        name,
        protocol: "TCP",
        port,
        target_port,
        node_port: None,
    }
}

/// A UDP port.
pub fn udp(name: &'static str, port: u16, target_port: u16) -> SvcPort {
    SvcPort {
        protocol: "UDP",
        ..tcp(name, port, target_port)
    }
}

impl SvcPort {
    /// The same port with a NodePort.
    pub fn node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

/// A Service in namespace `default` with an explicit ClusterIP; type `NodePort` when any port has
/// a NodePort, else `ClusterIP`.
pub fn service(name: &str, cluster_ip: Ipv4Addr, ports: &[SvcPort]) -> Value {
    let node_port = ports.iter().any(|p| p.node_port.is_some());
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut port = json!({
                "name": p.name,
                "protocol": p.protocol,
                "port": p.port,
                "targetPort": p.target_port,
            });
            if let Some(np) = p.node_port {
                port["nodePort"] = json!(np);
            }
            port
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "type": if node_port { "NodePort" } else { "ClusterIP" },
            "clusterIP": cluster_ip.to_string(),
            "clusterIPs": [cluster_ip.to_string()],
            "ports": ports,
        },
    })
}

/// An endpoint of a slice: a ready pod address on a node.
#[derive(Debug, Clone, Copy)]
pub struct Ep {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub node: &'static str,
}

/// The EndpointSlice `name` of Service `service` (namespace `default`), as the EndpointSlice
/// controller writes it: label `kubernetes.io/service-name`, `addressType: IPv4`, the Service's
/// port names and protocols with the target ports, ready endpoints with `nodeName`. No endpoints
/// is an empty list (which the API server hands out as `endpoints: null`).
pub fn slice(name: &str, service: &str, ports: &[SvcPort], endpoints: &[Ep]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({ "name": p.name, "protocol": p.protocol, "port": p.target_port }))
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.ip.to_string()],
                "nodeName": e.node,
                "conditions": { "ready": true, "serving": true, "terminating": false },
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// A topology with an API server in its node namespace and the Node object of node-a.
pub struct Cluster {
    // Drop order: the API server before the namespaces it runs in.
    /// The API server (admin kubectl, kubeconfigs).
    pub api: ApiServer,
    /// The namespaces, pods and echo servers.
    pub topo: Topology,
}

impl Cluster {
    /// Builds the topology (`echo` is the `nftproxy-echo` binary), starts the API server in the
    /// node namespace and creates Node `node-a` (InternalIP 192.168.0.2).
    pub fn new(echo: impl Into<PathBuf>) -> Self {
        let topo = Topology::new(echo);
        let api = ApiServer::start(&topo.node);
        api.create_node(NODE_NAME, NODE_IP);
        Self { api, topo }
    }

    /// Starts `nftproxy run` in the node namespace with `user`'s kubeconfig,
    /// `--hostname-override node-a --cluster-cidr 10.0.0.0/8` and `extra` flags.
    pub fn daemon(&self, user: User, extra: &[&str]) -> Daemon {
        self.daemon_env(user, extra, &[])
    }

    /// [`daemon`](Self::daemon) with extra environment variables (`NFTPROXY_NFT`, ...).
    pub fn daemon_env(&self, user: User, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let kubeconfig = self.api.kubeconfig(user);
        let mut args = vec![
            "run",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8 path"),
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            CLUSTER_CIDR,
        ];
        args.extend_from_slice(extra);
        Daemon::spawn_env(&self.topo.node, &args, self.api.dir(), env)
    }

    /// The tables in the node namespace, as `nft list tables` prints them (`table ip nftproxy`).
    pub fn tables(&self) -> Vec<String> {
        tables(&self.topo.node)
    }
}

/// The tables in a namespace, as `nft list tables` prints them (`table ip nftproxy`).
pub fn tables(ns: &Netns) -> Vec<String> {
    ns.ok(&["nft", "list", "tables"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// One `sync done: ...` or `sync failed: ...` line of the daemon's log.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncLine {
    /// `sync done` (true) or `sync failed`.
    pub ok: bool,
    /// `full` or `partial`.
    pub kind: String,
    /// Operations sent.
    pub ops: Option<u64>,
    /// Element operations.
    pub elements: Option<u64>,
    /// Services in the ruleset.
    pub services: Option<u64>,
    /// How long the sync took.
    pub duration_ms: Option<f64>,
    /// The error of a failed sync (the rest of the line after `error=`).
    pub error: Option<String>,
    /// The whole line.
    pub line: String,
}

impl SyncLine {
    /// Parses a log line; `None` unless it is a sync line.
    pub fn parse(line: &str) -> Option<Self> {
        let (ok, rest) = if let Some(i) = line.find("sync done") {
            (true, &line[i + "sync done".len()..])
        } else if let Some(i) = line.find("sync failed") {
            (false, &line[i + "sync failed".len()..])
        } else {
            return None;
        };
        let rest = rest.trim_start_matches(':');
        let (fields, error) = match rest.find("error=") {
            Some(i) => (
                &rest[..i],
                Some(rest[i + "error=".len()..].trim().to_string()),
            ),
            None => (rest, None),
        };
        let mut out = Self {
            ok,
            kind: String::new(),
            ops: None,
            elements: None,
            services: None,
            duration_ms: None,
            error,
            line: line.to_string(),
        };
        for token in fields.split_whitespace() {
            let Some((key, value)) = token.split_once('=') else {
                continue;
            };
            let value = value.trim_matches(|c| c == '"' || c == ',');
            match key {
                "kind" => out.kind = value.to_string(),
                "ops" => out.ops = value.parse().ok(),
                "elements" => out.elements = value.parse().ok(),
                "services" => out.services = value.parse().ok(),
                "duration_ms" => out.duration_ms = value.parse().ok(),
                _ => {}
            }
        }
        Some(out)
    }
}

/// Removes ANSI escape sequences (colours) from a log.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How often the log is polled.
const LOG_POLL: Duration = Duration::from_millis(25);

/// `nftproxy run` in a network namespace, stdout and stderr going to a log file that can be read
/// while it runs. Killed (SIGKILL) on drop.
pub struct Daemon {
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
    args: Vec<String>,
    started: Instant,
}

impl Daemon {
    /// Starts `nftproxy ARGS` inside `ns`, logging to a new file in `log_dir`. The environment is
    /// inherited (so `NFTPROXY_LOG=debug` passes through), with `NO_COLOR=1`.
    pub fn spawn(ns: &Netns, args: &[&str], log_dir: &Path) -> Self {
        Self::spawn_env(ns, args, log_dir, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_env(ns: &Netns, args: &[&str], log_dir: &Path, env: &[(&str, &str)]) -> Self {
        let log = log_dir.join(format!(
            "nftproxy-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let file = File::create(&log).expect("create the daemon's log file");
        let err = file.try_clone().expect("dup the log file");
        let bin = nftproxy_bin();
        // `ip netns exec` execs the command: the child's pid is nftproxy's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&bin)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {args:?}: {e}", bin.display()));
        Self {
            child,
            status: None,
            log,
            args: args.iter().map(|s| s.to_string()).collect(),
            started: Instant::now(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When it was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Everything it logged so far (colours removed).
    pub fn log(&self) -> String {
        strip_ansi(&lossy(&fs::read(&self.log).unwrap_or_default()))
    }

    /// The log's lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log().lines().map(str::to_string).collect()
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// Its sync lines so far, in order.
    pub fn sync_lines(&self) -> Vec<SyncLine> {
        self.log().lines().filter_map(SyncLine::parse).collect()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// True while it runs.
    pub fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Waits until `f` finds something in the log (given the log's lines; it sees the final log
    /// if the daemon exits). `None` after `timeout`, or once the daemon has exited and the final
    /// log has nothing.
    pub fn try_wait_for<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = self.exited().is_some();
            if let Some(v) = f(&self.lines()) {
                return Some(v);
            }
            if gone || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(LOG_POLL);
        }
    }

    /// Waits for a log line for which `pred` holds and returns it; panics with the log's tail after
    /// `timeout` or if the daemon exits first. `what` names it in the message.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let found = self.try_wait_for(timeout, |lines| lines.iter().find(|l| pred(l)).cloned());
        match found {
            Some(line) => line,
            None => panic!(
                "{}",
                self.failure(&format!("no log line {what} within {timeout:?}"))
            ),
        }
    }

    /// Waits for a log line containing `pattern`; see [`wait_for_line`](Self::wait_for_line).
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> String {
        self.wait_for_line(&format!("containing {pattern:?}"), timeout, |l| {
            l.contains(pattern)
        })
    }

    /// Waits until there are more than `seen` sync lines and returns sync line number `seen`
    /// (0-based: `wait_for_sync(0, ..)` is the first sync). Panics after `timeout` or if the daemon
    /// exits first.
    pub fn wait_for_sync(&mut self, seen: usize, timeout: Duration) -> SyncLine {
        let found = self.try_wait_for(timeout, |lines| {
            lines.iter().filter_map(|l| SyncLine::parse(l)).nth(seen)
        });
        match found {
            Some(sync) => sync,
            None => panic!(
                "{}",
                self.failure(&format!("no sync line #{} within {timeout:?}", seen + 1))
            ),
        }
    }

    /// Waits for the first sync and panics unless it succeeded; returns it.
    pub fn wait_for_first_sync(&mut self, timeout: Duration) -> SyncLine {
        let sync = self.wait_for_sync(0, timeout);
        assert!(
            sync.ok,
            "{}",
            self.failure(&format!("first sync failed: {}", sync.line))
        );
        sync
    }

    /// Sends a signal (`TERM`, `KILL`, ...) unless it has exited.
    pub fn signal(&mut self, name: &str) {
        if self.running() {
            let status = Command::new("kill")
                .args([format!("-{name}"), self.pid().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{name} {} failed", self.pid());
        }
    }

    /// Waits at most `timeout` for it to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, LOG_POLL, || self.exited()).map(|(s, _)| s)
    }

    /// SIGTERM, then waits at most `timeout` for it to exit; panics (showing the log) if it does
    /// not. Returns its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!(
                "{}",
                self.failure(&format!("still running {timeout:?} after SIGTERM"))
            ),
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// A failure message: `what`, the command line, whether it runs, the log's tail.
    pub fn failure(&mut self, what: &str) -> String {
        let state = match self.exited() {
            Some(s) => format!("exited ({s})"),
            None => "running".to_string(),
        };
        format!(
            "{what}\nnftproxy {} [{state}, started {:?} ago]\n----- log tail\n{}\n-----",
            self.args.join(" "),
            self.started.elapsed(),
            self.tail(40)
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.failure("nftproxy run at the failure:"));
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// An HTTP answer as `curl -i` received it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte (as UTF-8, lossy).
    pub body: String,
}

impl HttpResponse {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an HTTP request got no answer: curl's exit code (7: connection refused, 28: timed out)
/// and what it printed.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// curl's exit code.
    pub code: i32,
    /// curl's error message.
    pub message: String,
}

impl HttpError {
    /// The connection was refused (nothing listens).
    pub fn refused(&self) -> bool {
        self.code == 7
    }
}

/// One HTTP/1.1 request with curl from inside `ns` (`method` `GET`, `POST`, ...), at most
/// `timeout_s` seconds.
pub fn http(
    ns: &Netns,
    method: &str,
    url: &str,
    timeout_s: u32,
) -> Result<HttpResponse, HttpError> {
    let timeout = timeout_s.to_string();
    let out = ns.run(&[
        "curl",
        "-sS",
        "-i",
        "--http1.1",
        "--max-time",
        &timeout,
        "-X",
        method,
        url,
    ]);
    if !out.status.success() {
        return Err(HttpError {
            code: out.status.code().unwrap_or(-1),
            message: lossy(&out.stderr).trim().to_string(),
        });
    }
    let raw = lossy(&out.stdout);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sync_lines() {
        let done = SyncLine::parse(
            "2026-01-01T00:00:00Z  INFO nftproxy_bin::run: sync done: kind=full ops=0 elements=0 \
             services=3 duration_ms=4.2",
        )
        .unwrap();
        assert!(done.ok);
        assert_eq!(done.kind, "full");
        assert_eq!(done.ops, Some(0));
        assert_eq!(done.services, Some(3));
        assert_eq!(done.duration_ms, Some(4.2));
        let failed = SyncLine::parse(
            "WARN x: sync failed: kind=partial ops=5 services=1 duration_ms=1.0 error=\"nft: no\"",
        )
        .unwrap();
        assert!(!failed.ok);
        assert_eq!(failed.kind, "partial");
        assert_eq!(failed.error.as_deref(), Some("\"nft: no\""));
        assert!(SyncLine::parse("initial lists complete").is_none());
        assert_eq!(strip_ansi("\u{1b}[32m INFO\u{1b}[0m x"), " INFO x");
    }
}
