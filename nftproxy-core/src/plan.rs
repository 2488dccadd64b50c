//! `plan(old, new)`: the smallest nft transaction that turns one ruleset into another.
//!
//! A [`Transaction`] is plain data, a list of [`Op`]s in the order nft must run them, in the manner
//! of knftables: `Display` prints the nft script, [`Transaction::to_json`] the libnftables JSON
//! commands, and [`crate::fake::Fake`] applies it in memory with nft's checks. Nothing here runs nft.
//!
//! # What changes
//!
//! * Set and map contents change by element: removed keys and keys whose data changed are
//!   deleted, new keys and keys whose data changed are added (nft refuses to overwrite an element's
//!   data, so a change is a delete and an add in the same transaction).
//! * A chain whose rule list changed is flushed and refilled in full.
//! * New chains and sets are created, removed ones deleted. A chain whose hook changed, or a set
//!   whose type, flags or timeout changed, is deleted and created again; every chain whose
//!   rules name it is flushed and refilled, and every verdict element that names a re-created
//!   chain is deleted and added again, because nft refuses to delete a referenced object.
//! * A table whose family disappeared is deleted with everything in it.
//!
//! # Order
//!
//! nft checks references as each command runs, so the ops come in this order:
//!
//! 1. flush changed chains and chains about to be deleted,
//! 2. delete elements (removed keys, keys whose data changed, verdicts naming deleted chains),
//! 3. delete removed and redefined sets,
//! 4. delete removed and redefined chains,
//! 5. delete removed tables,
//! 6. add tables, chains and sets,
//! 7. add elements (verdict elements name chains, which now exist),
//! 8. add rules (rules name sets and chains, which now exist).
//!
//! Element adds and deletes are grouped into one op per set and direction, so the number of ops
//! ([`Transaction::len`]) is the number of nft commands.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value as Json;

use crate::render::{self, Verb};
use crate::ruleset::{
    BaseChain, Chain, DataType, ElemData, KeyType, MapRef, MatchRight, Rule, Ruleset, Set,
    SetFlags, Stmt, Table, Value, Verdict,
};
use crate::snapshot::IpFamily;

/// Identifies a table: family and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    /// Address family.
    pub family: IpFamily,
    /// Table name.
    pub name: String,
}

impl TableRef {
    /// The reference of an existing table.
    pub fn of(table: &Table) -> Self {
        Self {
            family: table.family,
            name: table.name.clone(),
        }
    }
    /// An empty [`Table`] with this family and name, as the renderers take.
    pub fn to_table(&self) -> Table {
        Table::new(self.family, self.name.clone())
    }
}

impl fmt::Display for TableRef {
    /// `FAMILY NAME`, as nft writes a table after its keyword.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", render::family_text(self.family), self.name)
    }
}

/// A chain without its rules: what `add chain` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    /// Chain name.
    pub name: String,
    /// Hook attachment, for base chains.
    pub base: Option<BaseChain>,
}

impl ChainDef {
    /// The definition of a chain, without its rules.
    pub fn of(chain: &Chain) -> Self {
        Self {
            name: chain.name.clone(),
            base: chain.base,
        }
    }
    /// An empty chain with this definition.
    pub fn to_chain(&self) -> Chain {
        Chain {
            name: self.name.clone(),
            base: self.base,
            rules: Vec::new(),
        }
    }
}

/// A set or map without its elements: what `add set` / `add map` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    /// Name.
    pub name: String,
    /// Key type, a concatenation when longer than one.
    pub key: Vec<KeyType>,
    /// Data type, for maps.
    pub data: Option<DataType>,
    /// Flags and default timeout.
    pub flags: SetFlags,
    /// Comment.
    pub comment: Option<String>,
}

impl SetDef {
    /// The definition of a set, without its elements.
    pub fn of(set: &Set) -> Self {
        Self {
            name: set.name.clone(),
            key: set.key.clone(),
            data: set.data,
            flags: set.flags,
            comment: set.comment.clone(),
        }
    }
    /// An empty set with this definition.
    pub fn to_set(&self) -> Set {
        Set {
            name: self.name.clone(),
            key: self.key.clone(),
            data: self.data,
            flags: self.flags,
            comment: self.comment.clone(),
            elements: BTreeMap::new(),
        }
    }
    /// Is this a map?
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }
}

/// Do two sets have the same definition (everything but the elements)? Comments are descriptive
/// and not compared: nft 1.0.6 drops set comments given in JSON, so the kernel's copy of a set
/// loaded through the JSON API has none.
fn same_def(a: &Set, b: &Set) -> bool {
    a.name == b.name && a.key == b.key && a.data == b.data && a.flags == b.flags
}

/// A set or map element: key components and, for maps, data.
pub type Element = (Vec<Value>, Option<ElemData>);

/// The most elements [`Transaction::to_json_compact`] puts into one command.
pub const ELEMENT_CHUNK: usize = 8192;

/// One nft command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add table FAMILY NAME`.
    AddTable(TableRef),
    /// `delete table FAMILY NAME`: deletes the table with all its chains, rules and sets.
    DeleteTable(TableRef),
    /// `add chain FAMILY TABLE NAME [{ type ... hook ... priority ...; }]`.
    AddChain {
        /// The table.
        table: TableRef,
        /// The chain, without rules.
        chain: ChainDef,
    },
    /// `flush chain FAMILY TABLE NAME`: removes all rules of the chain.
    FlushChain {
        /// The table.
        table: TableRef,
        /// Chain name.
        chain: String,
    },
    /// `delete chain FAMILY TABLE NAME`: the chain must be empty and unreferenced.
    DeleteChain {
        /// The table.
        table: TableRef,
        /// Chain name.
        chain: String,
    },
    /// `add rule FAMILY TABLE CHAIN STATEMENTS`: appends a rule.
    AddRule {
        /// The table.
        table: TableRef,
        /// Chain name.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// `add set` / `add map`, without elements.
    AddSet {
        /// The table.
        table: TableRef,
        /// The set, without elements.
        set: SetDef,
    },
    /// `delete set` / `delete map`: the set must not be referenced by a rule.
    DeleteSet {
        /// The table.
        table: TableRef,
        /// The set as it is now, without elements (nft names it by family, table and name; the
        /// definition says whether it is a set or a map).
        set: SetDef,
    },
    /// `add element FAMILY TABLE SET { KEY [: DATA], ... }`.
    AddElements {
        /// The table.
        table: TableRef,
        /// Set name.
        set: String,
        /// Elements to add, sorted by key.
        elems: Vec<Element>,
    },
    /// `delete element FAMILY TABLE SET { KEY, ... }`.
    DeleteElements {
        /// The table.
        table: TableRef,
        /// Set name.
        set: String,
        /// Keys to delete, sorted.
        keys: Vec<Vec<Value>>,
    },
}

impl Op {
    /// The table this op works on.
    pub fn table(&self) -> &TableRef {
        match self {
            Self::AddTable(t) | Self::DeleteTable(t) => t,
            Self::AddChain { table, .. }
            | Self::FlushChain { table, .. }
            | Self::DeleteChain { table, .. }
            | Self::AddRule { table, .. }
            | Self::AddSet { table, .. }
            | Self::DeleteSet { table, .. }
            | Self::AddElements { table, .. }
            | Self::DeleteElements { table, .. } => table,
        }
    }
}

/// An ordered list of nft commands that nft runs as one atomic transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    /// The commands, in order.
    pub ops: Vec<Op>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of nft commands.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Does the transaction do nothing?
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Number of elements added or deleted over all element ops.
    pub fn element_count(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::AddElements { elems, .. } => elems.len(),
                Op::DeleteElements { keys, .. } => keys.len(),
                _ => 0,
            })
            .sum()
    }
    /// Number of `add rule` commands.
    pub fn rule_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::AddRule { .. }))
            .count()
    }
}

impl Op {
    /// The nft command verb.
    pub fn verb(&self) -> Verb {
        match self {
            Self::AddTable(_)
            | Self::AddChain { .. }
            | Self::AddRule { .. }
            | Self::AddSet { .. }
            | Self::AddElements { .. } => Verb::Add,
            Self::DeleteTable(_)
            | Self::DeleteChain { .. }
            | Self::DeleteSet { .. }
            | Self::DeleteElements { .. } => Verb::Delete,
            Self::FlushChain { .. } => Verb::Flush,
        }
    }

    /// The command's object as nft text, after the verb: `chain ip nftproxy services`.
    pub fn object_text(&self) -> String {
        let table = self.table().to_table();
        match self {
            Self::AddTable(_) | Self::DeleteTable(_) => render::table_text(&table),
            Self::AddChain { chain, .. } => render::chain_text(&table, &chain.to_chain()),
            Self::FlushChain { chain, .. } | Self::DeleteChain { chain, .. } => {
                render::chain_ref_text(&table, chain)
            }
            Self::AddRule { chain, rule, .. } => render::rule_text(&table, chain, rule),
            Self::AddSet { set, .. } => render::set_text(&table, &set.to_set()),
            Self::DeleteSet { set, .. } => render::set_ref_text(&table, &set.to_set()),
            Self::AddElements { set, elems, .. } => render::elements_text(
                &table,
                set,
                elems.iter().map(|(k, d)| (k.as_slice(), d.as_ref())),
            ),
            Self::DeleteElements { set, keys, .. } => {
                render::elements_text(&table, set, keys.iter().map(|k| (k.as_slice(), None)))
            }
        }
    }

    /// The command's object as libnftables JSON: `{"chain": {...}}`.
    pub fn object_json(&self) -> Json {
        let table = self.table().to_table();
        match self {
            Self::AddTable(_) | Self::DeleteTable(_) => render::table_json(&table),
            Self::AddChain { chain, .. } => render::chain_json(&table, &chain.to_chain()),
            Self::FlushChain { chain, .. } | Self::DeleteChain { chain, .. } => {
                render::chain_ref_json(&table, chain)
            }
            Self::AddRule { chain, rule, .. } => render::rule_json(&table, chain, rule),
            Self::AddSet { set, .. } | Self::DeleteSet { set, .. } => {
                render::set_json(&table, &set.to_set())
            }
            Self::AddElements { set, elems, .. } => render::elements_json(
                &table,
                set,
                elems.iter().map(|(k, d)| (k.as_slice(), d.as_ref())),
            ),
            Self::DeleteElements { set, keys, .. } => {
                render::elements_json(&table, set, keys.iter().map(|k| (k.as_slice(), None)))
            }
        }
    }

    /// The command as libnftables JSON: `{"add": {"chain": {...}}}`.
    pub fn to_json_value(&self) -> Json {
        render::json_command(self.verb(), self.object_json())
    }
}

impl fmt::Display for Op {
    /// One nft command line, without newline: `add element ip nftproxy cluster-ips { 10.0.0.1 }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb(), self.object_text())
    }
}

impl fmt::Display for Transaction {
    /// The nft script: one command per line, for `nft -f`, which runs it as one transaction.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}

impl Transaction {
    /// The transaction as a libnftables JSON document, `{"nftables": [{"add": ...}, ...]}`.
    pub fn to_json_value(&self) -> Json {
        render::json_document(self.ops.iter().map(Op::to_json_value))
    }

    /// The transaction as libnftables JSON text for `nft -j -f`, pretty-printed, deterministic.
    pub fn to_json(&self) -> String {
        render::json_to_string(&self.to_json_value())
    }

    /// The same commands as compact JSON, for sending to nft: rendered command by command, with
    /// long element lists split into commands of at most [`ELEMENT_CHUNK`] elements, so that no
    /// JSON tree of the whole transaction is ever held in memory.
    pub fn to_json_compact(&self) -> String {
        let mut out = String::from("{\"nftables\":[");
        let mut first = true;
        let mut push = |value: Json| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&value.to_string());
        };
        for op in &self.ops {
            match op {
                Op::AddElements { table, set, elems } if elems.len() > ELEMENT_CHUNK => {
                    for chunk in elems.chunks(ELEMENT_CHUNK) {
                        let part = Op::AddElements {
                            table: table.clone(),
                            set: set.clone(),
                            elems: chunk.to_vec(),
                        };
                        push(part.to_json_value());
                    }
                }
                Op::DeleteElements { table, set, keys } if keys.len() > ELEMENT_CHUNK => {
                    for chunk in keys.chunks(ELEMENT_CHUNK) {
                        let part = Op::DeleteElements {
                            table: table.clone(),
                            set: set.clone(),
                            keys: chunk.to_vec(),
                        };
                        push(part.to_json_value());
                    }
                }
                _ => push(op.to_json_value()),
            }
        }
        out.push_str("]}\n");
        out
    }
}

/// Names of the sets and chains a rule refers to.
#[derive(Debug, Default)]
pub(crate) struct RuleRefs<'a> {
    /// Named sets and maps.
    pub(crate) sets: Vec<&'a str>,
    /// Chains reached by jump or goto, directly or through an anonymous verdict map.
    pub(crate) chains: Vec<&'a str>,
}

/// The chain a verdict names, if any.
pub(crate) fn verdict_chain(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
        Verdict::Accept | Verdict::Drop | Verdict::Return => None,
    }
}

/// The chain a map element's data names, if any.
pub(crate) fn elem_chain(data: Option<&ElemData>) -> Option<&str> {
    match data {
        Some(ElemData::Verdict(v)) => verdict_chain(v),
        _ => None,
    }
}

/// Collects the sets and chains a rule refers to.
pub(crate) fn rule_refs(rule: &Rule) -> RuleRefs<'_> {
    let mut refs = RuleRefs::default();
    for stmt in &rule.stmts {
        match stmt {
            Stmt::Match {
                right: MatchRight::Set(s),
                ..
            } => refs.sets.push(s),
            Stmt::Match { .. } => {}
            Stmt::Verdict(v) => refs.chains.extend(verdict_chain(v)),
            Stmt::Vmap {
                map: MapRef::Named(s),
                ..
            } => refs.sets.push(s),
            Stmt::Vmap {
                map: MapRef::Anon(entries),
                ..
            } => {
                refs.chains
                    .extend(entries.iter().filter_map(|(_, v)| verdict_chain(v)));
            }
            Stmt::SetUpdate { set, .. } => refs.sets.push(set),
            Stmt::DnatMap {
                addr_map, port_map, ..
            } => {
                refs.sets.push(addr_map);
                refs.sets.push(port_map);
            }
            Stmt::SetMark(_) | Stmt::Masquerade { .. } | Stmt::Reject => {}
        }
    }
    refs
}

/// Ops collected per step, concatenated in step order at the end.
#[derive(Default)]
struct Steps {
    flush_chains: Vec<Op>,
    delete_elements: Vec<Op>,
    delete_sets: Vec<Op>,
    delete_chains: Vec<Op>,
    delete_tables: Vec<Op>,
    add_objects: Vec<Op>,
    add_elements: Vec<Op>,
    add_rules: Vec<Op>,
}

impl Steps {
    fn finish(self) -> Transaction {
        let mut ops = self.flush_chains;
        ops.extend(self.delete_elements);
        ops.extend(self.delete_sets);
        ops.extend(self.delete_chains);
        ops.extend(self.delete_tables);
        ops.extend(self.add_objects);
        ops.extend(self.add_elements);
        ops.extend(self.add_rules);
        Transaction { ops }
    }

    fn add_rules(&mut self, table: &TableRef, chain: &Chain) {
        for rule in &chain.rules {
            self.add_rules.push(Op::AddRule {
                table: table.clone(),
                chain: chain.name.clone(),
                rule: rule.clone(),
            });
        }
    }

    fn add_all_elements(&mut self, table: &TableRef, set: &Set) {
        if !set.elements.is_empty() {
            self.add_elements.push(Op::AddElements {
                table: table.clone(),
                set: set.name.clone(),
                elems: set
                    .elements
                    .iter()
                    .map(|(k, d)| (k.clone(), d.clone()))
                    .collect(),
            });
        }
    }

    /// Everything to create a table from nothing.
    fn create_table(&mut self, new: &Table) {
        let t = TableRef::of(new);
        self.add_objects.push(Op::AddTable(t.clone()));
        for chain in new.chains.values() {
            self.add_objects.push(Op::AddChain {
                table: t.clone(),
                chain: ChainDef::of(chain),
            });
            self.add_rules(&t, chain);
        }
        for set in new.sets.values() {
            self.add_objects.push(Op::AddSet {
                table: t.clone(),
                set: SetDef::of(set),
            });
            self.add_all_elements(&t, set);
        }
    }

    /// The changes between two versions of the same table.
    fn update_table(&mut self, old: &Table, new: &Table) {
        let t = TableRef::of(new);

        // Sets and chains that go away (removed, or deleted to be created again).
        let dead_sets: BTreeSet<&str> = old
            .sets
            .values()
            .filter(|s| new.sets.get(&s.name).is_none_or(|n| !same_def(s, n)))
            .map(|s| s.name.as_str())
            .collect();
        let dead_chains: BTreeSet<&str> = old
            .chains
            .values()
            .filter(|c| new.chains.get(&c.name).is_none_or(|n| n.base != c.base))
            .map(|c| c.name.as_str())
            .collect();

        // Chains.
        for old_chain in old.chains.values() {
            let name = old_chain.name.as_str();
            if dead_chains.contains(name) {
                if !old_chain.rules.is_empty() {
                    self.flush_chains.push(flush(&t, name));
                }
                self.delete_chains.push(Op::DeleteChain {
                    table: t.clone(),
                    chain: name.into(),
                });
                continue;
            }
            let Some(new_chain) = new.chains.get(name) else {
                continue;
            };
            let names_dead = || {
                old_chain.rules.iter().any(|r| {
                    let refs = rule_refs(r);
                    refs.sets.iter().any(|s| dead_sets.contains(s))
                        || refs.chains.iter().any(|c| dead_chains.contains(c))
                })
            };
            if old_chain.rules != new_chain.rules || names_dead() {
                if !old_chain.rules.is_empty() {
                    self.flush_chains.push(flush(&t, name));
                }
                self.add_rules(&t, new_chain);
            }
        }
        for new_chain in new.chains.values() {
            let name = new_chain.name.as_str();
            if !old.chains.contains_key(name) || dead_chains.contains(name) {
                self.add_objects.push(Op::AddChain {
                    table: t.clone(),
                    chain: ChainDef::of(new_chain),
                });
                self.add_rules(&t, new_chain);
            }
        }

        // Sets.
        for old_set in old.sets.values() {
            if dead_sets.contains(old_set.name.as_str()) {
                self.delete_sets.push(Op::DeleteSet {
                    table: t.clone(),
                    set: SetDef::of(old_set),
                });
            } else if let Some(new_set) = new.sets.get(&old_set.name) {
                if old_set != new_set || !dead_chains.is_empty() {
                    self.update_elements(&t, old_set, new_set, &dead_chains);
                }
            }
        }
        for new_set in new.sets.values() {
            if !old.sets.contains_key(&new_set.name) || dead_sets.contains(new_set.name.as_str()) {
                self.add_objects.push(Op::AddSet {
                    table: t.clone(),
                    set: SetDef::of(new_set),
                });
                self.add_all_elements(&t, new_set);
            }
        }
    }

    /// Element deletes and adds between two versions of a set with the same definition, by a
    /// merge walk of the two sorted element maps. Elements whose verdict names a chain in
    /// `dead_chains` are deleted and, if still wanted, added again.
    fn update_elements(
        &mut self,
        t: &TableRef,
        old: &Set,
        new: &Set,
        dead_chains: &BTreeSet<&str>,
    ) {
        let names_dead =
            |d: &Option<ElemData>| elem_chain(d.as_ref()).is_some_and(|c| dead_chains.contains(c));
        let mut deletes: Vec<Vec<Value>> = Vec::new();
        let mut adds: Vec<Element> = Vec::new();
        let mut o = old.elements.iter().peekable();
        let mut n = new.elements.iter().peekable();
        loop {
            let order = match (o.peek(), n.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((ok, _)), Some((nk, _))) => ok.cmp(nk),
            };
            match order {
                Ordering::Less => {
                    if let Some((k, _)) = o.next() {
                        deletes.push(k.clone());
                    }
                }
                Ordering::Greater => {
                    if let Some((k, d)) = n.next() {
                        adds.push((k.clone(), d.clone()));
                    }
                }
                Ordering::Equal => {
                    if let (Some((k, od)), Some((_, nd))) = (o.next(), n.next()) {
                        if od != nd || names_dead(od) {
                            deletes.push(k.clone());
                            adds.push((k.clone(), nd.clone()));
                        }
                    }
                }
            }
        }
        if !deletes.is_empty() {
            self.delete_elements.push(Op::DeleteElements {
                table: t.clone(),
                set: old.name.clone(),
                keys: deletes,
            });
        }
        if !adds.is_empty() {
            self.add_elements.push(Op::AddElements {
                table: t.clone(),
                set: new.name.clone(),
                elems: adds,
            });
        }
    }
}

fn flush(t: &TableRef, chain: &str) -> Op {
    Op::FlushChain {
        table: t.clone(),
        chain: chain.to_owned(),
    }
}

/// The transaction that turns the kernel state `old` (what we last applied) into `new`.
///
/// `plan(a, a)` is empty. Applying `plan(a, b)` to `a` yields exactly `b` (see
/// [`crate::fake::Fake`]). The cost is linear in the size of the rulesets for the comparisons and
/// proportional to the change for everything else.
pub fn plan(old: &Ruleset, new: &Ruleset) -> Transaction {
    let mut steps = Steps::default();
    for (family, old_table) in &old.tables {
        match new.tables.get(family) {
            Some(new_table) if new_table.name == old_table.name => {
                if old_table != new_table {
                    steps.update_table(old_table, new_table);
                }
            }
            _ => steps
                .delete_tables
                .push(Op::DeleteTable(TableRef::of(old_table))),
        }
    }
    for (family, new_table) in &new.tables {
        match old.tables.get(family) {
            Some(old_table) if old_table.name == new_table.name => {}
            _ => steps.create_table(new_table),
        }
    }
    steps.finish()
}

/// The transaction that creates `new` from nothing: `plan(&Ruleset::default(), new)`.
pub fn full(new: &Ruleset) -> Transaction {
    plan(&Ruleset::default(), new)
}

/// The transaction that deletes our tables of `old`.
pub fn delete_all(old: &Ruleset) -> Transaction {
    plan(old, &Ruleset::default())
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    #[test]
    fn compact_json_is_the_same_commands_chunked() {
        let table = TableRef {
            family: crate::snapshot::IpFamily::V4,
            name: "t".into(),
        };
        let elems: Vec<Element> = (0..(ELEMENT_CHUNK as u16 + 5))
            .map(|p| (vec![Value::Port(p)], None))
            .collect();
        let tx = Transaction {
            ops: vec![Op::AddElements {
                table,
                set: "s".into(),
                elems,
            }],
        };
        let compact: Json = serde_json::from_str(&tx.to_json_compact()).unwrap();
        let commands = compact["nftables"].as_array().unwrap();
        assert_eq!(commands.len(), 2);
        let count = |c: &Json| c["add"]["element"]["elem"].as_array().unwrap().len();
        assert_eq!(count(&commands[0]) + count(&commands[1]), ELEMENT_CHUNK + 5);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::time::Instant;

    use super::*;
    use crate::compile::compile;
    use crate::config::ProxyConfig;
    use crate::fake::Fake;
    use crate::ruleset::{ChainType, Expr, Hook, MatchOp};
    use crate::snapshot::{
        AddressType, Endpoint, EndpointSlice, ObjectName, Protocol, Service, ServicePort,
        ServiceType, SlicePort, Snapshot, TrafficPolicy,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> Value {
        Value::Addr(ip(s))
    }

    fn goto(c: &str) -> Option<ElemData> {
        Some(ElemData::Verdict(Verdict::Goto(c.into())))
    }

    fn jump(c: &str) -> Stmt {
        Stmt::Verdict(Verdict::Jump(c.into()))
    }

    fn vmap(map: &str) -> Stmt {
        Stmt::Vmap {
            key: Expr::Daddr(IpFamily::V4),
            map: MapRef::Named(map.into()),
        }
    }

    fn in_set(set: &str) -> Stmt {
        Stmt::Match {
            left: Expr::Saddr(IpFamily::V4),
            op: MatchOp::Eq,
            right: MatchRight::Set(set.into()),
        }
    }

    fn chain(name: &str, rules: Vec<Vec<Stmt>>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
            rules: rules.into_iter().map(Rule::new).collect(),
        }
    }

    /// A small table: base chain `nat-output` → `vmap @svc` (verdicts `goto a` / `goto b`),
    /// chain `a` matches `@ips`, chain `b` accepts.
    fn small() -> Ruleset {
        let mut t = Table::new(IpFamily::V4, "nftproxy");
        let mut out = chain("nat-output", vec![vec![vmap("svc")]]);
        out.base = Some(BaseChain {
            chain_type: ChainType::Nat,
            hook: Hook::Output,
            priority: -100,
        });
        for c in [
            out,
            chain(
                "a",
                vec![vec![in_set("ips"), Stmt::Verdict(Verdict::Accept)]],
            ),
            chain("b", vec![vec![Stmt::Verdict(Verdict::Accept)]]),
        ] {
            t.chains.insert(c.name.clone(), c);
        }
        let mut svc = Set::new("svc", vec![KeyType::Ipv4Addr], Some(DataType::Verdict));
        svc.elements.insert(vec![addr("10.0.0.1")], goto("a"));
        svc.elements.insert(vec![addr("10.0.0.2")], goto("b"));
        let mut ips = Set::new("ips", vec![KeyType::Ipv4Addr], None);
        ips.elements.insert(vec![addr("192.168.0.1")], None);
        ips.elements.insert(vec![addr("192.168.0.2")], None);
        t.sets.insert(svc.name.clone(), svc);
        t.sets.insert(ips.name.clone(), ips);
        let mut rs = Ruleset::default();
        rs.tables.insert(IpFamily::V4, t);
        rs
    }

    fn v4(rs: &mut Ruleset) -> &mut Table {
        rs.tables.get_mut(&IpFamily::V4).unwrap()
    }

    /// The step of an op in the documented order.
    fn step(op: &Op) -> u8 {
        match op {
            Op::FlushChain { .. } => 1,
            Op::DeleteElements { .. } => 2,
            Op::DeleteSet { .. } => 3,
            Op::DeleteChain { .. } => 4,
            Op::DeleteTable(_) => 5,
            Op::AddTable(_) | Op::AddChain { .. } | Op::AddSet { .. } => 6,
            Op::AddElements { .. } => 7,
            Op::AddRule { .. } => 8,
        }
    }

    /// Applies `plan(a, b)` to a fake holding `a` and checks the result is `b`, that the ops come
    /// in step order, and that `plan(b, b)` is empty. Returns the transaction.
    fn check(a: &Ruleset, b: &Ruleset) -> Transaction {
        let tx = plan(a, b);
        let steps: Vec<u8> = tx.ops.iter().map(step).collect();
        assert!(
            steps.windows(2).all(|w| w[0] <= w[1]),
            "ops out of order:\n{tx}"
        );
        let mut fake = Fake::from(a.clone());
        if let Err(e) = fake.apply(&tx) {
            panic!("{e}\ntransaction:\n{tx}");
        }
        assert!(
            fake.dump() == b,
            "apply(plan(a, b)) != b; transaction:\n{tx}"
        );
        assert!(plan(b, b).is_empty());
        tx
    }

    fn lines(tx: &Transaction) -> Vec<String> {
        tx.to_string().lines().map(str::to_owned).collect()
    }

    #[test]
    fn same_ruleset_is_empty() {
        let a = small();
        let tx = plan(&a, &a.clone());
        assert!(tx.is_empty());
        assert_eq!(tx.len(), 0);
        assert_eq!(tx.element_count(), 0);
        assert_eq!(tx.to_string(), "");
        assert_eq!(tx.to_json(), "{\n  \"nftables\": []\n}\n");
        assert!(plan(&Ruleset::default(), &Ruleset::default()).is_empty());
    }

    #[test]
    fn element_added_and_removed() {
        let a = small();
        let mut b = a.clone();
        let ips = v4(&mut b).sets.get_mut("ips").unwrap();
        ips.elements.remove(&vec![addr("192.168.0.1")]);
        ips.elements.insert(vec![addr("192.168.0.3")], None);
        ips.elements.insert(vec![addr("192.168.0.4")], None);
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "delete element ip nftproxy ips { 192.168.0.1 }",
                "add element ip nftproxy ips { 192.168.0.3, 192.168.0.4 }",
            ]
        );
        assert_eq!(tx.len(), 2);
        assert_eq!(tx.element_count(), 3);
    }

    #[test]
    fn element_data_change_is_delete_then_add() {
        let a = small();
        let mut b = a.clone();
        v4(&mut b)
            .sets
            .get_mut("svc")
            .unwrap()
            .elements
            .insert(vec![addr("10.0.0.1")], goto("b"));
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "delete element ip nftproxy svc { 10.0.0.1 }",
                "add element ip nftproxy svc { 10.0.0.1 : goto b }",
            ]
        );
        // Without the delete, nft (and the fake) refuse to overwrite the data.
        let mut fake = Fake::from(a.clone());
        let add_only = Transaction {
            ops: tx.ops[1..].to_vec(),
        };
        let err = fake.apply(&add_only).unwrap_err();
        assert!(err.is_exists(), "{err}");
        assert_eq!(fake.dump(), &a);
    }

    #[test]
    fn changed_chain_is_flushed_and_refilled() {
        let a = small();
        let mut b = a.clone();
        v4(&mut b)
            .chains
            .get_mut("a")
            .unwrap()
            .rules
            .insert(0, Rule::new(vec![jump("b")]));
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "flush chain ip nftproxy a",
                "add rule ip nftproxy a jump b",
                "add rule ip nftproxy a ip saddr @ips accept",
            ]
        );
        assert_eq!(tx.rule_count(), 2);
    }

    #[test]
    fn rule_comment_change_refills_chain() {
        let a = small();
        let mut b = a.clone();
        let rules = &mut v4(&mut b).chains.get_mut("b").unwrap().rules;
        rules[0] = rules[0].clone().with_comment("hello");
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "flush chain ip nftproxy b",
                "add rule ip nftproxy b accept comment \"hello\""
            ]
        );
    }

    #[test]
    fn chain_added_and_removed() {
        let a = small();
        let mut b = a.clone();
        let t = v4(&mut b);
        // Chain `b` goes: its rules and the element naming it must go first.
        t.chains.remove("b");
        t.sets
            .get_mut("svc")
            .unwrap()
            .elements
            .remove(&vec![addr("10.0.0.2")]);
        t.chains.insert(
            "c".into(),
            chain("c", vec![vec![Stmt::Verdict(Verdict::Drop)]]),
        );
        t.chains.insert("empty".into(), chain("empty", vec![]));
        t.sets
            .get_mut("svc")
            .unwrap()
            .elements
            .insert(vec![addr("10.0.0.3")], goto("c"));
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "flush chain ip nftproxy b",
                "delete element ip nftproxy svc { 10.0.0.2 }",
                "delete chain ip nftproxy b",
                "add chain ip nftproxy c",
                "add chain ip nftproxy empty",
                "add element ip nftproxy svc { 10.0.0.3 : goto c }",
                "add rule ip nftproxy c drop",
            ]
        );
        // Removing an empty chain needs no flush.
        let tx = check(&b, &{
            let mut c = b.clone();
            v4(&mut c).chains.remove("empty");
            c
        });
        assert_eq!(lines(&tx), ["delete chain ip nftproxy empty"]);
    }

    #[test]
    fn set_added_and_removed() {
        let a = small();
        let mut b = a.clone();
        let t = v4(&mut b);
        t.sets.remove("ips");
        t.chains.get_mut("a").unwrap().rules = vec![Rule::new(vec![in_set("new")])];
        let mut new = Set::new("new", vec![KeyType::Ipv4Addr], None);
        new.flags.interval = true;
        new.elements
            .insert(vec![Value::Prefix("10.0.0.0/8".parse().unwrap())], None);
        t.sets.insert("new".into(), new);
        t.sets.insert(
            "unused".into(),
            Set::new("unused", vec![KeyType::InetService], None),
        );
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "flush chain ip nftproxy a",
                "delete set ip nftproxy ips",
                "add set ip nftproxy new { type ipv4_addr; flags interval; }",
                "add set ip nftproxy unused { type inet_service; }",
                "add element ip nftproxy new { 10.0.0.0/8 }",
                "add rule ip nftproxy a ip saddr @new",
            ]
        );
    }

    #[test]
    fn redefined_set_is_recreated_after_flushing_its_users() {
        let a = small();
        let mut b = a.clone();
        let ips = v4(&mut b).sets.get_mut("ips").unwrap();
        ips.flags.interval = true;
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "flush chain ip nftproxy a",
                "delete set ip nftproxy ips",
                "add set ip nftproxy ips { type ipv4_addr; flags interval; }",
                "add element ip nftproxy ips { 192.168.0.1, 192.168.0.2 }",
                "add rule ip nftproxy a ip saddr @ips accept",
            ]
        );
        // Deleting the set without flushing its user fails.
        let err = Fake::from(a.clone()).apply(&Transaction {
            ops: tx.ops[1..].to_vec(),
        });
        assert!(err.unwrap_err().is_busy());
        // A comment change alone is not a redefinition (nft 1.0.6 drops set comments in JSON).
        let mut c = a.clone();
        v4(&mut c).sets.get_mut("svc").unwrap().comment = Some("services".into());
        assert!(plan(&a, &c).is_empty());
        // A flags change re-creates the set too.
        let mut c = a.clone();
        v4(&mut c).sets.get_mut("svc").unwrap().flags.interval = true;
        let tx = check(&a, &c);
        assert_eq!(
            lines(&tx),
            [
                "flush chain ip nftproxy nat-output",
                "delete map ip nftproxy svc",
                "add map ip nftproxy svc { type ipv4_addr : verdict; flags interval; }",
                "add element ip nftproxy svc { 10.0.0.1 : goto a, 10.0.0.2 : goto b }",
                "add rule ip nftproxy nat-output ip daddr vmap @svc",
            ]
        );
    }

    #[test]
    fn redefined_chain_is_recreated_after_releasing_references() {
        let mut a = small();
        v4(&mut a)
            .chains
            .get_mut("a")
            .unwrap()
            .rules
            .push(Rule::new(vec![jump("b")]));
        let mut b = a.clone();
        v4(&mut b).chains.get_mut("b").unwrap().base = Some(BaseChain {
            chain_type: ChainType::Filter,
            hook: Hook::Input,
            priority: 0,
        });
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "flush chain ip nftproxy a",
                "flush chain ip nftproxy b",
                "delete element ip nftproxy svc { 10.0.0.2 }",
                "delete chain ip nftproxy b",
                "add chain ip nftproxy b { type filter hook input priority 0; policy accept; }",
                "add element ip nftproxy svc { 10.0.0.2 : goto b }",
                "add rule ip nftproxy a ip saddr @ips accept",
                "add rule ip nftproxy a jump b",
                "add rule ip nftproxy b accept",
            ]
        );
    }

    #[test]
    fn tables_by_family() {
        let a = small();
        let mut b = a.clone();
        let mut t6 = Table::new(IpFamily::V6, "nftproxy");
        t6.chains.insert(
            "x".into(),
            chain("x", vec![vec![Stmt::Verdict(Verdict::Accept)]]),
        );
        let mut s = Set::new("s", vec![KeyType::Ipv6Addr], None);
        s.elements.insert(vec![addr("fd00::1")], None);
        t6.sets.insert("s".into(), s);
        b.tables.insert(IpFamily::V6, t6);
        let tx = check(&a, &b);
        assert_eq!(
            lines(&tx),
            [
                "add table ip6 nftproxy",
                "add chain ip6 nftproxy x",
                "add set ip6 nftproxy s { type ipv6_addr; }",
                "add element ip6 nftproxy s { fd00::1 }",
                "add rule ip6 nftproxy x accept",
            ]
        );
        // The ip family disappears: one delete.
        let mut c = b.clone();
        c.tables.remove(&IpFamily::V4);
        assert_eq!(lines(&check(&b, &c)), ["delete table ip nftproxy"]);
        // A renamed table is deleted and created again.
        let mut d = a.clone();
        v4(&mut d).name = "other".into();
        let tx = check(&a, &d);
        assert_eq!(
            tx.ops[0],
            Op::DeleteTable(TableRef::of(&a.tables[&IpFamily::V4]))
        );
        assert_eq!(
            tx.ops[1],
            Op::AddTable(TableRef::of(&d.tables[&IpFamily::V4]))
        );
    }

    #[test]
    fn full_and_delete_all() {
        let a = small();
        let tx = full(&a);
        let mut fake = Fake::new();
        fake.apply(&tx).unwrap();
        assert_eq!(fake.dump(), &a);
        assert_eq!(
            lines(&tx),
            [
                "add table ip nftproxy",
                "add chain ip nftproxy a",
                "add chain ip nftproxy b",
                "add chain ip nftproxy nat-output { type nat hook output priority -100; policy accept; }",
                "add set ip nftproxy ips { type ipv4_addr; }",
                "add map ip nftproxy svc { type ipv4_addr : verdict; }",
                "add element ip nftproxy ips { 192.168.0.1, 192.168.0.2 }",
                "add element ip nftproxy svc { 10.0.0.1 : goto a, 10.0.0.2 : goto b }",
                "add rule ip nftproxy a ip saddr @ips accept",
                "add rule ip nftproxy b accept",
                "add rule ip nftproxy nat-output ip daddr vmap @svc",
            ]
        );
        let del = delete_all(&a);
        assert_eq!(lines(&del), ["delete table ip nftproxy"]);
        fake.apply(&del).unwrap();
        assert_eq!(fake.dump(), &Ruleset::default());
        assert!(delete_all(&Ruleset::default()).is_empty());
    }

    #[test]
    fn json_commands() {
        let a = small();
        let mut b = a.clone();
        let t = v4(&mut b);
        t.sets
            .get_mut("svc")
            .unwrap()
            .elements
            .insert(vec![addr("10.0.0.1")], goto("b"));
        t.chains.remove("a");
        t.sets
            .get_mut("svc")
            .unwrap()
            .elements
            .remove(&vec![addr("10.0.0.2")]);
        let tx = check(&a, &b);
        let json = tx.to_json_value();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), tx.len());
        assert_eq!(
            cmds[0],
            serde_json::json!({"flush": {"chain": {"family": "ip", "table": "nftproxy", "name": "a"}}})
        );
        assert_eq!(cmds[1]["delete"]["element"]["name"], "svc");
        assert_eq!(
            cmds[1]["delete"]["element"]["elem"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            cmds[2],
            serde_json::json!({"delete": {"chain": {"family": "ip", "table": "nftproxy", "name": "a"}}})
        );
        assert_eq!(cmds[3]["add"]["element"]["elem"][0][0], "10.0.0.1");
        assert_eq!(
            cmds[3]["add"]["element"]["elem"][0][1],
            serde_json::json!({"goto": {"target": "b"}})
        );
        assert_eq!(tx.to_json(), tx.clone().to_json(), "deterministic");
        let text = tx.to_json();
        assert!(text.starts_with("{\n  \"nftables\": [") && text.ends_with("}\n"));
        // Sets: delete and add as `map` with the full definition.
        let mut c = a.clone();
        v4(&mut c).sets.get_mut("svc").unwrap().flags.timeout = Some(60);
        let json = check(&a, &c).to_json_value();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds[1]["delete"]["map"]["name"], "svc");
        assert_eq!(cmds[2]["add"]["map"]["timeout"], 60);
        assert_eq!(cmds[2]["add"]["map"]["map"], "verdict");
    }

    #[test]
    fn element_ops_grouped_per_set() {
        let a = small();
        let mut b = a.clone();
        let t = v4(&mut b);
        t.sets.get_mut("ips").unwrap().elements.clear();
        for i in 10..60u8 {
            t.sets
                .get_mut("ips")
                .unwrap()
                .elements
                .insert(vec![addr(&format!("192.168.1.{i}"))], None);
            t.sets
                .get_mut("svc")
                .unwrap()
                .elements
                .insert(vec![addr(&format!("10.0.1.{i}"))], goto("a"));
        }
        let tx = check(&a, &b);
        assert_eq!(tx.len(), 3, "{tx}");
        assert_eq!(tx.element_count(), 2 + 50 + 50);
    }

    // ---- synthetic scale ----

    fn big_map(n: u32) -> Ruleset {
        let mut rs = small();
        let svc = v4(&mut rs).sets.get_mut("svc").unwrap();
        for i in 0..n {
            let [_, b, c, d] = (0x0a00_0000u32 + 0x0100 + i).to_be_bytes();
            svc.elements.insert(
                vec![addr(&format!("10.{b}.{c}.{d}"))],
                goto(if i % 2 == 0 { "a" } else { "b" }),
            );
        }
        rs
    }

    #[test]
    fn plan_time_for_30k_elements_with_one_change() {
        let a = big_map(30_000);
        let mut b = a.clone();
        let svc = v4(&mut b).sets.get_mut("svc").unwrap();
        let (key, data) = svc.elements.iter().nth(15_000).unwrap();
        let flipped = if *data == goto("a") {
            goto("b")
        } else {
            goto("a")
        };
        svc.elements.insert(key.clone(), flipped);
        svc.elements.insert(key_after_last(), goto("b"));
        let start = Instant::now();
        let tx = plan(&a, &b);
        let planned = start.elapsed();
        let start = Instant::now();
        let same = plan(&a, &a);
        let unchanged = start.elapsed();
        assert!(same.is_empty());
        println!(
            "plan(): 30,000 map elements, one changed and one added: {} ops, {} elements in \
             {planned:?}; unchanged: {unchanged:?}",
            tx.len(),
            tx.element_count()
        );
        assert_eq!(tx.len(), 2);
        assert_eq!(tx.element_count(), 3);
        let mut fake = Fake::from(a);
        fake.apply(&tx).unwrap();
        assert!(fake.dump() == &b);
    }

    fn key_after_last() -> Vec<Value> {
        vec![addr("11.0.0.1")]
    }

    // ---- compiled snapshots ----

    fn service(i: u32, ty: ServiceType, ports: &[(Protocol, u16)]) -> Service {
        Service {
            name: ObjectName::new("default", format!("svc-{i}")),
            service_type: ty,
            cluster_ips: vec![IpAddr::from([172, 30, (i >> 8) as u8, i as u8])],
            ports: ports
                .iter()
                .enumerate()
                .map(|(j, (protocol, port))| ServicePort {
                    name: format!("p{j}"),
                    protocol: *protocol,
                    port: *port,
                    node_port: (ty != ServiceType::ClusterIp)
                        .then_some(30000 + (i as u16 % 2000) * 2 + j as u16),
                })
                .collect(),
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity_timeout: None,
            service_proxy_name: None,
            traffic_distribution: None,
            health_check_node_port: None,
        }
    }

    fn endpoint(address: IpAddr, node: &str) -> Endpoint {
        Endpoint {
            address,
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some(node.into()),
            zone: None,
            hint_zones: vec![],
            hint_nodes: vec![],
        }
    }

    fn slice(svc: &Service, family: AddressType, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            name: ObjectName::new(&svc.name.namespace, format!("{}-{family:?}", svc.name.name)),
            service_name: Some(svc.name.name.clone()),
            address_type: family,
            headless_label: false,
            ports: svc
                .ports
                .iter()
                .enumerate()
                .map(|(j, p)| SlicePort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                    port: 8000 + j as u16,
                })
                .collect(),
            endpoints,
        }
    }

    fn config() -> ProxyConfig {
        ProxyConfig {
            node_name: "node-a".into(),
            node_ips: vec![ip("10.1.0.1")],
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..ProxyConfig::default()
        }
    }

    fn ep_addr(i: u32, j: u32) -> IpAddr {
        IpAddr::from([10, 100 + (j as u8), (i >> 8) as u8, i as u8])
    }

    /// `n` services, service `i` with `1 + i % 3` endpoints, every fourth a NodePort.
    fn cluster(n: u32) -> Snapshot {
        let mut snap = Snapshot::default();
        for i in 0..n {
            let ty = if i % 4 == 0 {
                ServiceType::NodePort
            } else {
                ServiceType::ClusterIp
            };
            let svc = service(i, ty, &[(Protocol::Tcp, 80), (Protocol::Udp, 53)]);
            let eps = (0..1 + i % 3)
                .map(|j| endpoint(ep_addr(i, j), if j == 0 { "node-a" } else { "node-b" }))
                .collect();
            let sl = slice(&svc, AddressType::Ipv4, eps);
            snap.slices.insert(sl.name.clone(), sl);
            snap.services.insert(svc.name.clone(), svc);
        }
        snap
    }

    fn compiled(snap: &Snapshot) -> Ruleset {
        compile(snap, &config()).unwrap().ruleset
    }

    fn slice_of(snap: &mut Snapshot, i: u32) -> &mut EndpointSlice {
        snap.slices
            .get_mut(&ObjectName::new("default", format!("svc-{i}-Ipv4")))
            .unwrap()
    }

    #[test]
    fn one_endpoint_in_a_large_cluster() {
        let base = cluster(1_000);
        let a = compiled(&base);
        // svc-1: a ClusterIP service with two ports and two endpoints gets a third endpoint.
        let mut grown = base.clone();
        slice_of(&mut grown, 1)
            .endpoints
            .push(endpoint(ep_addr(1, 2), "node-b"));
        let b = compiled(&grown);
        let start = Instant::now();
        let added = plan(&a, &b);
        let took = start.elapsed();
        let _ = check(&a, &b);
        println!(
            "1,000 services ({} elements), one endpoint added: {} ops, {} elements, planned in \
             {took:?}\n{added}",
            a.element_count(),
            added.len(),
            added.element_count()
        );
        assert!(added.len() <= 8, "{added}");
        assert!(added
            .ops
            .iter()
            .all(|op| !matches!(op, Op::AddRule { .. } | Op::FlushChain { .. })));
        let removed = check(&b, &a);
        println!("one endpoint removed: {} ops\n{removed}", removed.len());
        assert!(removed.len() <= 8, "{removed}");

        // svc-4: a NodePort service with two ports and two endpoints gets a third. NodePort keys
        // live in their own maps, so this touches twice as many maps.
        let mut grown = base.clone();
        slice_of(&mut grown, 4)
            .endpoints
            .push(endpoint(ep_addr(4, 2), "node-b"));
        let np = check(&a, &compiled(&grown));
        println!(
            "one endpoint added to a NodePort service: {} ops\n{np}",
            np.len()
        );
        assert!(np.len() <= 9, "{np}");

        // A service added and removed.
        let mut more = base.clone();
        let svc = service(5_000, ServiceType::ClusterIp, &[(Protocol::Tcp, 443)]);
        let sl = slice(
            &svc,
            AddressType::Ipv4,
            vec![
                endpoint(ip("10.200.0.1"), "node-b"),
                endpoint(ip("10.200.0.2"), "node-b"),
            ],
        );
        more.slices.insert(sl.name.clone(), sl);
        more.services.insert(svc.name.clone(), svc);
        let c = compiled(&more);
        let tx = check(&a, &c);
        println!("service added: {} ops\n{tx}", tx.len());
        assert!(tx.len() <= 8, "{tx}");
        let tx = check(&c, &a);
        println!("service removed: {} ops\n{tx}", tx.len());
        assert!(tx.len() <= 8, "{tx}");
    }

    // ---- real nft ----

    mod nft {
        use std::path::PathBuf;
        use std::process::{Command, Output};
        use std::sync::atomic::{AtomicUsize, Ordering};

        use super::*;

        static NEXT: AtomicUsize = AtomicUsize::new(0);

        fn unique(what: &str) -> String {
            format!(
                "nftproxy-plan-{}-{}-{what}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        }

        /// A throwaway network namespace, deleted when dropped (also when the test fails).
        struct Netns(String);

        impl Netns {
            fn new() -> Self {
                let name = unique("ns");
                let out = Command::new("ip")
                    .args(["netns", "add", &name])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "ip netns add {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
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
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }

            /// Loads a script (`json`: with `nft -j`), keeping a copy on failure for the message.
            fn load(&self, script: &str, json: bool) {
                let file = TempFile::new(script);
                let args: &[&str] = if json {
                    &["-j", "-f", file.path()]
                } else {
                    &["-f", file.path()]
                };
                let out = self.nft(args);
                assert!(
                    out.status.success(),
                    "nft {args:?} in {}: {}\nscript:\n{script}",
                    self.0,
                    String::from_utf8_lossy(&out.stderr)
                );
            }

            /// What the kernel holds, from `nft -j list ruleset`, without handles and with
            /// unordered things (objects, set elements) sorted, rule order kept.
            fn state(&self) -> BTreeMap<String, Vec<String>> {
                let listing: serde_json::Value =
                    serde_json::from_str(&self.nft_ok(&["-j", "list", "ruleset"])).unwrap();
                let mut state: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for object in listing["nftables"].as_array().unwrap() {
                    let (kind, body) = object.as_object().unwrap().iter().next().unwrap();
                    if kind == "metainfo" {
                        continue;
                    }
                    let mut body = body.clone();
                    let fields = body.as_object_mut().unwrap();
                    fields.remove("handle");
                    if let Some(serde_json::Value::Array(elems)) = fields.get_mut("elem") {
                        elems.sort_by_key(|e| e.to_string());
                    }
                    let key = if kind == "rule" {
                        format!(
                            "rules {} {} {}",
                            fields["family"], fields["table"], fields["chain"]
                        )
                    } else {
                        format!(
                            "{kind} {} {}",
                            fields["family"],
                            fields.get("table").unwrap_or(&fields["name"])
                        )
                    };
                    state.entry(key).or_default().push(body.to_string());
                }
                for (key, values) in state.iter_mut() {
                    if !key.starts_with("rules ") {
                        values.sort();
                    }
                }
                state
            }
        }

        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            }
        }

        /// A temporary file, removed when dropped.
        struct TempFile(PathBuf);

        impl TempFile {
            fn new(contents: &str) -> Self {
                let path = std::env::temp_dir().join(unique("script"));
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

        /// Why nft cannot run here, if it cannot.
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

        /// Three rulesets in a row: a dual-stack cluster; endpoints, services, affinity and
        /// policies changed; then IPv6 gone, a set and a base chain redefined.
        fn stages() -> Vec<Ruleset> {
            let mut snap = cluster(12);
            let mut lb = service(100, ServiceType::LoadBalancer, &[(Protocol::Tcp, 443)]);
            lb.cluster_ips.push(ip("fd00:30::100"));
            lb.load_balancer_ips = vec![ip("203.0.113.10"), ip("2001:db8::10")];
            lb.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
            lb.external_ips = vec![ip("192.0.2.7")];
            lb.session_affinity_timeout = Some(10800);
            lb.external_traffic_policy = TrafficPolicy::Local;
            for (family, eps) in [
                (
                    AddressType::Ipv4,
                    vec![
                        endpoint(ip("10.50.0.1"), "node-a"),
                        endpoint(ip("10.50.0.2"), "node-b"),
                    ],
                ),
                (
                    AddressType::Ipv6,
                    vec![
                        endpoint(ip("fd00:50::1"), "node-a"),
                        endpoint(ip("fd00:50::2"), "node-b"),
                    ],
                ),
            ] {
                let sl = slice(&lb, family, eps);
                snap.slices.insert(sl.name.clone(), sl);
            }
            snap.services.insert(lb.name.clone(), lb.clone());
            let a = compile(&snap, &config()).unwrap().ruleset;

            slice_of(&mut snap, 1)
                .endpoints
                .push(endpoint(ep_addr(1, 2), "node-a"));
            snap.services.remove(&ObjectName::new("default", "svc-2"));
            snap.services
                .get_mut(&ObjectName::new("default", "svc-3"))
                .unwrap()
                .session_affinity_timeout = Some(60);
            snap.services
                .get_mut(&lb.name)
                .unwrap()
                .external_traffic_policy = TrafficPolicy::Cluster;
            let wide = service(200, ServiceType::NodePort, &[(Protocol::Udp, 53)]);
            let eps = (1..=5)
                .map(|i| endpoint(IpAddr::from([10, 60, 0, i]), "node-b"))
                .collect();
            let sl = slice(&wide, AddressType::Ipv4, eps);
            snap.slices.insert(sl.name.clone(), sl);
            snap.services.insert(wide.name.clone(), wide);
            let mut cfg = config();
            cfg.masquerade_all = true;
            let b = compile(&snap, &cfg).unwrap().ruleset;

            snap.services
                .get_mut(&lb.name)
                .unwrap()
                .cluster_ips
                .truncate(1);
            let mut c = compile(&snap, &cfg).unwrap().ruleset;
            assert!(!c.tables.contains_key(&IpFamily::V6));
            let t = v4(&mut c);
            t.sets.get_mut("cluster-ips").unwrap().flags.interval = true;
            t.chains
                .get_mut("nat-output")
                .unwrap()
                .base
                .as_mut()
                .unwrap()
                .priority = -99;
            vec![a, b, c]
        }

        #[test]
        fn nft_loads_full_and_delta_transactions() {
            if let Some(reason) = skip_reason() {
                println!("skipping nft_loads_full_and_delta_transactions: {reason}");
                return;
            }
            let stages = stages();
            for json in [false, true] {
                let render = |tx: &Transaction| if json { tx.to_json() } else { tx.to_string() };
                let live = Netns::new();
                live.load(&render(&full(&stages[0])), json);
                for pair in stages.windows(2) {
                    let tx = plan(&pair[0], &pair[1]);
                    println!(
                        "{} delta: {} ops, {} elements",
                        if json { "json" } else { "text" },
                        tx.len(),
                        tx.element_count()
                    );
                    live.load(&render(&tx), json);
                    // The kernel now holds what a fresh load of the target holds.
                    let fresh = Netns::new();
                    fresh.load(&render(&full(&pair[1])), json);
                    let state = fresh.state();
                    let elements = state
                        .values()
                        .flatten()
                        .filter(|o| o.contains("\"elem\""))
                        .count();
                    assert!(
                        state.len() > 40 && elements > 10,
                        "listing not understood: {state:?}"
                    );
                    assert_eq!(live.state(), state, "after delta, json: {json}:\n{tx}");
                }
                live.load(&render(&delete_all(&stages[2])), json);
                assert_eq!(live.nft_ok(&["list", "ruleset"]).trim(), "");
            }
        }
    }

    // ---- property test ----

    mod property {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed};

        use super::*;

        /// Conditions of an endpoint: ready, serving, terminating, on this node.
        type Cond = (bool, bool, bool, bool);

        #[derive(Debug, Clone)]
        struct EpSpec {
            addr: u8,
            v6: bool,
            a: Option<Cond>,
            b: Option<Cond>,
        }

        /// Type, externalTrafficPolicy Local, internalTrafficPolicy Local, affinity, external IP,
        /// LoadBalancer IP with source ranges.
        type Flavor = (u8, bool, bool, u8, bool, bool);

        #[derive(Debug, Clone)]
        struct SvcSpec {
            in_a: bool,
            in_b: bool,
            dual: bool,
            ports: Vec<(bool, u8, bool)>,
            a: Flavor,
            b: Flavor,
            eps: Vec<EpSpec>,
        }

        /// masqueradeAll, cluster CIDRs, all addresses for NodePorts, masquerade bit 15.
        type CfgSpec = (bool, bool, bool, bool);

        fn cond() -> impl Strategy<Value = Cond> {
            prop_oneof![
                6 => Just((true, true, false, false)),
                6 => Just((true, true, false, true)),
                4 => any::<Cond>(),
            ]
        }

        fn ep() -> impl Strategy<Value = EpSpec> {
            (
                0u8..6,
                prop::bool::weighted(0.3),
                cond(),
                prop::option::weighted(0.3, cond()),
                0u8..10,
            )
                .prop_map(|(addr, v6, a, other, presence)| {
                    let b = other.unwrap_or(a);
                    match presence {
                        0 => EpSpec {
                            addr,
                            v6,
                            a: Some(a),
                            b: None,
                        },
                        1 => EpSpec {
                            addr,
                            v6,
                            a: None,
                            b: Some(b),
                        },
                        _ => EpSpec {
                            addr,
                            v6,
                            a: Some(a),
                            b: Some(b),
                        },
                    }
                })
        }

        fn flavor() -> impl Strategy<Value = Flavor> {
            (
                0u8..3,
                any::<bool>(),
                prop::bool::weighted(0.3),
                0u8..3,
                prop::bool::weighted(0.3),
                any::<bool>(),
            )
        }

        fn svc() -> impl Strategy<Value = SvcSpec> {
            (
                0u8..10,
                prop::bool::weighted(0.3),
                prop::collection::vec((any::<bool>(), 0u8..3, any::<bool>()), 1..3),
                flavor(),
                prop::option::weighted(0.3, flavor()),
                prop::collection::vec(ep(), 0..6),
            )
                .prop_map(|(presence, dual, ports, a, b, eps)| SvcSpec {
                    in_a: presence != 0,
                    in_b: presence != 1,
                    dual,
                    ports,
                    a,
                    b: b.unwrap_or(a),
                    eps,
                })
        }

        fn cfg() -> impl Strategy<Value = CfgSpec> {
            (
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.7),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.1),
            )
        }

        fn build(svcs: &[SvcSpec], cfg: CfgSpec, second: bool) -> Ruleset {
            let mut snap = Snapshot::default();
            for (i, s) in svcs.iter().enumerate() {
                if !(if second { s.in_b } else { s.in_a }) {
                    continue;
                }
                let i = i as u32;
                let (ty, etp, itp, aff, ext, lb) = if second { s.b } else { s.a };
                let ty = [
                    ServiceType::ClusterIp,
                    ServiceType::NodePort,
                    ServiceType::LoadBalancer,
                ][ty as usize];
                let ports: Vec<(Protocol, u16)> = s
                    .ports
                    .iter()
                    .map(|(udp, port, _)| {
                        (
                            if *udp { Protocol::Udp } else { Protocol::Tcp },
                            [80, 443, 53][*port as usize],
                        )
                    })
                    .collect();
                let mut svc = service(i, ty, &ports);
                for (p, (_, _, np)) in svc.ports.iter_mut().zip(&s.ports) {
                    if !np {
                        p.node_port = None;
                    }
                }
                if s.dual {
                    svc.cluster_ips
                        .push(IpAddr::from([0xfd00, 0x30, 0, 0, 0, 0, 0, i as u16 + 1]));
                }
                if etp {
                    svc.external_traffic_policy = TrafficPolicy::Local;
                }
                if itp {
                    svc.internal_traffic_policy = TrafficPolicy::Local;
                }
                svc.session_affinity_timeout = [None, Some(10800), Some(60)][aff as usize];
                if ext {
                    svc.external_ips
                        .push(IpAddr::from([192, 0, 2, i as u8 % 3]));
                }
                if lb {
                    svc.load_balancer_ips
                        .push(IpAddr::from([203, 0, 113, i as u8]));
                    svc.load_balancer_source_ranges
                        .push("198.51.100.0/24".parse().unwrap());
                }
                for v6 in [false, true] {
                    let eps: Vec<Endpoint> = s
                        .eps
                        .iter()
                        .filter(|e| e.v6 == v6)
                        .filter_map(|e| {
                            let (ready, serving, terminating, local) =
                                if second { e.b } else { e.a }?;
                            let address = if v6 {
                                IpAddr::from([0xfd00, 0x100, 0, 0, 0, 0, 0, e.addr as u16 + 1])
                            } else {
                                IpAddr::from([10, 100, 0, e.addr + 1])
                            };
                            let mut ep = endpoint(address, if local { "node-a" } else { "node-b" });
                            ep.ready = ready;
                            ep.serving = serving;
                            ep.terminating = terminating;
                            Some(ep)
                        })
                        .collect();
                    let family = if v6 {
                        AddressType::Ipv6
                    } else {
                        AddressType::Ipv4
                    };
                    let sl = slice(&svc, family, eps);
                    snap.slices.insert(sl.name.clone(), sl);
                }
                snap.services.insert(svc.name.clone(), svc);
            }
            let (masq_all, cidrs, all_np, bit) = cfg;
            let mut config = config();
            config.masquerade_all = masq_all;
            if !cidrs {
                config.cluster_cidrs.clear();
            }
            if all_np {
                config.node_port_addresses = vec!["0.0.0.0/0".parse().unwrap()];
            }
            if bit {
                config.masquerade_bit = 15;
            }
            compile(&snap, &config).unwrap().ruleset
        }

        /// Re-creates an object in `b`: a set's flags or a base chain's priority changes.
        fn perturb(rs: &mut Ruleset, what: (bool, usize)) {
            let Some(t) = rs.tables.values_mut().next() else {
                return;
            };
            if what.0 {
                let n = t.sets.len();
                if let Some(s) = t.sets.values_mut().nth(what.1 % n.max(1)) {
                    s.flags.interval = !s.flags.interval;
                }
            } else if let Some(c) = t
                .chains
                .values_mut()
                .filter(|c| c.base.is_some())
                .nth(what.1 % 8)
            {
                if let Some(base) = c.base.as_mut() {
                    base.priority += 1;
                }
            }
        }

        fn config_for_proptest() -> Config {
            Config {
                cases: 400,
                rng_seed: RngSeed::Fixed(0x6e66_7470_726f_7879),
                ..Config::default()
            }
        }

        proptest! {
            #![proptest_config(config_for_proptest())]

            #[test]
            fn apply_plan_yields_target(
                svcs in prop::collection::vec(svc(), 0..6),
                cfg_a in cfg(),
                cfg_b in prop::option::weighted(0.3, cfg()),
                perturbation in prop::option::weighted(0.15, (any::<bool>(), 0usize..64)),
            ) {
                let a = build(&svcs, cfg_a, false);
                let mut b = build(&svcs, cfg_b.unwrap_or(cfg_a), true);
                if let Some(p) = perturbation {
                    perturb(&mut b, p);
                }
                let tx = check(&a, &b);
                // Both renderings are produced for every transaction.
                prop_assert_eq!(tx.to_string().lines().count(), tx.len());
                prop_assert_eq!(tx.to_json_value()["nftables"].as_array().map(Vec::len), Some(tx.len()));
                // Full load and full delete.
                let mut fake = Fake::new();
                fake.apply(&full(&b)).unwrap();
                prop_assert!(fake.dump() == &b);
                fake.apply(&delete_all(&b)).unwrap();
                prop_assert!(fake.dump().tables.is_empty());
            }
        }

        /// The property test's generator yields changes of every op kind.
        #[test]
        fn generator_covers_every_op_kind() {
            use proptest::strategy::ValueTree;
            use proptest::test_runner::TestRunner;
            let mut runner = TestRunner::new(config_for_proptest());
            let strategy = (
                prop::collection::vec(svc(), 0..6),
                cfg(),
                prop::option::weighted(0.3, cfg()),
                prop::option::weighted(0.15, (any::<bool>(), 0usize..64)),
            );
            let mut seen = BTreeMap::new();
            for _ in 0..200 {
                let (svcs, cfg_a, cfg_b, p) = strategy.new_tree(&mut runner).unwrap().current();
                let a = build(&svcs, cfg_a, false);
                let mut b = build(&svcs, cfg_b.unwrap_or(cfg_a), true);
                if let Some(p) = p {
                    perturb(&mut b, p);
                }
                for op in plan(&a, &b).ops {
                    *seen.entry(step(&op) * 10 + op_kind(&op)).or_insert(0usize) += 1;
                }
            }
            println!("op kinds seen (step*10 + kind: count): {seen:?}");
            for kind in [10, 20, 30, 40, 60, 61, 62, 70, 80] {
                assert!(
                    seen.contains_key(&kind),
                    "kind {kind} never generated: {seen:?}"
                );
            }
        }

        fn op_kind(op: &Op) -> u8 {
            match op {
                Op::AddChain { .. } => 1,
                Op::AddSet { .. } => 2,
                _ => 0,
            }
        }
    }
}
