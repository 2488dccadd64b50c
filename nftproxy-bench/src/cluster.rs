//! A synthetic cluster of N services × M endpoints, shaped like a real one, and the one-object
//! changes the incremental measurements apply to it.
//!
//! Mix (per service, from a deterministic per-service random stream, so `generate(100, m)` is a
//! prefix of `generate(n, m)`):
//!
//! * type: ~70% ClusterIP, ~20% NodePort, ~10% LoadBalancer (one ingress IP from 198.18.0.0/15);
//! * ~10% of NodePort/LoadBalancer services have `externalTrafficPolicy: Local`;
//! * ~5% have `ClientIP` session affinity;
//! * ports: ~80% one TCP port (80, 443 or 8080), ~15% two (http 80 + https 443), ~5% three
//!   (dns 53/UDP, dns-tcp 53/TCP, metrics 9153/TCP);
//! * ClusterIPs are unique, from 172.16.0.0/12; node ports are allocated from 30000 up (past
//!   Kubernetes' default 30000-32767 range, as a cluster this size would configure);
//! * endpoints are ready pods with unique 10.K.x.y addresses on `node-K`, K random in 0..100; slices
//!   hold at most 100 endpoints.
//!
//! Service 0 is the data-plane probe: a ClusterIP service [`PROBE_CLUSTER_IP`]:80 whose single
//! endpoint is [`SERVER_POD_IP`]:[`SERVER_PORT`], the pod the data-plane measurement connects to.

use std::io::Write;
use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use serde_json::{json, Value};

/// Number of nodes endpoints are spread over; `node-0` is the node being programmed.
pub(crate) const NODES: u32 = 100;
/// The ClusterIP of the probe service (service 0).
pub(crate) const PROBE_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 10);
/// The probe service's port.
pub(crate) const PROBE_PORT: u16 = 80;
/// The data-plane server pod, the probe service's only endpoint (outside every node's 10.K/16).
pub(crate) const SERVER_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 2);
/// The data-plane client pod.
pub(crate) const CLIENT_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 3);
/// The port the server pod listens on.
pub(crate) const SERVER_PORT: u16 = 8080;

const SEED: u64 = 0x6e66_7470_726f_7879; // "nftproxy"
const FIRST_NODE_PORT: u32 = 30_000;
const SLICE_CAPACITY: usize = 100;

/// splitmix64: a small deterministic generator, enough for picking a mix.
struct Rng(u64);

impl Rng {
    fn for_service(index: usize) -> Self {
        Self(SEED ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// One service port and the matching EndpointSlice port.
#[derive(Debug, Clone)]
pub(crate) struct Port {
    name: &'static str,
    protocol: &'static str,
    port: u16,
    target: u16,
    node_port: Option<u16>,
}

/// One ready endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    ip: Ipv4Addr,
    node: u32,
}

/// A service and its endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) name: String,
    namespace: String,
    pub(crate) kind: Kind,
    cluster_ip: Ipv4Addr,
    pub(crate) ports: Vec<Port>,
    lb_ip: Option<Ipv4Addr>,
    etp_local: bool,
    affinity: bool,
    pub(crate) endpoints: Vec<Endpoint>,
}

/// The allocators' state, so that added objects get fresh addresses and ports.
#[derive(Debug, Clone)]
struct Allocators {
    /// Next pod host number per node.
    pods: Vec<u32>,
    next_node_port: u32,
    next_lb: u32,
    next_service: usize,
}

impl Allocators {
    fn pod(&mut self, node: u32) -> Result<Endpoint> {
        let host = &mut self.pods[node as usize];
        *host += 1;
        if *host > 0xfffe {
            bail!("more than 65534 pods on node-{node}");
        }
        let [_, _, c, d] = (*host).to_be_bytes();
        Ok(Endpoint {
            ip: Ipv4Addr::new(10, node as u8, c, d),
            node,
        })
    }

    fn node_port(&mut self) -> Result<u16> {
        let p = self.next_node_port;
        self.next_node_port += 1;
        u16::try_from(p).map_err(|_| anyhow::anyhow!("ran out of node ports (more than 35535)"))
    }
}

/// A whole synthetic cluster.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    pub(crate) services: Vec<Service>,
    alloc: Allocators,
}

/// Object counts of a written snapshot.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Counts {
    pub(crate) services: usize,
    pub(crate) slices: usize,
    pub(crate) endpoints: usize,
    pub(crate) bytes: u64,
}

/// How snapshot files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One `kind: List` JSON document, as `kubectl get -o json` prints.
    Json,
    /// Multi-document YAML.
    Yaml,
}

impl Cluster {
    /// `n` services (service 0 is the probe) with `m` endpoints each.
    pub(crate) fn generate(n: usize, m: usize) -> Result<Self> {
        let mut cluster = Self {
            services: Vec::with_capacity(n),
            alloc: Allocators {
                pods: vec![1; NODES as usize],
                next_node_port: FIRST_NODE_PORT,
                next_lb: 0,
                next_service: 0,
            },
        };
        for _ in 0..n {
            let svc = cluster.new_service(m, None)?;
            cluster.services.push(svc);
        }
        Ok(cluster)
    }

    fn new_service(&mut self, m: usize, force: Option<Kind>) -> Result<Service> {
        let i = self.alloc.next_service;
        self.alloc.next_service += 1;
        let cluster_ip = Ipv4Addr::from(u32::from(PROBE_CLUSTER_IP) + i as u32);
        if u32::from(cluster_ip) >= u32::from(Ipv4Addr::new(172, 32, 0, 0)) {
            bail!("more than a million services do not fit 172.16.0.0/12");
        }
        if i == 0 {
            return Ok(Service {
                name: "probe".into(),
                namespace: "bench".into(),
                kind: Kind::ClusterIp,
                cluster_ip,
                ports: vec![Port {
                    name: "http",
                    protocol: "TCP",
                    port: PROBE_PORT,
                    target: SERVER_PORT,
                    node_port: None,
                }],
                lb_ip: None,
                etp_local: false,
                affinity: false,
                endpoints: vec![Endpoint {
                    ip: SERVER_POD_IP,
                    node: 0,
                }],
            });
        }
        let mut rng = Rng::for_service(i);
        let kind = force.unwrap_or(match rng.below(100) {
            0..70 => Kind::ClusterIp,
            70..90 => Kind::NodePort,
            _ => Kind::LoadBalancer,
        });
        let mut ports = match rng.below(100) {
            0..80 => {
                let (port, target) = [(80, 8080), (443, 8443), (8080, 8080)][rng.below(3) as usize];
                vec![tcp("http", port, target)]
            }
            80..95 => vec![tcp("http", 80, 8080), tcp("https", 443, 8443)],
            _ => vec![
                Port {
                    name: "dns",
                    protocol: "UDP",
                    port: 53,
                    target: 53,
                    node_port: None,
                },
                tcp("dns-tcp", 53, 53),
                tcp("metrics", 9153, 9153),
            ],
        };
        let external = kind != Kind::ClusterIp;
        if external {
            for p in &mut ports {
                p.node_port = Some(self.alloc.node_port()?);
            }
        }
        let lb_ip = (kind == Kind::LoadBalancer).then(|| {
            self.alloc.next_lb += 1;
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + self.alloc.next_lb)
        });
        let etp_local = external && rng.below(10) == 0;
        let affinity = rng.below(20) == 0;
        let mut endpoints = Vec::with_capacity(m);
        for _ in 0..m {
            let node = rng.below(NODES);
            endpoints.push(self.alloc.pod(node)?);
        }
        Ok(Service {
            name: format!("svc-{i:06}"),
            namespace: format!("ns-{:02}", i % 50),
            kind,
            cluster_ip,
            ports,
            lb_ip,
            etp_local,
            affinity,
            endpoints,
        })
    }

    /// Index of the first single-port ClusterIP service at or after `from` (the typical service
    /// the one-object changes touch).
    fn typical_service(&self, from: usize) -> Result<usize> {
        (from.max(1)..self.services.len())
            .chain(1..from.max(1))
            .find(|&i| {
                let s = &self.services[i];
                s.kind == Kind::ClusterIp && s.ports.len() == 1 && !s.affinity
            })
            .ok_or_else(|| anyhow::anyhow!("no single-port ClusterIP service to change"))
    }

    /// Adds one endpoint to a typical service at or after `services.len() * num / den`; returns
    /// its name.
    pub(crate) fn add_endpoint(&mut self, num: usize, den: usize) -> Result<String> {
        let i = self.typical_service(self.services.len() * num / den)?;
        let node = Rng::for_service(i).below(NODES);
        let ep = self.alloc.pod(node)?;
        self.services[i].endpoints.push(ep);
        Ok(self.services[i].name.clone())
    }

    /// Removes the last endpoint of a typical service a third of the way in; returns its name.
    pub(crate) fn remove_endpoint(&mut self) -> Result<String> {
        let from = self.services.len() / 3;
        let i = (from.max(1)..self.services.len())
            .find(|&i| {
                let s = &self.services[i];
                s.kind == Kind::ClusterIp
                    && s.ports.len() == 1
                    && !s.affinity
                    && s.endpoints.len() > 1
            })
            .ok_or_else(|| anyhow::anyhow!("no service with an endpoint to remove"))?;
        self.services[i].endpoints.pop();
        Ok(self.services[i].name.clone())
    }

    /// Adds one ClusterIP service with `m` endpoints; returns its name.
    pub(crate) fn add_service(&mut self, m: usize) -> Result<String> {
        let svc = self.new_service(m, Some(Kind::ClusterIp))?;
        let name = svc.name.clone();
        self.services.push(svc);
        Ok(name)
    }

    /// Deletes a typical service two thirds of the way in (and its slices); returns its name.
    pub(crate) fn delete_service(&mut self) -> Result<String> {
        let i = self.typical_service(self.services.len() * 2 / 3)?;
        Ok(self.services.remove(i).name)
    }

    /// Writes the snapshot (Services and EndpointSlices) to `path`.
    pub(crate) fn write(&self, path: &std::path::Path, format: Format) -> Result<Counts> {
        let file = std::fs::File::create(path)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut counts = Counts::default();
        let mut first = true;
        let mut emit = |out: &mut std::io::BufWriter<std::fs::File>, v: &Value| -> Result<()> {
            match format {
                Format::Json => {
                    if !first {
                        out.write_all(b",\n")?;
                    }
                    serde_json::to_writer(&mut *out, v)?;
                }
                Format::Yaml => {
                    out.write_all(b"---\n")?;
                    serde_yaml::to_writer(&mut *out, v)?;
                }
            }
            first = false;
            Ok(())
        };
        if format == Format::Json {
            out.write_all(b"{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[\n")?;
        }
        for svc in &self.services {
            emit(&mut out, &svc.service_object())?;
            counts.services += 1;
            for slice in svc.slice_objects() {
                emit(&mut out, &slice)?;
                counts.slices += 1;
            }
            counts.endpoints += svc.endpoints.len();
        }
        if format == Format::Json {
            out.write_all(b"\n]}\n")?;
        }
        out.flush()?;
        drop(out);
        counts.bytes = std::fs::metadata(path)?.len();
        Ok(counts)
    }
}

fn tcp(name: &'static str, port: u16, target: u16) -> Port {
    Port {
        name,
        protocol: "TCP",
        port,
        target,
        node_port: None,
    }
}

impl Service {
    fn service_object(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({
                    "name": p.name, "protocol": p.protocol, "port": p.port, "targetPort": p.target,
                });
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        let mut spec = json!({
            "type": self.kind.as_str(),
            "clusterIP": self.cluster_ip.to_string(),
            "clusterIPs": [self.cluster_ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ports": ports,
            "sessionAffinity": if self.affinity { "ClientIP" } else { "None" },
            "internalTrafficPolicy": "Cluster",
        });
        if self.affinity {
            spec["sessionAffinityConfig"] = json!({ "clientIP": { "timeoutSeconds": 10800 } });
        }
        if self.kind != Kind::ClusterIp {
            spec["externalTrafficPolicy"] = json!(if self.etp_local { "Local" } else { "Cluster" });
        }
        let mut obj = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": self.name, "namespace": self.namespace },
            "spec": spec,
        });
        if let Some(ip) = self.lb_ip {
            obj["status"] = json!({ "loadBalancer": { "ingress": [{ "ip": ip.to_string(), "ipMode": "VIP" }] } });
        }
        obj
    }

    fn slice_objects(&self) -> Vec<Value> {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({ "name": p.name, "protocol": p.protocol, "port": p.target }))
            .collect();
        let chunks: Vec<&[Endpoint]> = if self.endpoints.is_empty() {
            vec![&[]]
        } else {
            self.endpoints.chunks(SLICE_CAPACITY).collect()
        };
        chunks
            .into_iter()
            .enumerate()
            .map(|(k, eps)| {
                let endpoints: Vec<Value> = eps
                    .iter()
                    .map(|e| {
                        json!({
                            "addresses": [e.ip.to_string()],
                            "conditions": { "ready": true, "serving": true, "terminating": false },
                            "nodeName": format!("node-{}", e.node),
                        })
                    })
                    .collect();
                json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": format!("{}-{k:05}", self.name),
                        "namespace": self.namespace,
                        "labels": { "kubernetes.io/service-name": self.name },
                    },
                    "addressType": "IPv4",
                    "ports": ports,
                    "endpoints": endpoints,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cluster_is_a_prefix_of_a_large_one() {
        let small = Cluster::generate(100, 10).unwrap();
        let large = Cluster::generate(1000, 10).unwrap();
        for (a, b) in small.services.iter().zip(&large.services) {
            assert_eq!(a.service_object(), b.service_object());
            assert_eq!(a.slice_objects(), b.slice_objects());
        }
    }

    #[test]
    fn snapshot_parses_and_compiles() {
        let mut cluster = Cluster::generate(300, 10).unwrap();
        let dir = std::env::temp_dir().join(format!("nftproxy-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for format in [Format::Json, Format::Yaml] {
            let path = dir.join("s");
            let counts = cluster.write(&path, format).unwrap();
            assert_eq!(counts.services, 300);
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = nftproxy_core::parse::parse_snapshot(&text).unwrap();
            assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
            assert_eq!(parsed.snapshot.services.len(), 300);
        }
        cluster.add_endpoint(1, 2).unwrap();
        cluster.remove_endpoint().unwrap();
        cluster.add_service(10).unwrap();
        cluster.delete_service().unwrap();
        assert_eq!(cluster.services.len(), 300);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
