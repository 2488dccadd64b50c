//! A compact, order-preserving encoding of element keys for the incremental compiler, which holds
//! one key per element of every service: a few bytes instead of a `Vec` of 32-byte [`Value`]s.
//!
//! Each value is a tag byte and its payload in big-endian order; a concatenation ends with a 0
//! byte, below every tag. Comparing encodings byte by byte therefore orders keys as comparing
//! the `Vec<Value>` does, so maps keyed by them iterate in the same order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::ruleset::Value;
use crate::snapshot::Protocol;

/// An encoded key (`Vec<Value>`), ordered as the key is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct CompactKey(Box<[u8]>);

const END: u8 = 0;
const ADDR4: u8 = 1;
const ADDR6: u8 = 2;
const PREFIX4: u8 = 3;
const PREFIX6: u8 = 4;
const PROTO: u8 = 5;
const PORT: u8 = 6;
const INT: u8 = 7;
const CT_STATE_NEW: u8 = 8;
const CT_STATUS_DNAT: u8 = 9;
const FIB_LOCAL: u8 = 10;
const CONCAT: u8 = 11;

impl CompactKey {
    /// Encodes a key.
    pub(super) fn new(key: &[Value]) -> Self {
        let mut out = Vec::with_capacity(key.len() * 5);
        for v in key {
            encode(v, &mut out);
        }
        Self(out.into_boxed_slice())
    }

    /// The key it encodes.
    pub(super) fn values(&self) -> Vec<Value> {
        let mut bytes = &self.0[..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            out.push(decode(&mut bytes));
        }
        out
    }
}

fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Addr(IpAddr::V4(a)) => {
            out.push(ADDR4);
            out.extend_from_slice(&a.octets());
        }
        Value::Addr(IpAddr::V6(a)) => {
            out.push(ADDR6);
            out.extend_from_slice(&a.octets());
        }
        Value::Prefix(IpNet::V4(n)) => {
            out.push(PREFIX4);
            out.extend_from_slice(&n.addr().octets());
            out.push(n.prefix_len());
        }
        Value::Prefix(IpNet::V6(n)) => {
            out.push(PREFIX6);
            out.extend_from_slice(&n.addr().octets());
            out.push(n.prefix_len());
        }
        Value::Proto(p) => {
            out.push(PROTO);
            out.push(match p {
                Protocol::Tcp => 0,
                Protocol::Udp => 1,
                Protocol::Sctp => 2,
            });
        }
        Value::Port(p) => {
            out.push(PORT);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Value::Int(i) => {
            out.push(INT);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::CtStateNew => out.push(CT_STATE_NEW),
        Value::CtStatusDnat => out.push(CT_STATUS_DNAT),
        Value::FibLocal => out.push(FIB_LOCAL),
        Value::Concat(parts) => {
            out.push(CONCAT);
            for p in parts {
                encode(p, out);
            }
            out.push(END);
        }
    }
}

/// Takes `N` bytes. The input is always what [`encode`] wrote, so they are there.
fn take<const N: usize>(bytes: &mut &[u8]) -> [u8; N] {
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    let mut out = [0; N];
    out.copy_from_slice(head);
    out
}

/// Decodes one value. The input is always what [`encode`] wrote: tags and prefix lengths are
/// valid, so the `unreachable!` and the prefix constructors cannot fail.
fn decode(bytes: &mut &[u8]) -> Value {
    let [tag] = take::<1>(bytes);
    match tag {
        ADDR4 => Value::Addr(Ipv4Addr::from(take::<4>(bytes)).into()),
        ADDR6 => Value::Addr(Ipv6Addr::from(take::<16>(bytes)).into()),
        PREFIX4 => {
            let addr = Ipv4Addr::from(take::<4>(bytes));
            let [len] = take::<1>(bytes);
            Value::Prefix(Ipv4Net::new(addr, len).map_or_else(|_| unreachable!(), IpNet::V4))
        }
        PREFIX6 => {
            let addr = Ipv6Addr::from(take::<16>(bytes));
            let [len] = take::<1>(bytes);
            Value::Prefix(Ipv6Net::new(addr, len).map_or_else(|_| unreachable!(), IpNet::V6))
        }
        PROTO => match take::<1>(bytes) {
            [0] => Value::Proto(Protocol::Tcp),
            [1] => Value::Proto(Protocol::Udp),
            _ => Value::Proto(Protocol::Sctp),
        },
        PORT => Value::Port(u16::from_be_bytes(take::<2>(bytes))),
        INT => Value::Int(u32::from_be_bytes(take::<4>(bytes))),
        CT_STATE_NEW => Value::CtStateNew,
        CT_STATUS_DNAT => Value::CtStatusDnat,
        FIB_LOCAL => Value::FibLocal,
        CONCAT => {
            let mut parts = Vec::new();
            while bytes.first() != Some(&END) {
                parts.push(decode(bytes));
            }
            *bytes = &bytes[1..];
            Value::Concat(parts)
        }
        _ => unreachable!("tag {tag} was not written by encode"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Vec<Value>> {
        let a4: IpAddr = "10.0.0.1".parse().unwrap();
        let b4: IpAddr = "10.0.0.2".parse().unwrap();
        let a6: IpAddr = "fd00::1".parse().unwrap();
        let values = vec![
            Value::Addr(a4),
            Value::Addr(b4),
            Value::Addr(a6),
            Value::Prefix("10.0.0.0/8".parse().unwrap()),
            Value::Prefix("10.0.0.0/16".parse().unwrap()),
            Value::Prefix("fd00::/64".parse().unwrap()),
            Value::Proto(Protocol::Tcp),
            Value::Proto(Protocol::Udp),
            Value::Proto(Protocol::Sctp),
            Value::Port(80),
            Value::Port(443),
            Value::Int(0),
            Value::Int(70000),
            Value::CtStateNew,
            Value::CtStatusDnat,
            Value::FibLocal,
            Value::Concat(vec![Value::Addr(a4), Value::Port(80)]),
            Value::Concat(vec![Value::Addr(a4)]),
            Value::Concat(vec![]),
            Value::Concat(vec![Value::Concat(vec![Value::Int(1)]), Value::Int(2)]),
        ];
        let mut keys = vec![vec![]];
        for a in &values {
            keys.push(vec![a.clone()]);
            for b in &values {
                keys.push(vec![a.clone(), b.clone()]);
                keys.push(vec![a.clone(), b.clone(), Value::Port(8080)]);
            }
        }
        keys
    }

    #[test]
    fn round_trips_and_keeps_the_order() {
        let keys = samples();
        for k in &keys {
            assert_eq!(&CompactKey::new(k).values(), k);
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    CompactKey::new(a).cmp(&CompactKey::new(b)),
                    a.cmp(b),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }
}
