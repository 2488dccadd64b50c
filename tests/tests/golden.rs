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
