//! Proxy configuration: the parts of kube-proxy's `KubeProxyConfiguration` that apply, plus our own.

use std::net::IpAddr;

use ipnet::IpNet;

/// How "traffic from inside the cluster" is recognised (kube-proxy's `detectLocalMode`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DetectLocal {
    /// Source in one of the cluster CIDRs (`clusterCIDR`). The default.
    #[default]
    ClusterCidr,
    /// Source in this node's pod CIDRs (`spec.podCIDRs` of the Node object).
    NodeCidr,
}

/// Everything the compiler needs besides the snapshot. Built by [`crate::parse::parse_config`]
/// from a `KubeProxyConfiguration` document, then overridden by command-line flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// This node's name (`hostnameOverride`, `--node-name`). Endpoints on this node are local.
    pub node_name: String,
    /// This node's IPs (`--node-ip`); when empty, taken from the Node object's addresses.
    pub node_ips: Vec<IpAddr>,
    /// Cluster (pod) CIDRs (`clusterCIDR`, comma-separated; `--cluster-cidr`), any family.
    pub cluster_cidrs: Vec<IpNet>,
    /// `nodePortAddresses`: NodePorts answer on node IPs inside these CIDRs. Empty means the
    /// node's primary IPs (kube-proxy's `primary`); a `/0` means every local address.
    pub node_port_addresses: Vec<IpNet>,
    /// `nftables.masqueradeBit` (default 14): the mark bit that requests SNAT.
    pub masquerade_bit: u8,
    /// `nftables.masqueradeAll`: SNAT all traffic to ClusterIPs.
    pub masquerade_all: bool,
    /// `detectLocalMode`.
    pub detect_local: DetectLocal,
    /// Name of our nftables tables (one `ip` and one `ip6`), so that several instances can coexist.
    pub table_name: String,
    /// Only services labelled `service.kubernetes.io/service-proxy-name` with this value are ours;
    /// `None` (the default) means only services without that label.
    pub service_proxy_name: Option<String>,
    /// Service CIDRs used when the snapshot has no ServiceCIDR objects (`--service-cidr`):
    /// traffic to an address inside one that is not an allocated ClusterIP is dropped.
    pub service_cidrs: Vec<IpNet>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            node_port_addresses: Vec::new(),
            masquerade_bit: 14,
            masquerade_all: false,
            detect_local: DetectLocal::ClusterCidr,
            table_name: "nftproxy".to_owned(),
            service_proxy_name: None,
            service_cidrs: Vec::new(),
        }
    }
}

impl ProxyConfig {
    /// The mark value that requests masquerading.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}
