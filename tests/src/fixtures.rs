//! Golden fixtures: `fixtures/<case>/{snapshot.yaml, config.yaml}` in, `ruleset.{nft,json}` out.

use std::path::{Path, PathBuf};

use nftproxy_core::parse::{parse_config, parse_snapshot};
use nftproxy_core::{compile, render, ProxyConfig, Ruleset, Snapshot};

/// The repository's `fixtures/` directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
}

/// Every fixture case name, sorted.
pub fn cases() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("snapshot.yaml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Reads a case's snapshot and config (config.yaml is optional).
pub fn load(case: &str) -> (Snapshot, ProxyConfig) {
    let dir = fixtures_dir().join(case);
    let text = std::fs::read_to_string(dir.join("snapshot.yaml")).expect("snapshot.yaml");
    let snapshot = parse_snapshot(&text)
        .unwrap_or_else(|e| panic!("{case}: {e}"))
        .snapshot;
    let config = match std::fs::read_to_string(dir.join("config.yaml")) {
        Ok(text) => parse_config(&text).unwrap_or_else(|e| panic!("{case}: config: {e}")),
        Err(_) => ProxyConfig {
            node_name: "node-a".into(),
            ..ProxyConfig::default()
        },
    };
    (snapshot, config)
}

/// Compiles a case.
pub fn compile_case(case: &str) -> Ruleset {
    let (snapshot, config) = load(case);
    compile(&snapshot, &config)
        .unwrap_or_else(|e| panic!("{case}: {e}"))
        .ruleset
}

/// Compares (or, with `UPDATE_GOLDEN=1`, rewrites) a case's expected `ruleset.nft` and `ruleset.json`.
pub fn check_golden(case: &str) {
    let ruleset = compile_case(case);
    let dir = fixtures_dir().join(case);
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (file, got) in [
        ("ruleset.nft", render::to_nft_text(&ruleset)),
        ("ruleset.json", render::to_json(&ruleset)),
    ] {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &got).expect("write golden file");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != got {
            let diff: Vec<String> = want
                .lines()
                .zip(got.lines())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .take(5)
                .map(|(i, (a, b))| format!("line {}:\n  want: {a}\n  got:  {b}", i + 1))
                .collect();
            panic!(
                "{case}/{file} differs from the compiler's output ({} vs {} lines)\n{}\n\
                 regenerate with: UPDATE_GOLDEN=1 cargo test -p nftproxy-tests --test golden",
                want.lines().count(),
                got.lines().count(),
                diff.join("\n")
            );
        }
    }
}

/// The ruleset without set comments: nft 1.0.6 drops set comments given in JSON, so a ruleset
/// read back from the kernel after a JSON load has none.
pub fn without_set_comments(ruleset: &Ruleset) -> Ruleset {
    let mut out = ruleset.clone();
    for set in out.tables.values_mut().flat_map(|t| t.sets.values_mut()) {
        set.comment = None;
    }
    out
}
