//! Golden files: each fixture's rendered ruleset (nft text and JSON) must match the committed one.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p nftproxy-tests --test golden`.

use nftproxy_tests::fixtures::{cases, check_golden};

macro_rules! golden {
    ($($test:ident => $case:literal,)*) => {
        $(#[test] fn $test() { check_golden($case); })*

        #[test]
        fn every_fixture_has_a_test() {
            let named = [$($case),*];
            for case in cases() {
                assert!(named.contains(&case.as_str()), "fixture {case} has no golden test");
            }
        }
    };
}

golden! {
    clusterip_tcp_udp_sctp_multi_port => "clusterip-protocols",
    named_target_ports_resolved_per_slice => "named-target-ports",
    nodeport_with_node_port_addresses => "nodeport",
    nodeport_on_all_local_addresses => "nodeport-all-addresses",
    loadbalancer_ingress_skips_ip_mode_proxy => "loadbalancer",
    external_ips => "external-ips",
    load_balancer_source_ranges => "lb-source-ranges",
    no_endpoints_reject => "no-endpoints",
    external_traffic_policy_local => "etp-local",
    internal_traffic_policy_local => "itp-local",
    terminating_endpoints_fallback => "terminating-fallback",
    session_affinity_client_ip => "session-affinity",
    masquerade_all => "masquerade-all",
    topology_hints_and_traffic_distribution => "topology-hints",
    dual_stack => "dual-stack",
    ignored_objects => "ignored-objects",
    detect_local_node_cidr => "detect-local-node-cidr",
    kubectl_list_input => "kubectl-list",
    service_cidrs_drop_unallocated_ips => "service-cidrs",
}

/// `nftproxy render --check`, as a CI job runs it: every committed golden file passes (exit 0,
/// nothing printed); a changed endpoint fails with exit 1 and a diff naming the changed map; a
/// missing golden file is trouble (exit 2) with the command that creates it.
#[test]
fn render_check_passes_on_every_golden_file_and_fails_with_a_named_diff() {
    use std::process::Command;
    let bin = nftproxy_tests::topology::nftproxy_bin();
    let dir = nftproxy_tests::fixtures::fixtures_dir();
    let run = |case: &str, snapshot: &std::path::Path, golden: &str, json: bool| {
        let mut cmd = Command::new(&bin);
        cmd.arg("render")
            .arg("--snapshot")
            .arg(snapshot)
            .arg("--config")
            .arg(dir.join(case).join("config.yaml"))
            .arg("--check")
            .arg(dir.join(case).join(golden));
        if json {
            cmd.args(["--format", "json"]);
        }
        cmd.output().expect("running nftproxy render --check")
    };
    for case in cases() {
        let snapshot = dir.join(&case).join("snapshot.yaml");
        for (golden, json) in [("ruleset.nft", false), ("ruleset.json", true)] {
            let out = run(&case, &snapshot, golden, json);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{case}/{golden}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.stdout.is_empty());
        }
    }
    let changed = std::env::temp_dir().join(format!("nftproxy-check-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(dir.join("nodeport/snapshot.yaml")).unwrap();
    assert!(text.contains("10.0.2.5"));
    std::fs::write(&changed, text.replace("10.0.2.5", "10.0.2.6")).unwrap();
    let out = run("nodeport", &changed, "ruleset.nft", false);
    let _ = std::fs::remove_file(&changed);
    assert_eq!(out.status.code(), Some(1));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("+++ rendered\n"), "{diff}");
    assert!(
        diff.contains("@@ table ip nftproxy › map ep-1-addr\n"),
        "{diff}"
    );
    assert!(
        diff.contains("-\t\telements = { 172.30.0.30 . tcp . 80 : 10.0.2.5,"),
        "{diff}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("to update it: "));
    let out = run(
        "nodeport",
        &dir.join("nodeport/snapshot.yaml"),
        "missing.nft",
        false,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("create it with: "));
}
