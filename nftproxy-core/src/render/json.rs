//! libnftables JSON rendering, built from the `nftables` crate's schema types.
//!
//! Everything here is written for nft 1.0.6's JSON parser. Objects come out as
//! [`serde_json::Value`] rather than crate types because three things nft 1.0.6 needs cannot be
//! expressed with `nftables` 0.6.3 types alone; each is patched into the serialized value where it
//! is built:
//!
//! * a verdict map's data type: [`nftables::schema::SetType`] has no `verdict`, so the map is
//!   built with a placeholder data type and its `"map"` field is then set to `"verdict"`;
//! * `accept`/`drop`/`return` as map element data: the crate's `expr::Verdict` serializes them as
//!   bare strings (`"accept"`), which nft 1.0.6 rejects ("Can't parse symbolic netfilter verdict
//!   expressions"); element data is therefore serialized from the verdict *statement*
//!   (`{"accept": null}`), which is also what `nft -j list` prints;
//! * element arrays (`"elem"`) are assembled as values, since a map element pairs a key
//!   expression with such a statement.
//!
//! Two more normalisations happen on every value: flag arrays (which the crate keeps in
//! `HashSet`s) are sorted, so equal rulesets render byte-identically, and the `null` fields the
//! crate writes for unset `elem` properties are dropped.
//!
//! Known nft 1.0.6 limits of JSON input, measured in a network namespace:
//!
//! * the set flag `dynamic` is never emitted: nft 1.0.6 rejects it ("Invalid set flag"). nft
//!   sets it itself on a set that an `update @set` rule in the same batch refers to;
//! * set and map comments are emitted but nft 1.0.6 ignores them on input (newer versions keep
//!   them), so a ruleset loaded from JSON lists without them; rule comments are kept.

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{
    self as nexpr, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, NgMode,
    Numgen, Payload, PayloadField, SetItem, CT,
};
use nftables::schema::{self, NfListObject, SetFlag, SetType, SetTypeValue};
use nftables::stmt::RejectType;
use nftables::stmt::{self as nstmt, JumpTarget, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};
use serde::Serialize;
use serde_json::Value as Json;

use super::text::{family_text, is_flag_expr};
use super::Verb;
use crate::ruleset::{
    Chain, ChainType, DataType, ElemData, Expr, Hook, KeyType, MapRef, MarkOp, MatchOp, MatchRight,
    Rule, Ruleset, Set, Stmt, Table, Value, Verdict,
};
use crate::snapshot::IpFamily;

/// Renders the ruleset as a libnftables JSON document (see [`to_json_value`]), pretty-printed
/// with a trailing newline.
pub fn to_json(ruleset: &Ruleset) -> String {
    json_to_string(&to_json_value(ruleset))
}

/// The ruleset as a libnftables JSON document of `add` commands in the order nft 1.0.6 needs
/// to load it into an empty namespace: per table (`ip` first), the table, then all its chains,
/// then its sets and maps with their elements (verdict-map elements refer to chains), then the
/// rules, chain by chain.
pub fn to_json_value(ruleset: &Ruleset) -> Json {
    let mut commands = Vec::new();
    for table in ruleset.tables.values() {
        commands.push(json_command(Verb::Add, table_json(table)));
        for chain in table.chains.values() {
            commands.push(json_command(Verb::Add, chain_json(table, chain)));
        }
        for set in table.sets.values() {
            commands.push(json_command(Verb::Add, set_with_elements_json(table, set)));
        }
        for chain in table.chains.values() {
            for rule in &chain.rules {
                commands.push(json_command(Verb::Add, rule_json(table, &chain.name, rule)));
            }
        }
    }
    json_document(commands)
}

/// Wraps an object (from the `*_json` helpers) in a command: `{"add": {"chain": {...}}}`.
pub fn json_command(verb: Verb, object: Json) -> Json {
    let mut command = serde_json::Map::new();
    command.insert(verb.as_str().to_owned(), object);
    Json::Object(command)
}

/// Wraps commands in a document: `{"nftables": [...]}`.
pub fn json_document(commands: impl IntoIterator<Item = Json>) -> Json {
    let mut document = serde_json::Map::new();
    document.insert(
        "nftables".to_owned(),
        Json::Array(commands.into_iter().collect()),
    );
    Json::Object(document)
}

/// Pretty-prints a JSON value with two-space indentation and a trailing newline.
pub fn json_to_string(value: &Json) -> String {
    // Invariant: a `serde_json::Value` always serializes (its map keys are strings).
    let mut out = serde_json::to_string_pretty(value).unwrap_or_default();
    out.push('\n');
    out
}

/// `{"table": {...}}`, for `add`/`delete`/`flush` table.
pub fn table_json(table: &Table) -> Json {
    object_json(&NfListObject::Table(schema::Table {
        family: nf_family(table.family),
        name: owned(&table.name),
        handle: None,
    }))
}

/// `{"chain": {...}}` naming a chain, for `flush`/`delete` chain.
pub fn chain_ref_json(table: &Table, chain: &str) -> Json {
    object_json(&NfListObject::Chain(chain_object(table, chain)))
}

/// `{"chain": {...}}` declaring a chain for `add`: with `type`, `hook`, `prio` and `policy`
/// for base chains. Rules are not included; add them with [`rule_json`].
pub fn chain_json(table: &Table, chain: &Chain) -> Json {
    let mut object = chain_object(table, &chain.name);
    if let Some(base) = chain.base {
        object._type = Some(match base.chain_type {
            ChainType::Filter => NfChainType::Filter,
            ChainType::Nat => NfChainType::NAT,
        });
        object.hook = Some(match base.hook {
            Hook::Prerouting => NfHook::Prerouting,
            Hook::Input => NfHook::Input,
            Hook::Forward => NfHook::Forward,
            Hook::Output => NfHook::Output,
            Hook::Postrouting => NfHook::Postrouting,
        });
        object.prio = Some(base.priority);
        object.policy = Some(NfChainPolicy::Accept);
    }
    object_json(&NfListObject::Chain(object))
}

fn chain_object(table: &Table, chain: &str) -> schema::Chain<'static> {
    schema::Chain {
        family: nf_family(table.family),
        table: owned(&table.name),
        name: owned(chain),
        ..schema::Chain::default()
    }
}

/// `{"set": {...}}` or `{"map": {...}}` declaring a set or map without elements, for `add`,
/// `flush` and `delete` (which only look at family, table and name).
pub fn set_json(table: &Table, set: &Set) -> Json {
    let family = nf_family(table.family);
    let set_type = key_type_value(&set.key);
    let mut flags = HashSet::new();
    if set.flags.interval {
        flags.insert(SetFlag::Interval);
    }
    if set.flags.timeout.is_some() {
        flags.insert(SetFlag::Timeout);
    }
    // `set.flags.dynamic` has no JSON form in nft 1.0.6; see the module documentation.
    let flags = (!flags.is_empty()).then_some(flags);
    let comment = set.comment.as_deref().map(owned);
    match set.data {
        None => object_json(&NfListObject::Set(Box::new(schema::Set {
            family,
            table: owned(&table.name),
            name: owned(&set.name),
            handle: None,
            set_type,
            policy: None,
            flags,
            elem: None,
            timeout: set.flags.timeout,
            gc_interval: None,
            size: None,
            comment,
        }))),
        Some(data) => {
            let data_type = match data {
                DataType::Addr => key_type(KeyType::addr(table.family)),
                DataType::InetService => SetType::InetService,
                // Placeholder, replaced by "verdict" below: `SetType` has no verdict type.
                DataType::Verdict => SetType::InetService,
            };
            let mut value = object_json(&NfListObject::Map(Box::new(schema::Map {
                family,
                table: owned(&table.name),
                name: owned(&set.name),
                handle: None,
                set_type,
                map: SetTypeValue::Single(data_type),
                policy: None,
                flags,
                elem: None,
                timeout: set.flags.timeout,
                gc_interval: None,
                size: None,
                comment,
            })));
            if data == DataType::Verdict {
                if let Some(map) = value.get_mut("map").and_then(Json::as_object_mut) {
                    map.insert("map".to_owned(), Json::from("verdict"));
                }
            }
            value
        }
    }
}

/// [`set_json`] with the set's elements as `"elem"` (omitted when there are none).
pub fn set_with_elements_json(table: &Table, set: &Set) -> Json {
    let mut value = set_json(table, set);
    if !set.elements.is_empty() {
        let elements = set
            .elements
            .iter()
            .map(|(key, data)| element_item_json(key, data.as_ref()))
            .collect();
        if let Some(object) = value.as_object_mut().and_then(|o| o.values_mut().next()) {
            if let Some(object) = object.as_object_mut() {
                object.insert("elem".to_owned(), Json::Array(elements));
            }
        }
    }
    value
}

/// `{"rule": {...}}` appending a rule to a chain, for `add`/`insert`.
pub fn rule_json(table: &Table, chain: &str, rule: &Rule) -> Json {
    let expr: Vec<Statement<'static>> = rule
        .stmts
        .iter()
        .map(|s| stmt_object(table.family, s))
        .collect();
    object_json(&NfListObject::Rule(schema::Rule {
        family: nf_family(table.family),
        table: owned(&table.name),
        chain: owned(chain),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: rule.comment.as_deref().map(owned),
    }))
}

/// `{"element": {...}}` with one element; see [`elements_json`].
pub fn element_json(table: &Table, set: &str, key: &[Value], data: Option<&ElemData>) -> Json {
    elements_json(table, set, [(key, data)])
}

/// `{"element": {...}}` for `add`/`delete` element. Pass `None` as data for set elements and
/// for deletions (nft deletes by key).
pub fn elements_json<'a>(
    table: &Table,
    set: &str,
    elements: impl IntoIterator<Item = (&'a [Value], Option<&'a ElemData>)>,
) -> Json {
    let mut value = object_json(&NfListObject::Element(schema::Element {
        family: nf_family(table.family),
        table: owned(&table.name),
        name: owned(set),
        elem: Cow::Owned(Vec::new()),
    }));
    let items = elements
        .into_iter()
        .map(|(key, data)| element_item_json(key, data))
        .collect();
    if let Some(object) = value.get_mut("element").and_then(Json::as_object_mut) {
        object.insert("elem".to_owned(), Json::Array(items));
    }
    value
}

/// One element as it appears in an `"elem"` array: the key, or `[key, data]` for maps.
pub fn element_item_json(key: &[Value], data: Option<&ElemData>) -> Json {
    let key = to_value(&key_expr(key));
    match data {
        None => key,
        Some(ElemData::Verdict(v)) => Json::Array(vec![key, to_value(&verdict_stmt(v))]),
        Some(ElemData::Addr(a)) => Json::Array(vec![key, Json::from(a.to_string())]),
        Some(ElemData::Port(p)) => Json::Array(vec![key, Json::from(*p)]),
    }
}

fn key_expr(key: &[Value]) -> Expression<'static> {
    match key {
        [single] => value_expr(single),
        parts => Expression::Named(NamedExpression::Concat(
            parts.iter().map(value_expr).collect(),
        )),
    }
}

fn stmt_object(family: IpFamily, stmt: &Stmt) -> Statement<'static> {
    match stmt {
        Stmt::Match { left, op, right } => Statement::Match(match_object(left, *op, right)),
        Stmt::Verdict(v) => verdict_stmt(v),
        Stmt::Vmap { key, map } => Statement::VerdictMap(nstmt::VerdictMap {
            key: expr_object(key),
            data: match map {
                MapRef::Named(name) => set_ref(name),
                MapRef::Anon(entries) => Expression::Named(NamedExpression::Set(
                    entries
                        .iter()
                        .map(|(k, v)| SetItem::MappingStatement(value_expr(k), verdict_stmt(v)))
                        .collect(),
                )),
            },
        }),
        Stmt::SetMark(op) => {
            let value = match op {
                MarkOp::Or(bits) => {
                    nexpr::BinaryOperation::OR(vec![meta(MetaKey::Mark), Expression::Number(*bits)])
                }
                MarkOp::Xor(bits) => {
                    nexpr::BinaryOperation::XOR(meta(MetaKey::Mark), Expression::Number(*bits))
                }
            };
            Statement::Mangle(nstmt::Mangle {
                key: meta(MetaKey::Mark),
                value: Expression::BinaryOperation(Box::new(value)),
            })
        }
        Stmt::SetUpdate { set, key, timeout } => {
            let key = expr_object(key);
            let elem = match timeout {
                None => key,
                Some(timeout) => Expression::Named(NamedExpression::Elem(nexpr::Elem {
                    val: Box::new(key),
                    timeout: Some(*timeout),
                    expires: None,
                    comment: None,
                    counter: None,
                })),
            };
            Statement::Set(nstmt::Set {
                op: nstmt::SetOp::Update,
                elem,
                set: owned(&format!("@{set}")),
            })
        }
        Stmt::DnatMap {
            key,
            addr_map,
            port_map,
        } => {
            let lookup = |map: &str| {
                Expression::Named(NamedExpression::Map(Box::new(nexpr::Map {
                    key: expr_object(key),
                    data: set_ref(map),
                })))
            };
            Statement::DNAT(Some(nstmt::NAT {
                addr: Some(lookup(addr_map)),
                family: None,
                port: Some(lookup(port_map)),
                flags: None,
            }))
        }
        Stmt::Masquerade { fully_random } => {
            Statement::Masquerade(fully_random.then(|| nstmt::NAT {
                addr: None,
                family: None,
                port: None,
                flags: Some(HashSet::from([nstmt::NATFlag::FullyRandom])),
            }))
        }
        Stmt::Reject => Statement::Reject(Some(nstmt::Reject::new(
            Some(match family {
                IpFamily::V4 => RejectType::ICMP,
                IpFamily::V6 => RejectType::ICMPv6,
            }),
            Some(RejectCode::PortUnreach),
        ))),
    }
}

fn match_object(left: &Expr, op: MatchOp, right: &MatchRight) -> nstmt::Match<'static> {
    let flag = is_flag_expr(left);
    let single;
    let right = match right {
        // As in the text renderer: nft 1.0.6 compares concatenations only with sets.
        MatchRight::Value(v @ Value::Concat(_)) => {
            single = MatchRight::AnonSet(vec![v.clone()]);
            &single
        }
        right => right,
    };
    let (left, op, right) = match right {
        // The implicit operator: "all bits set" (`nft -j list` prints `in` for `ct state new`).
        MatchRight::Value(v) if flag && op == MatchOp::Eq => {
            (expr_object(left), Operator::IN, value_expr(v))
        }
        // "Not all bits set": `ct status & dnat != dnat`, matching the text renderer.
        MatchRight::Value(v) if flag => (
            Expression::BinaryOperation(Box::new(nexpr::BinaryOperation::AND(
                expr_object(left),
                value_expr(v),
            ))),
            Operator::NEQ,
            value_expr(v),
        ),
        MatchRight::Value(v) => (expr_object(left), eq_op(op), value_expr(v)),
        MatchRight::Set(name) => (expr_object(left), eq_op(op), set_ref(name)),
        MatchRight::AnonSet(values) => (
            expr_object(left),
            eq_op(op),
            Expression::Named(NamedExpression::Set(
                values
                    .iter()
                    .map(|v| SetItem::Element(value_expr(v)))
                    .collect(),
            )),
        ),
    };
    nstmt::Match { left, right, op }
}

fn eq_op(op: MatchOp) -> Operator {
    match op {
        MatchOp::Eq => Operator::EQ,
        MatchOp::Ne => Operator::NEQ,
    }
}

fn verdict_stmt(verdict: &Verdict) -> Statement<'static> {
    match verdict {
        Verdict::Accept => Statement::Accept(None),
        Verdict::Drop => Statement::Drop(None),
        Verdict::Return => Statement::Return(None),
        Verdict::Jump(chain) => Statement::Jump(JumpTarget {
            target: owned(chain),
        }),
        Verdict::Goto(chain) => Statement::Goto(JumpTarget {
            target: owned(chain),
        }),
    }
}

fn expr_object(expr: &Expr) -> Expression<'static> {
    match expr {
        Expr::Saddr(family) => payload(family_text(*family), "saddr"),
        Expr::Daddr(family) => payload(family_text(*family), "daddr"),
        Expr::L4Proto => meta(MetaKey::L4proto),
        Expr::Dport => payload("th", "dport"),
        Expr::Mark => meta(MetaKey::Mark),
        Expr::MarkAnd(mask) => Expression::BinaryOperation(Box::new(nexpr::BinaryOperation::AND(
            meta(MetaKey::Mark),
            Expression::Number(*mask),
        ))),
        Expr::CtState => ct("state"),
        Expr::CtStatus => ct("status"),
        Expr::FibAddrType { saddr } => Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([if *saddr {
                FibFlag::Saddr
            } else {
                FibFlag::Daddr
            }]),
        })),
        Expr::Numgen { modulus, offset } => Expression::Named(NamedExpression::Numgen(Numgen {
            mode: NgMode::Random,
            ng_mod: *modulus,
            offset: (*offset != 0).then_some(*offset),
        })),
        Expr::Concat(parts) => Expression::Named(NamedExpression::Concat(
            parts.iter().map(expr_object).collect(),
        )),
    }
}

fn value_expr(value: &Value) -> Expression<'static> {
    match value {
        Value::Addr(a) => Expression::String(Cow::Owned(a.to_string())),
        Value::Prefix(p) => {
            let p = p.trunc();
            Expression::Named(NamedExpression::Prefix(nexpr::Prefix {
                addr: Box::new(Expression::String(Cow::Owned(p.addr().to_string()))),
                len: u32::from(p.prefix_len()),
            }))
        }
        Value::Proto(p) => Expression::String(Cow::Borrowed(p.as_str())),
        Value::Port(p) => Expression::Number(u32::from(*p)),
        Value::Int(i) => Expression::Number(*i),
        Value::CtStateNew => Expression::String(Cow::Borrowed("new")),
        Value::CtStatusDnat => Expression::String(Cow::Borrowed("dnat")),
        Value::FibLocal => Expression::String(Cow::Borrowed("local")),
        Value::Concat(parts) => Expression::Named(NamedExpression::Concat(
            parts.iter().map(value_expr).collect(),
        )),
    }
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(format!("@{name}")))
}

fn key_type(key: KeyType) -> SetType {
    match key {
        KeyType::Ipv4Addr => SetType::Ipv4Addr,
        KeyType::Ipv6Addr => SetType::Ipv6Addr,
        KeyType::InetProto => SetType::InetProto,
        KeyType::InetService => SetType::InetService,
    }
}

fn key_type_value(key: &[KeyType]) -> SetTypeValue<'static> {
    match key {
        [single] => SetTypeValue::Single(key_type(*single)),
        parts => SetTypeValue::Concatenated(parts.iter().copied().map(key_type).collect()),
    }
}

fn nf_family(family: IpFamily) -> NfFamily {
    match family {
        IpFamily::V4 => NfFamily::IP,
        IpFamily::V6 => NfFamily::IP6,
    }
}

fn owned(s: &str) -> Cow<'static, str> {
    Cow::Owned(s.to_owned())
}

/// Serializes a ruleset object, normalised (see the module documentation).
fn object_json(object: &NfListObject<'_>) -> Json {
    to_value(object)
}

fn to_value<T: Serialize>(value: &T) -> Json {
    // Invariant: the `nftables` schema types serialize infallibly: they hold no maps with
    // non-string keys and have no serializers that can fail. `Null` would be an unloadable
    // fragment, never a silently different ruleset.
    let mut value = serde_json::to_value(value).unwrap_or(Json::Null);
    normalize(&mut value);
    value
}

/// Sorts every `"flags"` array and drops `null` fields of `{"elem": {...}}` objects.
fn normalize(value: &mut Json) {
    match value {
        Json::Object(map) => {
            if let Some(Json::Array(flags)) = map.get_mut("flags") {
                flags.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            if let Some(Json::Object(elem)) = map.get_mut("elem") {
                elem.retain(|_, v| !v.is_null());
            }
            map.values_mut().for_each(normalize);
        }
        Json::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::{sample_ruleset, sample_table};
    use crate::ruleset::{BaseChain, SetFlags};
    use crate::snapshot::Protocol;
    use serde_json::json;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn stmt(family: IpFamily, s: Stmt) -> Json {
        to_value(&stmt_object(family, &s))
    }

    fn m(left: Expr, op: MatchOp, right: MatchRight) -> Json {
        stmt(IpFamily::V4, Stmt::Match { left, op, right })
    }

    fn ip_payload(family: &str, field: &str) -> Json {
        json!({"payload": {"protocol": family, "field": field}})
    }

    #[test]
    fn exprs() {
        assert_eq!(
            to_value(&expr_object(&Expr::Saddr(IpFamily::V4))),
            ip_payload("ip", "saddr")
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Daddr(IpFamily::V4))),
            ip_payload("ip", "daddr")
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Saddr(IpFamily::V6))),
            ip_payload("ip6", "saddr")
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Daddr(IpFamily::V6))),
            ip_payload("ip6", "daddr")
        );
        assert_eq!(
            to_value(&expr_object(&Expr::L4Proto)),
            json!({"meta": {"key": "l4proto"}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Dport)),
            ip_payload("th", "dport")
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Mark)),
            json!({"meta": {"key": "mark"}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::MarkAnd(0x4000))),
            json!({"&": [{"meta": {"key": "mark"}}, 16384]})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::CtState)),
            json!({"ct": {"key": "state"}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::CtStatus)),
            json!({"ct": {"key": "status"}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::FibAddrType { saddr: true })),
            json!({"fib": {"result": "type", "flags": ["saddr"]}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::FibAddrType { saddr: false })),
            json!({"fib": {"result": "type", "flags": ["daddr"]}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Numgen {
                modulus: 3,
                offset: 0
            })),
            json!({"numgen": {"mode": "random", "mod": 3}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Numgen {
                modulus: 2,
                offset: 1
            })),
            json!({"numgen": {"mode": "random", "mod": 2, "offset": 1}})
        );
        assert_eq!(
            to_value(&expr_object(&Expr::Concat(vec![
                Expr::Daddr(IpFamily::V6),
                Expr::Dport
            ]))),
            json!({"concat": [ip_payload("ip6", "daddr"), ip_payload("th", "dport")]})
        );
    }

    #[test]
    fn values() {
        let v = |x: Value| to_value(&value_expr(&x));
        assert_eq!(v(Value::Addr(ip("10.0.0.1"))), json!("10.0.0.1"));
        assert_eq!(v(Value::Addr(ip("fd00:0::1"))), json!("fd00::1"));
        assert_eq!(
            v(Value::Prefix("10.1.0.0/8".parse().unwrap())),
            json!({"prefix": {"addr": "10.0.0.0", "len": 8}})
        );
        assert_eq!(
            v(Value::Prefix("2001:db8::/32".parse().unwrap())),
            json!({"prefix": {"addr": "2001:db8::", "len": 32}})
        );
        assert_eq!(v(Value::Proto(Protocol::Tcp)), json!("tcp"));
        assert_eq!(v(Value::Proto(Protocol::Udp)), json!("udp"));
        assert_eq!(v(Value::Proto(Protocol::Sctp)), json!("sctp"));
        assert_eq!(v(Value::Port(80)), json!(80));
        assert_eq!(v(Value::Int(16384)), json!(16384));
        assert_eq!(v(Value::CtStateNew), json!("new"));
        assert_eq!(v(Value::CtStatusDnat), json!("dnat"));
        assert_eq!(v(Value::FibLocal), json!("local"));
        assert_eq!(
            v(Value::Concat(vec![
                Value::Addr(ip("fd00::1")),
                Value::Proto(Protocol::Tcp)
            ])),
            json!({"concat": ["fd00::1", "tcp"]})
        );
    }

    #[test]
    fn matches() {
        let saddr = ip_payload("ip", "saddr");
        assert_eq!(
            m(
                Expr::Saddr(IpFamily::V4),
                MatchOp::Eq,
                MatchRight::Value(Value::Addr(ip("1.2.3.4")))
            ),
            json!({"match": {"op": "==", "left": saddr, "right": "1.2.3.4"}})
        );
        assert_eq!(
            m(
                Expr::Saddr(IpFamily::V4),
                MatchOp::Ne,
                MatchRight::Set("cidrs".into())
            ),
            json!({"match": {"op": "!=", "left": saddr, "right": "@cidrs"}})
        );
        assert_eq!(
            m(
                Expr::Saddr(IpFamily::V4),
                MatchOp::Eq,
                MatchRight::AnonSet(vec![
                    Value::Prefix("10.0.0.0/8".parse().unwrap()),
                    Value::Addr(ip("1.2.3.4"))
                ])
            ),
            json!({"match": {"op": "==", "left": saddr, "right": {"set": [
                {"prefix": {"addr": "10.0.0.0", "len": 8}}, "1.2.3.4"]}}})
        );
        assert_eq!(
            m(
                Expr::CtState,
                MatchOp::Eq,
                MatchRight::Value(Value::CtStateNew)
            ),
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}})
        );
        assert_eq!(
            m(
                Expr::CtStatus,
                MatchOp::Ne,
                MatchRight::Value(Value::CtStatusDnat)
            ),
            json!({"match": {"op": "!=", "left": {"&": [{"ct": {"key": "status"}}, "dnat"]},
                "right": "dnat"}})
        );
        assert_eq!(
            m(
                Expr::MarkAnd(0x4000),
                MatchOp::Eq,
                MatchRight::Value(Value::Int(0))
            ),
            json!({"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]},
                "right": 0}})
        );
        assert_eq!(
            m(
                Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                MatchOp::Eq,
                MatchRight::Value(Value::Concat(vec![
                    Value::Proto(Protocol::Udp),
                    Value::Port(53)
                ]))
            ),
            json!({"match": {"op": "==", "left": {"concat": [{"meta": {"key": "l4proto"}},
                ip_payload("th", "dport")]}, "right": {"set": [{"concat": ["udp", 53]}]}}})
        );
    }

    #[test]
    fn stmts_and_verdicts() {
        let v4 = |s| stmt(IpFamily::V4, s);
        assert_eq!(v4(Stmt::Verdict(Verdict::Accept)), json!({"accept": null}));
        assert_eq!(v4(Stmt::Verdict(Verdict::Drop)), json!({"drop": null}));
        assert_eq!(v4(Stmt::Verdict(Verdict::Return)), json!({"return": null}));
        assert_eq!(
            v4(Stmt::Verdict(Verdict::Jump("a".into()))),
            json!({"jump": {"target": "a"}})
        );
        assert_eq!(
            v4(Stmt::Verdict(Verdict::Goto("b".into()))),
            json!({"goto": {"target": "b"}})
        );
        assert_eq!(
            v4(Stmt::Vmap {
                key: Expr::Dport,
                map: MapRef::Named("m".into())
            }),
            json!({"vmap": {"key": ip_payload("th", "dport"), "data": "@m"}})
        );
        assert_eq!(
            v4(Stmt::Vmap {
                key: Expr::Numgen {
                    modulus: 2,
                    offset: 0
                },
                map: MapRef::Anon(vec![
                    (Value::Int(0), Verdict::Goto("ep-0".into())),
                    (Value::Int(1), Verdict::Drop),
                ]),
            }),
            json!({"vmap": {"key": {"numgen": {"mode": "random", "mod": 2}},
                "data": {"set": [[0, {"goto": {"target": "ep-0"}}], [1, {"drop": null}]]}}})
        );
        let mark = json!({"meta": {"key": "mark"}});
        assert_eq!(
            v4(Stmt::SetMark(MarkOp::Or(0x4000))),
            json!({"mangle": {"key": mark, "value": {"|": [mark, 16384]}}})
        );
        assert_eq!(
            v4(Stmt::SetMark(MarkOp::Xor(0x4000))),
            json!({"mangle": {"key": mark, "value": {"^": [mark, 16384]}}})
        );
        assert_eq!(
            v4(Stmt::SetUpdate {
                set: "aff".into(),
                key: Expr::Dport,
                timeout: Some(10800)
            }),
            json!({"set": {"op": "update", "set": "@aff",
                "elem": {"elem": {"val": ip_payload("th", "dport"), "timeout": 10800}}}})
        );
        assert_eq!(
            v4(Stmt::SetUpdate {
                set: "aff".into(),
                key: Expr::Dport,
                timeout: None
            }),
            json!({"set": {"op": "update", "set": "@aff", "elem": ip_payload("th", "dport")}})
        );
        assert_eq!(
            stmt(
                IpFamily::V6,
                Stmt::DnatMap {
                    key: Expr::Dport,
                    addr_map: "a".into(),
                    port_map: "p".into()
                }
            ),
            json!({"dnat": {
                "addr": {"map": {"key": ip_payload("th", "dport"), "data": "@a"}},
                "port": {"map": {"key": ip_payload("th", "dport"), "data": "@p"}}}})
        );
        assert_eq!(
            v4(Stmt::Masquerade { fully_random: true }),
            json!({"masquerade": {"flags": ["fully-random"]}})
        );
        assert_eq!(
            v4(Stmt::Masquerade {
                fully_random: false
            }),
            json!({"masquerade": null})
        );
        assert_eq!(
            v4(Stmt::Reject),
            json!({"reject": {"type": "icmp", "expr": "port-unreachable"}})
        );
        assert_eq!(
            stmt(IpFamily::V6, Stmt::Reject),
            json!({"reject": {"type": "icmpv6", "expr": "port-unreachable"}})
        );
    }

    #[test]
    fn objects() {
        let t4 = Table::new(IpFamily::V4, "t");
        let t6 = Table::new(IpFamily::V6, "t");
        assert_eq!(
            table_json(&t6),
            json!({"table": {"family": "ip6", "name": "t"}})
        );
        assert_eq!(
            chain_ref_json(&t4, "c"),
            json!({"chain": {"family": "ip", "table": "t", "name": "c"}})
        );
        let chain = Chain {
            name: "c".into(),
            base: Some(BaseChain {
                chain_type: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: 100,
            }),
            rules: vec![],
        };
        assert_eq!(
            chain_json(&t6, &chain),
            json!({"chain": {"family": "ip6", "table": "t", "name": "c", "type": "nat",
                "hook": "postrouting", "prio": 100, "policy": "accept"}})
        );
        let rule = Rule::new(vec![Stmt::Verdict(Verdict::Accept)]).with_comment("hi");
        assert_eq!(
            rule_json(&t4, "c", &rule),
            json!({"rule": {"family": "ip", "table": "t", "chain": "c",
                "expr": [{"accept": null}], "comment": "hi"}})
        );

        let mut vmap = Set::new(
            "svc",
            vec![KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
            Some(DataType::Verdict),
        );
        vmap.flags = SetFlags {
            interval: true,
            dynamic: true,
            timeout: Some(60),
        };
        vmap.comment = Some("services".into());
        let key = vec![
            Value::Addr(ip("fd00::1")),
            Value::Proto(Protocol::Tcp),
            Value::Port(80),
        ];
        vmap.elements
            .insert(key.clone(), Some(ElemData::Verdict(Verdict::Accept)));
        assert_eq!(
            set_with_elements_json(&t6, &vmap),
            json!({"map": {"family": "ip6", "table": "t", "name": "svc",
                "type": ["ipv6_addr", "inet_proto", "inet_service"], "map": "verdict",
                "flags": ["interval", "timeout"], "timeout": 60, "comment": "services",
                "elem": [[{"concat": ["fd00::1", "tcp", 80]}, {"accept": null}]]}})
        );
        assert!(set_json(&t6, &vmap)["map"].get("elem").is_none());

        let addr_map = Set::new("a", vec![KeyType::InetService], Some(DataType::Addr));
        assert_eq!(set_json(&t6, &addr_map)["map"]["map"], json!("ipv6_addr"));
        assert_eq!(set_json(&t4, &addr_map)["map"]["map"], json!("ipv4_addr"));
        let port_map = Set::new("p", vec![KeyType::InetProto], Some(DataType::InetService));
        assert_eq!(
            set_json(&t4, &port_map),
            json!({"map": {"family": "ip", "table": "t", "name": "p", "type": "inet_proto",
                "map": "inet_service"}})
        );
        let plain = Set::new("s", vec![KeyType::Ipv4Addr], None);
        assert_eq!(
            set_json(&t4, &plain),
            json!({"set": {"family": "ip", "table": "t", "name": "s", "type": "ipv4_addr"}})
        );

        assert_eq!(
            element_json(
                &t6,
                "svc",
                &key,
                Some(&ElemData::Verdict(Verdict::Goto("c".into())))
            ),
            json!({"element": {"family": "ip6", "table": "t", "name": "svc",
                "elem": [[{"concat": ["fd00::1", "tcp", 80]}, {"goto": {"target": "c"}}]]}})
        );
        assert_eq!(
            element_json(
                &t6,
                "a",
                &[Value::Port(80)],
                Some(&ElemData::Addr(ip("fd00::2")))
            ),
            json!({"element": {"family": "ip6", "table": "t", "name": "a",
                "elem": [[80, "fd00::2"]]}})
        );
        assert_eq!(
            element_json(
                &t4,
                "p",
                &[Value::Proto(Protocol::Udp)],
                Some(&ElemData::Port(53))
            ),
            json!({"element": {"family": "ip", "table": "t", "name": "p",
                "elem": [["udp", 53]]}})
        );
        assert_eq!(
            elements_json(&t4, "s", [(&[Value::Addr(ip("1.2.3.4"))][..], None)]),
            json!({"element": {"family": "ip", "table": "t", "name": "s", "elem": ["1.2.3.4"]}})
        );
        assert_eq!(
            json_command(Verb::Delete, chain_ref_json(&t4, "c")),
            json!({"delete": {"chain": {"family": "ip", "table": "t", "name": "c"}}})
        );
    }

    #[test]
    fn document_order_and_determinism() {
        let ruleset = sample_ruleset();
        let value = to_json_value(&ruleset);
        let text = to_json(&ruleset);
        assert_eq!(text, to_json(&ruleset.clone()));
        assert!(text.ends_with("}\n"));
        assert!(text.starts_with("{\n  \"nftables\": [\n"));
        let kinds: Vec<(String, String)> = value["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (kind, obj) = c["add"].as_object().unwrap().iter().next().unwrap();
                (obj["family"].as_str().unwrap().to_owned(), kind.clone())
            })
            .collect();
        // Per family: table, chains, sets and maps, rules.
        let rank = |k: &str| match k {
            "table" => 0,
            "chain" => 1,
            "set" | "map" => 2,
            "rule" => 3,
            _ => 9,
        };
        let order: Vec<(String, i32)> = kinds.iter().map(|(f, k)| (f.clone(), rank(k))).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        assert_eq!(order.first().map(|o| o.0.as_str()), Some("ip"));
        assert!(order.iter().all(|o| o.1 != 9));
        let t6 = sample_table(IpFamily::V6);
        let rules: usize = t6.chains.values().map(|c| c.rules.len()).sum();
        assert_eq!(
            kinds
                .iter()
                .filter(|(f, k)| f == "ip6" && k == "rule")
                .count(),
            rules
        );
    }
}
