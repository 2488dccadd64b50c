//! Reading a ruleset back from libnftables JSON (`nft -j list table ...` output, or our own
//! rendered JSON) into the AST.
//!
//! The binary lists our tables, reads them back with [`from_nft_json`] and plans the difference
//! to the compiled ruleset, so the read-back AST must be *exactly* what the compiler produced for
//! the same rules: any difference would make every apply rewrite chains or sets. Two input forms
//! are accepted:
//!
//! * the listing form, `{"nftables": [{"metainfo": ..}, {"table": {.., "handle": N}},
//!   {"set": ..}, {"map": ..}, {"chain": ..}, {"rule": {.., "expr": [..]}}]}`, as nft 1.0.6
//!   prints it, with handles and the kernel's normalised forms;
//! * the command form written by [`crate::render::to_json`], `{"nftables": [{"add": {"table":
//!   ..}}, ..]}` (also with `{"add": {"element": ..}}` commands).
//!
//! Everything the renderer emits maps back to the AST. Anything else found in our tables (a
//! counter, a `log` statement, a set of another type, a chain with a drop policy: something
//! another program added) is an error naming the object and the JSON fragment, so that the
//! caller fails loudly instead of silently dropping it.
//!
//! [`netlink`] decodes set elements from nf_tables netlink dumps into the same values, for the
//! binary's netlink read-back.
//!
//! # Normal forms
//!
//! Some distinctions the AST can make do not survive the kernel. The reader returns one normal
//! form for each, which [`canonical`] computes for any ruleset; the compiler's output is already
//! in it, so for a compiled ruleset `r`, `from_nft_json(listing of r) == r`.
//!
//! * **Dynamic sets are session state.** A set that a rule updates from the packet path
//!   (`update @set { .. }`, our ClientIP affinity sets `aff-N` / `np-aff-N`) is returned with
//!   `dynamic: true` and *without elements*, so that a planner never deletes client affinity
//!   entries. nft 1.0.6 neither accepts the `dynamic` flag in JSON input nor prints it in JSON
//!   output (the kernel does set it, and `nft list` shows `flags dynamic,timeout`), so the flag
//!   is inferred from the update statements; a `"dynamic"` flag, if present, is honoured too.
//!   The kernel gives such sets `"size": 65535`, which is accepted and dropped; any other size
//!   is an error.
//! * **Full-length prefixes.** The kernel lists a `/32` (`/128`) prefix in an interval set as a
//!   bare address. In the last key component of an interval set (where the compiler puts source
//!   ranges) a bare address is therefore read as a full-length [`Value::Prefix`]; elsewhere it
//!   is a [`Value::Addr`]. A `{"range": [a, b]}` that covers exactly a prefix is read as that
//!   prefix.
//! * **Anonymous sets and maps are sorted.** The kernel stores them in hash or interval order,
//!   so their elements are read back sorted (and without duplicates).
//! * **Concatenations compare with sets.** A one-element anonymous set of a concatenation (the
//!   only form nft accepts) is read as [`MatchRight::Value`].
//! * **Payload dependencies.** `meta l4proto tcp` directly followed by a `th dport` match is
//!   listed by the kernel as one `tcp dport` match (the same bytecode); it is read back as the
//!   two statements.
//!
//! Two kernel-imposed differences remain that [`canonical`] does not paper over, because the
//! information is lost: nft 1.0.6 drops set and map comments given in JSON input (a ruleset
//! loaded with `nft -j -f` lists its sets without comments; one loaded from nft text keeps
//! them), and the kernel turns a one-element anonymous set that is not a concatenation
//! (`ip saddr { 10.0.0.0/8 }`) into a plain comparison (`ip saddr 10.0.0.0/8`). The compiler
//! emits no anonymous sets in matches.

pub mod netlink;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value as Json};

use crate::ruleset::{
    BaseChain, Chain, ChainType, DataType, ElemData, Expr, Hook, KeyType, MapRef, MarkOp, MatchOp,
    MatchRight, Rule, Ruleset, Set, Stmt, Table, Value, Verdict,
};
use crate::snapshot::{IpFamily, Protocol};

/// The size nft gives a set that is updated from the packet path.
const DYNAMIC_SET_SIZE: u64 = 65535;

/// Why JSON could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    /// The input is not JSON at all.
    #[error("libnftables JSON does not parse: {0}")]
    Parse(serde_json::Error),
    /// The document is not `{"nftables": [...]}`, holds a command other than `add`, or an
    /// object we never create (a flowtable, a named counter, a table of another family, ...).
    #[error("libnftables JSON document is not representable: {reason}: {fragment}")]
    Document {
        /// What is wrong.
        reason: String,
        /// The offending JSON, compact.
        fragment: String,
    },
    /// A table has properties we never set, or a second table of the same family appears.
    #[error("table {} {table} is not representable: {reason}: {fragment}", family_word(*.family))]
    Table {
        /// The table's family.
        family: IpFamily,
        /// Table name.
        table: String,
        /// What is wrong.
        reason: String,
        /// The offending JSON, compact.
        fragment: String,
    },
    /// A chain declaration we would not write (another hook type, a drop policy, a device, ...).
    #[error(
        "chain {} {table} {chain} is not representable: {reason}: {fragment}",
        family_word(*.family)
    )]
    Chain {
        /// The table's family.
        family: IpFamily,
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
        /// What is wrong.
        reason: String,
        /// The offending JSON, compact.
        fragment: String,
    },
    /// A set or map declaration or one of its elements that the AST cannot hold.
    #[error(
        "set {} {table} {set} is not representable: {reason}: {fragment}",
        family_word(*.family)
    )]
    Set {
        /// The table's family.
        family: IpFamily,
        /// Table name.
        table: String,
        /// Set or map name.
        set: String,
        /// What is wrong.
        reason: String,
        /// The offending JSON, compact.
        fragment: String,
    },
    /// A rule with a statement or expression the AST cannot hold.
    #[error(
        "rule {} in chain {} {table} {chain} is not representable: {reason}: {fragment}",
        handle_text(*.handle),
        family_word(*.family)
    )]
    Rule {
        /// The table's family.
        family: IpFamily,
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
        /// The rule's handle (listings have one, rendered commands do not).
        handle: Option<u64>,
        /// What is wrong.
        reason: String,
        /// The offending JSON (the innermost fragment that could not be read), compact.
        fragment: String,
    },
}

// Not `#[from]`: that would also make the JSON error the `source`, and a chain printed with
// `{:#}` would show it twice.
impl From<serde_json::Error> for ReadbackError {
    fn from(e: serde_json::Error) -> Self {
        Self::Parse(e)
    }
}

fn handle_text(handle: Option<u64>) -> String {
    match handle {
        Some(h) => format!("with handle {h}"),
        None => "without handle".to_owned(),
    }
}

/// Reads libnftables JSON (a listing or our rendered commands) into a ruleset; see the module
/// documentation for the accepted forms and the normal forms of the result.
pub fn from_nft_json(json: &str) -> Result<Ruleset, ReadbackError> {
    let document: Json = serde_json::from_str(json)?;
    let items = document
        .get("nftables")
        .and_then(Json::as_array)
        .ok_or_else(|| doc_error("expected an object with an \"nftables\" array", &document))?;

    // Unwrap commands and sort the objects by kind: tables, chains, sets and maps, loose
    // elements, then rules, whatever order the input has.
    let mut objects: [Vec<(&str, &Map<String, Json>)>; 5] = Default::default();
    for item in items {
        let (kind, body) =
            single_entry(item).ok_or_else(|| doc_error("expected an object with one key", item))?;
        let (kind, body) = match kind {
            "metainfo" => continue,
            "add" => single_entry(body)
                .ok_or_else(|| doc_error("expected an object with one key", body))?,
            _ => (kind, body),
        };
        let phase = match kind {
            "table" => 0,
            "chain" => 1,
            "set" | "map" => 2,
            "element" => 3,
            "rule" => 4,
            _ => {
                return Err(doc_error(
                    &format!("unsupported object or command {kind:?}"),
                    item,
                ))
            }
        };
        let body = body
            .as_object()
            .ok_or_else(|| doc_error(&format!("{kind} is not an object"), item))?;
        objects[phase].push((kind, body));
    }

    let mut reader = Reader::default();
    for (_, table) in &objects[0] {
        reader.table(table)?;
    }
    for (_, chain) in &objects[1] {
        reader.chain(chain)?;
    }
    for (kind, set) in &objects[2] {
        reader.set(kind, set)?;
    }
    for (_, element) in &objects[3] {
        reader.element(element)?;
    }
    for (_, rule) in &objects[4] {
        reader.rule(rule)?;
    }
    reader.finish()
}

/// The normal form of a ruleset that [`from_nft_json`] returns (see the module documentation):
/// sets updated by a rule are dynamic and empty, bare addresses in the last key component of an
/// interval set are full-length prefixes, anonymous sets and maps are sorted and deduplicated,
/// and a one-element anonymous set of a concatenation is a plain value.
pub fn canonical(ruleset: &Ruleset) -> Ruleset {
    let mut out = ruleset.clone();
    for table in out.tables.values_mut() {
        for chain in table.chains.values_mut() {
            for rule in &mut chain.rules {
                for stmt in &mut rule.stmts {
                    canonical_stmt(stmt);
                }
            }
        }
        let updated = updated_sets(table);
        for set in table.sets.values_mut() {
            if updated.contains(&set.name) {
                set.flags.dynamic = true;
            }
            if set.flags.dynamic {
                set.elements.clear();
            }
            if set.flags.interval {
                let elements = std::mem::take(&mut set.elements);
                set.elements = elements
                    .into_iter()
                    .map(|(mut key, data)| {
                        if let Some(Value::Addr(a)) = key.last().cloned() {
                            if let Some(last) = key.last_mut() {
                                *last = Value::Prefix(IpNet::from(a));
                            }
                        }
                        (key, data)
                    })
                    .collect();
            }
        }
    }
    out
}

fn canonical_stmt(stmt: &mut Stmt) {
    match stmt {
        Stmt::Match { right, .. } => {
            if let MatchRight::AnonSet(values) = right {
                values.sort();
                values.dedup();
                if let [v @ Value::Concat(_)] = values.as_slice() {
                    *right = MatchRight::Value(v.clone());
                }
            }
        }
        Stmt::Vmap {
            map: MapRef::Anon(entries),
            ..
        } => {
            entries.sort();
            entries.dedup();
        }
        _ => {}
    }
}

/// Names of the sets that rules of the table update from the packet path.
fn updated_sets(table: &Table) -> BTreeSet<String> {
    table
        .chains
        .values()
        .flat_map(|c| &c.rules)
        .flat_map(|r| &r.stmts)
        .filter_map(|s| match s {
            Stmt::SetUpdate { set, .. } => Some(set.clone()),
            _ => None,
        })
        .collect()
}

/// A reading failure inside an object, before it is attributed to that object.
struct Bad {
    reason: String,
    fragment: String,
}

impl Bad {
    fn new(reason: impl Into<String>, fragment: &Json) -> Self {
        Self {
            reason: reason.into(),
            fragment: compact(fragment),
        }
    }
}

type Res<T> = Result<T, Bad>;

fn compact(json: &Json) -> String {
    json.to_string()
}

fn doc_error(reason: &str, fragment: &Json) -> ReadbackError {
    ReadbackError::Document {
        reason: reason.to_owned(),
        fragment: compact(fragment),
    }
}

fn single_entry(json: &Json) -> Option<(&str, &Json)> {
    let map = json.as_object()?;
    let mut entries = map.iter();
    let (key, value) = entries.next()?;
    entries.next().is_none().then_some((key.as_str(), value))
}

fn family_word(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

fn obj(json: &Json) -> Res<&Map<String, Json>> {
    json.as_object()
        .ok_or_else(|| Bad::new("expected an object", json))
}

fn get<'a>(map: &'a Map<String, Json>, key: &str) -> Res<&'a Json> {
    map.get(key)
        .ok_or_else(|| Bad::new(format!("missing field {key:?}"), &Json::Object(map.clone())))
}

fn get_str<'a>(map: &'a Map<String, Json>, key: &str) -> Res<&'a str> {
    let value = get(map, key)?;
    value
        .as_str()
        .ok_or_else(|| Bad::new(format!("field {key:?} is not a string"), value))
}

/// Fails on any field outside `allowed`.
fn only_keys(map: &Map<String, Json>, allowed: &[&str]) -> Res<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(Bad::new(
            format!("unexpected field {key:?}"),
            &Json::Object(map.clone()),
        )),
        None => Ok(()),
    }
}

fn u32_of(json: &Json) -> Res<u32> {
    let n = match json {
        Json::Number(n) => n.as_u64(),
        // Marks may come back in hex.
        Json::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Bad::new("expected an unsigned 32-bit integer", json))
}

/// Where a table is found, and what it is called in errors.
struct TableId {
    family: IpFamily,
    name: String,
}

#[derive(Default)]
struct Reader {
    tables: BTreeMap<IpFamily, Table>,
    /// Sets with a size of nft's default for dynamic sets, by family.
    sized: BTreeSet<(IpFamily, String)>,
    /// Sets listed with the `dynamic` flag.
    listed_dynamic: BTreeSet<(IpFamily, String)>,
}

impl Reader {
    fn table(&mut self, body: &Map<String, Json>) -> Result<(), ReadbackError> {
        let whole = Json::Object(body.clone());
        let family = self.family_of(body, &whole)?;
        let name = get_str(body, "name").map_err(|b| doc_error(&b.reason, &whole))?;
        let table_error = |reason: String| ReadbackError::Table {
            family,
            table: name.to_owned(),
            reason,
            fragment: compact(&whole),
        };
        only_keys(body, &["family", "name", "handle"]).map_err(|b| table_error(b.reason))?;
        if let Some(existing) = self.tables.get(&family) {
            let reason = if existing.name == name {
                "declared twice".to_owned()
            } else {
                format!(
                    "a second {} table besides {}",
                    family_word(family),
                    existing.name
                )
            };
            return Err(table_error(reason));
        }
        self.tables.insert(family, Table::new(family, name));
        Ok(())
    }

    fn family_of(&self, body: &Map<String, Json>, whole: &Json) -> Result<IpFamily, ReadbackError> {
        match body.get("family").and_then(Json::as_str) {
            Some("ip") => Ok(IpFamily::V4),
            Some("ip6") => Ok(IpFamily::V6),
            Some(other) => Err(doc_error(&format!("unsupported family {other:?}"), whole)),
            None => Err(doc_error("missing family", whole)),
        }
    }

    /// The declared table an object belongs to.
    fn table_of(&self, body: &Map<String, Json>) -> Result<TableId, ReadbackError> {
        let whole = Json::Object(body.clone());
        let family = self.family_of(body, &whole)?;
        let name = get_str(body, "table").map_err(|b| doc_error(&b.reason, &whole))?;
        match self.tables.get(&family) {
            Some(t) if t.name == name => Ok(TableId {
                family,
                name: name.to_owned(),
            }),
            _ => Err(doc_error(
                &format!("object of undeclared table {} {name}", family_word(family)),
                &whole,
            )),
        }
    }

    fn table_mut(&mut self, id: &TableId) -> &mut Table {
        // Invariant: `table_of` only returns ids of tables in `self.tables`.
        self.tables
            .entry(id.family)
            .or_insert_with(|| Table::new(id.family, id.name.clone()))
    }

    fn chain(&mut self, body: &Map<String, Json>) -> Result<(), ReadbackError> {
        let id = self.table_of(body)?;
        let whole = Json::Object(body.clone());
        let name = get_str(body, "name").map_err(|b| doc_error(&b.reason, &whole))?;
        let chain_error = |b: Bad| ReadbackError::Chain {
            family: id.family,
            table: id.name.clone(),
            chain: name.to_owned(),
            reason: b.reason,
            fragment: b.fragment,
        };
        let base = base_chain(body).map_err(chain_error)?;
        let table = self.table_mut(&id);
        if table.chains.contains_key(name) {
            return Err(chain_error(Bad::new("declared twice", &whole)));
        }
        table.chains.insert(
            name.to_owned(),
            Chain {
                name: name.to_owned(),
                base,
                rules: vec![],
            },
        );
        Ok(())
    }

    fn set(&mut self, kind: &str, body: &Map<String, Json>) -> Result<(), ReadbackError> {
        let id = self.table_of(body)?;
        let whole = Json::Object(body.clone());
        let name = get_str(body, "name").map_err(|b| doc_error(&b.reason, &whole))?;
        let set_error = |b: Bad| ReadbackError::Set {
            family: id.family,
            table: id.name.clone(),
            set: name.to_owned(),
            reason: b.reason,
            fragment: b.fragment,
        };
        if (kind == "map") != body.contains_key("map") {
            return Err(set_error(Bad::new(
                "a map needs a \"map\" data type, a set none",
                &whole,
            )));
        }
        let (mut set, declared) = set_declaration(id.family, body).map_err(set_error)?;
        if declared.size {
            self.sized.insert((id.family, name.to_owned()));
        }
        if declared.dynamic {
            self.listed_dynamic.insert((id.family, name.to_owned()));
        }
        if let Some(elements) = body.get("elem") {
            add_elements(id.family, &mut set, elements).map_err(set_error)?;
        }
        let table = self.table_mut(&id);
        if table.sets.contains_key(name) {
            return Err(set_error(Bad::new("declared twice", &whole)));
        }
        table.sets.insert(name.to_owned(), set);
        Ok(())
    }

    fn element(&mut self, body: &Map<String, Json>) -> Result<(), ReadbackError> {
        let id = self.table_of(body)?;
        let whole = Json::Object(body.clone());
        let name = get_str(body, "name").map_err(|b| doc_error(&b.reason, &whole))?;
        let set_error = |b: Bad| ReadbackError::Set {
            family: id.family,
            table: id.name.clone(),
            set: name.to_owned(),
            reason: b.reason,
            fragment: b.fragment,
        };
        only_keys(body, &["family", "table", "name", "elem"]).map_err(set_error)?;
        let elements = get(body, "elem").map_err(set_error)?;
        let table = self.table_mut(&id);
        let set = table
            .sets
            .get_mut(name)
            .ok_or_else(|| set_error(Bad::new("elements for an undeclared set", &whole)))?;
        add_elements(id.family, set, elements).map_err(set_error)
    }

    fn rule(&mut self, body: &Map<String, Json>) -> Result<(), ReadbackError> {
        let id = self.table_of(body)?;
        let whole = Json::Object(body.clone());
        let chain = get_str(body, "chain").map_err(|b| doc_error(&b.reason, &whole))?;
        let handle = body.get("handle").and_then(Json::as_u64);
        let rule_error = |b: Bad| ReadbackError::Rule {
            family: id.family,
            table: id.name.clone(),
            chain: chain.to_owned(),
            handle,
            reason: b.reason,
            fragment: b.fragment,
        };
        only_keys(
            body,
            &["family", "table", "chain", "handle", "expr", "comment"],
        )
        .map_err(rule_error)?;
        let exprs = get(body, "expr").map_err(rule_error)?;
        let exprs = exprs
            .as_array()
            .ok_or_else(|| rule_error(Bad::new("\"expr\" is not an array", exprs)))?;
        let mut stmts = Vec::new();
        for stmt in exprs {
            stmts.extend(statement(stmt).map_err(rule_error)?);
        }
        let comment = match body.get("comment") {
            None => None,
            Some(Json::String(c)) => Some(c.clone()),
            Some(other) => return Err(rule_error(Bad::new("comment is not a string", other))),
        };
        let table = self.table_mut(&id);
        let chain = table
            .chains
            .get_mut(chain)
            .ok_or_else(|| rule_error(Bad::new("rule of an undeclared chain", &whole)))?;
        chain.rules.push(Rule { stmts, comment });
        Ok(())
    }

    fn finish(mut self) -> Result<Ruleset, ReadbackError> {
        for (family, table) in &mut self.tables {
            let updated = updated_sets(table);
            for set in table.sets.values_mut() {
                let key = (*family, set.name.clone());
                if updated.contains(&set.name) || self.listed_dynamic.contains(&key) {
                    // Session state, not configuration (see the module documentation).
                    set.flags.dynamic = true;
                    set.elements.clear();
                } else if self.sized.contains(&key) {
                    return Err(ReadbackError::Set {
                        family: *family,
                        table: table.name.clone(),
                        set: set.name.clone(),
                        reason: "a size on a set that no rule updates".to_owned(),
                        fragment: format!("{{\"size\": {DYNAMIC_SET_SIZE}}}"),
                    });
                }
            }
        }
        Ok(Ruleset {
            tables: self.tables,
        })
    }
}

fn base_chain(body: &Map<String, Json>) -> Res<Option<BaseChain>> {
    only_keys(
        body,
        &[
            "family", "table", "name", "handle", "type", "hook", "prio", "policy",
        ],
    )?;
    if !["type", "hook", "prio", "policy"]
        .iter()
        .any(|k| body.contains_key(*k))
    {
        return Ok(None);
    }
    let chain_type = match get_str(body, "type")? {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        _ => return Err(Bad::new("unsupported chain type", get(body, "type")?)),
    };
    let hook = match get_str(body, "hook")? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return Err(Bad::new("unsupported hook", get(body, "hook")?)),
    };
    let prio = get(body, "prio")?;
    let priority = match prio {
        Json::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Json::String(s) => match s.as_str() {
            "raw" => Some(-300),
            "mangle" => Some(-150),
            "dstnat" => Some(-100),
            "filter" => Some(0),
            "security" => Some(50),
            "srcnat" => Some(100),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| Bad::new("unsupported priority", prio))?;
    match body.get("policy") {
        None => {}
        Some(Json::String(p)) if p == "accept" => {}
        Some(other) => return Err(Bad::new("policy other than accept", other)),
    }
    Ok(Some(BaseChain {
        chain_type,
        hook,
        priority,
    }))
}

/// What a set declaration says beyond the AST.
struct Declared {
    /// Has nft's size for dynamic sets.
    size: bool,
    /// Has the `dynamic` flag.
    dynamic: bool,
}

fn set_declaration(family: IpFamily, body: &Map<String, Json>) -> Res<(Set, Declared)> {
    only_keys(
        body,
        &[
            "family", "table", "name", "handle", "type", "map", "flags", "timeout", "comment",
            "elem", "size",
        ],
    )?;
    let name = get_str(body, "name")?;
    let type_json = get(body, "type")?;
    let key = match type_json {
        Json::String(_) => vec![key_type(type_json)?],
        Json::Array(parts) if parts.len() > 1 => {
            parts.iter().map(key_type).collect::<Res<Vec<_>>>()?
        }
        _ => return Err(Bad::new("unsupported key type", type_json)),
    };
    let data = match body.get("map") {
        None => None,
        Some(map) => Some(match map.as_str() {
            Some("verdict") => DataType::Verdict,
            Some("inet_service") => DataType::InetService,
            Some("ipv4_addr") if family == IpFamily::V4 => DataType::Addr,
            Some("ipv6_addr") if family == IpFamily::V6 => DataType::Addr,
            _ => return Err(Bad::new("unsupported map data type", map)),
        }),
    };
    let mut set = Set::new(name, key, data);
    let mut declared = Declared {
        size: false,
        dynamic: false,
    };
    let mut timeout_flag = false;
    if let Some(flags) = body.get("flags") {
        let flags: Vec<&Json> = match flags {
            Json::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for flag in flags {
            match flag.as_str() {
                Some("interval") => set.flags.interval = true,
                Some("timeout") => timeout_flag = true,
                Some("dynamic") => {
                    set.flags.dynamic = true;
                    declared.dynamic = true;
                }
                _ => return Err(Bad::new("unsupported set flag", flag)),
            }
        }
    }
    if let Some(timeout) = body.get("timeout") {
        set.flags.timeout = Some(u32_of(timeout)?);
    } else if timeout_flag {
        return Err(Bad::new(
            "the timeout flag without a default timeout",
            &Json::Object(body.clone()),
        ));
    }
    match body.get("comment") {
        None => {}
        Some(Json::String(c)) => set.comment = Some(c.clone()),
        Some(other) => return Err(Bad::new("comment is not a string", other)),
    }
    match body.get("size") {
        None => {}
        Some(size) if size.as_u64() == Some(DYNAMIC_SET_SIZE) => declared.size = true,
        Some(size) => return Err(Bad::new("unsupported size", size)),
    }
    Ok((set, declared))
}

fn key_type(json: &Json) -> Res<KeyType> {
    match json.as_str() {
        Some("ipv4_addr") => Ok(KeyType::Ipv4Addr),
        Some("ipv6_addr") => Ok(KeyType::Ipv6Addr),
        Some("inet_proto") => Ok(KeyType::InetProto),
        Some("inet_service") => Ok(KeyType::InetService),
        _ => Err(Bad::new("unsupported key type", json)),
    }
}

/// The type of a value, from the expression it is compared with or the set key it is part of.
#[derive(Debug, Clone)]
enum Ty {
    Addr(IpFamily),
    Proto,
    Port,
    Int,
    CtState,
    CtStatus,
    Fib,
    Concat(Vec<Self>),
}

impl Ty {
    fn of_expr(expr: &Expr) -> Self {
        match expr {
            Expr::Saddr(f) | Expr::Daddr(f) => Self::Addr(*f),
            Expr::L4Proto => Self::Proto,
            Expr::Dport => Self::Port,
            Expr::Mark | Expr::MarkAnd(_) | Expr::Numgen { .. } => Self::Int,
            Expr::CtState => Self::CtState,
            Expr::CtStatus => Self::CtStatus,
            Expr::FibAddrType { .. } => Self::Fib,
            Expr::Concat(parts) => Self::Concat(parts.iter().map(Self::of_expr).collect()),
        }
    }

    fn of_key(key: &[KeyType]) -> Self {
        let one = |k: &KeyType| match k {
            KeyType::Ipv4Addr => Self::Addr(IpFamily::V4),
            KeyType::Ipv6Addr => Self::Addr(IpFamily::V6),
            KeyType::InetProto => Self::Proto,
            KeyType::InetService => Self::Port,
        };
        match key {
            [single] => one(single),
            parts => Self::Concat(parts.iter().map(one).collect()),
        }
    }
}

/// Reads a value of type `ty`. With `prefix_last`, a bare address in the last position (the
/// value itself, or the last part of a concatenation) is a full-length prefix.
fn value(ty: &Ty, json: &Json, prefix_last: bool) -> Res<Value> {
    match ty {
        Ty::Addr(family) => addr_value(*family, json, prefix_last),
        Ty::Proto => match json {
            Json::String(s) if s == "tcp" => Ok(Value::Proto(Protocol::Tcp)),
            Json::String(s) if s == "udp" => Ok(Value::Proto(Protocol::Udp)),
            Json::String(s) if s == "sctp" => Ok(Value::Proto(Protocol::Sctp)),
            Json::Number(n) => match n.as_u64() {
                Some(6) => Ok(Value::Proto(Protocol::Tcp)),
                Some(17) => Ok(Value::Proto(Protocol::Udp)),
                Some(132) => Ok(Value::Proto(Protocol::Sctp)),
                _ => Err(Bad::new("unsupported protocol", json)),
            },
            _ => Err(Bad::new("unsupported protocol", json)),
        },
        Ty::Port => {
            let port = match json {
                Json::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Json::String(s) => s.parse().ok(),
                _ => None,
            };
            port.map(Value::Port)
                .ok_or_else(|| Bad::new("expected a port number", json))
        }
        Ty::Int => u32_of(json).map(Value::Int),
        Ty::CtState => match json.as_str() {
            Some("new") => Ok(Value::CtStateNew),
            _ => Err(Bad::new("unsupported ct state", json)),
        },
        Ty::CtStatus => match json.as_str() {
            Some("dnat") => Ok(Value::CtStatusDnat),
            _ => Err(Bad::new("unsupported ct status", json)),
        },
        Ty::Fib => match json.as_str() {
            Some("local") => Ok(Value::FibLocal),
            _ => Err(Bad::new("unsupported fib address type", json)),
        },
        Ty::Concat(types) => {
            let parts = json
                .get("concat")
                .and_then(Json::as_array)
                .filter(|p| {
                    p.len() == types.len() && json.as_object().is_some_and(|o| o.len() == 1)
                })
                .ok_or_else(|| {
                    Bad::new(
                        format!("expected a concatenation of {} values", types.len()),
                        json,
                    )
                })?;
            let last = types.len() - 1;
            types
                .iter()
                .zip(parts)
                .enumerate()
                .map(|(i, (ty, part))| value(ty, part, prefix_last && i == last))
                .collect::<Res<Vec<_>>>()
                .map(Value::Concat)
        }
    }
}

fn addr_value(family: IpFamily, json: &Json, full_prefix: bool) -> Res<Value> {
    let addr = |j: &Json| -> Res<IpAddr> {
        j.as_str()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .filter(|a| IpFamily::of(a) == family)
            .ok_or_else(|| Bad::new(format!("expected an {} address", family_word(family)), j))
    };
    let bare = |a: IpAddr| {
        if full_prefix {
            Value::Prefix(IpNet::from(a))
        } else {
            Value::Addr(a)
        }
    };
    match json {
        Json::String(_) => addr(json).map(bare),
        Json::Object(map) if map.len() == 1 => {
            if let Some(prefix) = map.get("prefix") {
                let p = obj(prefix)?;
                only_keys(p, &["addr", "len"])?;
                let a = addr(get(p, "addr")?)?;
                let len = get(p, "len")?
                    .as_u64()
                    .and_then(|l| u8::try_from(l).ok())
                    .and_then(|l| IpNet::new(a, l).ok())
                    .ok_or_else(|| Bad::new("invalid prefix length", prefix))?;
                Ok(Value::Prefix(len.trunc()))
            } else if let Some(range) = map.get("range") {
                let bounds = range
                    .as_array()
                    .filter(|b| b.len() == 2)
                    .ok_or_else(|| Bad::new("expected a range of two addresses", range))?;
                let (low, high) = (addr(&bounds[0])?, addr(&bounds[1])?);
                if low == high {
                    return Ok(bare(low));
                }
                range_prefix(low, high)
                    .map(Value::Prefix)
                    .ok_or_else(|| Bad::new("a range that is not a prefix", json))
            } else {
                Err(Bad::new("unsupported address expression", json))
            }
        }
        _ => Err(Bad::new("unsupported address expression", json)),
    }
}

/// The prefix covering exactly `low..=high`, if there is one.
fn range_prefix(low: IpAddr, high: IpAddr) -> Option<IpNet> {
    let (lo, hi, bits) = match (low, high) {
        (IpAddr::V4(l), IpAddr::V4(h)) => (u128::from(u32::from(l)), u128::from(u32::from(h)), 32),
        (IpAddr::V6(l), IpAddr::V6(h)) => (u128::from(l), u128::from(h), 128),
        _ => return None,
    };
    let host = lo ^ hi;
    // `host` must be all ones below some bit, `low` all zeros and `high` all ones there.
    if host & host.wrapping_add(1) != 0 || lo & host != 0 || hi & host != host {
        return None;
    }
    let len = bits - (128 - host.leading_zeros());
    let len = u8::try_from(len).ok()?;
    IpNet::new(low, len).ok()
}

/// Adds the elements of an `"elem"` array to a set of a table of `family`.
fn add_elements(family: IpFamily, set: &mut Set, elements: &Json) -> Res<()> {
    let items = elements
        .as_array()
        .ok_or_else(|| Bad::new("\"elem\" is not an array", elements))?;
    let ty = Ty::of_key(&set.key);
    for item in items {
        let (key_json, data_json) = match (set.data, item) {
            (Some(_), Json::Array(pair)) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
            (Some(_), _) => return Err(Bad::new("expected a [key, data] map element", item)),
            (None, _) => (item, None),
        };
        let key_json = unwrap_elem(key_json)?;
        let key = match value(&ty, key_json, set.flags.interval)? {
            Value::Concat(parts) => parts,
            single => vec![single],
        };
        let data = match (set.data, data_json) {
            (Some(DataType::Verdict), Some(d)) => Some(ElemData::Verdict(verdict_data(d)?)),
            (Some(DataType::Addr), Some(d)) => match addr_value(family, d, false)? {
                Value::Addr(a) => Some(ElemData::Addr(a)),
                _ => return Err(Bad::new("expected an address", d)),
            },
            (Some(DataType::InetService), Some(d)) => match value(&Ty::Port, d, false)? {
                Value::Port(p) => Some(ElemData::Port(p)),
                _ => return Err(Bad::new("expected a port number", d)),
            },
            _ => None,
        };
        set.elements.insert(key, data);
    }
    Ok(())
}

/// The key of an element, without an `{"elem": {"val": KEY, "timeout": .., "expires": ..}}`
/// wrapper (per-element timeouts are session state).
fn unwrap_elem(json: &Json) -> Res<&Json> {
    match json.get("elem") {
        Some(elem) if json.as_object().is_some_and(|o| o.len() == 1) => {
            let e = obj(elem)?;
            only_keys(e, &["val", "timeout", "expires"])?;
            get(e, "val")
        }
        _ => Ok(json),
    }
}

/// Verdict data of a map element: `{"accept": null}`, `{"goto": {"target": ..}}`, or a bare
/// `"accept"` / `"drop"` / `"return"`.
fn verdict_data(json: &Json) -> Res<Verdict> {
    match json.as_str() {
        Some("accept") => Ok(Verdict::Accept),
        Some("drop") => Ok(Verdict::Drop),
        Some("return") => Ok(Verdict::Return),
        Some(_) => Err(Bad::new("unsupported verdict", json)),
        None => verdict_stmt(json)?.ok_or_else(|| Bad::new("expected a verdict", json)),
    }
}

/// A verdict statement, `None` if the statement is something else.
fn verdict_stmt(json: &Json) -> Res<Option<Verdict>> {
    let Some((kind, body)) = single_entry(json) else {
        return Ok(None);
    };
    let target = |body: &Json| -> Res<String> {
        let b = obj(body)?;
        only_keys(b, &["target"])?;
        Ok(get_str(b, "target")?.to_owned())
    };
    let verdict = match kind {
        "accept" | "drop" | "return" if !body.is_null() => {
            return Err(Bad::new("verdict with an argument", json))
        }
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "return" => Verdict::Return,
        "jump" => Verdict::Jump(target(body)?),
        "goto" => Verdict::Goto(target(body)?),
        _ => return Ok(None),
    };
    Ok(Some(verdict))
}

/// One statement of a rule; a merged `tcp dport` match becomes two.
fn statement(json: &Json) -> Res<Vec<Stmt>> {
    if let Some(v) = verdict_stmt(json)? {
        return Ok(vec![Stmt::Verdict(v)]);
    }
    let (kind, body) =
        single_entry(json).ok_or_else(|| Bad::new("expected a statement object", json))?;
    let stmt = match kind {
        "match" => return match_stmt(obj(body)?),
        "vmap" => {
            let b = obj(body)?;
            only_keys(b, &["key", "data"])?;
            let key = expr(get(b, "key")?)?;
            let data = get(b, "data")?;
            let map = if let Some(name) = set_ref(data) {
                MapRef::Named(name)
            } else {
                let ty = Ty::of_expr(&key);
                let mut entries = anon_set(data)?
                    .iter()
                    .map(|item| match item.as_array().map(Vec::as_slice) {
                        Some([k, v]) => Ok((value(&ty, k, false)?, verdict_data(v)?)),
                        _ => Err(Bad::new("expected a [key, verdict] map element", item)),
                    })
                    .collect::<Res<Vec<_>>>()?;
                entries.sort();
                entries.dedup();
                MapRef::Anon(entries)
            };
            Stmt::Vmap { key, map }
        }
        "mangle" => {
            let b = obj(body)?;
            only_keys(b, &["key", "value"])?;
            if expr(get(b, "key")?)? != Expr::Mark {
                return Err(Bad::new("mangle of something other than meta mark", json));
            }
            let value = get(b, "value")?;
            let (op, args) =
                single_entry(value).ok_or_else(|| Bad::new("unsupported new mark value", value))?;
            let bits = match args.as_array().map(Vec::as_slice) {
                Some([mark, bits]) if expr(mark).ok() == Some(Expr::Mark) => u32_of(bits)?,
                _ => return Err(Bad::new("unsupported new mark value", value)),
            };
            match op {
                "|" => Stmt::SetMark(MarkOp::Or(bits)),
                "^" => Stmt::SetMark(MarkOp::Xor(bits)),
                _ => return Err(Bad::new("unsupported new mark value", value)),
            }
        }
        "set" => {
            let b = obj(body)?;
            only_keys(b, &["op", "elem", "set"])?;
            if get_str(b, "op")? != "update" {
                return Err(Bad::new("set statement other than update", json));
            }
            let set_json = get(b, "set")?;
            let set =
                set_ref(set_json).ok_or_else(|| Bad::new("expected a set reference", set_json))?;
            let elem = get(b, "elem")?;
            let (key, timeout) = match elem.get("elem") {
                Some(inner) if elem.as_object().is_some_and(|o| o.len() == 1) => {
                    let e = obj(inner)?;
                    only_keys(e, &["val", "timeout"])?;
                    let timeout = e.get("timeout").map(u32_of).transpose()?;
                    (expr(get(e, "val")?)?, timeout)
                }
                _ => (expr(elem)?, None),
            };
            Stmt::SetUpdate { set, key, timeout }
        }
        "dnat" => {
            let b = obj(body)?;
            only_keys(b, &["addr", "port"])?;
            let lookup = |field: &str| -> Res<(Expr, String)> {
                let j = get(b, field)?;
                let map = j
                    .get("map")
                    .filter(|_| j.as_object().is_some_and(|o| o.len() == 1))
                    .ok_or_else(|| Bad::new("dnat target other than a map lookup", j))?;
                let m = obj(map)?;
                only_keys(m, &["key", "data"])?;
                let data = get(m, "data")?;
                let name =
                    set_ref(data).ok_or_else(|| Bad::new("expected a map reference", data))?;
                Ok((expr(get(m, "key")?)?, name))
            };
            let (key, addr_map) = lookup("addr")?;
            let (port_key, port_map) = lookup("port")?;
            if port_key != key {
                return Err(Bad::new(
                    "dnat address and port looked up with different keys",
                    json,
                ));
            }
            Stmt::DnatMap {
                key,
                addr_map,
                port_map,
            }
        }
        "masquerade" => match body {
            Json::Null => Stmt::Masquerade {
                fully_random: false,
            },
            Json::Object(b) => {
                only_keys(b, &["flags"])?;
                let flags = get(b, "flags")?;
                let fully_random = match flags {
                    Json::String(f) => f == "fully-random",
                    Json::Array(items) => {
                        items.len() == 1 && items[0].as_str() == Some("fully-random")
                    }
                    _ => false,
                };
                if !fully_random {
                    return Err(Bad::new("unsupported masquerade flags", flags));
                }
                Stmt::Masquerade { fully_random: true }
            }
            _ => return Err(Bad::new("unsupported masquerade", json)),
        },
        "reject" => {
            if let Json::Object(b) = body {
                only_keys(b, &["type", "expr"])?;
                let port_unreachable = match b.get("expr") {
                    None => true,
                    Some(e) => e.as_str() == Some("port-unreachable"),
                };
                // nft lists the family's ICMP type; `icmpx` or `tcp reset` are other rejects.
                let icmp = match b.get("type").map(|t| t.as_str()) {
                    None => true,
                    Some(Some("icmp" | "icmpv6")) => true,
                    Some(_) => false,
                };
                if !port_unreachable || !icmp {
                    return Err(Bad::new("reject other than ICMP port unreachable", json));
                }
            } else if !body.is_null() {
                return Err(Bad::new("unsupported reject", json));
            }
            Stmt::Reject
        }
        _ => return Err(Bad::new("unsupported statement", json)),
    };
    Ok(vec![stmt])
}

/// `"@name"` → `name`.
fn set_ref(json: &Json) -> Option<String> {
    json.as_str()
        .and_then(|s| s.strip_prefix('@'))
        .map(str::to_owned)
}

/// The items of an anonymous set `{"set": [...]}`.
fn anon_set(json: &Json) -> Res<&Vec<Json>> {
    match single_entry(json) {
        Some(("set", Json::Array(items))) => Ok(items),
        _ => Err(Bad::new(
            "expected a set reference or an anonymous set",
            json,
        )),
    }
}

fn is_flag_expr(expr: &Expr) -> bool {
    matches!(expr, Expr::CtState | Expr::CtStatus)
}

fn match_stmt(body: &Map<String, Json>) -> Res<Vec<Stmt>> {
    only_keys(body, &["op", "left", "right"])?;
    let whole = Json::Object(body.clone());
    let op = get_str(body, "op")?;
    let left_json = get(body, "left")?;
    let right_json = get(body, "right")?;

    // `ct status & dnat != dnat`: "not all bits set".
    if let Some(("&", Json::Array(args))) = single_entry(left_json) {
        if let [flag_json, bits_json] = args.as_slice() {
            if let Ok(flag) = expr(flag_json) {
                if is_flag_expr(&flag) {
                    let ty = Ty::of_expr(&flag);
                    let bits = value(&ty, bits_json, false)?;
                    if op != "!=" || value(&ty, right_json, false)? != bits {
                        return Err(Bad::new("unsupported masked flag comparison", &whole));
                    }
                    return Ok(vec![Stmt::Match {
                        left: flag,
                        op: MatchOp::Ne,
                        right: MatchRight::Value(bits),
                    }]);
                }
            }
        }
    }

    // `tcp dport 80` is how the kernel lists `meta l4proto tcp th dport 80`.
    let mut stmts = Vec::new();
    let left = match dport_of(left_json) {
        Some(protocol) => {
            stmts.push(Stmt::Match {
                left: Expr::L4Proto,
                op: MatchOp::Eq,
                right: MatchRight::Value(Value::Proto(protocol)),
            });
            Expr::Dport
        }
        None => expr(left_json)?,
    };
    let flag = is_flag_expr(&left);
    let op = match op {
        // "All bits set", the implicit operator on a bitmask.
        "in" if flag => MatchOp::Eq,
        "==" => MatchOp::Eq,
        "!=" => MatchOp::Ne,
        _ => return Err(Bad::new("unsupported operator", &whole)),
    };
    let ty = Ty::of_expr(&left);
    let right = if let Some(name) = set_ref(right_json) {
        MatchRight::Set(name)
    } else if single_entry(right_json).is_some_and(|(k, _)| k == "set") {
        let mut values = anon_set(right_json)?
            .iter()
            .map(|item| value(&ty, item, false))
            .collect::<Res<Vec<_>>>()?;
        values.sort();
        values.dedup();
        match values.as_slice() {
            [v @ Value::Concat(_)] => MatchRight::Value(v.clone()),
            _ => MatchRight::AnonSet(values),
        }
    } else {
        if flag && body.get("op").and_then(Json::as_str) != Some("in") {
            // `ct state == new` is an exact comparison, not the AST's "all bits set".
            return Err(Bad::new("exact comparison of a bitmask", &whole));
        }
        MatchRight::Value(value(&ty, right_json, false)?)
    };
    stmts.push(Stmt::Match { left, op, right });
    Ok(stmts)
}

/// The protocol of a `tcp dport` / `udp dport` / `sctp dport` payload expression.
fn dport_of(json: &Json) -> Option<Protocol> {
    let payload = json.get("payload")?.as_object()?;
    if payload.len() != 2 || payload.get("field")?.as_str()? != "dport" {
        return None;
    }
    match payload.get("protocol")?.as_str()? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A packet field or computed value.
fn expr(json: &Json) -> Res<Expr> {
    let unsupported = || Bad::new("unsupported expression", json);
    let (kind, body) = single_entry(json).ok_or_else(unsupported)?;
    let parsed = match kind {
        "payload" => {
            let b = obj(body)?;
            only_keys(b, &["protocol", "field"])?;
            match (get_str(b, "protocol")?, get_str(b, "field")?) {
                ("ip", "saddr") => Expr::Saddr(IpFamily::V4),
                ("ip", "daddr") => Expr::Daddr(IpFamily::V4),
                ("ip6", "saddr") => Expr::Saddr(IpFamily::V6),
                ("ip6", "daddr") => Expr::Daddr(IpFamily::V6),
                ("th", "dport") => Expr::Dport,
                _ => return Err(unsupported()),
            }
        }
        "meta" => {
            let b = obj(body)?;
            only_keys(b, &["key"])?;
            match get_str(b, "key")? {
                "l4proto" => Expr::L4Proto,
                "mark" => Expr::Mark,
                _ => return Err(unsupported()),
            }
        }
        "ct" => {
            let b = obj(body)?;
            only_keys(b, &["key"])?;
            match get_str(b, "key")? {
                "state" => Expr::CtState,
                "status" => Expr::CtStatus,
                _ => return Err(unsupported()),
            }
        }
        "fib" => {
            let b = obj(body)?;
            only_keys(b, &["result", "flags"])?;
            if get_str(b, "result")? != "type" {
                return Err(unsupported());
            }
            let flags = get(b, "flags")?;
            let flag = match flags {
                Json::String(f) => Some(f.as_str()),
                Json::Array(items) if items.len() == 1 => items[0].as_str(),
                _ => None,
            };
            match flag {
                Some("saddr") => Expr::FibAddrType { saddr: true },
                Some("daddr") => Expr::FibAddrType { saddr: false },
                _ => return Err(unsupported()),
            }
        }
        "numgen" => {
            let b = obj(body)?;
            only_keys(b, &["mode", "mod", "offset"])?;
            if get_str(b, "mode")? != "random" {
                return Err(unsupported());
            }
            let modulus = u32_of(get(b, "mod")?)?;
            let offset = b.get("offset").map(u32_of).transpose()?.unwrap_or(0);
            Expr::Numgen { modulus, offset }
        }
        "&" => match body.as_array().map(Vec::as_slice) {
            Some([mark, mask]) if expr(mark).ok() == Some(Expr::Mark) => {
                Expr::MarkAnd(u32_of(mask)?)
            }
            _ => return Err(unsupported()),
        },
        "concat" => {
            let parts = body
                .as_array()
                .filter(|p| p.len() > 1)
                .ok_or_else(unsupported)?;
            let parts = parts.iter().map(expr).collect::<Res<Vec<_>>>()?;
            if parts.iter().any(|p| matches!(p, Expr::Concat(_))) {
                return Err(unsupported());
            }
            Expr::Concat(parts)
        }
        _ => return Err(unsupported()),
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::process::Command;

    use proptest::prelude::*;
    use proptest::test_runner::{FileFailurePersistence, RngSeed};
    use serde_json::json;

    use super::*;
    use crate::compile::compile;
    use crate::config::{DetectLocal, ProxyConfig};
    use crate::render::tests::sample_ruleset;
    use crate::render::{to_json, to_json_value, to_nft_text};
    use crate::ruleset::SetFlags;
    use crate::snapshot::{
        AddressType, Endpoint, EndpointSlice, Node, ObjectName, Service, ServicePort, ServiceType,
        SlicePort, Snapshot, TrafficPolicy,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Value {
        Value::Prefix(s.parse().unwrap())
    }

    fn metainfo() -> Json {
        json!({"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
            "json_schema_version": 1}})
    }

    /// A listing of table `ip t` with chain `c` and the given further objects.
    fn listing(family: &str, objects: Vec<Json>) -> String {
        let mut items = vec![
            metainfo(),
            json!({"table": {"family": family, "name": "t", "handle": 3}}),
            json!({"chain": {"family": family, "table": "t", "name": "c", "handle": 1}}),
        ];
        items.extend(objects);
        json!({ "nftables": items }).to_string()
    }

    /// A listed rule in chain `c` of table `t` with handle 7.
    fn listed_rule(family: &str, expr: Json) -> Json {
        json!({"rule": {"family": family, "table": "t", "chain": "c", "handle": 7, "expr": expr}})
    }

    /// Reads the statements of one listed rule.
    fn read_stmts(family: &str, expr: Json) -> Result<Vec<Stmt>, ReadbackError> {
        let ruleset = from_nft_json(&listing(family, vec![listed_rule(family, expr)]))?;
        let f = if family == "ip" {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        Ok(ruleset.tables[&f].chains["c"].rules[0].stmts.clone())
    }

    fn stmts4(expr: Json) -> Vec<Stmt> {
        read_stmts("ip", expr).unwrap()
    }

    /// Reads one listed set or map of table `ip t`.
    fn read_set(family: &str, set: Json) -> Result<Set, ReadbackError> {
        let name = set.as_object().unwrap().values().next().unwrap()["name"].clone();
        let ruleset = from_nft_json(&listing(family, vec![set]))?;
        let f = if family == "ip" {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        Ok(ruleset.tables[&f].sets[name.as_str().unwrap()].clone())
    }

    fn m(left: Expr, op: MatchOp, right: MatchRight) -> Stmt {
        Stmt::Match { left, op, right }
    }

    fn payload(protocol: &str, field: &str) -> Json {
        json!({"payload": {"protocol": protocol, "field": field}})
    }

    fn svc_key_json() -> Json {
        json!({"concat": [payload("ip", "daddr"), {"meta": {"key": "l4proto"}},
            payload("th", "dport")]})
    }

    fn svc_key() -> Expr {
        Expr::Concat(vec![Expr::Daddr(IpFamily::V4), Expr::L4Proto, Expr::Dport])
    }

    #[test]
    fn matches_in_list_form() {
        let saddr = payload("ip", "saddr");
        assert_eq!(
            stmts4(json!([{"match": {"op": "==", "left": saddr, "right": "1.2.3.4"}}])),
            vec![m(
                Expr::Saddr(IpFamily::V4),
                MatchOp::Eq,
                MatchRight::Value(Value::Addr(ip("1.2.3.4")))
            )]
        );
        assert_eq!(
            stmts4(json!([{"match": {"op": "!=", "left": saddr, "right": "@pod-cidrs"}}])),
            vec![m(
                Expr::Saddr(IpFamily::V4),
                MatchOp::Ne,
                MatchRight::Set("pod-cidrs".into())
            )]
        );
        // The kernel collapses `ip6 daddr { fd00::/64 }` to a prefix comparison.
        assert_eq!(
            read_stmts(
                "ip6",
                json!([{"match": {"op": "==", "left": payload("ip6", "daddr"),
                "right": {"prefix": {"addr": "fd00::", "len": 64}}}}])
            )
            .unwrap(),
            vec![m(
                Expr::Daddr(IpFamily::V6),
                MatchOp::Eq,
                MatchRight::Value(net("fd00::/64"))
            )]
        );
        // Anonymous sets come back sorted; ranges that are prefixes are prefixes.
        assert_eq!(
            stmts4(
                json!([{"match": {"op": "!=", "left": saddr, "right": {"set": [
                {"range": ["10.0.0.0", "10.255.255.255"]}, "1.2.3.4", "1.2.3.4"]}}}])
            ),
            vec![m(
                Expr::Saddr(IpFamily::V4),
                MatchOp::Ne,
                MatchRight::AnonSet(vec![Value::Addr(ip("1.2.3.4")), net("10.0.0.0/8")])
            )]
        );
        // A one-element set of a concatenation is the AST's concatenated value.
        let proto_port = json!({"concat": [{"meta": {"key": "l4proto"}}, payload("th", "dport")]});
        let udp53 = Value::Concat(vec![Value::Proto(Protocol::Udp), Value::Port(53)]);
        let tcp80 = Value::Concat(vec![Value::Proto(Protocol::Tcp), Value::Port(80)]);
        assert_eq!(
            stmts4(json!([{"match": {"op": "==", "left": proto_port,
                "right": {"set": [{"concat": ["udp", 53]}]}}}])),
            vec![m(
                Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                MatchOp::Eq,
                MatchRight::Value(udp53.clone())
            )]
        );
        assert_eq!(
            stmts4(json!([{"match": {"op": "==", "left": proto_port,
                "right": {"set": [{"concat": ["udp", 53]}, {"concat": ["tcp", 80]}]}}}])),
            vec![m(
                Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
                MatchOp::Eq,
                MatchRight::AnonSet(vec![tcp80, udp53])
            )]
        );
        // Flags: implicit "all bits set", and the masked "not all bits set".
        assert_eq!(
            stmts4(json!([
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"match": {"op": "!=", "left": {"&": [{"ct": {"key": "state"}}, "new"]},
                    "right": "new"}},
                {"match": {"op": "!=", "left": {"&": [{"ct": {"key": "status"}}, "dnat"]},
                    "right": "dnat"}}
            ])),
            vec![
                m(
                    Expr::CtState,
                    MatchOp::Eq,
                    MatchRight::Value(Value::CtStateNew)
                ),
                m(
                    Expr::CtStatus,
                    MatchOp::Eq,
                    MatchRight::Value(Value::CtStatusDnat)
                ),
                m(
                    Expr::CtState,
                    MatchOp::Ne,
                    MatchRight::Value(Value::CtStateNew)
                ),
                m(
                    Expr::CtStatus,
                    MatchOp::Ne,
                    MatchRight::Value(Value::CtStatusDnat)
                ),
            ]
        );
        let mark = json!({"meta": {"key": "mark"}});
        assert_eq!(
            stmts4(json!([
                {"match": {"op": "==", "left": {"&": [mark, 16384]}, "right": 0}},
                {"match": {"op": "!=", "left": {"&": [mark, "0x00004000"]}, "right": 0}},
                {"match": {"op": "==", "left": mark, "right": 16384}},
                {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["saddr"]}},
                    "right": "local"}},
                {"match": {"op": "!=", "left": {"fib": {"result": "type", "flags": "daddr"}},
                    "right": "local"}},
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "sctp"}},
                {"match": {"op": "!=", "left": payload("th", "dport"), "right": 22}}
            ])),
            vec![
                m(
                    Expr::MarkAnd(0x4000),
                    MatchOp::Eq,
                    MatchRight::Value(Value::Int(0))
                ),
                m(
                    Expr::MarkAnd(0x4000),
                    MatchOp::Ne,
                    MatchRight::Value(Value::Int(0))
                ),
                m(
                    Expr::Mark,
                    MatchOp::Eq,
                    MatchRight::Value(Value::Int(0x4000))
                ),
                m(
                    Expr::FibAddrType { saddr: true },
                    MatchOp::Eq,
                    MatchRight::Value(Value::FibLocal)
                ),
                m(
                    Expr::FibAddrType { saddr: false },
                    MatchOp::Ne,
                    MatchRight::Value(Value::FibLocal)
                ),
                m(
                    Expr::L4Proto,
                    MatchOp::Eq,
                    MatchRight::Value(Value::Proto(Protocol::Sctp))
                ),
                m(Expr::Dport, MatchOp::Ne, MatchRight::Value(Value::Port(22))),
            ]
        );
        // `meta l4proto tcp th dport != 22` is listed as `tcp dport != 22`.
        assert_eq!(
            stmts4(
                json!([{"match": {"op": "!=", "left": payload("tcp", "dport"), "right": 22}},
                {"drop": null}])
            ),
            vec![
                m(
                    Expr::L4Proto,
                    MatchOp::Eq,
                    MatchRight::Value(Value::Proto(Protocol::Tcp))
                ),
                m(Expr::Dport, MatchOp::Ne, MatchRight::Value(Value::Port(22))),
                Stmt::Verdict(Verdict::Drop),
            ]
        );
    }

    #[test]
    fn statements_in_list_form() {
        let mark = json!({"meta": {"key": "mark"}});
        let affinity_key = json!({"concat": [payload("ip", "saddr"), payload("ip", "daddr"),
            {"meta": {"key": "l4proto"}}, payload("th", "dport")]});
        let stmts = stmts4(json!([
            {"vmap": {"key": svc_key_json(), "data": "@service-ips"}},
            {"vmap": {"key": {"numgen": {"mode": "random", "mod": 3, "offset": 0}},
                "data": {"set": [[2, {"goto": {"target": "ep-2"}}], [0, {"goto": {"target": "ep-0"}}],
                    [1, {"jump": {"target": "ep-1"}}]]}}},
            {"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 4}},
                "data": {"set": [[4, {"accept": null}], [5, "drop"]]}}},
            {"mangle": {"key": mark, "value": {"|": [mark, 16384]}}},
            {"mangle": {"key": mark, "value": {"^": [mark, 16384]}}},
            {"set": {"op": "update", "elem": {"elem": {"val": affinity_key, "timeout": 10800}},
                "set": "@aff-0"}},
            {"set": {"op": "update", "elem": payload("ip", "saddr"), "set": "@seen"}},
            {"dnat": {"addr": {"map": {"key": svc_key_json(), "data": "@ep-0-addr"}},
                "port": {"map": {"key": svc_key_json(), "data": "@ep-0-port"}}}},
            {"masquerade": {"flags": "fully-random"}},
            {"masquerade": {"flags": ["fully-random"]}},
            {"masquerade": null},
            {"reject": {"type": "icmp", "expr": "port-unreachable"}},
            {"reject": null},
            {"accept": null}, {"drop": null}, {"return": null},
            {"jump": {"target": "services"}}, {"goto": {"target": "ep-0"}}
        ]));
        let affinity_key = Expr::Concat(vec![
            Expr::Saddr(IpFamily::V4),
            Expr::Daddr(IpFamily::V4),
            Expr::L4Proto,
            Expr::Dport,
        ]);
        assert_eq!(
            stmts,
            vec![
                Stmt::Vmap {
                    key: svc_key(),
                    map: MapRef::Named("service-ips".into())
                },
                Stmt::Vmap {
                    key: Expr::Numgen {
                        modulus: 3,
                        offset: 0
                    },
                    map: MapRef::Anon(vec![
                        (Value::Int(0), Verdict::Goto("ep-0".into())),
                        (Value::Int(1), Verdict::Jump("ep-1".into())),
                        (Value::Int(2), Verdict::Goto("ep-2".into())),
                    ]),
                },
                Stmt::Vmap {
                    key: Expr::Numgen {
                        modulus: 2,
                        offset: 4
                    },
                    map: MapRef::Anon(vec![
                        (Value::Int(4), Verdict::Accept),
                        (Value::Int(5), Verdict::Drop),
                    ]),
                },
                Stmt::SetMark(MarkOp::Or(0x4000)),
                Stmt::SetMark(MarkOp::Xor(0x4000)),
                Stmt::SetUpdate {
                    set: "aff-0".into(),
                    key: affinity_key,
                    timeout: Some(10800)
                },
                Stmt::SetUpdate {
                    set: "seen".into(),
                    key: Expr::Saddr(IpFamily::V4),
                    timeout: None,
                },
                Stmt::DnatMap {
                    key: svc_key(),
                    addr_map: "ep-0-addr".into(),
                    port_map: "ep-0-port".into(),
                },
                Stmt::Masquerade { fully_random: true },
                Stmt::Masquerade { fully_random: true },
                Stmt::Masquerade {
                    fully_random: false
                },
                Stmt::Reject,
                Stmt::Reject,
                Stmt::Verdict(Verdict::Accept),
                Stmt::Verdict(Verdict::Drop),
                Stmt::Verdict(Verdict::Return),
                Stmt::Verdict(Verdict::Jump("services".into())),
                Stmt::Verdict(Verdict::Goto("ep-0".into())),
            ]
        );
        assert_eq!(
            read_stmts(
                "ip6",
                json!([{"reject": {"type": "icmpv6", "expr": "port-unreachable"}}])
            )
            .unwrap(),
            vec![Stmt::Reject]
        );
    }

    #[test]
    fn tables_chains_and_rule_comments_in_list_form() {
        let text = json!({"nftables": [
            metainfo(),
            {"table": {"family": "ip6", "name": "nftproxy", "handle": 2}},
            {"chain": {"family": "ip6", "table": "nftproxy", "name": "nat-output", "handle": 19,
                "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
            {"chain": {"family": "ip6", "table": "nftproxy", "name": "filter-input", "handle": 8,
                "type": "filter", "hook": "input", "prio": "filter", "policy": "accept"}},
            {"chain": {"family": "ip6", "table": "nftproxy", "name": "services", "handle": 31}},
            {"rule": {"family": "ip6", "table": "nftproxy", "chain": "nat-output", "handle": 90,
                "comment": "services", "expr": [{"jump": {"target": "services"}}]}},
            {"rule": {"family": "ip6", "table": "nftproxy", "chain": "nat-output", "handle": 91,
                "expr": [{"accept": null}]}}
        ]})
        .to_string();
        let ruleset = from_nft_json(&text).unwrap();
        assert_eq!(ruleset.tables.len(), 1);
        let table = &ruleset.tables[&IpFamily::V6];
        assert_eq!(table.name, "nftproxy");
        assert_eq!(
            table.chains["nat-output"],
            Chain {
                name: "nat-output".into(),
                base: Some(BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Output,
                    priority: -100
                }),
                rules: vec![
                    Rule::new(vec![Stmt::Verdict(Verdict::Jump("services".into()))])
                        .with_comment("services"),
                    Rule::new(vec![Stmt::Verdict(Verdict::Accept)]),
                ],
            }
        );
        assert_eq!(
            table.chains["filter-input"].base,
            Some(BaseChain {
                chain_type: ChainType::Filter,
                hook: Hook::Input,
                priority: 0
            })
        );
        assert_eq!(table.chains["services"].base, None);
        assert!(table.sets.is_empty());
        // A metainfo-only document (an empty listing) is an empty ruleset.
        assert_eq!(
            from_nft_json(&json!({"nftables": [metainfo()]}).to_string()).unwrap(),
            Ruleset::default()
        );
    }

    #[test]
    fn sets_and_maps_in_list_form() {
        // Interval set: a bare address is a full-length prefix, a range a prefix.
        let cidrs = read_set(
            "ip",
            json!({"set": {"family": "ip", "name": "pod-cidrs", "table": "t",
                "type": "ipv4_addr", "handle": 64, "comment": "sources", "flags": ["interval"],
                "elem": ["1.2.3.4", {"prefix": {"addr": "10.0.0.0", "len": 8}},
                    {"range": ["192.168.0.0", "192.168.0.255"]}]}}),
        )
        .unwrap();
        assert_eq!(cidrs.key, vec![KeyType::Ipv4Addr]);
        assert_eq!(
            cidrs.flags,
            SetFlags {
                interval: true,
                dynamic: false,
                timeout: None
            }
        );
        assert_eq!(cidrs.comment.as_deref(), Some("sources"));
        let keys: Vec<_> = cidrs.elements.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                vec![net("1.2.3.4/32")],
                vec![net("10.0.0.0/8")],
                vec![net("192.168.0.0/24")]
            ]
        );
        // Concatenated interval set: only the last component becomes a prefix.
        let allow = read_set(
            "ip",
            json!({"set": {"family": "ip", "name": "firewall-allow", "table": "t",
                "type": ["ipv4_addr", "inet_proto", "inet_service", "ipv4_addr"], "handle": 45,
                "flags": ["interval"], "elem": [
                    {"concat": ["1.2.3.4", "tcp", 80, "1.2.3.4"]},
                    {"concat": ["1.2.3.4", "tcp", 80, {"prefix": {"addr": "0.0.0.0", "len": 0}}]}]}}),
        )
        .unwrap();
        let a = Value::Addr(ip("1.2.3.4"));
        let tcp80 = [Value::Proto(Protocol::Tcp), Value::Port(80)];
        let key = |last: Value| {
            let mut k = vec![a.clone()];
            k.extend(tcp80.iter().cloned());
            k.push(last);
            k
        };
        assert_eq!(
            allow.elements,
            BTreeMap::from([
                (key(net("1.2.3.4/32")), None),
                (key(net("0.0.0.0/0")), None)
            ])
        );
        // Verdict map with every form of verdict data, including bare strings.
        let vmap = read_set(
            "ip",
            json!({"map": {"family": "ip", "name": "service-ips", "table": "t",
                "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 65, "map": "verdict",
                "elem": [
                    [{"concat": ["172.30.0.1", "tcp", 80]}, {"goto": {"target": "internal-cluster"}}],
                    [{"concat": ["172.30.0.1", "udp", 53]}, {"jump": {"target": "x"}}],
                    [{"concat": ["172.30.0.2", 6, 80]}, {"accept": null}],
                    [{"concat": ["172.30.0.3", "sctp", 9]}, "drop"],
                    [{"elem": {"val": {"concat": ["172.30.0.4", "tcp", 1]}, "timeout": 5,
                        "expires": 4}}, "return"]]}}),
        )
        .unwrap();
        assert_eq!(vmap.data, Some(DataType::Verdict));
        let k = |a: &str, p: Protocol, port: u16| {
            vec![Value::Addr(ip(a)), Value::Proto(p), Value::Port(port)]
        };
        let v = |v: Verdict| Some(ElemData::Verdict(v));
        assert_eq!(
            vmap.elements,
            BTreeMap::from([
                (
                    k("172.30.0.1", Protocol::Tcp, 80),
                    v(Verdict::Goto("internal-cluster".into()))
                ),
                (
                    k("172.30.0.1", Protocol::Udp, 53),
                    v(Verdict::Jump("x".into()))
                ),
                (k("172.30.0.2", Protocol::Tcp, 80), v(Verdict::Accept)),
                (k("172.30.0.3", Protocol::Sctp, 9), v(Verdict::Drop)),
                (k("172.30.0.4", Protocol::Tcp, 1), v(Verdict::Return)),
            ])
        );
        // Address and port maps.
        let addr_map = read_set(
            "ip6",
            json!({"map": {"family": "ip6", "name": "np-ep-0-addr", "table": "t",
                "type": ["inet_proto", "inet_service"], "handle": 57, "map": "ipv6_addr",
                "elem": [[{"concat": ["tcp", 30111]}, "fd00::1:5"]]}}),
        )
        .unwrap();
        assert_eq!(addr_map.data, Some(DataType::Addr));
        assert_eq!(
            addr_map.elements,
            BTreeMap::from([(
                vec![Value::Proto(Protocol::Tcp), Value::Port(30111)],
                Some(ElemData::Addr(ip("fd00::1:5")))
            )])
        );
        let port_map = read_set(
            "ip",
            json!({"map": {"family": "ip", "name": "ep-0-port", "table": "t",
                "type": "inet_service", "handle": 40, "map": "inet_service",
                "elem": [[80, 8080]]}}),
        )
        .unwrap();
        assert_eq!(
            port_map.elements,
            BTreeMap::from([(vec![Value::Port(80)], Some(ElemData::Port(8080)))])
        );
    }

    #[test]
    fn dynamic_sets_are_returned_without_elements() {
        // As listed after a client got affinity: no `dynamic` flag in nft 1.0.6's JSON, a size,
        // and elements with timeouts. The update statement makes the set dynamic.
        let affinity_key = json!({"concat": [payload("ip", "saddr"), payload("ip", "daddr"),
            {"meta": {"key": "l4proto"}}, payload("th", "dport")]});
        let text = listing(
            "ip",
            vec![
                json!({"set": {"family": "ip", "name": "aff-0", "table": "t",
                    "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"],
                    "handle": 32, "size": 65535, "flags": ["timeout"], "timeout": 10800,
                    "elem": [{"elem": {"val": {"concat": ["10.0.0.9", "172.30.0.1", "tcp", 80]},
                        "timeout": 60, "expires": 57}}]}}),
                json!({"set": {"family": "ip", "name": "seen", "table": "t", "type": "ipv4_addr",
                    "handle": 33, "size": 65535, "elem": ["10.0.0.9"]}}),
                json!({"set": {"family": "ip", "name": "flagged", "table": "t",
                    "type": "ipv4_addr", "handle": 34, "flags": ["dynamic"], "elem": ["10.0.0.9"]}}),
                listed_rule(
                    "ip",
                    json!([{"set": {"op": "update", "elem": {"elem": {
                    "val": affinity_key, "timeout": 60}}, "set": "@aff-0"}}]),
                ),
                listed_rule(
                    "ip",
                    json!([{"set": {"op": "update",
                    "elem": payload("ip", "saddr"), "set": "@seen"}}]),
                ),
            ],
        );
        let ruleset = from_nft_json(&text).unwrap();
        let sets = &ruleset.tables[&IpFamily::V4].sets;
        assert_eq!(
            sets["aff-0"].flags,
            SetFlags {
                interval: false,
                dynamic: true,
                timeout: Some(10800)
            }
        );
        assert_eq!(
            sets["seen"].flags,
            SetFlags {
                interval: false,
                dynamic: true,
                timeout: None
            }
        );
        assert_eq!(
            sets["flagged"].flags,
            SetFlags {
                interval: false,
                dynamic: true,
                timeout: None
            }
        );
        assert!(sets.values().all(|s| s.elements.is_empty()));
    }

    #[test]
    fn command_form() {
        let table = json!({"family": "ip", "name": "nftproxy"});
        let text = json!({"nftables": [
            {"add": {"table": table}},
            {"add": {"chain": {"family": "ip", "table": "nftproxy", "name": "mark-for-masq"}}},
            {"add": {"chain": {"family": "ip", "table": "nftproxy", "name": "nat-postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"add": {"set": {"family": "ip", "table": "nftproxy", "name": "cluster-ips",
                "type": "ipv4_addr", "comment": "all ClusterIPs", "elem": ["172.30.0.1"]}}},
            {"add": {"element": {"family": "ip", "table": "nftproxy", "name": "cluster-ips",
                "elem": ["172.30.0.2"]}}},
            {"add": {"rule": {"family": "ip", "table": "nftproxy", "chain": "nat-postrouting",
                "expr": [{"jump": {"target": "mark-for-masq"}}], "comment": "masquerade"}}},
            {"add": {"rule": {"family": "ip", "table": "nftproxy", "chain": "mark-for-masq",
                "expr": [{"mangle": {"key": {"meta": {"key": "mark"}},
                    "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}]}}}
        ]})
        .to_string();
        let mut want = Table::new(IpFamily::V4, "nftproxy");
        want.chains.insert(
            "mark-for-masq".into(),
            Chain {
                name: "mark-for-masq".into(),
                base: None,
                rules: vec![Rule::new(vec![Stmt::SetMark(MarkOp::Or(0x4000))])],
            },
        );
        want.chains.insert(
            "nat-postrouting".into(),
            Chain {
                name: "nat-postrouting".into(),
                base: Some(BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Postrouting,
                    priority: 100,
                }),
                rules: vec![
                    Rule::new(vec![Stmt::Verdict(Verdict::Jump("mark-for-masq".into()))])
                        .with_comment("masquerade"),
                ],
            },
        );
        let mut ips = Set::new("cluster-ips", vec![KeyType::Ipv4Addr], None);
        ips.comment = Some("all ClusterIPs".into());
        ips.elements
            .insert(vec![Value::Addr(ip("172.30.0.1"))], None);
        ips.elements
            .insert(vec![Value::Addr(ip("172.30.0.2"))], None);
        want.sets.insert("cluster-ips".into(), ips);
        let got = from_nft_json(&text).unwrap();
        assert_eq!(
            got,
            Ruleset {
                tables: BTreeMap::from([(IpFamily::V4, want)])
            }
        );
    }

    #[test]
    fn rendered_sample_reads_back_in_normal_form() {
        let sample = sample_ruleset();
        assert_eq!(
            from_nft_json(&to_json(&sample)).unwrap(),
            canonical(&sample)
        );
        // Per-object commands read back the same.
        let commands = to_json_value(&sample);
        assert_eq!(
            from_nft_json(&commands.to_string()).unwrap(),
            canonical(&sample)
        );
        // Normalising is idempotent, and the normal form reads back unchanged.
        let normal = canonical(&sample);
        assert_eq!(canonical(&normal), normal);
        assert_eq!(from_nft_json(&to_json(&normal)).unwrap(), normal);
        assert_ne!(normal, sample, "the sample exercises the normalisations");
    }

    #[test]
    fn canonical_normal_forms() {
        let mut table = Table::new(IpFamily::V4, "t");
        let mut cidrs = Set::new("cidrs", vec![KeyType::Ipv4Addr, KeyType::Ipv4Addr], None);
        cidrs.flags.interval = true;
        cidrs.elements.insert(
            vec![Value::Addr(ip("1.1.1.1")), Value::Addr(ip("2.2.2.2"))],
            None,
        );
        let mut aff = Set::new("aff", vec![KeyType::Ipv4Addr], None);
        aff.elements.insert(vec![Value::Addr(ip("1.1.1.1"))], None);
        table.sets.insert("cidrs".into(), cidrs);
        table.sets.insert("aff".into(), aff);
        let pair = Value::Concat(vec![Value::Addr(ip("1.1.1.1")), Value::Port(1)]);
        table.chains.insert(
            "c".into(),
            Chain {
                name: "c".into(),
                base: None,
                rules: vec![Rule::new(vec![
                    m(
                        Expr::Concat(vec![Expr::Saddr(IpFamily::V4), Expr::Dport]),
                        MatchOp::Eq,
                        MatchRight::AnonSet(vec![pair.clone()]),
                    ),
                    m(
                        Expr::Dport,
                        MatchOp::Eq,
                        MatchRight::AnonSet(vec![Value::Port(2), Value::Port(1), Value::Port(2)]),
                    ),
                    Stmt::SetUpdate {
                        set: "aff".into(),
                        key: Expr::Saddr(IpFamily::V4),
                        timeout: None,
                    },
                ])],
            },
        );
        let ruleset = Ruleset {
            tables: BTreeMap::from([(IpFamily::V4, table)]),
        };
        let normal = canonical(&ruleset);
        let t = &normal.tables[&IpFamily::V4];
        assert_eq!(
            t.sets["cidrs"].elements.keys().next().unwrap(),
            &vec![Value::Addr(ip("1.1.1.1")), net("2.2.2.2/32")]
        );
        assert!(t.sets["aff"].flags.dynamic && t.sets["aff"].elements.is_empty());
        assert_eq!(
            t.chains["c"].rules[0].stmts[..2],
            [
                m(
                    Expr::Concat(vec![Expr::Saddr(IpFamily::V4), Expr::Dport]),
                    MatchOp::Eq,
                    MatchRight::Value(pair)
                ),
                m(
                    Expr::Dport,
                    MatchOp::Eq,
                    MatchRight::AnonSet(vec![Value::Port(1), Value::Port(2)])
                ),
            ]
        );
    }

    #[test]
    fn range_prefixes() {
        let r = |a: &str, b: &str| range_prefix(ip(a), ip(b)).map(|p| p.to_string());
        assert_eq!(
            r("10.0.0.0", "10.255.255.255").as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            r("0.0.0.0", "255.255.255.255").as_deref(),
            Some("0.0.0.0/0")
        );
        assert_eq!(r("10.0.0.0", "10.0.0.1").as_deref(), Some("10.0.0.0/31"));
        assert_eq!(
            r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").as_deref(),
            Some("::/0")
        );
        assert_eq!(r("fd00::", "fd00::ffff").as_deref(), Some("fd00::/112"));
        assert_eq!(r("10.0.0.1", "10.0.0.2"), None);
        assert_eq!(r("10.0.0.0", "10.0.0.2"), None);
        assert_eq!(r("10.0.0.0", "fd00::"), None);
    }

    #[test]
    fn foreign_rules_are_errors_naming_the_rule() {
        let err = read_stmts(
            "ip",
            json!([{"match": {"op": "==", "left": payload("ip", "saddr"), "right": "1.2.3.4"}},
                {"counter": {"packets": 0, "bytes": 0}}]),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ReadbackError::Rule { chain, handle: Some(7), .. } if chain == "c"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "rule with handle 7 in chain ip t c is not representable: unsupported statement: \
             {\"counter\":{\"bytes\":0,\"packets\":0}}"
        );
        let bad = |expr: Json| read_stmts("ip", expr).unwrap_err().to_string();
        let saddr = payload("ip", "saddr");
        let ct_state = json!({"ct": {"key": "state"}});
        for (expr, reason) in [
            (json!([{"log": null}]), "unsupported statement"),
            (
                json!([{"match": {"op": "<", "left": saddr, "right": "1.2.3.4"}}]),
                "unsupported operator",
            ),
            (
                json!([{"match": {"op": "==", "left": ct_state, "right": "new"}}]),
                "exact comparison of a bitmask",
            ),
            (
                json!([{"match": {"op": "in", "left": ct_state, "right": "established"}}]),
                "unsupported ct state",
            ),
            (
                json!([{"match": {"op": "==", "left": payload("tcp", "sport"), "right": 1}}]),
                "unsupported expression",
            ),
            (
                json!([{"match": {"op": "==", "left": saddr, "right": "fd00::1"}}]),
                "expected an ip address",
            ),
            (
                json!([{"match": {"op": "==", "left": saddr,
                "right": {"range": ["10.0.0.1", "10.0.0.5"]}}}]),
                "a range that is not a prefix",
            ),
            (
                json!([{"reject": {"type": "tcp reset"}}]),
                "reject other than ICMP port unreachable",
            ),
            (
                json!([{"masquerade": {"flags": ["persistent"]}}]),
                "unsupported masquerade flags",
            ),
            (
                json!([{"set": {"op": "add", "elem": saddr, "set": "@s"}}]),
                "set statement other than update",
            ),
            (
                json!([{"dnat": {"addr": "10.0.0.1"}}]),
                "dnat target other than a map lookup",
            ),
            (
                json!([{"dnat": {"addr": {"map": {"key": saddr, "data": "@a"}},
                "port": {"map": {"key": payload("th", "dport"), "data": "@p"}}}}]),
                "dnat address and port looked up with different keys",
            ),
            (json!([{"accept": {"x": 1}}]), "verdict with an argument"),
        ] {
            let message = bad(expr);
            assert!(message.contains(reason), "{message} should say {reason}");
            assert!(
                message.starts_with("rule with handle 7 in chain ip t c"),
                "{message}"
            );
        }
    }

    #[test]
    fn foreign_objects_are_errors() {
        let err = |objects: Vec<Json>| from_nft_json(&listing("ip", objects)).unwrap_err();
        let e = err(vec![
            json!({"chain": {"family": "ip", "table": "t", "name": "x", "handle": 2,
            "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}),
        ]);
        assert_eq!(
            e.to_string(),
            "chain ip t x is not representable: policy other than accept: \"drop\""
        );
        let e = err(vec![
            json!({"chain": {"family": "ip", "table": "t", "name": "x",
            "handle": 2, "type": "filter", "hook": "ingress", "prio": 0, "dev": "lo"}}),
        ]);
        assert!(e.to_string().contains("unexpected field \"dev\""), "{e}");
        let e = err(vec![
            json!({"set": {"family": "ip", "table": "t", "name": "s",
            "type": "ether_addr", "handle": 9}}),
        ]);
        assert!(
            matches!(&e, ReadbackError::Set { set, .. } if set == "s"),
            "{e:?}"
        );
        let e = err(vec![
            json!({"set": {"family": "ip", "table": "t", "name": "s",
            "type": "ipv4_addr", "handle": 9, "size": 100}}),
        ]);
        assert!(e.to_string().contains("unsupported size"), "{e}");
        // nft's size for dynamic sets on a set that nothing updates.
        let e = err(vec![
            json!({"set": {"family": "ip", "table": "t", "name": "s",
            "type": "ipv4_addr", "handle": 9, "size": 65535}}),
        ]);
        assert!(
            e.to_string()
                .contains("a size on a set that no rule updates"),
            "{e}"
        );
        let e = err(vec![
            json!({"set": {"family": "ip", "table": "t", "name": "s",
            "type": "ipv4_addr", "handle": 9, "flags": ["constant"]}}),
        ]);
        assert!(e.to_string().contains("unsupported set flag"), "{e}");
        let e = err(vec![
            json!({"set": {"family": "ip", "table": "t", "name": "s",
            "type": "ipv4_addr", "handle": 9, "flags": ["timeout"]}}),
        ]);
        assert!(
            e.to_string()
                .contains("timeout flag without a default timeout"),
            "{e}"
        );
        let e = err(vec![
            json!({"map": {"family": "ip", "table": "t", "name": "m",
            "type": "ipv4_addr", "handle": 9, "map": "ipv6_addr"}}),
        ]);
        assert!(e.to_string().contains("unsupported map data type"), "{e}");
        let e = err(vec![
            json!({"set": {"family": "ip", "table": "t", "name": "m",
            "type": "ipv4_addr", "handle": 9, "map": "verdict"}}),
        ]);
        assert!(e.to_string().contains("a map needs"), "{e}");
        let e = err(vec![
            json!({"counter": {"family": "ip", "table": "t", "name": "n",
            "handle": 9, "packets": 0, "bytes": 0}}),
        ]);
        assert!(matches!(e, ReadbackError::Document { .. }), "{e:?}");
        let e = err(vec![
            json!({"table": {"family": "ip", "name": "other", "handle": 9}}),
        ]);
        assert_eq!(
            e.to_string(),
            "table ip other is not representable: a second ip table besides t: \
             {\"family\":\"ip\",\"handle\":9,\"name\":\"other\"}"
        );
        let e = err(vec![listed_rule("ip", json!([]))
            .pointer_mut("/rule")
            .map(|r| {
                r["chain"] = json!("missing");
                json!({"rule": r.clone()})
            })
            .unwrap()]);
        assert!(e.to_string().contains("rule of an undeclared chain"), "{e}");
        let e = from_nft_json(
            &json!({"nftables": [{"table": {"family": "inet", "name": "t"}}]}).to_string(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unsupported family \"inet\""), "{e}");
        let e = from_nft_json(
            &json!({"nftables": [{"delete": {"table": {"family": "ip",
            "name": "t"}}}]})
            .to_string(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported object or command \"delete\""),
            "{e}"
        );
        assert!(matches!(from_nft_json("{"), Err(ReadbackError::Parse(_))));
        assert!(matches!(
            from_nft_json("[]"),
            Err(ReadbackError::Document { .. })
        ));
    }

    /// `nft -j list ruleset` after loading `script` into a throwaway network namespace, or
    /// `None` (with a message) when not running as root with nft installed.
    fn kernel_listing(script: &str, json: bool) -> Option<String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1));
        let nft = Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if euid != Some("0") || !nft {
            eprintln!("skipping the kernel round trip: needs root and nft");
            return None;
        }
        let name = format!(
            "nftproxy-readback-{}-{}",
            std::process::id(),
            u8::from(json)
        );
        let path = std::env::temp_dir().join(format!("{name}.in"));
        std::fs::write(&path, script).unwrap();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", &name, "nft"])
                .args(args)
                .output()
                .unwrap()
        };
        let file = path.to_str().unwrap();
        let load = if json {
            run(&["-j", "-f", file])
        } else {
            run(&["-f", file])
        };
        let list = run(&["-j", "list", "ruleset"]);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let _ = std::fs::remove_file(&path);
        assert!(
            load.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        Some(String::from_utf8(list.stdout).unwrap())
    }

    /// The sample (every construct of the AST) through the kernel, loaded as JSON and as text:
    /// equal to its normal form except for what the kernel cannot keep.
    #[test]
    fn sample_reads_back_from_the_kernel() {
        let mut sample = sample_ruleset();
        // The sample's anonymous set `{ 10.0.0.0/8, 10.180.0.1 }` overlaps, and nft merges it to
        // `{ 10.0.0.0/8 }`; use an address outside the prefix.
        for table in sample.tables.values_mut() {
            let outside = match table.family {
                IpFamily::V4 => ip("192.0.2.1"),
                IpFamily::V6 => ip("2001:db8:ffff::1"),
            };
            for rule in table.chains.values_mut().flat_map(|c| &mut c.rules) {
                for stmt in &mut rule.stmts {
                    if let Stmt::Match {
                        right: MatchRight::AnonSet(values),
                        ..
                    } = stmt
                    {
                        for v in values.iter_mut() {
                            if matches!(v, Value::Addr(_)) {
                                *v = Value::Addr(outside);
                            }
                        }
                    }
                }
            }
        }
        let want = canonical(&sample);
        let Some(listing) = kernel_listing(&to_json(&sample), true) else {
            return;
        };
        // nft 1.0.6 drops set comments given in JSON.
        let mut without_comments = want.clone();
        for set in without_comments
            .tables
            .values_mut()
            .flat_map(|t| t.sets.values_mut())
        {
            set.comment = None;
        }
        assert_eq!(from_nft_json(&listing).unwrap(), without_comments);

        let Some(listing) = kernel_listing(&to_nft_text(&sample), false) else {
            return;
        };
        // The text renderer writes `"` in comments as `'` (nft strings have no escapes).
        let mut quoted = want;
        for set in quoted.tables.values_mut().flat_map(|t| t.sets.values_mut()) {
            set.comment = set.comment.as_ref().map(|c| c.replace('"', "'"));
        }
        assert_eq!(from_nft_json(&listing).unwrap(), quoted);
    }

    // Random clusters built directly from snapshot types.

    const SOURCE_RANGES: [&str; 8] = [
        "10.0.0.0/8",
        "203.0.113.0/24",
        "0.0.0.0/0",
        "198.19.0.1/32",
        "192.168.0.2/32",
        "fd00::/64",
        "::/0",
        "2001:db8:ff::/48",
    ];

    #[derive(Debug, Clone)]
    struct EndpointSpec {
        index: u8,
        local: bool,
        ready: bool,
        serving: bool,
        terminating: bool,
        hinted: bool,
    }

    #[derive(Debug, Clone)]
    struct ServiceSpec {
        service_type: ServiceType,
        families: Vec<IpFamily>,
        ports: Vec<(Protocol, u16, Option<u16>)>,
        external_ips: u8,
        lb_ips: u8,
        ranges: Vec<usize>,
        etp_local: bool,
        itp_local: bool,
        affinity: Option<u32>,
        endpoints: Vec<EndpointSpec>,
    }

    fn arb_endpoint() -> impl Strategy<Value = EndpointSpec> {
        (
            0u8..4,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(index, local, ready, serving, terminating, hinted)| EndpointSpec {
                    index,
                    local,
                    ready,
                    serving,
                    terminating,
                    hinted,
                },
            )
    }

    fn arb_service() -> impl Strategy<Value = ServiceSpec> {
        let types = prop::sample::select(vec![
            ServiceType::ClusterIp,
            ServiceType::NodePort,
            ServiceType::LoadBalancer,
        ]);
        let families = prop::sample::select(vec![
            vec![IpFamily::V4],
            vec![IpFamily::V6],
            vec![IpFamily::V4, IpFamily::V6],
        ]);
        let protocol = prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
        let port = prop::sample::select(vec![53u16, 80, 443]);
        let ports =
            prop::collection::vec((protocol, port, prop::option::of(30000u16..30004)), 1..3);
        (
            types,
            families,
            ports,
            0u8..3,
            0u8..3,
            prop::collection::vec(0..SOURCE_RANGES.len(), 0..3),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(prop::sample::select(vec![60u32, 10800])),
            prop::collection::vec(arb_endpoint(), 0..5),
        )
            .prop_map(
                |(
                    service_type,
                    families,
                    ports,
                    external_ips,
                    lb_ips,
                    ranges,
                    etp_local,
                    itp_local,
                    affinity,
                    endpoints,
                )| ServiceSpec {
                    service_type,
                    families,
                    ports,
                    external_ips,
                    lb_ips,
                    ranges,
                    etp_local,
                    itp_local,
                    affinity,
                    endpoints,
                },
            )
    }

    fn arb_config() -> impl Strategy<Value = ProxyConfig> {
        (
            any::<bool>(),
            any::<bool>(),
            0u8..3,
            0u8..3,
            prop::sample::select(vec![0u8, 14, 31]),
        )
            .prop_map(|(masquerade_all, node_cidr, cidrs, npa, masquerade_bit)| {
                let nets = |s: &[&str]| s.iter().map(|n| n.parse().unwrap()).collect();
                ProxyConfig {
                    node_name: "node-a".into(),
                    cluster_cidrs: match cidrs {
                        0 => vec![],
                        1 => nets(&["10.0.0.0/8"]),
                        _ => nets(&["10.0.0.0/8", "fd00::/64"]),
                    },
                    node_port_addresses: match npa {
                        0 => vec![],
                        1 => nets(&["0.0.0.0/0"]),
                        _ => nets(&["192.168.0.0/24", "fd00:192::/64"]),
                    },
                    masquerade_all,
                    masquerade_bit,
                    detect_local: if node_cidr {
                        DetectLocal::NodeCidr
                    } else {
                        DetectLocal::ClusterCidr
                    },
                    ..ProxyConfig::default()
                }
            })
    }

    fn family_addr(family: IpFamily, v4: String, v6: String) -> IpAddr {
        match family {
            IpFamily::V4 => ip(&v4),
            IpFamily::V6 => ip(&v6),
        }
    }

    fn snapshot_of(services: &[ServiceSpec]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.nodes.insert(
            "node-a".into(),
            Node {
                name: "node-a".into(),
                addresses: vec![ip("192.168.0.2"), ip("fd00:192::2")],
                zone: Some("z1".into()),
                pod_cidrs: vec![
                    "10.0.1.0/24".parse().unwrap(),
                    "fd00::1:0/112".parse().unwrap(),
                ],
                draining: false,
            },
        );
        for (i, spec) in services.iter().enumerate() {
            let name = ObjectName::new("default", format!("svc-{i}"));
            let addrs = |n: u8, v4: &dyn Fn(u8) -> String, v6: &dyn Fn(u8) -> String| {
                spec.families
                    .iter()
                    .flat_map(|f| (0..n).map(move |k| (*f, k)))
                    .map(|(f, k)| family_addr(f, v4(k), v6(k)))
                    .collect::<Vec<_>>()
            };
            let ports: Vec<ServicePort> = spec
                .ports
                .iter()
                .enumerate()
                .map(|(j, (protocol, port, node_port))| ServicePort {
                    name: format!("p{j}"),
                    protocol: *protocol,
                    port: *port,
                    node_port: node_port.filter(|_| spec.service_type != ServiceType::ClusterIp),
                })
                .collect();
            let policy = |local| {
                if local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                }
            };
            snapshot.services.insert(
                name.clone(),
                Service {
                    name: name.clone(),
                    service_type: spec.service_type,
                    cluster_ips: addrs(1, &|_| format!("172.30.0.{}", i + 1), &|_| {
                        format!("fd00:30::{}", i + 1)
                    }),
                    ports: ports.clone(),
                    external_ips: addrs(
                        spec.external_ips,
                        &|k| format!("198.18.{i}.{}", k + 1),
                        &|k| format!("2001:db8:e::{i}:{}", k + 1),
                    ),
                    load_balancer_ips: if spec.service_type == ServiceType::LoadBalancer {
                        addrs(spec.lb_ips, &|k| format!("198.19.{i}.{}", k + 1), &|k| {
                            format!("2001:db8:b::{i}:{}", k + 1)
                        })
                    } else {
                        vec![]
                    },
                    load_balancer_source_ranges: spec
                        .ranges
                        .iter()
                        .map(|r| SOURCE_RANGES[*r].parse().unwrap())
                        .collect(),
                    external_traffic_policy: policy(spec.etp_local),
                    internal_traffic_policy: policy(spec.itp_local),
                    session_affinity_timeout: spec.affinity,
                    service_proxy_name: None,
                    traffic_distribution: None,
                    health_check_node_port: None,
                },
            );
            for family in &spec.families {
                let (suffix, address_type) = match family {
                    IpFamily::V4 => ("v4", AddressType::Ipv4),
                    IpFamily::V6 => ("v6", AddressType::Ipv6),
                };
                let slice = ObjectName::new("default", format!("svc-{i}-{suffix}"));
                let endpoints = spec
                    .endpoints
                    .iter()
                    .map(|e| {
                        let node = if e.local { 1 } else { 2 };
                        Endpoint {
                            address: family_addr(
                                *family,
                                format!("10.0.{node}.{}", e.index + 1),
                                format!("fd00::{node}:{}", e.index + 1),
                            ),
                            ready: e.ready,
                            serving: e.serving,
                            terminating: e.terminating,
                            node_name: Some(if e.local { "node-a" } else { "node-b" }.into()),
                            zone: Some(if e.local { "z1" } else { "z2" }.into()),
                            hint_zones: if e.hinted { vec!["z2".into()] } else { vec![] },
                            hint_nodes: vec![],
                        }
                    })
                    .collect();
                snapshot.slices.insert(
                    slice.clone(),
                    EndpointSlice {
                        name: slice,
                        service_name: Some(format!("svc-{i}")),
                        address_type,
                        headless_label: false,
                        ports: ports
                            .iter()
                            .map(|p| SlicePort {
                                name: p.name.clone(),
                                protocol: p.protocol,
                                port: p.port + 8000,
                            })
                            .collect(),
                        endpoints,
                    },
                );
            }
        }
        snapshot
    }

    fn proptest_config() -> ProptestConfig {
        ProptestConfig {
            cases: 200,
            rng_seed: RngSeed::Fixed(0x7265_6164),
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/proptest-regressions/readback.txt"
            )))),
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(proptest_config())]

        /// Compiled rulesets are in the reader's normal form and read back from their JSON
        /// rendering unchanged.
        #[test]
        fn compiled_rulesets_round_trip(
            services in prop::collection::vec(arb_service(), 0..4),
            config in arb_config(),
        ) {
            let snapshot = snapshot_of(&services);
            let ruleset = compile(&snapshot, &config).unwrap().ruleset;
            prop_assert_eq!(&canonical(&ruleset), &ruleset);
            let back = from_nft_json(&to_json(&ruleset));
            prop_assert!(back.is_ok(), "{:?}", back);
            prop_assert_eq!(back.unwrap(), ruleset);
        }
    }
}
