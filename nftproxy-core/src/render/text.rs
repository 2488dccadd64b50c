//! nft text rendering: the whole ruleset as a declarative script, and single objects as fragments
//! for `add`/`delete`/`flush` commands.
//!
//! The output follows `nft list ruleset` closely (tabs, one element per line, `type`/`hook`/
//! `priority` lines) so that a golden file and a live listing can be compared by eye.

use std::fmt::Write as _;

use crate::ruleset::{
    Chain, ChainType, DataType, ElemData, Expr, KeyType, MapRef, MarkOp, MatchOp, MatchRight, Rule,
    Ruleset, Set, Stmt, Table, Value, Verdict,
};
use crate::snapshot::IpFamily;

/// The nft family keyword of a table family: `ip` or `ip6`.
pub fn family_text(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// Renders the whole ruleset as an nft script: one `table FAMILY NAME { ... }` block per table,
/// `ip` before `ip6`; inside, sets and maps sorted by name, then chains sorted by name.
pub fn to_nft_text(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    for table in ruleset.tables.values() {
        write_table(&mut out, table);
    }
    out
}

fn write_table(out: &mut String, table: &Table) {
    let _ = writeln!(out, "table {} {} {{", family_text(table.family), table.name);
    let mut first = true;
    for set in table.sets.values() {
        if !first {
            out.push('\n');
        }
        first = false;
        write_set_block(out, table.family, set);
    }
    for chain in table.chains.values() {
        if !first {
            out.push('\n');
        }
        first = false;
        write_chain_block(out, chain);
    }
    out.push_str("}\n");
}

fn write_set_block(out: &mut String, family: IpFamily, set: &Set) {
    let _ = writeln!(out, "\t{} {} {{", set_keyword(set), set.name);
    for line in set_properties(family, set) {
        let _ = writeln!(out, "\t\t{line}");
    }
    let mut elements = set.elements.iter();
    if let Some((key, data)) = elements.next() {
        let _ = write!(
            out,
            "\t\telements = {{ {}",
            element_item_text(key, data.as_ref())
        );
        for (key, data) in elements {
            // nft's own listing aligns continuation lines under the first element.
            let _ = write!(
                out,
                ",\n\t\t\t     {}",
                element_item_text(key, data.as_ref())
            );
        }
        out.push_str(" }\n");
    }
    out.push_str("\t}\n");
}

fn write_chain_block(out: &mut String, chain: &Chain) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(base) = chain_base_text(chain) {
        let _ = writeln!(out, "\t\t{base}");
    }
    for rule in &chain.rules {
        let _ = writeln!(out, "\t\t{}", rule_body_text(rule));
    }
    out.push_str("\t}\n");
}

/// `set` or `map`, the nft keyword for a named set or map.
pub fn set_keyword(set: &Set) -> &'static str {
    if set.is_map() {
        "map"
    } else {
        "set"
    }
}

/// The property lines of a set declaration (`type ...`, `flags ...`, `timeout ...`,
/// `comment ...`), without elements and without trailing `;`.
fn set_properties(family: IpFamily, set: &Set) -> Vec<String> {
    let mut props = Vec::new();
    let key = set
        .key
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(" . ");
    match set.data {
        None => props.push(format!("type {key}")),
        Some(data) => props.push(format!("type {key} : {}", data_type_text(family, data))),
    }
    let mut flags = Vec::new();
    if set.flags.interval {
        flags.push("interval");
    }
    if set.flags.dynamic {
        flags.push("dynamic");
    }
    if set.flags.timeout.is_some() {
        flags.push("timeout");
    }
    if !flags.is_empty() {
        props.push(format!("flags {}", flags.join(",")));
    }
    if let Some(timeout) = set.flags.timeout {
        props.push(format!("timeout {timeout}s"));
    }
    if let Some(comment) = &set.comment {
        props.push(format!("comment {}", quote(comment)));
    }
    props
}

/// The nft type name of a map's data; an address map takes the table family's address type.
fn data_type_text(family: IpFamily, data: DataType) -> &'static str {
    match data {
        DataType::Verdict => "verdict",
        DataType::InetService => KeyType::InetService.as_str(),
        DataType::Addr => KeyType::addr(family).as_str(),
    }
}

fn chain_base_text(chain: &Chain) -> Option<String> {
    chain.base.map(|base| {
        let chain_type = match base.chain_type {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        };
        format!(
            "type {chain_type} hook {} priority {}; policy accept;",
            base.hook.as_str(),
            base.priority
        )
    })
}

/// `table FAMILY NAME`, for `add table` / `delete table` / `flush table`.
pub fn table_text(table: &Table) -> String {
    format!("table {} {}", family_text(table.family), table.name)
}

/// `chain FAMILY TABLE NAME`, the chain reference for `flush chain` / `delete chain`.
pub fn chain_ref_text(table: &Table, chain: &str) -> String {
    format!("chain {} {} {chain}", family_text(table.family), table.name)
}

/// The chain declaration for `add chain`: a regular chain renders as its reference
/// (`chain ip T C`), a base chain as `chain ip T C { type nat hook output priority -100; policy
/// accept; }`. Rules are not included; add them with [`rule_text`].
pub fn chain_text(table: &Table, chain: &Chain) -> String {
    let reference = chain_ref_text(table, &chain.name);
    match chain_base_text(chain) {
        Some(base) => format!("{reference} {{ {base} }}"),
        None => reference,
    }
}

/// `set FAMILY TABLE NAME` or `map FAMILY TABLE NAME`, for `delete set` / `delete map` /
/// `flush set` / `flush map`.
pub fn set_ref_text(table: &Table, set: &Set) -> String {
    format!(
        "{} {} {} {}",
        set_keyword(set),
        family_text(table.family),
        table.name,
        set.name
    )
}

/// The set or map declaration for `add set` / `add map`, without elements:
/// `map ip T NAME { type ipv4_addr . inet_proto . inet_service : verdict; flags interval; }`.
/// Add elements with [`elements_text`].
pub fn set_text(table: &Table, set: &Set) -> String {
    let mut out = set_ref_text(table, set);
    out.push_str(" {");
    for prop in set_properties(table.family, set) {
        let _ = write!(out, " {prop};");
    }
    out.push_str(" }");
    out
}

/// `rule FAMILY TABLE CHAIN STATEMENTS [comment "..."]`, for `add rule` / `insert rule`.
pub fn rule_text(table: &Table, chain: &str, rule: &Rule) -> String {
    format!(
        "rule {} {} {chain} {}",
        family_text(table.family),
        table.name,
        rule_body_text(rule)
    )
}

/// The statements of a rule and its comment, as written inside a chain block.
pub fn rule_body_text(rule: &Rule) -> String {
    let mut parts: Vec<String> = rule.stmts.iter().map(stmt_text).collect();
    if let Some(comment) = &rule.comment {
        parts.push(format!("comment {}", quote(comment)));
    }
    parts.join(" ")
}

/// `element FAMILY TABLE SET { KEY [: DATA] }` for one element; see [`elements_text`].
pub fn element_text(table: &Table, set: &str, key: &[Value], data: Option<&ElemData>) -> String {
    elements_text(table, set, [(key, data)])
}

/// `element FAMILY TABLE SET { KEY [: DATA], ... }` for `add element` / `delete element`.
/// Pass `None` as data for set elements and for deletions (nft deletes by key).
pub fn elements_text<'a>(
    table: &Table,
    set: &str,
    elements: impl IntoIterator<Item = (&'a [Value], Option<&'a ElemData>)>,
) -> String {
    let items: Vec<String> = elements
        .into_iter()
        .map(|(key, data)| element_item_text(key, data))
        .collect();
    format!(
        "element {} {} {set} {{ {} }}",
        family_text(table.family),
        table.name,
        items.join(", ")
    )
}

/// One element as written between braces: `KEY . KEY [: DATA]`.
pub fn element_item_text(key: &[Value], data: Option<&ElemData>) -> String {
    let key = key.iter().map(value_text).collect::<Vec<_>>().join(" . ");
    match data {
        None => key,
        Some(data) => format!("{key} : {}", elem_data_text(data)),
    }
}

/// Map element data: a verdict, an address or a port.
pub fn elem_data_text(data: &ElemData) -> String {
    match data {
        ElemData::Verdict(v) => v.to_string(),
        ElemData::Addr(a) => a.to_string(),
        ElemData::Port(p) => p.to_string(),
    }
}

/// One statement.
pub fn stmt_text(stmt: &Stmt) -> String {
    match stmt {
        Stmt::Match { left, op, right } => match_text(left, *op, right),
        Stmt::Verdict(v) => v.to_string(),
        Stmt::Vmap { key, map } => {
            format!("{} vmap {}", expr_text(key), verdict_map_text(key, map))
        }
        Stmt::SetMark(MarkOp::Or(bits)) => format!("meta mark set meta mark | {}", mark(*bits)),
        Stmt::SetMark(MarkOp::Xor(bits)) => format!("meta mark set meta mark ^ {}", mark(*bits)),
        Stmt::SetUpdate { set, key, timeout } => match timeout {
            Some(t) => format!("update @{set} {{ {} timeout {t}s }}", expr_text(key)),
            None => format!("update @{set} {{ {} }}", expr_text(key)),
        },
        Stmt::DnatMap {
            key,
            addr_map,
            port_map,
        } => {
            let key = expr_text(key);
            format!("dnat to {key} map @{addr_map} : {key} map @{port_map}")
        }
        Stmt::Masquerade { fully_random: true } => "masquerade fully-random".to_owned(),
        Stmt::Masquerade {
            fully_random: false,
        } => "masquerade".to_owned(),
        Stmt::Reject => "reject".to_owned(),
    }
}

fn verdict_map_text(key: &Expr, map: &MapRef<Verdict>) -> String {
    match map {
        MapRef::Named(name) => format!("@{name}"),
        MapRef::Anon(entries) => {
            let items: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{} : {v}", value_text_for(key, k)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// Is this a bitmask left side, where the implicit operator means "all bits set"?
pub(super) fn is_flag_expr(expr: &Expr) -> bool {
    matches!(expr, Expr::CtState | Expr::CtStatus)
}

fn match_text(left: &Expr, op: MatchOp, right: &MatchRight) -> String {
    let l = expr_text(left);
    let single;
    let right = match right {
        // nft 1.0.6 refuses to compare a concatenation with a single concatenated value ("Use
        // concatenations with sets and maps, not singleton values"); a one-element anonymous
        // set means the same.
        MatchRight::Value(v @ Value::Concat(_)) => {
            single = MatchRight::AnonSet(vec![v.clone()]);
            &single
        }
        right => right,
    };
    match right {
        MatchRight::Value(v) => {
            let v = value_text_for(left, v);
            match op {
                // `meta mark & M == V`: nft needs the explicit operator after a binary op.
                MatchOp::Eq if matches!(left, Expr::MarkAnd(_)) => format!("{l} == {v}"),
                MatchOp::Eq => format!("{l} {v}"),
                // "Not all bits set": masked comparison, not nft's exact `!=` on a bitmask.
                MatchOp::Ne if is_flag_expr(left) => format!("{l} & {v} != {v}"),
                MatchOp::Ne => format!("{l} != {v}"),
            }
        }
        MatchRight::Set(name) => match op {
            MatchOp::Eq => format!("{l} @{name}"),
            MatchOp::Ne => format!("{l} != @{name}"),
        },
        MatchRight::AnonSet(values) => {
            let items: Vec<String> = values.iter().map(|v| value_text_for(left, v)).collect();
            let set = format!("{{ {} }}", items.join(", "));
            match op {
                MatchOp::Eq => format!("{l} {set}"),
                MatchOp::Ne => format!("{l} != {set}"),
            }
        }
    }
}

/// A packet field or computed value.
pub fn expr_text(expr: &Expr) -> String {
    match expr {
        Expr::Saddr(family) => format!("{} saddr", family_text(*family)),
        Expr::Daddr(family) => format!("{} daddr", family_text(*family)),
        Expr::L4Proto => "meta l4proto".to_owned(),
        Expr::Dport => "th dport".to_owned(),
        Expr::Mark => "meta mark".to_owned(),
        Expr::MarkAnd(mask) => format!("meta mark & {}", mark(*mask)),
        Expr::CtState => "ct state".to_owned(),
        Expr::CtStatus => "ct status".to_owned(),
        Expr::FibAddrType { saddr: true } => "fib saddr type".to_owned(),
        Expr::FibAddrType { saddr: false } => "fib daddr type".to_owned(),
        Expr::Numgen { modulus, offset: 0 } => format!("numgen random mod {modulus}"),
        Expr::Numgen { modulus, offset } => format!("numgen random mod {modulus} offset {offset}"),
        Expr::Concat(parts) => parts.iter().map(expr_text).collect::<Vec<_>>().join(" . "),
    }
}

/// A constant, with integers in decimal (use in set elements and numgen keys).
pub fn value_text(value: &Value) -> String {
    value_text_inner(value, false)
}

/// A constant compared with `left`: integers compared with the mark are written `0x%08x`.
fn value_text_for(left: &Expr, value: &Value) -> String {
    value_text_inner(value, matches!(left, Expr::Mark | Expr::MarkAnd(_)))
}

fn value_text_inner(value: &Value, hex: bool) -> String {
    match value {
        Value::Addr(a) => a.to_string(),
        // nft masks host bits itself; rendering the network keeps text and JSON canonical.
        Value::Prefix(p) => p.trunc().to_string(),
        Value::Proto(p) => p.as_str().to_owned(),
        Value::Port(p) => p.to_string(),
        Value::Int(i) if hex => mark(*i),
        Value::Int(i) => i.to_string(),
        Value::CtStateNew => "new".to_owned(),
        Value::CtStatusDnat => "dnat".to_owned(),
        Value::FibLocal => "local".to_owned(),
        Value::Concat(parts) => parts
            .iter()
            .map(|p| value_text_inner(p, hex))
            .collect::<Vec<_>>()
            .join(" . "),
    }
}

fn mark(bits: u32) -> String {
    format!("0x{bits:08x}")
}

/// Quotes a comment for nft. nft strings have no escape mechanism, so `"` becomes `'` and line
/// breaks become spaces.
fn quote(comment: &str) -> String {
    let clean: String = comment
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect();
    format!("\"{clean}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::{sample_ruleset, sample_table};
    use crate::ruleset::{BaseChain, Hook, SetFlags};
    use crate::snapshot::Protocol;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn m(left: Expr, op: MatchOp, right: MatchRight) -> String {
        stmt_text(&Stmt::Match { left, op, right })
    }

    #[test]
    fn exprs() {
        assert_eq!(expr_text(&Expr::Saddr(IpFamily::V4)), "ip saddr");
        assert_eq!(expr_text(&Expr::Daddr(IpFamily::V4)), "ip daddr");
        assert_eq!(expr_text(&Expr::Saddr(IpFamily::V6)), "ip6 saddr");
        assert_eq!(expr_text(&Expr::Daddr(IpFamily::V6)), "ip6 daddr");
        assert_eq!(expr_text(&Expr::L4Proto), "meta l4proto");
        assert_eq!(expr_text(&Expr::Dport), "th dport");
        assert_eq!(expr_text(&Expr::Mark), "meta mark");
        assert_eq!(expr_text(&Expr::MarkAnd(0x4000)), "meta mark & 0x00004000");
        assert_eq!(expr_text(&Expr::CtState), "ct state");
        assert_eq!(expr_text(&Expr::CtStatus), "ct status");
        assert_eq!(
            expr_text(&Expr::FibAddrType { saddr: true }),
            "fib saddr type"
        );
        assert_eq!(
            expr_text(&Expr::FibAddrType { saddr: false }),
            "fib daddr type"
        );
        assert_eq!(
            expr_text(&Expr::Numgen {
                modulus: 3,
                offset: 0
            }),
            "numgen random mod 3"
        );
        assert_eq!(
            expr_text(&Expr::Numgen {
                modulus: 2,
                offset: 1
            }),
            "numgen random mod 2 offset 1"
        );
        assert_eq!(
            expr_text(&Expr::Concat(vec![
                Expr::Daddr(IpFamily::V6),
                Expr::L4Proto,
                Expr::Dport
            ])),
            "ip6 daddr . meta l4proto . th dport"
        );
    }

    #[test]
    fn values() {
        assert_eq!(value_text(&Value::Addr(ip("10.0.0.1"))), "10.0.0.1");
        assert_eq!(value_text(&Value::Addr(ip("fd00:0:0::0:1"))), "fd00::1");
        assert_eq!(
            value_text(&Value::Addr(ip("::ffff:1.2.3.4"))),
            "::ffff:1.2.3.4"
        );
        assert_eq!(
            value_text(&Value::Prefix("10.1.2.3/8".parse().unwrap())),
            "10.0.0.0/8"
        );
        assert_eq!(
            value_text(&Value::Prefix("2001:db8::1/32".parse().unwrap())),
            "2001:db8::/32"
        );
        assert_eq!(value_text(&Value::Proto(Protocol::Tcp)), "tcp");
        assert_eq!(value_text(&Value::Proto(Protocol::Udp)), "udp");
        assert_eq!(value_text(&Value::Proto(Protocol::Sctp)), "sctp");
        assert_eq!(value_text(&Value::Port(8080)), "8080");
        assert_eq!(value_text(&Value::Int(7)), "7");
        assert_eq!(value_text(&Value::CtStateNew), "new");
        assert_eq!(value_text(&Value::CtStatusDnat), "dnat");
        assert_eq!(value_text(&Value::FibLocal), "local");
        assert_eq!(
            value_text(&Value::Concat(vec![
                Value::Addr(ip("fd00::1")),
                Value::Proto(Protocol::Tcp),
                Value::Port(80)
            ])),
            "fd00::1 . tcp . 80"
        );
    }

    #[test]
    fn matches() {
        let v4 = |s: &str| MatchRight::Value(Value::Addr(ip(s)));
        assert_eq!(
            m(Expr::Saddr(IpFamily::V4), MatchOp::Eq, v4("1.2.3.4")),
            "ip saddr 1.2.3.4"
        );
        assert_eq!(
            m(Expr::Daddr(IpFamily::V6), MatchOp::Ne, v4("fd00::1")),
            "ip6 daddr != fd00::1"
        );
        assert_eq!(
            m(
                Expr::Saddr(IpFamily::V4),
                MatchOp::Eq,
                MatchRight::Set("cidrs".into())
            ),
            "ip saddr @cidrs"
        );
        assert_eq!(
            m(
                Expr::Saddr(IpFamily::V6),
                MatchOp::Ne,
                MatchRight::Set("cidrs".into())
            ),
            "ip6 saddr != @cidrs"
        );
        let anon = MatchRight::AnonSet(vec![
            Value::Prefix("fd00::/64".parse().unwrap()),
            Value::Addr(ip("2001:db8::1")),
        ]);
        assert_eq!(
            m(Expr::Saddr(IpFamily::V6), MatchOp::Eq, anon.clone()),
            "ip6 saddr { fd00::/64, 2001:db8::1 }"
        );
        assert_eq!(
            m(Expr::Saddr(IpFamily::V6), MatchOp::Ne, anon),
            "ip6 saddr != { fd00::/64, 2001:db8::1 }"
        );
        let ct_new = MatchRight::Value(Value::CtStateNew);
        assert_eq!(
            m(Expr::CtState, MatchOp::Eq, ct_new.clone()),
            "ct state new"
        );
        assert_eq!(
            m(Expr::CtState, MatchOp::Ne, ct_new),
            "ct state & new != new"
        );
        let dnat = MatchRight::Value(Value::CtStatusDnat);
        assert_eq!(
            m(Expr::CtStatus, MatchOp::Eq, dnat.clone()),
            "ct status dnat"
        );
        assert_eq!(
            m(Expr::CtStatus, MatchOp::Ne, dnat),
            "ct status & dnat != dnat"
        );
        let zero = MatchRight::Value(Value::Int(0));
        assert_eq!(
            m(Expr::MarkAnd(0x4000), MatchOp::Eq, zero.clone()),
            "meta mark & 0x00004000 == 0x00000000"
        );
        assert_eq!(
            m(Expr::MarkAnd(0x4000), MatchOp::Ne, zero),
            "meta mark & 0x00004000 != 0x00000000"
        );
        assert_eq!(
            m(Expr::Mark, MatchOp::Eq, MatchRight::Value(Value::Int(1))),
            "meta mark 0x00000001"
        );
        let local = MatchRight::Value(Value::FibLocal);
        assert_eq!(
            m(
                Expr::FibAddrType { saddr: true },
                MatchOp::Eq,
                local.clone()
            ),
            "fib saddr type local"
        );
        assert_eq!(
            m(Expr::FibAddrType { saddr: false }, MatchOp::Ne, local),
            "fib daddr type != local"
        );
        assert_eq!(
            m(
                Expr::L4Proto,
                MatchOp::Eq,
                MatchRight::Value(Value::Proto(Protocol::Sctp))
            ),
            "meta l4proto sctp"
        );
        assert_eq!(
            m(Expr::Dport, MatchOp::Ne, MatchRight::Value(Value::Port(53))),
            "th dport != 53"
        );
        assert_eq!(
            m(
                Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                MatchOp::Eq,
                MatchRight::AnonSet(vec![Value::Concat(vec![
                    Value::Proto(Protocol::Tcp),
                    Value::Port(80)
                ])])
            ),
            "meta l4proto . th dport { tcp . 80 }"
        );
        assert_eq!(
            m(
                Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                MatchOp::Ne,
                MatchRight::Value(Value::Concat(vec![
                    Value::Proto(Protocol::Udp),
                    Value::Port(53)
                ]))
            ),
            "meta l4proto . th dport != { udp . 53 }"
        );
    }

    #[test]
    fn stmts_and_verdicts() {
        assert_eq!(stmt_text(&Stmt::Verdict(Verdict::Accept)), "accept");
        assert_eq!(stmt_text(&Stmt::Verdict(Verdict::Drop)), "drop");
        assert_eq!(stmt_text(&Stmt::Verdict(Verdict::Return)), "return");
        assert_eq!(
            stmt_text(&Stmt::Verdict(Verdict::Jump("a".into()))),
            "jump a"
        );
        assert_eq!(
            stmt_text(&Stmt::Verdict(Verdict::Goto("b".into()))),
            "goto b"
        );
        let key = Expr::Concat(vec![Expr::Daddr(IpFamily::V4), Expr::L4Proto, Expr::Dport]);
        assert_eq!(
            stmt_text(&Stmt::Vmap {
                key: key.clone(),
                map: MapRef::Named("svc".into())
            }),
            "ip daddr . meta l4proto . th dport vmap @svc"
        );
        assert_eq!(
            stmt_text(&Stmt::Vmap {
                key: Expr::Numgen {
                    modulus: 2,
                    offset: 1
                },
                map: MapRef::Anon(vec![
                    (Value::Int(1), Verdict::Goto("ep-0".into())),
                    (Value::Int(2), Verdict::Accept),
                ]),
            }),
            "numgen random mod 2 offset 1 vmap { 1 : goto ep-0, 2 : accept }"
        );
        assert_eq!(
            stmt_text(&Stmt::SetMark(MarkOp::Or(0x4000))),
            "meta mark set meta mark | 0x00004000"
        );
        assert_eq!(
            stmt_text(&Stmt::SetMark(MarkOp::Xor(0x4000))),
            "meta mark set meta mark ^ 0x00004000"
        );
        let aff = Expr::Concat(vec![Expr::Saddr(IpFamily::V6), Expr::Daddr(IpFamily::V6)]);
        assert_eq!(
            stmt_text(&Stmt::SetUpdate {
                set: "aff".into(),
                key: aff.clone(),
                timeout: Some(10)
            }),
            "update @aff { ip6 saddr . ip6 daddr timeout 10s }"
        );
        assert_eq!(
            stmt_text(&Stmt::SetUpdate {
                set: "aff".into(),
                key: aff,
                timeout: None
            }),
            "update @aff { ip6 saddr . ip6 daddr }"
        );
        assert_eq!(
            stmt_text(&Stmt::DnatMap {
                key,
                addr_map: "a".into(),
                port_map: "p".into()
            }),
            "dnat to ip daddr . meta l4proto . th dport map @a : \
             ip daddr . meta l4proto . th dport map @p"
        );
        assert_eq!(
            stmt_text(&Stmt::Masquerade { fully_random: true }),
            "masquerade fully-random"
        );
        assert_eq!(
            stmt_text(&Stmt::Masquerade {
                fully_random: false
            }),
            "masquerade"
        );
        assert_eq!(stmt_text(&Stmt::Reject), "reject");
    }

    #[test]
    fn rule_with_comment() {
        let rule = Rule::new(vec![Stmt::Verdict(Verdict::Jump("services".into()))])
            .with_comment("say \"hi\"\nthere");
        assert_eq!(
            rule_body_text(&rule),
            "jump services comment \"say 'hi' there\""
        );
        let table = Table::new(IpFamily::V6, "nftproxy");
        assert_eq!(
            rule_text(&table, "nat-output", &rule),
            "rule ip6 nftproxy nat-output jump services comment \"say 'hi' there\""
        );
    }

    #[test]
    fn sets_and_elements() {
        let table = Table::new(IpFamily::V4, "t");
        let mut set = Set::new(
            "svc",
            vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            Some(DataType::Verdict),
        );
        set.flags = SetFlags {
            interval: true,
            dynamic: true,
            timeout: Some(10800),
        };
        set.comment = Some("services".into());
        assert_eq!(
            set_text(&table, &set),
            "map ip t svc { type ipv4_addr . inet_proto . inet_service : verdict; \
             flags interval,dynamic,timeout; timeout 10800s; comment \"services\"; }"
        );
        assert_eq!(set_ref_text(&table, &set), "map ip t svc");
        let key = [
            Value::Addr(ip("1.2.3.4")),
            Value::Proto(Protocol::Tcp),
            Value::Port(80),
        ];
        let goto = ElemData::Verdict(Verdict::Goto("c".into()));
        assert_eq!(
            element_text(&table, "svc", &key, Some(&goto)),
            "element ip t svc { 1.2.3.4 . tcp . 80 : goto c }"
        );
        assert_eq!(
            element_text(&table, "svc", &key, None),
            "element ip t svc { 1.2.3.4 . tcp . 80 }"
        );
        let key2 = [
            Value::Addr(ip("1.2.3.5")),
            Value::Proto(Protocol::Udp),
            Value::Port(53),
        ];
        assert_eq!(
            elements_text(&table, "svc", [(&key[..], None), (&key2[..], None)]),
            "element ip t svc { 1.2.3.4 . tcp . 80, 1.2.3.5 . udp . 53 }"
        );
        assert_eq!(elem_data_text(&ElemData::Addr(ip("fd00::2"))), "fd00::2");
        assert_eq!(elem_data_text(&ElemData::Port(8080)), "8080");

        let t6 = Table::new(IpFamily::V6, "t");
        let addr_map = Set::new(
            "a",
            vec![KeyType::Ipv6Addr, KeyType::InetProto],
            Some(DataType::Addr),
        );
        assert_eq!(
            set_text(&t6, &addr_map),
            "map ip6 t a { type ipv6_addr . inet_proto : ipv6_addr; }"
        );
        let port_map = Set::new(
            "p",
            vec![KeyType::InetProto, KeyType::InetService],
            Some(DataType::InetService),
        );
        assert_eq!(
            set_text(&t6, &port_map),
            "map ip6 t p { type inet_proto . inet_service : inet_service; }"
        );
        let plain = Set::new("s", vec![KeyType::Ipv6Addr], None);
        assert_eq!(set_text(&t6, &plain), "set ip6 t s { type ipv6_addr; }");
        assert_eq!(set_ref_text(&t6, &plain), "set ip6 t s");
    }

    #[test]
    fn chains() {
        let table = Table::new(IpFamily::V4, "t");
        let mut chain = Chain {
            name: "c".into(),
            base: None,
            rules: vec![],
        };
        assert_eq!(chain_text(&table, &chain), "chain ip t c");
        assert_eq!(chain_ref_text(&table, "c"), "chain ip t c");
        for (chain_type, hook, prio, text) in [
            (
                ChainType::Nat,
                Hook::Prerouting,
                -100,
                "type nat hook prerouting priority -100",
            ),
            (
                ChainType::Filter,
                Hook::Input,
                0,
                "type filter hook input priority 0",
            ),
            (
                ChainType::Filter,
                Hook::Forward,
                -110,
                "type filter hook forward priority -110",
            ),
            (
                ChainType::Nat,
                Hook::Output,
                -100,
                "type nat hook output priority -100",
            ),
            (
                ChainType::Nat,
                Hook::Postrouting,
                100,
                "type nat hook postrouting priority 100",
            ),
        ] {
            chain.base = Some(BaseChain {
                chain_type,
                hook,
                priority: prio,
            });
            assert_eq!(
                chain_text(&table, &chain),
                format!("chain ip t c {{ {text}; policy accept; }}")
            );
        }
        assert_eq!(table_text(&table), "table ip t");
    }

    #[test]
    fn whole_table_layout() {
        let mut table = Table::new(IpFamily::V4, "t");
        let mut set = Set::new("ips", vec![KeyType::Ipv4Addr], None);
        set.elements.insert(vec![Value::Addr(ip("10.0.0.2"))], None);
        set.elements.insert(vec![Value::Addr(ip("10.0.0.1"))], None);
        table.sets.insert(set.name.clone(), set);
        let one = Set::new("a-one", vec![KeyType::InetService], None);
        table.sets.insert(one.name.clone(), one);
        table.chains.insert(
            "z".into(),
            Chain {
                name: "z".into(),
                base: Some(BaseChain {
                    chain_type: ChainType::Filter,
                    hook: Hook::Input,
                    priority: -110,
                }),
                rules: vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump("a".into()))])],
            },
        );
        table.chains.insert(
            "a".into(),
            Chain {
                name: "a".into(),
                base: None,
                rules: vec![],
            },
        );
        let mut ruleset = Ruleset::default();
        ruleset.tables.insert(IpFamily::V4, table);
        assert_eq!(
            to_nft_text(&ruleset),
            "table ip t {\n\
             \tset a-one {\n\t\ttype inet_service\n\t}\n\
             \n\
             \tset ips {\n\t\ttype ipv4_addr\n\
             \t\telements = { 10.0.0.1,\n\t\t\t     10.0.0.2 }\n\t}\n\
             \n\
             \tchain a {\n\t}\n\
             \n\
             \tchain z {\n\t\ttype filter hook input priority -110; policy accept;\n\
             \t\tjump a\n\t}\n\
             }\n"
        );
    }

    #[test]
    fn ip_table_before_ip6_and_deterministic() {
        let ruleset = sample_ruleset();
        let text = to_nft_text(&ruleset);
        assert_eq!(text, to_nft_text(&ruleset.clone()));
        let v4 = text.find("table ip nftproxy {").unwrap();
        let v6 = text.find("table ip6 nftproxy {").unwrap();
        assert!(v4 < v6);
        let t6 = sample_table(IpFamily::V6);
        assert!(text.contains("ip6 saddr . ip6 daddr . meta l4proto . th dport @aff"));
        assert!(text.contains("fd00:30::41 . tcp . 80 : goto lb-2"));
        assert!(text.contains(&to_nft_text_table(&t6)));
    }

    fn to_nft_text_table(table: &Table) -> String {
        let mut out = String::new();
        write_table(&mut out, table);
        out
    }
}
