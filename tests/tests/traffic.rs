//! Real traffic through nftproxy's ruleset: a one-node cluster in throwaway network namespaces
//! (see `nftproxy_tests::topology`), programmed from `tests/traffic/*.yaml` with `nftproxy apply`,
//! and echo servers in the pods that answer with their name and the client address they see.
//! Root only; each test builds its own topology, so they run in parallel.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nftproxy_tests::require_root;
use nftproxy_tests::topology::{
    ConnectOpts, Place, Pod, Proto, Topology, CLIENT_ALLOWED, CLIENT_BLOCKED, NODE_IP,
};

// Service addresses in tests/traffic/services.yaml.
const WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
const SELF: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const NODEPORT: u16 = 30080;
const FW_LB: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 4);
const FW_NODEPORT: u16 = 30081;
const LOCAL_LB: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 5);
const LOCAL_NODEPORT: u16 = 30082;
const EMPTY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 15);
const EMPTY_NODEPORT: u16 = 30083;
const STICKY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 16);
const DNS: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 53);
// In tests/traffic/removal-*.yaml.
const REMOVAL_WEB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 20);

fn snapshot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("traffic")
        .join(name)
}

/// A fresh topology programmed from `tests/traffic/<name>`.
fn cluster(name: &str) -> Topology {
    let topo = Topology::new(env!("CARGO_BIN_EXE_nftproxy-echo"));
    apply(&topo, name);
    topo
}

/// Applies a snapshot with `nftproxy apply`; returns what it printed.
fn apply(topo: &Topology, name: &str) -> String {
    let out = topo.apply(&snapshot(name));
    assert!(
        out.status.success(),
        "applying {name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The operation count `nftproxy apply` reports ("applied N operations ..." or "sent 0").
fn operations(stdout: &str) -> usize {
    if stdout.contains("sent 0 operations") {
        return 0;
    }
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "applied")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no operation count in {stdout:?}"))
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// What an echo server said: its name and the client address it saw.
#[derive(Debug)]
struct Answer {
    pod: String,
    seen: IpAddr,
}

impl Answer {
    fn parse(line: &str) -> Option<Self> {
        let (pod, seen) = line.split_once(' ')?;
        Some(Self {
            pod: pod.to_string(),
            seen: seen.parse().ok()?,
        })
    }
}

/// Makes `opts.count` attempts and returns the answers; panics, showing what the client printed,
/// unless every attempt was answered by a pod.
fn answers(
    topo: &Topology,
    from: Place,
    proto: Proto,
    to: SocketAddr,
    opts: &ConnectOpts,
) -> Vec<Answer> {
    let lines = topo.connect(from, proto, to, opts);
    let parsed: Vec<Answer> = lines.iter().filter_map(|l| Answer::parse(l)).collect();
    assert!(
        parsed.len() == opts.count as usize,
        "{proto:?} {to} from {from:?}: {} attempts, {} answered: {lines:?}",
        opts.count,
        parsed.len()
    );
    parsed
}

fn pods(answers: &[Answer]) -> BTreeSet<&str> {
    answers.iter().map(|a| a.pod.as_str()).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

#[test]
fn clusterip_from_pod_and_from_node() {
    require_root!();
    let topo = cluster("services.yaml");
    for (from, source) in [
        (Place::Pod(Pod::C), IpAddr::from(Pod::C.ip())),
        (Place::Node, NODE_IP.into()),
    ] {
        let got = answers(
            &topo,
            from,
            Proto::Tcp,
            addr(WEB, 80),
            &ConnectOpts::count(20),
        );
        assert!(
            pods(&got).is_subset(&set(&["pod-a", "pod-b"])),
            "{from:?}: {got:?}"
        );
        // Pod traffic keeps its address; node traffic is masqueraded to the node's address.
        assert!(got.iter().all(|a| a.seen == source), "{from:?}: {got:?}");
    }
}

#[test]
fn hairpin_pod_reaches_itself_through_its_service() {
    require_root!();
    let topo = cluster("services.yaml");
    let got = answers(
        &topo,
        Place::Pod(Pod::A),
        Proto::Tcp,
        addr(SELF, 80),
        &ConnectOpts::count(3),
    );
    for a in &got {
        assert_eq!(a.pod, "pod-a");
        // Masqueraded, here to the node's address (its only global one).
        assert_ne!(
            a.seen,
            IpAddr::from(Pod::A.ip()),
            "hairpin traffic must be masqueraded"
        );
        assert_eq!(a.seen, IpAddr::from(NODE_IP));
    }
}

#[test]
fn nodeport_from_external_client() {
    require_root!();
    let topo = cluster("services.yaml");
    let got = answers(
        &topo,
        Place::External,
        Proto::Tcp,
        addr(NODE_IP, NODEPORT),
        &ConnectOpts::count(10),
    );
    assert!(pods(&got).is_subset(&set(&["pod-a", "pod-b"])), "{got:?}");
    for a in &got {
        assert_eq!(
            a.seen,
            IpAddr::from(NODE_IP),
            "NodePort traffic (Cluster policy) is masqueraded: {got:?}"
        );
    }
}

#[test]
fn loadbalancer_source_ranges_allow_and_block() {
    require_root!();
    let topo = cluster("services.yaml");
    let allowed = ConnectOpts::count(3).bind(CLIENT_ALLOWED);
    let got = answers(
        &topo,
        Place::External,
        Proto::Tcp,
        addr(FW_LB, 80),
        &allowed,
    );
    assert!(
        got.iter().all(|a| a.seen == IpAddr::from(NODE_IP)),
        "LB traffic (Cluster policy) is masqueraded"
    );
    let blocked = ConnectOpts::count(1).bind(CLIENT_BLOCKED).timeout_ms(800);
    let lines = topo.connect(Place::External, Proto::Tcp, addr(FW_LB, 80), &blocked);
    assert_eq!(
        lines,
        ["timeout"],
        "a source outside loadBalancerSourceRanges is dropped"
    );
    // The NodePort of the same Service is not filtered.
    let blocked_source = ConnectOpts::count(1).bind(CLIENT_BLOCKED);
    answers(
        &topo,
        Place::External,
        Proto::Tcp,
        addr(NODE_IP, FW_NODEPORT),
        &blocked_source,
    );
}

#[test]
fn external_traffic_policy_local_keeps_client_ip() {
    require_root!();
    let topo = cluster("services.yaml");
    let opts = ConnectOpts::count(20).bind(CLIENT_ALLOWED);
    for to in [addr(LOCAL_LB, 80), addr(NODE_IP, LOCAL_NODEPORT)] {
        let got = answers(&topo, Place::External, Proto::Tcp, to, &opts);
        assert_eq!(
            pods(&got),
            set(&["pod-a"]),
            "{to}: only the local endpoint answers"
        );
        assert!(
            got.iter().all(|a| a.seen == IpAddr::from(CLIENT_ALLOWED)),
            "{to}: client IP kept: {got:?}"
        );
    }
}

#[test]
fn no_endpoints_is_refused_immediately() {
    require_root!();
    let topo = cluster("services.yaml");
    let opts = ConnectOpts::count(1).timeout_ms(2000);
    let cases = [
        (
            Place::Pod(Pod::C),
            addr(EMPTY, 80),
            "ClusterIP without endpoints, from a pod",
        ),
        (
            Place::Node,
            addr(EMPTY, 80),
            "ClusterIP without endpoints, from the node",
        ),
        (
            Place::External,
            addr(NODE_IP, EMPTY_NODEPORT),
            "NodePort without endpoints",
        ),
        (
            Place::Pod(Pod::C),
            addr(WEB, 81),
            "undefined port of a ClusterIP, from a pod",
        ),
        (
            Place::Node,
            addr(WEB, 81),
            "undefined port of a ClusterIP, from the node",
        ),
    ];
    for (from, to, what) in cases {
        let start = Instant::now();
        let lines = topo.connect(from, Proto::Tcp, to, &opts);
        let took = start.elapsed();
        assert_eq!(lines, ["refused"], "{what}: {to} from {from:?}");
        assert!(
            took < Duration::from_millis(1000),
            "{what}: refused only after {took:?}"
        );
    }
}

#[test]
fn udp_service() {
    require_root!();
    let topo = cluster("services.yaml");
    let got = answers(
        &topo,
        Place::Pod(Pod::C),
        Proto::Udp,
        addr(DNS, 53),
        &ConnectOpts::count(10),
    );
    assert!(pods(&got).is_subset(&set(&["pod-a", "pod-b"])), "{got:?}");
    assert!(
        got.iter().all(|a| a.seen == IpAddr::from(Pod::C.ip())),
        "{got:?}"
    );
}

#[test]
fn session_affinity_client_ip() {
    require_root!();
    let topo = cluster("services.yaml");
    for from in [Place::Pod(Pod::C), Place::Node] {
        let got = answers(
            &topo,
            from,
            Proto::Tcp,
            addr(STICKY, 80),
            &ConnectOpts::count(20),
        );
        assert_eq!(
            pods(&got).len(),
            1,
            "{from:?}: every connect sticks to one pod: {got:?}"
        );
    }
}

#[test]
fn load_spreads_across_endpoints() {
    require_root!();
    let topo = cluster("services.yaml");
    let got = answers(
        &topo,
        Place::Pod(Pod::C),
        Proto::Tcp,
        addr(WEB, 80),
        &ConnectOpts::count(40),
    );
    // All 40 on one of two endpoints happens with probability 2^-39.
    assert_eq!(pods(&got), set(&["pod-a", "pod-b"]));
}

#[test]
fn removed_endpoint_gets_no_new_connections_established_survive() {
    require_root!();
    let topo = cluster("removal-before.yaml");
    let mut held = topo.hold(Place::Pod(Pod::C), addr(REMOVAL_WEB, 80), 1500);
    let first = held.next_line().unwrap_or_default();
    let kept = Answer::parse(&first)
        .unwrap_or_else(|| panic!("held connection: {first:?}"))
        .pod;
    // Remove the endpoint the held connection does not use.
    let second = match kept.as_str() {
        "pod-a" => "removal-without-pod-b.yaml",
        "pod-b" => "removal-without-pod-a.yaml",
        other => panic!("unexpected answer from {other:?}"),
    };
    let out = apply(&topo, second);
    let ops = operations(&out);
    eprintln!("one endpoint removed: {}", out.trim());
    assert!(
        (1..=8).contains(&ops),
        "a one-endpoint change sent {ops} operations: {out}"
    );
    let again = apply(&topo, second);
    assert_eq!(operations(&again), 0, "the same snapshot again: {again}");
    let got = answers(
        &topo,
        Place::Pod(Pod::C),
        Proto::Tcp,
        addr(REMOVAL_WEB, 80),
        &ConnectOpts::count(20),
    );
    assert_eq!(
        pods(&got),
        set(&[&kept]),
        "new connections only reach the remaining endpoint"
    );
    let rest = held.finish();
    assert!(
        rest.len() >= 5,
        "the held connection kept answering: {rest:?}"
    );
    for line in &rest {
        let a = Answer::parse(line).unwrap_or_else(|| panic!("held connection broke: {rest:?}"));
        assert_eq!(a.pod, kept, "{rest:?}");
    }
}

#[test]
fn cleanup_leaves_no_trace() {
    require_root!();
    let topo = cluster("services.yaml");
    let Some(out) = topo.cleanup() else {
        eprintln!("skipped: nftproxy has no cleanup subcommand yet");
        return;
    };
    assert!(
        out.status.success(),
        "nftproxy cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = topo.node.ok(&["nft", "list", "ruleset"]);
    assert!(listed.trim().is_empty(), "left behind:\n{listed}");
}

/// Packets to 172.30.0.99 (no Service) that reach the external namespace, which the node routes
/// the ClusterIP range to.
fn leaked_to_external(topo: &Topology) -> u64 {
    let out = topo.exec(
        Place::External,
        &["nft", "-j", "list", "table", "inet", "leak-count"],
    );
    let json = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft -j output");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
        .sum()
}

#[test]
fn unallocated_service_cidr_addresses_are_dropped_at_the_node() {
    require_root!();
    const UNALLOCATED: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 99);
    let count = "table inet leak-count {\n\tchain pre {\n\t\ttype filter hook prerouting priority 0; policy accept;\n\t\tip daddr 172.30.0.99 counter\n\t}\n}\n";
    let opts = ConnectOpts::count(2).timeout_ms(500);
    // Without a ServiceCIDR the node forwards them (they leak to the external namespace)...
    let topo = cluster("services.yaml");
    let out = topo
        .ns(Place::External)
        .run_stdin(&["nft", "-f", "-"], Some(count));
    assert!(out.status.success(), "{out:?}");
    topo.connect(Place::Pod(Pod::A), Proto::Tcp, addr(UNALLOCATED, 80), &opts);
    assert!(
        leaked_to_external(&topo) >= 1,
        "without a ServiceCIDR the packet is forwarded"
    );
    // ...with one, they are dropped by nftproxy, while allocated ClusterIPs keep working and their
    // undefined ports are still rejected.
    apply(&topo, "service-cidrs.yaml");
    let before = leaked_to_external(&topo);
    let lines = topo.connect(Place::Pod(Pod::A), Proto::Tcp, addr(UNALLOCATED, 80), &opts);
    assert!(
        lines.iter().all(|l| Answer::parse(l).is_none()),
        "{lines:?}"
    );
    topo.connect(Place::Node, Proto::Tcp, addr(UNALLOCATED, 80), &opts);
    assert_eq!(leaked_to_external(&topo), before, "dropped at the node");
    answers(
        &topo,
        Place::Pod(Pod::C),
        Proto::Tcp,
        addr(WEB, 80),
        &ConnectOpts::count(3),
    );
    let refused = topo.connect(
        Place::Pod(Pod::C),
        Proto::Tcp,
        addr(WEB, 81),
        &ConnectOpts::count(1).timeout_ms(2000),
    );
    assert!(
        refused.iter().any(|l| l.contains("refused")),
        "undefined port of an allocated ClusterIP: {refused:?}"
    );
}
