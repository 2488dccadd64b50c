//! # nftproxy-core
//!
//! A pure compiler from Kubernetes Services and EndpointSlices to an nftables ruleset, in the
//! manner of kube-proxy's nftables mode. There is no IO here: no processes, sockets, clock or
//! kernel access. Node identity and configuration come in as parameters.
//!
//! ```text
//!  YAML/JSON ──parse──▶ Snapshot ─┐
//!                                 ├─compile──▶ Ruleset ──▶ render (nft text | libnftables JSON)
//!  KubeProxyConfiguration ─parse─▶ ProxyConfig ┘             ├──▶ plan(old, new) ──▶ Transaction
//!                                                            └──▶ trace(packet)  ──▶ verdict, endpoints
//! ```
//!
//! The ruleset keeps all per-service and per-endpoint state in named-map elements, so the number of
//! chains and anonymous sets does not grow with the number of services (see [`compile`]).
//!
//! ```
//! use nftproxy_core::{compile, parse, render, ProxyConfig};
//!
//! let yaml = r#"
//! apiVersion: v1
//! kind: Service
//! metadata: { name: web, namespace: default }
//! spec:
//!   clusterIP: 172.30.0.10
//!   ports: [{ name: http, port: 80, targetPort: 8080, protocol: TCP }]
//! ---
//! apiVersion: discovery.k8s.io/v1
//! kind: EndpointSlice
//! metadata: { name: web-1, namespace: default, labels: { kubernetes.io/service-name: web } }
//! addressType: IPv4
//! ports: [{ name: http, port: 8080, protocol: TCP }]
//! endpoints: [{ addresses: [10.0.1.5], nodeName: node-a }]
//! "#;
//! let input = parse::parse_snapshot(yaml).unwrap();
//! let config = ProxyConfig { node_name: "node-a".into(), ..ProxyConfig::default() };
//! let compiled = compile::compile(&input.snapshot, &config).unwrap();
//! let text = render::to_nft_text(&compiled.ruleset);
//! assert!(text.contains("172.30.0.10 . tcp . 80 : 10.0.1.5"));
//! ```

pub mod compile;
pub mod config;
pub mod conntrack;
pub mod engine;
pub mod fake;
pub mod parse;
pub mod plan;
pub mod readback;
pub mod render;
pub mod ruleset;
pub mod snapshot;
pub mod trace;

pub use compile::{compile, compile_with_previous, CompileError, Compiled};
pub use config::ProxyConfig;
pub use engine::{Action, Engine, Event, Object, ResourceKind, SyncTiming};
pub use ruleset::Ruleset;
pub use snapshot::Snapshot;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
