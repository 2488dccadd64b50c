//! Renderers: nft text (for review and golden files) and libnftables JSON (for applying).
//!
//! Besides the two whole-ruleset renderers, [`to_nft_text`] and [`to_json`], this module renders
//! single objects, so that a planner can build incremental transactions in either format:
//!
//! | command            | text                                   | JSON                          |
//! |--------------------|----------------------------------------|-------------------------------|
//! | `add table`        | [`table_text`]                         | [`table_json`]                |
//! | `add chain`        | [`chain_text`]                         | [`chain_json`]                |
//! | `flush`/`delete chain` | [`chain_ref_text`]                 | [`chain_ref_json`]            |
//! | `add set`/`map`    | [`set_text`]                           | [`set_json`], [`set_with_elements_json`] |
//! | `flush`/`delete set`/`map` | [`set_ref_text`]               | [`set_json`]                  |
//! | `add rule`         | [`rule_text`]                          | [`rule_json`]                 |
//! | `add`/`delete element` | [`element_text`], [`elements_text`] | [`element_json`], [`elements_json`] |
//!
//! Text fragments start with the object keyword and take the verb in front
//! ([`text_command`]: `add chain ip nftproxy services`); JSON objects are wrapped with
//! [`json_command`] and collected with [`json_document`]:
//!
//! ```
//! use nftproxy_core::render::{self, Verb};
//! use nftproxy_core::ruleset::{Table, Value};
//! use nftproxy_core::snapshot::IpFamily;
//!
//! let table = Table::new(IpFamily::V4, "nftproxy");
//! let key = [Value::Addr("10.0.0.1".parse().unwrap())];
//! let text = render::text_command(Verb::Delete, &render::element_text(&table, "ips", &key, None));
//! assert_eq!(text, "delete element ip nftproxy ips { 10.0.0.1 }");
//! let json = render::json_document([render::json_command(
//!     Verb::Delete,
//!     render::element_json(&table, "ips", &key, None),
//! )]);
//! assert_eq!(json["nftables"][0]["delete"]["element"]["elem"][0], "10.0.0.1");
//! ```
//!
//! Both formats are written for, and tested against, nft 1.0.6. Everything is deterministic:
//! equal rulesets render to identical strings.

mod json;
pub mod netlink;
mod text;

use std::fmt;

pub use json::{
    chain_json, chain_ref_json, element_item_json, element_json, elements_json, json_command,
    json_document, json_to_string, rule_json, set_json, set_with_elements_json, table_json,
    to_json, to_json_value,
};
pub use text::{
    chain_ref_text, chain_text, elem_data_text, element_item_text, element_text, elements_text,
    expr_text, family_text, rule_body_text, rule_text, set_keyword, set_ref_text, set_text,
    stmt_text, table_text, to_nft_text, value_text,
};

/// The verb of an nft command, shared by the text and JSON forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// `add`: create the object, or do nothing if it exists (elements: add, keeping existing).
    Add,
    /// `create`: like `add`, but fail if the object exists.
    Create,
    /// `delete`: remove the object (it must exist).
    Delete,
    /// `flush`: empty a chain (its rules) or a set or map (its elements).
    Flush,
}

impl Verb {
    /// The nft keyword, which is also the JSON command name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Flush => "flush",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One nft command line: `VERB FRAGMENT`, e.g. `flush chain ip nftproxy services`.
pub fn text_command(verb: Verb, fragment: &str) -> String {
    format!("{verb} {fragment}")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;
    use std::path::PathBuf;
    use std::process::{Command, Output};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ruleset::{
        BaseChain, Chain, ChainType, DataType, ElemData, Expr, Hook, KeyType, MapRef, MarkOp,
        MatchOp, MatchRight, Rule, Ruleset, Set, SetFlags, Stmt, Table, Value, Verdict,
    };
    use crate::snapshot::{IpFamily, Protocol};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn chain(name: &str, base: Option<(ChainType, Hook, i32)>, rules: Vec<Rule>) -> Chain {
        Chain {
            name: name.into(),
            base: base.map(|(chain_type, hook, priority)| BaseChain {
                chain_type,
                hook,
                priority,
            }),
            rules,
        }
    }

    fn set(
        name: &str,
        key: Vec<KeyType>,
        data: Option<DataType>,
        flags: SetFlags,
        elements: Vec<(Vec<Value>, Option<ElemData>)>,
    ) -> Set {
        let mut set = Set::new(name, key, data);
        set.flags = flags;
        set.elements = elements.into_iter().collect();
        set
    }

    fn rule(stmts: Vec<Stmt>) -> Rule {
        Rule::new(stmts)
    }

    fn matches(left: Expr, op: MatchOp, right: MatchRight) -> Stmt {
        Stmt::Match { left, op, right }
    }

    fn jump(chain: &str) -> Stmt {
        Stmt::Verdict(Verdict::Jump(chain.into()))
    }

    /// A table that uses every statement, expression, value, match right side, verdict, key
    /// type, data type, set flag, chain type and hook, wired so that the kernel accepts it
    /// (masquerade only behind nat postrouting, dnat only behind nat prerouting/output, reject
    /// only behind filter input/output).
    pub(crate) fn sample_table(family: IpFamily) -> Table {
        let (a1, a2, a3, b1, net, net2) = match family {
            IpFamily::V4 => (
                ip("172.30.0.41"),
                ip("172.30.0.42"),
                ip("1.2.3.4"),
                ip("10.180.0.1"),
                "10.0.0.0/8",
                "203.0.113.0/24",
            ),
            IpFamily::V6 => (
                ip("fd00:30::41"),
                ip("fd00:30::42"),
                ip("2001:db8::1:2:3:4"),
                ip("fd00:180::1"),
                "fd00::/16",
                "2001:db8:113::/48",
            ),
        };
        let addr = KeyType::addr(family);
        let saddr = || Expr::Saddr(family);
        let daddr = || Expr::Daddr(family);
        let svc_key = || Expr::Concat(vec![daddr(), Expr::L4Proto, Expr::Dport]);
        let svc_val =
            |a: IpAddr, p: Protocol, port| vec![Value::Addr(a), Value::Proto(p), Value::Port(port)];
        let prefix = |s: &str| Value::Prefix(s.parse().unwrap());
        let no_flags = SetFlags::default();
        let interval = SetFlags {
            interval: true,
            ..SetFlags::default()
        };

        let mut table = Table::new(family, "nftproxy");
        let mut cidrs = set(
            "cluster-cidrs",
            vec![addr],
            None,
            interval,
            vec![(vec![prefix(net)], None), (vec![Value::Addr(a3)], None)],
        );
        cidrs.comment = Some("pod \"CIDRs\"".into());
        let sets = vec![
            cidrs,
            set(
                "cluster-ips",
                vec![addr],
                None,
                no_flags,
                vec![(vec![Value::Addr(a1)], None), (vec![Value::Addr(a2)], None)],
            ),
            set(
                "hairpin",
                vec![addr, addr],
                None,
                no_flags,
                vec![(vec![Value::Addr(b1), Value::Addr(b1)], None)],
            ),
            set(
                "firewall-allow",
                vec![addr, KeyType::InetProto, KeyType::InetService, addr],
                None,
                interval,
                vec![(
                    vec![
                        Value::Addr(a3),
                        Value::Proto(Protocol::Tcp),
                        Value::Port(80),
                        prefix(net2),
                    ],
                    None,
                )],
            ),
            set(
                "aff-0",
                vec![addr, addr, KeyType::InetProto, KeyType::InetService],
                None,
                SetFlags {
                    interval: false,
                    dynamic: true,
                    timeout: Some(10800),
                },
                vec![],
            ),
            set(
                "seen",
                vec![addr],
                None,
                SetFlags {
                    interval: false,
                    dynamic: true,
                    timeout: None,
                },
                vec![],
            ),
            set(
                "service-ips",
                vec![addr, KeyType::InetProto, KeyType::InetService],
                Some(DataType::Verdict),
                no_flags,
                vec![
                    (
                        svc_val(a1, Protocol::Tcp, 80),
                        Some(ElemData::Verdict(Verdict::Goto("lb-2".into()))),
                    ),
                    (
                        svc_val(a1, Protocol::Udp, 53),
                        Some(ElemData::Verdict(Verdict::Jump("mark-for-masq".into()))),
                    ),
                    (
                        svc_val(a2, Protocol::Sctp, 9),
                        Some(ElemData::Verdict(Verdict::Accept)),
                    ),
                    (
                        svc_val(a2, Protocol::Tcp, 22),
                        Some(ElemData::Verdict(Verdict::Drop)),
                    ),
                    (
                        svc_val(a3, Protocol::Tcp, 80),
                        Some(ElemData::Verdict(Verdict::Return)),
                    ),
                ],
            ),
            set(
                "ep-0-addr",
                vec![addr, KeyType::InetProto, KeyType::InetService],
                Some(DataType::Addr),
                no_flags,
                vec![(svc_val(a1, Protocol::Tcp, 80), Some(ElemData::Addr(b1)))],
            ),
            set(
                "ep-0-port",
                vec![addr, KeyType::InetProto, KeyType::InetService],
                Some(DataType::InetService),
                no_flags,
                vec![(svc_val(a1, Protocol::Tcp, 80), Some(ElemData::Port(8080)))],
            ),
            set(
                "no-endpoint-nodeports",
                vec![KeyType::InetProto, KeyType::InetService],
                Some(DataType::Verdict),
                no_flags,
                vec![(
                    vec![Value::Proto(Protocol::Tcp), Value::Port(3002)],
                    Some(ElemData::Verdict(Verdict::Drop)),
                )],
            ),
        ];
        for s in sets {
            table.sets.insert(s.name.clone(), s);
        }

        let mark = 0x4000;
        let chains = vec![
            chain(
                "mark-for-masq",
                None,
                vec![rule(vec![Stmt::SetMark(MarkOp::Or(mark))])],
            ),
            chain(
                "masquerading",
                None,
                vec![
                    rule(vec![
                        matches(
                            Expr::CtStatus,
                            MatchOp::Eq,
                            MatchRight::Value(Value::CtStatusDnat),
                        ),
                        matches(
                            Expr::Concat(vec![saddr(), daddr()]),
                            MatchOp::Eq,
                            MatchRight::Set("hairpin".into()),
                        ),
                        jump("mark-for-masq"),
                    ])
                    .with_comment("hairpin"),
                    rule(vec![
                        matches(
                            Expr::MarkAnd(mark),
                            MatchOp::Eq,
                            MatchRight::Value(Value::Int(0)),
                        ),
                        Stmt::Verdict(Verdict::Return),
                    ]),
                    rule(vec![Stmt::SetMark(MarkOp::Xor(mark))]),
                    rule(vec![Stmt::Masquerade { fully_random: true }]),
                    rule(vec![Stmt::Masquerade {
                        fully_random: false,
                    }]),
                ],
            ),
            chain(
                "firewall-check",
                None,
                vec![
                    rule(vec![
                        matches(
                            Expr::Concat(vec![daddr(), Expr::L4Proto, Expr::Dport, saddr()]),
                            MatchOp::Ne,
                            MatchRight::Set("firewall-allow".into()),
                        ),
                        matches(daddr(), MatchOp::Eq, MatchRight::Value(Value::Addr(a3))),
                        Stmt::Verdict(Verdict::Drop),
                    ]),
                    rule(vec![
                        matches(
                            saddr(),
                            MatchOp::Ne,
                            MatchRight::AnonSet(vec![prefix(net), Value::Addr(b1)]),
                        ),
                        matches(
                            Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                            MatchOp::Eq,
                            MatchRight::AnonSet(vec![
                                Value::Concat(vec![Value::Proto(Protocol::Tcp), Value::Port(80)]),
                                Value::Concat(vec![Value::Proto(Protocol::Udp), Value::Port(53)]),
                            ]),
                        ),
                        Stmt::Verdict(Verdict::Accept),
                    ]),
                    rule(vec![
                        matches(
                            Expr::FibAddrType { saddr: true },
                            MatchOp::Eq,
                            MatchRight::Value(Value::FibLocal),
                        ),
                        matches(Expr::Mark, MatchOp::Ne, MatchRight::Value(Value::Int(1))),
                        Stmt::Verdict(Verdict::Return),
                    ]),
                    rule(vec![
                        matches(
                            Expr::FibAddrType { saddr: false },
                            MatchOp::Ne,
                            MatchRight::Value(Value::FibLocal),
                        ),
                        matches(
                            Expr::CtStatus,
                            MatchOp::Ne,
                            MatchRight::Value(Value::CtStatusDnat),
                        ),
                        matches(
                            Expr::MarkAnd(mark),
                            MatchOp::Ne,
                            MatchRight::Value(Value::Int(0)),
                        ),
                        matches(Expr::Mark, MatchOp::Eq, MatchRight::Value(Value::Int(mark))),
                        Stmt::Verdict(Verdict::Accept),
                    ]),
                    rule(vec![
                        matches(
                            Expr::Concat(vec![saddr(), Expr::Dport]),
                            MatchOp::Eq,
                            MatchRight::Value(Value::Concat(vec![
                                Value::Addr(b1),
                                Value::Port(443),
                            ])),
                        ),
                        matches(
                            Expr::L4Proto,
                            MatchOp::Eq,
                            MatchRight::Value(Value::Proto(Protocol::Tcp)),
                        ),
                        matches(Expr::Dport, MatchOp::Ne, MatchRight::Value(Value::Port(22))),
                        Stmt::Verdict(Verdict::Drop),
                    ]),
                ],
            ),
            chain(
                "reject-check",
                None,
                vec![
                    rule(vec![
                        matches(daddr(), MatchOp::Eq, MatchRight::Set("cluster-ips".into())),
                        Stmt::Reject,
                    ])
                    .with_comment("no endpoints"),
                    rule(vec![
                        matches(
                            Expr::CtState,
                            MatchOp::Ne,
                            MatchRight::Value(Value::CtStateNew),
                        ),
                        Stmt::Verdict(Verdict::Return),
                    ]),
                    rule(vec![Stmt::Vmap {
                        key: Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                        map: MapRef::Named("no-endpoint-nodeports".into()),
                    }]),
                ],
            ),
            chain(
                "services",
                None,
                vec![
                    rule(vec![
                        matches(
                            saddr(),
                            MatchOp::Eq,
                            MatchRight::Set("cluster-cidrs".into()),
                        ),
                        Stmt::Vmap {
                            key: svc_key(),
                            map: MapRef::Named("service-ips".into()),
                        },
                    ]),
                    rule(vec![
                        matches(
                            saddr(),
                            MatchOp::Ne,
                            MatchRight::Set("cluster-cidrs".into()),
                        ),
                        jump("mark-for-masq"),
                    ]),
                    rule(vec![Stmt::Vmap {
                        key: svc_key(),
                        map: MapRef::Named("service-ips".into()),
                    }]),
                ],
            ),
            chain(
                "lb-2",
                None,
                vec![
                    rule(vec![
                        matches(
                            Expr::Concat(vec![saddr(), daddr(), Expr::L4Proto, Expr::Dport]),
                            MatchOp::Eq,
                            MatchRight::Set("aff-0".into()),
                        ),
                        Stmt::Verdict(Verdict::Goto("ep-0".into())),
                    ]),
                    rule(vec![Stmt::Vmap {
                        key: Expr::Numgen {
                            modulus: 2,
                            offset: 0,
                        },
                        map: MapRef::Anon(vec![
                            (Value::Int(0), Verdict::Goto("ep-0".into())),
                            (Value::Int(1), Verdict::Jump("mark-for-masq".into())),
                        ]),
                    }]),
                    rule(vec![Stmt::Vmap {
                        key: Expr::Numgen {
                            modulus: 3,
                            offset: 1,
                        },
                        map: MapRef::Anon(vec![
                            (Value::Int(1), Verdict::Accept),
                            (Value::Int(2), Verdict::Drop),
                            (Value::Int(3), Verdict::Return),
                        ]),
                    }]),
                ],
            ),
            chain(
                "ep-0",
                None,
                vec![
                    rule(vec![Stmt::SetUpdate {
                        set: "aff-0".into(),
                        key: Expr::Concat(vec![saddr(), daddr(), Expr::L4Proto, Expr::Dport]),
                        timeout: Some(10800),
                    }]),
                    rule(vec![Stmt::SetUpdate {
                        set: "seen".into(),
                        key: saddr(),
                        timeout: None,
                    }]),
                    rule(vec![Stmt::DnatMap {
                        key: svc_key(),
                        addr_map: "ep-0-addr".into(),
                        port_map: "ep-0-port".into(),
                    }]),
                ],
            ),
            chain(
                "filter-prerouting",
                Some((ChainType::Filter, Hook::Prerouting, -110)),
                vec![rule(vec![
                    matches(
                        Expr::CtState,
                        MatchOp::Eq,
                        MatchRight::Value(Value::CtStateNew),
                    ),
                    jump("firewall-check"),
                ])],
            ),
            chain(
                "filter-input",
                Some((ChainType::Filter, Hook::Input, -110)),
                vec![rule(vec![
                    matches(
                        Expr::CtState,
                        MatchOp::Eq,
                        MatchRight::Value(Value::CtStateNew),
                    ),
                    jump("reject-check"),
                ])],
            ),
            chain(
                "filter-forward",
                Some((ChainType::Filter, Hook::Forward, -110)),
                vec![rule(vec![jump("reject-check")])],
            ),
            chain(
                "filter-output",
                Some((ChainType::Filter, Hook::Output, -110)),
                vec![
                    rule(vec![jump("reject-check")]),
                    rule(vec![jump("firewall-check")]),
                ],
            ),
            chain(
                "filter-postrouting",
                Some((ChainType::Filter, Hook::Postrouting, 0)),
                vec![rule(vec![
                    matches(
                        Expr::MarkAnd(mark),
                        MatchOp::Ne,
                        MatchRight::Value(Value::Int(0)),
                    ),
                    Stmt::Verdict(Verdict::Accept),
                ])],
            ),
            chain(
                "nat-prerouting",
                Some((ChainType::Nat, Hook::Prerouting, -100)),
                vec![rule(vec![jump("services")]).with_comment("services")],
            ),
            chain(
                "nat-output",
                Some((ChainType::Nat, Hook::Output, -100)),
                vec![rule(vec![jump("services")])],
            ),
            chain(
                "nat-postrouting",
                Some((ChainType::Nat, Hook::Postrouting, 100)),
                vec![rule(vec![jump("masquerading")])],
            ),
            chain("empty", None, vec![]),
        ];
        for c in chains {
            table.chains.insert(c.name.clone(), c);
        }
        table
    }

    /// [`sample_table`] for both families.
    pub(crate) fn sample_ruleset() -> Ruleset {
        let mut ruleset = Ruleset::default();
        // Inserted ip6 first: rendering must still put ip first.
        ruleset
            .tables
            .insert(IpFamily::V6, sample_table(IpFamily::V6));
        ruleset
            .tables
            .insert(IpFamily::V4, sample_table(IpFamily::V4));
        ruleset
    }

    #[test]
    fn verbs_and_commands() {
        let table = Table::new(IpFamily::V4, "nftproxy");
        assert_eq!(
            text_command(Verb::Flush, &chain_ref_text(&table, "services")),
            "flush chain ip nftproxy services"
        );
        assert_eq!(Verb::Create.to_string(), "create");
        assert_eq!(
            json_command(Verb::Flush, chain_ref_json(&table, "c")),
            serde_json::json!({"flush": {"chain": {"family": "ip", "table": "nftproxy", "name": "c"}}})
        );
    }

    #[test]
    fn determinism_of_both_formats() {
        let a = sample_ruleset();
        let b = sample_ruleset();
        assert_eq!(to_nft_text(&a), to_nft_text(&b));
        assert_eq!(to_json(&a), to_json(&b));
        assert_eq!(to_json_value(&a), to_json_value(&b));
        assert_eq!(to_nft_text(&Ruleset::default()), "");
        assert_eq!(to_json(&Ruleset::default()), "{\n  \"nftables\": []\n}\n");
    }

    /// Deletes a network namespace when dropped, also when the test fails.
    struct Netns(String);

    impl Netns {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "nftproxy-render-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip netns add {name}: {}",
                stderr(&out)
            );
            Self(name)
        }

        fn nft(&self, args: &[&str]) -> Output {
            Command::new("ip")
                .args(["netns", "exec", &self.0, "nft"])
                .args(args)
                .output()
                .unwrap()
        }

        fn nft_ok(&self, args: &[&str]) -> String {
            let out = self.nft(args);
            assert!(
                out.status.success(),
                "nft {args:?} in {}: {}",
                self.0,
                stderr(&out)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }

    /// Removes a temporary file when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("nftproxy-render-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Drops the `comment` lines of set and map declarations from an `nft list` output.
    fn without_set_comments(listing: &str) -> String {
        listing
            .lines()
            .filter(|l| !l.starts_with("\t\tcomment "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Asserts two listings are equal, reporting the first differing line.
    fn assert_same_listing(a: &str, b: &str) {
        for (n, (la, lb)) in a.lines().zip(b.lines()).enumerate() {
            assert_eq!(la, lb, "listings differ at line {}", n + 1);
        }
        assert_eq!(
            a.lines().count(),
            b.lines().count(),
            "listings differ in length"
        );
    }

    fn stderr(out: &Output) -> String {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Why the nft tests cannot run here, if they cannot.
    fn skip_reason() -> Option<&'static str> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .unwrap_or("");
        if euid != "0" {
            return Some("not root");
        }
        match Command::new("nft").arg("--version").output() {
            Ok(out) if out.status.success() => None,
            _ => Some("nft is missing"),
        }
    }

    /// Checks and loads both renderings of a ruleset covering every construct with the real
    /// nft in throwaway network namespaces, and compares what the kernel holds afterwards.
    #[test]
    fn nft_accepts_and_loads_both_formats() {
        if let Some(reason) = skip_reason() {
            eprintln!("skipping nft_accepts_and_loads_both_formats: {reason}");
            return;
        }
        let ruleset = sample_ruleset();
        let text = TempFile::new("ruleset.nft", &to_nft_text(&ruleset));
        let json = TempFile::new("ruleset.json", &to_json(&ruleset));

        let from_text = Netns::new();
        from_text.nft_ok(&["-c", "-f", text.path()]);
        from_text.nft_ok(&["-j", "-c", "-f", json.path()]);
        from_text.nft_ok(&["-f", text.path()]);
        let text_listing = from_text.nft_ok(&["list", "ruleset"]);
        assert!(text_listing.contains("table ip nftproxy"), "{text_listing}");
        assert!(
            text_listing.contains("table ip6 nftproxy"),
            "{text_listing}"
        );

        let from_json = Netns::new();
        from_json.nft_ok(&["-j", "-f", json.path()]);
        let json_listing = from_json.nft_ok(&["list", "ruleset"]);
        assert!(!json_listing.trim().is_empty());
        // Both renderings must describe the same ruleset, except for set comments, which nft
        // 1.0.6 drops from JSON input.
        assert_same_listing(&without_set_comments(&text_listing), &json_listing);

        // Incremental commands built from the fragment helpers apply on top of the ruleset.
        let table = &ruleset.tables[&IpFamily::V6];
        let chain = &table.chains["services"];
        let vmap = &table.sets["service-ips"];
        let (key, data) = vmap.elements.iter().next().unwrap();
        let extra_chain = Chain {
            name: "extra".into(),
            base: None,
            rules: vec![],
        };
        let extra_set = Set::new("extra", vec![KeyType::Ipv6Addr], Some(DataType::Verdict));
        let script = [
            text_command(Verb::Flush, &chain_ref_text(table, "services")),
            text_command(Verb::Add, &rule_text(table, "services", &chain.rules[0])),
            text_command(Verb::Delete, &element_text(table, &vmap.name, key, None)),
            text_command(
                Verb::Add,
                &element_text(table, &vmap.name, key, data.as_ref()),
            ),
            text_command(Verb::Add, &chain_text(table, &extra_chain)),
            text_command(Verb::Delete, &chain_ref_text(table, "extra")),
            text_command(Verb::Flush, &set_ref_text(table, &table.sets["seen"])),
            text_command(Verb::Add, &set_text(table, &extra_set)),
            text_command(Verb::Delete, &set_ref_text(table, &extra_set)),
        ]
        .join("\n");
        let script = TempFile::new("update.nft", &format!("{script}\n"));
        from_text.nft_ok(&["-f", script.path()]);

        let commands = json_document([
            json_command(Verb::Flush, chain_ref_json(table, "services")),
            json_command(Verb::Add, rule_json(table, "services", &chain.rules[0])),
            json_command(Verb::Delete, element_json(table, &vmap.name, key, None)),
            json_command(
                Verb::Add,
                element_json(table, &vmap.name, key, data.as_ref()),
            ),
            json_command(Verb::Add, chain_json(table, &extra_chain)),
            json_command(Verb::Delete, chain_ref_json(table, "extra")),
            json_command(Verb::Flush, set_json(table, &table.sets["seen"])),
            json_command(Verb::Add, set_json(table, &extra_set)),
            json_command(Verb::Delete, set_json(table, &extra_set)),
        ]);
        let update = TempFile::new("update.json", &json_to_string(&commands));
        from_json.nft_ok(&["-j", "-f", update.path()]);
        let text_updated = from_text.nft_ok(&["list", "ruleset"]);
        assert_ne!(text_updated, text_listing);
        assert_same_listing(
            &without_set_comments(&text_updated),
            &from_json.nft_ok(&["list", "ruleset"]),
        );
    }
}
