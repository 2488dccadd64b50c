//! Property tests over random clusters (see `nftproxy_tests::gen`).
//!
//! * `tracer_agrees_with_reference_model`: for every generated packet, the packet tracer run over
//!   the compiled ruleset and the reference model (`nftproxy_tests::model`, written from the
//!   Service semantics alone) agree on the verdict, the set of endpoints and which of them are
//!   masqueraded.
//! * `compile_is_deterministic`: compiling and rendering twice gives the same result.
//! * `layout_does_not_grow_with_services`: 4N services of the same shapes need no more chains or
//!   anonymous sets than N.
//! * `reference_model_answers_examples` / `tracer_answers_examples`: hand-written cases (one of
//!   each behaviour the random tests found the compiler getting wrong, plus a few landmarks) that
//!   pin the model and the compiled ruleset to kube-proxy's answer.
//! * `survey_disagreements` (ignored): a tool, not a test; it lists every kind of disagreement
//!   over many clusters, with how often each rule of the model was exercised.
//!
//! Seeds and case counts are fixed, so runs are reproducible; failures are persisted under
//! `tests/proptest-regressions/` and replayed first on the next run.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use nftproxy_core::parse::parse_snapshot;
use nftproxy_core::snapshot::{IpFamily, Protocol, Snapshot};
use nftproxy_core::trace::{trace, Origin, Packet, TraceEnv, TraceOutcome, TraceVerdict};
use nftproxy_core::{compile, render, ProxyConfig};
use nftproxy_tests::gen::{self, ClusterSpec, Scenario};
use nftproxy_tests::model::{self, Expected, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};
use serde_json::Value;

/// Packets sent into each generated cluster.
const PACKETS_PER_CLUSTER: usize = 10;

fn proptest_config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/properties.txt"
        )))),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

/// Parses the generated cluster the way real input is read.
fn snapshot_of(cluster: &ClusterSpec) -> Snapshot {
    let text = serde_json::to_string(&cluster.to_json()).expect("json values serialize");
    match parse_snapshot(&text) {
        Ok(parsed) => parsed.snapshot,
        Err(e) => panic!("generated cluster does not parse: {e}\n{text}"),
    }
}

/// The node's addresses as the compiler sees them: `--node-ip`, else the Node object's.
fn node_addrs(snapshot: &Snapshot, config: &ProxyConfig) -> Vec<IpAddr> {
    if config.node_ips.is_empty() {
        snapshot
            .nodes
            .get(&config.node_name)
            .map(|n| n.addresses.clone())
            .unwrap_or_default()
    } else {
        config.node_ips.clone()
    }
}

/// The tracer's answer in the model's terms; `Err` if the branches do not fit that shape.
fn observed(outcome: &TraceOutcome) -> Result<(Verdict, BTreeMap<SocketAddr, bool>), String> {
    let verdict = match outcome.verdict() {
        TraceVerdict::Dnat => Verdict::Dnat,
        TraceVerdict::Drop => Verdict::Drop,
        TraceVerdict::Reject => Verdict::Reject,
        TraceVerdict::Pass => Verdict::Pass,
    };
    let mut endpoints = BTreeMap::new();
    for branch in &outcome.branches {
        if branch.verdict != outcome.verdict() {
            return Err(format!(
                "branches disagree: {:?} and {:?}",
                outcome.verdict(),
                branch.verdict
            ));
        }
        if let Some(endpoint) = branch.endpoint {
            if endpoints
                .insert(endpoint, branch.masquerade)
                .is_some_and(|m| m != branch.masquerade)
            {
                return Err(format!("endpoint {endpoint} both masqueraded and not"));
            }
        }
    }
    Ok((verdict, endpoints))
}

/// The Service and EndpointSlice objects that could be involved with `packet`, and the nodes.
fn relevant_objects(cluster: &ClusterSpec, snapshot: &Snapshot, packet: &Packet) -> String {
    let names: Vec<String> = snapshot
        .services
        .values()
        .filter(|s| {
            s.cluster_ips.contains(&packet.dst)
                || s.external_ips.contains(&packet.dst)
                || s.load_balancer_ips.contains(&packet.dst)
                || s.ports.iter().any(|p| p.node_port == Some(packet.dport))
        })
        .map(|s| s.name.name.clone())
        .collect();
    let json = cluster.to_json();
    let items: Vec<&Value> = json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| {
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let owner = item["metadata"]["labels"]["kubernetes.io/service-name"]
                .as_str()
                .unwrap_or_default();
            item["kind"] == "Node" || names.iter().any(|n| n == name || n == owner)
        })
        .collect();
    serde_json::to_string_pretty(&items).expect("json values serialize")
}

fn mismatch(
    scenario: &Scenario,
    snapshot: &Snapshot,
    packet: &Packet,
    expected: &Expected,
    got: &str,
    outcome: Option<&TraceOutcome>,
) -> String {
    let mut out = format!(
        "tracer and reference model disagree\n  packet:   {packet:?}\n  expected: {expected}\n  got:      {got}\n\
         config: {:?}\nobjects:\n{}\n",
        scenario.config,
        relevant_objects(&scenario.cluster, snapshot, packet)
    );
    if let Some(outcome) = outcome {
        for (i, branch) in outcome.branches.iter().enumerate() {
            out.push_str(&format!(
                "trace branch {i} ({:?} {:?}):\n",
                branch.verdict, branch.endpoint
            ));
            for line in &branch.path {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

/// A disagreement between the tracer and the model.
struct Disagreement {
    /// One line, without addresses: the model's verdict and rule, and the tracer's verdict.
    kind: String,
    /// Everything needed to reproduce it by hand.
    details: String,
}

/// Sends every packet of `scenario` through the tracer and the model; the first disagreement.
fn check(scenario: &Scenario) -> Result<(), Disagreement> {
    check_counting(scenario, &mut |_| {})
}

/// [`check`], calling `seen` with the model's answer for every packet that agreed.
fn check_counting(
    scenario: &Scenario,
    seen: &mut dyn FnMut(&Expected),
) -> Result<(), Disagreement> {
    let snapshot = snapshot_of(&scenario.cluster);
    let config = &scenario.config;
    let compiled = compile(&snapshot, config).map_err(|e| Disagreement {
        kind: format!("compile error: {e}"),
        details: format!("{:?}", scenario.config),
    })?;
    let env = TraceEnv::new(node_addrs(&snapshot, config));
    for packet in scenario.packets() {
        let expected = model::expect(&snapshot, config, &packet);
        let outcome = trace(&compiled.ruleset, &packet, &env);
        let got = match &outcome {
            Err(e) => Err(format!("trace error: {e}")),
            Ok(outcome) => observed(outcome),
        };
        if got
            .as_ref()
            .is_ok_and(|(verdict, endpoints)| expected.agrees(*verdict, endpoints))
        {
            seen(&expected);
            continue;
        }
        let got = match got {
            Ok((verdict, endpoints)) => {
                let mut text = format!("{verdict:?}");
                for (endpoint, masquerade) in endpoints {
                    text.push_str(&format!(
                        " {endpoint}{}",
                        if masquerade { "(masq)" } else { "" }
                    ));
                }
                text
            }
            Err(e) => e,
        };
        let mut details = mismatch(
            scenario,
            &snapshot,
            &packet,
            &expected,
            &got,
            outcome.as_ref().ok(),
        );
        details.push_str("ruleset lines naming the source or destination:\n");
        let (src, dst) = (packet.src.to_string(), packet.dst.to_string());
        for line in render::to_nft_text(&compiled.ruleset).lines() {
            if line.contains(&src)
                || line.contains(&dst)
                || line.contains(" hook ")
                || line.starts_with("table")
            {
                details.push_str(&format!("    {}\n", line.trim()));
            }
        }
        let rule = expected.reason.rsplit(": ").next().unwrap_or_default();
        let got_verdict = got.split(' ').next().unwrap_or_default();
        return Err(Disagreement {
            kind: format!(
                "expected {:?} ({rule}), got {got_verdict}",
                expected.verdict
            ),
            details,
        });
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(2000, 0x6e66_7470_726f_7879))]

    #[test]
    fn tracer_agrees_with_reference_model(scenario in gen::scenario(PACKETS_PER_CLUSTER)) {
        check(&scenario).map_err(|d| TestCaseError::fail(d.details))?;
    }
}

/// Not a property: runs many clusters without stopping at the first disagreement and prints
/// each kind of disagreement once, with a count. For investigating; run with
/// `cargo test -p nftproxy-tests --test properties survey -- --ignored --nocapture`.
#[test]
#[ignore]
fn survey_disagreements() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let cases: usize = std::env::var("SURVEY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let mut runner = TestRunner::deterministic();
    let strategy = gen::scenario(PACKETS_PER_CLUSTER);
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut coverage: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..cases {
        let scenario = strategy
            .new_tree(&mut runner)
            .expect("generator never rejects")
            .current();
        let mut seen = |e: &Expected| {
            let rule = e.reason.rsplit(": ").next().unwrap_or_default();
            let hairpin =
                e.endpoints.iter().any(|(_, m)| *m) && e.endpoints.iter().any(|(_, m)| !*m);
            let key = format!(
                "{:?} ({rule}){}",
                e.verdict,
                if hairpin { " with hairpin" } else { "" }
            );
            *coverage.entry(key).or_default() += 1;
        };
        if let Err(d) = check_counting(&scenario, &mut seen) {
            let entry = kinds.entry(d.kind).or_insert((0, d.details));
            entry.0 += 1;
        }
    }
    for (kind, (count, details)) in &kinds {
        println!("==== {count} x {kind}\n{details}\n");
    }
    for (kind, count) in &coverage {
        println!("agreed {count:6} x {kind}");
    }
    println!("{} kinds of disagreement in {cases} clusters", kinds.len());
}

proptest! {
    #![proptest_config(proptest_config(256, 0x6465_7465_726d))]

    #[test]
    fn compile_is_deterministic(scenario in gen::scenario(0)) {
        let snapshot = snapshot_of(&scenario.cluster);
        let first = compile(&snapshot, &scenario.config).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let second = compile(&snapshot, &scenario.config).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&first.ruleset, &second.ruleset);
        prop_assert_eq!(&first.warnings, &second.warnings);
        prop_assert_eq!(render::to_nft_text(&first.ruleset), render::to_nft_text(&second.ruleset));
        prop_assert_eq!(render::to_json(&first.ruleset), render::to_json(&second.ruleset));
        // The same cluster read again (a fresh parse) compiles to the same ruleset.
        let again = compile(&snapshot_of(&scenario.cluster), &scenario.config)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&first.ruleset, &again.ruleset);
    }
}

proptest! {
    #![proptest_config(proptest_config(256, 0x6c61_796f_7574))]

    #[test]
    fn layout_does_not_grow_with_services(
        (cluster, mut config) in (gen::cluster(1..7), gen::config())
    ) {
        gen::fit_node_ips(&mut config, &cluster.node);
        let small = compile(&snapshot_of(&cluster), &config).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let large = compile(&snapshot_of(&cluster.repeated(4)), &config)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(small.ruleset.chain_count(), large.ruleset.chain_count());
        prop_assert_eq!(small.ruleset.anonymous_set_count(), large.ruleset.anonymous_set_count());
        for family in [IpFamily::V4, IpFamily::V6] {
            let chains = |r: &nftproxy_core::Ruleset| {
                r.tables.get(&family).map(|t| t.chains.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()
            };
            prop_assert_eq!(chains(&small.ruleset), chains(&large.ruleset));
        }
    }
}

/// Hand-written cases: a one-service cluster on `node-a` (192.168.0.2, fd00:192::2), a packet,
/// and what kube-proxy does with it.
struct Example {
    name: &'static str,
    /// Service and EndpointSlice YAML; the Node object is appended.
    objects: String,
    /// Adjusts the default configuration (node-a, cluster CIDRs 10.0.0.0/8 and fd00::/64).
    config: fn(&mut ProxyConfig),
    packet: Packet,
    verdict: Verdict,
    /// `(endpoint, masqueraded)`.
    endpoints: &'static [(&'static str, bool)],
}

const NODE_A: &str = "
apiVersion: v1
kind: Node
metadata: { name: node-a, labels: { topology.kubernetes.io/zone: zone-a } }
spec: { podCIDRs: [10.0.1.0/24, fd00::1:0/112] }
status: { addresses: [{ type: InternalIP, address: 192.168.0.2 }, { type: InternalIP, address: 'fd00:192::2' }] }
";

fn packet(src: &str, dst: &str, dport: u16, origin: Origin) -> Packet {
    Packet {
        src: src.parse().expect("example address"),
        dst: dst.parse().expect("example address"),
        proto: Protocol::Tcp,
        dport,
        origin,
    }
}

fn examples() -> Vec<Example> {
    const LB_V4: &str = "
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.1
  ports: [{ name: http, port: 80, targetPort: 8080, nodePort: 30080 }]
  loadBalancerSourceRanges: [RANGES]
status: { loadBalancer: { ingress: [{ ip: 198.19.0.1 }] } }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: 8080 }]
endpoints: [{ addresses: [10.0.1.1], nodeName: node-a }]
";
    vec![
        Example {
            name: "hairpin: a pod reaching itself through its ClusterIP is masqueraded",
            objects: "
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec: { clusterIP: 172.30.0.1, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints: [{ addresses: [10.0.1.1], nodeName: node-a }, { addresses: [10.0.2.1], nodeName: node-b }]
"
            .to_owned(),
            config: |_| {},
            packet: packet("10.0.1.1", "172.30.0.1", 80, Origin::Interface),
            verdict: Verdict::Dnat,
            endpoints: &[("10.0.1.1:8080", true), ("10.0.2.1:8080", false)],
        },
        Example {
            name: "eTP Local: pods short-circuit to every endpoint, unmasqueraded",
            objects: "
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec:
  type: NodePort
  clusterIP: 172.30.0.1
  externalTrafficPolicy: Local
  ports: [{ port: 80, targetPort: 8080, nodePort: 30080 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints: [{ addresses: [10.0.2.1], nodeName: node-b }]
"
            .to_owned(),
            config: |_| {},
            packet: packet("10.0.1.7", "192.168.0.2", 30080, Origin::Interface),
            verdict: Verdict::Dnat,
            endpoints: &[("10.0.2.1:8080", false)],
        },
        Example {
            name: "nodePortAddresses with only IPv4 CIDRs leaves IPv6 NodePorts on every local address",
            objects: "
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec:
  type: NodePort
  clusterIPs: ['fd00:30::1']
  ports: [{ port: 80, targetPort: 8080, nodePort: 30080 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv6
ports: [{ port: 8080 }]
endpoints: [{ addresses: ['fd00::1:1'], nodeName: node-a }]
"
            .to_owned(),
            config: |c| c.node_port_addresses = vec!["192.168.0.0/16".parse().expect("cidr")],
            packet: packet("2001:db8:ff::2", "fd00:192::2", 30080, Origin::Interface),
            verdict: Verdict::Dnat,
            endpoints: &[("[fd00::1:1]:8080", true)],
        },
        Example {
            name: "loadBalancerSourceRanges of the other family do not restrict this family",
            objects: LB_V4.replace("RANGES", "'2001:db8:ff::/48'"),
            config: |_| {},
            packet: packet("203.0.113.2", "198.19.0.1", 80, Origin::Interface),
            verdict: Verdict::Dnat,
            endpoints: &[("10.0.1.1:8080", true)],
        },
        Example {
            name: "a source range covering the node IP (from the Node object) admits the LB IP itself",
            objects: LB_V4.replace("RANGES", "192.168.0.0/16"),
            config: |_| {},
            packet: packet("198.19.0.1", "198.19.0.1", 80, Origin::Interface),
            verdict: Verdict::Dnat,
            endpoints: &[("10.0.1.1:8080", true)],
        },
        Example {
            name: "a source range admits only its own sources",
            objects: LB_V4.replace("RANGES", "192.168.0.0/16"),
            config: |_| {},
            packet: packet("203.0.113.2", "198.19.0.1", 80, Origin::Interface),
            verdict: Verdict::Drop,
            endpoints: &[],
        },
        Example {
            name: "the node reaches an eTP Local external IP without local endpoints (short-circuit)",
            objects: "
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.1
  externalTrafficPolicy: Local
  externalIPs: [198.18.0.1]
  ports: [{ port: 80, targetPort: 8080, nodePort: 30080 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints: [{ addresses: [10.0.2.1], nodeName: node-b }]
"
            .to_owned(),
            config: |_| {},
            packet: packet("192.168.0.2", "198.18.0.1", 80, Origin::Local),
            verdict: Verdict::Dnat,
            endpoints: &[("10.0.2.1:8080", true)],
        },
        Example {
            name: "nodePortAddresses 0.0.0.0/0: NodePorts are not served on loopback",
            objects: "
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec: { type: NodePort, clusterIP: 172.30.0.1, ports: [{ port: 80, targetPort: 8080, nodePort: 30080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints: [{ addresses: [10.0.2.1], nodeName: node-b }]
"
            .to_owned(),
            config: |c| c.node_port_addresses = vec!["0.0.0.0/0".parse().expect("cidr")],
            packet: packet("127.0.0.1", "127.0.0.1", 30080, Origin::Local),
            verdict: Verdict::Pass,
            endpoints: &[],
        },
    ]
}

/// Runs every example through `answer` and lists those whose answer differs from the example's.
fn failing_examples(answer: impl Fn(&Snapshot, &ProxyConfig, &Packet) -> String) -> Vec<String> {
    let mut failing = vec![];
    for example in examples() {
        let snapshot = parse_snapshot(&format!("{}\n---\n{NODE_A}", example.objects))
            .unwrap_or_else(|e| panic!("{}: {e}", example.name))
            .snapshot;
        let mut config = ProxyConfig {
            node_name: gen::NODE.to_owned(),
            cluster_cidrs: vec![
                "10.0.0.0/8".parse().expect("cidr"),
                "fd00::/64".parse().expect("cidr"),
            ],
            ..ProxyConfig::default()
        };
        (example.config)(&mut config);
        let endpoints: BTreeMap<SocketAddr, bool> = example
            .endpoints
            .iter()
            .map(|(e, m)| (e.parse().expect("example endpoint"), *m))
            .collect();
        let want = format!("{:?} {endpoints:?}", example.verdict);
        let got = answer(&snapshot, &config, &example.packet);
        if got != want {
            failing.push(format!(
                "{}:\n  packet:   {:?}\n  expected: {want}\n  got:      {got}",
                example.name, example.packet
            ));
        }
    }
    failing
}

#[test]
fn reference_model_answers_examples() {
    let failing = failing_examples(|snapshot, config, packet| {
        let expected = model::expect(snapshot, config, packet);
        format!("{:?} {:?}", expected.verdict, expected.endpoints)
    });
    assert!(failing.is_empty(), "{}", failing.join("\n"));
}

#[test]
fn tracer_answers_examples() {
    let failing = failing_examples(|snapshot, config, packet| {
        let compiled = compile(snapshot, config).expect("examples compile");
        let env = TraceEnv::new(node_addrs(snapshot, config));
        match trace(&compiled.ruleset, packet, &env)
            .map_err(|e| e.to_string())
            .and_then(|o| observed(&o))
        {
            Ok((verdict, endpoints)) => format!("{verdict:?} {endpoints:?}"),
            Err(e) => e,
        }
    });
    assert!(failing.is_empty(), "{}", failing.join("\n"));
}
