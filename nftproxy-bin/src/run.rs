//! `nftproxy run`: the node proxy. Watches the API server with kube-rs and drives the proxy
//! engine ([`nftproxy_core::Engine`]), carrying out its actions with nft and conntrack.
//!
//! One watcher task per kind (Services and EndpointSlices with kube-proxy's label selector, this
//! node's Node by field selector, ServiceCIDRs when the server serves them) feeds watch events
//! into one channel; the main loop hands them to the engine, carries out whatever the engine says
//! is due (on a blocking thread: nft is a process), and sleeps until the next event or the engine's
//! next deadline. Watch errors are logged and retried with kube-rs's default backoff; while the
//! API server is away the rules stay exactly as they are. SIGTERM and SIGINT end the process and
//! leave the rules in place, as kube-proxy does (`nftproxy cleanup` removes them).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use nftproxy_core::engine::{Event, Object, ResourceKind, SyncReport};
use nftproxy_core::parse::DaemonConfig;
use nftproxy_core::snapshot::IpFamily;
use nftproxy_core::Engine;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::nft::{Backend, Nft};
use crate::probe;
use crate::serve::{self, lock, ServiceHealthServers, Shared, SharedState};
use crate::sync::Kernel;

/// kube-proxy's label selector for Services and EndpointSlices without a serviceProxyName.
const DEFAULT_SELECTOR: &str =
    "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// kube-proxy's tables in nftables mode, removed on takeover with `--cleanup-kube-proxy`.
const KUBE_PROXY_TABLES: [(&str, &str); 2] = [("ip", "kube-proxy"), ("ip6", "kube-proxy")];

/// How to reach the API server and what else `run` needs beyond the daemon config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The configuration (file and flags merged).
    pub config: DaemonConfig,
    /// `--kubeconfig` (else `clientConnection.kubeconfig`, else in-cluster, else the default
    /// kubeconfig locations).
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: overrides the server URL.
    pub master: Option<String>,
    /// nft backend (default: probed).
    pub backend: Option<Backend>,
    /// Remove kube-proxy's `ip`/`ip6 kube-proxy` tables after our first successful sync.
    pub cleanup_kube_proxy: bool,
    /// Set the conntrack sysctls from `config.conntrack` after the first successful sync (when
    /// the conntrack module is loaded: our rules use it).
    pub conntrack_sysctls: bool,
}

/// Runs the proxy until SIGTERM or SIGINT.
pub fn run(opts: RunOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(opts))
}

async fn client(opts: &RunOptions) -> Result<Client> {
    let path = opts
        .kubeconfig
        .clone()
        .or_else(|| opts.config.kubeconfig.clone().map(PathBuf::from));
    let mut config = match &path {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => kube::Config::infer().await.context(
                "no --kubeconfig given, not running in a pod, and no usable default kubeconfig",
            )?,
        },
    };
    if let Some(master) = &opts.master {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master: {master:?} is not a valid URL"))?;
    }
    tracing::info!("API server {}", config.cluster_url);
    Client::try_from(config).context("creating the Kubernetes client")
}

/// Whether the server serves `networking.k8s.io/v1` ServiceCIDRs we may list; retried until the
/// API server answers (a 404 or 403 is an answer).
async fn service_cidrs_available(client: &Client) -> bool {
    let api: Api<ServiceCIDR> = Api::all(client.clone());
    let mut delay = Duration::from_millis(500);
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::info!("the API server does not serve networking.k8s.io/v1 ServiceCIDRs");
                return false;
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::warn!(
                    "not allowed to list networking.k8s.io/v1 servicecidrs ({}); ServiceCIDRs are not watched",
                    e.message
                );
                return false;
            }
            Err(e) => {
                tracing::warn!("API server not reachable yet: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Applies the `conntrack:` settings and logs what changed.
fn set_conntrack_sysctls(settings: &nftproxy_core::parse::ConntrackSettings) {
    use crate::sysctl::{apply, Change, Roots};
    for change in apply(settings, &Roots::system()) {
        match change {
            Change::Set(..) => tracing::info!("conntrack sysctl {change}"),
            Change::Failed(..) => tracing::warn!("conntrack sysctl {change}"),
            Change::Kept(_) | Change::NotOurs(_) => tracing::debug!("conntrack sysctl {change}"),
        }
    }
}

/// Forwards one kind's watch events to the engine's channel until the receiver goes away.
fn spawn_watch<K>(
    kind: ResourceKind,
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::UnboundedSender<Event>,
) where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K: Into<Object>,
{
    tokio::spawn(async move {
        forward(kind, watcher(api, config), tx).await;
    });
}

/// Retry delays after watch errors: 0.8 s doubling to 30 s (client-go's), with jitter, but reset
/// by the first successful response, so a returning API server is followed at once.
#[derive(Debug, Default)]
struct Backoff {
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);

    fn next(&mut self) -> Duration {
        self.delay = if self.delay.is_zero() {
            Self::FIRST
        } else {
            (self.delay * 2).min(Self::MAX)
        };
        // Up to 20% jitter, so the watchers of many nodes do not retry in step.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.delay + self.delay.mul_f64(f64::from(nanos % 1000) / 5000.0)
    }

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// Is this the API server saying our resource version is too old (410 Gone)? The watcher then
/// relists on its next poll, which should happen at once.
fn is_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

async fn forward<K: Into<Object>>(
    kind: ResourceKind,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    let mut backoff = Backoff::default();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(watcher::Event::Apply(o)) => Event::Apply(o.into()),
            Ok(watcher::Event::Delete(o)) => Event::Delete(o.into()),
            // Emitted before the list request: not yet a sign the server answers.
            Ok(watcher::Event::Init) => {
                if tx.send(Event::InitStarted(kind)).is_err() {
                    return;
                }
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => Event::InitApply(o.into()),
            Ok(watcher::Event::InitDone) => Event::InitDone(kind),
            Err(e) if is_gone(&e) => {
                tracing::info!("watching {kind}s: resource version expired (410); relisting");
                continue;
            }
            Err(e) => {
                // The rules stay as they are meanwhile.
                let delay = backoff.next();
                tracing::warn!(
                    "watching {kind}s: {}; retrying in {:.1} s",
                    describe_watch_error(&e),
                    delay.as_secs_f64()
                );
                failing = true;
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        if failing {
            tracing::info!("watching {kind}s again");
            failing = false;
        }
        if tx.send(event).is_err() {
            return;
        }
    }
}

fn describe_watch_error(e: &watcher::Error) -> String {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(a))
        | watcher::Error::WatchStartFailed(kube::Error::Api(a)) => Some(a.as_ref()),
        watcher::Error::WatchError(a) => Some(a.as_ref()),
        _ => None,
    };
    match api {
        Some(a) if a.code == 403 => format!("forbidden (403): {}", a.message),
        _ => e.to_string(),
    }
}

fn log_sync(r: &SyncReport) {
    let kind = if r.full { "full" } else { "partial" };
    let ms = r.duration.as_secs_f64() * 1e3;
    match &r.error {
        None => tracing::info!(
            "sync done: kind={kind} ops={} elements={} services={} duration_ms={ms:.1}",
            r.ops,
            r.elements,
            r.services
        ),
        Some(e) => tracing::warn!(
            "sync failed: kind={kind} ops={} services={} duration_ms={ms:.1} error={e:?}",
            r.ops,
            r.services
        ),
    }
}

/// Deletes kube-proxy's nftables tables (they are recreated by kube-proxy only if it runs again).
fn remove_kube_proxy_tables(nft: &Nft) {
    for (family, name) in KUBE_PROXY_TABLES {
        match nft.run(&["delete", "table", family, name], None) {
            Ok(_) => tracing::info!("took over from kube-proxy: deleted table {family} {name}"),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!("could not delete kube-proxy's table {family} {name}: {e}"),
        }
    }
}

async fn run_async(opts: RunOptions) -> Result<()> {
    let config = &opts.config;
    if config.proxy.node_name.is_empty() {
        bail!("no node name: pass --hostname-override or set hostnameOverride in the config");
    }
    let nft = Nft::from_env();
    let caps = {
        let nft = nft.clone();
        tokio::task::spawn_blocking(move || probe::probe(&nft)).await??
    };
    let backend = caps.choose(opts.backend)?;
    tracing::info!(
        "nft {}: using the {} backend; node {}, table {}",
        caps.version,
        backend.as_str(),
        config.proxy.node_name,
        config.proxy.table_name
    );
    // One writer per table: held for as long as the daemon runs (a rolling update's old pod may
    // still be finishing).
    let _lock = {
        let (nft, table) = (nft.clone(), config.proxy.table_name.clone());
        tokio::task::spawn_blocking(move || {
            crate::lock::lock_table(&nft, &table, Duration::from_secs(60))
        })
        .await??
    };
    let kernel = Kernel {
        nft: nft.clone(),
        backend,
        table: config.proxy.table_name.clone(),
    };

    let client = client(&opts).await?;
    let watch_cidrs = service_cidrs_available(&client).await;
    let mut kinds = vec![
        ResourceKind::Service,
        ResourceKind::EndpointSlice,
        ResourceKind::Node,
    ];
    if watch_cidrs {
        kinds.push(ResourceKind::ServiceCidr);
    }
    let mut engine = Engine::new(config.proxy.clone(), config.timing, &kinds, Instant::now())?;

    let shared: SharedState = std::sync::Arc::new(std::sync::Mutex::new(Shared::new(
        config.timing.sync_period * 2,
        configz(config),
    )));
    for (addr, what, start) in [
        (&config.healthz_bind_address, "health", true),
        (&config.metrics_bind_address, "metrics", false),
    ] {
        if addr.is_empty() {
            continue;
        }
        let started = if start {
            serve::start_health(addr, shared.clone()).await
        } else {
            serve::start_metrics(addr, shared.clone()).await
        };
        // The proxy matters more than its probes: keep going without the server.
        if let Err(e) = started {
            tracing::error!("{what} server not started: {e:#}");
        }
    }
    let mut health_servers = ServiceHealthServers::default();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "nftproxy".into(),
            instance: Some(config.proxy.node_name.clone()),
        },
    );

    let selector = match &config.proxy.service_proxy_name {
        None => DEFAULT_SELECTOR.to_owned(),
        Some(name) => {
            format!(
                "!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name={name}"
            )
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let labelled = watcher::Config::default().labels(&selector);
    spawn_watch::<Service>(
        ResourceKind::Service,
        Api::all(client.clone()),
        labelled.clone(),
        tx.clone(),
    );
    spawn_watch::<EndpointSlice>(
        ResourceKind::EndpointSlice,
        Api::all(client.clone()),
        labelled,
        tx.clone(),
    );
    spawn_watch::<Node>(
        ResourceKind::Node,
        Api::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", config.proxy.node_name)),
        tx.clone(),
    );
    if watch_cidrs {
        spawn_watch::<ServiceCIDR>(
            ResourceKind::ServiceCidr,
            Api::all(client.clone()),
            watcher::Config::default(),
            tx.clone(),
        );
    }
    drop(tx);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut initialized = false;
    let mut took_over = !opts.cleanup_kube_proxy;
    let mut sysctls_done = !opts.conntrack_sysctls;
    let mut finished_syncs = 0u64;
    loop {
        // Carry out whatever is due.
        while let Some(action) = engine.poll(Instant::now()) {
            let k = kernel.clone();
            let started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || k.perform(action))
                .await
                .context("nft worker thread")?;
            match &outcome {
                crate::sync::Outcome::Conntrack(Err(e)) => {
                    tracing::warn!("deleting stale UDP conntrack entries: {e}");
                }
                crate::sync::Outcome::Conntrack(Ok(f)) => {
                    lock(&shared).metrics.observe_conntrack(
                        started.elapsed(),
                        f.deleted,
                        &engine.families(),
                    );
                }
                _ => {}
            }
            outcome.report(&mut engine);
        }
        let stats = engine.stats();
        if stats.syncs + stats.sync_failures != finished_syncs {
            finished_syncs = stats.syncs + stats.sync_failures;
            if let Some(r) = engine.last_sync().cloned() {
                log_sync(&r);
                lock(&shared).metrics.observe_sync(&r, &engine.families());
                if r.error.is_none() {
                    if !took_over {
                        let nft = nft.clone();
                        tokio::task::spawn_blocking(move || remove_kube_proxy_tables(&nft)).await?;
                        took_over = true;
                    }
                    if !sysctls_done {
                        set_conntrack_sysctls(&config.conntrack);
                        sysctls_done = true;
                    }
                    let wanted = engine.health_check_services();
                    let addrs = health_check_addresses(&engine);
                    for f in health_servers.sync(&wanted, &addrs, &shared).await {
                        report_listen_failure(&recorder, &config.proxy.node_name, &f).await;
                    }
                }
            }
        }
        lock(&shared).refresh(&engine);
        let deadline = engine.poll_timeout();
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { bail!("every watch ended") };
                handle(&mut engine, event);
                // Take everything already queued before syncing.
                while let Ok(event) = rx.try_recv() {
                    handle(&mut engine, event);
                }
                lock(&shared).refresh(&engine);
                if !initialized && engine.is_initialized() {
                    initialized = true;
                    let s = engine.snapshot();
                    tracing::info!(
                        "initial lists complete: {} services, {} endpoint slices, node {}",
                        s.services.len(),
                        s.slices.len(),
                        if s.nodes.is_empty() { "not found" } else { "found" }
                    );
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {}
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: exiting; the rules stay in place");
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: exiting; the rules stay in place");
                return Ok(());
            }
        }
    }
}

/// `/configz`: the effective configuration, in KubeProxyConfiguration field names.
fn configz(c: &DaemonConfig) -> serde_json::Value {
    let p = &c.proxy;
    serde_json::json!({
        "hostnameOverride": p.node_name,
        "clusterCIDR": p.cluster_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        "nodePortAddresses": p.node_port_addresses.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "mode": "nftables",
        "detectLocalMode": match p.detect_local {
            nftproxy_core::config::DetectLocal::NodeCidr => "NodeCIDR",
            _ => "ClusterCIDR",
        },
        "healthzBindAddress": c.healthz_bind_address,
        "metricsBindAddress": c.metrics_bind_address,
        "nftables": {
            "masqueradeBit": p.masquerade_bit,
            "masqueradeAll": p.masquerade_all,
            "syncPeriod": format!("{}s", c.timing.sync_period.as_secs_f64()),
            "minSyncPeriod": format!("{}s", c.timing.min_sync_period.as_secs_f64()),
        },
        "nftproxy": {
            "tableName": p.table_name,
            "serviceProxyName": p.service_proxy_name,
        },
    })
}

/// Where healthCheckNodePort servers listen: the node addresses NodePorts answer on, or every
/// address when nodePortAddresses matches all (kube-proxy's rule).
fn health_check_addresses(engine: &Engine) -> Vec<std::net::IpAddr> {
    use nftproxy_core::compile::{node_addresses, nodeport_addresses, NodePortAddresses};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let config = engine.config();
    let node_ips = node_addresses(engine.snapshot(), config);
    let mut out = Vec::new();
    for f in engine.families() {
        match nodeport_addresses(&node_ips, config, f) {
            NodePortAddresses::AllLocal => out.push(match f {
                IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            }),
            NodePortAddresses::These(ips) => out.extend(ips),
        }
    }
    if out.is_empty() {
        out.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    out
}

/// kube-proxy's Event for a healthCheckNodePort that cannot be bound.
async fn report_listen_failure(recorder: &Recorder, node: &str, f: &serve::ListenFailure) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(f.service.namespace.clone()),
        name: Some(f.service.name.clone()),
        ..Default::default()
    };
    let event = kube::runtime::events::Event {
        type_: EventType::Warning,
        reason: "FailedToStartServiceHealthcheck".into(),
        note: Some(format!(
            "node {node} failed to start healthcheck \"{}\" on port {}: {}",
            f.service, f.port, f.error
        )),
        action: "Listen".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(
            "could not record an event for {:?}: {e}",
            f.service.to_string()
        );
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

fn handle(engine: &mut Engine, event: Event) {
    for w in engine.handle(event, Instant::now()) {
        tracing::warn!("{:?}: {:?}", w.object, w.message);
    }
}
