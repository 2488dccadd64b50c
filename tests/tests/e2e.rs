//! End to end: the real `nftproxy run` against a real kube-apiserver (`scripts/realapi`, started
//! in the topology's node namespace), with real traffic between network namespaces (see
//! `nftproxy_tests::topology` and `nftproxy_tests::realapi`). Objects are created with kubectl as
//! the controllers would (no controller-manager runs: the tests write the EndpointSlices).
//! Root only, and skipped while the API server's binaries are not built (`scripts/realapi build`).
//! Each test has its own topology and API server, so they run in parallel.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nftproxy_tests::realapi::{poll, service, slice, tcp, udp, Cluster, Daemon, Ep, SvcPort, User};
use nftproxy_tests::topology::{ConnectOpts, Place, Pod, Proto, NODE_IP, POD_PORT};
use nftproxy_tests::{require_realapi, require_root};
use serde_json::Value;

/// Service `web`: ClusterIP, TCP 80 and UDP 53, endpoints pod-a and pod-b.
const WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
/// Service `web-np`: NodePort, TCP 80 (30080) and UDP 53 (30053), endpoints pod-a and pod-b.
const WEB_NP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const NODEPORT_TCP: u16 = 30080;
const NODEPORT_UDP: u16 = 30053;
/// Service `empty`: ClusterIP, TCP 80, a slice without endpoints.
const EMPTY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 15);

/// The first sync comes after the initial lists; the API server may be slow on a loaded machine.
const FIRST_SYNC: Duration = Duration::from_secs(30);
/// How long a change may take to reach the kernel while the API server is up.
const CHANGE_BOUND: Duration = Duration::from_secs(2);
/// How long a change made after an API server restart may take to reach the kernel ("a few
/// seconds", with margin). The watches resume after their retry backoff, which grows while the
/// server is away (kube-proxy's client-go reflectors too: 5 to 50 s in the same scenario).
const RECONNECT_BOUND: Duration = Duration::from_secs(10);

fn echo() -> &'static str {
    env!("CARGO_BIN_EXE_nftproxy-echo")
}

fn web_ports() -> [SvcPort; 2] {
    [tcp("http", 80, POD_PORT), udp("dns", 53, POD_PORT)]
}

fn web_np_ports() -> [SvcPort; 2] {
    [
        tcp("http", 80, POD_PORT).node_port(NODEPORT_TCP),
        udp("dns", 53, POD_PORT).node_port(NODEPORT_UDP),
    ]
}

fn ep(pod: Pod) -> Ep {
    Ep {
        ip: pod.ip(),
        // pod-c runs "on node-b" (physically here: the endpoint is not local).
        node: if pod == Pod::C { "node-b" } else { "node-a" },
    }
}

/// The EndpointSlice of `web` with these pods.
fn web_slice(pods: &[Pod]) -> Value {
    let eps: Vec<Ep> = pods.iter().map(|&p| ep(p)).collect();
    slice("web-x7k2p", "web", &web_ports(), &eps)
}

/// A cluster with services `web`, `web-np` (both on pod-a and pod-b) and `empty`.
fn cluster() -> Cluster {
    let cluster = Cluster::new(echo());
    let empty_ports = [tcp("http", 80, POD_PORT)];
    cluster.api.apply(&[
        service("web", WEB, &web_ports()),
        web_slice(&[Pod::A, Pod::B]),
        service("web-np", WEB_NP, &web_np_ports()),
        slice(
            "web-np-q9v4d",
            "web-np",
            &web_np_ports(),
            &[ep(Pod::A), ep(Pod::B)],
        ),
        service("empty", EMPTY, &empty_ports),
        slice("empty-m3b8z", "empty", &empty_ports, &[]),
    ]);
    cluster
}

/// Starts the daemon with kube-proxy's credentials and waits for its first sync, which must
/// succeed and be full.
fn start(cluster: &Cluster, extra: &[&str]) -> Daemon {
    let mut daemon = cluster.daemon(User::KubeProxy, extra);
    let first = daemon.wait_for_first_sync(FIRST_SYNC);
    assert_eq!(first.kind, "full", "the first sync is full: {}", first.line);
    eprintln!(
        "first sync {:?} after start: {}",
        daemon.started().elapsed(),
        first.line
    );
    daemon
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The pod name of an echo server's answer (`pod-a 10.0.1.7`), `None` for `refused`, `timeout`...
fn answer_pod(line: &str) -> Option<&str> {
    let (pod, seen) = line.split_once(' ')?;
    seen.parse::<IpAddr>().ok()?;
    Some(pod)
}

/// `count` attempts; the pods that answered, or `Err(what the client printed)` unless every
/// attempt was answered.
fn try_pods(
    cluster: &Cluster,
    from: Place,
    proto: Proto,
    to: SocketAddr,
    count: u32,
) -> Result<BTreeSet<String>, Vec<String>> {
    let opts = ConnectOpts::count(count).timeout_ms(1000);
    let lines = cluster.topo.connect(from, proto, to, &opts);
    let pods: Vec<String> = lines
        .iter()
        .filter_map(|l| answer_pod(l).map(str::to_string))
        .collect();
    if pods.len() == count as usize {
        Ok(pods.into_iter().collect())
    } else {
        Err(lines)
    }
}

/// `count` attempts, every one answered (else panics); the pods that answered.
fn pods(
    cluster: &Cluster,
    from: Place,
    proto: Proto,
    to: SocketAddr,
    count: u32,
) -> BTreeSet<String> {
    try_pods(cluster, from, proto, to, count).unwrap_or_else(|lines| {
        panic!("{proto:?} {to} from {from:?}: not every attempt was answered: {lines:?}")
    })
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// One attempt with a short timeout: what the client printed (an answer, `refused`, `timeout`).
fn once(cluster: &Cluster, from: Place, to: SocketAddr, timeout_ms: u64) -> String {
    let opts = ConnectOpts::count(1).timeout_ms(timeout_ms);
    let lines = cluster.topo.connect(from, Proto::Tcp, to, &opts);
    lines.into_iter().next().unwrap_or_default()
}

/// Polls every 25 ms until `f` holds, at most `timeout`; how long it took, or panics with `what`
/// and the daemon's log.
fn wait_until(
    daemon: &mut Daemon,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> Duration {
    match poll(timeout, Duration::from_millis(25), || f().then_some(())) {
        Some(((), took)) => took,
        None => panic!(
            "{}",
            daemon.failure(&format!("{what}: not within {timeout:?}"))
        ),
    }
}

/// Until a round of attempts from the node reaches `pod` (`present`) or none of a round does.
/// A round that misses pod-a is confirmed by a bigger one (a chance miss is 2^-10 .. 2^-30).
fn wait_for_pod(
    cluster: &Cluster,
    daemon: &mut Daemon,
    pod: Pod,
    present: bool,
    timeout: Duration,
) -> Duration {
    let to = addr(WEB, 80);
    let what = format!(
        "{} {}",
        pod.name(),
        if present {
            "answers"
        } else {
            "no longer answers"
        }
    );
    wait_until(daemon, &what, timeout, || {
        let round = |n| try_pods(cluster, Place::Node, Proto::Tcp, to, n);
        match round(6) {
            Ok(got) if present => got.contains(pod.name()),
            Ok(got) => {
                !got.contains(pod.name()) && round(30).is_ok_and(|g| !g.contains(pod.name()))
            }
            Err(_) => false,
        }
    })
}

fn table_exists(cluster: &Cluster, family_name: &str) -> bool {
    cluster
        .tables()
        .iter()
        .any(|t| t == &format!("table {family_name}"))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn clusterip_and_nodeport_reach_the_pods() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let _daemon = start(&cluster, &[]);
    let both = set(&["pod-a", "pod-b"]);
    let from_pod = Place::Pod(Pod::C);
    // 20 new connections each: all on one of two endpoints has probability 2^-19.
    assert_eq!(
        pods(&cluster, from_pod, Proto::Tcp, addr(WEB, 80), 20),
        both,
        "ClusterIP TCP"
    );
    assert_eq!(
        pods(&cluster, from_pod, Proto::Udp, addr(WEB, 53), 20),
        both,
        "ClusterIP UDP"
    );
    assert_eq!(
        pods(&cluster, from_pod, Proto::Tcp, addr(WEB_NP, 80), 20),
        both,
        "the NodePort service's ClusterIP"
    );
    for (proto, port) in [(Proto::Tcp, NODEPORT_TCP), (Proto::Udp, NODEPORT_UDP)] {
        let got = pods(&cluster, Place::External, proto, addr(NODE_IP, port), 20);
        assert_eq!(got, both, "external client to NodePort {proto:?} {port}");
    }
    // The node's own traffic to a ClusterIP (output hook).
    assert_eq!(
        pods(&cluster, Place::Node, Proto::Tcp, addr(WEB, 80), 20),
        both,
        "from the node"
    );
    // kube-proxy's conntrack sysctls, per network namespace, set after the first sync (kernel
    // defaults: 432000 and 60); nf_conntrack_max is global and left alone in a test namespace.
    let sysctl = |name: &str| {
        let out = cluster
            .topo
            .node
            .run(&["cat", &format!("/proc/sys/net/netfilter/{name}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_established"), "86400");
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_close_wait"), "3600");
}

#[test]
fn slice_scaled_up_and_down_moves_traffic_within_two_seconds() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let mut daemon = start(&cluster, &[]);
    assert_eq!(
        pods(&cluster, Place::Node, Proto::Tcp, addr(WEB, 80), 20),
        set(&["pod-a", "pod-b"])
    );

    let synced = daemon.sync_lines().len();
    let t0 = Instant::now();
    cluster.api.apply(&[web_slice(&[Pod::A, Pod::B, Pod::C])]);
    let kubectl = t0.elapsed();
    let took = wait_for_pod(&cluster, &mut daemon, Pod::C, true, Duration::from_secs(10));
    eprintln!("pod-c added: answers {took:?} after the API took the slice (kubectl {kubectl:?})");
    eprintln!(
        "  {}",
        daemon.wait_for_sync(synced, Duration::from_secs(5)).line
    );
    assert!(
        took < CHANGE_BOUND,
        "pod-c answered only {took:?} after the slice changed"
    );

    let synced = daemon.sync_lines().len();
    cluster.api.apply(&[web_slice(&[Pod::B, Pod::C])]);
    let took = wait_for_pod(
        &cluster,
        &mut daemon,
        Pod::A,
        false,
        Duration::from_secs(10),
    );
    eprintln!("pod-a removed: gone {took:?} after the API took the slice");
    eprintln!(
        "  {}",
        daemon.wait_for_sync(synced, Duration::from_secs(5)).line
    );
    assert!(
        took < CHANGE_BOUND,
        "pod-a still answered {took:?} after the slice changed"
    );
    assert_eq!(
        pods(&cluster, Place::Node, Proto::Tcp, addr(WEB, 80), 30),
        set(&["pod-b", "pod-c"])
    );
    let syncs = daemon.sync_lines();
    assert!(syncs.iter().all(|s| s.ok), "a sync failed: {syncs:#?}");
    assert!(
        syncs[1..].iter().all(|s| s.kind == "partial"),
        "endpoint changes are partial syncs: {syncs:#?}"
    );
}

#[test]
fn no_endpoints_is_refused_and_a_deleted_service_is_not_proxied() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let mut daemon = start(&cluster, &[]);
    let from = Place::Pod(Pod::C);

    // A Service whose slice has no endpoints: refused at once.
    let t0 = Instant::now();
    let got = once(&cluster, from, addr(EMPTY, 80), 2000);
    assert_eq!(got, "refused", "Service without endpoints");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "refused only after {:?}",
        t0.elapsed()
    );

    // web loses its endpoints: refused (not timed out) as soon as the change is in.
    pods(&cluster, from, Proto::Tcp, addr(WEB, 80), 5);
    cluster.api.apply(&[web_slice(&[])]);
    let took = wait_until(
        &mut daemon,
        "web refused once its slice is empty",
        CHANGE_BOUND * 2,
        || once(&cluster, from, addr(WEB, 80), 300) == "refused",
    );
    eprintln!("web refused {took:?} after its slice lost its endpoints");
    let t0 = Instant::now();
    assert_eq!(once(&cluster, from, addr(WEB, 80), 2000), "refused");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "refused only after {:?}",
        t0.elapsed()
    );
    // Undefined port of a known ClusterIP: refused too.
    assert_eq!(
        once(&cluster, from, addr(WEB, 81), 2000),
        "refused",
        "undefined port"
    );

    // web deleted: its address is nobody's; not DNATed, not rejected: the packets go where the
    // node routes 172.30.0.0/16 (the external namespace, which drops them).
    cluster.api.delete("service", "web");
    cluster.api.delete("endpointslice", "web-x7k2p");
    let took = wait_until(
        &mut daemon,
        "web's ClusterIP no longer handled",
        CHANGE_BOUND * 2,
        || once(&cluster, from, addr(WEB, 80), 300) != "refused",
    );
    eprintln!("web's ClusterIP unhandled {took:?} after the delete");
    assert_eq!(
        once(&cluster, from, addr(WEB, 80), 1000),
        "timeout",
        "deleted Service"
    );
    // The other services are untouched.
    assert_eq!(once(&cluster, from, addr(EMPTY, 80), 2000), "refused");
    pods(&cluster, from, Proto::Tcp, addr(WEB_NP, 80), 5);
    let syncs = daemon.sync_lines();
    assert!(syncs.iter().all(|s| s.ok), "a sync failed: {syncs:#?}");
}

#[test]
fn api_server_outage_keeps_traffic_and_changes_arrive_after_it() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let mut daemon = start(&cluster, &[]);
    let both = set(&["pod-a", "pod-b"]);
    assert_eq!(
        pods(&cluster, Place::Node, Proto::Tcp, addr(WEB, 80), 20),
        both
    );

    // API server down: the rules stay, the daemon keeps running.
    cluster.api.stop_apiserver();
    let down = Instant::now();
    let mut rounds = 0;
    while down.elapsed() < Duration::from_secs(5) && rounds < 100 {
        let got = try_pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 5)
            .unwrap_or_else(|lines| {
                panic!(
                    "{}",
                    daemon.failure(&format!("API server down {:?}: {lines:?}", down.elapsed()))
                )
            });
        assert!(got.is_subset(&both), "{got:?}");
        pods(
            &cluster,
            Place::External,
            Proto::Tcp,
            addr(NODE_IP, NODEPORT_TCP),
            1,
        );
        rounds += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.running(),
        "{}",
        daemon.failure("exited while the API server was down")
    );
    eprintln!(
        "{rounds} rounds of traffic in {:?} without an API server",
        down.elapsed()
    );

    // Back up; a change made afterwards arrives once the watches resume.
    cluster.api.start_again();
    eprintln!("API server back after {:?}", down.elapsed());
    cluster.api.apply(&[web_slice(&[Pod::A, Pod::B, Pod::C])]);
    let took = wait_for_pod(&cluster, &mut daemon, Pod::C, true, Duration::from_secs(30));
    eprintln!("after the restart, pod-c answers {took:?} after the change");
    assert!(took < RECONNECT_BOUND, "the change took {took:?} to arrive");

    // Down and up again, the change applied at once, very likely before the daemon has noticed
    // the server is back: it must still reach the kernel (relist or resumed watch).
    cluster.api.stop_apiserver();
    cluster.api.start_again();
    cluster.api.apply(&[web_slice(&[Pod::B, Pod::C])]);
    let took = wait_for_pod(
        &cluster,
        &mut daemon,
        Pod::A,
        false,
        Duration::from_secs(30),
    );
    eprintln!("change made right after the second restart: in the kernel {took:?} later");
    assert!(took < RECONNECT_BOUND, "the change took {took:?} to arrive");
    assert_eq!(
        pods(&cluster, Place::Node, Proto::Tcp, addr(WEB, 80), 30),
        set(&["pod-b", "pod-c"])
    );
    assert!(daemon.running(), "{}", daemon.failure("exited"));
    for line in daemon.lines() {
        if line.contains("again") || line.contains("Expired") {
            eprintln!("  {line}");
        }
    }
    for s in daemon.sync_lines() {
        eprintln!("  {}", s.line);
    }
}

#[test]
fn sigkill_and_restart_keeps_established_connections_and_sends_nothing() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let mut daemon = start(&cluster, &[]);
    const HOLD_MS: u64 = 9000;
    let held_since = Instant::now();
    let mut held = cluster
        .topo
        .hold(Place::Pod(Pod::C), addr(WEB, 80), HOLD_MS);
    let first = held.next_line().unwrap_or_default();
    let kept = answer_pod(&first)
        .unwrap_or_else(|| panic!("held connection: {first:?}"))
        .to_string();

    daemon.kill();
    // No daemon: the rules are still there.
    pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 3);
    let mut again = start(&cluster, &[]);
    let first_sync = again.sync_lines()[0].clone();
    let restarted = held_since.elapsed();
    assert_eq!(
        (first_sync.kind.as_str(), first_sync.ops),
        ("full", Some(0)),
        "the restarted daemon's first sync finds nothing to change: {}",
        first_sync.line
    );
    assert!(
        restarted < Duration::from_millis(HOLD_MS - 1000),
        "the restart took {restarted:?}: longer than the held connection"
    );
    let rest = held.finish();
    assert!(
        rest.len() >= 40,
        "the held connection stopped early: {rest:?}"
    );
    for line in &rest {
        assert_eq!(
            answer_pod(line),
            Some(kept.as_str()),
            "held connection broke: {rest:?}"
        );
    }
    assert_eq!(
        pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 20),
        set(&["pod-a", "pod-b"])
    );
    assert!(again.running());
}

#[test]
fn sigterm_leaves_the_rules_and_cleanup_removes_them() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    let mut daemon = start(&cluster, &[]);
    let both = set(&["pod-a", "pod-b"]);
    assert_eq!(
        pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 20),
        both
    );

    let t0 = Instant::now();
    let status = daemon.terminate(Duration::from_secs(10));
    eprintln!("exited {:?} after SIGTERM: {status}", t0.elapsed());
    assert!(
        status.success(),
        "{}",
        daemon.failure(&format!("SIGTERM: exit status {status}"))
    );
    assert!(
        table_exists(&cluster, "ip nftproxy"),
        "tables: {:?}",
        cluster.tables()
    );
    assert_eq!(
        pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 20),
        both
    );
    assert_eq!(
        pods(
            &cluster,
            Place::External,
            Proto::Tcp,
            addr(NODE_IP, NODEPORT_TCP),
            20
        ),
        both
    );

    let out = cluster
        .topo
        .cleanup()
        .expect("nftproxy has a cleanup subcommand");
    assert!(
        out.status.success(),
        "nftproxy cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = cluster
        .tables()
        .into_iter()
        .filter(|t| t.ends_with(" nftproxy"))
        .collect();
    assert!(left.is_empty(), "left after cleanup: {left:?}");
    assert_eq!(
        once(&cluster, Place::Pod(Pod::C), addr(WEB, 80), 1000),
        "timeout"
    );
}

/// A small stand-in for kube-proxy's nftables-mode tables, plus a table of someone else.
const KUBE_PROXY_TABLES: &str = "
table ip kube-proxy {
    set cluster-ips { type ipv4_addr; elements = { 172.30.0.10 } }
    chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; counter; }
    chain services { ip daddr @cluster-ips counter; }
}
table ip6 kube-proxy {
    chain filter-input { type filter hook input priority -110; policy accept; counter; }
}
table inet someone-else {
    chain input { type filter hook input priority 0; policy accept; counter; }
}
";

#[test]
fn takeover_from_kube_proxy_only_with_the_flag() {
    require_root!();
    require_realapi!();
    let cluster = cluster();
    cluster
        .topo
        .node
        .run_stdin(&["nft", "-f", "-"], Some(KUBE_PROXY_TABLES));
    for t in ["ip kube-proxy", "ip6 kube-proxy", "inet someone-else"] {
        assert!(
            table_exists(&cluster, t),
            "{t} not created: {:?}",
            cluster.tables()
        );
    }
    let both = set(&["pod-a", "pod-b"]);

    // Without the flag kube-proxy's tables are left alone.
    let mut daemon = start(&cluster, &[]);
    assert_eq!(
        pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 20),
        both
    );
    for t in ["ip kube-proxy", "ip6 kube-proxy", "inet someone-else"] {
        assert!(
            table_exists(&cluster, t),
            "without --cleanup-kube-proxy {t} is gone: {:?}",
            cluster.tables()
        );
    }
    daemon.terminate(Duration::from_secs(10));

    // With it, they are gone after the first sync; nobody else's table is touched.
    let mut daemon = start(&cluster, &["--cleanup-kube-proxy"]);
    let gone =
        |c: &Cluster| !table_exists(c, "ip kube-proxy") && !table_exists(c, "ip6 kube-proxy");
    if !gone(&cluster) {
        // Deleted right after the sync line is logged: allow a moment.
        wait_until(
            &mut daemon,
            "kube-proxy's tables deleted",
            Duration::from_secs(2),
            || gone(&cluster),
        );
    }
    let tables = cluster.tables();
    assert!(
        tables.iter().any(|t| t == "table ip nftproxy"),
        "{tables:?}"
    );
    assert!(
        tables.iter().any(|t| t == "table inet someone-else"),
        "{tables:?}"
    );
    assert_eq!(
        pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 20),
        both
    );
    assert_eq!(
        pods(
            &cluster,
            Place::External,
            Proto::Tcp,
            addr(NODE_IP, NODEPORT_TCP),
            10
        ),
        both
    );
    eprintln!("{}", daemon.tail(5));
}

#[test]
fn rbac_kube_proxy_role_suffices_and_no_rights_programs_nothing() {
    require_root!();
    require_realapi!();
    let cluster = cluster();

    // No rights: a clear permission error naming each resource it needs, and nothing programmed.
    // (A 403 on ServiceCIDRs alone is not enough: they are optional and only warned about.)
    let mut denied = cluster.daemon(User::NoRights, &[]);
    let mut lines = Vec::new();
    for resource in ["services", "endpointslices", "nodes"] {
        let named = format!("resource \"{resource}\"");
        let line = denied.wait_for_line(
            &format!("saying 403/forbidden for {resource}"),
            Duration::from_secs(20),
            |l| {
                let l = l.to_ascii_lowercase();
                (l.contains("403") || l.contains("forbidden")) && l.contains(&named)
            },
        );
        lines.push(line);
    }
    let line = lines.join("\n");
    eprintln!("permission error: {line}");
    let check = Instant::now();
    while check.elapsed() < Duration::from_secs(3) {
        assert!(
            !cluster.tables().iter().any(|t| t.ends_with(" nftproxy")),
            "{}",
            denied.failure(&format!(
                "programmed without rights: {:?}",
                cluster.tables()
            ))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        denied.sync_lines().is_empty(),
        "{}",
        denied.failure("synced without rights")
    );
    let state = denied.exited();
    eprintln!(
        "without rights the daemon {}",
        match state {
            Some(s) => format!("exited: {s}"),
            None => "keeps running (retrying)".to_string(),
        }
    );
    denied.kill();

    // system:kube-proxy (system:node-proxier): works.
    let _daemon = start(&cluster, &[]);
    assert_eq!(
        pods(&cluster, Place::Pod(Pod::C), Proto::Tcp, addr(WEB, 80), 20),
        set(&["pod-a", "pod-b"])
    );
}
