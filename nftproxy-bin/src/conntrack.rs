//! Stale UDP conntrack entries.
//!
//! UDP has no connection teardown, so a client keeps sending to an endpoint that went away for as
//! long as its conntrack entry lives. As kube-proxy does, after a sync we delete the entries that
//! still DNAT a service port to a removed UDP endpoint, and the entries to a UDP service port that
//! had no endpoints before (those packets were never DNATed and would keep missing the new rules).

use std::collections::BTreeSet;
use std::net::IpAddr;

use nftproxy_core::compile::{names, removed_elements, RemovedElement};
use nftproxy_core::ruleset::{ElemData, Value};
use nftproxy_core::snapshot::{IpFamily, Protocol};
use nftproxy_core::Ruleset;

use crate::nft::Nft;

/// A `conntrack -D` filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flush {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Original destination (a VIP); `None` for NodePorts (any local address).
    pub orig_dst: Option<IpAddr>,
    /// Original destination port.
    pub port: u16,
    /// DNAT target to match; `None` for any (entries that were not DNATed).
    pub dnat_to: Option<IpAddr>,
}

impl Flush {
    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        if self.ipv6 {
            a.extend(["-f".into(), "ipv6".into()]);
        }
        if let Some(d) = self.orig_dst {
            a.extend(["--orig-dst".into(), d.to_string()]);
        }
        a.extend(["--orig-port-dst".into(), self.port.to_string()]);
        if let Some(t) = self.dnat_to {
            a.extend(["--dst-nat".into(), t.to_string()]);
        }
        a
    }
}

/// The conntrack entries to delete after moving the kernel from `old` to `new`.
pub fn stale_flows(old: &Ruleset, new: &Ruleset) -> Vec<Flush> {
    stale_flows_removed(&removed_elements(old, new), new)
}

fn is_slot_addr_map(name: &str) -> bool {
    name.ends_with("-addr") && (name.starts_with("ep-") || name.starts_with("np-ep-"))
}

fn in_set(ruleset: &Ruleset, family: IpFamily, set: &str, key: &[Value]) -> bool {
    ruleset
        .tables
        .get(&family)
        .and_then(|t| t.sets.get(set))
        .is_some_and(|s| s.elements.contains_key(key))
}

/// Does any endpoint slot of this key in `ruleset` send it to `ep` (or, with `None`, anywhere)?
fn still_backs(ruleset: &Ruleset, family: IpFamily, key: &[Value], ep: Option<IpAddr>) -> bool {
    ruleset.tables.get(&family).is_some_and(|t| {
        t.sets.iter().any(|(name, set)| {
            is_slot_addr_map(name)
                && match (set.elements.get(key), ep) {
                    (Some(Some(ElemData::Addr(a))), Some(ep)) => *a == ep,
                    (Some(_), None) => true,
                    _ => false,
                }
        })
    })
}

/// The conntrack entries to delete after an incremental update that removed `removed` and
/// produced `new`, without walking the whole ruleset: removed UDP endpoints, and UDP ports that
/// left the no-endpoint maps and have endpoints now (their packets were not DNATed before).
pub fn stale_flows_removed(removed: &[RemovedElement], new: &Ruleset) -> Vec<Flush> {
    let mut out = BTreeSet::new();
    for r in removed {
        let ipv6 = r.family == IpFamily::V6;
        let service = match r.key.as_slice() {
            [Value::Addr(vip), Value::Proto(Protocol::Udp), Value::Port(p)] => (Some(*vip), *p),
            [Value::Proto(Protocol::Udp), Value::Port(p)] => (None, *p),
            _ => continue,
        };
        if is_slot_addr_map(&r.set) {
            if let Some(ElemData::Addr(ep)) = r.data {
                if !still_backs(new, r.family, &r.key, Some(ep)) {
                    out.insert(Flush {
                        ipv6,
                        orig_dst: service.0,
                        port: service.1,
                        dnat_to: Some(ep),
                    });
                }
            }
        } else if (r.set == names::NO_ENDPOINT_SERVICES || r.set == names::NO_ENDPOINT_NODEPORTS)
            && !in_set(new, r.family, &r.set, &r.key)
            && still_backs(new, r.family, &r.key, None)
        {
            out.insert(Flush {
                ipv6,
                orig_dst: service.0,
                port: service.1,
                dnat_to: None,
            });
        }
    }
    out.into_iter().collect()
}

/// Deletes the entries (in nft's network namespace); returns how many filters were run. A missing `conntrack` tool is a warning.
pub fn flush(nft: &Nft, flows: &[Flush]) -> usize {
    let mut n = 0;
    for f in flows {
        match nft.command("conntrack").args(f.args()).output() {
            Ok(_) => n += 1, // exit status 1 only means "0 flow entries deleted"
            Err(e) => {
                tracing::warn!("cannot run conntrack to delete stale UDP entries: {e}");
                break;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftproxy_core::parse::parse_snapshot;
    use nftproxy_core::{compile, ProxyConfig};

    fn ruleset(endpoints: &[&str]) -> Ruleset {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: kube-system}\n\
             spec: {clusterIP: 172.30.0.10, ports: [{name: dns, protocol: UDP, port: 53}]}\n",
        );
        if !endpoints.is_empty() {
            yaml.push_str(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}\n\
                 addressType: IPv4\nports: [{name: dns, protocol: UDP, port: 53}]\nendpoints:\n",
            );
            for e in endpoints {
                yaml.push_str(&format!("- {{addresses: [{e}]}}\n"));
            }
        }
        let snap = parse_snapshot(&yaml).unwrap().snapshot;
        let cfg = ProxyConfig {
            node_name: "n".into(),
            ..ProxyConfig::default()
        };
        compile(&snap, &cfg).unwrap().ruleset
    }

    #[test]
    fn removed_udp_endpoint_is_flushed() {
        let flows = stale_flows(&ruleset(&["10.0.0.1", "10.0.0.2"]), &ruleset(&["10.0.0.1"]));
        let vip: IpAddr = "172.30.0.10".parse().unwrap();
        assert_eq!(
            flows,
            vec![Flush {
                ipv6: false,
                orig_dst: Some(vip),
                port: 53,
                dnat_to: Some("10.0.0.2".parse().unwrap())
            }]
        );
        assert_eq!(
            flows[0].args().join(" "),
            "-D -p udp --orig-dst 172.30.0.10 --orig-port-dst 53 --dst-nat 10.0.0.2"
        );
    }

    #[test]
    fn service_gaining_endpoints_flushes_undnatted_entries() {
        let flows = stale_flows(&ruleset(&[]), &ruleset(&["10.0.0.1"]));
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].dnat_to, None);
    }

    #[test]
    fn unchanged_endpoints_flush_nothing() {
        let r = ruleset(&["10.0.0.1"]);
        assert!(stale_flows(&r, &r).is_empty());
    }
}

#[cfg(test)]
mod local_policy_tests {
    use super::*;
    use nftproxy_core::parse::parse_snapshot;
    use nftproxy_core::{compile, ProxyConfig};

    /// A UDP NodePort with externalTrafficPolicy Local and only a remote endpoint: its key is in
    /// the no-endpoint map (drop external traffic) and has endpoints (for pods): not "gained".
    fn etp_local(endpoints: &[&str]) -> Ruleset {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: ns}\n\
             spec: {type: NodePort, externalTrafficPolicy: Local, clusterIP: 172.30.0.10, \
             ports: [{name: dns, protocol: UDP, port: 53, nodePort: 30053}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: dns-1, namespace: ns, labels: {kubernetes.io/service-name: dns}}\n\
             addressType: IPv4\nports: [{name: dns, protocol: UDP, port: 53}]\nendpoints:\n",
        );
        for e in endpoints {
            yaml.push_str(&format!("- {{addresses: [{e}], nodeName: node-b}}\n"));
        }
        let snap = parse_snapshot(&yaml).unwrap().snapshot;
        let cfg = ProxyConfig {
            node_name: "node-a".into(),
            ..ProxyConfig::default()
        };
        compile(&snap, &cfg).unwrap().ruleset
    }

    #[test]
    fn no_local_endpoints_is_not_gaining_endpoints() {
        let a = etp_local(&["10.0.0.1"]);
        let b = etp_local(&["10.0.0.1", "10.0.0.2"]);
        assert!(
            stale_flows(&a, &b).iter().all(|f| f.dnat_to.is_some()),
            "{:?}",
            stale_flows(&a, &b)
        );
    }
}
