//! Snapshot + config → ruleset.
//!
//! # Layout
//!
//! One table per IP family. Every service entry point is a *key*: `daddr . l4proto . dport` for
//! ClusterIPs, external IPs and LoadBalancer IPs ("VIP keys"), `l4proto . dport` for NodePorts
//! ("NodePort keys"). All per-service state lives in elements of named maps indexed by those keys:
//!
//! * `service-ips` / `service-nodeports` send a key to one of a few fixed *policy* chains
//!   (`internal-cluster`, `internal-local`, `external`, `external-local` and their `np-` twins),
//!   which mark for masquerade as kube-proxy does and then look the key up again in
//!   `cluster-lb` / `local-lb` to reach a *load-balancing* chain.
//! * A load-balancing chain `lb-C[-oK][-aff]` picks one of `C` endpoint *slots* starting at `K`
//!   with `numgen random mod C offset K`, after honouring ClientIP affinity. There is one such chain
//!   per distinct (count, offset, affinity) in use in the cluster, not per service and not per
//!   possible count, so the chains' total size is at most the sum of the endpoint counts.
//! * Slot chain `ep-I` DNATs to `KEY map @ep-I-addr : KEY map @ep-port`: when all endpoints of a
//!   key share one target port (the usual case), it is stored once, in `ep-port`. Keys whose
//!   endpoints differ in port have no `ep-port` element and store a port per slot instead, read
//!   by a second rule `KEY map @ep-I-addr : KEY map @ep-I-port` (a map miss means a rule does not
//!   match). Slot `I` of every service lives in the same maps, so the number of slot chains is
//!   the largest endpoint count of any one service (rounded up to a power of two, as headroom),
//!   independent of the number of services.
//!
//! For a service that uses both endpoint lists (externalTrafficPolicy or internalTrafficPolicy
//! Local), the slots hold local-only endpoints first, then local endpoints that are also cluster
//! endpoints, then cluster-only endpoints, so both lists are contiguous ranges.
//!
//! Filtering happens in filter chains as in kube-proxy: `firewall-check` (loadBalancerSourceRanges)
//! before DNAT, `service-endpoints-check` / `nodeport-endpoints-check` (reject or drop for services
//! without usable endpoints) and `cluster-ips-check` (reject for undefined ports of a ClusterIP)
//! after DNAT. Masquerading uses a mark bit, and hairpin traffic (a pod reaching itself through a
//! service) is recognised in postrouting by the `hairpin` set of `endpoint . endpoint` pairs. It
//! holds this node's endpoints only (a pod's service traffic is DNATed on its own node), plus the
//! cluster endpoints of NodePorts with externalTrafficPolicy Local: a pod of another node reaching
//! this node's NodePort is short-circuited to them without masquerade.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{DetectLocal, ProxyConfig};
use crate::ruleset::{
    BaseChain, Chain, ChainType, DataType, ElemData, Expr, Hook, KeyType, MapRef, MarkOp, MatchOp,
    MatchRight, Rule, Ruleset, Set, SetFlags, Stmt, Table, Value, Verdict,
};
use crate::snapshot::{
    EndpointSlice, IpFamily, ObjectName, Protocol, Service, ServiceType, Snapshot, TrafficPolicy,
    Warning,
};

/// The compiled ruleset and what was skipped on the way.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The ruleset.
    pub ruleset: Ruleset,
    /// Objects or parts skipped.
    pub warnings: Vec<Warning>,
}

/// Why a snapshot could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// No node name: without it no endpoint can be recognised as local.
    #[error("no node name: set hostnameOverride in the config or pass --node-name")]
    MissingNodeName,
    /// The masquerade bit is outside 0..=31.
    #[error("nftables.masqueradeBit {0} is out of range 0..=31")]
    MasqueradeBit(u8),
    /// The table name is not a valid nft identifier.
    #[error("table name {0:?} is not a valid nft identifier ([A-Za-z][A-Za-z0-9_-]*, at most 64 characters)")]
    TableName(String),
}

/// Names of the fixed chains and sets, shared with the tracer and tests.
pub mod names {
    /// Verdict map: VIP key → policy chain.
    pub const SERVICE_IPS: &str = "service-ips";
    /// Verdict map: NodePort key → policy chain.
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// Verdict map: VIP key → load-balancing chain over the cluster endpoints.
    pub const CLUSTER_LB: &str = "cluster-lb";
    /// Verdict map: VIP key → load-balancing chain over the local endpoints.
    pub const LOCAL_LB: &str = "local-lb";
    /// Verdict map: NodePort key → load-balancing chain over the cluster endpoints.
    pub const NP_CLUSTER_LB: &str = "np-cluster-lb";
    /// Verdict map: NodePort key → load-balancing chain over the local endpoints.
    pub const NP_LOCAL_LB: &str = "np-local-lb";
    /// Verdict map: VIP key without usable endpoints → reject or drop.
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// Verdict map: NodePort key without usable endpoints → reject or drop.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// Set of VIP keys guarded by loadBalancerSourceRanges.
    pub const FIREWALL_IPS: &str = "firewall-ips";
    /// Set of `VIP key . source range` allowed through the firewall.
    pub const FIREWALL_ALLOW: &str = "firewall-allow";
    /// Set of all ClusterIPs.
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// Set of node addresses that answer NodePorts.
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    /// Set of pod CIDRs that count as "inside the cluster".
    pub const POD_CIDRS: &str = "pod-cidrs";
    /// Set of ServiceCIDRs: traffic to an unallocated address inside one is dropped.
    pub const SERVICE_CIDRS: &str = "service-cidrs";
    /// Set of `endpoint . endpoint` pairs: hairpin traffic to masquerade.
    pub const HAIRPIN: &str = "hairpin";
    /// Map: VIP key → the target port shared by all its endpoints.
    pub const EP_PORT: &str = "ep-port";
    /// Map: NodePort key → the target port shared by all its endpoints.
    pub const NP_EP_PORT: &str = "np-ep-port";
    /// Chain that sets the masquerade mark.
    pub const MARK_FOR_MASQ: &str = "mark-for-masq";
    /// Chain that rejects.
    pub const REJECT_CHAIN: &str = "reject-chain";
}
use names::*;

mod compact;
pub mod incremental;
pub use incremental::{removed_elements, IncrementalCompiler, RemovedElement};

/// Where a key lives: VIP keys (`daddr . l4proto . dport`) or NodePort keys (`l4proto . dport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum KeySpace {
    Vip,
    NodePort,
}

impl KeySpace {
    fn prefix(self) -> &'static str {
        match self {
            Self::Vip => "",
            Self::NodePort => "np-",
        }
    }
    fn key_expr(self, f: IpFamily) -> Expr {
        match self {
            Self::Vip => Expr::Concat(vec![Expr::Daddr(f), Expr::L4Proto, Expr::Dport]),
            Self::NodePort => Expr::Concat(vec![Expr::L4Proto, Expr::Dport]),
        }
    }
    fn key_types(self, f: IpFamily) -> Vec<KeyType> {
        match self {
            Self::Vip => vec![KeyType::addr(f), KeyType::InetProto, KeyType::InetService],
            Self::NodePort => vec![KeyType::InetProto, KeyType::InetService],
        }
    }
    fn affinity_expr(self, f: IpFamily) -> Expr {
        match self {
            Self::Vip => Expr::Concat(vec![
                Expr::Saddr(f),
                Expr::Daddr(f),
                Expr::L4Proto,
                Expr::Dport,
            ]),
            Self::NodePort => Expr::Concat(vec![Expr::Saddr(f), Expr::L4Proto, Expr::Dport]),
        }
    }
    fn affinity_types(self, f: IpFamily) -> Vec<KeyType> {
        let mut t = vec![KeyType::addr(f)];
        t.extend(self.key_types(f));
        t
    }
    fn lb_map(self, local: bool) -> &'static str {
        match (self, local) {
            (Self::Vip, false) => CLUSTER_LB,
            (Self::Vip, true) => LOCAL_LB,
            (Self::NodePort, false) => NP_CLUSTER_LB,
            (Self::NodePort, true) => NP_LOCAL_LB,
        }
    }
}

/// Name of slot chain `i`.
pub fn slot_chain(np: bool, i: u32) -> String {
    format!("{}ep-{i}", if np { "np-" } else { "" })
}

/// Names of the address and port maps of slot `i`.
pub fn slot_maps(np: bool, i: u32) -> (String, String) {
    let p = if np { "np-" } else { "" };
    (format!("{p}ep-{i}-addr"), format!("{p}ep-{i}-port"))
}

/// Name of the map holding the one target port of keys whose endpoints all share it.
pub fn shared_port_map(np: bool) -> &'static str {
    if np {
        NP_EP_PORT
    } else {
        EP_PORT
    }
}

/// A load-balancing chain: `count` slots from `offset`, with or without ClientIP affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct LbSpec {
    space: KeySpace,
    count: u32,
    offset: u32,
    affinity: bool,
}

impl LbSpec {
    fn chain_name(&self) -> String {
        let mut s = format!("{}lb-{}", self.space.prefix(), self.count);
        if self.offset > 0 {
            s.push_str(&format!("-o{}", self.offset));
        }
        if self.affinity {
            s.push_str("-aff");
        }
        s
    }
}

/// A usable endpoint of one service port: address, target port and the facts that select it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Ep {
    addr: IpAddr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    hint_zones: Vec<String>,
    hint_nodes: Vec<String>,
}

/// kube-proxy's `CategorizeEndpoints`: the endpoints for Cluster and Local traffic policy, and
/// whether the service has any usable endpoint anywhere.
#[derive(Debug, Default)]
struct Categorized {
    cluster: Vec<(IpAddr, u16)>,
    local: Vec<(IpAddr, u16)>,
    has_any: bool,
}

fn topology_mode(eps: &[Ep], node: &str, zone: Option<&str>) -> Option<bool> {
    // Some(true) = same-node hints, Some(false) = same-zone hints, None = no topology.
    let mut all_node_hints = true;
    let mut has_for_node = false;
    let mut all_zone_hints = true;
    let mut has_for_zone = false;
    for ep in eps.iter().filter(|e| e.ready) {
        if ep.hint_nodes.is_empty() {
            all_node_hints = false;
        } else if ep.hint_nodes.iter().any(|n| n == node) {
            has_for_node = true;
        }
        if ep.hint_zones.is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| ep.hint_zones.iter().any(|h| h == z)) {
            has_for_zone = true;
        }
    }
    if all_node_hints && has_for_node {
        return Some(true);
    }
    if all_zone_hints && has_for_zone {
        return Some(false);
    }
    None
}

fn categorize(
    eps: &[Ep],
    uses_cluster: bool,
    uses_local: bool,
    node: &str,
    zone: Option<&str>,
) -> Categorized {
    let mut out = Categorized::default();
    let pick = |e: &Ep| (e.addr, e.port);
    if uses_cluster {
        let mode = topology_mode(eps, node, zone);
        let available = |e: &Ep| match mode {
            None => true,
            Some(true) => e.hint_nodes.iter().any(|n| n == node),
            Some(false) => zone.is_some_and(|z| e.hint_zones.iter().any(|h| h == z)),
        };
        out.cluster = eps
            .iter()
            .filter(|e| e.ready && available(e))
            .map(pick)
            .collect();
        if out.cluster.is_empty() {
            out.cluster = eps
                .iter()
                .filter(|e| e.serving && e.terminating && available(e))
                .map(pick)
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses_local {
        return out;
    }
    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for e in eps {
        if e.ready {
            out.has_any = true;
            local_ready |= e.local;
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_serving_terminating |= e.local;
        }
    }
    if local_ready {
        out.local = eps
            .iter()
            .filter(|e| e.local && e.ready)
            .map(pick)
            .collect();
    } else if local_serving_terminating {
        out.local = eps
            .iter()
            .filter(|e| e.local && e.serving && e.terminating)
            .map(pick)
            .collect();
    }
    out
}

/// Endpoint slots of one service port and where its two lists lie in them.
struct Slots {
    slots: Vec<(IpAddr, u16)>,
    /// (offset, count) of the cluster endpoints.
    cluster: (u32, u32),
    /// (offset, count) of the local endpoints.
    local: (u32, u32),
}

/// Arranges the two endpoint lists into slots: local-only, both, cluster-only, so that each list
/// is a contiguous range.
///
/// Slots are stable: an endpoint keeps its slot in `previous` while that slot is inside its
/// group's range. The others (new endpoints, or those pushed out of their range because a group
/// shrank or moved) fill the free slots of their range, lowest first, in address order. So an
/// endpoint removed from a range is replaced by the one in the range's last slot (swap-remove),
/// an added one takes the slot after the range, and one endpoint added or removed moves at most
/// one other per group boundary, wherever it sorts. Without `previous`, slots follow address
/// order.
fn arrange_slots(
    cluster: &[(IpAddr, u16)],
    local: &[(IpAddr, u16)],
    previous: &BTreeMap<(IpAddr, u16), u32>,
) -> Slots {
    let cset: BTreeSet<_> = cluster.iter().copied().collect();
    let lset: BTreeSet<_> = local.iter().copied().collect();
    let local_only: Vec<_> = lset.difference(&cset).copied().collect();
    let both: Vec<_> = lset.intersection(&cset).copied().collect();
    let cluster_only: Vec<_> = cset.difference(&lset).copied().collect();
    let cluster_offset = local_only.len() as u32;
    let total = local_only.len() + both.len() + cluster_only.len();
    let mut slots: Vec<Option<(IpAddr, u16)>> = vec![None; total];
    let mut start = 0;
    for group in [local_only, both, cluster_only] {
        let range = start..start + group.len();
        let mut rest = Vec::new();
        for ep in group {
            match previous.get(&ep).map(|i| *i as usize) {
                Some(i) if range.contains(&i) && slots[i].is_none() => slots[i] = Some(ep),
                _ => rest.push(ep),
            }
        }
        let free: Vec<usize> = range.clone().filter(|i| slots[*i].is_none()).collect();
        for (i, ep) in free.into_iter().zip(rest) {
            slots[i] = Some(ep);
        }
        start = range.end;
    }
    Slots {
        // Every slot of every range is filled: each range has as many slots as its group.
        slots: slots.into_iter().flatten().collect(),
        cluster: (cluster_offset, cset.len() as u32),
        local: (0, lset.len() as u32),
    }
}

/// Everything one family's table is built from, filled service by service.
struct FamilyBuilder<'a> {
    family: IpFamily,
    cfg: &'a ProxyConfig,
    /// The previous table of this family, whose slot assignment is kept where possible.
    previous: Option<&'a Table>,
    sets: BTreeMap<String, Set>,
    lb_specs: BTreeSet<LbSpec>,
    /// Endpoint slots in use per key space (one more than the highest slot index).
    slots: BTreeMap<KeySpace, u32>,
    /// Slots in use whose port is stored per slot (keys whose endpoints differ in port).
    port_slots: BTreeMap<KeySpace, u32>,
    affinity_timeouts: BTreeMap<KeySpace, BTreeSet<u32>>,
    pod_cidrs: Vec<IpNet>,
    /// ServiceCIDRs of this family (no set and no rule without any, as kube-proxy).
    service_cidrs: Vec<IpNet>,
    nodeports_all_local: bool,
    /// This node's IPs (all families), for loadBalancerSourceRanges.
    node_ips: Vec<IpAddr>,
    warnings: Vec<Warning>,
}

fn v(a: IpAddr, p: Protocol, port: u16) -> Vec<Value> {
    vec![Value::Addr(a), Value::Proto(p), Value::Port(port)]
}

fn np(p: Protocol, port: u16) -> Vec<Value> {
    vec![Value::Proto(p), Value::Port(port)]
}

fn goto(c: impl Into<String>) -> ElemData {
    ElemData::Verdict(Verdict::Goto(c.into()))
}

impl<'a> FamilyBuilder<'a> {
    fn new(family: IpFamily, cfg: &'a ProxyConfig) -> Self {
        let f = family;
        let mut sets = BTreeMap::new();
        let vip = KeySpace::Vip.key_types(f);
        let npk = KeySpace::NodePort.key_types(f);
        let addr = vec![KeyType::addr(f)];
        let mut add = |name: &str,
                       key: Vec<KeyType>,
                       data: Option<DataType>,
                       interval: bool,
                       comment: &str| {
            let mut s = Set::new(name, key, data);
            s.flags.interval = interval;
            s.comment = Some(comment.to_owned());
            sets.insert(name.to_owned(), s);
        };
        add(
            SERVICE_IPS,
            vip.clone(),
            Some(DataType::Verdict),
            false,
            "ClusterIP, external IP and LoadBalancer IP ports",
        );
        add(
            SERVICE_NODEPORTS,
            npk.clone(),
            Some(DataType::Verdict),
            false,
            "NodePorts",
        );
        add(
            CLUSTER_LB,
            vip.clone(),
            Some(DataType::Verdict),
            false,
            "endpoints for Cluster traffic policy",
        );
        add(
            LOCAL_LB,
            vip.clone(),
            Some(DataType::Verdict),
            false,
            "endpoints for Local traffic policy",
        );
        add(
            NP_CLUSTER_LB,
            npk.clone(),
            Some(DataType::Verdict),
            false,
            "NodePort endpoints for Cluster traffic policy",
        );
        add(
            NP_LOCAL_LB,
            npk.clone(),
            Some(DataType::Verdict),
            false,
            "NodePort endpoints for Local traffic policy",
        );
        add(
            NO_ENDPOINT_SERVICES,
            vip.clone(),
            Some(DataType::Verdict),
            false,
            "service ports without usable endpoints",
        );
        add(
            NO_ENDPOINT_NODEPORTS,
            npk,
            Some(DataType::Verdict),
            false,
            "NodePorts without usable endpoints",
        );
        add(
            FIREWALL_IPS,
            vip.clone(),
            None,
            false,
            "LoadBalancer IP ports with loadBalancerSourceRanges",
        );
        let mut fw = vip;
        fw.push(KeyType::addr(f));
        add(
            FIREWALL_ALLOW,
            fw,
            None,
            true,
            "allowed sources of LoadBalancer IP ports",
        );
        add(CLUSTER_IPS, addr.clone(), None, false, "all ClusterIPs");
        add(
            NODEPORT_IPS,
            addr.clone(),
            None,
            false,
            "node addresses that accept NodePorts",
        );
        add(
            POD_CIDRS,
            addr.clone(),
            None,
            true,
            "sources inside the cluster",
        );
        add(
            HAIRPIN,
            vec![KeyType::addr(f), KeyType::addr(f)],
            None,
            false,
            "endpoint . endpoint: hairpin traffic to masquerade",
        );
        add(
            EP_PORT,
            KeySpace::Vip.key_types(f),
            Some(DataType::InetService),
            false,
            "target port shared by all endpoints of a key",
        );
        add(
            NP_EP_PORT,
            KeySpace::NodePort.key_types(f),
            Some(DataType::InetService),
            false,
            "target port shared by all endpoints of a NodePort",
        );
        Self {
            family,
            cfg,
            previous: None,
            sets,
            lb_specs: BTreeSet::new(),
            slots: BTreeMap::new(),
            port_slots: BTreeMap::new(),
            affinity_timeouts: BTreeMap::new(),
            pod_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            nodeports_all_local: false,
            node_ips: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The set of that name, created with a placeholder definition if new (`finish` defines
    /// the sets whose number follows the services).
    fn set_mut(&mut self, name: &str) -> &mut Set {
        if !self.sets.contains_key(name) {
            self.sets
                .insert(name.to_owned(), Set::new(name, Vec::new(), None));
        }
        // Invariant: inserted just above if it was missing.
        self.sets.get_mut(name).expect("set exists")
    }

    /// Inserts an element owned by a service; a key already owned by another service is a conflict
    /// (the first service, in name order, keeps it).
    /// Inserts an element owned by a service. A service puts each (set, key) once (its IP lists
    /// are deduplicated), so a key already there belongs to another service, earlier in name
    /// order, which keeps it.
    fn put(&mut self, owner: &ObjectName, set: &str, key: Vec<Value>, data: Option<ElemData>) {
        let target = self.set_mut(set);
        if target.elements.contains_key(&key) {
            let message = format!(
                "{set} {} is already used by another service or port; ignored here",
                describe_key(&key)
            );
            self.warnings.push(Warning {
                object: format!("Service {owner}"),
                message,
            });
            return;
        }
        target.elements.insert(key, data);
    }

    /// Gives a set its definition, keeping any elements already recorded in it.
    fn define(&mut self, name: &str, key: Vec<KeyType>, data: Option<DataType>, comment: String) {
        let set = self.set_mut(name);
        set.key = key;
        set.data = data;
        set.comment = Some(comment);
    }

    fn put_shared(&mut self, set: &str, key: Vec<Value>) {
        self.set_mut(set).elements.insert(key, None);
    }

    /// The slot of every endpoint the previous table holds for these keys of one service port
    /// (the first key holding a slot wins; an endpoint in two slots keeps the lower one).
    fn previous_slots(&self, keys: &[(KeySpace, Vec<Value>)]) -> BTreeMap<(IpAddr, u16), u32> {
        let mut out = BTreeMap::new();
        let Some(t) = self.previous else {
            return out;
        };
        let mut by_slot: BTreeMap<u32, (IpAddr, u16)> = BTreeMap::new();
        let lookup = |set: &str, key: &Vec<Value>| {
            t.sets
                .get(set)
                .and_then(|s| s.elements.get(key))
                .cloned()
                .flatten()
        };
        for (space, key) in keys {
            let npsp = *space == KeySpace::NodePort;
            let shared = match lookup(shared_port_map(npsp), key) {
                Some(ElemData::Port(p)) => Some(p),
                _ => None,
            };
            for i in 0.. {
                let (am, pm) = slot_maps(npsp, i);
                let Some(addrs) = t.sets.get(&am) else {
                    break;
                };
                let Some(Some(ElemData::Addr(addr))) = addrs.elements.get(key) else {
                    continue;
                };
                let port = shared.or(match lookup(&pm, key) {
                    Some(ElemData::Port(p)) => Some(p),
                    _ => None,
                });
                if let Some(port) = port {
                    by_slot.entry(i).or_insert((*addr, port));
                }
            }
        }
        for (i, ep) in by_slot {
            out.entry(ep).or_insert(i);
        }
        out
    }

    fn ensure_slot(&mut self, space: KeySpace, i: u32, own_port: bool) {
        let n = self.slots.entry(space).or_insert(0);
        *n = (*n).max(i + 1);
        if own_port {
            let n = self.port_slots.entry(space).or_insert(0);
            *n = (*n).max(i + 1);
        }
    }

    /// Writes the slots of one key and registers the load-balancing chains it needs. The target
    /// port is stored once per key when all its endpoints share it, else per slot. Hairpin pairs
    /// are recorded for the endpoints `hairpin` selects.
    #[allow(clippy::too_many_arguments)]
    fn put_endpoints(
        &mut self,
        owner: &ObjectName,
        space: KeySpace,
        key: &[Value],
        slots: &[(IpAddr, u16)],
        ranges: &[(bool, (u32, u32))],
        affinity: Option<u32>,
        hairpin: &dyn Fn(IpAddr) -> bool,
    ) {
        let np_space = space == KeySpace::NodePort;
        let mut used = BTreeSet::new();
        for (local, (offset, count)) in ranges {
            if *count == 0 {
                continue;
            }
            let spec = LbSpec {
                space,
                count: *count,
                offset: *offset,
                affinity: affinity.is_some(),
            };
            self.lb_specs.insert(spec);
            self.put(
                owner,
                space.lb_map(*local),
                key.to_vec(),
                Some(goto(spec.chain_name())),
            );
            used.extend(*offset..offset + count);
        }
        let mut ports = used.iter().map(|i| slots[*i as usize].1);
        let shared = ports.next().filter(|first| ports.all(|p| p == *first));
        if let Some(port) = shared {
            self.put(
                owner,
                shared_port_map(np_space),
                key.to_vec(),
                Some(ElemData::Port(port)),
            );
        }
        for i in used {
            let (addr, port) = slots[i as usize];
            self.ensure_slot(space, i, shared.is_none());
            let (am, pm) = slot_maps(np_space, i);
            self.put(owner, &am, key.to_vec(), Some(ElemData::Addr(addr)));
            if shared.is_none() {
                self.put(owner, &pm, key.to_vec(), Some(ElemData::Port(port)));
            }
            if hairpin(addr) {
                self.put_shared(HAIRPIN, vec![Value::Addr(addr), Value::Addr(addr)]);
            }
        }
        if let Some(t) = affinity {
            self.affinity_timeouts.entry(space).or_default().insert(t);
            self.put(owner, &affinity_set(space, t), key.to_vec(), None);
        }
    }

    fn add_service(
        &mut self,
        svc: &Service,
        slices: &[&EndpointSlice],
        node: &str,
        zone: Option<&str>,
    ) {
        let f = self.family;
        let Some(cluster_ip) = svc
            .cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == f)
        else {
            return;
        };
        self.put_shared(CLUSTER_IPS, vec![Value::Addr(cluster_ip)]);
        let external_ips: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == f)
            .collect();
        let lb_ips: Vec<IpAddr> = if svc.service_type == ServiceType::LoadBalancer {
            svc.load_balancer_ips
                .iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == f)
                .collect()
        } else {
            Vec::new()
        };
        // Each IP once: an IP listed twice, or as both an external and a LoadBalancer IP, is
        // one entry point (as a LoadBalancer IP).
        let mut lb_ips = lb_ips;
        lb_ips.sort();
        lb_ips.dedup();
        let mut external_ips = external_ips;
        external_ips.sort();
        external_ips.dedup();
        external_ips.retain(|ip| !lb_ips.contains(ip));
        for ip in external_ips.iter().filter(|ip| self.node_ips.contains(ip)) {
            // Programmed as kube-proxy does, but worth hearing about: CVE-2020-8554.
            self.warnings.push(Warning {
                object: format!("Service {}", svc.name),
                message: format!(
                    "spec.externalIPs: {ip} is this node's own address: connections to the \
                     service's ports on it, the node's own included, go to the service's endpoints"
                ),
            });
        }
        let node_port_type = matches!(
            svc.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        );
        for port in &svc.ports {
            let node_port = if node_port_type { port.node_port } else { None };
            let externally_accessible =
                node_port.is_some() || !external_ips.is_empty() || !lb_ips.is_empty();
            let etp_local =
                svc.external_traffic_policy == TrafficPolicy::Local && externally_accessible;
            let itp_local = svc.internal_traffic_policy == TrafficPolicy::Local;
            let uses_cluster = !itp_local || externally_accessible;
            let uses_local = itp_local || etp_local;
            let eps = endpoints_for(slices, port.name.as_str(), port.protocol, f, node);
            let cat = categorize(&eps, uses_cluster, uses_local, node, zone);
            // Hairpin pairs: a pod's traffic through a service is DNATed on its own node, so
            // only this node's endpoints can reach themselves here; except through a NodePort
            // of this node with externalTrafficPolicy Local, where a pod of another node is
            // short-circuited to the cluster endpoints without masquerade.
            let local_addrs: BTreeSet<IpAddr> =
                eps.iter().filter(|e| e.local).map(|e| e.addr).collect();
            let local_only = |a: IpAddr| local_addrs.contains(&a);
            let any = |_: IpAddr| true;
            let np_hairpin: &dyn Fn(IpAddr) -> bool = if etp_local { &any } else { &local_only };
            let Slots {
                slots,
                cluster: cluster_range,
                local: local_range,
            } = {
                let mut keys = vec![(KeySpace::Vip, v(cluster_ip, port.protocol, port.port))];
                keys.extend(
                    external_ips
                        .iter()
                        .chain(&lb_ips)
                        .map(|ip| (KeySpace::Vip, v(*ip, port.protocol, port.port))),
                );
                keys.extend(node_port.map(|p| (KeySpace::NodePort, np(port.protocol, p))));
                arrange_slots(&cat.cluster, &cat.local, &self.previous_slots(&keys))
            };
            let has_internal = if itp_local {
                !cat.local.is_empty()
            } else {
                cat.has_any
            };
            let has_external = if etp_local {
                !cat.local.is_empty()
            } else {
                cat.has_any
            };
            let filter_target = if cat.has_any {
                ElemData::Verdict(Verdict::Drop)
            } else {
                goto(REJECT_CHAIN)
            };
            let owner = &svc.name;
            let proto = port.protocol;
            let affinity = svc.session_affinity_timeout;

            // ClusterIP.
            let key = v(cluster_ip, proto, port.port);
            if has_internal {
                let policy = if itp_local {
                    "internal-local"
                } else {
                    "internal-cluster"
                };
                self.put(owner, SERVICE_IPS, key.clone(), Some(goto(policy)));
                let range = if itp_local {
                    (true, local_range)
                } else {
                    (false, cluster_range)
                };
                self.put_endpoints(
                    owner,
                    KeySpace::Vip,
                    &key,
                    &slots,
                    &[range],
                    affinity,
                    &local_only,
                );
            } else {
                self.put(
                    owner,
                    NO_ENDPOINT_SERVICES,
                    key,
                    Some(filter_target.clone()),
                );
            }

            // External IPs and LoadBalancer IPs.
            let ext_policy = if etp_local {
                "external-local"
            } else {
                "external"
            };
            let ext_ranges: Vec<(bool, (u32, u32))> = if etp_local {
                vec![(false, cluster_range), (true, local_range)]
            } else {
                vec![(false, cluster_range)]
            };
            // kube-proxy keeps only the source ranges of the service port's family.
            let fw = cat.has_any
                && !lb_ips.is_empty()
                && svc
                    .load_balancer_source_ranges
                    .iter()
                    .any(|r| IpFamily::of(&r.addr()) == f);
            for (ip, is_lb) in external_ips
                .iter()
                .map(|i| (*i, false))
                .chain(lb_ips.iter().map(|i| (*i, true)))
            {
                let key = v(ip, proto, port.port);
                if cat.has_any {
                    self.put(owner, SERVICE_IPS, key.clone(), Some(goto(ext_policy)));
                    self.put_endpoints(
                        owner,
                        KeySpace::Vip,
                        &key,
                        &slots,
                        &ext_ranges,
                        affinity,
                        &local_only,
                    );
                }
                if !has_external {
                    self.put(
                        owner,
                        NO_ENDPOINT_SERVICES,
                        key.clone(),
                        Some(filter_target.clone()),
                    );
                }
                if is_lb && fw {
                    self.put(owner, FIREWALL_IPS, key.clone(), None);
                    for src in self.firewall_sources(svc, &lb_ips) {
                        let mut k = key.clone();
                        k.push(Value::Prefix(src));
                        self.put(owner, FIREWALL_ALLOW, k, None);
                    }
                }
            }

            // NodePort.
            if let Some(np_port) = node_port {
                let key = np(proto, np_port);
                if cat.has_any {
                    self.put(
                        owner,
                        SERVICE_NODEPORTS,
                        key.clone(),
                        Some(goto(format!("np-{ext_policy}"))),
                    );
                    self.put_endpoints(
                        owner,
                        KeySpace::NodePort,
                        &key,
                        &slots,
                        &ext_ranges,
                        affinity,
                        np_hairpin,
                    );
                }
                if !has_external {
                    self.put(
                        owner,
                        NO_ENDPOINT_NODEPORTS,
                        key,
                        Some(filter_target.clone()),
                    );
                }
            }
        }
    }

    /// loadBalancerSourceRanges of this family; plus the LoadBalancer IPs themselves when a range
    /// contains a node IP (traffic from the node to a VIP it owns arrives with the VIP as source).
    fn firewall_sources(&self, svc: &Service, lb_ips: &[IpAddr]) -> Vec<IpNet> {
        let f = self.family;
        let ranges: Vec<IpNet> = svc
            .load_balancer_source_ranges
            .iter()
            .copied()
            .filter(|r| IpFamily::of(&r.addr()) == f)
            .map(|r| r.trunc())
            .collect();
        let allow_from_node = ranges
            .iter()
            .any(|r| self.node_ips.iter().any(|ip| r.contains(ip)));
        let mut out = ranges;
        if allow_from_node {
            out.extend(lb_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        without_covered(out)
    }

    fn finish(mut self) -> (Table, Vec<Warning>) {
        let f = self.family;
        // Headroom: slots up to the next power of two of the largest endpoint count (at least
        // MIN_SLOTS), so that an endpoint more or less is mostly element changes; at most twice
        // what is used. Load-balancing chains beyond the first MIN_SLOTS counts are only those in
        // use: one per distinct (count, offset, affinity), each as long as its count, so their
        // total size is at most the sum of the services' endpoint counts plus a constant.
        for n in self.slots.values_mut() {
            *n = provisioned_slots(*n);
        }
        // Plain chains for the small counts most services have, whether in use or not: a
        // constant 36 numgen branches per key space, so that a small service growing or
        // shrinking by one endpoint changes only elements.
        let spaces: Vec<KeySpace> = self.slots.keys().copied().collect();
        for space in spaces {
            for count in 1..=MIN_SLOTS {
                self.lb_specs.insert(LbSpec {
                    space,
                    count,
                    offset: 0,
                    affinity: false,
                });
            }
        }
        for n in self.port_slots.values_mut() {
            *n = provisioned_slots(*n);
        }
        // Sets whose number follows the services: endpoint slot maps and affinity sets. Their
        // elements may already be there (recorded under a placeholder definition).
        for (space, n) in self.slots.clone() {
            let port_slots = self.port_slots.get(&space).copied().unwrap_or(0);
            for j in 0..n {
                let (am, pm) = slot_maps(space == KeySpace::NodePort, j);
                self.define(
                    &am,
                    space.key_types(f),
                    Some(DataType::Addr),
                    format!("address of endpoint slot {j}"),
                );
                if j < port_slots {
                    self.define(
                        &pm,
                        space.key_types(f),
                        Some(DataType::InetService),
                        format!(
                            "port of endpoint slot {j}, for keys whose endpoints differ in port"
                        ),
                    );
                }
            }
        }
        for (space, timeouts) in self.affinity_timeouts.clone() {
            for t in timeouts {
                self.define(
                    &affinity_set(space, t),
                    space.key_types(f),
                    None,
                    format!("ports with ClientIP affinity, timeout {t}s"),
                );
            }
        }
        let cfg = self.cfg;
        let mark = cfg.masquerade_mark();
        let mut t = Table::new(f, cfg.table_name.clone());
        let vip_key = KeySpace::Vip.key_expr(f);
        let np_key = KeySpace::NodePort.key_expr(f);
        let has_pod_cidrs = !self.pod_cidrs.is_empty();
        for c in self.pod_cidrs.clone() {
            self.put_shared(POD_CIDRS, vec![Value::Prefix(c)]);
        }
        let has_service_cidrs = !self.service_cidrs.is_empty();
        if has_service_cidrs {
            let mut set = Set::new(SERVICE_CIDRS, vec![KeyType::addr(f)], None);
            set.flags.interval = true;
            set.comment = Some("ServiceCIDRs: unallocated addresses are dropped".to_owned());
            self.sets.insert(SERVICE_CIDRS.to_owned(), set);
            for c in self.service_cidrs.clone() {
                self.put_shared(SERVICE_CIDRS, vec![Value::Prefix(c)]);
            }
        }

        let mut chain = |name: &str, base: Option<BaseChain>, rules: Vec<Rule>| {
            t.chains.insert(
                name.to_owned(),
                Chain {
                    name: name.to_owned(),
                    base,
                    rules,
                },
            );
        };
        let ct_new = || Stmt::Match {
            left: Expr::CtState,
            op: MatchOp::Eq,
            right: MatchRight::Value(Value::CtStateNew),
        };
        let jump = |c: &str| Stmt::Verdict(Verdict::Jump(c.to_owned()));
        let gotov = |c: &str| Stmt::Verdict(Verdict::Goto(c.to_owned()));
        let in_set = |left: Expr, set: &str| Stmt::Match {
            left,
            op: MatchOp::Eq,
            right: MatchRight::Set(set.to_owned()),
        };
        let not_in_set = |left: Expr, set: &str| Stmt::Match {
            left,
            op: MatchOp::Ne,
            right: MatchRight::Set(set.to_owned()),
        };
        let vmap = |key: Expr, map: &str| Stmt::Vmap {
            key,
            map: MapRef::Named(map.to_owned()),
        };
        let fib_local = |saddr: bool| Stmt::Match {
            left: Expr::FibAddrType { saddr },
            op: MatchOp::Eq,
            right: MatchRight::Value(Value::FibLocal),
        };
        let base = |chain_type, hook, priority| {
            Some(BaseChain {
                chain_type,
                hook,
                priority,
            })
        };

        // Base chains.
        chain(
            "filter-prerouting",
            base(ChainType::Filter, Hook::Prerouting, -110),
            vec![Rule::new(vec![ct_new(), jump("firewall-check")])],
        );
        chain(
            "filter-input",
            base(ChainType::Filter, Hook::Input, -110),
            vec![
                Rule::new(vec![ct_new(), jump("nodeport-endpoints-check")]),
                Rule::new(vec![ct_new(), jump("service-endpoints-check")]),
            ],
        );
        chain(
            "filter-forward",
            base(ChainType::Filter, Hook::Forward, -110),
            vec![
                Rule::new(vec![ct_new(), jump("service-endpoints-check")]),
                Rule::new(vec![ct_new(), jump("cluster-ips-check")]),
            ],
        );
        chain(
            "filter-output",
            base(ChainType::Filter, Hook::Output, -110),
            vec![Rule::new(vec![ct_new(), jump("firewall-check")])],
        );
        chain(
            "filter-output-post-dnat",
            base(ChainType::Filter, Hook::Output, -90),
            // After DNAT, so that the node's own traffic to an externalTrafficPolicy Local IP
            // without local endpoints is short-circuited first (kubernetes#131765).
            vec![
                Rule::new(vec![ct_new(), jump("service-endpoints-check")]),
                Rule::new(vec![ct_new(), jump("cluster-ips-check")]),
            ],
        );
        chain(
            "nat-prerouting",
            base(ChainType::Nat, Hook::Prerouting, -100),
            vec![Rule::new(vec![jump("services")])],
        );
        chain(
            "nat-output",
            base(ChainType::Nat, Hook::Output, -100),
            vec![Rule::new(vec![jump("services")])],
        );
        chain(
            "nat-postrouting",
            base(ChainType::Nat, Hook::Postrouting, 100),
            vec![Rule::new(vec![jump("masquerading")])],
        );

        // Filtering.
        let mut fw_key = vec![Expr::Daddr(f), Expr::L4Proto, Expr::Dport, Expr::Saddr(f)];
        chain(
            "firewall-check",
            None,
            vec![Rule::new(vec![
                in_set(vip_key.clone(), FIREWALL_IPS),
                not_in_set(Expr::Concat(std::mem::take(&mut fw_key)), FIREWALL_ALLOW),
                Stmt::Verdict(Verdict::Drop),
            ])
            .with_comment("drop sources outside loadBalancerSourceRanges")],
        );
        chain(
            "service-endpoints-check",
            None,
            vec![Rule::new(vec![vmap(vip_key.clone(), NO_ENDPOINT_SERVICES)])],
        );
        // NodePorts on every local address, except loopback (as kube-proxy).
        let loopback: IpNet = match f {
            IpFamily::V4 => IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default(),
            ),
            IpFamily::V6 => IpNet::V6(
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).unwrap_or_default(),
            ),
        };
        let nodeport_dst: Vec<Stmt> = if self.nodeports_all_local {
            vec![
                fib_local(false),
                Stmt::Match {
                    left: Expr::Daddr(f),
                    op: MatchOp::Ne,
                    right: MatchRight::Value(Value::Prefix(loopback)),
                },
            ]
        } else {
            vec![in_set(Expr::Daddr(f), NODEPORT_IPS)]
        };
        chain(
            "nodeport-endpoints-check",
            None,
            vec![Rule::new(
                nodeport_dst
                    .iter()
                    .cloned()
                    .chain([vmap(np_key.clone(), NO_ENDPOINT_NODEPORTS)])
                    .collect(),
            )],
        );
        chain(
            "cluster-ips-check",
            None,
            [
                Rule::new(vec![in_set(Expr::Daddr(f), CLUSTER_IPS), Stmt::Reject])
                    .with_comment("reject traffic to undefined ports of ClusterIPs"),
            ]
            .into_iter()
            .chain(has_service_cidrs.then(|| {
                Rule::new(vec![
                    in_set(Expr::Daddr(f), SERVICE_CIDRS),
                    Stmt::Verdict(Verdict::Drop),
                ])
                .with_comment("drop traffic to unallocated ClusterIPs")
            }))
            .collect(),
        );
        chain(REJECT_CHAIN, None, vec![Rule::new(vec![Stmt::Reject])]);

        // Dispatch.
        chain(
            "services",
            None,
            vec![
                Rule::new(vec![vmap(vip_key.clone(), SERVICE_IPS)]),
                Rule::new(
                    nodeport_dst
                        .into_iter()
                        .chain([vmap(np_key.clone(), SERVICE_NODEPORTS)])
                        .collect(),
                ),
            ],
        );

        // Masquerading.
        chain(
            MARK_FOR_MASQ,
            None,
            vec![Rule::new(vec![Stmt::SetMark(MarkOp::Or(mark))])],
        );
        chain(
            "masquerading",
            None,
            vec![
                Rule::new(vec![
                    Stmt::Match {
                        left: Expr::CtStatus,
                        op: MatchOp::Eq,
                        right: MatchRight::Value(Value::CtStatusDnat),
                    },
                    in_set(Expr::Concat(vec![Expr::Saddr(f), Expr::Daddr(f)]), HAIRPIN),
                    jump(MARK_FOR_MASQ),
                ])
                .with_comment("hairpin: an endpoint reaching itself through a service"),
                Rule::new(vec![
                    Stmt::Match {
                        left: Expr::MarkAnd(mark),
                        op: MatchOp::Eq,
                        right: MatchRight::Value(Value::Int(0)),
                    },
                    Stmt::Verdict(Verdict::Return),
                ]),
                Rule::new(vec![Stmt::SetMark(MarkOp::Xor(mark))]),
                Rule::new(vec![Stmt::Masquerade { fully_random: true }]),
            ],
        );

        // Policy chains, per key space.
        let internal_masq = if cfg.masquerade_all {
            Some(Rule::new(vec![jump(MARK_FOR_MASQ)]).with_comment("masqueradeAll"))
        } else if has_pod_cidrs {
            Some(
                Rule::new(vec![
                    not_in_set(Expr::Saddr(f), POD_CIDRS),
                    jump(MARK_FOR_MASQ),
                ])
                .with_comment("masquerade traffic from outside the cluster"),
            )
        } else {
            None
        };
        for local in [false, true] {
            let name = if local {
                "internal-local"
            } else {
                "internal-cluster"
            };
            let mut rules: Vec<Rule> = internal_masq.iter().cloned().collect();
            rules.push(Rule::new(vec![vmap(
                vip_key.clone(),
                KeySpace::Vip.lb_map(local),
            )]));
            chain(name, None, rules);
        }
        for space in [KeySpace::Vip, KeySpace::NodePort] {
            let key = space.key_expr(f);
            let p = space.prefix();
            chain(
                &format!("{p}external"),
                None,
                vec![
                    Rule::new(vec![jump(MARK_FOR_MASQ)])
                        .with_comment("masquerade external traffic (Cluster policy)"),
                    Rule::new(vec![vmap(key.clone(), space.lb_map(false))]),
                ],
            );
            let mut rules = Vec::new();
            if has_pod_cidrs {
                rules.push(
                    Rule::new(vec![
                        in_set(Expr::Saddr(f), POD_CIDRS),
                        vmap(key.clone(), space.lb_map(false)),
                    ])
                    .with_comment("short-circuit pod traffic to external destinations"),
                );
            }
            rules.push(
                Rule::new(vec![fib_local(true), jump(MARK_FOR_MASQ)])
                    .with_comment("masquerade traffic from the node"),
            );
            rules.push(Rule::new(vec![
                fib_local(true),
                vmap(key.clone(), space.lb_map(false)),
            ]));
            rules.push(Rule::new(vec![vmap(key, space.lb_map(true))]));
            chain(&format!("{p}external-local"), None, rules);
        }

        // Load-balancing chains.
        for spec in &self.lb_specs {
            let npsp = spec.space == KeySpace::NodePort;
            let mut rules = Vec::new();
            if spec.affinity {
                for i in spec.offset..spec.offset + spec.count {
                    rules.push(Rule::new(vec![
                        in_set(
                            spec.space.affinity_expr(f),
                            &affinity_slot_set(spec.space, i),
                        ),
                        gotov(&slot_chain(npsp, i)),
                    ]));
                }
            }
            if spec.count == 1 {
                rules.push(Rule::new(vec![gotov(&slot_chain(npsp, spec.offset))]));
            } else {
                let entries = (spec.offset..spec.offset + spec.count)
                    .map(|i| (Value::Int(i), Verdict::Goto(slot_chain(npsp, i))))
                    .collect();
                rules.push(Rule::new(vec![Stmt::Vmap {
                    key: Expr::Numgen {
                        modulus: spec.count,
                        offset: spec.offset,
                    },
                    map: MapRef::Anon(entries),
                }]));
            }
            chain(&spec.chain_name(), None, rules);
        }

        // Slot chains.
        let slots = self.slots.clone();
        let port_slots = self.port_slots.clone();
        for (space, n) in slots {
            let npsp = space == KeySpace::NodePort;
            let timeouts = self
                .affinity_timeouts
                .get(&space)
                .cloned()
                .unwrap_or_default();
            for i in 0..n {
                let mut rules = Vec::new();
                if !timeouts.is_empty() {
                    let set = affinity_slot_set(space, i);
                    let mut s = Set::new(&set, space.affinity_types(f), None);
                    s.flags = SetFlags {
                        interval: false,
                        dynamic: true,
                        timeout: Some(10800),
                    };
                    s.comment = Some(format!("clients with affinity to endpoint slot {i}"));
                    self.sets.insert(set.clone(), s);
                    for t in &timeouts {
                        rules.push(Rule::new(vec![
                            in_set(space.key_expr(f), &affinity_set(space, *t)),
                            Stmt::SetUpdate {
                                set: set.clone(),
                                key: space.affinity_expr(f),
                                timeout: Some(*t),
                            },
                        ]));
                    }
                }
                let (am, pm) = slot_maps(npsp, i);
                // A key's port is in exactly one of the two port maps; a lookup that misses
                // makes its rule not match.
                rules.push(Rule::new(vec![Stmt::DnatMap {
                    key: space.key_expr(f),
                    addr_map: am.clone(),
                    port_map: shared_port_map(npsp).to_owned(),
                }]));
                if i < port_slots.get(&space).copied().unwrap_or(0) {
                    rules.push(Rule::new(vec![Stmt::DnatMap {
                        key: space.key_expr(f),
                        addr_map: am,
                        port_map: pm,
                    }]));
                }
                chain(&slot_chain(npsp, i), None, rules);
            }
        }

        t.sets = self.sets;
        (t, self.warnings)
    }
}

/// Sorted prefixes without duplicates and without prefixes inside another one: nft refuses
/// overlapping elements in an interval set.
fn without_covered(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort();
    nets.dedup();
    let all = nets.clone();
    nets.retain(|n| !all.iter().any(|o| o != n && o.contains(n)));
    nets
}

/// The fewest endpoint slots (and plain load-balancing chains) provisioned per key space in use.
pub const MIN_SLOTS: u32 = 8;

/// Slots provisioned when the largest service port has `n` endpoints.
pub(crate) fn provisioned_slots(n: u32) -> u32 {
    (n + 1).next_power_of_two().max(MIN_SLOTS)
}

fn affinity_set(space: KeySpace, timeout: u32) -> String {
    format!("{}affinity-{timeout}", space.prefix())
}

/// Name of the dynamic set of clients with affinity to slot `i`.
fn affinity_slot_set(space: KeySpace, i: u32) -> String {
    format!("{}aff-{i}", space.prefix())
}

fn describe_key(key: &[Value]) -> String {
    key.iter()
        .map(|v| match v {
            Value::Addr(a) => a.to_string(),
            Value::Prefix(p) => p.to_string(),
            Value::Proto(p) => p.to_string(),
            Value::Port(p) => p.to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

/// The slices of every service, by (namespace, service name), in slice name order.
pub(crate) fn slices_by_service(
    snapshot: &Snapshot,
) -> BTreeMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in snapshot.slices.values() {
        if let Some(svc) = slice.service_name.as_deref() {
            out.entry((slice.name.namespace.as_str(), svc))
                .or_default()
                .push(slice);
        }
    }
    out
}

/// The usable endpoints of one service port in one family, from all of the service's slices,
/// deduplicated by address and port (the first slice in name order wins).
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    family: IpFamily,
    node: &str,
) -> Vec<Ep> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for slice in slices {
        if slice.headless_label || slice.address_type.family() != Some(family) {
            continue;
        }
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue;
        };
        for e in &slice.endpoints {
            if IpFamily::of(&e.address) != family || !seen.insert((e.address, sp.port)) {
                continue;
            }
            out.push(Ep {
                addr: e.address,
                port: sp.port,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                local: e.node_name.as_deref() == Some(node),
                hint_zones: e.hint_zones.clone(),
                hint_nodes: e.hint_nodes.clone(),
            });
        }
    }
    out.sort();
    out
}

/// This node's IPs as the compiler uses them: `--node-ip` if given, else the Node object's
/// addresses.
pub fn node_addresses(snapshot: &Snapshot, config: &ProxyConfig) -> Vec<IpAddr> {
    if !config.node_ips.is_empty() {
        return config.node_ips.clone();
    }
    snapshot
        .nodes
        .get(&config.node_name)
        .map(|n| n.addresses.clone())
        .unwrap_or_default()
}

fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether the proxy handles this service at all.
fn is_ours(svc: &Service, cfg: &ProxyConfig) -> bool {
    svc.service_type != ServiceType::ExternalName
        && !svc.is_headless()
        && svc.service_proxy_name == cfg.service_proxy_name
}

/// Checks the parts of the config the compiler relies on.
pub(crate) fn check_config(config: &ProxyConfig) -> Result<(), CompileError> {
    if config.node_name.is_empty() {
        return Err(CompileError::MissingNodeName);
    }
    if config.masquerade_bit > 31 {
        return Err(CompileError::MasqueradeBit(config.masquerade_bit));
    }
    if !valid_table_name(&config.table_name) {
        return Err(CompileError::TableName(config.table_name.clone()));
    }
    Ok(())
}

/// What the compiler takes from this node's Node object (or the config's overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeContext {
    /// Label `topology.kubernetes.io/zone`.
    pub(crate) zone: Option<String>,
    /// `--node-ip`, else the Node object's addresses.
    pub(crate) node_ips: Vec<IpAddr>,
    /// The Node object's pod CIDRs.
    pub(crate) pod_cidrs: Vec<IpNet>,
    /// Every ServiceCIDR object's CIDRs, else `--service-cidr`.
    pub(crate) service_cidrs: Vec<IpNet>,
}

impl NodeContext {
    pub(crate) fn of(snapshot: &Snapshot, config: &ProxyConfig) -> Self {
        let node = snapshot.nodes.get(&config.node_name);
        Self {
            zone: node.and_then(|n| n.zone.clone()),
            node_ips: node_addresses(snapshot, config),
            pod_cidrs: node.map(|n| n.pod_cidrs.clone()).unwrap_or_default(),
            service_cidrs: if snapshot.service_cidrs.is_empty() {
                config.service_cidrs.clone()
            } else {
                let mut all: Vec<IpNet> =
                    snapshot.service_cidrs.values().flatten().copied().collect();
                all.sort();
                all.dedup();
                all
            },
        }
    }

    /// The families to build tables for: IPv4 always, IPv6 when the node, the config, a
    /// ServiceCIDR or a
    /// service uses it.
    pub(crate) fn families<'s>(
        &self,
        config: &ProxyConfig,
        services: impl IntoIterator<Item = &'s Service>,
    ) -> BTreeSet<IpFamily> {
        let mut families = BTreeSet::from([IpFamily::V4]);
        let uses_v6 = self.node_ips.iter().any(|ip| ip.is_ipv6())
            || config
                .cluster_cidrs
                .iter()
                .any(|c| matches!(c, IpNet::V6(_)))
            || self.service_cidrs.iter().any(|c| matches!(c, IpNet::V6(_)))
            || services
                .into_iter()
                .any(|s| s.cluster_ips.iter().any(|ip| ip.is_ipv6()));
        if uses_v6 {
            families.insert(IpFamily::V6);
        }
        families
    }

    fn warnings(&self, config: &ProxyConfig) -> Vec<Warning> {
        if !self.node_ips.is_empty() {
            return Vec::new();
        }
        vec![Warning {
            object: format!("Node {}", config.node_name),
            message: "no node IPs known (no Node object and no --node-ip): NodePorts only answer \
                      on addresses in nodePortAddresses that the node owns"
                .to_owned(),
        }]
    }
}

impl<'a> FamilyBuilder<'a> {
    /// A builder with this node's pod CIDRs and NodePort addresses in place.
    fn for_node(f: IpFamily, config: &'a ProxyConfig, ctx: &NodeContext) -> Self {
        let mut b = Self::new(f, config);
        b.node_ips = ctx.node_ips.clone();
        let pod_cidrs = match config.detect_local {
            DetectLocal::ClusterCidr => config.cluster_cidrs.clone(),
            DetectLocal::NodeCidr => ctx.pod_cidrs.clone(),
        };
        b.pod_cidrs = without_covered(
            pod_cidrs
                .into_iter()
                .filter(|c| IpFamily::of(&c.addr()) == f)
                .map(|c| c.trunc())
                .collect(),
        );
        b.service_cidrs = without_covered(
            ctx.service_cidrs
                .iter()
                .filter(|c| IpFamily::of(&c.addr()) == f)
                .map(|c| c.trunc())
                .collect(),
        );
        match nodeport_addresses(&ctx.node_ips, config, f) {
            NodePortAddresses::AllLocal => b.nodeports_all_local = true,
            NodePortAddresses::These(ips) => {
                for ip in ips {
                    b.put_shared(NODEPORT_IPS, vec![Value::Addr(ip)]);
                }
            }
        }
        b
    }
}

/// Where NodePorts of one family answer (and the healthCheckNodePort servers listen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address but loopback: a zero CIDR, or `nodePortAddresses` without a CIDR of
    /// this family (kube-proxy then uses the zero CIDR).
    AllLocal,
    /// These node addresses: the first of the family for the default ("primary"), else those
    /// inside `nodePortAddresses`.
    These(Vec<IpAddr>),
}

/// kube-proxy's `nodePortAddresses` decision for family `f`, given the node's IPs.
pub fn nodeport_addresses(
    node_ips: &[IpAddr],
    config: &ProxyConfig,
    f: IpFamily,
) -> NodePortAddresses {
    let mut fam_ips = node_ips.iter().copied().filter(|ip| IpFamily::of(ip) == f);
    let npa: Vec<IpNet> = config
        .node_port_addresses
        .iter()
        .copied()
        .filter(|c| IpFamily::of(&c.addr()) == f)
        .collect();
    if npa.iter().any(|c| c.prefix_len() == 0)
        || (npa.is_empty() && !config.node_port_addresses.is_empty())
    {
        NodePortAddresses::AllLocal
    } else if config.node_port_addresses.is_empty() {
        NodePortAddresses::These(fam_ips.next().into_iter().collect())
    } else {
        NodePortAddresses::These(
            fam_ips
                .filter(|ip| npa.iter().any(|c| c.contains(ip)))
                .collect(),
        )
    }
}

/// Compiles a snapshot into a ruleset: an `ip` table, and an `ip6` table when the node, the
/// config or any service uses IPv6. Endpoint slots follow address order; see
/// [`compile_with_previous`] to keep the slots of an earlier ruleset.
pub fn compile(snapshot: &Snapshot, config: &ProxyConfig) -> Result<Compiled, CompileError> {
    compile_inner(snapshot, config, None)
}

/// Like [`compile`], but every endpoint keeps the slot it has in `previous` (the ruleset the
/// kernel holds, or the last one compiled) where its range allows, so that a change moves
/// few elements and ClientIP affinity, which is kept per slot, stays with the endpoint.
/// The result depends only on the snapshot, the config and `previous`.
pub fn compile_with_previous(
    snapshot: &Snapshot,
    config: &ProxyConfig,
    previous: &Ruleset,
) -> Result<Compiled, CompileError> {
    compile_inner(snapshot, config, Some(previous))
}

fn compile_inner(
    snapshot: &Snapshot,
    config: &ProxyConfig,
    previous: Option<&Ruleset>,
) -> Result<Compiled, CompileError> {
    check_config(config)?;
    let ctx = NodeContext::of(snapshot, config);
    let mut warnings = ctx.warnings(config);
    let services: Vec<&Service> = snapshot
        .services
        .values()
        .filter(|s| is_ours(s, config))
        .collect();
    let slices = slices_by_service(snapshot);
    let mut ruleset = Ruleset::default();
    for f in ctx.families(config, services.iter().copied()) {
        let mut b = FamilyBuilder::for_node(f, config, &ctx);
        b.previous = previous.and_then(|r| r.tables.get(&f));
        for svc in &services {
            let own = slices
                .get(&(svc.name.namespace.as_str(), svc.name.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            b.add_service(svc, own, &config.node_name, ctx.zone.as_deref());
        }
        let (table, w) = b.finish();
        warnings.extend(w);
        ruleset.tables.insert(f, table);
    }
    Ok(Compiled { ruleset, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Endpoint, EndpointSlice, ServicePort, SlicePort};

    fn lb_service(ranges: &[&str]) -> Snapshot {
        let name = ObjectName::new("default", "fw");
        let svc = Service {
            name: name.clone(),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec!["172.30.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
            }],
            external_ips: vec![],
            load_balancer_ips: vec!["1.2.3.4".parse().unwrap()],
            load_balancer_source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity_timeout: None,
            service_proxy_name: None,
            traffic_distribution: None,
            health_check_node_port: None,
        };
        let slice = EndpointSlice {
            name: ObjectName::new("default", "fw-1"),
            service_name: Some("fw".into()),
            address_type: crate::snapshot::AddressType::Ipv4,
            headless_label: false,
            ports: vec![SlicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            endpoints: vec![Endpoint {
                address: "10.0.1.5".parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some("node-a".into()),
                zone: None,
                hint_zones: vec![],
                hint_nodes: vec![],
            }],
        };
        let mut s = Snapshot::default();
        s.services.insert(name, svc);
        s.slices.insert(slice.name.clone(), slice);
        s
    }

    fn config() -> ProxyConfig {
        ProxyConfig {
            node_name: "node-a".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            cluster_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
            ..ProxyConfig::default()
        }
    }

    fn elements(r: &Ruleset, set: &str) -> Vec<Vec<Value>> {
        r.tables[&IpFamily::V4].sets[set]
            .elements
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn overlapping_source_ranges_are_merged() {
        // 0.0.0.0/0 contains the node IP, so the LB IP is allowed too; it is inside 0.0.0.0/0.
        let snap = lb_service(&["0.0.0.0/0", "203.0.113.0/24"]);
        let r = compile(&snap, &config()).unwrap().ruleset;
        let allow = elements(&r, FIREWALL_ALLOW);
        assert_eq!(allow.len(), 1, "{allow:?}");
        assert_eq!(
            allow[0].last(),
            Some(&Value::Prefix("0.0.0.0/0".parse().unwrap()))
        );
    }

    #[test]
    fn nested_cluster_cidrs_are_merged() {
        let r = compile(&lb_service(&[]), &config()).unwrap().ruleset;
        assert_eq!(
            elements(&r, POD_CIDRS),
            vec![vec![Value::Prefix("10.0.0.0/8".parse().unwrap())]]
        );
    }

    #[test]
    fn node_ip_in_range_admits_lb_ip_as_source() {
        let r = compile(&lb_service(&["192.168.0.0/24"]), &config())
            .unwrap()
            .ruleset;
        let allow: Vec<Value> = elements(&r, FIREWALL_ALLOW)
            .into_iter()
            .filter_map(|k| k.last().cloned())
            .collect();
        assert_eq!(
            allow,
            vec![
                Value::Prefix("1.2.3.4/32".parse().unwrap()),
                Value::Prefix("192.168.0.0/24".parse().unwrap())
            ]
        );
    }

    /// One ClusterIP service with `n` ready endpoints on other nodes.
    fn big_service(n: u32) -> Snapshot {
        let mut s = lb_service(&[]);
        let svc = s.services.values_mut().next().unwrap();
        svc.service_type = ServiceType::ClusterIp;
        let slice = s.slices.values_mut().next().unwrap();
        let template = slice.endpoints[0].clone();
        slice.endpoints = (0..n)
            .map(|i| Endpoint {
                address: IpAddr::from([10, 2, (i >> 8) as u8, i as u8]),
                node_name: Some(format!("node-{}", i % 50)),
                ..template.clone()
            })
            .collect();
        s
    }

    /// Total size of the chains: rules plus anonymous vmap entries.
    fn chain_size(r: &Ruleset) -> usize {
        r.tables
            .values()
            .flat_map(|t| t.chains.values())
            .flat_map(|c| &c.rules)
            .map(|rule| {
                1 + rule
                    .stmts
                    .iter()
                    .map(|s| match s {
                        Stmt::Vmap {
                            map: MapRef::Anon(entries),
                            ..
                        } => entries.len(),
                        _ => 0,
                    })
                    .sum::<usize>()
            })
            .sum()
    }

    /// A service with many endpoints costs linear size: one load-balancing chain of its count,
    /// slot chains and maps up to the next power of two, one element per endpoint and key. Run
    /// with `--nocapture` for the figures.
    #[test]
    fn one_large_service_is_linear_in_its_endpoints() {
        for n in [1_000u32, 10_000, 50_000] {
            let snap = big_service(n);
            let start = std::time::Instant::now();
            let r = compile(&snap, &config()).unwrap().ruleset;
            let took = start.elapsed();
            let (elements, chains, size) = (r.element_count(), r.chain_count(), chain_size(&r));
            let sets: usize = r.tables.values().map(|t| t.sets.len()).sum();
            println!(
                "{n} endpoints: compile {took:?}, {elements} elements, {chains} chains, \
                 {size} rules + vmap entries, {sets} sets"
            );
            let slots = provisioned_slots(n) as usize;
            // Per endpoint: its address in its slot map; plus the key's own elements.
            assert!(elements <= n as usize + 10, "{elements}");
            // Slot chains (two rules at most), one lb chain of n branches, and the plain chains
            // for counts 1..=MIN_SLOTS (36 branches).
            assert!(chains <= slots + 40, "{chains}");
            assert!(size <= 2 * slots + n as usize + 100, "{size}");
            assert!(sets <= slots + 30, "{sets}");
        }
    }

    #[test]
    fn an_external_ip_of_the_node_itself_is_warned_about() {
        let snapshot = crate::parse::parse_snapshot(
            "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: default }\n\
             spec: { clusterIP: 172.30.0.10, externalIPs: [192.168.0.2, 203.0.113.7], \
             ports: [{ port: 22 }] }\n",
        )
        .unwrap()
        .snapshot;
        let compiled = compile(&snapshot, &config()).unwrap();
        let w: Vec<String> = compiled.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "Service default/web: spec.externalIPs: 192.168.0.2 is this node's own address"
            ),
            "{w:?}"
        );
    }

    #[test]
    fn config_errors_are_reported() {
        let snap = Snapshot::default();
        let mut c = config();
        c.node_name.clear();
        assert!(matches!(
            compile(&snap, &c),
            Err(CompileError::MissingNodeName)
        ));
        let mut c = config();
        c.table_name = "1bad".into();
        assert!(matches!(
            compile(&snap, &c),
            Err(CompileError::TableName(_))
        ));
        let mut c = config();
        c.masquerade_bit = 32;
        assert!(matches!(
            compile(&snap, &c),
            Err(CompileError::MasqueradeBit(32))
        ));
    }
}
