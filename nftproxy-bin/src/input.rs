//! Loading a snapshot and a config from files, with command-line overrides.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ipnet::IpNet;
use nftproxy_core::parse::{parse_config, parse_snapshot};
use nftproxy_core::{ProxyConfig, Snapshot};

/// The flags every command that compiles a snapshot takes.
#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// Services, EndpointSlices and Nodes: `kubectl get ... -o yaml` output, multi-document YAML or JSON.
    #[arg(long, value_name = "FILE")]
    pub(crate) snapshot: PathBuf,
    /// A KubeProxyConfiguration (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// This node's name (overrides hostnameOverride).
    #[arg(long, value_name = "NAME")]
    pub(crate) node_name: Option<String>,
    /// This node's IP; repeat for dual-stack (overrides the Node object's addresses).
    #[arg(long = "node-ip", value_name = "IP")]
    pub(crate) node_ips: Vec<IpAddr>,
    /// Cluster (pod) CIDR; repeat or comma-separate for dual-stack (overrides clusterCIDR).
    #[arg(long = "cluster-cidr", value_name = "CIDR", value_delimiter = ',')]
    pub(crate) cluster_cidrs: Vec<IpNet>,
    /// Service CIDR(s), comma-separated, when the snapshot has no ServiceCIDR objects: traffic to
    /// an unallocated address inside is dropped.
    #[arg(long = "service-cidr", value_name = "CIDR", value_delimiter = ',')]
    pub(crate) service_cidrs: Vec<IpNet>,
}

impl InputArgs {
    /// Reads and validates the snapshot and config, logging every warning.
    pub(crate) fn load(&self) -> Result<(Snapshot, ProxyConfig)> {
        let text = std::fs::read_to_string(&self.snapshot)
            .with_context(|| format!("reading snapshot {}", self.snapshot.display()))?;
        let parsed = parse_snapshot(&text)
            .with_context(|| format!("invalid snapshot {}", self.snapshot.display()))?;
        for w in &parsed.warnings {
            tracing::warn!("{w}");
        }
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                parse_config(&text).with_context(|| format!("invalid config {}", path.display()))?
            }
            None => ProxyConfig::default(),
        };
        if let Some(name) = &self.node_name {
            config.node_name = name.clone();
        }
        if !self.node_ips.is_empty() {
            config.node_ips = self.node_ips.clone();
        }
        if !self.cluster_cidrs.is_empty() {
            config.cluster_cidrs = self.cluster_cidrs.clone();
        }
        config.service_cidrs = self.service_cidrs.iter().map(|c| c.trunc()).collect();
        Ok((parsed.snapshot, config))
    }

    /// Loads and compiles, logging warnings.
    pub(crate) fn compile(&self) -> Result<(Snapshot, ProxyConfig, nftproxy_core::Ruleset)> {
        let (snapshot, config) = self.load()?;
        let compiled = nftproxy_core::compile(&snapshot, &config)?;
        for w in &compiled.warnings {
            tracing::warn!("{w}");
        }
        Ok((snapshot, config, compiled.ruleset))
    }
}
