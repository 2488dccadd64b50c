//! The daemon's HTTP interface, as kube-proxy's: the health server (`/healthz`, `/livez`), one
//! healthCheckNodePort server per `externalTrafficPolicy: Local` Service, and the metrics server
//! (`/metrics`, `/healthz`, `/proxyMode`, `/configz`).
//!
//! Everything served is read from [`Shared`], which the main loop refreshes from the engine after
//! every event and action: there is no second source of truth.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use nftproxy_core::engine::{HealthCheckService, SyncReport};
use nftproxy_core::snapshot::{IpFamily, ObjectName};
use nftproxy_core::Engine;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn family_label(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

fn ip_family(f: IpFamily) -> Labels {
    vec![("ip_family", family_label(f).to_owned())]
}

fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// kube-proxy's network programming buckets: 0.25, 0.5, 1..59 by 1 s, 60..115 by 5 s, 120..300
/// by 30 s.
fn network_programming_histogram() -> Histogram {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    Histogram::new(b)
}

/// kube-proxy's metrics (nftables mode) and ours.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histograms,
    full_sync_duration: Histograms,
    partial_sync_duration: Histograms,
    network_programming: Histograms,
    last_timestamp: Family<Labels, FloatGauge>,
    last_queued_timestamp: Family<Labels, FloatGauge>,
    endpoint_changes_pending: Gauge,
    endpoint_changes_total: Counter,
    service_changes_pending: Gauge,
    service_changes_total: Counter,
    sync_failures: Family<Labels, Counter>,
    no_local_endpoints: Family<Labels, Gauge>,
    healthz: Family<Labels, Counter>,
    livez: Family<Labels, Counter>,
    ruleset_elements: Family<Labels, Gauge>,
    last_transaction_ops: Gauge,
    conntrack_filters: Counter,
    conntrack_duration: Histograms,
    conntrack_deleted: Family<Labels, Counter>,
    seen: nftproxy_core::engine::Stats,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let h = || Histograms::new_with_constructor(sync_histogram as fn() -> Histogram);
        let m = Self {
            sync_duration: h(),
            full_sync_duration: h(),
            partial_sync_duration: h(),
            network_programming: Histograms::new_with_constructor(
                network_programming_histogram as fn() -> Histogram,
            ),
            last_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            sync_failures: Family::default(),
            no_local_endpoints: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            ruleset_elements: Family::default(),
            last_transaction_ops: Gauge::default(),
            conntrack_filters: Counter::default(),
            conntrack_duration: h(),
            conntrack_deleted: Family::default(),
            seen: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.full_sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.partial_sync_duration.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes_total.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes_total.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.sync_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez.clone(),
        );
        r.register(
            "nftproxy_ruleset_elements",
            "Map and set elements in our ruleset",
            m.ruleset_elements.clone(),
        );
        r.register(
            "nftproxy_last_transaction_operations",
            "Operations in the last transaction sent",
            m.last_transaction_ops.clone(),
        );
        r.register(
            "nftproxy_conntrack_filters",
            "Cumulative conntrack deletion filters run for stale UDP flows",
            m.conntrack_filters.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "Time spent deleting stale UDP conntrack entries after a sync",
            m.conntrack_duration.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative stale UDP conntrack entries deleted",
            m.conntrack_deleted.clone(),
        );
        Self { registry, ..m }
    }

    /// Records a stale-flow cleanup after a sync.
    pub fn observe_conntrack(&self, took: Duration, deleted: u64, families: &[IpFamily]) {
        for f in families {
            let l = ip_family(*f);
            self.conntrack_duration
                .get_or_create(&l)
                .observe(took.as_secs_f64());
            self.conntrack_deleted.get_or_create(&l).inc_by(deleted);
        }
    }

    /// Records a finished sync.
    pub fn observe_sync(&self, r: &SyncReport, families: &[IpFamily]) {
        let secs = r.duration.as_secs_f64();
        let now = unix_seconds(SystemTime::now());
        for f in families {
            let l = ip_family(*f);
            if r.error.is_some() {
                self.sync_failures.get_or_create(&l).inc();
                continue;
            }
            self.sync_duration.get_or_create(&l).observe(secs);
            if r.full {
                self.full_sync_duration.get_or_create(&l).observe(secs);
            } else {
                self.partial_sync_duration.get_or_create(&l).observe(secs);
            }
            self.last_timestamp.get_or_create(&l).set(now);
            for t in &r.trigger_times {
                if let Ok(ts) = t.parse::<jiff::Timestamp>() {
                    let latency = jiff::Timestamp::now().duration_since(ts).as_secs_f64();
                    if latency >= 0.0 {
                        self.network_programming.get_or_create(&l).observe(latency);
                    }
                }
            }
        }
        if r.error.is_none() {
            self.last_transaction_ops.set(r.ops as i64);
        }
    }

    /// Brings counters and gauges in line with the engine.
    pub fn refresh(&mut self, engine: &Engine) {
        let s = engine.stats();
        self.endpoint_changes_total
            .inc_by(s.endpoint_changes - self.seen.endpoint_changes);
        self.service_changes_total
            .inc_by(s.service_changes - self.seen.service_changes);
        self.conntrack_filters
            .inc_by(s.conntrack_filters - self.seen.conntrack_filters);
        if s.endpoint_changes_pending + s.service_changes_pending
            > self.seen.endpoint_changes_pending + self.seen.service_changes_pending
        {
            let now = unix_seconds(SystemTime::now());
            for f in engine.families() {
                self.last_queued_timestamp
                    .get_or_create(&ip_family(f))
                    .set(now);
            }
        }
        self.endpoint_changes_pending
            .set(s.endpoint_changes_pending as i64);
        self.service_changes_pending
            .set(s.service_changes_pending as i64);
        self.seen = s;
        for (f, internal, external) in engine.no_local_endpoints() {
            for (policy, n) in [("internal", internal), ("external", external)] {
                let l = vec![
                    ("ip_family", family_label(f).to_owned()),
                    ("traffic_policy", policy.to_owned()),
                ];
                self.no_local_endpoints.get_or_create(&l).set(n as i64);
            }
        }
        for (f, table) in &engine.ruleset().tables {
            let n: usize = table.sets.values().map(|s| s.elements.len()).sum();
            self.ruleset_elements
                .get_or_create(&ip_family(*f))
                .set(n as i64);
        }
    }

    fn count(&self, livez: bool, code: u16) {
        let l = vec![("code", code.to_string())];
        if livez {
            self.livez.get_or_create(&l).inc();
        } else {
            self.healthz.get_or_create(&l).inc();
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the servers answer from, refreshed by the main loop.
#[derive(Debug)]
pub struct Shared {
    /// The engine's health inputs, in wall-clock terms.
    pub last_updated: SystemTime,
    /// Oldest change not yet applied.
    pub oldest_pending: Option<SystemTime>,
    /// Twice syncPeriod.
    pub health_timeout: Duration,
    /// kube-proxy's nodeEligible.
    pub node_eligible: bool,
    /// Families served.
    pub families: Vec<IpFamily>,
    /// Local ready endpoints of each health-checked Service.
    pub local_endpoints: BTreeMap<ObjectName, usize>,
    /// Metrics.
    pub metrics: Metrics,
    /// The effective configuration for `/configz`.
    pub configz: serde_json::Value,
}

/// A handle on [`Shared`].
pub type SharedState = Arc<Mutex<Shared>>;

fn to_wall(t: Instant) -> SystemTime {
    let now = Instant::now();
    let ago = now.saturating_duration_since(t);
    SystemTime::now() - ago
}

impl Shared {
    /// Fresh state before the first sync (healthy, as kube-proxy at start-up).
    pub fn new(health_timeout: Duration, configz: serde_json::Value) -> Self {
        Self {
            last_updated: SystemTime::now(),
            oldest_pending: None,
            health_timeout,
            node_eligible: false,
            families: vec![IpFamily::V4],
            local_endpoints: BTreeMap::new(),
            metrics: Metrics::new(),
            configz,
        }
    }

    /// Copies what the servers need from the engine.
    pub fn refresh(&mut self, engine: &Engine) {
        let h = engine.health(Instant::now());
        self.last_updated = to_wall(h.last_updated);
        self.oldest_pending = h.oldest_pending.map(to_wall);
        self.node_eligible = engine.node_eligible();
        self.families = engine.families();
        self.local_endpoints = engine
            .health_check_services()
            .into_iter()
            .map(|s| (s.name, s.local_endpoints))
            .collect();
        self.metrics.refresh(engine);
    }

    fn healthy(&self, now: SystemTime) -> bool {
        self.oldest_pending
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() <= self.health_timeout)
    }
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn json_response(code: StatusCode, body: String, extra: Option<(HeaderName, String)>) -> Response {
    let mut resp = (code, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    if let Some((name, value)) = extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

/// `/healthz` (with `nodeEligible`) and `/livez` (without) bodies, as kube-proxy writes them.
fn health_body(shared: &Shared, livez: bool) -> (StatusCode, String) {
    let now = SystemTime::now();
    let healthy = shared.healthy(now);
    // When healthy, lastUpdated reads "now" (kube-proxy keeps that for compatibility).
    let last = if healthy { now } else { shared.last_updated };
    let status = shared
        .families
        .iter()
        .map(|f| {
            (
                family_label(*f),
                FamilyStatus {
                    last_updated: rfc3339(last),
                    healthy,
                },
            )
        })
        .collect();
    let body = HealthBody {
        last_updated: rfc3339(last),
        current_time: rfc3339(now),
        node_eligible: (!livez).then_some(shared.node_eligible),
        healthy,
        status,
    };
    let ok = healthy && (livez || shared.node_eligible);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    shared.metrics.count(livez, code.as_u16());
    // Serializing plain strings and booleans cannot fail.
    (code, serde_json::to_string(&body).unwrap_or_default())
}

/// kube-proxy's health body, fields in its order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    status: BTreeMap<&'static str, FamilyStatus>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyStatus {
    last_updated: String,
    healthy: bool,
}

/// Locks the shared state. A panic while holding the lock leaves plain data behind: keep using it.
pub fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn healthz(State(state): State<SharedState>) -> Response {
    let (code, body) = health_body(&lock(&state), false);
    json_response(code, body, None)
}

async fn livez(State(state): State<SharedState>) -> Response {
    let (code, body) = health_body(&lock(&state), true);
    json_response(code, body, None)
}

async fn metrics(State(state): State<SharedState>) -> Response {
    let text = lock(&state).metrics.text();
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn configz(State(state): State<SharedState>) -> Response {
    let body = serde_json::json!({"kubeproxy.config.k8s.io": lock(&state).configz}).to_string();
    json_response(StatusCode::OK, body, None)
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("{what}: {addr:?} is not an ip:port"))?;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

/// Serves `app` on `addr` in the background; `what` names the config field in errors and logs.
async fn serve_on(addr: &str, what: &str, app: Router) -> anyhow::Result<()> {
    let listener = bind(addr, what).await?;
    tracing::info!("{what}: serving on {}", listener.local_addr()?);
    let what = what.to_owned();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("{what}: server stopped: {e}");
        }
    });
    Ok(())
}

/// Starts the health server on `addr` (kube-proxy's healthzBindAddress).
pub async fn start_health(addr: &str, state: SharedState) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", any(healthz))
        .route("/livez", any(livez))
        .with_state(state);
    serve_on(addr, "healthzBindAddress", app).await
}

/// Starts the metrics server on `addr` (kube-proxy's metricsBindAddress).
pub async fn start_metrics(addr: &str, state: SharedState) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", any(metrics))
        .route("/healthz", any(|| async { "ok" }))
        .route("/proxyMode", any(|| async { "nftables" }))
        .route("/configz", any(configz))
        .with_state(state);
    serve_on(addr, "metricsBindAddress", app).await
}

/// The body of a healthCheckNodePort answer (kube-proxy's, tab-indented, no trailing newline).
fn service_health_body(name: &ObjectName, local: usize, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        serde_json::Value::from(name.namespace.as_str()),
        serde_json::Value::from(name.name.as_str()),
    )
}

#[derive(Clone)]
struct ServiceHealth {
    name: ObjectName,
    state: SharedState,
}

async fn service_health(State(s): State<ServiceHealth>) -> Response {
    let shared = lock(&s.state);
    let local = shared.local_endpoints.get(&s.name).copied().unwrap_or(0);
    // The proxy's own health, the /livez notion (kube-proxy ignores nodeEligible here).
    let healthy = shared.healthy(SystemTime::now());
    let code = if local > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        code,
        service_health_body(&s.name, local, healthy),
        Some((
            HeaderName::from_static("x-load-balancing-endpoint-weight"),
            local.to_string(),
        )),
    )
}

/// A bind failure of a healthCheckNodePort server, for an Event on the Service.
#[derive(Debug, Clone)]
pub struct ListenFailure {
    /// The Service.
    pub service: ObjectName,
    /// The port.
    pub port: u16,
    /// The error, as kube-proxy puts it in the Event message.
    pub error: String,
}

/// The running healthCheckNodePort servers, kept in line with the Services.
#[derive(Debug, Default)]
pub struct ServiceHealthServers {
    /// Per Service: its port and one shutdown handle per listening address.
    running: BTreeMap<ObjectName, (u16, Vec<oneshot::Sender<()>>)>,
    /// Ports that could not be bound, so the failure is reported once per (service, port).
    failed: BTreeMap<ObjectName, u16>,
}

impl ServiceHealthServers {
    /// Opens servers for new Services, closes them for removed ones (after every sync, as
    /// kube-proxy's `SyncServices`). `addrs` are the node addresses NodePorts answer on, or
    /// `0.0.0.0`/`::` when NodePorts answer on every address. Returns the bind failures to
    /// report.
    pub async fn sync(
        &mut self,
        wanted: &[HealthCheckService],
        addrs: &[IpAddr],
        state: &SharedState,
    ) -> Vec<ListenFailure> {
        let wanted_map: BTreeMap<&ObjectName, u16> =
            wanted.iter().map(|s| (&s.name, s.port)).collect();
        self.running
            .retain(|name, (port, _)| wanted_map.get(name) == Some(port));
        self.failed
            .retain(|name, port| wanted_map.get(name) == Some(port));
        let mut failures = Vec::new();
        for svc in wanted {
            if self.running.contains_key(&svc.name) || self.failed.contains_key(&svc.name) {
                continue;
            }
            let mut handles = Vec::new();
            let mut error = None;
            for ip in addrs {
                let addr = SocketAddr::new(*ip, svc.port);
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let (tx, rx) = oneshot::channel::<()>();
                        let app =
                            Router::new()
                                .fallback(any(service_health))
                                .with_state(ServiceHealth {
                                    name: svc.name.clone(),
                                    state: state.clone(),
                                });
                        tokio::spawn(async move {
                            let _ = axum::serve(listener, app)
                                .with_graceful_shutdown(async {
                                    let _ = rx.await;
                                })
                                .await;
                        });
                        handles.push(tx);
                    }
                    Err(e) => error = Some(format!("listen tcp {addr}: {e}")),
                }
            }
            match error {
                Some(e) => {
                    tracing::warn!(
                        "failed to start healthcheck {:?} on port {}: {e}",
                        svc.name.to_string(),
                        svc.port
                    );
                    self.failed.insert(svc.name.clone(), svc.port);
                    failures.push(ListenFailure {
                        service: svc.name.clone(),
                        port: svc.port,
                        error: e,
                    });
                    // Keep whatever did bind.
                    if !handles.is_empty() {
                        self.running.insert(svc.name.clone(), (svc.port, handles));
                    }
                }
                None => {
                    tracing::info!(
                        "healthcheck for {:?} on port {}",
                        svc.name.to_string(),
                        svc.port
                    );
                    self.running.insert(svc.name.clone(), (svc.port, handles));
                }
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_health_body_is_kube_proxys() {
        let body = service_health_body(&ObjectName::new("default", "web"), 2, true);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
    }

    #[test]
    fn health_body_key_order_and_codes() {
        let mut s = Shared::new(Duration::from_secs(60), serde_json::json!({}));
        s.node_eligible = true;
        let (code, body) = health_body(&s, false);
        assert_eq!(code, StatusCode::OK);
        let at = |k: &str| body.find(&format!("\"{k}\":")).unwrap();
        let keys = [
            "lastUpdated",
            "currentTime",
            "nodeEligible",
            "healthy",
            "status",
        ];
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{body}");
        assert!(
            body.contains("\"status\":{\"IPv4\":{\"lastUpdated\":"),
            "{body}"
        );
        s.node_eligible = false;
        assert_eq!(health_body(&s, false).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            health_body(&s, true).0,
            StatusCode::OK,
            "livez ignores the node"
        );
        s.oldest_pending = Some(SystemTime::now() - Duration::from_secs(61));
        assert_eq!(health_body(&s, true).0, StatusCode::SERVICE_UNAVAILABLE);
        let text = s.metrics.text();
        for line in [
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 1",
            "kubeproxy_proxy_livez_total{code=\"503\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
