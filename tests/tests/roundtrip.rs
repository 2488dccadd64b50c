//! Reading rulesets back (`nftproxy_core::readback`) for every fixture:
//!
//! * `rendered_fixtures_read_back`: `from_nft_json(to_json(r)) == r` without the kernel;
//! * `kernel_listing_after_json_load` / `kernel_listing_after_text_load` (root): the fixture is
//!   loaded into a throwaway network namespace with `nft -j -f` or `nft -f`, listed with
//!   `nft -j list table ...` as the binary's apply does, and read back. After a text load the
//!   result equals `r` exactly. After a JSON load it equals `r` without set and map comments:
//!   nft 1.0.6 ignores those on JSON input, so the kernel never has them;
//! * `affinity_entries_are_not_configuration` (root): client affinity entries that the packet
//!   path added do not show up in the read-back ruleset;
//! * `foreign_rules_fail_loudly` (root): a rule another program added to our table is an error
//!   naming the chain and the rule handle.

use nftproxy_core::readback::{from_nft_json, ReadbackError};
use nftproxy_core::render;
use nftproxy_core::snapshot::IpFamily;
use nftproxy_core::Ruleset;
use nftproxy_tests::fixtures::{self, without_set_comments};
use nftproxy_tests::netns::{can_run_root_tests, Netns};

fn family_word(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// Lists the ruleset's tables in the namespace the way the binary's apply does: one
/// `nft -j list table` per family, read back separately and merged.
fn read_current(ns: &Netns, like: &Ruleset) -> Result<Ruleset, ReadbackError> {
    let mut current = Ruleset::default();
    for table in like.tables.values() {
        let listing = ns.ok(&[
            "nft",
            "-j",
            "list",
            "table",
            family_word(table.family),
            &table.name,
        ]);
        current.tables.extend(from_nft_json(&listing)?.tables);
    }
    Ok(current)
}

/// Loads a script (`-j` for JSON) into the namespace.
fn load(ns: &Netns, script: &str, json: bool) {
    let argv: &[&str] = if json {
        &["nft", "-j", "-f", "/dev/stdin"]
    } else {
        &["nft", "-f", "/dev/stdin"]
    };
    let out = ns.run_stdin(argv, Some(script));
    assert!(
        out.status.success(),
        "{argv:?} in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_fixtures_read_back() {
    let cases = fixtures::cases();
    assert!(!cases.is_empty());
    for case in cases {
        let ruleset = fixtures::compile_case(&case);
        let back =
            from_nft_json(&render::to_json(&ruleset)).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(back, ruleset, "{case}");
    }
}

#[test]
fn kernel_listing_after_json_load() {
    if !can_run_root_tests() {
        eprintln!("skipped: needs root, nft and iproute2");
        return;
    }
    for case in fixtures::cases() {
        let ruleset = fixtures::compile_case(&case);
        let ns = Netns::new("readback-json");
        load(&ns, &render::to_json(&ruleset), true);
        let back = read_current(&ns, &ruleset).unwrap_or_else(|e| panic!("{case}: {e}"));
        // The only difference the kernel imposes: set comments given in JSON are dropped by
        // nft 1.0.6 (newer versions keep them, which also passes).
        if back != ruleset {
            assert_eq!(back, without_set_comments(&ruleset), "{case}");
        }
    }
}

#[test]
fn kernel_listing_after_text_load() {
    if !can_run_root_tests() {
        eprintln!("skipped: needs root, nft and iproute2");
        return;
    }
    for case in fixtures::cases() {
        let ruleset = fixtures::compile_case(&case);
        let ns = Netns::new("readback-text");
        load(&ns, &render::to_nft_text(&ruleset), false);
        let back = read_current(&ns, &ruleset).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(back, ruleset, "{case}");
    }
}

#[test]
fn affinity_entries_are_not_configuration() {
    if !can_run_root_tests() {
        eprintln!("skipped: needs root, nft and iproute2");
        return;
    }
    let ruleset = fixtures::compile_case("session-affinity");
    let table = &ruleset.tables[&IpFamily::V4];
    let aff = &table.sets["aff-0"];
    assert!(aff.flags.dynamic && aff.elements.is_empty(), "{aff:?}");
    let ns = Netns::new("readback-aff");
    load(&ns, &render::to_json(&ruleset), true);
    // What `update @aff-0 { ip saddr . ip daddr . meta l4proto . th dport timeout 60s }`
    // leaves behind for a client.
    ns.ok(&[
        "nft",
        "add",
        "element",
        "ip",
        &table.name,
        "aff-0",
        "{ 10.0.9.9 . 172.30.0.110 . tcp . 80 timeout 60s }",
    ]);
    let listing = ns.ok(&["nft", "-j", "list", "set", "ip", &table.name, "aff-0"]);
    assert!(
        listing.contains("10.0.9.9"),
        "the element is in the kernel: {listing}"
    );
    let back = read_current(&ns, &ruleset).expect("read back");
    assert_eq!(back, without_set_comments(&ruleset));
}

#[test]
fn foreign_rules_fail_loudly() {
    if !can_run_root_tests() {
        eprintln!("skipped: needs root, nft and iproute2");
        return;
    }
    let ruleset = fixtures::compile_case("clusterip-protocols");
    let table = &ruleset.tables[&IpFamily::V4];
    let ns = Netns::new("readback-foreign");
    load(&ns, &render::to_json(&ruleset), true);
    ns.ok(&[
        "nft",
        "add",
        "rule",
        "ip",
        &table.name,
        "services",
        "counter",
    ]);
    let err = read_current(&ns, &ruleset).expect_err("a counter rule is not ours");
    match &err {
        ReadbackError::Rule {
            chain,
            handle,
            fragment,
            ..
        } => {
            assert_eq!(chain, "services");
            assert!(handle.is_some());
            assert!(fragment.contains("counter"), "{fragment}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        err.to_string().contains("in chain ip nftproxy services"),
        "{err}"
    );
}
