//! `KubeProxyConfiguration` documents (`kubeproxy.config.k8s.io/v1alpha1`).
//!
//! The fields that apply to an nftables proxy are read; the many others (mode, iptables, ipvs,
//! conntrack, ...) are accepted and ignored so that an existing kube-proxy config file works as
//! is. A field kube-proxy does not know either is an error, so that typos do not pass silently.
//! nftproxy's own settings live under a top-level `nftproxy:` key.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::parse_cidr;
use crate::config::{DetectLocal, ProxyConfig};

const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
const KIND: &str = "KubeProxyConfiguration";
/// Longest table name accepted.
const MAX_TABLE_NAME: usize = 64;

/// Top-level `KubeProxyConfiguration` fields that are valid but do not apply to nftproxy.
const IGNORED_FIELDS: &[&str] = &[
    "bindAddress",
    "bindAddressHardFail",
    "clientConnection",
    "configSyncPeriod",
    "conntrack",
    "enableProfiling",
    "featureGates",
    "healthzBindAddress",
    "iptables",
    "ipvs",
    "logging",
    "metricsBindAddress",
    "minSyncPeriod",
    "mode",
    "oomScoreAdj",
    "portRange",
    "showHiddenMetricsForVersion",
    "syncPeriod",
    // Removed with the userspace proxier; still found in old files.
    "udpIdleTimeout",
    "windowsRunAsService",
    "winkernel",
];

/// Why a proxy configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid YAML/JSON, or a field has the wrong type (the message names the field's path
    /// and the line).
    #[error("invalid KubeProxyConfiguration: {0}")]
    Decode(#[source] serde_yaml::Error),
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
    #[serde(rename = "syncPeriod")]
    _sync_period: Option<serde_yaml::Value>,
    #[serde(rename = "minSyncPeriod")]
    _min_sync_period: Option<serde_yaml::Value>,
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
    Ok(config)
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
}
