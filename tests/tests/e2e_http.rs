//! End to end, HTTP side: the real `nftproxy run` against a real kube-apiserver
//! (`scripts/realapi`), checked through what it serves as kube-proxy does: the health server
//! (`/healthz`, `/livez`), healthCheckNodePort servers, the metrics server (`/metrics`,
//! `/healthz`, `/proxyMode`, `/configz`), and the `deploy/` manifests (validated by the API server,
//! and the ClusterRole shown to be enough and each of its rules needed).
//!
//! Requests are made with curl from inside the node namespace (or the external one). Root only,
//! skipped while the API server's binaries are not built (`scripts/realapi build`). Each test has
//! its own topology and API server, so they run in parallel.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nftproxy_tests::netns::Netns;
use nftproxy_tests::realapi::{
    http, poll, service, slice, tcp, Cluster, Daemon, Ep, HttpResponse, SvcPort, User,
};
use nftproxy_tests::topology::{ConnectOpts, Place, Pod, Proto, NODE_IP, POD_PORT};
use nftproxy_tests::{require_realapi, require_root};
use serde_json::{json, Value};

/// Service `web`: ClusterIP, TCP 80.
const WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
/// A LoadBalancer Service with `externalTrafficPolicy: Local`.
const LB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 20);
/// A second one, asking for a healthCheckNodePort that is already taken.
const LB_TAKEN: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 21);

/// The health server (healthzBindAddress, default 0.0.0.0:10256), seen from the node.
const HEALTH: &str = "http://127.0.0.1:10256";
/// The metrics server (metricsBindAddress, default 127.0.0.1:10249), seen from the node.
const METRICS: &str = "http://127.0.0.1:10249";

const FIRST_SYNC: Duration = Duration::from_secs(30);
/// How long a change may take to show (the API server is local; the machine may be loaded).
const CHANGE_BOUND: Duration = Duration::from_secs(5);

const HEALTH_EVENT_REASON: &str = "FailedToStartServiceHealthcheck";

fn echo() -> &'static str {
    env!("CARGO_BIN_EXE_nftproxy-echo")
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn web_ports() -> [SvcPort; 1] {
    [tcp("http", 80, POD_PORT)]
}

fn ep(pod: Pod) -> Ep {
    Ep {
        ip: pod.ip(),
        // pod-c runs "on node-b" (physically here: the endpoint is not local).
        node: if pod == Pod::C { "node-b" } else { "node-a" },
    }
}

fn eps(pods: &[Pod]) -> Vec<Ep> {
    pods.iter().map(|&p| ep(p)).collect()
}

/// The EndpointSlice of `web` with these pods.
fn web_slice(pods: &[Pod]) -> Value {
    slice("web-x7k2p", "web", &web_ports(), &eps(pods))
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local` (so the API server gives it a
/// healthCheckNodePort, or takes the one asked for).
fn lb_service(name: &str, ip: Ipv4Addr, health_check_node_port: Option<u16>) -> Value {
    let mut svc = service(name, ip, &web_ports());
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    if let Some(port) = health_check_node_port {
        svc["spec"]["healthCheckNodePort"] = json!(port);
    }
    svc
}

fn lb_slice(name: &str, service: &str, pods: &[Pod]) -> Value {
    slice(name, service, &web_ports(), &eps(pods))
}

/// A cluster with Service `web` on pod-a and pod-b.
fn cluster() -> Cluster {
    let cluster = Cluster::new(echo());
    cluster.api.apply(&[
        service("web", WEB, &web_ports()),
        web_slice(&[Pod::A, Pod::B]),
    ]);
    cluster
}

/// Starts the daemon and waits for its first sync, which must succeed.
fn start_as(cluster: &Cluster, user: User, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut daemon = cluster.daemon_env(user, extra, env);
    let first = daemon.wait_for_first_sync(FIRST_SYNC);
    eprintln!(
        "first sync {:?} after start: {}",
        daemon.started().elapsed(),
        first.line
    );
    daemon
}

fn start(cluster: &Cluster, extra: &[&str]) -> Daemon {
    start_as(cluster, User::KubeProxy, extra, &[])
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// `count` TCP attempts from `from`; the pods that answered, or `Err(what the client printed)`
/// unless every attempt was answered.
fn try_pods(
    cluster: &Cluster,
    from: Place,
    to: SocketAddr,
    count: u32,
) -> Result<Vec<String>, Vec<String>> {
    let opts = ConnectOpts::count(count).timeout_ms(1000);
    let lines = cluster.topo.connect(from, Proto::Tcp, to, &opts);
    let pods: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let (pod, seen) = l.split_once(' ')?;
            seen.parse::<IpAddr>().ok()?;
            Some(pod.to_string())
        })
        .collect();
    if pods.len() == count as usize {
        Ok(pods)
    } else {
        Err(lines)
    }
}

/// Polls until `f` holds (every 50 ms, at most `timeout`); how long it took, or panics with
/// `what` and the daemon's log.
fn wait_until(
    daemon: &mut Daemon,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> Duration {
    match poll(timeout, Duration::from_millis(50), || f().then_some(())) {
        Some(((), took)) => took,
        None => panic!(
            "{}",
            daemon.failure(&format!("{what}: not within {timeout:?}"))
        ),
    }
}

/// Waits until traffic from the node to `web` reaches `pod`.
fn wait_for_pod(
    cluster: &Cluster,
    daemon: &mut Daemon,
    to: SocketAddr,
    pod: Pod,
    timeout: Duration,
) -> Duration {
    wait_until(
        daemon,
        &format!("{} answers on {to}", pod.name()),
        timeout,
        || {
            try_pods(cluster, Place::Node, to, 6)
                .is_ok_and(|got| got.iter().any(|p| p == pod.name()))
        },
    )
}

/// GET `base``path` from the node namespace; panics (with the daemon's log) if nothing answers.
fn get(cluster: &Cluster, daemon: &mut Daemon, base: &str, path: &str) -> HttpResponse {
    request(&cluster.topo.node, daemon, "GET", &format!("{base}{path}"))
}

fn request(ns: &Netns, daemon: &mut Daemon, method: &str, url: &str) -> HttpResponse {
    match http(ns, method, url, 3) {
        Ok(r) => r,
        Err(e) => panic!(
            "{}",
            daemon.failure(&format!("{method} {url}: no answer: {e:?}"))
        ),
    }
}

/// The object keys of a JSON text in the order they appear (nested ones included).
fn json_keys(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut keys = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '"' {
            i += 1;
            continue;
        }
        let mut s = String::new();
        i += 1;
        while i < chars.len() && chars[i] != '"' {
            if chars[i] == '\\' {
                i += 1;
            }
            if let Some(&c) = chars.get(i) {
                s.push(c);
            }
            i += 1;
        }
        i += 1;
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        if chars.get(j) == Some(&':') {
            keys.push(s);
        }
    }
    keys
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses an RFC 3339 timestamp (`2026-01-02T03:04:05.123456789Z`, `...+01:00`); seconds since
/// the Unix epoch. `None` unless it is one.
fn rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let t = s.get(from..to)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, se) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0.0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
        frac = format!("0.{}", &s[start..i]).parse().ok()?;
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(b[i], b'+' | b'-') && b[i + 3] == b':' => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1, i + 3)? * 3600 + num(i + 4, i + 6)? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
    Some(secs as f64 + frac)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Now as RFC 3339 in whole seconds (rounded down), as the EndpointSlice controller writes
/// `endpoints.kubernetes.io/last-change-trigger-time`.
fn rfc3339_now_seconds() -> String {
    let secs = unix_now() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Checks a health answer's headers: exactly kube-proxy's (`Content-Type: application/json`,
/// `X-Content-Type-Options: nosniff`, plus what every HTTP server adds), and `extra`.
fn check_json_headers(what: &str, r: &HttpResponse, extra: &[&str]) {
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json"),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.header("X-Content-Type-Options"),
        Some("nosniff"),
        "{what}: {r:?}"
    );
    let mut allowed = vec![
        "content-type",
        "x-content-type-options",
        "content-length",
        "date",
    ];
    allowed.extend_from_slice(extra);
    for (name, _) in &r.headers {
        assert!(
            allowed.iter().any(|a| a.eq_ignore_ascii_case(name)),
            "{what}: unexpected header {name}: {:?}",
            r.headers
        );
    }
}

/// A `/healthz` (`livez` false) or `/livez` answer, checked against kube-proxy's format: keys in
/// its order, RFC 3339 timestamps, `currentTime` now, `nodeEligible` only on `/healthz`, the
/// family entry agreeing with the top level. Returns the body parsed.
fn check_health_body(what: &str, r: &HttpResponse, livez: bool) -> Value {
    check_json_headers(what, r, &[]);
    let mut keys = vec![
        "lastUpdated",
        "currentTime",
        "nodeEligible",
        "healthy",
        "status",
        "IPv4",
        "lastUpdated",
        "healthy",
    ];
    if livez {
        keys.retain(|k| *k != "nodeEligible");
    }
    assert_eq!(
        json_keys(&r.body),
        keys,
        "{what}: keys (in order) of {}",
        r.body
    );
    let v: Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", r.body));
    let time = |v: &Value, key: &str| -> f64 {
        let text = v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {key} is not a string: {}", r.body));
        rfc3339(text).unwrap_or_else(|| panic!("{what}: {key} {text:?} is not RFC 3339"))
    };
    let now = unix_now();
    let current = time(&v, "currentTime");
    assert!(
        (current - now).abs() < 5.0,
        "{what}: currentTime {} is not now: {}",
        v["currentTime"],
        r.body
    );
    let last = time(&v, "lastUpdated");
    assert!(
        last <= current + 0.001,
        "{what}: lastUpdated after currentTime: {}",
        r.body
    );
    let family = &v["status"]["IPv4"];
    assert_eq!(time(family, "lastUpdated"), last, "{what}: {}", r.body);
    assert_eq!(family["healthy"], v["healthy"], "{what}: {}", r.body);
    assert!(v["healthy"].is_boolean(), "{what}: {}", r.body);
    assert_eq!(
        v.get("nodeEligible").is_some_and(Value::is_boolean),
        !livez,
        "{what}: {}",
        r.body
    );
    v
}

// ---------------------------------------------------------------------------------------------
// Metrics text

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    /// The value (`+Inf` as infinity).
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Drop an exemplar.
        let line = line.split(" # ").next().unwrap_or(line);
        let (head, value) = match line.find('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => match line.split_once(' ') {
                Some((h, v)) => (h, v.trim()),
                None => continue,
            },
        };
        let value = value.split_whitespace().next().unwrap_or("");
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=') {
                map.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
            }
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// The samples called `name` having (at least) these labels.
fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample called `name` with these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match find(samples, name, labels).as_slice() {
        [one] => Some(one.value),
        _ => None,
    }
}

const V4: (&str, &str) = ("ip_family", "IPv4");

/// The `le` boundaries of a histogram's buckets (IPv4), in order, `+Inf` last.
fn buckets(samples: &[Sample], histogram: &str) -> Vec<f64> {
    find(samples, &format!("{histogram}_bucket"), &[V4])
        .iter()
        .map(|s| {
            let le = s.labels.get("le").map(String::as_str).unwrap_or("?");
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            }
        })
        .collect()
}

fn same_boundaries(got: &[f64], want: &[f64]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g == w) || ((g - w).abs() <= 1e-9 * w.abs()))
}

fn metrics(cluster: &Cluster, daemon: &mut Daemon) -> (HttpResponse, Vec<Sample>) {
    let r = get(cluster, daemon, METRICS, "/metrics");
    assert_eq!(r.status, 200, "/metrics: {r:?}");
    let samples = parse_metrics(&r.body);
    (r, samples)
}

// ---------------------------------------------------------------------------------------------
// Helpers for the Kubernetes side

/// A TCP listener held on `ip:port` in a namespace (to make a bind fail); closed on drop.
struct PortHolder(Child);

impl PortHolder {
    fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> Self {
        let script = "import socket,sys\n\
                      s=socket.socket()\n\
                      s.bind((sys.argv[1],int(sys.argv[2])))\n\
                      s.listen()\n\
                      print('ready',flush=True)\n\
                      sys.stdin.read()\n";
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", script])
            .arg(ip.to_string())
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let holder = Self(child);
        assert_eq!(line.trim(), "ready", "could not listen on {ip}:{port}");
        holder
    }
}

impl Drop for PortHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The events.k8s.io Events with reason FailedToStartServiceHealthcheck about Service `service`.
fn health_events(cluster: &Cluster, service: &str) -> Vec<Value> {
    let out = cluster
        .api
        .kubectl_ok(&["get", "events.events.k8s.io", "-A", "-o", "json"], None);
    let list: Value = serde_json::from_str(&out).expect("kubectl get events: JSON");
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["reason"] == HEALTH_EVENT_REASON && e["regarding"]["name"] == service)
        .collect()
}

/// Waits for the Event about a healthCheckNodePort of `service` that could not be bound, and
/// checks it is kube-proxy's.
fn wait_for_health_event(
    cluster: &Cluster,
    daemon: &mut Daemon,
    service: &str,
    port: u16,
) -> Value {
    let found = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        health_events(cluster, service).into_iter().next()
    });
    let Some((event, took)) = found else {
        let all = cluster
            .api
            .kubectl(&["get", "events.events.k8s.io", "-A", "-o", "json"], None);
        panic!(
            "{}",
            daemon.failure(&format!(
                "no {HEALTH_EVENT_REASON} Event for {service} within 10 s; events: {}",
                String::from_utf8_lossy(&all.stdout)
            ))
        );
    };
    eprintln!("Event {took:?} later: {event}");
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["action"], "Listen", "{event}");
    assert_eq!(event["regarding"]["kind"], "Service", "{event}");
    assert_eq!(event["regarding"]["namespace"], "default", "{event}");
    assert_eq!(event["metadata"]["namespace"], "default", "{event}");
    let note = event["note"].as_str().unwrap_or_default();
    let prefix =
        format!("node node-a failed to start healthcheck \"default/{service}\" on port {port}: ");
    assert!(
        note.starts_with(&prefix),
        "note {note:?} should start with {prefix:?}"
    );
    assert!(
        note.len() > prefix.len(),
        "note without the error: {note:?}"
    );
    event
}

/// A healthCheckNodePort answer: kube-proxy's headers and body.
fn check_service_health(what: &str, r: &HttpResponse, service: &str, local: usize, code: u16) {
    assert_eq!(r.status, code, "{what}: {r:?}");
    check_json_headers(what, r, &["X-Load-Balancing-Endpoint-Weight"]);
    assert_eq!(
        r.header("X-Load-Balancing-Endpoint-Weight"),
        Some(local.to_string().as_str()),
        "{what}: {r:?}"
    );
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"{service}\"\n\t}},\n\t\"localEndpoints\": {local},\n\t\"serviceProxyHealthy\": true\n}}"
    );
    assert_eq!(r.body, body, "{what}: body");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn health_endpoints_answer_as_kube_proxy_and_follow_the_node() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let mut daemon = start(&cluster, &[]);

    for (path, livez) in [("/healthz", false), ("/livez", true)] {
        let r = get(&cluster, &mut daemon, HEALTH, path);
        eprintln!("{path}: {} {:?}\n  {}", r.status, r.headers, r.body);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let v = check_health_body(path, &r, livez);
        assert_eq!(v["healthy"], true, "{path}: {}", r.body);
        if !livez {
            assert_eq!(v["nodeEligible"], true, "{path}: {}", r.body);
        }
        // Healthy: lastUpdated reads "now", as kube-proxy's.
        assert_eq!(v["lastUpdated"], v["currentTime"], "{path}: {}", r.body);
        // Any method.
        let post = request(
            &cluster.topo.node,
            &mut daemon,
            "POST",
            &format!("{HEALTH}{path}"),
        );
        assert_eq!(post.status, 200, "POST {path}: {post:?}");
        check_health_body(&format!("POST {path}"), &post, livez);
    }
    // Also on the node's address (bound to 0.0.0.0), from outside.
    let outside = request(
        &cluster.topo.external,
        &mut daemon,
        "GET",
        &format!("http://{NODE_IP}:10256/livez"),
    );
    assert_eq!(
        outside.status, 200,
        "/livez from the external client: {outside:?}"
    );

    // The cluster autoscaler marks the node for deletion: not eligible, but alive.
    cluster.api.kubectl_ok(
        &[
            "taint",
            "nodes",
            "node-a",
            "ToBeDeletedByClusterAutoscaler=1700000000:NoSchedule",
        ],
        None,
    );
    let took = wait_until(
        &mut daemon,
        "/healthz 503 after the taint",
        CHANGE_BOUND,
        || {
            http(&cluster.topo.node, "GET", &format!("{HEALTH}/healthz"), 3)
                .is_ok_and(|r| r.status == 503)
        },
    );
    eprintln!("/healthz 503 {took:?} after the taint");
    let r = get(&cluster, &mut daemon, HEALTH, "/healthz");
    assert_eq!(r.status, 503, "{r:?}");
    let v = check_health_body("/healthz while tainted", &r, false);
    assert_eq!(v["nodeEligible"], false, "{}", r.body);
    assert_eq!(v["healthy"], true, "{}", r.body);
    let r = get(&cluster, &mut daemon, HEALTH, "/livez");
    assert_eq!(r.status, 200, "/livez while tainted: {r:?}");
    let v = check_health_body("/livez while tainted", &r, true);
    assert_eq!(v["healthy"], true, "{}", r.body);

    cluster.api.kubectl_ok(
        &[
            "taint",
            "nodes",
            "node-a",
            "ToBeDeletedByClusterAutoscaler:NoSchedule-",
        ],
        None,
    );
    let took = wait_until(
        &mut daemon,
        "/healthz 200 after the taint is removed",
        CHANGE_BOUND,
        || {
            http(&cluster.topo.node, "GET", &format!("{HEALTH}/healthz"), 3)
                .is_ok_and(|r| r.status == 200)
        },
    );
    eprintln!("/healthz 200 {took:?} after the taint went");
    let r = get(&cluster, &mut daemon, HEALTH, "/healthz");
    let v = check_health_body("/healthz after the taint", &r, false);
    assert_eq!(
        (v["nodeEligible"].clone(), v["healthy"].clone()),
        (json!(true), json!(true)),
        "{}",
        r.body
    );
    let syncs = daemon.sync_lines();
    assert!(syncs.iter().all(|s| s.ok), "a sync failed: {syncs:#?}");
}

/// An nft that refuses every transaction (`-f -` without `--check`) while `flag` exists; reads
/// and checks go to the real nft.
fn failing_nft(dir: &Path, flag: &Path) -> PathBuf {
    let real = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("nft");
    let script = format!(
        "#!/bin/sh\n\
         if [ -e '{flag}' ]; then\n\
         \tbatch=0; check=0\n\
         \tfor a in \"$@\"; do\n\
         \t\tcase \"$a\" in -f) batch=1 ;; -c|--check) check=1 ;; esac\n\
         \tdone\n\
         \tif [ $batch = 1 ] && [ $check = 0 ]; then\n\
         \t\tcat >/dev/null\n\
         \t\techo 'Error: injected failure (e2e_http)' >&2\n\
         \t\texit 1\n\
         \tfi\n\
         fi\n\
         exec {real} \"$@\"\n",
        flag = flag.display()
    );
    let path = dir.join("nft-failing");
    std::fs::write(&path, script).expect("write the nft wrapper");
    let ok = Command::new("chmod")
        .arg("755")
        .arg(&path)
        .status()
        .expect("chmod");
    assert!(ok.success());
    path
}

#[test]
fn failed_syncs_make_the_proxy_unhealthy_until_a_retry_succeeds() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let flag = cluster.api.dir().join("nft-fail");
    let wrapper = failing_nft(cluster.api.dir(), &flag);
    let wrapper_s = wrapper.to_str().expect("utf-8 path").to_string();
    const SYNC_PERIOD: Duration = Duration::from_secs(2);
    // The failure is injected through nft, so the daemon must send its batches through nft.
    let mut daemon = start_as(
        &cluster,
        User::KubeProxy,
        &["--sync-period", "2s", "--backend", "json"],
        &[("NFTPROXY_NFT", &wrapper_s)],
    );
    let web = addr(WEB, 80);
    for path in ["/healthz", "/livez"] {
        let r = get(&cluster, &mut daemon, HEALTH, path);
        assert_eq!(r.status, 200, "{path} before: {r:?}");
    }
    let synced = daemon.sync_lines().len();

    // Armed: the change cannot be applied.
    std::fs::write(&flag, "").expect("arm the failure");
    let t0 = Instant::now();
    let t0_wall = unix_now();
    cluster.api.apply(&[web_slice(&[Pod::A, Pod::B, Pod::C])]);
    let failed = daemon.wait_for_sync(synced, Duration::from_secs(10));
    let first_failure = t0.elapsed();
    eprintln!("{first_failure:?} after the change: {}", failed.line);
    assert!(
        !failed.ok,
        "{}",
        daemon.failure(&format!("the sync did not fail: {}", failed.line))
    );
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("injected failure")),
        "the error names nft's: {}",
        failed.line
    );

    // Healthy until the change has waited 2 × syncPeriod, unhealthy from then on.
    let bound = SYNC_PERIOD * 2 + Duration::from_secs(3);
    let polling_from = t0.elapsed();
    let mut last_ok: Option<Duration> = None;
    let found = poll(
        bound.saturating_sub(polling_from),
        Duration::from_millis(50),
        || {
            let at = t0.elapsed();
            let r = http(&cluster.topo.node, "GET", &format!("{HEALTH}/livez"), 3).ok()?;
            if r.status == 200 {
                last_ok = Some(at);
            }
            (r.status == 503).then(|| t0.elapsed())
        },
    );
    let Some((unhealthy, _)) = found else {
        panic!(
            "{}",
            daemon.failure(&format!("/livez not 503 within {bound:?} of the change"))
        );
    };
    eprintln!(
        "/livez 503 {unhealthy:?} after the change (last 200 asked {last_ok:?} after it, polling from {polling_from:?})"
    );
    let early = SYNC_PERIOD * 2 - Duration::from_millis(500);
    if polling_from < early {
        assert!(
            last_ok.is_some_and(|t| t >= early),
            "unhealthy sooner than 2 × syncPeriod after the change: last 200 at {last_ok:?}"
        );
    }
    for (path, livez) in [("/livez", true), ("/healthz", false)] {
        let r = get(&cluster, &mut daemon, HEALTH, path);
        eprintln!("{path}: {} {}", r.status, r.body);
        assert_eq!(r.status, 503, "{path} while syncs fail: {r:?}");
        let v = check_health_body(&format!("{path} while syncs fail"), &r, livez);
        assert_eq!(v["healthy"], false, "{}", r.body);
        assert_eq!(v["status"]["IPv4"]["healthy"], false, "{}", r.body);
        if !livez {
            assert_eq!(v["nodeEligible"], true, "{}", r.body);
        }
        // lastUpdated is the last successful sync: before the change.
        let last = rfc3339(v["lastUpdated"].as_str().unwrap_or_default()).unwrap_or(f64::NAN);
        assert!(
            last <= t0_wall + 0.5,
            "lastUpdated {} is not before the change: {}",
            v["lastUpdated"],
            r.body
        );
    }
    let (_, samples) = metrics(&cluster, &mut daemon);
    let failures = value(
        &samples,
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        &[V4],
    );
    eprintln!("nftables_sync_failures_total{{ip_family=\"IPv4\"}} = {failures:?}");
    assert!(
        failures.is_some_and(|n| n >= 1.0),
        "sync failures metric: {failures:?}"
    );
    assert!(
        daemon.lines().iter().any(|l| l.contains("sync failed")),
        "no `sync failed` line"
    );
    let table = cluster
        .topo
        .node
        .ok(&["nft", "list", "table", "ip", "nftproxy"]);
    assert!(
        !table.contains("10.0.1.7"),
        "pod-c is in the table although every sync failed"
    );

    // Disarmed: the next retry (full) succeeds, health comes back, the change is in.
    std::fs::remove_file(&flag).expect("disarm");
    let t1 = Instant::now();
    let ok = daemon
        .try_wait_for(SYNC_PERIOD + Duration::from_secs(5), |lines| {
            lines
                .iter()
                .filter_map(|l| nftproxy_tests::realapi::SyncLine::parse(l))
                .skip(synced)
                .find(|s| s.ok)
        })
        .unwrap_or_else(|| panic!("{}", daemon.failure("no successful sync after disarming")));
    eprintln!("{:?} after disarming: {}", t1.elapsed(), ok.line);
    assert_eq!(
        ok.kind, "full",
        "the sync after failures is full: {}",
        ok.line
    );
    let failures_seen = daemon
        .sync_lines()
        .iter()
        .skip(synced)
        .filter(|s| !s.ok)
        .count();
    eprintln!("{failures_seen} failed syncs while armed");
    wait_until(
        &mut daemon,
        "/livez and /healthz 200 after the retry",
        Duration::from_secs(2),
        || {
            ["/livez", "/healthz"].iter().all(|p| {
                http(&cluster.topo.node, "GET", &format!("{HEALTH}{p}"), 3)
                    .is_ok_and(|r| r.status == 200)
            })
        },
    );
    let r = get(&cluster, &mut daemon, HEALTH, "/healthz");
    let v = check_health_body("/healthz after the retry", &r, false);
    assert_eq!(v["healthy"], true, "{}", r.body);
    let took = wait_for_pod(&cluster, &mut daemon, web, Pod::C, CHANGE_BOUND);
    eprintln!("pod-c answers {took:?} after the health came back");
    let table = cluster
        .topo
        .node
        .ok(&["nft", "list", "table", "ip", "nftproxy"]);
    assert!(
        table.contains("10.0.1.7"),
        "pod-c missing from the table:\n{table}"
    );
    assert!(daemon.running(), "{}", daemon.failure("exited"));
}

#[test]
fn health_check_node_port_follows_local_endpoints_and_reports_bind_failures() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    cluster.api.apply(&[
        lb_service("lb", LB, None),
        lb_slice("lb-4m7qz", "lb", &[Pod::A, Pod::B, Pod::C]),
    ]);
    let spec: Value = serde_json::from_str(&cluster.api.kubectl_ok(
        &["get", "service", "-n", "default", "lb", "-o", "json"],
        None,
    ))
    .expect("service JSON");
    let port = spec["spec"]["healthCheckNodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no healthCheckNodePort allocated: {spec}"));
    eprintln!("healthCheckNodePort {port}");
    let mut daemon = start(&cluster, &[]);
    let node = &cluster.topo.node;
    let url = format!("http://{NODE_IP}:{port}/");

    let took = wait_until(
        &mut daemon,
        "the healthCheckNodePort answers",
        CHANGE_BOUND,
        || http(node, "GET", &url, 2).is_ok(),
    );
    eprintln!("healthCheckNodePort answers {took:?} after the first sync");
    let r = request(node, &mut daemon, "GET", &url);
    eprintln!("{} {:?}\n{}", r.status, r.headers, r.body);
    check_service_health("two local endpoints", &r, "lb", 2, 200);
    // Any path, from outside too (where load balancers ask from).
    let r = request(
        &cluster.topo.external,
        &mut daemon,
        "GET",
        &format!("http://{NODE_IP}:{port}/any/path"),
    );
    check_service_health("from outside, another path", &r, "lb", 2, 200);
    // Only on the node's address (nodePortAddresses: the primary IP).
    match http(node, "GET", &format!("http://127.0.0.1:{port}/"), 2) {
        Err(e) if e.refused() => {}
        other => panic!("127.0.0.1:{port} should be closed: {other:?}"),
    }

    // pod-b goes: weight 1.
    cluster
        .api
        .apply(&[lb_slice("lb-4m7qz", "lb", &[Pod::A, Pod::C])]);
    let took = wait_until(
        &mut daemon,
        "weight 1 once pod-b went",
        CHANGE_BOUND,
        || {
            http(node, "GET", &url, 2)
                .is_ok_and(|r| r.header("X-Load-Balancing-Endpoint-Weight") == Some("1"))
        },
    );
    eprintln!("weight 1 {took:?} after pod-b went");
    check_service_health(
        "one local endpoint",
        &request(node, &mut daemon, "GET", &url),
        "lb",
        1,
        200,
    );

    // The last local endpoint goes: 503, 0 (pod-c on node-b does not count).
    cluster.api.apply(&[lb_slice("lb-4m7qz", "lb", &[Pod::C])]);
    let took = wait_until(
        &mut daemon,
        "503 once no endpoint is local",
        CHANGE_BOUND,
        || http(node, "GET", &url, 2).is_ok_and(|r| r.status == 503),
    );
    eprintln!("503 {took:?} after pod-a went");
    let r = request(node, &mut daemon, "GET", &url);
    eprintln!("{} {:?}\n{}", r.status, r.headers, r.body);
    check_service_health("no local endpoint", &r, "lb", 0, 503);

    // The Service goes: the port closes.
    cluster.api.delete("service", "lb");
    cluster.api.delete("endpointslice", "lb-4m7qz");
    let took = wait_until(
        &mut daemon,
        "the port closed after the Service went",
        CHANGE_BOUND,
        || matches!(http(node, "GET", &url, 2), Err(e) if e.refused()),
    );
    eprintln!("port {port} closed {took:?} after the delete");

    // A healthCheckNodePort someone else holds: a warning, an Event, and the proxy carries on.
    const TAKEN: u16 = 31888;
    let _holder = PortHolder::start(node, NODE_IP, TAKEN);
    cluster.api.apply(&[
        lb_service("lb-taken", LB_TAKEN, Some(TAKEN)),
        lb_slice("lb-taken-9xq2w", "lb-taken", &[Pod::A]),
    ]);
    let line = daemon.wait_for_log(
        &format!("failed to start healthcheck \"default/lb-taken\" on port {TAKEN}"),
        Duration::from_secs(10),
    );
    eprintln!("{line}");
    assert!(line.contains("WARN"), "a warning: {line}");
    wait_for_health_event(&cluster, &mut daemon, "lb-taken", TAKEN);
    assert!(
        daemon.running(),
        "{}",
        daemon.failure("exited after the bind failure")
    );
    assert!(
        !daemon.log().contains("could not record an event"),
        "{}",
        daemon.failure("the Event was not recorded")
    );
    // Other services work, and later changes still reach the kernel.
    let web = addr(WEB, 80);
    try_pods(&cluster, Place::Pod(Pod::C), web, 5)
        .unwrap_or_else(|l| panic!("web after the bind failure: {l:?}"));
    try_pods(&cluster, Place::Node, addr(LB_TAKEN, 80), 3)
        .unwrap_or_else(|l| panic!("lb-taken's ClusterIP: {l:?}"));
    cluster.api.apply(&[web_slice(&[Pod::A, Pod::B, Pod::C])]);
    let took = wait_for_pod(&cluster, &mut daemon, web, Pod::C, CHANGE_BOUND);
    eprintln!("a later change arrived {took:?} after it was made");
    let syncs = daemon.sync_lines();
    assert!(syncs.iter().all(|s| s.ok), "a sync failed: {syncs:#?}");
    // The port is still the other listener's: the daemon did not take it over.
    if let Ok(r) = http(node, "GET", &format!("http://{NODE_IP}:{TAKEN}/"), 1) {
        panic!("port {TAKEN} answered HTTP although python holds it: {r:?}");
    }
}

#[test]
fn metrics_are_kube_proxys_and_move_with_syncs() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let mut daemon = start(&cluster, &[]);

    // The metrics server's other paths.
    let r = get(&cluster, &mut daemon, METRICS, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");
    let r = get(&cluster, &mut daemon, METRICS, "/proxyMode");
    assert_eq!((r.status, r.body.as_str()), (200, "nftables"), "{r:?}");
    let r = get(&cluster, &mut daemon, METRICS, "/configz");
    assert_eq!(r.status, 200, "{r:?}");
    let configz: Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/configz: {e}: {}", r.body));
    eprintln!("/configz: {configz}");
    assert_eq!(
        configz["kubeproxy.config.k8s.io"]["hostnameOverride"], "node-a",
        "{configz}"
    );
    assert_eq!(configz.as_object().map(|o| o.len()), Some(1), "{configz}");

    // Health requests, counted by code.
    const HEALTHZ: usize = 3;
    const LIVEZ: usize = 2;
    for _ in 0..HEALTHZ {
        assert_eq!(get(&cluster, &mut daemon, HEALTH, "/healthz").status, 200);
    }
    for _ in 0..LIVEZ {
        assert_eq!(get(&cluster, &mut daemon, HEALTH, "/livez").status, 200);
    }

    let (r, before) = metrics(&cluster, &mut daemon);
    assert!(
        r.header("Content-Type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    assert!(
        r.body.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let has = |samples: &[Sample], name: &str, labels: &[(&str, &str)]| {
        !find(samples, name, labels).is_empty()
    };
    let code = [("code", "200")];
    assert_eq!(
        value(&before, "kubeproxy_proxy_healthz_total", &code),
        Some(HEALTHZ as f64),
        "healthz count"
    );
    assert_eq!(
        value(&before, "kubeproxy_proxy_livez_total", &code),
        Some(LIVEZ as f64),
        "livez count"
    );

    // Two endpoint changes, each its own (partial) sync; the first carries the EndpointSlice
    // controller's trigger time.
    let synced = daemon.sync_lines().len();
    let mut annotated = web_slice(&[Pod::A, Pod::B, Pod::C]);
    annotated["metadata"]["annotations"] =
        json!({ "endpoints.kubernetes.io/last-change-trigger-time": rfc3339_now_seconds() });
    cluster.api.apply(&[annotated]);
    let s1 = daemon.wait_for_sync(synced, CHANGE_BOUND);
    cluster.api.apply(&[web_slice(&[Pod::A, Pod::B])]);
    let s2 = daemon.wait_for_sync(synced + 1, CHANGE_BOUND);
    eprintln!("  {}\n  {}", s1.line, s2.line);
    assert!(
        s1.ok && s2.ok && s1.kind == "partial" && s2.kind == "partial",
        "{s1:?} {s2:?}"
    );

    let count = |s: &[Sample], h: &str| value(s, &format!("{h}_count"), &[V4]).unwrap_or(0.0);
    let total = "kubeproxy_sync_proxy_rules_duration_seconds";
    let full = "kubeproxy_sync_full_proxy_rules_duration_seconds";
    let partial = "kubeproxy_sync_partial_proxy_rules_duration_seconds";
    let netprog = "kubeproxy_network_programming_duration_seconds";
    // The metrics are written right after the sync line: allow a moment.
    let fetched = poll(Duration::from_secs(2), Duration::from_millis(50), || {
        let r = http(&cluster.topo.node, "GET", &format!("{METRICS}/metrics"), 3).ok()?;
        let s = parse_metrics(&r.body);
        (count(&s, partial) >= count(&before, partial) + 2.0).then_some(s)
    });
    let Some((after, _)) = fetched else {
        panic!(
            "{}",
            daemon.failure("the metrics do not count both syncs within 2 s")
        );
    };

    // Every metric, with its labels.
    for name in [total, full, partial, netprog] {
        for suffix in ["_bucket", "_count", "_sum"] {
            assert!(
                has(&after, &format!("{name}{suffix}"), &[V4]),
                "{name}{suffix}{{ip_family=\"IPv4\"}} missing"
            );
        }
    }
    for name in [
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        "nftproxy_ruleset_elements",
    ] {
        assert!(
            has(&after, name, &[V4]),
            "{name}{{ip_family=\"IPv4\"}} missing"
        );
    }
    for name in [
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "kubeproxy_sync_proxy_rules_service_changes_pending",
        "nftproxy_last_transaction_operations",
    ] {
        assert!(has(&after, name, &[]), "{name} missing");
    }
    for policy in ["internal", "external"] {
        assert!(
            has(
                &after,
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                &[V4, ("traffic_policy", policy)]
            ),
            "no_local_endpoints_total{{ip_family=\"IPv4\",traffic_policy=\"{policy}\"}} missing"
        );
    }
    // kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family} appears with the first
    // failure (kube-proxy's CounterVec too): checked by the sync failure test.
    let text = get(&cluster, &mut daemon, METRICS, "/metrics").body;
    assert!(
        has(&after, "kubeproxy_proxy_healthz_total", &code)
            && has(&after, "kubeproxy_proxy_livez_total", &code)
    );

    // kube-proxy's bucket boundaries.
    let inf = f64::INFINITY;
    let mut sync_le: Vec<f64> = (0..15).map(|k| 0.001 * f64::powi(2.0, k)).collect();
    sync_le.push(inf);
    for name in [total, full, partial] {
        let got = buckets(&after, name);
        assert!(
            same_boundaries(&got, &sync_le),
            "{name} buckets {got:?}, want {sync_le:?}"
        );
    }
    let bucket_text: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{total}_bucket")))
        .collect();
    eprintln!(
        "{} ... {}",
        bucket_text.first().unwrap_or(&""),
        bucket_text.get(14).unwrap_or(&"")
    );
    let mut np_le = vec![0.25, 0.5];
    np_le.extend((1..=59).map(f64::from));
    np_le.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    np_le.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    np_le.push(inf);
    let got = buckets(&after, netprog);
    assert!(
        same_boundaries(&got, &np_le),
        "{netprog} buckets {got:?}, want {np_le:?}"
    );

    // What moved.
    let v = |s: &[Sample], name: &str, labels: &[(&str, &str)]| {
        value(s, name, labels).unwrap_or(f64::NAN)
    };
    let delta =
        |name: &str, labels: &[(&str, &str)]| v(&after, name, labels) - v(&before, name, labels);
    assert_eq!(
        delta("kubeproxy_sync_proxy_rules_endpoint_changes_total", &[]),
        2.0,
        "endpoint changes"
    );
    assert_eq!(
        delta("kubeproxy_sync_proxy_rules_service_changes_total", &[]),
        0.0,
        "service changes"
    );
    assert_eq!(
        v(
            &after,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            &[]
        ),
        0.0
    );
    assert_eq!(
        v(
            &after,
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            &[]
        ),
        0.0
    );
    assert_eq!(
        count(&after, partial) - count(&before, partial),
        2.0,
        "partial syncs"
    );
    assert_eq!(
        count(&after, full) - count(&before, full),
        0.0,
        "full syncs"
    );
    assert_eq!(count(&after, total) - count(&before, total), 2.0, "syncs");
    assert!(count(&after, full) >= 1.0, "the first sync was full");
    let last = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
    assert!(
        delta(last, &[V4]) > 0.0,
        "{last} did not move: {} -> {}",
        v(&before, last, &[V4]),
        v(&after, last, &[V4])
    );
    assert!(
        (v(&after, last, &[V4]) - unix_now()).abs() < 10.0,
        "{last} is not a recent Unix time"
    );
    let queued = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds";
    assert!(delta(queued, &[V4]) > 0.0, "{queued} did not move");
    assert_eq!(
        count(&after, netprog) - count(&before, netprog),
        1.0,
        "network programming observations"
    );
    let np_sum = v(&after, &format!("{netprog}_sum"), &[V4]);
    assert!(
        (0.0..10.0).contains(&np_sum),
        "network programming latency {np_sum} s"
    );
    assert!(v(&after, "nftproxy_last_transaction_operations", &[]) > 0.0);
    assert!(v(&after, "nftproxy_ruleset_elements", &[V4]) > 0.0);
    // Counting is exact: metrics requests are not health requests.
    assert_eq!(
        value(&after, "kubeproxy_proxy_healthz_total", &code),
        Some(HEALTHZ as f64)
    );
    assert_eq!(
        value(&after, "kubeproxy_proxy_livez_total", &code),
        Some(LIVEZ as f64)
    );
    assert!(
        find(&after, "kubeproxy_proxy_healthz_total", &[("code", "503")])
            .iter()
            .all(|s| s.value == 0.0)
    );
}

/// A log line reporting a permission error (`forbidden`, a 403), not a number that happens to
/// contain 403.
fn is_denial(line: &str) -> bool {
    line.to_ascii_lowercase().contains("forbidden")
        || line.contains("(403)")
        || line.contains("code: 403")
        || line.contains(" 403 ")
}

/// `kubectl auth can-i VERB RESOURCE --as nftproxy-node` (`resource` as `name.group`; events in
/// namespace default, everything else cluster-wide).
fn can_i(cluster: &Cluster, verb: &str, resource: &str) -> bool {
    let scope = if resource.starts_with("events.") {
        "--namespace=default"
    } else {
        "--all-namespaces"
    };
    let out = cluster.api.kubectl(
        &[
            "auth",
            "can-i",
            verb,
            resource,
            scope,
            "--as",
            "nftproxy-node",
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// `resource.group` of a rule's resource (the core group has no suffix).
fn qualified(rule: &Value, resource: &str) -> String {
    match rule["apiGroups"][0].as_str().unwrap_or_default() {
        "" => resource.to_string(),
        group => format!("{resource}.{group}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until nftproxy-node may do exactly what `rules` allow of `all` (the role's full rules):
/// RBAC changes reach the authorizer through its informers, a moment after the write.
fn wait_for_rights(cluster: &Cluster, all: &[Value], rules: &[Value]) {
    let wanted: Vec<(String, String, bool)> = all
        .iter()
        .flat_map(|rule| {
            let allowed = rules.contains(rule);
            let verb = strings(&rule["verbs"])[0].clone();
            strings(&rule["resources"])
                .into_iter()
                .map(move |r| (verb.clone(), qualified(rule, &r), allowed))
                .collect::<Vec<_>>()
        })
        .collect();
    let ok = poll(Duration::from_secs(15), Duration::from_millis(100), || {
        wanted
            .iter()
            .all(|(verb, resource, allowed)| can_i(cluster, verb, resource) == *allowed)
            .then_some(())
    });
    assert!(ok.is_some(), "the rights did not become {wanted:?}");
}

#[test]
fn deploy_manifests_are_valid_and_their_role_is_enough_and_minimal() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let dir = deploy_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read deploy/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 3, "deploy/ manifests: {files:?}");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();

    // Every manifest, validated and admitted by the real API server (nothing persisted).
    for file in &files {
        let out = cluster
            .api
            .kubectl(&["apply", "--dry-run=server", "-f", &path(file)], None);
        assert!(
            out.status.success(),
            "kubectl apply --dry-run=server -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!(
            "{}: {}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    cluster
        .api
        .kubectl_ok(&["apply", "--dry-run=server", "-f", &path(&dir)], None);
    // The ConfigMap's KubeProxyConfiguration is what the daemon below runs with (as the
    // DaemonSet mounts it; the flags of the test cluster override the node name and pod CIDR).
    let cm: Value = serde_json::from_str(&cluster.api.kubectl_ok(
        &[
            "apply",
            "--dry-run=server",
            "-f",
            &path(&dir.join("configmap.yaml")),
            "-o",
            "json",
        ],
        None,
    ))
    .expect("ConfigMap JSON");
    let config = cm["data"]["config.conf"]
        .as_str()
        .unwrap_or_else(|| panic!("no data.config.conf in {cm}"));
    let config_path = cluster.api.dir().join("config.conf");
    std::fs::write(&config_path, config).expect("write config.conf");
    let config_s = path(&config_path);

    // The role, bound to nftproxy-node (instead of the ServiceAccount, which needs a pod).
    let rbac = path(&dir.join("rbac.yaml"));
    cluster.api.kubectl_ok(&["apply", "-f", &rbac], None);
    cluster.api.kubectl_ok(
        &[
            "create",
            "clusterrolebinding",
            "nftproxy-node",
            "--clusterrole=nftproxy",
            "--user=nftproxy-node",
        ],
        None,
    );
    let role: Value = serde_json::from_str(
        &cluster
            .api
            .kubectl_ok(&["get", "clusterrole", "nftproxy", "-o", "json"], None),
    )
    .expect("ClusterRole JSON");
    let rules = role["rules"].as_array().cloned().unwrap_or_default();
    assert!(!rules.is_empty(), "{role}");
    wait_for_rights(&cluster, &rules, &rules);

    // A healthCheckNodePort someone else holds, so the daemon records an Event.
    const TAKEN: u16 = 31777;
    let _holder = PortHolder::start(&cluster.topo.node, NODE_IP, TAKEN);
    cluster.api.apply(&[
        lb_service("lb-taken", LB_TAKEN, Some(TAKEN)),
        lb_slice("lb-taken-9xq2w", "lb-taken", &[Pod::A]),
    ]);

    let args = ["--config", config_s.as_str()];
    let mut daemon = start_as(&cluster, User::NoRights, &args, &[]);
    let got = try_pods(&cluster, Place::Pod(Pod::C), addr(WEB, 80), 20).unwrap_or_else(|l| {
        panic!(
            "{}",
            daemon.failure(&format!("web with the role's rights: {l:?}"))
        )
    });
    assert!(
        got.iter().any(|p| p == "pod-a") && got.iter().any(|p| p == "pod-b"),
        "{got:?}"
    );
    wait_for_health_event(&cluster, &mut daemon, "lb-taken", TAKEN);
    let denied: Vec<String> = daemon
        .lines()
        .into_iter()
        .filter(|l| is_denial(l))
        .collect();
    assert!(
        denied.is_empty(),
        "{}",
        daemon.failure(&format!("permission errors with the role: {denied:#?}"))
    );
    assert!(
        !daemon.log().contains("could not record an event"),
        "{}",
        daemon.failure("the Event was not recorded")
    );
    daemon.kill();

    // Each rule is needed: without it, a 403 for its resources.
    let t0 = Instant::now();
    for (i, rule) in rules.iter().enumerate() {
        let mut fewer = rules.clone();
        fewer.remove(i);
        let edited = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": "nftproxy" },
            "rules": fewer,
        });
        cluster
            .api
            .kubectl_ok(&["apply", "-f", "-"], Some(&edited.to_string()));
        wait_for_rights(&cluster, &rules, &fewer);
        let mut daemon = cluster.daemon(User::NoRights, &args);
        for resource in strings(&rule["resources"]) {
            let named = format!("resource \"{resource}\"");
            let line = daemon.wait_for_line(
                &format!("with a 403 for {resource} (rule {rule} removed)"),
                Duration::from_secs(20),
                |l| is_denial(l) && l.contains(&named),
            );
            eprintln!("without {rule}:\n  {line}");
        }
        daemon.kill();
    }
    cluster.api.kubectl_ok(&["apply", "-f", &rbac], None);
    eprintln!("{} rules shown needed in {:?}", rules.len(), t0.elapsed());
}
