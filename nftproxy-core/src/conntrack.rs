//! Stale conntrack entries: which flows to delete after a ruleset change.
//!
//! UDP has no connection teardown, so a client keeps sending to an endpoint that went away for as
//! long as its conntrack entry lives. As kube-proxy does, after a sync the entries that still DNAT
//! a service port to a removed UDP endpoint are deleted, and the entries to a UDP service port that
//! had no endpoints before (those packets were never DNATed and would keep missing the new rules).
//! This module only computes the filters; deleting entries is the caller's IO.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::compile::{names, removed_elements, RemovedElement};
use crate::ruleset::{ElemData, Value};
use crate::snapshot::{IpFamily, Protocol};
use crate::Ruleset;

/// A filter over UDP conntrack entries to delete (what `conntrack -D -p udp` takes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlow {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Original destination (a VIP); `None` for NodePorts (any local address).
    pub orig_dst: Option<IpAddr>,
    /// Original destination port.
    pub port: u16,
    /// DNAT target to match; `None` for any (entries that were not DNATed).
    pub dnat_to: Option<IpAddr>,
}

/// The conntrack entries to delete after moving the kernel from `old` to `new`.
pub fn stale_flows(old: &Ruleset, new: &Ruleset) -> Vec<StaleFlow> {
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
pub fn stale_flows_removed(removed: &[RemovedElement], new: &Ruleset) -> Vec<StaleFlow> {
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
                    out.insert(StaleFlow {
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
            out.insert(StaleFlow {
                ipv6,
                orig_dst: service.0,
                port: service.1,
                dnat_to: None,
            });
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_snapshot;
    use crate::{compile, ProxyConfig};

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
            vec![StaleFlow {
                ipv6: false,
                orig_dst: Some(vip),
                port: 53,
                dnat_to: Some("10.0.0.2".parse().unwrap())
            }]
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
    use crate::parse::parse_snapshot;
    use crate::{compile, ProxyConfig};

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
