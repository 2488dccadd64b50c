//! Incremental compilation: the cost of a sync follows what changed, not the size of the cluster.
//!
//! [`IncrementalCompiler`] remembers each service's *contribution* to the ruleset — its map
//! elements, the load-balancing chains and endpoint slots it needs — with reference counts for what
//! several services share (an endpoint's hairpin pair, a load-balancing chain). An update
//! recompiles only the services it is told changed (or, without that hint, compares every
//! service's new contribution with the remembered one), and turns the difference straight into a
//! [`Transaction`]: element adds and deletes, plus chain and set changes when the set of
//! load-balancing chains or slots changed. No full-ruleset diff is made.
//!
//! The result is always the ruleset [`compile_with_previous`](super::compile_with_previous)
//! would produce for the same snapshot from the previous ruleset: endpoints keep their slots
//! (see `arrange_slots`), so one endpoint added or removed is a few element changes wherever it
//! sorts. When the node itself changes (its IPs, zone or pod CIDRs), when a family appears or
//! disappears, or when two services claim the same key with different data, the update falls back
//! to a full compile and a full plan.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::compact::CompactKey;
use super::{
    check_config, is_ours, CompileError, FamilyBuilder, KeySpace, LbSpec, NodeContext, Warning,
};
use crate::config::ProxyConfig;
use crate::plan::{self, Op, TableRef, Transaction};
use crate::ruleset::{ElemData, Ruleset, Table, Value};
use crate::snapshot::{EndpointSlice, IpFamily, ObjectName, Service, Snapshot};

/// One element a service puts in one set, shared by its contribution and the element index (so
/// the incremental compiler holds each element once, besides the ruleset's own copy).
#[derive(Debug, PartialEq, Eq)]
struct Elem {
    /// The set or map, interned (see [`IncrementalCompiler::set_names`]).
    set: Arc<str>,
    /// The key, encoded (see [`CompactKey`]).
    key: CompactKey,
    data: Option<ElemData>,
}

/// One element of one set of one family's table, ordered by family, set and key (not data: one
/// key holds one element).
#[derive(Debug, Clone)]
struct ElemId(IpFamily, Arc<Elem>);

impl ElemId {
    fn parts(&self) -> (IpFamily, &str, &CompactKey) {
        (self.0, &self.1.set, &self.1.key)
    }
}

impl PartialEq for ElemId {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for ElemId {}

impl PartialOrd for ElemId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ElemId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// What one service adds to one family's table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct FamilyPart {
    elems: Vec<Arc<Elem>>,
    specs: Vec<LbSpec>,
    slots: Vec<(KeySpace, u32)>,
    port_slots: Vec<(KeySpace, u32)>,
    timeouts: Vec<(KeySpace, u32)>,
}

/// What one service adds to the ruleset, per family.
type Contribution = BTreeMap<IpFamily, FamilyPart>;

/// An element before and after an update (`None`: absent).
type ElemChange = (Option<Option<ElemData>>, Option<Option<ElemData>>);

/// A compiler that keeps its last result and updates it service by service.
#[derive(Debug)]
pub struct IncrementalCompiler {
    config: ProxyConfig,
    node: Option<NodeContext>,
    families: BTreeSet<IpFamily>,
    services: BTreeMap<ObjectName, Contribution>,
    /// How many services put each element there; the data is the first one's (the others' is
    /// equal, or the compiler is conflicted).
    elems: BTreeMap<ElemId, u32>,
    /// Set names of the current ruleset, so that elements share one name per set.
    set_names: BTreeSet<Arc<str>>,
    specs: BTreeMap<(IpFamily, LbSpec), u32>,
    slots: BTreeMap<(IpFamily, KeySpace, u32), u32>,
    port_slots: BTreeMap<(IpFamily, KeySpace, u32), u32>,
    timeouts: BTreeMap<(IpFamily, KeySpace, u32), u32>,
    /// Chains and set definitions (with the node's own elements) for the current structure.
    skeleton: Ruleset,
    ruleset: Ruleset,
    /// Two services claimed one key: updates compile everything until that is resolved.
    conflicted: bool,
    warnings: Vec<Warning>,
    /// Elements the last update removed or changed, with their previous data.
    removed: Vec<RemovedElement>,
    /// What the skeleton was built from, after headroom (see [`Self::structure_signature`]).
    signature: Signature,
    /// Our services with an IPv6 ClusterIP (they make the `ip6` table exist).
    v6_services: BTreeSet<ObjectName>,
}

/// The inputs of the skeleton that matter once headroom is applied: provisioned slots and
/// per-slot port maps per key space, load-balancing chains in use, affinity timeouts.
type Signature = (
    BTreeMap<(IpFamily, KeySpace), u32>,
    BTreeMap<(IpFamily, KeySpace), u32>,
    BTreeSet<(IpFamily, LbSpec)>,
    BTreeSet<(IpFamily, KeySpace, u32)>,
);

/// An element an update removed (or whose data it changed), with the data it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedElement {
    /// The table's family.
    pub family: IpFamily,
    /// Set or map name.
    pub set: String,
    /// The key.
    pub key: Vec<Value>,
    /// The data it had.
    pub data: Option<ElemData>,
}

/// Why a contribution could not be merged: the caller falls back to a full compile.
struct Conflict;

impl IncrementalCompiler {
    /// A compiler with an empty ruleset; the first [`update`](Self::update) compiles everything.
    pub fn new(config: ProxyConfig) -> Result<Self, CompileError> {
        check_config(&config)?;
        Ok(Self {
            config,
            node: None,
            families: BTreeSet::new(),
            services: BTreeMap::new(),
            elems: BTreeMap::new(),
            set_names: BTreeSet::new(),
            specs: BTreeMap::new(),
            slots: BTreeMap::new(),
            port_slots: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            skeleton: Ruleset::default(),
            ruleset: Ruleset::default(),
            conflicted: false,
            warnings: Vec::new(),
            removed: Vec::new(),
            signature: Signature::default(),
            v6_services: BTreeSet::new(),
        })
    }

    /// The current ruleset: equal to `compile_with_previous(snapshot, config, previous)` for the
    /// last snapshot and the ruleset before it.
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    /// Elements the last update removed or changed, with their previous data (for example to
    /// flush conntrack entries of removed UDP endpoints).
    pub fn removed(&self) -> &[RemovedElement] {
        &self.removed
    }

    /// Warnings of the last full compile (incremental updates do not repeat them).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Brings the ruleset to `snapshot` and returns the transaction that moves a kernel holding
    /// the previous ruleset to the new one. With `changed`, only those services (and their
    /// EndpointSlices) are looked at; the caller promises nothing else changed. Without it, every
    /// service is recompiled and compared.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        changed: Option<&[ObjectName]>,
    ) -> Result<Transaction, CompileError> {
        self.removed.clear();
        let ctx = NodeContext::of(snapshot, &self.config);
        // Which services have IPv6, looking only at the changed ones when we are told which: a
        // whole-snapshot scan is what would make a sync cost grow with the cluster.
        let v6_services = match changed {
            Some(list) => {
                let mut v6 = self.v6_services.clone();
                for name in list {
                    v6.remove(name);
                    if snapshot
                        .services
                        .get(name)
                        .is_some_and(|s| self.is_v6_service(s))
                    {
                        v6.insert(name.clone());
                    }
                }
                v6
            }
            None => self.all_v6_services(snapshot),
        };
        let mut families = ctx.families(&self.config, std::iter::empty());
        if !v6_services.is_empty() {
            families.insert(IpFamily::V6);
        }
        if self.conflicted || self.node.as_ref() != Some(&ctx) || self.families != families {
            return self.rebuild(snapshot, ctx, families);
        }
        self.v6_services = v6_services;
        let names: BTreeSet<ObjectName> = match changed {
            Some(list) => list.iter().cloned().collect(),
            None => self
                .services
                .keys()
                .chain(snapshot.services.keys())
                .cloned()
                .collect(),
        };
        let slices = slices_of(snapshot, &names);
        let mut delta: BTreeMap<ElemId, ElemChange> = BTreeMap::new();
        let mut structure_changed = false;
        for name in &names {
            let new = match snapshot.services.get(name) {
                Some(svc) if is_ours(svc, &self.config) => Some(self.contribution(
                    svc,
                    slices.get(name).map(Vec::as_slice).unwrap_or(&[]),
                    &ctx,
                    &self.ruleset,
                )),
                _ => None,
            };
            if self.services.get(name) == new.as_ref() {
                continue;
            }
            if let Some(old) = self.services.remove(name) {
                structure_changed |= self.subtract(&old, &mut delta);
            }
            if let Some(new) = new {
                match self.add(&new, &mut delta) {
                    Ok(changed) => structure_changed |= changed,
                    Err(Conflict) => return self.rebuild(snapshot, ctx, families),
                }
                self.services.insert(name.clone(), new);
            }
        }
        let mut tx = Transaction::new();
        let mut deleted_sets = BTreeSet::new();
        if structure_changed && self.structure_signature() != self.signature {
            let skeleton = self.build_skeleton(&ctx);
            let skel_tx = plan::plan(&self.skeleton, &skeleton);
            for op in &skel_tx.ops {
                if let Op::DeleteSet { table, set } = op {
                    let family = table.family;
                    let kept = skeleton
                        .tables
                        .get(&family)
                        .is_some_and(|t| t.sets.contains_key(&set.name));
                    if kept {
                        // A redefined set loses its elements: not worth a special case.
                        return self.rebuild(snapshot, ctx, families);
                    }
                    deleted_sets.insert((family, set.name.clone()));
                }
            }
            tx.ops = skel_tx.ops;
            self.install_skeleton(skeleton);
            self.signature = self.structure_signature();
        }
        tx.ops.extend(self.element_ops(&delta, &deleted_sets));
        tx.ops.sort_by_key(phase);
        Ok(tx)
    }

    fn is_v6_service(&self, s: &Service) -> bool {
        is_ours(s, &self.config) && s.cluster_ips.iter().any(|ip| ip.is_ipv6())
    }

    fn all_v6_services(&self, snapshot: &Snapshot) -> BTreeSet<ObjectName> {
        snapshot
            .services
            .values()
            .filter(|s| self.is_v6_service(s))
            .map(|s| s.name.clone())
            .collect()
    }

    /// Compiles one service's contribution to every family, keeping the slots it has in
    /// `previous`.
    fn contribution(
        &self,
        svc: &Service,
        slices: &[&EndpointSlice],
        ctx: &NodeContext,
        previous: &Ruleset,
    ) -> Contribution {
        let mut out = Contribution::new();
        for f in &self.families {
            let mut b = FamilyBuilder::new(*f, &self.config);
            b.previous = previous.tables.get(f);
            b.node_ips = ctx.node_ips.clone();
            b.add_service(svc, slices, &self.config.node_name, ctx.zone.as_deref());
            let mut part = FamilyPart::default();
            for (name, set) in &b.sets {
                let name = self.set_name(name);
                for (key, data) in &set.elements {
                    part.elems.push(Arc::new(Elem {
                        set: name.clone(),
                        key: CompactKey::new(key),
                        data: data.clone(),
                    }));
                }
            }
            part.specs = b.lb_specs.iter().copied().collect();
            part.slots = b.slots.iter().map(|(s, n)| (*s, *n)).collect();
            part.port_slots = b.port_slots.iter().map(|(s, n)| (*s, *n)).collect();
            part.timeouts = b
                .affinity_timeouts
                .iter()
                .flat_map(|(s, ts)| ts.iter().map(|t| (*s, *t)))
                .collect();
            if part != FamilyPart::default() {
                out.insert(*f, part);
            }
        }
        out
    }

    /// The interned name of a set.
    fn set_name(&self, name: &str) -> Arc<str> {
        self.set_names
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }

    /// Remembers the set names of `rs` for [`Self::set_name`].
    fn intern_set_names(&mut self, rs: &Ruleset) {
        for table in rs.tables.values() {
            for name in table.sets.keys() {
                if !self.set_names.contains(name.as_str()) {
                    self.set_names.insert(Arc::from(name.as_str()));
                }
            }
        }
    }

    /// Adds a contribution's references; returns whether the structure (chains, slot maps,
    /// affinity sets) changed.
    fn add(
        &mut self,
        c: &Contribution,
        delta: &mut BTreeMap<ElemId, ElemChange>,
    ) -> Result<bool, Conflict> {
        // Check for conflicts first, so a failed add leaves nothing half-done.
        for (f, part) in c {
            for e in &part.elems {
                if let Some((id, _)) = self.elems.get_key_value(&ElemId(*f, e.clone())) {
                    if id.1.data != e.data {
                        return Err(Conflict);
                    }
                }
            }
        }
        let mut structure = false;
        for (f, part) in c {
            for e in &part.elems {
                let id = ElemId(*f, e.clone());
                let count = self.elems.entry(id.clone()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    let change = delta.entry(id).or_insert((None, None));
                    change.1 = Some(e.data.clone());
                }
            }
            structure |= bump(&mut self.specs, part.specs.iter().map(|s| (*f, *s)), true);
            structure |= bump(
                &mut self.slots,
                part.slots.iter().map(|(s, n)| (*f, *s, *n)),
                true,
            );
            structure |= bump(
                &mut self.port_slots,
                part.port_slots.iter().map(|(s, n)| (*f, *s, *n)),
                true,
            );
            structure |= bump(
                &mut self.timeouts,
                part.timeouts.iter().map(|(s, t)| (*f, *s, *t)),
                true,
            );
        }
        Ok(structure)
    }

    /// Removes a contribution's references; returns whether the structure changed.
    fn subtract(&mut self, c: &Contribution, delta: &mut BTreeMap<ElemId, ElemChange>) -> bool {
        let mut structure = false;
        for (f, part) in c {
            for e in &part.elems {
                let id = ElemId(*f, e.clone());
                let Some(count) = self.elems.get_mut(&id) else {
                    continue;
                };
                *count -= 1;
                if *count == 0 {
                    self.elems.remove(&id);
                    let change = delta.entry(id).or_insert((None, None));
                    if change.0.is_none() && change.1.is_none() {
                        change.0 = Some(e.data.clone());
                    } else {
                        // Added earlier in this update, removed again.
                        change.1 = None;
                    }
                }
            }
            structure |= bump(&mut self.specs, part.specs.iter().map(|s| (*f, *s)), false);
            structure |= bump(
                &mut self.slots,
                part.slots.iter().map(|(s, n)| (*f, *s, *n)),
                false,
            );
            structure |= bump(
                &mut self.port_slots,
                part.port_slots.iter().map(|(s, n)| (*f, *s, *n)),
                false,
            );
            structure |= bump(
                &mut self.timeouts,
                part.timeouts.iter().map(|(s, t)| (*f, *s, *t)),
                false,
            );
        }
        structure
    }

    /// The structure the skeleton follows; equal signatures give equal skeletons, so a change
    /// of, say, 10 to 11 endpoints within the provisioned 16 slots adds no slot.
    fn structure_signature(&self) -> Signature {
        let provisioned = |counts: &BTreeMap<(IpFamily, KeySpace, u32), u32>| {
            let mut out: BTreeMap<(IpFamily, KeySpace), u32> = BTreeMap::new();
            for (f, space, n) in counts.keys() {
                let e = out.entry((*f, *space)).or_insert(0);
                *e = (*e).max(super::provisioned_slots(*n));
            }
            out
        };
        (
            provisioned(&self.slots),
            provisioned(&self.port_slots),
            self.specs.keys().copied().collect(),
            self.timeouts.keys().copied().collect(),
        )
    }

    /// Chains and set definitions for the current structure, with the node's own elements.
    fn build_skeleton(&self, ctx: &NodeContext) -> Ruleset {
        let mut rs = Ruleset::default();
        for f in &self.families {
            let mut b = FamilyBuilder::for_node(*f, &self.config, ctx);
            b.lb_specs = self
                .specs
                .keys()
                .filter(|(ff, _)| ff == f)
                .map(|(_, s)| *s)
                .collect();
            for (ff, space, n) in self.slots.keys() {
                if ff == f {
                    let e = b.slots.entry(*space).or_insert(0);
                    *e = (*e).max(*n);
                }
            }
            for (ff, space, n) in self.port_slots.keys() {
                if ff == f {
                    let e = b.port_slots.entry(*space).or_insert(0);
                    *e = (*e).max(*n);
                }
            }
            for (ff, space, t) in self.timeouts.keys() {
                if ff == f {
                    b.affinity_timeouts.entry(*space).or_default().insert(*t);
                }
            }
            let (table, _) = b.finish();
            rs.tables.insert(*f, table);
        }
        rs
    }

    /// Replaces chains and set definitions with a new skeleton, keeping the elements of sets that
    /// stay.
    fn install_skeleton(&mut self, skeleton: Ruleset) {
        for (f, skel) in &skeleton.tables {
            let table = self
                .ruleset
                .tables
                .entry(*f)
                .or_insert_with(|| Table::new(*f, skel.name.clone()));
            table.chains = skel.chains.clone();
            table.sets.retain(|name, _| skel.sets.contains_key(name));
            for (name, set) in &skel.sets {
                table
                    .sets
                    .entry(name.clone())
                    .or_insert_with(|| set.clone());
            }
        }
        self.ruleset
            .tables
            .retain(|f, _| skeleton.tables.contains_key(f));
        self.intern_set_names(&skeleton);
        self.skeleton = skeleton;
    }

    /// Applies element changes to the ruleset and returns them as grouped ops.
    fn element_ops(
        &mut self,
        delta: &BTreeMap<ElemId, ElemChange>,
        deleted_sets: &BTreeSet<(IpFamily, String)>,
    ) -> Vec<Op> {
        let mut deletes: BTreeMap<(IpFamily, String), Vec<Vec<Value>>> = BTreeMap::new();
        let mut adds: BTreeMap<(IpFamily, String), Vec<plan::Element>> = BTreeMap::new();
        for (ElemId(f, e), (before, after)) in delta {
            if before == after {
                continue;
            }
            let (set, key) = (e.set.to_string(), e.key.values());
            if let Some(data) = before {
                self.removed.push(RemovedElement {
                    family: *f,
                    set: set.clone(),
                    key: key.clone(),
                    data: data.clone(),
                });
            }
            let gone = deleted_sets.contains(&(*f, set.clone()));
            if before.is_some() && !gone {
                deletes
                    .entry((*f, set.clone()))
                    .or_default()
                    .push(key.clone());
            }
            if let Some(data) = after {
                adds.entry((*f, set.clone()))
                    .or_default()
                    .push((key.clone(), data.clone()));
            }
            if let Some(s) = self
                .ruleset
                .tables
                .get_mut(f)
                .and_then(|t| t.sets.get_mut(&set))
            {
                match after {
                    Some(data) => s.elements.insert(key.clone(), data.clone()),
                    None => s.elements.remove(&key),
                };
            }
        }
        let table_ref = |f: IpFamily| TableRef {
            family: f,
            name: self.config.table_name.clone(),
        };
        let mut ops = Vec::new();
        for ((f, set), keys) in deletes {
            ops.push(Op::DeleteElements {
                table: table_ref(f),
                set,
                keys,
            });
        }
        for ((f, set), elems) in adds {
            ops.push(Op::AddElements {
                table: table_ref(f),
                set,
                elems,
            });
        }
        ops
    }

    /// Compiles everything again, keeping the slots of `kernel` (the tables as the kernel holds
    /// them, read back), and makes that the current ruleset. Planning from `kernel` to
    /// [`Self::ruleset`] then moves no endpoint that did not need to move, also after a restart.
    pub fn resync(&mut self, snapshot: &Snapshot, kernel: &Ruleset) -> Result<(), CompileError> {
        self.removed.clear();
        let ctx = NodeContext::of(snapshot, &self.config);
        let mut families = ctx.families(&self.config, std::iter::empty());
        if !self.all_v6_services(snapshot).is_empty() {
            families.insert(IpFamily::V6);
        }
        self.rebuild_from(snapshot, ctx, families, Some(kernel))
            .map(drop)
    }

    /// Compiles everything from scratch and plans from the previous ruleset.
    fn rebuild(
        &mut self,
        snapshot: &Snapshot,
        ctx: NodeContext,
        families: BTreeSet<IpFamily>,
    ) -> Result<Transaction, CompileError> {
        self.rebuild_from(snapshot, ctx, families, None)
            .map(|tx| tx.unwrap_or_default())
    }

    /// [`Self::rebuild`], keeping the slots of `slots_from` (default: the previous ruleset). With
    /// `slots_from` (a resync, whose caller plans from the kernel's tables), no transaction is
    /// planned: on a first sync it would be a copy of every element, thrown away.
    fn rebuild_from(
        &mut self,
        snapshot: &Snapshot,
        ctx: NodeContext,
        families: BTreeSet<IpFamily>,
        slots_from: Option<&Ruleset>,
    ) -> Result<Option<Transaction>, CompileError> {
        let mut old = std::mem::take(&mut self.ruleset);
        self.services.clear();
        self.elems.clear();
        self.specs.clear();
        self.slots.clear();
        self.port_slots.clear();
        self.timeouts.clear();
        self.families = families;
        self.conflicted = false;
        self.v6_services = self.all_v6_services(snapshot);
        let compiled = match super::compile_with_previous(
            snapshot,
            &self.config,
            slots_from.unwrap_or(&old),
        ) {
            Ok(c) => c,
            Err(e) => {
                // Never turn a compile error into an empty ruleset (whose transaction would
                // delete every service): keep the old one and report.
                self.ruleset = old;
                self.node = None;
                return Err(e);
            }
        };
        let (full, warnings) = (compiled.ruleset, compiled.warnings);
        self.warnings = warnings;
        let removed = removed_elements(&old, &full);
        let tx = slots_from.is_none().then(|| plan::plan(&old, &full));
        if slots_from.is_some() {
            // Not needed for slots: let it go before the contributions are built.
            old = Ruleset::default();
        }
        let previous = slots_from.unwrap_or(&old);
        self.set_names.clear();
        self.intern_set_names(&full);
        let all: BTreeSet<ObjectName> = snapshot.services.keys().cloned().collect();
        let slices = slices_of(snapshot, &all);
        let mut scratch = BTreeMap::new();
        let config = self.config.clone();
        for svc in snapshot.services.values().filter(|s| is_ours(s, &config)) {
            let c = self.contribution(
                svc,
                slices.get(&svc.name).map(Vec::as_slice).unwrap_or(&[]),
                &ctx,
                previous,
            );
            if self.add(&c, &mut scratch).is_err() {
                self.conflicted = true;
            }
            // The changes are of no use here (the ruleset is the full compile's): kept, they
            // would be one more entry per element.
            scratch.clear();
            self.services.insert(svc.name.clone(), c);
        }
        self.skeleton = self.build_skeleton(&ctx);
        self.signature = self.structure_signature();
        self.node = Some(ctx);
        self.removed = removed;
        self.ruleset = full;
        Ok(tx)
    }
}

/// The elements of `old` that `new` lacks or holds with other data, with their data in `old`.
pub fn removed_elements(old: &Ruleset, new: &Ruleset) -> Vec<RemovedElement> {
    let mut out = Vec::new();
    for (f, table) in &old.tables {
        for (name, set) in &table.sets {
            let new_set = new.tables.get(f).and_then(|t| t.sets.get(name));
            for (key, data) in &set.elements {
                if new_set.and_then(|n| n.elements.get(key)) != Some(data) {
                    out.push(RemovedElement {
                        family: *f,
                        set: name.clone(),
                        key: key.clone(),
                        data: data.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Adjusts reference counts; returns whether any key appeared or disappeared.
fn bump<K: Ord>(counts: &mut BTreeMap<K, u32>, keys: impl Iterator<Item = K>, up: bool) -> bool {
    let mut changed = false;
    for k in keys {
        if up {
            let c = counts.entry(k).or_insert(0);
            *c += 1;
            changed |= *c == 1;
        } else if let Some(c) = counts.get_mut(&k) {
            *c -= 1;
            if *c == 0 {
                counts.remove(&k);
                changed = true;
            }
        }
    }
    changed
}

/// The slices of the named services, in slice name order.
fn slices_of<'s>(
    snapshot: &'s Snapshot,
    names: &BTreeSet<ObjectName>,
) -> BTreeMap<ObjectName, Vec<&'s EndpointSlice>> {
    let wanted: BTreeSet<(&str, &str)> = names
        .iter()
        .map(|n| (n.namespace.as_str(), n.name.as_str()))
        .collect();
    let namespaces: BTreeSet<&str> = wanted.iter().map(|(ns, _)| *ns).collect();
    let mut out: BTreeMap<ObjectName, Vec<&EndpointSlice>> = BTreeMap::new();
    // Slices are sorted by namespace first: only the namespaces of the wanted services are read.
    for ns in namespaces {
        let from = ObjectName::new(ns, "");
        for slice in snapshot
            .slices
            .range(from..)
            .map(|(_, s)| s)
            .take_while(|s| s.name.namespace == ns)
        {
            let Some(svc) = slice.service_name.as_deref() else {
                continue;
            };
            if wanted.contains(&(ns, svc)) {
                out.entry(ObjectName::new(ns, svc)).or_default().push(slice);
            }
        }
    }
    out
}

/// The order nft needs within one batch (see [`plan::plan`]).
fn phase(op: &Op) -> u8 {
    match op {
        Op::FlushChain { .. } => 0,
        Op::DeleteElements { .. } => 1,
        Op::DeleteSet { .. } => 2,
        Op::DeleteChain { .. } => 3,
        Op::DeleteTable(_) => 4,
        Op::AddTable(_) | Op::AddChain { .. } | Op::AddSet { .. } => 5,
        Op::AddElements { .. } => 6,
        Op::AddRule { .. } => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::v;
    use crate::compile::{compile, compile_with_previous};
    use crate::fake::Fake;
    use crate::snapshot::{
        AddressType, Endpoint, Protocol, ServicePort, ServiceType, SlicePort, TrafficPolicy,
    };
    use proptest::prelude::*;
    use std::net::IpAddr;

    /// A tiny deterministic generator, so one proptest seed drives a whole sequence of changes.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn config() -> ProxyConfig {
        ProxyConfig {
            node_name: "node-a".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..ProxyConfig::default()
        }
    }

    fn service(i: u64, rng: &mut Rng) -> Service {
        let types = [
            ServiceType::ClusterIp,
            ServiceType::NodePort,
            ServiceType::LoadBalancer,
        ];
        let service_type = types[rng.next(3) as usize];
        let mut ports = vec![ServicePort {
            name: "a".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30000 + i as u16 * 2),
        }];
        if rng.next(3) == 0 {
            ports.push(ServicePort {
                name: "b".into(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: Some(30001 + i as u16 * 2),
            });
        }
        let local = |r: &mut Rng| {
            if r.next(3) == 0 {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            }
        };
        Service {
            name: ObjectName::new("ns", format!("s{i}")),
            service_type,
            cluster_ips: vec![format!("172.30.0.{}", i + 1).parse().unwrap()],
            ports,
            external_ips: if rng.next(4) == 0 {
                vec![format!("203.0.113.{}", i + 1).parse().unwrap()]
            } else {
                vec![]
            },
            load_balancer_ips: vec![format!("1.2.3.{}", i + 1).parse().unwrap()],
            load_balancer_source_ranges: if rng.next(4) == 0 {
                vec!["203.0.113.0/25".parse().unwrap()]
            } else {
                vec![]
            },
            external_traffic_policy: local(rng),
            internal_traffic_policy: local(rng),
            session_affinity_timeout: match rng.next(4) {
                0 => Some(10800),
                1 => Some(60),
                _ => None,
            },
            service_proxy_name: None,
            traffic_distribution: None,
            health_check_node_port: None,
        }
    }

    fn slice(i: u64, rng: &mut Rng) -> EndpointSlice {
        let n = rng.next(5);
        let endpoints = (0..n)
            .map(|_| {
                let ready = rng.next(4) != 0;
                Endpoint {
                    address: format!("10.0.{}.{}", rng.next(3), rng.next(20) + 1)
                        .parse::<IpAddr>()
                        .unwrap(),
                    ready,
                    serving: ready || rng.next(2) == 0,
                    terminating: !ready && rng.next(2) == 0,
                    node_name: Some(if rng.next(2) == 0 { "node-a" } else { "node-b" }.into()),
                    zone: None,
                    hint_zones: vec![],
                    hint_nodes: vec![],
                }
            })
            .collect();
        EndpointSlice {
            name: ObjectName::new("ns", format!("s{i}-x")),
            service_name: Some(format!("s{i}")),
            address_type: AddressType::Ipv4,
            headless_label: false,
            ports: vec![
                SlicePort {
                    name: "a".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                },
                SlicePort {
                    name: "b".into(),
                    protocol: Protocol::Udp,
                    port: 5353,
                },
            ],
            endpoints,
        }
    }

    fn check_sequence(seed: u64, steps: usize) {
        let mut rng = Rng(seed | 1);
        let cfg = config();
        let mut snap = Snapshot::default();
        for i in 0..6 {
            let s = service(i, &mut rng);
            snap.services.insert(s.name.clone(), s);
            let sl = slice(i, &mut rng);
            snap.slices.insert(sl.name.clone(), sl);
        }
        let mut inc = IncrementalCompiler::new(cfg.clone()).unwrap();
        let mut fake = Fake::new();
        let tx = inc.update(&snap, None).unwrap();
        fake.apply(&tx).unwrap();
        assert_eq!(inc.ruleset(), &compile(&snap, &cfg).unwrap().ruleset);
        for step in 0..steps {
            let i = rng.next(8);
            let name = ObjectName::new("ns", format!("s{i}"));
            match rng.next(4) {
                0 => {
                    snap.services.remove(&name);
                }
                1 => {
                    let s = service(i, &mut rng);
                    snap.services.insert(name.clone(), s);
                }
                _ => {
                    let sl = slice(i, &mut rng);
                    snap.slices.insert(sl.name.clone(), sl);
                }
            }
            let hint = [name];
            let previous = inc.ruleset().clone();
            let tx = inc
                .update(&snap, if step % 3 == 0 { None } else { Some(&hint) })
                .unwrap();
            let want = compile_with_previous(&snap, &cfg, &previous)
                .unwrap()
                .ruleset;
            // The same from the kernel's state, as the CLI and a resync plan.
            let mut again = IncrementalCompiler::new(cfg.clone()).unwrap();
            again.resync(&snap, &previous).unwrap();
            assert_eq!(again.ruleset(), &want, "seed {seed} step {step}: resync");
            assert_eq!(inc.ruleset(), &want, "seed {seed} step {step}");
            fake.apply(&tx)
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}\n{tx}"));
            assert_eq!(
                fake.dump(),
                &want,
                "seed {seed} step {step}: transaction\n{tx}"
            );
            assert!(inc.update(&snap, None).unwrap().is_empty());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6e66_7470),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn incremental_updates_equal_full_compile(seed in any::<u64>()) {
            check_sequence(seed, 25);
        }
    }

    #[test]
    fn one_endpoint_change_touches_only_elements() {
        let cfg = config();
        let mut rng = Rng(7);
        let mut snap = Snapshot::default();
        for i in 0..200 {
            let mut s = service(i, &mut rng);
            s.service_type = ServiceType::ClusterIp;
            s.session_affinity_timeout = None;
            s.internal_traffic_policy = TrafficPolicy::Cluster;
            s.ports.truncate(1);
            s.cluster_ips = vec![format!("172.30.{}.{}", i / 200, i % 200 + 1)
                .parse()
                .unwrap()];
            snap.services.insert(s.name.clone(), s);
            let mut sl = slice(i, &mut rng);
            sl.endpoints.truncate(2);
            for (j, e) in sl.endpoints.iter_mut().enumerate() {
                e.ready = true;
                e.address = format!("10.{}.{}.{}", i / 200, i % 200, j + 1)
                    .parse()
                    .unwrap();
            }
            snap.slices.insert(sl.name.clone(), sl);
        }
        let mut inc = IncrementalCompiler::new(cfg).unwrap();
        inc.update(&snap, None).unwrap();
        let sl = snap.slices.values_mut().next().unwrap();
        let mut e = sl.endpoints[0].clone();
        e.address = "10.99.99.99".parse().unwrap();
        sl.endpoints.push(e);
        let name = ObjectName::new("ns", sl.service_name.clone().unwrap());
        let tx = inc.update(&snap, Some(&[name])).unwrap();
        // Elements, and the load-balancing chain for the new count when no service had it yet.
        assert!(
            tx.ops.iter().all(|op| match op {
                Op::AddElements { .. } | Op::DeleteElements { .. } => true,
                Op::AddChain { chain, .. } => chain.name.starts_with("lb-"),
                Op::AddRule { chain, .. } => chain.starts_with("lb-"),
                _ => false,
            }),
            "{tx}"
        );
        assert!(tx.len() <= 6, "{tx}");
    }

    /// `n` services of `kind` with 10 ready endpoints each (`10.S.S.10` .. `10.S.S.100`, every
    /// fifth on this node).
    fn ten_endpoint_services(n: u64, kind: ServiceType) -> Snapshot {
        let mut rng = Rng(7);
        let mut snap = Snapshot::default();
        for i in 0..n {
            let s = Service {
                name: ObjectName::new("ns", format!("s{i}")),
                service_type: kind,
                cluster_ips: vec![IpAddr::from([172, 30, (i >> 8) as u8, i as u8])],
                ports: vec![ServicePort {
                    name: "a".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30000 + i as u16),
                }],
                external_ips: vec![],
                load_balancer_ips: vec![IpAddr::from([1, 2, (i >> 8) as u8, i as u8])],
                load_balancer_source_ranges: vec![],
                external_traffic_policy: TrafficPolicy::Cluster,
                internal_traffic_policy: TrafficPolicy::Cluster,
                session_affinity_timeout: None,
                service_proxy_name: None,
                traffic_distribution: None,
                health_check_node_port: None,
            };
            snap.services.insert(s.name.clone(), s);
            let mut sl = slice(i, &mut rng);
            sl.endpoints = (1..=10u8)
                .map(|j| Endpoint {
                    address: IpAddr::from([10, (i >> 8) as u8, i as u8, j * 10]),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some(if j % 5 == 0 { "node-a" } else { "node-b" }.into()),
                    zone: None,
                    hint_zones: vec![],
                    hint_nodes: vec![],
                })
                .collect();
            snap.slices.insert(sl.name.clone(), sl);
        }
        snap
    }

    /// Operations and compile + plan time for one endpoint added or removed at the start, the
    /// middle and the end of a 10-endpoint service's address order. Every transaction is applied
    /// to a fake and checked against `compile_with_previous`. Run with `--nocapture` for the
    /// figures.
    #[test]
    fn one_endpoint_change_is_constant_wherever_it_sorts() {
        endpoint_changes(&[
            (1_000, ServiceType::ClusterIp, 8),
            (1_000, ServiceType::NodePort, 15),
            (1_000, ServiceType::LoadBalancer, 15),
        ]);
    }

    /// The same at 10k services (slow: every step is checked against a full compile).
    #[test]
    #[ignore]
    fn one_endpoint_change_is_constant_at_10k_services() {
        endpoint_changes(&[(10_000, ServiceType::ClusterIp, 8)]);
    }

    fn endpoint_changes(cases: &[(u64, ServiceType, usize)]) {
        let cfg = config();
        for &(n, kind, limit) in cases {
            let mut snap = ten_endpoint_services(n, kind);
            let mut inc = IncrementalCompiler::new(cfg.clone()).unwrap();
            let mut fake = Fake::new();
            fake.apply(&inc.update(&snap, None).unwrap()).unwrap();
            // A service in the middle of the cluster.
            let slice_name = ObjectName::new("ns", format!("s{}-x", n / 2));
            let svc = ObjectName::new("ns", format!("s{}", n / 2));
            let base = snap.slices[&slice_name].endpoints.clone();
            let mut line = format!("{n} x {kind:?}:");
            let mut step = |snap: &mut Snapshot, what: &str, eps: Vec<Endpoint>| {
                snap.slices.get_mut(&slice_name).unwrap().endpoints = eps;
                let previous = inc.ruleset().clone();
                let start = std::time::Instant::now();
                let tx = inc.update(snap, Some(std::slice::from_ref(&svc))).unwrap();
                let took = start.elapsed();
                fake.apply(&tx).unwrap();
                let want = compile_with_previous(snap, &cfg, &previous)
                    .unwrap()
                    .ruleset;
                assert_eq!(inc.ruleset(), &want, "{what}");
                assert_eq!(fake.dump(), &want, "{what}");
                assert!(
                    tx.len() <= limit,
                    "{n} {kind:?} {what}: {} ops\n{tx}",
                    tx.len()
                );
                line.push_str(&format!(
                    " {what} {} ops {:.2} ms;",
                    tx.len(),
                    took.as_secs_f64() * 1e3
                ));
            };
            let i = n / 2;
            for (pos, last) in [("start", 5u8), ("middle", 55), ("end", 105)] {
                let mut eps = base.clone();
                let mut e = eps[0].clone();
                e.address = IpAddr::from([10, (i >> 8) as u8, i as u8, last]);
                e.node_name = Some("node-a".into());
                eps.push(e);
                step(&mut snap, &format!("+1 at {pos}"), eps);
                step(&mut snap, "(back)", base.clone());
            }
            for (pos, at) in [("start", 0), ("middle", 5), ("end", 9)] {
                let mut eps = base.clone();
                eps.remove(at);
                step(&mut snap, &format!("-1 at {pos}"), eps);
                step(&mut snap, "(back)", base.clone());
            }
            println!("{line}");
        }
    }

    /// Endpoint address → slot of one key, read from the ruleset.
    fn slots_of(r: &Ruleset, key: &[Value]) -> BTreeMap<IpAddr, u32> {
        let t = &r.tables[&IpFamily::V4];
        let mut out = BTreeMap::new();
        for i in 0.. {
            let Some(set) = t.sets.get(&format!("ep-{i}-addr")) else {
                break;
            };
            if let Some(Some(ElemData::Addr(a))) = set.elements.get(key) {
                out.insert(*a, i);
            }
        }
        out
    }

    /// ClientIP affinity is remembered per slot (`aff-I`): an endpoint that keeps its slot keeps
    /// its clients. Stable slots keep every endpoint in place when one is added, and move only
    /// the range's last endpoint into the slot of a removed one (its clients choose again);
    /// without them every endpoint after the removed one in address order would move, its
    /// clients sticking to the wrong endpoint.
    #[test]
    fn affinity_clients_stay_with_their_endpoint_except_the_one_moved() {
        let cfg = config();
        let mut snap = ten_endpoint_services(3, ServiceType::ClusterIp);
        let svc = ObjectName::new("ns", "s1");
        snap.services
            .get_mut(&svc)
            .unwrap()
            .session_affinity_timeout = Some(10800);
        let slice = ObjectName::new("ns", "s1-x");
        let key = v(IpAddr::from([172, 30, 0, 1]), Protocol::Tcp, 80);
        let mut inc = IncrementalCompiler::new(cfg).unwrap();
        inc.update(&snap, None).unwrap();
        let before = slots_of(inc.ruleset(), &key);
        assert_eq!(before.len(), 10);

        // One added in the middle of the address order: nobody moves.
        let mut e = snap.slices[&slice].endpoints[0].clone();
        e.address = IpAddr::from([10, 0, 1, 55]);
        snap.slices.get_mut(&slice).unwrap().endpoints.push(e);
        inc.update(&snap, Some(std::slice::from_ref(&svc))).unwrap();
        let added = slots_of(inc.ruleset(), &key);
        for (addr, slot) in &before {
            assert_eq!(added.get(addr), Some(slot), "{addr} moved");
        }
        assert_eq!(added[&IpAddr::from([10, 0, 1, 55])], 10);

        // One removed from the start: only the endpoint of the last slot moves, into its slot.
        snap.slices.get_mut(&slice).unwrap().endpoints.remove(0);
        inc.update(&snap, Some(std::slice::from_ref(&svc))).unwrap();
        let removed = slots_of(inc.ruleset(), &key);
        let moved: Vec<_> = removed
            .iter()
            .filter(|(a, s)| added.get(*a) != Some(*s))
            .collect();
        assert_eq!(moved, [(&IpAddr::from([10, 0, 1, 55]), &0)], "{removed:?}");
    }
}
