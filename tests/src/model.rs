//! A reference model of what kube-proxy (nftables mode) does with the first packet of a new
//! connection, computed straight from the Service semantics rather than from a ruleset.
//!
//! The property tests compare it with the packet tracer run over the compiled ruleset: two
//! independent answers to "where does this packet go?". It deliberately knows nothing about
//! chains, maps or marks, and it is written for clarity, not speed.
//!
//! Every rule below names the kube-proxy behaviour it encodes (`pkg/proxy/topology.go`,
//! `pkg/proxy/nftables/proxier.go`, `pkg/proxy/endpointslicecache.go`). Session affinity plays no
//! part: a new connection without affinity state is balanced like any other.
//!
//! Packets the node sends itself ([`Origin::Local`]) follow the same rules: since
//! kubernetes/kubernetes#132456 the no-endpoint drop/reject checks run after DNAT for them too,
//! so the node is short-circuited to the cluster endpoints of an `externalTrafficPolicy: Local`
//! service that has none on this node. Loopback counts as a node address for `fib saddr type
//! local`, but NodePorts are never served on loopback addresses (as kube-proxy's nftables mode).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use nftproxy_core::config::DetectLocal;
use nftproxy_core::snapshot::{
    EndpointSlice, IpFamily, Node, Service, ServicePort, ServiceType, Snapshot, TrafficPolicy,
};
use nftproxy_core::trace::{Origin, Packet};
use nftproxy_core::ProxyConfig;

/// What happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Destination NAT to one of [`Expected::endpoints`].
    Dnat,
    /// Silently dropped.
    Drop,
    /// Rejected (ICMP port unreachable).
    Reject,
    /// Not ours: the proxy leaves the packet alone.
    Pass,
}

/// The model's answer for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The verdict.
    pub verdict: Verdict,
    /// For [`Verdict::Dnat`], every endpoint the packet may be sent to, with whether it is
    /// masqueraded (SNAT) on the way; empty otherwise.
    pub endpoints: BTreeMap<SocketAddr, bool>,
    /// Endpoints of [`Self::endpoints`] whose masquerade flag is not checked: a pod of another
    /// node reaching itself through a ClusterIP, external IP or load-balancer IP. That packet
    /// cannot arrive here (its own node DNATs it), so kube-proxy's hairpin masquerade for it is
    /// never exercised on this node.
    pub unchecked_masquerade: BTreeSet<SocketAddr>,
    /// Which rule of the model decided, for failure messages.
    pub reason: String,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.verdict)?;
        for (endpoint, masquerade) in &self.endpoints {
            write!(f, " {endpoint}{}", if *masquerade { "(masq)" } else { "" })?;
        }
        write!(f, " [{}]", self.reason)
    }
}

impl Expected {
    fn verdict(verdict: Verdict, reason: impl Into<String>) -> Self {
        Self {
            verdict,
            endpoints: BTreeMap::new(),
            unchecked_masquerade: BTreeSet::new(),
            reason: reason.into(),
        }
    }

    /// DNAT to `endpoints`, each masqueraded if `masquerade`, or if it is the packet's own source
    /// (hairpin: every endpoint chain masquerades traffic from the endpoint to itself, so that
    /// the reply comes back through the node). A pod's traffic to a service is DNATed on its own
    /// node, so an endpoint of another node reaches itself here only through a NodePort of this
    /// node (`via_node_port`); otherwise its flag is left unchecked.
    fn dnat(
        endpoints: &[Endpoint],
        masquerade: bool,
        src: IpAddr,
        via_node_port: bool,
        reason: impl Into<String>,
    ) -> Self {
        let hairpin = |e: &Endpoint| e.addr.ip() == src;
        Self {
            verdict: Verdict::Dnat,
            endpoints: endpoints
                .iter()
                .map(|e| (e.addr, masquerade || hairpin(e)))
                .collect(),
            unchecked_masquerade: endpoints
                .iter()
                .filter(|e| !masquerade && hairpin(e) && !e.local && !via_node_port)
                .map(|e| e.addr)
                .collect(),
            reason: reason.into(),
        }
    }

    /// Whether a tracer's answer agrees: same verdict and endpoints, same masquerade flags
    /// except where they are unchecked.
    pub fn agrees(&self, verdict: Verdict, endpoints: &BTreeMap<SocketAddr, bool>) -> bool {
        verdict == self.verdict
            && endpoints.len() == self.endpoints.len()
            && endpoints.iter().all(|(e, m)| {
                self.endpoints
                    .get(e)
                    .is_some_and(|want| want == m || self.unchecked_masquerade.contains(e))
            })
    }
}

/// One endpoint of one service port, as kube-proxy's `BaseEndpointInfo`.
#[derive(Debug, Clone)]
struct Endpoint {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    hint_zones: Vec<String>,
    hint_nodes: Vec<String>,
}

impl Endpoint {
    /// Usable as a fallback when nothing is ready (`IsServing() && IsTerminating()`).
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// This node as one family's proxier sees it.
struct NodeView<'a> {
    config: &'a ProxyConfig,
    family: IpFamily,
    /// Node IPs of this family: `--node-ip` if given, else the Node object's addresses.
    ips: Vec<IpAddr>,
    /// Every node-owned address (all families), what `fib saddr type local` recognises.
    owned: Vec<IpAddr>,
    /// `topology.kubernetes.io/zone` of the Node object.
    zone: Option<&'a str>,
    /// The local-traffic detector's CIDRs of this family; empty means "not implemented".
    pod_cidrs: Vec<IpNet>,
}

impl<'a> NodeView<'a> {
    fn new(snapshot: &'a Snapshot, config: &'a ProxyConfig, family: IpFamily) -> Self {
        let node: Option<&Node> = snapshot.nodes.get(&config.node_name);
        let owned: Vec<IpAddr> = if config.node_ips.is_empty() {
            node.map(|n| n.addresses.clone()).unwrap_or_default()
        } else {
            config.node_ips.clone()
        };
        let ips = owned
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == family)
            .collect();
        // kube-proxy's LocalTrafficDetector: by cluster CIDR or by this node's pod CIDRs; without
        // a CIDR of this family it is "not implemented" and every pod-based rule is left out.
        let detector_cidrs: Vec<IpNet> = match config.detect_local {
            DetectLocal::ClusterCidr => config.cluster_cidrs.clone(),
            DetectLocal::NodeCidr => node.map(|n| n.pod_cidrs.clone()).unwrap_or_default(),
        };
        let pod_cidrs = detector_cidrs
            .into_iter()
            .filter(|net| net_family(net) == family)
            .collect();
        Self {
            config,
            family,
            ips,
            owned,
            zone: node.and_then(|n| n.zone.as_deref()),
            pod_cidrs,
        }
    }

    fn detector_implemented(&self) -> bool {
        !self.pod_cidrs.is_empty()
    }

    /// `IfLocal`: the source is a pod (only meaningful when the detector is implemented).
    fn is_pod_source(&self, src: IpAddr) -> bool {
        self.pod_cidrs.iter().any(|net| net.contains(&src))
    }

    /// `fib saddr type local`: the source is an address of this node.
    fn is_node_owned(&self, addr: IpAddr, origin: &Origin) -> bool {
        self.owned.contains(&addr) || (matches!(origin, Origin::Local) && addr.is_loopback())
    }

    /// Whether NodePorts answer on `dst` (`nodePortAddresses`, as `NewNodePortAddresses`): an
    /// empty list means the node's primary IP of each family (kube-proxy's `primary`); otherwise
    /// the list is filtered to this family, and a `/0`, or no CIDR of this family at all, means
    /// any local address (`fib daddr type local`); else the node IPs inside the CIDRs.
    fn is_node_port_address(&self, dst: IpAddr, origin: &Origin) -> bool {
        if self.config.node_port_addresses.is_empty() {
            return self.ips.first() == Some(&dst);
        }
        let cidrs: Vec<&IpNet> = self
            .config
            .node_port_addresses
            .iter()
            .filter(|net| net_family(net) == self.family)
            .collect();
        if cidrs.is_empty() || cidrs.iter().any(|net| net.prefix_len() == 0) {
            self.is_node_owned(dst, origin) && !dst.is_loopback()
        } else {
            self.ips.contains(&dst) && cidrs.iter().any(|net| net.contains(&dst))
        }
    }
}

fn net_family(net: &IpNet) -> IpFamily {
    match net {
        IpNet::V4(_) => IpFamily::V4,
        IpNet::V6(_) => IpFamily::V6,
    }
}

/// A service as one family's proxier sees it (kube-proxy's `ServicePort` minus the port).
struct ServiceView<'a> {
    service: &'a Service,
    /// The first ClusterIP of the family.
    cluster_ip: IpAddr,
    /// `spec.externalIPs` of the family (any service type).
    external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of the family, only for `type: LoadBalancer`.
    lb_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of the family (kube-proxy drops the other family's).
    source_ranges: Vec<IpNet>,
    /// NodePorts count only for `type: NodePort` and `type: LoadBalancer`.
    node_ports: bool,
}

impl<'a> ServiceView<'a> {
    /// `None` for services this proxier ignores: ExternalName, headless, another proxy's
    /// (`service.kubernetes.io/service-proxy-name`), or without a ClusterIP of this family.
    fn new(service: &'a Service, config: &ProxyConfig, family: IpFamily) -> Option<Self> {
        if service.service_type == ServiceType::ExternalName
            || service.is_headless()
            || service.service_proxy_name != config.service_proxy_name
        {
            return None;
        }
        let cluster_ip = *service
            .cluster_ips
            .iter()
            .find(|ip| IpFamily::of(ip) == family)?;
        let of_family = |ips: &[IpAddr]| {
            ips.iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == family)
                .collect()
        };
        let lb_ips = if service.service_type == ServiceType::LoadBalancer {
            of_family(&service.load_balancer_ips)
        } else {
            vec![]
        };
        Some(Self {
            service,
            cluster_ip,
            external_ips: of_family(&service.external_ips),
            lb_ips,
            source_ranges: service
                .load_balancer_source_ranges
                .iter()
                .copied()
                .filter(|net| net_family(net) == family)
                .collect(),
            node_ports: matches!(
                service.service_type,
                ServiceType::NodePort | ServiceType::LoadBalancer
            ),
        })
    }

    fn node_port(&self, port: &ServicePort) -> Option<u16> {
        port.node_port.filter(|_| self.node_ports)
    }

    /// `ExternallyAccessible()`: a NodePort, an external IP or a load-balancer IP.
    fn externally_accessible(&self, port: &ServicePort) -> bool {
        self.node_port(port).is_some() || !self.external_ips.is_empty() || !self.lb_ips.is_empty()
    }
}

/// The endpoints of one service port (`EndpointSliceCache`): from every slice of the service in
/// this family, the slice port with the same name and protocol gives the target port. An
/// endpoint seen twice (same address and port) counts once; the first copy wins unless a later
/// one is local.
fn endpoints_of(
    snapshot: &Snapshot,
    view: &ServiceView<'_>,
    port: &ServicePort,
    node: &NodeView<'_>,
) -> Vec<Endpoint> {
    let name = &view.service.name;
    let slices = snapshot.slices.values().filter(|slice: &&EndpointSlice| {
        slice.name.namespace == name.namespace
            && slice.service_name.as_deref() == Some(name.name.as_str())
            && !slice.headless_label
            && slice.address_type.family() == Some(node.family)
    });
    let mut found: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let local = endpoint.node_name.as_deref() == Some(node.config.node_name.as_str());
            let info = Endpoint {
                addr: SocketAddr::new(endpoint.address, target.port),
                ready: endpoint.ready,
                serving: endpoint.serving,
                terminating: endpoint.terminating,
                local,
                hint_zones: endpoint.hint_zones.clone(),
                hint_nodes: endpoint.hint_nodes.clone(),
            };
            if local || !found.contains_key(&info.addr) {
                found.insert(info.addr, info);
            }
        }
    }
    found.into_values().collect()
}

/// The outcome of `CategorizeEndpoints` for one service port.
struct Categorized {
    /// Endpoints for "Cluster" traffic policy (topology-filtered).
    cluster: Vec<Endpoint>,
    /// Endpoints for "Local" traffic policy.
    local: Vec<Endpoint>,
    /// Some endpoint anywhere can take traffic.
    has_any: bool,
}

/// `topologyModeFromHints`: which endpoints "Cluster" traffic may use.
enum Topology {
    /// Every ready endpoint has node hints and some are for this node: only those.
    SameNode,
    /// Every ready endpoint has zone hints and some are for this node's zone: only those.
    SameZone,
    /// No filtering.
    Any,
}

/// kube-proxy's `CategorizeEndpoints` (`pkg/proxy/topology.go`).
fn categorize(
    endpoints: &[Endpoint],
    view: &ServiceView<'_>,
    port: &ServicePort,
    node: &NodeView<'_>,
) -> Categorized {
    let accessible = view.externally_accessible(port);
    let etp_local = view.service.external_traffic_policy == TrafficPolicy::Local && accessible;
    let itp_local = view.service.internal_traffic_policy == TrafficPolicy::Local;
    let uses_cluster = !itp_local || accessible;
    let uses_local = itp_local || etp_local;

    let mut out = Categorized {
        cluster: vec![],
        local: vec![],
        has_any: false,
    };
    if uses_cluster {
        // Topology: only when every ready endpoint carries hints and some hint is for us (node
        // hints first, then zone hints), keep the endpoints hinted for us.
        let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
        let node_name = node.config.node_name.as_str();
        let for_node = |e: &Endpoint| e.hint_nodes.iter().any(|n| n == node_name);
        let for_zone = |e: &Endpoint| {
            node.zone
                .is_some_and(|z| e.hint_zones.iter().any(|h| h == z))
        };
        let topology = if ready.iter().all(|e| !e.hint_nodes.is_empty())
            && ready.iter().any(|e| for_node(e))
        {
            Topology::SameNode
        } else if ready.iter().all(|e| !e.hint_zones.is_empty())
            && ready.iter().any(|e| for_zone(e))
        {
            Topology::SameZone
        } else {
            Topology::Any
        };
        let available = |e: &Endpoint| match topology {
            Topology::SameNode => for_node(e),
            Topology::SameZone => for_zone(e),
            Topology::Any => true,
        };
        out.cluster = endpoints
            .iter()
            .filter(|e| e.ready && available(e))
            .cloned()
            .collect();
        // Nothing ready anywhere: fall back to endpoints that are serving while terminating.
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| e.serving_terminating() && available(e))
                .cloned()
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if uses_local {
        if endpoints.iter().any(|e| e.ready || e.serving_terminating()) {
            out.has_any = true;
        }
        out.local = endpoints
            .iter()
            .filter(|e| e.local && e.ready)
            .cloned()
            .collect();
        if out.local.is_empty() {
            out.local = endpoints
                .iter()
                .filter(|e| e.local && e.serving_terminating())
                .cloned()
                .collect();
        }
    }
    out
}

/// Where a packet addressed to a service port came in.
enum Entry {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    NodePort,
}

/// What kube-proxy does with the first packet of a new connection `packet`.
pub fn expect(snapshot: &Snapshot, config: &ProxyConfig, packet: &Packet) -> Expected {
    let family = IpFamily::of(&packet.dst);
    let node = NodeView::new(snapshot, config, family);
    let services: Vec<ServiceView<'_>> = snapshot
        .services
        .values()
        .filter_map(|s| ServiceView::new(s, config, family))
        .collect();
    let hits = |port: &ServicePort| port.protocol == packet.proto && port.port == packet.dport;

    // The `service-ips` map first (ClusterIPs, then external and load-balancer IPs: they never
    // overlap here), then the `service-nodeports` map on NodePort addresses.
    let mut found = None;
    for view in &services {
        for port in view.service.ports.iter().filter(|p| hits(p)) {
            if view.cluster_ip == packet.dst {
                found = Some((view, port, Entry::ClusterIp));
            } else if found.is_none() && view.external_ips.contains(&packet.dst) {
                found = Some((view, port, Entry::ExternalIp));
            } else if found.is_none() && view.lb_ips.contains(&packet.dst) {
                found = Some((view, port, Entry::LoadBalancerIp));
            }
        }
    }
    if found.is_none() && node.is_node_port_address(packet.dst, &packet.origin) {
        found = services.iter().find_map(|view| {
            let port =
                view.service.ports.iter().find(|p| {
                    p.protocol == packet.proto && view.node_port(p) == Some(packet.dport)
                })?;
            Some((view, port, Entry::NodePort))
        });
    }
    let Some((view, port, entry)) = found else {
        // `cluster-ips-check`: a ClusterIP on a port the service does not define.
        if services.iter().any(|v| v.cluster_ip == packet.dst) {
            return Expected::verdict(Verdict::Reject, "clusterIP on an undefined port");
        }
        // ... and then an address inside a ServiceCIDR that no service of ours has: dropped
        // (checked on forwarded and node-originated traffic, not on traffic to the node).
        let cidrs: Vec<IpNet> = if snapshot.service_cidrs.is_empty() {
            config.service_cidrs.clone()
        } else {
            snapshot.service_cidrs.values().flatten().copied().collect()
        };
        if !node.owned.contains(&packet.dst) && cidrs.iter().any(|c| c.contains(&packet.dst)) {
            return Expected::verdict(Verdict::Drop, "unallocated address in a ServiceCIDR");
        }
        return Expected::verdict(Verdict::Pass, "no service address");
    };

    let endpoints = endpoints_of(snapshot, view, port, &node);
    let cat = categorize(&endpoints, view, port, &node);
    let svc = format!("{} port {}/{}", view.service.name, port.protocol, port.port);
    let itp_local = view.service.internal_traffic_policy == TrafficPolicy::Local;
    let etp_local = view.service.external_traffic_policy == TrafficPolicy::Local
        && view.externally_accessible(port);

    if let Entry::ClusterIp = entry {
        // hasInternalEndpoints: with iTP Local only local endpoints count. Without any endpoint
        // anywhere the packet is rejected; with endpoints elsewhere only, dropped.
        let internal = if itp_local { &cat.local } else { &cat.cluster };
        if internal.is_empty() {
            return if cat.has_any {
                Expected::verdict(
                    Verdict::Drop,
                    format!("{svc}: clusterIP, iTP Local, no local endpoints"),
                )
            } else {
                Expected::verdict(Verdict::Reject, format!("{svc}: clusterIP, no endpoints"))
            };
        }
        // masqueradeAll, else masquerade off-cluster traffic to the ClusterIP (it may be
        // forwarded to another node) when the local detector can tell pods apart.
        let masquerade = config.masquerade_all
            || (node.detector_implemented() && !node.is_pod_source(packet.src));
        return Expected::dnat(
            internal,
            masquerade,
            packet.src,
            false,
            format!("{svc}: clusterIP"),
        );
    }

    // `firewall-check` runs before DNAT: a load-balancer IP with source ranges of this family
    // admits only those ranges, plus the service's own LB IPs when a range covers a node IP.
    if let Entry::LoadBalancerIp = entry {
        if cat.has_any && !view.source_ranges.is_empty() {
            let mut allowed = view
                .source_ranges
                .iter()
                .any(|net| net.contains(&packet.src));
            if view
                .source_ranges
                .iter()
                .any(|net| node.ips.iter().any(|ip| net.contains(ip)))
            {
                allowed |= view.lb_ips.contains(&packet.src);
            }
            if !allowed {
                return Expected::verdict(
                    Verdict::Drop,
                    format!("{svc}: source outside loadBalancerSourceRanges"),
                );
            }
        }
    }
    if !cat.has_any {
        return Expected::verdict(Verdict::Reject, format!("{svc}: external, no endpoints"));
    }
    if !etp_local {
        // eTP Cluster: the endpoint may be on another node; always masquerade.
        return Expected::dnat(
            &cat.cluster,
            true,
            packet.src,
            matches!(entry, Entry::NodePort),
            format!("{svc}: external, eTP Cluster"),
        );
    }
    // eTP Local keeps the client's source address, with two short-circuits first: pods go to
    // any endpoint as if via the load balancer, and the node itself is masqueraded (its source
    // address would be the service IP's own interface).
    if node.detector_implemented() && node.is_pod_source(packet.src) {
        return Expected::dnat(
            &cat.cluster,
            false,
            packet.src,
            matches!(entry, Entry::NodePort),
            format!("{svc}: external, eTP Local, pod source"),
        );
    }
    if node.is_node_owned(packet.src, &packet.origin) {
        return Expected::dnat(
            &cat.cluster,
            true,
            packet.src,
            matches!(entry, Entry::NodePort),
            format!("{svc}: external, eTP Local, node source"),
        );
    }
    if cat.local.is_empty() {
        return Expected::verdict(
            Verdict::Drop,
            format!("{svc}: external, eTP Local, no local endpoints"),
        );
    }
    Expected::dnat(
        &cat.local,
        false,
        packet.src,
        matches!(entry, Entry::NodePort),
        format!("{svc}: external, eTP Local"),
    )
}
