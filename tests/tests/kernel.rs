//! The proxy engine driven against the real kernel, in a throwaway network namespace: resync,
//! incremental element-only changes, nothing sent when nothing changed, recovery after a failed
//! transaction, and other tables left alone.

use std::time::{Duration, Instant};

use nftproxy_bin::nft::{Backend, Nft};
use nftproxy_bin::sync::{drive, Kernel};
use nftproxy_core::engine::ResourceKind;
use nftproxy_core::snapshot::Endpoint;
use nftproxy_core::{readback, render, Engine, SyncTiming};
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
fn engine_sends_only_changes_and_recovers_from_failures() {
    require_root!();
    for backend in [Backend::Netlink, Backend::Json, Backend::Text] {
        let ns = Netns::new("sync");
        ns.run_stdin(&["nft", "-f", "-"], Some(FOREIGN));
        let foreign_before = ns.ok(&["nft", "list", "table", "inet", "host-firewall"]);

        let (mut snapshot, config) = load("session-affinity");
        let kernel = Kernel {
            nft: Nft::in_netns(&ns.name),
            backend,
            table: config.table_name.clone(),
        };
        // No coalescing delay and an immediate retry, so each step syncs at once.
        let timing = SyncTiming {
            min_sync_period: Duration::ZERO,
            sync_period: Duration::ZERO,
            ..SyncTiming::default()
        };
        let kinds = [ResourceKind::Service, ResourceKind::EndpointSlice];
        let mut engine = Engine::new(config, timing, &kinds, Instant::now()).unwrap();
        engine.replace_snapshot(snapshot.clone(), Instant::now());
        let first = drive(&mut engine, &kernel);
        let r = first.report().unwrap();
        assert!(r.full && r.ops > 10 && r.error.is_none(), "{r:?}");
        assert_eq!(first.actions[0].what, "read-back");
        assert_kernel_holds(&ns, engine.ruleset(), "after the first sync");

        // One endpoint more in one service: element changes only.
        let slice = snapshot.slices.values_mut().next().unwrap();
        let mut e: Endpoint = slice.endpoints[0].clone();
        e.address = "10.0.9.9".parse().unwrap();
        slice.endpoints.push(e);
        engine.replace_snapshot(snapshot.clone(), Instant::now());
        let step = drive(&mut engine, &kernel);
        let r = step.report().unwrap();
        assert!(
            !r.full && r.ops > 0 && r.ops <= 8 && r.services == 1,
            "{backend:?}: {r:?}"
        );
        assert_kernel_holds(&ns, engine.ruleset(), "after one endpoint more");
        engine.replace_snapshot(snapshot.clone(), Instant::now());
        assert!(drive(&mut engine, &kernel).actions.is_empty());

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
        engine.replace_snapshot(snapshot.clone(), Instant::now());
        let action = engine.poll(Instant::now()).expect("a transaction");
        let failed = kernel.execute(&mut engine, action);
        assert_eq!(failed.what, "apply");
        let msg = failed.report.unwrap().error.unwrap();
        assert!(
            msg.contains("nothing was changed") && msg.contains("hairpin"),
            "{msg}"
        );
        assert_eq!(
            ns.ok(&["nft", "list", "map", "ip", "nftproxy", "cluster-lb"]),
            before
        );
        assert_eq!(engine.stats().sync_failures, 1);
        // ...and the next sync (syncPeriod = 0: at once) resyncs from the kernel's state.
        let resync = drive(&mut engine, &kernel);
        let whats: Vec<&str> = resync.actions.iter().map(|a| a.what).collect();
        assert_eq!(whats[..2], ["read-back", "apply"], "{whats:?}");
        let r = resync.report().unwrap();
        assert!(r.full && r.error.is_none(), "{r:?}");
        assert_kernel_holds(&ns, engine.ruleset(), "after the resync");

        assert_eq!(
            ns.ok(&["nft", "list", "table", "inet", "host-firewall"]),
            foreign_before
        );
    }
}
