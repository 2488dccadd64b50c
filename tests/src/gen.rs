//! proptest strategies for random clusters and the packets sent into them.
//!
//! A [`Scenario`] is a [`ClusterSpec`] (services with their EndpointSlices, and this node), a
//! [`ProxyConfig`] and a handful of [`PacketSpec`]s. The cluster is emitted as Kubernetes JSON
//! (`kind: List` of v1 Services, discovery.k8s.io/v1 EndpointSlices and v1 Nodes) so that the
//! tests go through [`nftproxy_core::parse::parse_snapshot`] like real input does, including
//! endpoint addresses the parser must skip.
//!
//! Addresses come from small fixed pools so that the same pod backs several services (and sends
//! hairpin traffic to itself), while service addresses never collide:
//!
//! | what                  | IPv4                     | IPv6                     |
//! |-----------------------|--------------------------|--------------------------|
//! | ClusterIPs            | `172.30.0.<i+1>`         | `fd00:30::<i+1>`         |
//! | external IPs          | `198.18.<i>.<k+1>`       | `2001:db8:e::<i>:<k+1>`  |
//! | load-balancer IPs     | `198.19.<i>.<k+1>`       | `2001:db8:b::<i>:<k+1>`  |
//! | pods (endpoints)      | `10.0.{1,2}.{1..4}`      | `fd00::{1,2}:{1..4}`     |
//! | cluster CIDR          | `10.0.0.0/8`             | `fd00::/64`              |
//! | node-a pod CIDR       | `10.0.1.0/24`            | `fd00::1:0/112`          |
//! | node-a                | `192.168.0.2`            | `fd00:192::2`            |
//! | external client       | `203.0.113.2`            | `2001:db8:ff::2`         |
//! | client outside ranges | `100.64.0.9`             | `2001:db8:1::9`          |

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nftproxy_core::config::DetectLocal;
use nftproxy_core::snapshot::Protocol;
use nftproxy_core::trace::{Origin, Packet};
use nftproxy_core::ProxyConfig;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};

/// This node's name.
pub const NODE: &str = "node-a";
/// This node's IPv4 address.
pub const NODE_V4: &str = "192.168.0.2";
/// This node's IPv6 address.
pub const NODE_V6: &str = "fd00:192::2";
/// NodePorts are drawn from `NODE_PORT_BASE..NODE_PORT_BASE + NODE_PORT_RANGE`.
const NODE_PORT_BASE: u16 = 30000;
const NODE_PORT_RANGE: u16 = 100;

/// `spec.type`, with headless ClusterIP services as a kind of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ClusterIP`.
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
    /// `ExternalName` (no ClusterIP).
    ExternalName,
    /// `ClusterIP` with `clusterIP: None`.
    Headless,
}

/// Which ClusterIPs a service has, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Families {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// Dual-stack, IPv4 first.
    V4V6,
    /// Dual-stack, IPv6 first.
    V6V4,
}

impl Families {
    fn has(self, v6: bool) -> bool {
        match self {
            Self::V4 => !v6,
            Self::V6 => v6,
            Self::V4V6 | Self::V6V4 => true,
        }
    }
    fn primary_v6(self) -> bool {
        matches!(self, Self::V6 | Self::V6V4)
    }
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Protocol.
    pub proto: Protocol,
    /// Service port.
    pub port: u16,
    /// Node port (made unique cluster-wide by [`ClusterSpec::normalize`]).
    pub node_port: Option<u16>,
    /// Target port on the endpoints.
    pub target: u16,
}

/// A Service and its EndpointSlices.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The service type.
    pub kind: Kind,
    /// Namespace (`default` or `shop`).
    pub namespace: &'static str,
    /// Label `service.kubernetes.io/service-proxy-name`.
    pub proxy_name: Option<&'static str>,
    /// ClusterIP families.
    pub families: Families,
    /// Ports (unique `(protocol, port)`, see [`ClusterSpec::normalize`]).
    pub ports: Vec<PortSpec>,
    /// A single port may be unnamed.
    pub unnamed: bool,
    /// External IPs, by family (`true` = IPv6).
    pub external_ips: Vec<bool>,
    /// `status.loadBalancer.ingress`: (IPv6, `ipMode: Proxy`). Emitted for any type (stale status).
    pub lb_ingress: Vec<(bool, bool)>,
    /// `spec.loadBalancerSourceRanges`.
    pub source_ranges: Vec<&'static str>,
    /// `externalTrafficPolicy: Local` (emitted for NodePort and LoadBalancer only).
    pub etp_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub itp_local: bool,
    /// `sessionAffinity: ClientIP` with an optional timeout.
    pub affinity: Option<Option<u32>>,
    /// The service's EndpointSlices.
    pub slices: Vec<SliceSpec>,
}

/// `addressType` of a slice, relative to its service's ClusterIP families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceFamily {
    /// The service's primary family.
    Primary,
    /// The service's secondary family if dual-stack, else the family it does not have.
    Secondary,
    /// FQDN (ignored by the proxy).
    Fqdn,
}

/// Which service a slice's `kubernetes.io/service-name` label names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceOwner {
    /// Its own service.
    Own,
    /// No label.
    Unlabelled,
    /// A service that does not exist.
    Missing,
    /// Its own service's name, but the slice lives in the other namespace.
    OtherNamespace,
}

/// An EndpointSlice.
#[derive(Debug, Clone)]
pub struct SliceSpec {
    /// `addressType`, relative to the service: chosen from its families, or FQDN.
    pub family: SliceFamily,
    /// Owner label.
    pub owner: SliceOwner,
    /// Label `service.kubernetes.io/headless`.
    pub headless_label: bool,
    /// Per service port: whether the slice lists it, and whether with the wrong protocol.
    pub ports: Vec<(bool, bool)>,
    /// Added to every target port of this slice.
    pub port_shift: u16,
    /// Endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// An endpoint address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressSpec {
    /// Pod number `0..8` of the slice's family.
    Pod(u8),
    /// `10.0.0.300`.
    BadOctet,
    /// `not-an-ip`.
    NotAnIp,
    /// An address of the other family.
    WrongFamily,
}

/// One endpoint.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// The address.
    pub address: AddressSpec,
    /// `conditions.ready` (unset = true).
    pub ready: Option<bool>,
    /// `conditions.serving` (unset = ready).
    pub serving: Option<bool>,
    /// `conditions.terminating` (unset = false).
    pub terminating: Option<bool>,
    /// `nodeName`.
    pub node: Option<&'static str>,
    /// `zone`.
    pub zone: Option<&'static str>,
    /// `hints.forZones`, if the slice has zone hints.
    pub hint_zones: Option<Vec<&'static str>>,
    /// `hints.forNodes`, if the slice has node hints.
    pub hint_nodes: Option<Vec<&'static str>>,
}

/// This node's Node object.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Whether the Node object exists at all.
    pub present: bool,
    /// Whether it has an IPv6 InternalIP.
    pub v6: bool,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<&'static str>,
    /// Whether `spec.podCIDRs` is set.
    pub pod_cidrs: bool,
}

/// A cluster: services and this node.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Services, named `svc<i>` by position.
    pub services: Vec<ServiceSpec>,
    /// `node-a`.
    pub node: NodeSpec,
    /// A ServiceCIDR object covering the ClusterIP ranges exists.
    pub service_cidrs: bool,
}

/// What a packet is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A service port on a ClusterIP.
    ClusterIp,
    /// A ClusterIP on a port the service does not define.
    ClusterIpOtherPort,
    /// A service port on an external IP.
    ExternalIp,
    /// A service port on a load-balancer IP.
    LoadBalancerIp,
    /// A NodePort on the node's IP.
    NodePort,
    /// The node's IP on a random port.
    NodeIpOtherPort,
    /// An address no service uses.
    Elsewhere,
    /// An unallocated address in the ClusterIP range (inside the ServiceCIDR, when there is one).
    Unallocated,
}

/// Where a packet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A pod from the pool (`Pod(k)`).
    Pod(u8),
    /// An endpoint of the target service (hairpin), or a pool pod if it has none.
    TargetEndpoint,
    /// The external client, inside the generated source ranges.
    Client,
    /// An external client outside every generated source range.
    Outsider,
    /// The node's own IP (on an interface: as if routed back to us).
    NodeIp,
    /// One of the target service's load-balancer IPs.
    LoadBalancerIp,
}

/// A packet, as choices to be resolved against the cluster (see [`Scenario::packets`]).
#[derive(Debug, Clone)]
pub struct PacketSpec {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The destination kind.
    pub target: Target,
    /// Which candidate service.
    pub service: Index,
    /// Which of its ports (or endpoints, or LB IPs).
    pub pick: Index,
    /// The source.
    pub source: Source,
    /// Sent by the node itself (`Origin::Local`, source = node IP).
    pub local: bool,
    /// Aim at any service, not only those this proxy handles.
    pub any_service: bool,
    /// Protocol and port for undefined-port targets.
    pub other: (Protocol, u16),
}

/// A generated test case.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The cluster.
    pub cluster: ClusterSpec,
    /// The proxy configuration.
    pub config: ProxyConfig,
    /// The packets to send.
    pub packets: Vec<PacketSpec>,
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![6 => Just(Protocol::Tcp), 3 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)]
}

fn condition(unset: u32, yes: u32, no: u32) -> impl Strategy<Value = Option<bool>> {
    prop_oneof![unset => Just(None), yes => Just(Some(true)), no => Just(Some(false))]
}

fn names(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(pool, 0..=pool.len())
}

prop_compose! {
    fn port_spec()(
        proto in protocol(),
        port in select(&[53u16, 80, 443, 8080][..]),
        node_port in option::weighted(0.8, NODE_PORT_BASE..NODE_PORT_BASE + NODE_PORT_RANGE),
        target in 8000u16..8004,
    ) -> PortSpec {
        PortSpec { proto, port, node_port, target }
    }
}

prop_compose! {
    fn endpoint_spec()(
        address in prop_oneof![
            18 => (0u8..8).prop_map(AddressSpec::Pod),
            1 => Just(AddressSpec::BadOctet),
            1 => Just(AddressSpec::NotAnIp),
            1 => Just(AddressSpec::WrongFamily),
        ],
        ready in condition(3, 4, 3),
        serving in condition(3, 4, 3),
        terminating in condition(4, 3, 3),
        node in prop_oneof![Just(Some(NODE)), Just(Some("node-b")), Just(None)],
        zone in prop_oneof![Just(Some("zone-a")), Just(Some("zone-b")), Just(None)],
        hint_zones in names(&["zone-a", "zone-b"]),
        hint_nodes in names(&[NODE, "node-b"]),
    ) -> EndpointSpec {
        EndpointSpec {
            address, ready, serving, terminating, node, zone, hint_zones: Some(hint_zones), hint_nodes: Some(hint_nodes),
        }
    }
}

prop_compose! {
    fn slice_spec()(
        family in prop_oneof![12 => Just(SliceFamily::Primary), 6 => Just(SliceFamily::Secondary), 1 => Just(SliceFamily::Fqdn)],
        owner in prop_oneof![
            24 => Just(SliceOwner::Own),
            1 => Just(SliceOwner::Unlabelled),
            1 => Just(SliceOwner::Missing),
            1 => Just(SliceOwner::OtherNamespace),
        ],
        headless_label in proptest::bool::weighted(0.04),
        ports in vec((proptest::bool::weighted(0.9), proptest::bool::weighted(0.04)), 3),
        port_shift in prop_oneof![4 => Just(0u16), 1 => Just(1u16)],
        zone_hints in proptest::bool::weighted(0.3),
        node_hints in proptest::bool::weighted(0.2),
        endpoints in vec(endpoint_spec(), 0..=6),
    ) -> SliceSpec {
        // Hints are written per slice by the EndpointSlice controller: all endpoints or none.
        let mut endpoints = endpoints;
        for e in &mut endpoints {
            e.hint_zones = e.hint_zones.take().filter(|_| zone_hints);
            e.hint_nodes = e.hint_nodes.take().filter(|_| node_hints);
        }
        SliceSpec { family, owner, headless_label, ports, port_shift, endpoints }
    }
}

prop_compose! {
    fn service_spec()(
        kind in prop_oneof![
            3 => Just(Kind::ClusterIp),
            3 => Just(Kind::NodePort),
            3 => Just(Kind::LoadBalancer),
            1 => Just(Kind::ExternalName),
            1 => Just(Kind::Headless),
        ],
        namespace in select(&["default", "shop"][..]),
        proxy_name in prop_oneof![7 => Just(None), 2 => Just(Some("nftproxy")), 1 => Just(Some("other"))],
        families in prop_oneof![
            5 => Just(Families::V4),
            2 => Just(Families::V6),
            2 => Just(Families::V4V6),
            1 => Just(Families::V6V4),
        ],
        ports in vec(port_spec(), 1..=3),
        unnamed in any::<bool>(),
        external_ips in prop_oneof![6 => Just(vec![]), 4 => vec(proptest::bool::weighted(0.3), 1..=2)],
        lb_ingress in vec((proptest::bool::weighted(0.3), proptest::bool::weighted(0.1)), 0..=2),
        source_ranges in prop_oneof![
            6 => Just(vec![]),
            4 => proptest::sample::subsequence(
                &["203.0.113.0/24", "198.51.100.0/24", "192.168.0.0/16", "2001:db8:ff::/48", "fd00:192::/64", "203.0.113.2"][..],
                1..=3,
            ),
        ],
        etp_local in any::<bool>(),
        itp_local in proptest::bool::weighted(0.3),
        affinity in option::weighted(0.2, option::of(1u32..=86400)),
        slices in vec(slice_spec(), 0..=5),
    ) -> ServiceSpec {
        ServiceSpec {
            kind, namespace, proxy_name, families, ports, unnamed, external_ips, lb_ingress, source_ranges,
            etp_local, itp_local, affinity, slices,
        }
    }
}

prop_compose! {
    fn node_spec()(
        present in proptest::bool::weighted(0.9),
        v6 in proptest::bool::weighted(0.85),
        zone in prop_oneof![3 => Just(Some("zone-a")), 1 => Just(Some("zone-b")), 1 => Just(None)],
        pod_cidrs in proptest::bool::weighted(0.8),
    ) -> NodeSpec {
        NodeSpec { present, v6, zone, pod_cidrs }
    }
}

/// A cluster with a number of services in `services`.
pub fn cluster(services: std::ops::Range<usize>) -> impl Strategy<Value = ClusterSpec> {
    (
        vec(service_spec(), services),
        node_spec(),
        proptest::bool::weighted(0.4),
    )
        .prop_map(|(services, node, service_cidrs)| {
            let mut cluster = ClusterSpec {
                services,
                node,
                service_cidrs,
            };
            cluster.normalize();
            cluster
        })
}

/// The ServiceCIDR object's ranges: every generated ClusterIP is inside.
const SERVICE_CIDR_V4: &str = "172.30.0.0/16";
const SERVICE_CIDR_V6: &str = "fd00:30::/108";

fn net(s: &str) -> IpNet {
    s.parse().expect("generator CIDR literals are valid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("generator address literals are valid")
}

/// Choices for `nodePortAddresses`: primary IP only, a CIDR with the node IP, any local address,
/// per-family mixes, and a CIDR with no node IP in it.
const NODE_PORT_ADDRESSES: &[&[&str]] = &[
    &[],
    &["192.168.0.0/16"],
    &["0.0.0.0/0"],
    &["192.168.0.0/16", "::/0"],
    &["10.9.0.0/16"],
    &["fd00:192::/64"],
];

prop_compose! {
    /// A proxy configuration for `node-a`; see [`fit_node_ips`] for `--node-ip`.
    pub fn config()(
        cidr_v4 in proptest::bool::weighted(0.85),
        cidr_v6 in proptest::bool::weighted(0.7),
        node_cidr in proptest::bool::weighted(0.3),
        masquerade_all in proptest::bool::weighted(0.2),
        node_port_addresses in select(NODE_PORT_ADDRESSES),
        proxy_name in prop_oneof![9 => Just(None), 1 => Just(Some("nftproxy".to_owned()))],
        explicit_node_ips in proptest::bool::weighted(0.15),
    ) -> ProxyConfig {
        let mut cluster_cidrs = vec![];
        if cidr_v4 { cluster_cidrs.push(net("10.0.0.0/8")); }
        if cidr_v6 { cluster_cidrs.push(net("fd00::/64")); }
        // Completed against the Node object by `fit_node_ips`.
        let node_ips = if explicit_node_ips { vec![ip(NODE_V4), ip(NODE_V6)] } else { vec![] };
        ProxyConfig {
            node_name: NODE.to_owned(),
            node_ips,
            cluster_cidrs,
            node_port_addresses: node_port_addresses.iter().map(|s| net(s)).collect(),
            masquerade_all,
            detect_local: if node_cidr { DetectLocal::NodeCidr } else { DetectLocal::ClusterCidr },
            service_proxy_name: proxy_name,
            ..ProxyConfig::default()
        }
    }
}

prop_compose! {
    fn packet_spec()(
        v6 in proptest::bool::weighted(0.25),
        target in prop_oneof![
            4 => Just(Target::ClusterIp),
            1 => Just(Target::ClusterIpOtherPort),
            2 => Just(Target::ExternalIp),
            2 => Just(Target::LoadBalancerIp),
            3 => Just(Target::NodePort),
            1 => Just(Target::NodeIpOtherPort),
            1 => Just(Target::Elsewhere),
            1 => Just(Target::Unallocated),
        ],
        service in any::<Index>(),
        pick in any::<Index>(),
        source in prop_oneof![
            3 => (0u8..8).prop_map(Source::Pod),
            2 => Just(Source::TargetEndpoint),
            3 => Just(Source::Client),
            1 => Just(Source::Outsider),
            1 => Just(Source::NodeIp),
            1 => Just(Source::LoadBalancerIp),
        ],
        local in proptest::bool::weighted(0.15),
        any_service in proptest::bool::weighted(0.1),
        other in (protocol(), 1u16..100),
    ) -> PacketSpec {
        PacketSpec { v6, target, service, pick, source, local, any_service, other }
    }
}

/// A cluster of 1..9 services, a configuration and `packets` packets. The three are drawn
/// independently (no `prop_flat_map`), so that each shrinks on its own.
pub fn scenario(packets: usize) -> impl Strategy<Value = Scenario> {
    (cluster(1..9), config(), vec(packet_spec(), packets)).prop_map(
        |(cluster, mut config, packets)| {
            fit_node_ips(&mut config, &cluster.node);
            Scenario {
                cluster,
                config,
                packets,
            }
        },
    )
}

/// `--node-ip` as an operator would set it for `node`: required when the Node object is
/// missing, and only with the addresses the node has.
pub fn fit_node_ips(config: &mut ProxyConfig, node: &NodeSpec) {
    if config.node_ips.is_empty() && !node.present {
        config.node_ips = vec![ip(NODE_V4), ip(NODE_V6)];
    }
    if !node.v6 {
        config.node_ips.retain(IpAddr::is_ipv4);
    }
}

fn proto_name(proto: Protocol) -> &'static str {
    match proto {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn other_proto(proto: Protocol) -> Protocol {
    match proto {
        Protocol::Tcp => Protocol::Udp,
        Protocol::Udp | Protocol::Sctp => Protocol::Tcp,
    }
}

/// Pod number `k` (`0..8`) of a family: half on `node-a`'s pod CIDR, half elsewhere.
pub fn pod_ip(k: u8, v6: bool) -> IpAddr {
    let (subnet, host) = (1 + k / 4, 1 + k % 4);
    if v6 {
        ip(&format!("fd00::{subnet}:{host}"))
    } else {
        ip(&format!("10.0.{subnet}.{host}"))
    }
}

impl ServiceSpec {
    /// `svc<i>`.
    pub fn name(i: usize) -> String {
        format!("svc{i}")
    }

    /// The ClusterIP of a family, if the service has one.
    pub fn cluster_ip(&self, i: usize, v6: bool) -> Option<IpAddr> {
        if matches!(self.kind, Kind::ExternalName | Kind::Headless) || !self.families.has(v6) {
            return None;
        }
        Some(if v6 {
            ip(&format!("fd00:30::{:x}", i + 1))
        } else {
            ip(&format!("172.30.{}.{}", i / 250, i % 250 + 1))
        })
    }

    /// The external IPs of a family.
    pub fn external_ips(&self, i: usize, v6: bool) -> Vec<IpAddr> {
        (self.external_ips.iter().enumerate())
            .filter(|(_, f)| **f == v6)
            .map(|(k, _)| {
                if v6 {
                    ip(&format!("2001:db8:e::{i:x}:{:x}", k + 1))
                } else {
                    ip(&format!("198.18.{i}.{}", k + 1))
                }
            })
            .collect()
    }

    /// The load-balancer ingress IPs of a family, with their `ipMode: Proxy` flag.
    pub fn lb_ips(&self, i: usize, v6: bool) -> Vec<(IpAddr, bool)> {
        (self.lb_ingress.iter().enumerate())
            .filter(|(_, (f, _))| *f == v6)
            .map(|(k, (_, proxy))| {
                let addr = if v6 {
                    ip(&format!("2001:db8:b::{i:x}:{:x}", k + 1))
                } else {
                    ip(&format!("198.19.{i}.{}", k + 1))
                };
                (addr, *proxy)
            })
            .collect()
    }

    fn port_name(&self, k: usize) -> String {
        if self.unnamed && self.ports.len() == 1 {
            String::new()
        } else {
            format!("p{k}")
        }
    }

    /// The slice's family, resolved against the service's families.
    fn slice_v6(&self, slice: &SliceSpec) -> Option<bool> {
        match slice.family {
            SliceFamily::Fqdn => None,
            SliceFamily::Primary => Some(self.families.primary_v6()),
            SliceFamily::Secondary => Some(!self.families.primary_v6()),
        }
    }

    /// Pod addresses of the service's slices in a family.
    pub fn endpoint_ips(&self, v6: bool) -> Vec<IpAddr> {
        let mut out = BTreeSet::new();
        for slice in &self.slices {
            if self.slice_v6(slice) == Some(v6) {
                for e in &slice.endpoints {
                    if let AddressSpec::Pod(k) = e.address {
                        out.insert(pod_ip(k, v6));
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    fn to_json(&self, i: usize) -> Value {
        let mut labels = Map::new();
        if let Some(name) = self.proxy_name {
            labels.insert(
                "service.kubernetes.io/service-proxy-name".into(),
                name.into(),
            );
        }
        let ports: Vec<Value> = (self.ports.iter().enumerate())
            .map(|(k, p)| {
                let mut port = json!({ "protocol": proto_name(p.proto), "port": p.port, "targetPort": p.target });
                let name = self.port_name(k);
                if !name.is_empty() {
                    port["name"] = name.into();
                }
                if let Some(node_port) = p.node_port.filter(|_| matches!(self.kind, Kind::NodePort | Kind::LoadBalancer)) {
                    port["nodePort"] = node_port.into();
                }
                port
            })
            .collect();
        let mut spec = json!({ "ports": ports });
        match self.kind {
            Kind::ExternalName => {
                spec["type"] = "ExternalName".into();
                spec["externalName"] = "db.example.com".into();
            }
            Kind::Headless => {
                spec["type"] = "ClusterIP".into();
                spec["clusterIP"] = "None".into();
                spec["clusterIPs"] = json!(["None"]);
            }
            Kind::ClusterIp | Kind::NodePort | Kind::LoadBalancer => {
                spec["type"] = match self.kind {
                    Kind::NodePort => "NodePort",
                    Kind::LoadBalancer => "LoadBalancer",
                    _ => "ClusterIP",
                }
                .into();
                let order = if self.families.primary_v6() {
                    [true, false]
                } else {
                    [false, true]
                };
                let ips: Vec<String> = order
                    .iter()
                    .filter_map(|v6| self.cluster_ip(i, *v6))
                    .map(|ip| ip.to_string())
                    .collect();
                spec["clusterIP"] = ips[0].clone().into();
                spec["clusterIPs"] = ips.into();
            }
        }
        let external: Vec<String> = [false, true]
            .iter()
            .flat_map(|v6| self.external_ips(i, *v6))
            .map(|ip| ip.to_string())
            .collect();
        if !external.is_empty() {
            spec["externalIPs"] = external.into();
        }
        if !self.source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = self.source_ranges.clone().into();
        }
        if matches!(self.kind, Kind::NodePort | Kind::LoadBalancer) {
            spec["externalTrafficPolicy"] = if self.etp_local { "Local" } else { "Cluster" }.into();
        }
        if self.itp_local {
            spec["internalTrafficPolicy"] = "Local".into();
        }
        if let Some(timeout) = self.affinity {
            spec["sessionAffinity"] = "ClientIP".into();
            if let Some(t) = timeout {
                spec["sessionAffinityConfig"] = json!({ "clientIP": { "timeoutSeconds": t } });
            }
        }
        let mut service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": Self::name(i), "namespace": self.namespace, "labels": labels },
            "spec": spec,
        });
        let ingress: Vec<Value> = [false, true]
            .iter()
            .flat_map(|v6| self.lb_ips(i, *v6))
            .map(|(addr, proxy)| json!({ "ip": addr.to_string(), "ipMode": if proxy { "Proxy" } else { "VIP" } }))
            .collect();
        if !ingress.is_empty() {
            service["status"] = json!({ "loadBalancer": { "ingress": ingress } });
        }
        service
    }

    fn slice_json(&self, i: usize, j: usize, slice: &SliceSpec) -> Value {
        let v6 = self.slice_v6(slice);
        let mut labels = Map::new();
        let mut namespace = self.namespace;
        match slice.owner {
            SliceOwner::Own => {
                labels.insert("kubernetes.io/service-name".into(), Self::name(i).into());
            }
            SliceOwner::Unlabelled => {}
            SliceOwner::Missing => {
                labels.insert(
                    "kubernetes.io/service-name".into(),
                    "no-such-service".into(),
                );
            }
            SliceOwner::OtherNamespace => {
                labels.insert("kubernetes.io/service-name".into(), Self::name(i).into());
                namespace = if namespace == "default" {
                    "shop"
                } else {
                    "default"
                };
            }
        }
        if slice.headless_label {
            labels.insert("service.kubernetes.io/headless".into(), "".into());
        }
        let ports: Vec<Value> = (self.ports.iter().enumerate())
            .zip(&slice.ports)
            .filter(|(_, (listed, _))| *listed)
            .map(|((k, p), (_, wrong_proto))| {
                let proto = if *wrong_proto {
                    other_proto(p.proto)
                } else {
                    p.proto
                };
                let mut port =
                    json!({ "protocol": proto_name(proto), "port": p.target + slice.port_shift });
                let name = self.port_name(k);
                if !name.is_empty() {
                    port["name"] = name.into();
                }
                port
            })
            .collect();
        let endpoints: Vec<Value> = slice
            .endpoints
            .iter()
            .map(|e| {
                let address = match (e.address, v6) {
                    (_, None) => format!("pod-{j}.{}.svc.example.com", Self::name(i)),
                    (AddressSpec::Pod(k), Some(v6)) => pod_ip(k, v6).to_string(),
                    (AddressSpec::BadOctet, Some(false)) => "10.0.0.300".to_owned(),
                    (AddressSpec::BadOctet, Some(true)) => "fd00::1::2".to_owned(),
                    (AddressSpec::NotAnIp, _) => "not-an-ip".to_owned(),
                    (AddressSpec::WrongFamily, Some(v6)) => pod_ip(0, !v6).to_string(),
                };
                let mut conditions = Map::new();
                for (key, value) in [
                    ("ready", e.ready),
                    ("serving", e.serving),
                    ("terminating", e.terminating),
                ] {
                    if let Some(value) = value {
                        conditions.insert(key.into(), value.into());
                    }
                }
                let mut endpoint = json!({ "addresses": [address], "conditions": conditions });
                if let Some(node) = e.node {
                    endpoint["nodeName"] = node.into();
                }
                if let Some(zone) = e.zone {
                    endpoint["zone"] = zone.into();
                }
                let mut hints = Map::new();
                let named = |names: &[&str]| {
                    names
                        .iter()
                        .map(|n| json!({ "name": n }))
                        .collect::<Vec<_>>()
                };
                if let Some(zones) = &e.hint_zones {
                    hints.insert("forZones".into(), named(zones).into());
                }
                if let Some(nodes) = &e.hint_nodes {
                    hints.insert("forNodes".into(), named(nodes).into());
                }
                if !hints.is_empty() {
                    endpoint["hints"] = hints.into();
                }
                endpoint
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": { "name": format!("{}-{j}", Self::name(i)), "namespace": namespace, "labels": labels },
            "addressType": match v6 { None => "FQDN", Some(false) => "IPv4", Some(true) => "IPv6" },
            "ports": ports,
            "endpoints": endpoints,
        })
    }
}

impl ClusterSpec {
    /// Enforces what the API server would: unique `(protocol, port)` per service and NodePorts
    /// unique cluster-wide. Also makes every copy of an endpoint (same pod in several slices of
    /// one service) agree on its conditions, node, zone and hints: kube-proxy merges such
    /// duplicates in map order, so disagreeing copies have no single right answer.
    pub fn normalize(&mut self) {
        let mut used = BTreeSet::new();
        for service in &mut self.services {
            let mut seen = BTreeSet::new();
            service.ports.retain(|p| seen.insert((p.proto, p.port)));
            for port in &mut service.ports {
                if let Some(node_port) = &mut port.node_port {
                    for _ in 0..NODE_PORT_RANGE {
                        if used.insert((port.proto, *node_port)) {
                            break;
                        }
                        *node_port =
                            NODE_PORT_BASE + (*node_port - NODE_PORT_BASE + 1) % NODE_PORT_RANGE;
                    }
                }
            }
            let families: Vec<Option<bool>> =
                service.slices.iter().map(|s| service.slice_v6(s)).collect();
            let mut first: BTreeMap<(Option<bool>, AddressSpec), EndpointSpec> = BTreeMap::new();
            for (slice, v6) in service.slices.iter_mut().zip(families) {
                for e in &mut slice.endpoints {
                    if let AddressSpec::Pod(_) = e.address {
                        let original = first.entry((v6, e.address)).or_insert_with(|| e.clone());
                        *e = original.clone();
                    }
                }
            }
        }
    }

    /// The same shapes `times` over: service `i + k * n` is a copy of service `i`.
    pub fn repeated(&self, times: usize) -> Self {
        let services = (0..times)
            .flat_map(|_| self.services.iter().cloned())
            .collect();
        let mut cluster = Self {
            services,
            node: self.node.clone(),
            service_cidrs: self.service_cidrs,
        };
        cluster.normalize();
        cluster
    }

    /// The cluster as a `kind: List` of Kubernetes objects.
    pub fn to_json(&self) -> Value {
        let mut items = vec![];
        for (i, service) in self.services.iter().enumerate() {
            items.push(service.to_json(i));
            for (j, slice) in service.slices.iter().enumerate() {
                items.push(service.slice_json(i, j, slice));
            }
        }
        if self.node.present {
            let mut labels = Map::new();
            if let Some(zone) = self.node.zone {
                labels.insert("topology.kubernetes.io/zone".into(), zone.into());
            }
            let mut addresses = vec![json!({ "type": "InternalIP", "address": NODE_V4 })];
            if self.node.v6 {
                addresses.push(json!({ "type": "InternalIP", "address": NODE_V6 }));
            }
            addresses.push(json!({ "type": "Hostname", "address": NODE }));
            let mut node = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": { "name": NODE, "labels": labels },
                "status": { "addresses": addresses },
            });
            if self.node.pod_cidrs {
                node["spec"] = json!({ "podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24", "fd00::1:0/112"] });
            }
            items.push(node);
        }
        if self.service_cidrs {
            items.push(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "ServiceCIDR",
                "metadata": { "name": "kubernetes" },
                "spec": { "cidrs": [SERVICE_CIDR_V4, SERVICE_CIDR_V6] },
            }));
        }
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": "node-b", "labels": { "topology.kubernetes.io/zone": "zone-b" } },
            "spec": { "podCIDRs": ["10.0.2.0/24", "fd00::2:0/112"] },
            "status": { "addresses": [{ "type": "InternalIP", "address": "192.168.0.3" }] },
        }));
        json!({ "apiVersion": "v1", "kind": "List", "items": items })
    }
}

impl Scenario {
    /// The packets, resolved against the cluster.
    pub fn packets(&self) -> Vec<Packet> {
        self.packets
            .iter()
            .map(|p| p.resolve(&self.cluster, &self.config))
            .collect()
    }
}

impl PacketSpec {
    /// Services `target` can aim at in a family. Only services this proxy handles, unless
    /// [`Self::any_service`].
    fn candidates(
        &self,
        cluster: &ClusterSpec,
        config: &ProxyConfig,
        target: Target,
        v6: bool,
    ) -> Vec<usize> {
        let services = &cluster.services;
        (0..services.len())
            .filter(|&i| {
                let s = &services[i];
                let ours = s.proxy_name == config.service_proxy_name.as_deref()
                    && !matches!(s.kind, Kind::ExternalName | Kind::Headless);
                // Without a ClusterIP of the family the service does not exist in that family.
                if !(self.any_service || ours && s.cluster_ip(i, v6).is_some()) {
                    return false;
                }
                match target {
                    Target::ClusterIp | Target::ClusterIpOtherPort => s.cluster_ip(i, v6).is_some(),
                    Target::ExternalIp => !s.external_ips(i, v6).is_empty(),
                    Target::LoadBalancerIp => {
                        (s.kind == Kind::LoadBalancer || self.any_service)
                            && s.lb_ips(i, v6)
                                .iter()
                                .any(|(_, proxy)| !proxy || self.any_service)
                    }
                    Target::NodePort => {
                        matches!(s.kind, Kind::NodePort | Kind::LoadBalancer)
                            && s.ports.iter().any(|p| p.node_port.is_some())
                    }
                    Target::NodeIpOtherPort | Target::Elsewhere | Target::Unallocated => true,
                }
            })
            .collect()
    }

    /// The concrete packet this spec describes in `cluster` under `config`. When no service
    /// fits the target, a ClusterIP of the same family, then the other family, is aimed at, so
    /// that few packets miss every service.
    pub fn resolve(&self, cluster: &ClusterSpec, config: &ProxyConfig) -> Packet {
        let services = &cluster.services;
        let fallbacks = [
            (self.target, self.v6),
            (Target::ClusterIp, self.v6),
            (self.target, !self.v6),
            (Target::ClusterIp, !self.v6),
        ];
        let found = fallbacks.iter().find_map(|&(target, v6)| {
            let candidates = self.candidates(cluster, config, target, v6);
            (!candidates.is_empty())
                .then(|| (target, v6, candidates[self.service.index(candidates.len())]))
        });
        let (target, v6, chosen) = match found {
            Some((target, v6, i)) => (target, v6, Some(i)),
            None => (self.target, self.v6, None),
        };
        let node_ip = ip(if v6 { NODE_V6 } else { NODE_V4 });
        let (other_proto, other_port) = self.other;
        let elsewhere = if v6 {
            ip("2001:db8:77::1")
        } else {
            ip("198.18.200.1")
        };

        let unallocated = if v6 {
            ip("fd00:30::f:fffe")
        } else {
            ip("172.30.254.254")
        };
        let (dst, proto, dport) = match (target, chosen) {
            (Target::Unallocated, _) => (unallocated, other_proto, other_port),
            (_, None) | (Target::Elsewhere, _) => (elsewhere, other_proto, other_port),
            (Target::NodeIpOtherPort, _) => (node_ip, other_proto, other_port),
            (target, Some(i)) => {
                let s = &services[i];
                let port = &s.ports[self.pick.index(s.ports.len())];
                match target {
                    Target::ClusterIp => (
                        s.cluster_ip(i, v6).unwrap_or(elsewhere),
                        port.proto,
                        port.port,
                    ),
                    Target::ClusterIpOtherPort => (
                        s.cluster_ip(i, v6).unwrap_or(elsewhere),
                        other_proto,
                        other_port,
                    ),
                    Target::ExternalIp => {
                        let ips = s.external_ips(i, v6);
                        (ips[self.pick.index(ips.len())], port.proto, port.port)
                    }
                    Target::LoadBalancerIp => {
                        let ips = s.lb_ips(i, v6);
                        let usable: Vec<IpAddr> = ips
                            .iter()
                            .filter(|(_, proxy)| !proxy || self.any_service)
                            .map(|(addr, _)| *addr)
                            .collect();
                        (usable[self.pick.index(usable.len())], port.proto, port.port)
                    }
                    _ => {
                        let with: Vec<&PortSpec> =
                            s.ports.iter().filter(|p| p.node_port.is_some()).collect();
                        let port = with[self.pick.index(with.len())];
                        (node_ip, port.proto, port.node_port.unwrap_or(other_port))
                    }
                }
            }
        };

        let src = if self.local {
            node_ip
        } else {
            match self.source {
                Source::Pod(k) => pod_ip(k, v6),
                Source::TargetEndpoint => {
                    let ips = chosen
                        .map(|i| services[i].endpoint_ips(v6))
                        .unwrap_or_default();
                    if ips.is_empty() {
                        pod_ip(0, v6)
                    } else {
                        ips[self.pick.index(ips.len())]
                    }
                }
                Source::Client => ip(if v6 { "2001:db8:ff::2" } else { "203.0.113.2" }),
                Source::Outsider => ip(if v6 { "2001:db8:1::9" } else { "100.64.0.9" }),
                Source::NodeIp => node_ip,
                Source::LoadBalancerIp => {
                    let ips = chosen
                        .map(|i| services[i].lb_ips(i, v6))
                        .unwrap_or_default();
                    match ips.first() {
                        Some((addr, _)) => *addr,
                        None => ip(if v6 { "2001:db8:ff::2" } else { "203.0.113.2" }),
                    }
                }
            }
        };
        Packet {
            src,
            dst,
            proto,
            dport,
            origin: if self.local {
                Origin::Local
            } else {
                Origin::Interface
            },
        }
    }
}
