//! Every golden ruleset loads on the installed nft: checked with `nft --check` (text) and
//! `nft -j --check` (JSON), then really loaded, in a throwaway network namespace.

use nftproxy_tests::fixtures::{cases, fixtures_dir};
use nftproxy_tests::netns::Netns;
use nftproxy_tests::require_root;

fn check_case(case: &str) {
    let dir = fixtures_dir().join(case);
    let ns = Netns::new("check");
    for (file, json) in [("ruleset.nft", false), ("ruleset.json", true)] {
        let path = dir.join(file);
        let path = path.to_str().expect("utf-8 path");
        let mut argv = vec!["nft"];
        if json {
            argv.push("-j");
        }
        ns.ok(&["nft", "flush", "ruleset"]);
        let mut check = argv.clone();
        check.extend(["--check", "-f", path]);
        ns.ok(&check);
        let mut load = argv.clone();
        load.extend(["-f", path]);
        ns.ok(&load);
        let listed = ns.ok(&["nft", "list", "ruleset"]);
        assert!(
            listed.contains("chain services"),
            "{case}/{file}: nothing loaded"
        );
    }
}

#[test]
fn every_golden_ruleset_passes_nft_check_text_and_json() {
    require_root!();
    let cases = cases();
    assert!(!cases.is_empty());
    for case in cases {
        check_case(&case);
    }
}
