//! Peak memory of the proxy engine's first full sync, as the daemon does it (with mimalloc, the
//! daemon's allocator).
//!
//! ```text
//! cargo run --release -p nftproxy-core --example memory -- SNAPSHOT.json [--engine-only] [--parse]
//! ```
//!
//! The snapshot is one `nftproxy-bench --keep-files` writes (`snapshot-10000x10-base.json`, one
//! object per line). Its objects reach the engine as the daemon's watches deliver them: one
//! `InitApply` event per object between `InitStarted` and `InitDone` (with `--parse`: the whole
//! file parsed at once and handed over with `replace_snapshot`, whose parse peaks far above the
//! engine's own figures). The engine is driven against [`Fake`] until the first full sync is done. With `--engine-only`
//! there is no Fake: the read-back finds nothing and each transaction is dropped unapplied, so the
//! figures are the engine's own (with the transaction it hands out).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use nftproxy_core::engine::{Action, Engine, Event, Object, ResourceKind, SyncTiming};
use nftproxy_core::fake::Fake;
use nftproxy_core::parse::parse_snapshot;
use nftproxy_core::ProxyConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `VmRSS` and `VmHWM` of this process, in MB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn report(stage: &str) -> f64 {
    let (now, peak) = rss();
    println!("{stage:<40} VmRSS {now:7.1} MB   VmHWM {peak:7.1} MB");
    now
}

/// Drives `engine` until it has nothing to do at `now`; returns the operations it sent. Without
/// the Fake (`engine_only`), a read-back finds what the engine last sent.
fn drive(engine: &mut Engine, fake: &mut Fake, engine_only: bool, now: Instant) -> usize {
    let mut ops = 0;
    while let Some(action) = engine.poll(now) {
        match action {
            Action::ReadBack => {
                let kernel = if engine_only {
                    engine.ruleset().clone()
                } else {
                    fake.dump().clone()
                };
                engine.readback_done(Ok(kernel), now);
            }
            Action::Apply(a) => {
                ops += a.transaction.ops.len();
                let result = if engine_only {
                    Ok(())
                } else {
                    fake.apply(&a.transaction).map_err(|e| e.to_string())
                };
                drop(a);
                engine.apply_done(result, now);
            }
            Action::DeleteConntrack(_) => engine.conntrack_done(Ok(0), now),
            _ => break,
        }
    }
    ops
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let engine_only = args.iter().any(|a| a == "--engine-only");
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "/tmp/mem-snap/snapshot-10000x10-base.json".into());
    let base = report("start");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let config = ProxyConfig {
        node_name: "node-0".into(),
        node_ips: vec!["192.168.0.2".parse().expect("an address")],
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("a prefix")],
        ..ProxyConfig::default()
    };
    let timing = SyncTiming {
        min_sync_period: Duration::ZERO,
        ..SyncTiming::default()
    };
    let kinds = [
        ResourceKind::Service,
        ResourceKind::EndpointSlice,
        ResourceKind::Node,
    ];
    let mut engine = Engine::new(config, timing, &kinds, Instant::now()).expect("an engine");
    if args.iter().any(|a| a == "--parse") {
        let snapshot = parse_snapshot(&text).expect("a valid snapshot").snapshot;
        report("snapshot parsed");
        engine.replace_snapshot(snapshot, Instant::now());
    } else {
        for kind in kinds {
            engine.handle(Event::InitStarted(kind), Instant::now());
        }
        for line in text.lines() {
            let line = line.trim_end_matches(',');
            if !line.starts_with('{') || line.contains(r#""kind":"List""#) {
                continue;
            }
            let object: serde_json::Value = serde_json::from_str(line).expect("an object");
            let object = match object["kind"].as_str() {
                Some("Service") => Object::from(
                    serde_json::from_value::<corev1::Service>(object).expect("a Service"),
                ),
                Some("EndpointSlice") => Object::from(
                    serde_json::from_value::<discoveryv1::EndpointSlice>(object)
                        .expect("an EndpointSlice"),
                ),
                Some("Node") => {
                    Object::from(serde_json::from_value::<corev1::Node>(object).expect("a Node"))
                }
                _ => continue,
            };
            engine.handle(Event::InitApply(object), Instant::now());
        }
        for kind in kinds {
            engine.handle(Event::InitDone(kind), Instant::now());
        }
    }
    drop(text);
    let parsed = report("objects handed to the engine");
    let mut fake = Fake::new();
    let start = Instant::now();
    let ops = drive(&mut engine, &mut fake, engine_only, start);
    let first = report(&format!("first full sync done ({ops} ops)"));
    let (_, first_peak) = rss();
    // The hourly full sync: a read-back of everything, compiled and compared again.
    let later = start + timing.full_sync_period + Duration::from_secs(1);
    let ops = drive(&mut engine, &mut fake, engine_only, later);
    report(&format!("next full sync done ({ops} ops)"));
    let elements: usize = engine
        .ruleset()
        .tables
        .values()
        .flat_map(|t| t.sets.values())
        .map(|s| s.elements.len())
        .sum();
    let (_, peak) = rss();
    drop(fake);
    println!(
        "{elements} elements; {}: after the first full sync VmRSS {first:.1} MB, VmHWM \
         {first_peak:.1} MB; after the next VmHWM {peak:.1} MB (at start {base:.1} MB; objects \
         handed over {parsed:.1} MB)",
        if engine_only {
            "engine only"
        } else {
            "engine and Fake"
        },
    );
}
