//! The validated cluster snapshot: Services, EndpointSlices and Nodes as the proxy sees them.
//!
//! Kubernetes objects (k8s-openapi types) are parsed once, at the edge, by [`crate::parse`];
//! everything past that point works with these types, which cannot hold an unparsable IP address,
//! an unknown protocol or a port outside `1..=65535`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectName {
    /// Builds a name from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// IP family. The compiler emits one table per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4 (`ip` table).
    V4,
    /// IPv6 (`ip6` table).
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// Layer-4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The nft keyword (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// `ClusterIP` (the default).
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
    /// `ExternalName`: ignored by the proxy.
    ExternalName,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Use endpoints on every node (the default).
    #[default]
    Cluster,
    /// Use only endpoints on this node.
    Local,
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name; empty for a single unnamed port. EndpointSlice ports are matched by this name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The service port (on ClusterIPs, external IPs and LoadBalancer IPs).
    pub port: u16,
    /// The node port, if allocated.
    pub node_port: Option<u16>,
}

/// A Service, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name`.
    pub name: ObjectName,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`), empty for headless services (`None`).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, without those whose `ipMode` is `Proxy`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `ClientIP` session affinity timeout in seconds, `None` without affinity.
    pub session_affinity_timeout: Option<u32>,
    /// Label `service.kubernetes.io/service-proxy-name`, if set.
    pub service_proxy_name: Option<String>,
    /// `spec.trafficDistribution`, if set (informational: the proxy follows EndpointSlice hints).
    pub traffic_distribution: Option<String>,
    /// `spec.healthCheckNodePort` (LoadBalancer services with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
}

impl Service {
    /// Headless services (`clusterIP: None`) get no rules.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty()
    }
}

/// `addressType` of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    /// `IPv4`.
    Ipv4,
    /// `IPv6`.
    Ipv6,
    /// `FQDN`: ignored by the proxy.
    Fqdn,
}

impl AddressType {
    /// The IP family, `None` for FQDN.
    pub fn family(self) -> Option<IpFamily> {
        match self {
            Self::Ipv4 => Some(IpFamily::V4),
            Self::Ipv6 => Some(IpFamily::V6),
            Self::Fqdn => None,
        }
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Name, matching a `ServicePort::name`.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The target port number (named targetPorts are resolved per slice by the controller).
    pub port: u16,
}

/// One endpoint of a slice. Its address has been checked against the slice's address type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `addresses[0]`.
    pub address: IpAddr,
    /// `conditions.ready` (unset means true).
    pub ready: bool,
    /// `conditions.serving` (unset means the value of ready).
    pub serving: bool,
    /// `conditions.terminating` (unset means false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones[].name`.
    pub hint_zones: Vec<String>,
    /// `hints.forNodes[].name`.
    pub hint_nodes: Vec<String>,
}

/// An EndpointSlice, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// `namespace/name` of the slice.
    pub name: ObjectName,
    /// The owning service's name (label `kubernetes.io/service-name`), `None` if unlabelled.
    pub service_name: Option<String>,
    /// `addressType`.
    pub address_type: AddressType,
    /// Label `service.kubernetes.io/headless` is present.
    pub headless_label: bool,
    /// `ports`: entries without a port number are dropped.
    pub ports: Vec<SlicePort>,
    /// `endpoints`: entries with an unparsable or wrong-family address are dropped (with a warning).
    pub endpoints: Vec<Endpoint>,
}

/// A Node, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses` of type InternalIP then ExternalIP, in order, parsed.
    pub addresses: Vec<IpAddr>,
    /// Label `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// Being deleted (`metadata.deletionTimestamp`) or tainted `ToBeDeletedByClusterAutoscaler`:
    /// kube-proxy's `/healthz` then says the node is not eligible for load-balancer traffic.
    pub draining: bool,
}

/// A complete snapshot of what the proxy watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Services by `namespace/name`.
    pub services: BTreeMap<ObjectName, Service>,
    /// EndpointSlices by `namespace/name`.
    pub slices: BTreeMap<ObjectName, EndpointSlice>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// `networking.k8s.io/v1` ServiceCIDRs by name: their `spec.cidrs`. Traffic to an address
    /// inside one that is not an allocated ClusterIP is dropped.
    pub service_cidrs: BTreeMap<String, Vec<IpNet>>,
}

/// Something skipped while reading a snapshot or compiling it; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    /// The object, as `Kind namespace/name` (or `Kind name`).
    pub object: String,
    /// What was skipped and why.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}
