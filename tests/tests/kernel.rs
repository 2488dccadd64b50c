//! The in-memory syncer against the real kernel, in a throwaway network namespace: resync,
//! incremental element-only changes, nothing sent when nothing changed, recovery after a failed
//! transaction, and other tables left alone.

use nftproxy_bin::nft::{Backend, Nft};
use nftproxy_bin::sync::Syncer;
use nftproxy_core::snapshot::{Endpoint, ObjectName};
use nftproxy_core::{readback, render};
use nftproxy_tests::fixtures::{load, without_set_comments};
use nftproxy_tests::netns::Netns;
use nftproxy_tests::require_root;

const FOREIGN: &str = "table inet host-firewall {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport 22 accept\n\t}\n}\n";

/// Asserts the kernel holds `want` (set comments aside), without dumping both rulesets.
fn assert_kernel_holds(ns: &Netns, want: &nftproxy_core::Ruleset, what: &str) {
    let json = ns.ok(&["nft", "-j", "list", "table", "ip", "nftproxy"]);
    let got = without_set_comments(&readback::from_nft_json(&json).expect("read back"));
    let want = without_set_comments(want);
    if got != want {
        let (g, w) = (render::to_nft_text(&got), render::to_nft_text(&want));
        let diff: Vec<String> = g
            .lines()
            .zip(w.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .map(|(a, b)| format!("kernel: {a}\nwanted: {b}"))
            .collect();
        panic!("{what}: the kernel's ruleset differs\n{}", diff.join("\n"));
    }
}

#[test]
fn syncer_sends_only_changes_and_recovers_from_failures() {
    require_root!();
    for backend in [Backend::Json, Backend::Text] {
        let ns = Netns::new("sync");
        ns.run_stdin(&["nft", "-f", "-"], Some(FOREIGN));
        let foreign_before = ns.ok(&["nft", "list", "table", "inet", "host-firewall"]);

        let (mut snapshot, config) = load("session-affinity");
        let mut syncer = Syncer::new(config, Nft::in_netns(&ns.name), backend).unwrap();
        let first = syncer.sync(&snapshot, None).unwrap();
        assert!(first.resync && first.ops > 10, "{first:?}");
        assert_kernel_holds(&ns, syncer.ruleset(), "after the first sync");

        // One endpoint more in one service: element changes only.
        let slice = snapshot.slices.values_mut().next().unwrap();
        let mut e: Endpoint = slice.endpoints[0].clone();
        e.address = "10.0.9.9".parse().unwrap();
        slice.endpoints.push(e);
        let svc = ObjectName::new(&slice.name.namespace, slice.service_name.clone().unwrap());
        let r = syncer
            .sync(&snapshot, Some(std::slice::from_ref(&svc)))
            .unwrap();
        assert!(!r.resync && r.ops > 0 && r.ops <= 8, "{backend:?}: {r:?}");
        assert_kernel_holds(&ns, syncer.ruleset(), "after one endpoint more");
        assert_eq!(syncer.sync(&snapshot, None).unwrap().ops, 0);

        // Someone deletes an element behind our back that the next change deletes too: that
        // change fails as a whole, leaving everything else as it was...
        let before = ns.ok(&["nft", "list", "map", "ip", "nftproxy", "cluster-lb"]);
        ns.ok(&[
            "nft",
            "delete",
            "element",
            "ip",
            "nftproxy",
            "hairpin",
            "{ 10.0.9.9 . 10.0.9.9 }",
        ]);
        let slice = snapshot.slices.values_mut().next().unwrap();
        slice.endpoints.pop();
        let err = syncer
            .sync(&snapshot, Some(std::slice::from_ref(&svc)))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("nothing was changed") && msg.contains("hairpin"),
            "{msg}"
        );
        assert_eq!(
            ns.ok(&["nft", "list", "map", "ip", "nftproxy", "cluster-lb"]),
            before
        );
        // ...and the one after that resyncs from the kernel's state.
        let r = syncer
            .sync(&snapshot, Some(std::slice::from_ref(&svc)))
            .unwrap();
        assert!(r.resync, "{r:?}");
        assert_kernel_holds(&ns, syncer.ruleset(), "after the resync");

        assert_eq!(
            ns.ok(&["nft", "list", "table", "inet", "host-firewall"]),
            foreign_before
        );
    }
}
