//! The proxy engine: a sans-IO state machine that keeps a node's ruleset in step with a cluster.
//!
//! [`Engine`] is what a long-running proxy (the `nftproxy run` daemon, or a CNI embedding this
//! crate) drives. It owns the cluster snapshot and the compiled ruleset; the caller owns all IO.
//!
//! ```text
//!  watch events ──handle()──▶ ┌────────┐ ──poll()──▶ Action::ReadBack        ──▶ readback_done()
//!  (Apply/Delete/Init…)       │ Engine │            Action::Apply(tx)        ──▶ apply_done()
//!  time ──────────────────▶   └────────┘            Action::DeleteConntrack  ──▶ conntrack_done()
//!                                 └──poll_timeout()──▶ when to call poll() again
//! ```
//!
//! - **Events in.** Objects arrive as kube-rs's watcher delivers them: [`Event::Apply`] /
//!   [`Event::Delete`] for changes, and a relist as [`Event::InitStarted`], [`Event::InitApply`]
//!   per object, [`Event::InitDone`]. A relist swaps the whole kind at `InitDone`: objects not seen
//!   are deleted, and only services whose objects really changed are recompiled (a relist after a
//!   410 Gone sends no burst of deletes and re-adds). The caller never says what changed.
//! - **Nothing before the initial lists.** [`Engine::poll`] returns nothing until every watched
//!   kind has completed its first list (kube-proxy's "Services and EndpointSlices synced").
//! - **Actions out.** The first sync, the first after a failure and one at least every
//!   [`SyncTiming::full_sync_period`] are *full*: the engine asks for our tables to be read back
//!   ([`Action::ReadBack`]) and sends the difference to the kernel's real state. Other syncs are
//!   *partial*: only changed services are recompiled and only their element changes are sent.
//!   After a successful transaction that removed UDP endpoints, [`Action::DeleteConntrack`] lists
//!   the stale flows. One action is outstanding at a time; its result is reported back.
//! - **Time in.** Every call takes `now`. Changes are coalesced: a sync starts no sooner than
//!   [`SyncTiming::min_sync_period`] after the previous one ended; after a failure the next attempt
//!   waits [`SyncTiming::sync_period`] (kube-proxy's retry interval).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::networking::v1 as networkingv1;

use crate::compile::{CompileError, IncrementalCompiler};
use crate::config::ProxyConfig;
use crate::conntrack::{self, StaleFlow};
use crate::parse;
use crate::plan::{self, Transaction};
use crate::ruleset::Ruleset;
use crate::snapshot::{
    EndpointSlice, IpFamily, Node, ObjectName, Service, ServiceType, Snapshot, TrafficPolicy,
    Warning,
};

/// How often the engine syncs (kube-proxy's `nftables.minSyncPeriod` / `syncPeriod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTiming {
    /// Least time between the end of one sync and the start of the next (changes are coalesced
    /// meanwhile). kube-proxy's default is 1 s.
    pub min_sync_period: Duration,
    /// Time to wait before retrying after a failed sync; also the base of the health timeout
    /// (unhealthy when a change waits longer than twice this). kube-proxy's default is 30 s.
    pub sync_period: Duration,
    /// A full sync (read back, send the difference) happens at least this often, repairing any
    /// drift. kube-proxy's is 1 hour.
    pub full_sync_period: Duration,
}

impl Default for SyncTiming {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_sync_period: Duration::from_secs(3600),
        }
    }
}

/// A kind of object the engine follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ResourceKind {
    /// `v1` Services.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSlice,
    /// `v1` Node (only this node's object is used).
    Node,
    /// `networking.k8s.io/v1` ServiceCIDRs.
    ServiceCidr,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
            Self::ServiceCidr => "ServiceCIDR",
        })
    }
}

/// A Kubernetes object, as the API delivers it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Object {
    /// A Service.
    Service(Box<corev1::Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<discoveryv1::EndpointSlice>),
    /// A Node.
    Node(Box<corev1::Node>),
    /// A ServiceCIDR.
    ServiceCidr(Box<networkingv1::ServiceCIDR>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Service(_) => ResourceKind::Service,
            Self::EndpointSlice(_) => ResourceKind::EndpointSlice,
            Self::Node(_) => ResourceKind::Node,
            Self::ServiceCidr(_) => ResourceKind::ServiceCidr,
        }
    }
}

impl From<corev1::Service> for Object {
    fn from(o: corev1::Service) -> Self {
        Self::Service(Box::new(o))
    }
}
impl From<discoveryv1::EndpointSlice> for Object {
    fn from(o: discoveryv1::EndpointSlice) -> Self {
        Self::EndpointSlice(Box::new(o))
    }
}
impl From<corev1::Node> for Object {
    fn from(o: corev1::Node) -> Self {
        Self::Node(Box::new(o))
    }
}
impl From<networkingv1::ServiceCIDR> for Object {
    fn from(o: networkingv1::ServiceCIDR) -> Self {
        Self::ServiceCidr(Box::new(o))
    }
}

/// A watch event (the shape of kube-runtime's `watcher::Event`, with the kind made explicit for
/// the list markers).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// An object was added or modified.
    Apply(Object),
    /// An object was deleted (or stopped matching the watch's selector).
    Delete(Object),
    /// A (re)list of this kind starts: the objects that follow as [`Event::InitApply`] replace the
    /// kind's objects at [`Event::InitDone`].
    InitStarted(ResourceKind),
    /// An object of the list in progress.
    InitApply(Object),
    /// The list of this kind is complete.
    InitDone(ResourceKind),
}

/// What the engine asks its driver to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Read our tables back from the kernel (both families, table
    /// [`ProxyConfig::table_name`]); report with [`Engine::readback_done`].
    ReadBack,
    /// Send this transaction as one atomic batch; report with [`Engine::apply_done`].
    Apply(ApplyAction),
    /// Delete these UDP conntrack entries; report with [`Engine::conntrack_done`].
    DeleteConntrack(Vec<StaleFlow>),
}

/// A transaction to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyAction {
    /// The transaction.
    pub transaction: Transaction,
    /// A full sync (planned from the read-back state) rather than a partial one.
    pub full: bool,
}

/// What a finished sync did, returned by [`Engine::apply_done`] (and by [`Engine::poll`]'s
/// bookkeeping for syncs that needed no transaction, see [`Engine::last_sync`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Full or partial.
    pub full: bool,
    /// Operations sent (0 when nothing differed).
    pub ops: usize,
    /// Elements added or deleted.
    pub elements: usize,
    /// From the start of the sync (read-back or compile) to its end.
    pub duration: Duration,
    /// `None` on success, else the failure (the next sync is a full one, after `sync_period`).
    pub error: Option<String>,
    /// Services whose changes this sync carried.
    pub services: usize,
    /// `endpoints.kubernetes.io/last-change-trigger-time` annotations of the EndpointSlice changes
    /// this sync carried (RFC 3339), for kube-proxy's network programming latency.
    pub trigger_times: Vec<String>,
}

/// A Service with a `healthCheckNodePort` that this node must answer for (kube-proxy's
/// `HealthCheckNodePorts()` with `LocalReadyEndpoints()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckService {
    /// The Service.
    pub name: ObjectName,
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Ready endpoints on this node.
    pub local_endpoints: usize,
}

/// Why an engine could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The proxy configuration is invalid.
    #[error(transparent)]
    Config(#[from] CompileError),
    /// No kind to watch: the engine would never start.
    #[error("the engine must follow at least Services and EndpointSlices")]
    NothingWatched,
}

/// The health of the proxy, as kube-proxy's `/healthz` and `/livez` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// No change has waited longer than twice `sync_period` to be applied.
    pub healthy: bool,
    /// The last successful sync (or the engine's creation, as kube-proxy counts start-up).
    pub last_updated: Instant,
    /// The oldest change not yet in the kernel, if any.
    pub oldest_pending: Option<Instant>,
}

/// Counters for metrics; monotonic unless said otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Service changes seen (add, update, delete).
    pub service_changes: u64,
    /// EndpointSlice changes seen.
    pub endpoint_changes: u64,
    /// Services waiting for a sync (gauge).
    pub services_pending: u64,
    /// Service changes not yet carried by a sync (gauge).
    pub service_changes_pending: u64,
    /// EndpointSlice changes not yet carried by a sync (gauge).
    pub endpoint_changes_pending: u64,
    /// Syncs that succeeded.
    pub syncs: u64,
    /// Full syncs that succeeded.
    pub full_syncs: u64,
    /// Transactions or read-backs that failed.
    pub sync_failures: u64,
    /// Conntrack filters run.
    pub conntrack_filters: u64,
    /// Conntrack deletions that failed.
    pub conntrack_failures: u64,
}

/// The action in flight.
#[derive(Debug)]
enum InFlight {
    ReadBack {
        started: Instant,
        services: usize,
    },
    Apply {
        started: Instant,
        full: bool,
        ops: usize,
        elements: usize,
        stale: Vec<StaleFlow>,
        services: usize,
    },
    Conntrack,
}

/// Objects of one kind being relisted.
#[derive(Debug, Default)]
struct Relist {
    services: BTreeMap<ObjectName, Service>,
    slices: BTreeMap<ObjectName, EndpointSlice>,
    nodes: BTreeMap<String, Node>,
    cidrs: BTreeMap<String, Vec<IpNet>>,
}

/// The proxy engine; see the [module documentation](self).
#[derive(Debug)]
pub struct Engine {
    config: ProxyConfig,
    timing: SyncTiming,
    snapshot: Snapshot,
    compiler: IncrementalCompiler,
    watched: BTreeSet<ResourceKind>,
    listed: BTreeSet<ResourceKind>,
    relists: BTreeMap<ResourceKind, Relist>,
    /// Services to recompile at the next sync.
    dirty: BTreeSet<ObjectName>,
    /// Services the sync in flight carries (back to `dirty` if it fails).
    in_flight_dirty: BTreeSet<ObjectName>,
    /// Something besides services changed (the node, ServiceCIDRs): sync even with `dirty` empty.
    other_dirty: bool,
    /// Oldest change not yet carried by a sync.
    pending_since: Option<Instant>,
    /// Oldest change carried by the sync in flight.
    in_flight_since: Option<Instant>,
    /// Trigger times of slice changes not yet carried by a sync, and of the sync in flight.
    triggers: Vec<String>,
    in_flight_triggers: Vec<String>,
    need_full: bool,
    in_flight: Option<InFlight>,
    /// A full transaction planned after a read-back, to hand out at the next poll.
    staged: Option<ApplyAction>,
    stale: Vec<StaleFlow>,
    last_sync_end: Option<Instant>,
    last_full_sync: Option<Instant>,
    retry_at: Option<Instant>,
    last_updated: Instant,
    latest_now: Instant,
    last_sync: Option<SyncReport>,
    stats: Stats,
}

impl Engine {
    /// An engine following `watched` kinds (Services and EndpointSlices at least; add Node and
    /// ServiceCIDR when the driver watches them, so that programming waits for their lists).
    pub fn new(
        config: ProxyConfig,
        timing: SyncTiming,
        watched: &[ResourceKind],
        now: Instant,
    ) -> Result<Self, EngineError> {
        let watched: BTreeSet<ResourceKind> = watched.iter().copied().collect();
        if !watched.contains(&ResourceKind::Service)
            || !watched.contains(&ResourceKind::EndpointSlice)
        {
            return Err(EngineError::NothingWatched);
        }
        Ok(Self {
            compiler: IncrementalCompiler::new(config.clone())?,
            config,
            timing,
            snapshot: Snapshot::default(),
            watched,
            listed: BTreeSet::new(),
            relists: BTreeMap::new(),
            dirty: BTreeSet::new(),
            in_flight_dirty: BTreeSet::new(),
            other_dirty: false,
            pending_since: None,
            in_flight_since: None,
            triggers: Vec::new(),
            in_flight_triggers: Vec::new(),
            need_full: true,
            in_flight: None,
            staged: None,
            stale: Vec::new(),
            last_sync_end: None,
            last_full_sync: None,
            retry_at: None,
            last_updated: now,
            latest_now: now,
            last_sync: None,
            stats: Stats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The timing.
    pub fn timing(&self) -> SyncTiming {
        self.timing
    }

    /// The cluster as the engine knows it now.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The CIDRs of every ServiceCIDR object, by object name.
    pub fn service_cidrs(&self) -> &BTreeMap<String, Vec<IpNet>> {
        &self.snapshot.service_cidrs
    }

    /// The ruleset of the last sync (what the kernel holds once it succeeded).
    pub fn ruleset(&self) -> &Ruleset {
        self.compiler.ruleset()
    }

    /// Whether every watched kind has completed its initial list.
    pub fn is_initialized(&self) -> bool {
        self.watched.is_subset(&self.listed)
    }

    /// The families our ruleset has tables for.
    pub fn families(&self) -> Vec<IpFamily> {
        let mut f: Vec<IpFamily> = self.ruleset().tables.keys().copied().collect();
        if f.is_empty() {
            f.push(IpFamily::V4);
        }
        f
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.services_pending = self.dirty.len() as u64;
        s
    }

    /// The last finished sync, if any.
    pub fn last_sync(&self) -> Option<&SyncReport> {
        self.last_sync.as_ref()
    }

    /// Health at `now`: unhealthy when a change has waited more than twice `sync_period`.
    pub fn health(&self, now: Instant) -> Health {
        let oldest = match (self.pending_since, self.in_flight_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = self.timing.sync_period * 2;
        Health {
            healthy: oldest.is_none_or(|t| now.saturating_duration_since(t) <= timeout),
            last_updated: self.last_updated,
            oldest_pending: oldest,
        }
    }

    /// Takes one watch event. Returns warnings about objects that were skipped or trimmed (each
    /// names the object and the field); they never stop the engine.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Warning> {
        self.see(now);
        let mut warnings = Vec::new();
        match event {
            Event::Apply(object) => self.apply_object(object, now, &mut warnings),
            Event::Delete(object) => self.delete_object(&object, now),
            Event::InitStarted(kind) => {
                self.relists.insert(kind, Relist::default());
            }
            Event::InitApply(object) => {
                let kind = object.kind();
                if !self.relists.contains_key(&kind) {
                    // A list without its start marker: treat it as a plain change.
                    self.apply_object(object, now, &mut warnings);
                } else if let Some(converted) = self.convert(&object, &mut warnings) {
                    let relist = self.relists.entry(kind).or_default();
                    match converted {
                        Converted::Service(s) => {
                            relist.services.insert(s.name.clone(), s);
                        }
                        Converted::Slice(s) => {
                            relist.slices.insert(s.name.clone(), s);
                        }
                        Converted::Node(n) => {
                            relist.nodes.insert(n.name.clone(), n);
                        }
                        Converted::Cidr(name, cidrs) => {
                            relist.cidrs.insert(name, cidrs);
                        }
                        Converted::Skip => {}
                    }
                }
            }
            Event::InitDone(kind) => {
                let mut relist = self.relists.remove(&kind).unwrap_or_default();
                self.swap(kind, &mut relist, now);
                if self.listed.insert(kind) && self.is_initialized() {
                    // The first sync happens at once, whatever changed.
                    self.other_dirty = true;
                    self.mark_pending(now);
                }
            }
        }
        warnings
    }

    /// Replaces the whole cluster view with an already validated snapshot (for embedders that
    /// keep their own), as if every kind had been relisted: only services whose objects differ
    /// are recompiled, and the engine counts as initialized.
    pub fn replace_snapshot(&mut self, snapshot: Snapshot, now: Instant) {
        self.see(now);
        let kinds: Vec<ResourceKind> = self.watched.iter().copied().collect();
        let relist = Relist {
            services: snapshot.services,
            slices: snapshot.slices,
            nodes: snapshot.nodes,
            cidrs: snapshot.service_cidrs,
        };
        self.swap_all(relist, now);
        for kind in kinds {
            if self.listed.insert(kind) && self.is_initialized() {
                self.other_dirty = true;
                self.mark_pending(now);
            }
        }
    }

    /// What to do next, or `None` when nothing is due (then call again at
    /// [`poll_timeout`](Self::poll_timeout) or after the next event).
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        self.see(now);
        // A transaction planned from a read-back (already accounted as in flight).
        if let Some(staged) = self.staged.take() {
            return Some(Action::Apply(staged));
        }
        if self.in_flight.is_some() {
            return None;
        }
        if !self.stale.is_empty() {
            self.in_flight = Some(InFlight::Conntrack);
            return Some(Action::DeleteConntrack(std::mem::take(&mut self.stale)));
        }
        if !self.is_initialized() || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let full_due = self
            .last_full_sync
            .is_none_or(|t| now >= t + self.timing.full_sync_period);
        if self.need_full || full_due {
            self.need_full = true;
            let services = self.take_pending();
            self.in_flight = Some(InFlight::ReadBack {
                started: now,
                services,
            });
            return Some(Action::ReadBack);
        }
        if self.dirty.is_empty() && !self.other_dirty {
            return None;
        }
        if self
            .last_sync_end
            .is_some_and(|t| now < t + self.timing.min_sync_period)
        {
            return None;
        }
        let changed: Vec<ObjectName> = self.dirty.iter().cloned().collect();
        let services = self.take_pending();
        match self.compiler.update(&self.snapshot, Some(&changed)) {
            Ok(tx) => {
                let stale = conntrack::stale_flows_removed(
                    self.compiler.removed(),
                    self.compiler.ruleset(),
                );
                self.start_apply(tx, false, stale, services, now)
            }
            Err(e) => {
                self.fail(false, now, now, 0, 0, services, e.to_string());
                None
            }
        }
    }

    /// When [`poll`](Self::poll) should next be called if no event arrives; `None` when only an
    /// event or an action's result can make something due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.staged.is_some() {
            return Some(self.latest_now);
        }
        if self.in_flight.is_some() {
            return None;
        }
        if !self.stale.is_empty() {
            return Some(self.latest_now);
        }
        if !self.is_initialized() {
            return None;
        }
        let not_before = self.retry_at.unwrap_or(self.latest_now);
        let full = if self.need_full {
            Some(not_before)
        } else {
            self.last_full_sync
                .map(|t| (t + self.timing.full_sync_period).max(not_before))
        };
        let partial = if self.dirty.is_empty() && !self.other_dirty {
            None
        } else {
            let after_min = self
                .last_sync_end
                .map(|t| t + self.timing.min_sync_period)
                .unwrap_or(self.latest_now);
            Some(after_min.max(not_before))
        };
        match (full, partial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reports the result of [`Action::ReadBack`]: our tables as the kernel holds them (absent
    /// tables simply missing), or why they could not be read.
    pub fn readback_done(&mut self, result: Result<Ruleset, String>, now: Instant) {
        self.see(now);
        let Some(InFlight::ReadBack { started, services }) = self.in_flight.take() else {
            return;
        };
        let current = match result {
            Ok(current) => current,
            Err(e) => {
                self.fail(
                    true,
                    started,
                    now,
                    0,
                    0,
                    services,
                    format!("read-back: {e}"),
                );
                return;
            }
        };
        // Compiled keeping the kernel's endpoint slots: after a restart or a failed sync, no
        // endpoint moves (and no ClientIP affinity changes) that did not need to.
        if let Err(e) = self.compiler.resync(&self.snapshot, &current) {
            self.fail(true, started, now, 0, 0, services, e.to_string());
            return;
        }
        let desired = self.compiler.ruleset();
        let tx = plan::plan(&current, desired);
        let stale = conntrack::stale_flows(&current, desired);
        if let Some(Action::Apply(a)) = self.start_apply(tx, true, stale, services, started) {
            self.staged = Some(a);
        }
    }

    /// Reports the result of [`Action::Apply`]. Returns what the sync did.
    pub fn apply_done(&mut self, result: Result<(), String>, now: Instant) -> Option<SyncReport> {
        self.see(now);
        let Some(InFlight::Apply {
            started,
            full,
            ops,
            elements,
            stale,
            services,
        }) = self.in_flight.take()
        else {
            return None;
        };
        match result {
            Ok(()) => {
                self.stale = stale;
                self.succeed(full, started, now, ops, elements, services);
            }
            Err(e) => self.fail(full, started, now, ops, elements, services, e),
        }
        self.last_sync.clone()
    }

    /// Reports the result of [`Action::DeleteConntrack`]: how many filters ran, or why they
    /// could not. A failure does not fail the sync (the rules are in place).
    pub fn conntrack_done(&mut self, result: Result<usize, String>, now: Instant) {
        self.see(now);
        if matches!(self.in_flight, Some(InFlight::Conntrack)) {
            self.in_flight = None;
        }
        match result {
            Ok(n) => self.stats.conntrack_filters += n as u64,
            Err(_) => self.stats.conntrack_failures += 1,
        }
    }

    /// Services this node answers health checks for, with their ready local endpoints.
    pub fn health_check_services(&self) -> Vec<HealthCheckService> {
        let mut out = Vec::new();
        for svc in self.snapshot.services.values() {
            let Some(port) = svc.health_check_node_port else {
                continue;
            };
            if svc.service_proxy_name != self.config.service_proxy_name || svc.is_headless() {
                continue;
            }
            out.push(HealthCheckService {
                name: svc.name.clone(),
                port,
                local_endpoints: self.local_endpoints(svc, |e| e.ready).len(),
            });
        }
        out
    }

    /// Services with a Local traffic policy and no usable (serving) endpoint on this node, per
    /// family: `(family, internal, external)` counts, kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total`.
    pub fn no_local_endpoints(&self) -> Vec<(IpFamily, u64, u64)> {
        let mut out = Vec::new();
        for family in self.families() {
            let (mut internal, mut external) = (0, 0);
            for svc in self.snapshot.services.values() {
                if svc.service_proxy_name != self.config.service_proxy_name
                    || !svc.cluster_ips.iter().any(|ip| IpFamily::of(ip) == family)
                {
                    continue;
                }
                let external_local = svc.external_traffic_policy == TrafficPolicy::Local
                    && (svc.service_type != ServiceType::ClusterIp || !svc.external_ips.is_empty());
                let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
                if !external_local && !internal_local {
                    continue;
                }
                let none = self
                    .local_endpoints(svc, |e| e.serving)
                    .iter()
                    .all(|a| IpFamily::of(a) != family);
                if none && internal_local {
                    internal += 1;
                }
                if none && external_local {
                    external += 1;
                }
            }
            out.push((family, internal, external));
        }
        out
    }

    /// Addresses of the service's endpoints on this node that pass `usable`.
    fn local_endpoints(
        &self,
        svc: &Service,
        usable: impl Fn(&crate::snapshot::Endpoint) -> bool,
    ) -> BTreeSet<std::net::IpAddr> {
        let mut local = BTreeSet::new();
        let slices = self.snapshot.slices.range(
            ObjectName::new(svc.name.namespace.clone(), String::new())
                ..ObjectName::new(format!("{}\0", svc.name.namespace), String::new()),
        );
        for (_, slice) in slices {
            if slice.service_name.as_deref() != Some(svc.name.name.as_str()) {
                continue;
            }
            for e in &slice.endpoints {
                if usable(e) && e.node_name.as_deref() == Some(self.config.node_name.as_str()) {
                    local.insert(e.address);
                }
            }
        }
        local
    }

    /// Whether this node may get load-balancer traffic (kube-proxy's `nodeEligible`): its Node
    /// object is known and neither being deleted nor tainted `ToBeDeletedByClusterAutoscaler`.
    pub fn node_eligible(&self) -> bool {
        self.snapshot
            .nodes
            .get(&self.config.node_name)
            .is_some_and(|n| !n.draining)
    }

    fn see(&mut self, now: Instant) {
        self.latest_now = self.latest_now.max(now);
    }

    fn mark_pending(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// Moves the pending changes into the sync that starts now; returns how many services.
    fn take_pending(&mut self) -> usize {
        let mut taken = std::mem::take(&mut self.dirty);
        // A retry carries what the failed sync carried.
        taken.append(&mut self.in_flight_dirty);
        let n = taken.len();
        self.in_flight_dirty = taken;
        self.other_dirty = false;
        self.in_flight_since = self.pending_since.take();
        self.in_flight_triggers = std::mem::take(&mut self.triggers);
        self.stats.service_changes_pending = 0;
        self.stats.endpoint_changes_pending = 0;
        n
    }

    fn start_apply(
        &mut self,
        tx: Transaction,
        full: bool,
        stale: Vec<StaleFlow>,
        services: usize,
        started: Instant,
    ) -> Option<Action> {
        if tx.is_empty() {
            self.succeed(full, started, self.latest_now, 0, 0, services);
            return None;
        }
        self.in_flight = Some(InFlight::Apply {
            started,
            full,
            ops: tx.len(),
            elements: tx.element_count(),
            stale,
            services,
        });
        Some(Action::Apply(ApplyAction {
            transaction: tx,
            full,
        }))
    }

    fn succeed(
        &mut self,
        full: bool,
        started: Instant,
        now: Instant,
        ops: usize,
        elements: usize,
        services: usize,
    ) {
        self.in_flight_since = None;
        self.in_flight_dirty.clear();
        self.last_sync_end = Some(now);
        self.last_updated = now;
        self.retry_at = None;
        if full {
            self.need_full = false;
            self.last_full_sync = Some(now);
            self.stats.full_syncs += 1;
        }
        self.stats.syncs += 1;
        self.last_sync = Some(SyncReport {
            full,
            ops,
            elements,
            duration: now.saturating_duration_since(started),
            error: None,
            services,
            trigger_times: std::mem::take(&mut self.in_flight_triggers),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        full: bool,
        started: Instant,
        now: Instant,
        ops: usize,
        elements: usize,
        services: usize,
        error: String,
    ) {
        // The changes of the failed sync are pending again; the kernel's state is unknown, so the
        // next sync reads it back.
        if let Some(t) = self.in_flight_since.take() {
            self.pending_since = Some(self.pending_since.map_or(t, |p| p.min(t)));
        }
        self.need_full = true;
        self.retry_at = Some(now + self.timing.sync_period);
        self.last_sync_end = Some(now);
        self.stats.sync_failures += 1;
        let mut triggers = std::mem::take(&mut self.in_flight_triggers);
        triggers.append(&mut self.triggers);
        self.triggers = triggers;
        self.last_sync = Some(SyncReport {
            full,
            ops,
            elements,
            duration: now.saturating_duration_since(started),
            error: Some(error),
            services,
            trigger_times: Vec::new(),
        });
    }

    fn convert(&self, object: &Object, warnings: &mut Vec<Warning>) -> Option<Converted> {
        let result = match object {
            Object::Service(s) => parse::service_from_k8s(s).map(Converted::Service),
            Object::EndpointSlice(s) => parse::endpoint_slice_from_k8s(s).map(|(s, w)| {
                warnings.extend(w);
                Converted::Slice(s)
            }),
            Object::Node(n) => {
                if n.metadata.name.as_deref() != Some(self.config.node_name.as_str()) {
                    return Some(Converted::Skip);
                }
                parse::node_from_k8s(n).map(|(n, w)| {
                    warnings.extend(w);
                    Converted::Node(n)
                })
            }
            Object::ServiceCidr(c) => {
                parse::service_cidr_from_k8s(c).map(|(name, cidrs)| Converted::Cidr(name, cidrs))
            }
        };
        match result {
            Ok(c) => Some(c),
            Err(e) => {
                warnings.push(Warning {
                    object: object_label(object),
                    message: format!("{e}; ignored (treated as absent)"),
                });
                None
            }
        }
    }

    fn apply_object(&mut self, object: Object, now: Instant, warnings: &mut Vec<Warning>) {
        match self.convert(&object, warnings) {
            Some(Converted::Service(s)) => {
                let name = s.name.clone();
                self.set_service(name, Some(s), now);
            }
            Some(Converted::Slice(s)) => {
                let name = s.name.clone();
                let trigger = match &object {
                    Object::EndpointSlice(o) => o
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                        .cloned(),
                    _ => None,
                };
                if self.set_slice(name, Some(s), now) {
                    self.triggers.extend(trigger);
                }
            }
            Some(Converted::Node(n)) => {
                let name = n.name.clone();
                self.set_node(name, Some(n), now);
            }
            Some(Converted::Cidr(name, cidrs)) => self.set_cidr(name, Some(cidrs), now),
            Some(Converted::Skip) => {}
            // Invalid now: whatever we had for it goes.
            None => self.delete_object(&object, now),
        }
    }

    fn delete_object(&mut self, object: &Object, now: Instant) {
        match object {
            Object::Service(s) => {
                if let Some(name) = namespaced(&s.metadata) {
                    self.set_service(name, None, now);
                }
            }
            Object::EndpointSlice(s) => {
                if let Some(name) = namespaced(&s.metadata) {
                    self.set_slice(name, None, now);
                }
            }
            Object::Node(n) => {
                if let Some(name) = n.metadata.name.clone() {
                    self.set_node(name, None, now);
                }
            }
            Object::ServiceCidr(c) => {
                if let Some(name) = c.metadata.name.clone() {
                    self.set_cidr(name, None, now);
                }
            }
        }
    }

    fn set_service(&mut self, name: ObjectName, new: Option<Service>, now: Instant) {
        let changed = match &new {
            Some(s) => self.snapshot.services.get(&name) != Some(s),
            None => self.snapshot.services.contains_key(&name),
        };
        if !changed {
            return;
        }
        match new {
            Some(s) => self.snapshot.services.insert(name.clone(), s),
            None => self.snapshot.services.remove(&name),
        };
        self.stats.service_changes += 1;
        self.stats.service_changes_pending += 1;
        self.dirty.insert(name);
        self.mark_pending(now);
    }

    /// Returns whether anything changed.
    fn set_slice(&mut self, name: ObjectName, new: Option<EndpointSlice>, now: Instant) -> bool {
        let old = self.snapshot.slices.get(&name);
        if old == new.as_ref() {
            return false;
        }
        let owner = |s: &EndpointSlice| {
            s.service_name
                .as_ref()
                .map(|svc| ObjectName::new(s.name.namespace.clone(), svc.clone()))
        };
        let owners: Vec<ObjectName> = old
            .and_then(owner)
            .into_iter()
            .chain(new.as_ref().and_then(owner))
            .collect();
        match new {
            Some(s) => self.snapshot.slices.insert(name, s),
            None => self.snapshot.slices.remove(&name),
        };
        self.stats.endpoint_changes += 1;
        self.stats.endpoint_changes_pending += 1;
        if !owners.is_empty() {
            self.dirty.extend(owners);
            self.mark_pending(now);
        }
        true
    }

    fn set_node(&mut self, name: String, new: Option<Node>, now: Instant) {
        if name != self.config.node_name || self.snapshot.nodes.get(&name) == new.as_ref() {
            return;
        }
        match new {
            Some(n) => self.snapshot.nodes.insert(name, n),
            None => self.snapshot.nodes.remove(&name),
        };
        self.other_dirty = true;
        self.mark_pending(now);
    }

    fn set_cidr(&mut self, name: String, new: Option<Vec<IpNet>>, now: Instant) {
        if self.snapshot.service_cidrs.get(&name) == new.as_ref() {
            return;
        }
        match new {
            Some(c) => self.snapshot.service_cidrs.insert(name, c),
            None => self.snapshot.service_cidrs.remove(&name),
        };
        self.other_dirty = true;
        self.mark_pending(now);
    }

    /// Replaces every kind's objects with the relist's.
    fn swap_all(&mut self, mut relist: Relist, now: Instant) {
        for kind in [
            ResourceKind::Service,
            ResourceKind::EndpointSlice,
            ResourceKind::Node,
            ResourceKind::ServiceCidr,
        ] {
            self.swap(kind, &mut relist, now);
        }
    }

    /// Replaces every object of `kind` with a relist's, marking only real changes.
    fn swap(&mut self, kind: ResourceKind, relist: &mut Relist, now: Instant) {
        match kind {
            ResourceKind::Service => self.swap_map(
                |s| &s.services,
                std::mem::take(&mut relist.services),
                |e, k, v, now| e.set_service(k, v, now),
                now,
            ),
            ResourceKind::EndpointSlice => self.swap_map(
                |s| &s.slices,
                std::mem::take(&mut relist.slices),
                |e, k, v, now| {
                    e.set_slice(k, v, now);
                },
                now,
            ),
            ResourceKind::Node => {
                let name = self.config.node_name.clone();
                let node = relist.nodes.get(&name).cloned();
                self.set_node(name, node, now);
            }
            ResourceKind::ServiceCidr => self.swap_map(
                |s| &s.service_cidrs,
                std::mem::take(&mut relist.cidrs),
                |e, k, v, now| e.set_cidr(k, v, now),
                now,
            ),
        }
    }

    /// Deletes the objects of one map that `new` lacks, then sets every object of `new`.
    fn swap_map<K: Ord + Clone, V>(
        &mut self,
        current: fn(&Snapshot) -> &BTreeMap<K, V>,
        new: BTreeMap<K, V>,
        set: fn(&mut Self, K, Option<V>, Instant),
        now: Instant,
    ) {
        let gone: Vec<K> = current(&self.snapshot)
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            set(self, k, None, now);
        }
        for (k, v) in new {
            set(self, k, Some(v), now);
        }
    }
}

/// The EndpointSlice annotation kube-proxy measures network programming latency from.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// An object after validation.
enum Converted {
    Service(Service),
    Slice(EndpointSlice),
    Node(Node),
    Cidr(String, Vec<IpNet>),
    /// Not for us (another node).
    Skip,
}

fn namespaced(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectName> {
    let name = metadata.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    Some(ObjectName::new(namespace, name))
}

fn object_label(object: &Object) -> String {
    let (kind, meta) = match object {
        Object::Service(o) => ("Service", &o.metadata),
        Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
        Object::Node(o) => ("Node", &o.metadata),
        Object::ServiceCidr(o) => ("ServiceCIDR", &o.metadata),
    };
    let name = meta.name.as_deref().unwrap_or("(unnamed)");
    match meta.namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Fake;
    use serde_json::json;

    const ALL: [ResourceKind; 3] = [
        ResourceKind::Service,
        ResourceKind::EndpointSlice,
        ResourceKind::Node,
    ];

    fn config() -> ProxyConfig {
        ProxyConfig {
            node_name: "node-a".into(),
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..ProxyConfig::default()
        }
    }

    fn service(name: &str, ip: &str, proto: &str) -> Object {
        let svc: corev1::Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 53, "protocol": proto}]}
        }))
        .unwrap();
        svc.into()
    }

    fn slice(name: &str, svc: &str, proto: &str, ips: &[&str]) -> Object {
        let eps: Vec<_> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "nodeName": "node-b"}))
            .collect();
        let s: discoveryv1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": 5353, "protocol": proto}],
            "endpoints": eps
        }))
        .unwrap();
        s.into()
    }

    fn node() -> Object {
        let n: corev1::Node = serde_json::from_value(json!({
            "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}
        }))
        .unwrap();
        n.into()
    }

    /// Runs every due action against `fake` until the engine has nothing to do at `now`;
    /// returns the transactions sent.
    fn drive(engine: &mut Engine, fake: &mut Fake, now: Instant) -> Vec<ApplyAction> {
        let mut sent = Vec::new();
        while let Some(action) = engine.poll(now) {
            match action {
                Action::ReadBack => engine.readback_done(Ok(fake.dump().clone()), now),
                Action::Apply(a) => {
                    let r = fake.apply(&a.transaction).map_err(|e| e.to_string());
                    sent.push(a);
                    engine.apply_done(r, now);
                }
                Action::DeleteConntrack(flows) => engine.conntrack_done(Ok(flows.len()), now),
            }
        }
        sent
    }

    /// An engine that has seen the initial lists of one UDP service with two endpoints.
    fn started(t0: Instant) -> Engine {
        let mut e = Engine::new(config(), SyncTiming::default(), &ALL, t0).unwrap();
        for kind in ALL {
            e.handle(Event::InitStarted(kind), t0);
        }
        e.handle(Event::InitApply(service("dns", "172.30.0.10", "UDP")), t0);
        e.handle(
            Event::InitApply(slice("dns-1", "dns", "UDP", &["10.0.1.5", "10.0.1.6"])),
            t0,
        );
        e.handle(Event::InitApply(node()), t0);
        e
    }

    fn list_done(e: &mut Engine, t: Instant) {
        for kind in ALL {
            e.handle(Event::InitDone(kind), t);
        }
    }

    fn expected(e: &Engine) -> Ruleset {
        crate::compile(e.snapshot(), e.config()).unwrap().ruleset
    }

    #[test]
    fn nothing_is_programmed_before_every_initial_list() {
        let t0 = Instant::now();
        let mut e = started(t0);
        e.handle(Event::InitDone(ResourceKind::Service), t0);
        e.handle(Event::InitDone(ResourceKind::EndpointSlice), t0);
        assert_eq!(e.poll(t0), None, "the Node list is not done");
        assert_eq!(e.poll_timeout(), None);
        e.handle(Event::InitDone(ResourceKind::Node), t0);
        assert_eq!(e.poll(t0), Some(Action::ReadBack));
    }

    #[test]
    fn first_sync_reads_back_and_programs_the_snapshot() {
        let t0 = Instant::now();
        let mut e = started(t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        let sent = drive(&mut e, &mut fake, t0);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].full);
        assert_eq!(fake.dump(), &expected(&e));
        assert_eq!(e.last_sync().unwrap().error, None);
        assert!(e.health(t0).healthy);
        // Nothing more to do until the hourly full sync.
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn restart_on_a_programmed_node_sends_nothing() {
        let t0 = Instant::now();
        let mut e = started(t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        drive(&mut e, &mut fake, t0);
        let mut again = started(t0);
        list_done(&mut again, t0);
        assert_eq!(again.poll(t0), Some(Action::ReadBack));
        again.readback_done(Ok(fake.dump().clone()), t0);
        assert_eq!(
            again.poll(t0),
            None,
            "no transaction for an unchanged cluster"
        );
        let report = again.last_sync().unwrap();
        assert!(report.full && report.ops == 0 && report.error.is_none());
    }

    #[test]
    fn changes_are_coalesced_and_sent_as_one_partial_transaction() {
        let t0 = Instant::now();
        let mut e = started(t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        drive(&mut e, &mut fake, t0);
        let t1 = t0 + Duration::from_millis(100);
        e.handle(
            Event::Apply(slice(
                "dns-1",
                "dns",
                "UDP",
                &["10.0.1.5", "10.0.1.6", "10.0.1.7"],
            )),
            t1,
        );
        e.handle(Event::Apply(service("web", "172.30.0.11", "TCP")), t1);
        assert_eq!(e.poll(t1), None, "within minSyncPeriod of the last sync");
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(e.health(t1).oldest_pending == Some(t1));
        let t2 = t0 + Duration::from_secs(1);
        let sent = drive(&mut e, &mut fake, t2);
        assert_eq!(sent.len(), 1);
        assert!(!sent[0].full);
        assert_eq!(e.last_sync().unwrap().services, 2);
        assert_eq!(fake.dump(), &expected(&e));
        assert_eq!(e.health(t2).oldest_pending, None);
        // The same objects again change nothing.
        e.handle(Event::Apply(service("web", "172.30.0.11", "TCP")), t2);
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn removed_udp_endpoint_asks_for_conntrack_cleanup() {
        let t0 = Instant::now();
        let mut e = started(t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        drive(&mut e, &mut fake, t0);
        let t1 = t0 + Duration::from_secs(2);
        e.handle(
            Event::Apply(slice("dns-1", "dns", "UDP", &["10.0.1.5"])),
            t1,
        );
        let Some(Action::Apply(a)) = e.poll(t1) else {
            panic!("expected a transaction")
        };
        fake.apply(&a.transaction).unwrap();
        e.apply_done(Ok(()), t1);
        match e.poll(t1) {
            Some(Action::DeleteConntrack(flows)) => {
                assert_eq!(flows.len(), 1);
                assert_eq!(flows[0].dnat_to, Some("10.0.1.6".parse().unwrap()));
                assert_eq!(flows[0].port, 53);
            }
            other => panic!("expected a conntrack deletion, got {other:?}"),
        }
        assert_eq!(e.poll(t1), None, "waits for the conntrack result");
        e.conntrack_done(Ok(1), t1);
        assert_eq!(e.poll(t1), None);
        assert_eq!(e.stats().conntrack_filters, 1);
    }

    #[test]
    fn a_failed_transaction_is_retried_after_sync_period_with_a_full_resync() {
        let t0 = Instant::now();
        let mut e = started(t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        drive(&mut e, &mut fake, t0);
        let t1 = t0 + Duration::from_secs(5);
        e.handle(Event::Apply(service("web", "172.30.0.11", "TCP")), t1);
        let Some(Action::Apply(_)) = e.poll(t1) else {
            panic!("expected a transaction")
        };
        let report = e
            .apply_done(Err("nft: Operation not permitted".into()), t1)
            .unwrap();
        assert_eq!(
            report.error.as_deref(),
            Some("nft: Operation not permitted")
        );
        assert_eq!(e.stats().sync_failures, 1);
        assert_eq!(e.poll(t1 + Duration::from_secs(29)), None);
        assert_eq!(e.poll_timeout(), Some(t1 + Duration::from_secs(30)));
        // Still healthy within 2 x syncPeriod of the change, unhealthy after.
        assert!(e.health(t1 + Duration::from_secs(60)).healthy);
        assert!(!e.health(t1 + Duration::from_secs(61)).healthy);
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(e.poll(t2), Some(Action::ReadBack));
        e.readback_done(Ok(fake.dump().clone()), t2);
        let Some(Action::Apply(a)) = e.poll(t2) else {
            panic!("expected the resync transaction")
        };
        assert!(a.full);
        fake.apply(&a.transaction).unwrap();
        let report = e.apply_done(Ok(()), t2).unwrap();
        assert_eq!(
            report.services, 1,
            "the resync carries the failed sync's service"
        );
        assert_eq!(fake.dump(), &expected(&e));
        assert!(e.health(t2 + Duration::from_secs(100)).healthy);
    }

    #[test]
    fn relist_swaps_the_kind_and_sends_only_what_changed() {
        let t0 = Instant::now();
        let mut e = started(t0);
        e.handle(Event::InitApply(service("gone", "172.30.0.12", "TCP")), t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        drive(&mut e, &mut fake, t0);
        // A relist (after 410 Gone) with the same objects: nothing to send.
        let t1 = t0 + Duration::from_secs(10);
        e.handle(Event::InitStarted(ResourceKind::Service), t1);
        e.handle(Event::InitApply(service("dns", "172.30.0.10", "UDP")), t1);
        e.handle(Event::InitApply(service("gone", "172.30.0.12", "TCP")), t1);
        e.handle(Event::InitDone(ResourceKind::Service), t1);
        assert!(drive(&mut e, &mut fake, t1).is_empty());
        assert_eq!(e.stats().services_pending, 0);
        // A relist without `gone` (deleted while disconnected): only it is removed.
        let t2 = t1 + Duration::from_secs(10);
        e.handle(Event::InitStarted(ResourceKind::Service), t2);
        e.handle(Event::InitApply(service("dns", "172.30.0.10", "UDP")), t2);
        e.handle(Event::InitDone(ResourceKind::Service), t2);
        let sent = drive(&mut e, &mut fake, t2);
        assert_eq!(sent.len(), 1);
        assert_eq!(e.last_sync().unwrap().services, 1);
        assert!(sent[0]
            .transaction
            .ops
            .iter()
            .all(|op| matches!(op, plan::Op::DeleteElements { .. })));
        assert!(!e
            .snapshot()
            .services
            .contains_key(&ObjectName::new("default", "gone")));
        assert_eq!(fake.dump(), &expected(&e));
    }

    #[test]
    fn hourly_full_sync_repairs_drift() {
        let t0 = Instant::now();
        let mut e = started(t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        drive(&mut e, &mut fake, t0);
        // Someone deletes our table by hand.
        fake = Fake::new();
        let t1 = t0 + Duration::from_secs(3600);
        let sent = drive(&mut e, &mut fake, t1);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].full);
        assert_eq!(fake.dump(), &expected(&e));
    }

    #[test]
    fn other_nodes_and_invalid_objects() {
        let t0 = Instant::now();
        let mut e = started(t0);
        list_done(&mut e, t0);
        let mut fake = Fake::new();
        drive(&mut e, &mut fake, t0);
        let other: corev1::Node =
            serde_json::from_value(json!({"metadata": {"name": "node-b"}})).unwrap();
        e.handle(Event::Apply(other.into()), t0);
        assert!(!e.snapshot().nodes.contains_key("node-b"));
        let bad: corev1::Service = serde_json::from_value(json!({
            "metadata": {"name": "dns", "namespace": "default"},
            "spec": {"clusterIP": "172.30.0.10", "ports": [{"port": 53, "protocol": "ICMP"}]}
        }))
        .unwrap();
        let warnings = e.handle(Event::Apply(bad.into()), t0);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].object, "Service default/dns");
        assert!(
            warnings[0].message.contains("spec.ports[0].protocol"),
            "{}",
            warnings[0]
        );
        assert!(
            e.snapshot().services.is_empty(),
            "an invalid update removes the service"
        );
    }

    #[test]
    fn engine_needs_services_and_slices() {
        let r = Engine::new(
            config(),
            SyncTiming::default(),
            &[ResourceKind::Node],
            Instant::now(),
        );
        assert!(matches!(r, Err(EngineError::NothingWatched)));
    }
}
