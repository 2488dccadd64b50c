//! An in-memory nftables that applies a [`Transaction`] atomically, with nft's checks.
//!
//! Like knftables' `Fake`: [`Fake::apply`] copies the ruleset, runs every op against the copy
//! with the checks nft and the kernel make (missing objects, elements whose data would change,
//! objects still in use), and keeps the copy only if every op succeeded. [`Fake::dump`] shows what
//! it holds, so `Fake::from(a).apply(&plan(&a, &b))` followed by `dump() == &b` checks a plan.
//!
//! The checks follow nft 1.0.6 as measured: `add table/chain/set` of an existing object with the
//! same definition is a no-op; `add element` of an existing key with the same data is a no-op and
//! with different data fails; `delete` of anything absent fails; a chain cannot be deleted while it
//! has rules or while a rule (jump, goto, anonymous verdict map) or a verdict-map element names it;
//! a set cannot be deleted while a rule names it; rules and verdict elements may only name existing
//! sets and chains. Deleting a table deletes everything in it.

use std::collections::btree_map::Entry;
use std::fmt;

use crate::plan::{elem_chain, rule_refs, ChainDef, Element, Op, SetDef, TableRef, Transaction};
use crate::ruleset::{DataType, ElemData, Ruleset, Set, Table, Value};

/// Why a [`Transaction`] was refused by the [`Fake`]. `op` is the index of the failing op; the
/// fake is unchanged after any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    /// The table does not exist.
    #[error("op {op}: table {table}: no such table")]
    NoTable {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
    },
    /// The chain does not exist.
    #[error("op {op}: chain {table} {chain}: no such chain")]
    NoChain {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The chain.
        chain: String,
    },
    /// The set or map does not exist.
    #[error("op {op}: set {table} {set}: no such set or map")]
    NoSet {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The set.
        set: String,
    },
    /// A deleted element does not exist.
    #[error("op {op}: element {key} of set {table} {set}: no such element")]
    NoElement {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The set.
        set: String,
        /// The key, as nft writes it.
        key: String,
    },
    /// An added map element exists with different data (nft never overwrites element data).
    #[error("op {op}: element {key} of map {table} {set}: exists with different data {existing}")]
    ElementExists {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The map.
        set: String,
        /// The key, as nft writes it.
        key: String,
        /// The data it has now.
        existing: String,
    },
    /// An added chain exists with a different hook, type or priority (nft cannot change a chain's
    /// hook in place).
    #[error("op {op}: chain {table} {chain}: exists with a different hook, type or priority")]
    ChainRedefined {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The chain.
        chain: String,
    },
    /// An added set exists with a different type, flags or timeout. (Like nft, a different
    /// comment alone is ignored, and the set keeps its comment.)
    #[error("op {op}: set {table} {set}: exists with a different type, flags or timeout")]
    SetExists {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The set.
        set: String,
    },
    /// An added table's family already has a table of another name (the [`Ruleset`] model holds
    /// one table per family).
    #[error("op {op}: table {table}: family already has table {existing}")]
    FamilyTaken {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// Name of the table the family has.
        existing: String,
    },
    /// A deleted chain still has rules.
    #[error("op {op}: chain {table} {chain}: still has {rules} rules")]
    ChainNotEmpty {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The chain.
        chain: String,
        /// How many.
        rules: usize,
    },
    /// A deleted chain is named by a rule or a verdict-map element.
    #[error("op {op}: chain {table} {chain}: in use by {user}")]
    ChainInUse {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The chain.
        chain: String,
        /// What uses it: `rule in chain X` or `element of map Y`.
        user: String,
    },
    /// A deleted set is named by a rule.
    #[error("op {op}: set {table} {set}: in use by a rule in chain {chain}")]
    SetInUse {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The set.
        set: String,
        /// The chain of the rule that uses it.
        chain: String,
    },
    /// An added element does not fit its set: wrong number of key components, data on a plain
    /// set, no data in a map, or data of the wrong kind.
    #[error("op {op}: element {key} of set {table} {set}: {reason}")]
    BadElement {
        /// Index of the failing op.
        op: usize,
        /// The table.
        table: TableRef,
        /// The set.
        set: String,
        /// The key, as nft writes it.
        key: String,
        /// What does not fit.
        reason: String,
    },
}

impl FakeError {
    /// A table, chain, set or element does not exist (nft's `ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NoTable { .. }
                | Self::NoChain { .. }
                | Self::NoSet { .. }
                | Self::NoElement { .. }
        )
    }
    /// An object exists in a form the op cannot reconcile (nft's `EEXIST`).
    pub fn is_exists(&self) -> bool {
        matches!(
            self,
            Self::ElementExists { .. } | Self::SetExists { .. } | Self::FamilyTaken { .. }
        )
    }
    /// The op asks for a change nft cannot make in place (nft's `EOPNOTSUPP`).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::ChainRedefined { .. })
    }
    /// A chain or set is still in use (nft's `EBUSY`).
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Self::ChainNotEmpty { .. } | Self::ChainInUse { .. } | Self::SetInUse { .. }
        )
    }
    /// Index of the failing op in the transaction.
    pub fn op(&self) -> usize {
        match self {
            Self::NoTable { op, .. }
            | Self::NoChain { op, .. }
            | Self::NoSet { op, .. }
            | Self::NoElement { op, .. }
            | Self::ElementExists { op, .. }
            | Self::ChainRedefined { op, .. }
            | Self::SetExists { op, .. }
            | Self::FamilyTaken { op, .. }
            | Self::ChainNotEmpty { op, .. }
            | Self::ChainInUse { op, .. }
            | Self::SetInUse { op, .. }
            | Self::BadElement { op, .. } => *op,
        }
    }
}

/// An in-memory nftables holding our tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fake {
    ruleset: Ruleset,
}

impl From<Ruleset> for Fake {
    fn from(ruleset: Ruleset) -> Self {
        Self { ruleset }
    }
}

impl Fake {
    /// An empty fake: no tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the fake holds now.
    pub fn dump(&self) -> &Ruleset {
        &self.ruleset
    }

    /// Takes the ruleset out of the fake.
    pub fn into_ruleset(self) -> Ruleset {
        self.ruleset
    }

    /// Applies every op of the transaction, or none: on error the fake is unchanged.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), FakeError> {
        let mut next = self.ruleset.clone();
        for (i, op) in tx.ops.iter().enumerate() {
            apply_op(&mut next, i, op)?;
        }
        self.ruleset = next;
        Ok(())
    }
}

fn key_text(key: &[Value]) -> String {
    crate::render::element_item_text(key, None)
}

fn data_text(data: Option<&ElemData>) -> String {
    data.map_or_else(|| "(none)".to_owned(), crate::render::elem_data_text)
}

fn table_mut<'a>(rs: &'a mut Ruleset, op: usize, t: &TableRef) -> Result<&'a mut Table, FakeError> {
    match rs.tables.get_mut(&t.family) {
        Some(table) if table.name == t.name => Ok(table),
        _ => Err(FakeError::NoTable {
            op,
            table: t.clone(),
        }),
    }
}

fn apply_op(rs: &mut Ruleset, op: usize, o: &Op) -> Result<(), FakeError> {
    match o {
        Op::AddTable(t) => match rs.tables.entry(t.family) {
            Entry::Vacant(e) => {
                e.insert(t.to_table());
                Ok(())
            }
            Entry::Occupied(e) if e.get().name == t.name => Ok(()),
            Entry::Occupied(e) => Err(FakeError::FamilyTaken {
                op,
                table: t.clone(),
                existing: e.get().name.clone(),
            }),
        },
        Op::DeleteTable(t) => {
            table_mut(rs, op, t)?;
            rs.tables.remove(&t.family);
            Ok(())
        }
        Op::AddChain { table, chain } => add_chain(table_mut(rs, op, table)?, op, table, chain),
        Op::FlushChain { table, chain } => {
            let tbl = table_mut(rs, op, table)?;
            let c = tbl
                .chains
                .get_mut(chain)
                .ok_or_else(|| no_chain(op, table, chain))?;
            c.rules.clear();
            Ok(())
        }
        Op::DeleteChain { table, chain } => {
            delete_chain(table_mut(rs, op, table)?, op, table, chain)
        }
        Op::AddRule { table, chain, rule } => {
            let tbl = table_mut(rs, op, table)?;
            let refs = rule_refs(rule);
            if let Some(s) = refs.sets.iter().find(|s| !tbl.sets.contains_key(**s)) {
                return Err(FakeError::NoSet {
                    op,
                    table: table.clone(),
                    set: (*s).to_owned(),
                });
            }
            if let Some(c) = refs.chains.iter().find(|c| !tbl.chains.contains_key(**c)) {
                return Err(no_chain(op, table, c));
            }
            let c = tbl
                .chains
                .get_mut(chain)
                .ok_or_else(|| no_chain(op, table, chain))?;
            c.rules.push(rule.clone());
            Ok(())
        }
        Op::AddSet { table, set } => add_set(table_mut(rs, op, table)?, op, table, set),
        Op::DeleteSet { table, set } => {
            let set = &set.name;
            let tbl = table_mut(rs, op, table)?;
            if !tbl.sets.contains_key(set) {
                return Err(FakeError::NoSet {
                    op,
                    table: table.clone(),
                    set: set.clone(),
                });
            }
            for c in tbl.chains.values() {
                if c.rules
                    .iter()
                    .any(|r| rule_refs(r).sets.contains(&set.as_str()))
                {
                    return Err(FakeError::SetInUse {
                        op,
                        table: table.clone(),
                        set: set.clone(),
                        chain: c.name.clone(),
                    });
                }
            }
            tbl.sets.remove(set);
            Ok(())
        }
        Op::AddElements { table, set, elems } => {
            add_elements(table_mut(rs, op, table)?, op, table, set, elems)
        }
        Op::DeleteElements { table, set, keys } => {
            let tbl = table_mut(rs, op, table)?;
            let s = tbl.sets.get_mut(set).ok_or_else(|| FakeError::NoSet {
                op,
                table: table.clone(),
                set: set.clone(),
            })?;
            for key in keys {
                if s.elements.remove(key).is_none() {
                    return Err(FakeError::NoElement {
                        op,
                        table: table.clone(),
                        set: set.clone(),
                        key: key_text(key),
                    });
                }
            }
            Ok(())
        }
    }
}

fn no_chain(op: usize, table: &TableRef, chain: &str) -> FakeError {
    FakeError::NoChain {
        op,
        table: table.clone(),
        chain: chain.to_owned(),
    }
}

fn add_chain(
    tbl: &mut Table,
    op: usize,
    table: &TableRef,
    def: &ChainDef,
) -> Result<(), FakeError> {
    match tbl.chains.entry(def.name.clone()) {
        Entry::Vacant(e) => {
            e.insert(def.to_chain());
            Ok(())
        }
        Entry::Occupied(e) if e.get().base == def.base => Ok(()),
        Entry::Occupied(_) => Err(FakeError::ChainRedefined {
            op,
            table: table.clone(),
            chain: def.name.clone(),
        }),
    }
}

fn delete_chain(
    tbl: &mut Table,
    op: usize,
    table: &TableRef,
    chain: &str,
) -> Result<(), FakeError> {
    let c = tbl
        .chains
        .get(chain)
        .ok_or_else(|| no_chain(op, table, chain))?;
    if !c.rules.is_empty() {
        return Err(FakeError::ChainNotEmpty {
            op,
            table: table.clone(),
            chain: chain.to_owned(),
            rules: c.rules.len(),
        });
    }
    let in_use = |user: String| FakeError::ChainInUse {
        op,
        table: table.clone(),
        chain: chain.to_owned(),
        user,
    };
    for other in tbl.chains.values() {
        if other
            .rules
            .iter()
            .any(|r| rule_refs(r).chains.contains(&chain))
        {
            return Err(in_use(format!("a rule in chain {}", other.name)));
        }
    }
    for set in tbl
        .sets
        .values()
        .filter(|s| s.data == Some(DataType::Verdict))
    {
        if set
            .elements
            .values()
            .any(|d| elem_chain(d.as_ref()) == Some(chain))
        {
            return Err(in_use(format!("an element of map {}", set.name)));
        }
    }
    tbl.chains.remove(chain);
    Ok(())
}

fn add_set(tbl: &mut Table, op: usize, table: &TableRef, def: &SetDef) -> Result<(), FakeError> {
    match tbl.sets.entry(def.name.clone()) {
        Entry::Vacant(e) => {
            e.insert(def.to_set());
            Ok(())
        }
        Entry::Occupied(e) if same_type(e.get(), def) => Ok(()),
        Entry::Occupied(_) => Err(FakeError::SetExists {
            op,
            table: table.clone(),
            set: def.name.clone(),
        }),
    }
}

/// Same key type, data type, flags and timeout: what nft compares when a set is added again.
fn same_type(set: &Set, def: &SetDef) -> bool {
    set.key == def.key && set.data == def.data && set.flags == def.flags
}

/// Why an element does not fit its set, if it does not.
fn misfit(set: &Set, key: &[Value], data: Option<&ElemData>) -> Option<String> {
    if key.len() != set.key.len() {
        return Some(format!(
            "key has {} components, the set type has {}",
            key.len(),
            set.key.len()
        ));
    }
    match (set.data, data) {
        (None, None) => None,
        (None, Some(_)) => Some("data given for a set without data".to_owned()),
        (Some(_), None) => Some("no data given for a map".to_owned()),
        (Some(DataType::Verdict), Some(ElemData::Verdict(_)))
        | (Some(DataType::Addr), Some(ElemData::Addr(_)))
        | (Some(DataType::InetService), Some(ElemData::Port(_))) => None,
        (Some(t), Some(d)) => Some(format!(
            "data {} does not fit the map's type {t:?}",
            data_text(Some(d))
        )),
    }
}

fn add_elements(
    tbl: &mut Table,
    op: usize,
    table: &TableRef,
    set: &str,
    elems: &[Element],
) -> Result<(), FakeError> {
    let Table { chains, sets, .. } = tbl;
    let s = sets.get_mut(set).ok_or_else(|| FakeError::NoSet {
        op,
        table: table.clone(),
        set: set.to_owned(),
    })?;
    for (key, data) in elems {
        if let Some(reason) = misfit(s, key, data.as_ref()) {
            return Err(FakeError::BadElement {
                op,
                table: table.clone(),
                set: set.to_owned(),
                key: key_text(key),
                reason,
            });
        }
        if let Some(c) = elem_chain(data.as_ref()) {
            if !chains.contains_key(c) {
                return Err(no_chain(op, table, c));
            }
        }
        match s.elements.entry(key.clone()) {
            Entry::Vacant(e) => {
                e.insert(data.clone());
            }
            Entry::Occupied(e) if e.get() == data => {}
            Entry::Occupied(e) => {
                return Err(FakeError::ElementExists {
                    op,
                    table: table.clone(),
                    set: set.to_owned(),
                    key: key_text(key),
                    existing: data_text(e.get().as_ref()),
                });
            }
        }
    }
    Ok(())
}

impl fmt::Display for Fake {
    /// The held ruleset as an nft script.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::render::to_nft_text(&self.ruleset))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::ruleset::{
        BaseChain, ChainType, Expr, Hook, KeyType, MapRef, MatchOp, MatchRight, Rule, SetFlags,
        Stmt, Verdict,
    };
    use crate::snapshot::IpFamily;

    fn t() -> TableRef {
        TableRef {
            family: IpFamily::V4,
            name: "t".into(),
        }
    }

    fn addr(s: &str) -> Value {
        Value::Addr(s.parse::<IpAddr>().unwrap())
    }

    fn chain(name: &str) -> Op {
        Op::AddChain {
            table: t(),
            chain: ChainDef {
                name: name.into(),
                base: None,
            },
        }
    }

    fn set(name: &str, data: Option<DataType>) -> SetDef {
        SetDef {
            name: name.into(),
            key: vec![KeyType::Ipv4Addr],
            data,
            flags: SetFlags::default(),
            comment: None,
        }
    }

    fn rule(chain: &str, stmts: Vec<Stmt>) -> Op {
        Op::AddRule {
            table: t(),
            chain: chain.into(),
            rule: Rule::new(stmts),
        }
    }

    fn elems(set: &str, elems: Vec<Element>) -> Op {
        Op::AddElements {
            table: t(),
            set: set.into(),
            elems,
        }
    }

    fn goto(c: &str) -> Option<ElemData> {
        Some(ElemData::Verdict(Verdict::Goto(c.into())))
    }

    fn tx(ops: Vec<Op>) -> Transaction {
        Transaction { ops }
    }

    /// Table `t` with chains `a` (rule `jump b`) and `b` (empty), `c` (empty), map `m`
    /// (`10.0.0.1 : goto c`) used by chain `a`, and set `s` (`10.0.0.9`).
    fn base() -> Fake {
        let mut fake = Fake::new();
        fake.apply(&tx(vec![
            Op::AddTable(t()),
            chain("a"),
            chain("b"),
            chain("c"),
            Op::AddSet {
                table: t(),
                set: set("m", Some(DataType::Verdict)),
            },
            Op::AddSet {
                table: t(),
                set: set("s", None),
            },
            elems("m", vec![(vec![addr("10.0.0.1")], goto("c"))]),
            elems("s", vec![(vec![addr("10.0.0.9")], None)]),
            rule("a", vec![Stmt::Verdict(Verdict::Jump("b".into()))]),
            rule(
                "a",
                vec![Stmt::Vmap {
                    key: Expr::Daddr(IpFamily::V4),
                    map: MapRef::Named("m".into()),
                }],
            ),
        ]))
        .unwrap();
        fake
    }

    /// Applies `ops` to `base()`, expects an error, and checks the fake is unchanged.
    fn fails(ops: Vec<Op>) -> FakeError {
        let mut fake = base();
        let before = fake.clone();
        let err = fake.apply(&tx(ops)).unwrap_err();
        assert_eq!(fake, before, "fake changed by a failed transaction");
        err
    }

    #[test]
    fn adds_are_idempotent() {
        let mut fake = base();
        let before = fake.clone();
        fake.apply(&tx(vec![
            Op::AddTable(t()),
            chain("a"),
            Op::AddSet {
                table: t(),
                set: set("m", Some(DataType::Verdict)),
            },
            elems("m", vec![(vec![addr("10.0.0.1")], goto("c"))]),
            elems("s", vec![(vec![addr("10.0.0.9")], None)]),
        ]))
        .unwrap();
        assert_eq!(fake, before);
        assert_eq!(fake.dump().tables[&IpFamily::V4].chains["a"].rules.len(), 2);
        // A comment change alone is ignored, as nft does; the set keeps its comment.
        let mut commented = set("s", None);
        commented.comment = Some("new".into());
        fake.apply(&tx(vec![Op::AddSet {
            table: t(),
            set: commented,
        }]))
        .unwrap();
        assert_eq!(fake, before);
    }

    #[test]
    fn element_with_other_data_exists() {
        let err = fails(vec![
            elems("s", vec![(vec![addr("10.0.0.10")], None)]),
            elems("m", vec![(vec![addr("10.0.0.1")], goto("b"))]),
        ]);
        assert!(err.is_exists(), "{err}");
        assert_eq!(err.op(), 1);
        assert_eq!(
            err.to_string(),
            "op 1: element 10.0.0.1 of map ip t m: exists with different data goto c"
        );
    }

    #[test]
    fn deleting_absent_objects_is_not_found() {
        let other = TableRef {
            family: IpFamily::V4,
            name: "x".into(),
        };
        let cases = vec![
            Op::DeleteTable(other.clone()),
            Op::DeleteTable(TableRef {
                family: IpFamily::V6,
                name: "t".into(),
            }),
            Op::AddChain {
                table: other,
                chain: ChainDef {
                    name: "a".into(),
                    base: None,
                },
            },
            Op::DeleteChain {
                table: t(),
                chain: "nope".into(),
            },
            Op::FlushChain {
                table: t(),
                chain: "nope".into(),
            },
            Op::DeleteSet {
                table: t(),
                set: set("nope", None),
            },
            Op::DeleteElements {
                table: t(),
                set: "nope".into(),
                keys: vec![],
            },
            Op::DeleteElements {
                table: t(),
                set: "s".into(),
                keys: vec![vec![addr("10.0.0.9")], vec![addr("10.0.0.8")]],
            },
            elems("nope", vec![(vec![addr("10.0.0.1")], None)]),
            elems("m", vec![(vec![addr("10.0.0.2")], goto("nope"))]),
            rule("nope", vec![Stmt::Verdict(Verdict::Accept)]),
            rule("b", vec![Stmt::Verdict(Verdict::Goto("nope".into()))]),
            rule(
                "b",
                vec![Stmt::Match {
                    left: Expr::Saddr(IpFamily::V4),
                    op: MatchOp::Eq,
                    right: MatchRight::Set("nope".into()),
                }],
            ),
            rule(
                "b",
                vec![Stmt::DnatMap {
                    key: Expr::Daddr(IpFamily::V4),
                    addr_map: "m".into(),
                    port_map: "nope".into(),
                }],
            ),
        ];
        for op in cases {
            let err = fails(vec![op.clone()]);
            assert!(err.is_not_found(), "{op:?}: {err}");
            assert!(!err.is_busy() && !err.is_exists());
        }
        let err = fails(vec![Op::DeleteChain {
            table: t(),
            chain: "nope".into(),
        }]);
        assert_eq!(err.to_string(), "op 0: chain ip t nope: no such chain");
        let err = fails(vec![Op::DeleteElements {
            table: t(),
            set: "s".into(),
            keys: vec![vec![addr("10.0.0.8")]],
        }]);
        assert_eq!(
            err.to_string(),
            "op 0: element 10.0.0.8 of set ip t s: no such element"
        );
    }

    #[test]
    fn busy_chains_and_sets() {
        // `a` has rules.
        let err = fails(vec![Op::DeleteChain {
            table: t(),
            chain: "a".into(),
        }]);
        assert!(err.is_busy());
        assert_eq!(err.to_string(), "op 0: chain ip t a: still has 2 rules");
        // `b` is jumped to by a rule in `a`.
        let err = fails(vec![Op::DeleteChain {
            table: t(),
            chain: "b".into(),
        }]);
        assert!(err.is_busy());
        assert_eq!(
            err.to_string(),
            "op 0: chain ip t b: in use by a rule in chain a"
        );
        // `c` is named by an element of `m`.
        let err = fails(vec![Op::DeleteChain {
            table: t(),
            chain: "c".into(),
        }]);
        assert_eq!(
            err.to_string(),
            "op 0: chain ip t c: in use by an element of map m"
        );
        // ... and by an anonymous verdict map.
        let err = fails(vec![
            Op::DeleteElements {
                table: t(),
                set: "m".into(),
                keys: vec![vec![addr("10.0.0.1")]],
            },
            rule(
                "b",
                vec![Stmt::Vmap {
                    key: Expr::Numgen {
                        modulus: 1,
                        offset: 0,
                    },
                    map: MapRef::Anon(vec![(Value::Int(0), Verdict::Goto("c".into()))]),
                }],
            ),
            Op::DeleteChain {
                table: t(),
                chain: "c".into(),
            },
        ]);
        assert!(err.is_busy() && err.op() == 2, "{err}");
        // `m` is used by a rule in `a`.
        let err = fails(vec![Op::DeleteSet {
            table: t(),
            set: set("m", Some(DataType::Verdict)),
        }]);
        assert!(err.is_busy());
        assert_eq!(
            err.to_string(),
            "op 0: set ip t m: in use by a rule in chain a"
        );
        // `s` used by an update statement.
        let err = fails(vec![
            rule(
                "b",
                vec![Stmt::SetUpdate {
                    set: "s".into(),
                    key: Expr::Saddr(IpFamily::V4),
                    timeout: None,
                }],
            ),
            Op::DeleteSet {
                table: t(),
                set: set("s", None),
            },
        ]);
        assert!(err.is_busy());
    }

    #[test]
    fn releasing_references_first_makes_deletes_succeed() {
        let mut fake = base();
        fake.apply(&tx(vec![
            Op::FlushChain {
                table: t(),
                chain: "a".into(),
            },
            Op::DeleteElements {
                table: t(),
                set: "m".into(),
                keys: vec![vec![addr("10.0.0.1")]],
            },
            Op::DeleteSet {
                table: t(),
                set: set("m", Some(DataType::Verdict)),
            },
            Op::DeleteChain {
                table: t(),
                chain: "a".into(),
            },
            Op::DeleteChain {
                table: t(),
                chain: "b".into(),
            },
            Op::DeleteChain {
                table: t(),
                chain: "c".into(),
            },
        ]))
        .unwrap();
        let table = &fake.dump().tables[&IpFamily::V4];
        assert!(table.chains.is_empty());
        assert_eq!(table.sets.keys().collect::<Vec<_>>(), ["s"]);
        // Deleting a map deletes its elements, which releases the chains they name.
        let mut fake = base();
        fake.apply(&tx(vec![
            Op::FlushChain {
                table: t(),
                chain: "a".into(),
            },
            Op::DeleteSet {
                table: t(),
                set: set("m", Some(DataType::Verdict)),
            },
            Op::DeleteChain {
                table: t(),
                chain: "c".into(),
            },
        ]))
        .unwrap();
        // Deleting a table deletes everything in it.
        fake.apply(&tx(vec![Op::DeleteTable(t())])).unwrap();
        assert!(fake.dump().tables.is_empty());
    }

    #[test]
    fn redefinitions() {
        let base_chain = ChainDef {
            name: "a".into(),
            base: Some(BaseChain {
                chain_type: ChainType::Nat,
                hook: Hook::Output,
                priority: -100,
            }),
        };
        let err = fails(vec![Op::AddChain {
            table: t(),
            chain: base_chain,
        }]);
        assert!(err.is_unsupported() && !err.is_exists(), "{err}");
        let mut interval = set("s", None);
        interval.flags.interval = true;
        let err = fails(vec![Op::AddSet {
            table: t(),
            set: interval,
        }]);
        assert!(err.is_exists());
        assert_eq!(
            err.to_string(),
            "op 0: set ip t s: exists with a different type, flags or timeout"
        );
        let err = fails(vec![Op::AddTable(TableRef {
            family: IpFamily::V4,
            name: "u".into(),
        })]);
        assert!(err.is_exists());
    }

    #[test]
    fn elements_must_fit_their_set() {
        let cases = vec![
            elems("s", vec![(vec![addr("10.0.0.1"), addr("10.0.0.2")], None)]),
            elems("s", vec![(vec![addr("10.0.0.1")], goto("c"))]),
            elems("m", vec![(vec![addr("10.0.0.2")], None)]),
            elems(
                "m",
                vec![(vec![addr("10.0.0.2")], Some(ElemData::Port(80)))],
            ),
        ];
        for op in cases {
            let err = fails(vec![op.clone()]);
            assert!(matches!(err, FakeError::BadElement { .. }), "{op:?}: {err}");
        }
    }

    #[test]
    fn display_shows_the_ruleset() {
        let fake = base();
        let text = fake.to_string();
        assert!(text.starts_with("table ip t {"), "{text}");
        assert_eq!(text, crate::render::to_nft_text(fake.dump()));
        assert_eq!(fake.clone().into_ruleset(), *fake.dump());
    }
}
