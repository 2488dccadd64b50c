//! `KubeProxyConfiguration` documents (`kubeproxy.config.k8s.io/v1alpha1`).
//!
//! The fields that apply to an nftables proxy are read, and `conntrack` for the daemon's sysctls;
//! the many others (mode, iptables, ipvs, ...) are accepted so that an existing kube-proxy config
//! file works as is, but still type-checked as kube-proxy would. A field kube-proxy does not know
//! either is an error, so that typos do not pass silently.
//! nftproxy's own settings live under a top-level `nftproxy:` key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::parse_cidr;
use crate::config::{DetectLocal, ProxyConfig};
use crate::engine::SyncTiming;

const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
const KIND: &str = "KubeProxyConfiguration";
/// Longest table name accepted.
const MAX_TABLE_NAME: usize = 64;

/// Top-level `KubeProxyConfiguration` sections that are valid but whose content nftproxy neither
/// uses nor checks (they configure other platforms or the logger).
const IGNORED_FIELDS: &[&str] = &["logging", "winkernel"];

/// Why a proxy configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid YAML/JSON, or a field has the wrong type (the message names the field's path
    /// and the line).
    #[error("invalid KubeProxyConfiguration: {0}")]
    Decode(serde_yaml::Error),
    /// `apiVersion` / `kind` are not `kubeproxy.config.k8s.io/v1alpha1` / `KubeProxyConfiguration`.
    #[error(
        "expected apiVersion {API_VERSION:?} and kind {KIND:?}, found apiVersion {api_version:?} and kind {kind:?}"
    )]
    WrongType {
        /// The document's `apiVersion` (empty if absent).
        api_version: String,
        /// The document's `kind` (empty if absent).
        kind: String,
    },
    /// A top-level field that `KubeProxyConfiguration` does not have (probably a typo).
    #[error("unknown field {field:?} in KubeProxyConfiguration")]
    UnknownField {
        /// The field.
        field: String,
    },
    /// A field that must hold a CIDR does not.
    #[error("{field}: {value:?} is not a valid cidr")]
    InvalidCidr {
        /// The field, e.g. `clusterCIDR` or `nodePortAddresses[1]`.
        field: String,
        /// The offending value.
        value: String,
    },
    /// `nodePortAddresses` mixes `primary` with CIDRs.
    #[error("nodePortAddresses: \"primary\" cannot be combined with cidrs")]
    PrimaryWithCidrs,
    /// A number outside the range allowed for the field.
    #[error("{field}: {value} is out of range ({expected})")]
    OutOfRange {
        /// The field.
        field: String,
        /// The offending value.
        value: i64,
        /// The allowed range.
        expected: &'static str,
    },
    /// A `detectLocalMode` kube-proxy knows but nftproxy does not implement.
    #[error(
        "detectLocalMode: {mode:?} is not supported by nftproxy (use ClusterCIDR or NodeCIDR)"
    )]
    UnsupportedDetectLocalMode {
        /// The mode.
        mode: String,
    },
    /// An enum-like string field holds an unknown value.
    #[error("{field}: unsupported value {value:?} (expected {expected})")]
    UnsupportedValue {
        /// The field.
        field: String,
        /// The offending value.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// A duration that does not parse (Go syntax: `30s`, `1m0s`, `500ms`).
    #[error("{field}: {value:?} is not a valid duration (e.g. 30s, 1m0s, 500ms)")]
    InvalidDuration {
        /// The field.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A table name that is not a valid nftables identifier.
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
}

/// The document as written; everything optional (kubeadm writes explicit `null`s).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeProxyConfiguration {
    api_version: Option<String>,
    kind: Option<String>,
    hostname_override: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    node_port_addresses: Option<Vec<String>>,
    nftables: Option<Nftables>,
    detect_local_mode: Option<String>,
    /// `bridgeInterface` / `interfaceNamePrefix`: only used by modes nftproxy rejects.
    #[serde(rename = "detectLocal")]
    _detect_local: Option<serde_yaml::Value>,
    nftproxy: Option<Nftproxy>,
    client_connection: Option<ClientConnection>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    conntrack: Option<Conntrack>,
    // Valid fields that do not apply to nftproxy: typed, so that a value of the wrong type is
    // reported (kube-proxy would refuse it) instead of passing silently.
    #[serde(rename = "iptables")]
    _iptables: Option<Iptables>,
    #[serde(rename = "ipvs")]
    _ipvs: Option<Ipvs>,
    #[serde(rename = "featureGates")]
    _feature_gates: Option<BTreeMap<String, bool>>,
    #[serde(rename = "bindAddress")]
    _bind_address: Option<String>,
    #[serde(rename = "bindAddressHardFail")]
    _bind_address_hard_fail: Option<bool>,
    config_sync_period: Option<String>,
    #[serde(rename = "enableProfiling")]
    _enable_profiling: Option<bool>,
    #[serde(rename = "mode")]
    _mode: Option<String>,
    #[serde(rename = "oomScoreAdj")]
    _oom_score_adj: Option<i32>,
    #[serde(rename = "portRange")]
    _port_range: Option<String>,
    #[serde(rename = "showHiddenMetricsForVersion")]
    _show_hidden_metrics_for_version: Option<String>,
    /// Top-level `syncPeriod` / `minSyncPeriod` (newer files): checked; `nftables.*` is used.
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    /// Removed with the userspace proxier; still found in old files.
    udp_idle_timeout: Option<String>,
    #[serde(rename = "windowsRunAsService")]
    _windows_run_as_service: Option<bool>,
    /// Everything else; checked against [`IGNORED_FIELDS`].
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

/// `nftables:`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Nftables {
    masquerade_bit: Option<i64>,
    masquerade_all: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

/// `conntrack:`, applied as sysctls by the daemon (see [`ConntrackSettings`]).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Conntrack {
    max_per_core: Option<i32>,
    min: Option<i32>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
}

/// `iptables:`: not used, checked.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Iptables {
    #[serde(rename = "masqueradeBit")]
    _masquerade_bit: Option<i32>,
    #[serde(rename = "masqueradeAll")]
    _masquerade_all: Option<bool>,
    #[serde(rename = "localhostNodePorts")]
    _localhost_node_ports: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

/// `ipvs:`: not used, checked.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Ipvs {
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    #[serde(rename = "scheduler")]
    _scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    _exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    _strict_arp: Option<bool>,
    tcp_timeout: Option<String>,
    tcp_fin_timeout: Option<String>,
    udp_timeout: Option<String>,
}

/// The `conntrack:` settings kube-proxy applies as sysctls at start, with its defaults.
///
/// `nf_conntrack_max` becomes `max(max_per_core × CPUs, min)` when that is larger than the current
/// value (0 for either leaves it alone); each timeout is written when set and non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// `conntrack.maxPerCore` (default 32768; 0: leave `nf_conntrack_max` alone).
    pub max_per_core: u32,
    /// `conntrack.min` (default 131072).
    pub min: u32,
    /// `conntrack.tcpEstablishedTimeout` (default 24h) → `nf_conntrack_tcp_timeout_established`.
    pub tcp_established_timeout: Option<Duration>,
    /// `conntrack.tcpCloseWaitTimeout` (default 1h) → `nf_conntrack_tcp_timeout_close_wait`.
    pub tcp_close_wait_timeout: Option<Duration>,
    /// `conntrack.tcpBeLiberal` → `nf_conntrack_tcp_be_liberal = 1` when true.
    pub tcp_be_liberal: bool,
    /// `conntrack.udpTimeout` → `nf_conntrack_udp_timeout`.
    pub udp_timeout: Option<Duration>,
    /// `conntrack.udpStreamTimeout` → `nf_conntrack_udp_timeout_stream`.
    pub udp_stream_timeout: Option<Duration>,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        Self {
            max_per_core: 32_768,
            min: 131_072,
            tcp_established_timeout: Some(Duration::from_secs(24 * 3600)),
            tcp_close_wait_timeout: Some(Duration::from_secs(3600)),
            tcp_be_liberal: false,
            udp_timeout: None,
            udp_stream_timeout: None,
        }
    }
}

/// `clientConnection:`; only `kubeconfig` is used.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientConnection {
    kubeconfig: Option<String>,
    #[serde(rename = "acceptContentTypes")]
    _accept_content_types: Option<serde_yaml::Value>,
    #[serde(rename = "contentType")]
    _content_type: Option<serde_yaml::Value>,
    #[serde(rename = "qps")]
    _qps: Option<serde_yaml::Value>,
    #[serde(rename = "burst")]
    _burst: Option<serde_yaml::Value>,
}

/// A whole `KubeProxyConfiguration` as the daemon uses it: the compiler's part and the
/// long-running proxy's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// What the compiler needs.
    pub proxy: ProxyConfig,
    /// `nftables.minSyncPeriod` / `syncPeriod` (1 s / 30 s by default).
    pub timing: SyncTiming,
    /// `healthzBindAddress` (default `0.0.0.0:10256`).
    pub healthz_bind_address: String,
    /// `metricsBindAddress` (default `127.0.0.1:10249`).
    pub metrics_bind_address: String,
    /// `clientConnection.kubeconfig`, if set.
    pub kubeconfig: Option<String>,
    /// `conntrack:`.
    pub conntrack: ConntrackSettings,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig::default(),
            timing: SyncTiming::default(),
            healthz_bind_address: "0.0.0.0:10256".to_owned(),
            metrics_bind_address: "127.0.0.1:10249".to_owned(),
            kubeconfig: None,
            conntrack: ConntrackSettings::default(),
        }
    }
}

/// `nftproxy:`, our extensions.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Nftproxy {
    table_name: Option<String>,
    service_proxy_name: Option<String>,
}

/// Reads a `KubeProxyConfiguration` document (YAML or JSON).
///
/// Unset fields keep their [`ProxyConfig::default`] values. `hostnameOverride` is trimmed and
/// lowercased as kube-proxy does; CIDRs have their host bits cleared.
pub fn parse_config(input: &str) -> Result<ProxyConfig, ConfigError> {
    parse_daemon_config(input).map(|c| c.proxy)
}

/// Reads a `KubeProxyConfiguration` with the daemon's settings too (see [`DaemonConfig`]).
pub fn parse_daemon_config(input: &str) -> Result<DaemonConfig, ConfigError> {
    let doc: KubeProxyConfiguration = serde_yaml::from_str(input).map_err(ConfigError::Decode)?;

    let api_version = doc.api_version.unwrap_or_default();
    let kind = doc.kind.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(ConfigError::WrongType { api_version, kind });
    }
    if let Some(field) = doc
        .other
        .keys()
        .find(|key| !IGNORED_FIELDS.contains(&key.as_str()))
    {
        return Err(ConfigError::UnknownField {
            field: field.clone(),
        });
    }

    let mut config = ProxyConfig::default();
    if let Some(hostname) = doc.hostname_override {
        config.node_name = hostname.trim().to_ascii_lowercase();
    }
    if let Some(cidrs) = doc.cluster_cidr {
        config.cluster_cidrs = cidrs
            .split(',')
            .map(str::trim)
            .filter(|cidr| !cidr.is_empty())
            .map(|cidr| cidr_field("clusterCIDR".to_owned(), cidr))
            .collect::<Result<_, _>>()?;
    }
    let node_port_addresses = doc.node_port_addresses.unwrap_or_default();
    if node_port_addresses.iter().any(|a| a.trim() == "primary") {
        if node_port_addresses.len() > 1 {
            return Err(ConfigError::PrimaryWithCidrs);
        }
    } else {
        config.node_port_addresses = node_port_addresses
            .iter()
            .enumerate()
            .map(|(i, cidr)| cidr_field(format!("nodePortAddresses[{i}]"), cidr.trim()))
            .collect::<Result<_, _>>()?;
    }

    let nftables = doc.nftables.unwrap_or_default();
    if let Some(bit) = nftables.masquerade_bit {
        config.masquerade_bit =
            u8::try_from(bit)
                .ok()
                .filter(|bit| *bit <= 31)
                .ok_or(ConfigError::OutOfRange {
                    field: "nftables.masqueradeBit".to_owned(),
                    value: bit,
                    expected: "0..=31",
                })?;
    }
    config.masquerade_all = nftables.masquerade_all.unwrap_or(false);

    config.detect_local = match doc.detect_local_mode.as_deref() {
        None | Some("" | "ClusterCIDR") => DetectLocal::ClusterCidr,
        Some("NodeCIDR") => DetectLocal::NodeCidr,
        Some(mode @ ("BridgeInterface" | "InterfaceNamePrefix")) => {
            return Err(ConfigError::UnsupportedDetectLocalMode {
                mode: mode.to_owned(),
            });
        }
        Some(other) => {
            return Err(ConfigError::UnsupportedValue {
                field: "detectLocalMode".to_owned(),
                value: other.to_owned(),
                expected: "ClusterCIDR or NodeCIDR",
            });
        }
    };

    let nftproxy = doc.nftproxy.unwrap_or_default();
    if let Some(name) = nftproxy.table_name {
        validate_table_name(&name)?;
        config.table_name = name;
    }
    config.service_proxy_name = nftproxy.service_proxy_name.filter(|name| !name.is_empty());

    let mut daemon = DaemonConfig {
        proxy: config,
        ..DaemonConfig::default()
    };
    if let Some(d) = nftables.sync_period.as_deref().filter(|d| !d.is_empty()) {
        daemon.timing.sync_period = duration_field("nftables.syncPeriod", d)?;
    }
    if let Some(d) = nftables
        .min_sync_period
        .as_deref()
        .filter(|d| !d.is_empty())
    {
        daemon.timing.min_sync_period = duration_field("nftables.minSyncPeriod", d)?;
    }
    if let Some(a) = doc.healthz_bind_address.filter(|a| !a.is_empty()) {
        daemon.healthz_bind_address = a;
    }
    if let Some(a) = doc.metrics_bind_address.filter(|a| !a.is_empty()) {
        daemon.metrics_bind_address = a;
    }
    daemon.kubeconfig = doc
        .client_connection
        .and_then(|c| c.kubeconfig)
        .filter(|k| !k.is_empty());
    // Durations of sections we do not use are still checked.
    let iptables = doc._iptables.unwrap_or_default();
    let ipvs = doc._ipvs.unwrap_or_default();
    for (field, value) in [
        ("configSyncPeriod", &doc.config_sync_period),
        ("syncPeriod", &doc.sync_period),
        ("minSyncPeriod", &doc.min_sync_period),
        ("udpIdleTimeout", &doc.udp_idle_timeout),
        ("iptables.syncPeriod", &iptables.sync_period),
        ("iptables.minSyncPeriod", &iptables.min_sync_period),
        ("ipvs.syncPeriod", &ipvs.sync_period),
        ("ipvs.minSyncPeriod", &ipvs.min_sync_period),
        ("ipvs.tcpTimeout", &ipvs.tcp_timeout),
        ("ipvs.tcpFinTimeout", &ipvs.tcp_fin_timeout),
        ("ipvs.udpTimeout", &ipvs.udp_timeout),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            duration_field(field, v)?;
        }
    }
    if let Some(c) = doc.conntrack {
        daemon.conntrack = conntrack_settings(c)?;
    }
    Ok(daemon)
}

fn conntrack_settings(c: Conntrack) -> Result<ConntrackSettings, ConfigError> {
    let mut out = ConntrackSettings::default();
    let count = |field: &str, v: i32| {
        u32::try_from(v).map_err(|_| ConfigError::OutOfRange {
            field: field.to_owned(),
            value: v.into(),
            expected: "0 or more",
        })
    };
    if let Some(v) = c.max_per_core {
        out.max_per_core = count("conntrack.maxPerCore", v)?;
    }
    if let Some(v) = c.min {
        out.min = count("conntrack.min", v)?;
    }
    let timeout = |field: &str, v: Option<String>, default: Option<Duration>| match v
        .as_deref()
        .filter(|v| !v.is_empty())
    {
        None => Ok(default),
        // kube-proxy: a zero timeout leaves the sysctl alone.
        Some(v) => duration_field(field, v).map(|d| Some(d).filter(|d| !d.is_zero())),
    };
    out.tcp_established_timeout = timeout(
        "conntrack.tcpEstablishedTimeout",
        c.tcp_established_timeout,
        out.tcp_established_timeout,
    )?;
    out.tcp_close_wait_timeout = timeout(
        "conntrack.tcpCloseWaitTimeout",
        c.tcp_close_wait_timeout,
        out.tcp_close_wait_timeout,
    )?;
    out.tcp_be_liberal = c.tcp_be_liberal.unwrap_or(false);
    out.udp_timeout = timeout("conntrack.udpTimeout", c.udp_timeout, None)?;
    out.udp_stream_timeout = timeout("conntrack.udpStreamTimeout", c.udp_stream_timeout, None)?;
    Ok(out)
}

fn duration_field(field: &str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).ok_or_else(|| ConfigError::InvalidDuration {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

/// A Go duration (`30s`, `1m0s`, `1h`, `500ms`, `1.5s`, `0`), as Kubernetes configs write them.
pub fn parse_duration(input: &str) -> Option<Duration> {
    let s = input.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Checks that `name` can be used as our nftables table name: `[A-Za-z][A-Za-z0-9_-]*`, at most
/// 64 characters.
pub fn validate_table_name(name: &str) -> Result<(), ConfigError> {
    let invalid = |reason| {
        Err(ConfigError::InvalidTableName {
            name: name.to_owned(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return invalid("it is empty"),
        Some(first) if !first.is_ascii_alphabetic() => {
            return invalid("it must start with a letter")
        }
        Some(_) => {}
    }
    if name.len() > MAX_TABLE_NAME {
        return invalid("it is longer than 64 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return invalid("only letters, digits, '_' and '-' are allowed");
    }
    Ok(())
}

fn cidr_field(field: String, value: &str) -> Result<ipnet::IpNet, ConfigError> {
    parse_cidr(value).ok_or_else(|| ConfigError::InvalidCidr {
        field,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    fn parse(body: &str) -> Result<ProxyConfig, ConfigError> {
        parse_config(&format!("{HEADER}{body}"))
    }

    fn err(body: &str) -> String {
        parse(body).unwrap_err().to_string()
    }

    /// What kubeadm writes into the kube-proxy ConfigMap, with nftables mode.
    const KUBEADM: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: "10.244.0.0/16, fd00:10:244::/56"
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: " Node-A "
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  scheduler: ""
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: nftables
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  networkName: ""
"#;

    #[test]
    fn kubeadm_config_dual_stack() {
        let config = parse_config(KUBEADM).unwrap();
        assert_eq!(
            config,
            ProxyConfig {
                node_name: "node-a".into(),
                cluster_cidrs: vec![
                    "10.244.0.0/16".parse().unwrap(),
                    "fd00:10:244::/56".parse().unwrap()
                ],
                ..ProxyConfig::default()
            }
        );
    }

    #[test]
    fn applicable_fields_and_extensions() {
        let config = parse(
            "nodePortAddresses: [192.168.0.0/16, \" 2001:db8::/64 \"]\nnftables: { masqueradeBit: 3, masqueradeAll: true }\n\
             detectLocalMode: NodeCIDR\ndetectLocal: { bridgeInterface: br0 }\n\
             nftproxy: { tableName: nftproxy-b, serviceProxyName: mine }\n",
        )
        .unwrap();
        assert_eq!(
            config.node_port_addresses,
            vec![
                "192.168.0.0/16".parse().unwrap(),
                "2001:db8::/64".parse().unwrap()
            ]
        );
        assert_eq!(config.masquerade_bit, 3);
        assert!(config.masquerade_all);
        assert_eq!(config.detect_local, DetectLocal::NodeCidr);
        assert_eq!(config.table_name, "nftproxy-b");
        assert_eq!(config.service_proxy_name.as_deref(), Some("mine"));

        let config = parse("nodePortAddresses: [primary]\n").unwrap();
        assert!(config.node_port_addresses.is_empty());
    }

    #[test]
    fn json_config() {
        let config = parse_config(
            r#"{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                "clusterCIDR": "10.0.0.0/8", "mode": "nftables"}"#,
        )
        .unwrap();
        assert_eq!(config.cluster_cidrs, vec!["10.0.0.0/8".parse().unwrap()]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            err("mode: nftables\nfoo: 1\n"),
            "unknown field \"foo\" in KubeProxyConfiguration"
        );
        assert_eq!(
            err("clusterCidr: 10.0.0.0/8\n"),
            "unknown field \"clusterCidr\" in KubeProxyConfiguration"
        );
        assert!(err("nftables: { masqueradeBits: 3 }\n").starts_with(
            "invalid KubeProxyConfiguration: nftables: unknown field `masqueradeBits`"
        ));
        assert!(err("nftproxy: { table: x }\n").contains("unknown field `table`"));
        assert!(err("nftables: { masqueradeAll: maybe }\n")
            .starts_with("invalid KubeProxyConfiguration: nftables.masqueradeAll: invalid type"));
        assert_eq!(
            err("nftables: { masqueradeBit: 32 }\n"),
            "nftables.masqueradeBit: 32 is out of range (0..=31)"
        );
        assert_eq!(
            err("clusterCIDR: 10.0.0.0/8,10.1.0.0\n"),
            "clusterCIDR: \"10.1.0.0\" is not a valid cidr"
        );
        assert_eq!(
            err("nodePortAddresses: [10.0.0.0/8, x]\n"),
            "nodePortAddresses[1]: \"x\" is not a valid cidr"
        );
        assert_eq!(
            err("nodePortAddresses: [primary, 10.0.0.0/8]\n"),
            ConfigError::PrimaryWithCidrs.to_string()
        );
        assert_eq!(
            err("detectLocalMode: BridgeInterface\n"),
            "detectLocalMode: \"BridgeInterface\" is not supported by nftproxy (use ClusterCIDR or NodeCIDR)"
        );
        assert!(err("detectLocalMode: InterfaceNamePrefix\n").contains("not supported by nftproxy"));
        assert!(err("detectLocalMode: Magic\n")
            .starts_with("detectLocalMode: unsupported value \"Magic\""));
        assert!(err("nftproxy: { tableName: 1abc }\n").starts_with("invalid table name \"1abc\""));

        let wrong = parse_config(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
        );
        assert!(matches!(wrong, Err(ConfigError::WrongType { .. })));
        assert!(matches!(
            parse_config("mode: nftables\n"),
            Err(ConfigError::WrongType { .. })
        ));
        assert!(matches!(parse_config("a: ["), Err(ConfigError::Decode(_))));
    }

    #[test]
    fn table_names() {
        for ok in ["nftproxy", "a", "kube-proxy_2", &"a".repeat(64)] {
            validate_table_name(ok).unwrap();
        }
        for bad in ["", "1abc", "-a", "a b", "a.b", "ä", &"a".repeat(65)] {
            assert!(validate_table_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn daemon_settings() {
        let d = parse_daemon_config(&format!(
            "{HEADER}nftables: {{syncPeriod: 1m0s, minSyncPeriod: 500ms}}\n\
             healthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: \"\"\n\
             clientConnection: {{kubeconfig: /var/lib/kube-proxy/kubeconfig.conf, qps: 5}}\n"
        ))
        .unwrap();
        assert_eq!(d.timing.sync_period, Duration::from_secs(60));
        assert_eq!(d.timing.min_sync_period, Duration::from_millis(500));
        assert_eq!(d.healthz_bind_address, "127.0.0.1:10256");
        assert_eq!(d.metrics_bind_address, "127.0.0.1:10249");
        assert_eq!(
            d.kubeconfig.as_deref(),
            Some("/var/lib/kube-proxy/kubeconfig.conf")
        );
        let e = parse_daemon_config(&format!("{HEADER}nftables: {{syncPeriod: soon}}\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "nftables.syncPeriod: \"soon\" is not a valid duration (e.g. 30s, 1m0s, 500ms)"
        );
    }

    #[test]
    fn fields_that_do_not_apply_are_still_type_checked() {
        for (body, wanted) in [
            (
                "conntrack: {maxPerCore: a}\n",
                "conntrack.maxPerCore: invalid type",
            ),
            ("conntrack: {maxPerCor: 1}\n", "unknown field `maxPerCor`"),
            (
                "iptables: {masqueradeAll: \"yes\"}\n",
                "iptables.masqueradeAll: invalid type",
            ),
            ("ipvs: {strictARP: 1}\n", "ipvs.strictARP: invalid type"),
            ("oomScoreAdj: high\n", "oomScoreAdj: invalid type"),
            ("featureGates: {A: maybe}\n", "featureGates.A: invalid type"),
            ("mode: [nftables]\n", "mode: invalid type"),
            (
                "nftproxy: {serviceProxyName: [a]}\n",
                "nftproxy.serviceProxyName: invalid type",
            ),
            (
                "configSyncPeriod: soon\n",
                "configSyncPeriod: \"soon\" is not a valid duration",
            ),
            (
                "ipvs: {tcpTimeout: 5}\n",
                "ipvs.tcpTimeout: \"5\" is not a valid duration",
            ),
            (
                "conntrack: {min: -1}\n",
                "conntrack.min: -1 is out of range",
            ),
        ] {
            let e = err(body);
            assert!(e.contains(wanted), "{body:?}: {e}");
        }
        // Sections of other platforms and the logger are not looked into.
        parse("logging: {format: text, anything: [1]}\nwinkernel: {enableDSR: 1}\n").unwrap();
    }

    #[test]
    fn conntrack_settings_with_kube_proxy_defaults() {
        let d = parse_daemon_config(HEADER).unwrap();
        assert_eq!(d.conntrack, ConntrackSettings::default());
        assert_eq!(d.conntrack.max_per_core, 32_768);
        let d = parse_daemon_config(&format!(
            "{HEADER}conntrack: {{maxPerCore: 0, min: null, tcpEstablishedTimeout: 0s, \
             tcpCloseWaitTimeout: 30m, tcpBeLiberal: true, udpTimeout: 30s, udpStreamTimeout: 2m}}\n"
        ))
        .unwrap()
        .conntrack;
        assert_eq!(d.max_per_core, 0);
        assert_eq!(d.min, 131_072);
        assert_eq!(d.tcp_established_timeout, None);
        assert_eq!(d.tcp_close_wait_timeout, Some(Duration::from_secs(1800)));
        assert!(d.tcp_be_liberal);
        assert_eq!(d.udp_timeout, Some(Duration::from_secs(30)));
        assert_eq!(d.udp_stream_timeout, Some(Duration::from_secs(120)));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
