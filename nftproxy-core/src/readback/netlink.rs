//! Set elements read back from nf_tables netlink dumps (`NFT_MSG_GETSETELEM`), the reverse of
//! [`crate::render::netlink`]'s element encoding.
//!
//! The binary's netlink read-back takes tables, chains, rules and set definitions from
//! `nft -t -j list table` (terse: without elements, small and fast to produce) and the elements
//! from a netlink dump per set, decoded here into the same values [`super::from_nft_json`] gives
//! for a full listing, normal forms included:
//!
//! * interval concatenations (pipapo: `KEY` .. `KEY_END`): a component whose range covers a
//!   prefix is that [`Value::Prefix`]; an exact address in the last component is a full-length
//!   prefix;
//! * interval sets keyed by one address (rbtree): each start element and the next interval end
//!   form a range, which must be a prefix; nft's leading zero end is skipped;
//! * dynamic sets are not dumped: their elements are session state (see the module normal forms).
//!
//! Anything else (a range that is no prefix, a protocol we never write, a verdict on a set
//! without verdicts, data of the wrong length) is "not representable", as in the JSON reader.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::ReadbackError;
use crate::render::netlink::{attributes, sys::*};
use crate::ruleset::{DataType, ElemData, KeyType, Set, Value, Verdict};
use crate::snapshot::{IpFamily, Protocol};

/// One element as dumped: its attributes.
#[derive(Default)]
struct RawElem<'a> {
    key: Option<&'a [u8]>,
    key_end: Option<&'a [u8]>,
    data: Option<&'a [u8]>,
    verdict: Option<(i32, Option<String>)>,
    flags: u32,
    udata: Option<&'a [u8]>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value_of(nest: &[u8]) -> Option<&[u8]> {
    attributes(nest)
        .find(|(t, _)| *t == NFTA_DATA_VALUE)
        .map(|(_, v)| v)
}

fn be_u32(v: &[u8]) -> u32 {
    v.get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes the dump answers (`nfgenmsg` and attributes each) of one set into its elements.
pub fn decode_elements(
    family: IpFamily,
    table: &str,
    set: &Set,
    payloads: &[Vec<u8>],
) -> Result<BTreeMap<Vec<Value>, Option<ElemData>>, ReadbackError> {
    let bad = |reason: String, fragment: &[u8]| ReadbackError::Set {
        family,
        table: table.to_owned(),
        set: set.name.clone(),
        reason,
        fragment: hex(fragment),
    };
    let mut raw: Vec<RawElem<'_>> = Vec::new();
    for p in payloads {
        let attrs = p.get(NFGENMSG_LEN..).unwrap_or_default();
        for (ty, list) in attributes(attrs) {
            if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for (_, elem) in attributes(list) {
                let mut e = RawElem::default();
                for (ty, v) in attributes(elem) {
                    match ty {
                        NFTA_SET_ELEM_KEY => e.key = value_of(v),
                        NFTA_SET_ELEM_KEY_END => e.key_end = value_of(v),
                        NFTA_SET_ELEM_FLAGS => e.flags = be_u32(v),
                        NFTA_SET_ELEM_USERDATA => e.udata = Some(v),
                        NFTA_SET_ELEM_DATA => {
                            for (dt, dv) in attributes(v) {
                                match dt {
                                    NFTA_DATA_VALUE => e.data = Some(dv),
                                    NFTA_DATA_VERDICT => {
                                        let mut code = None;
                                        let mut chain = None;
                                        for (vt, vv) in attributes(dv) {
                                            match vt {
                                                NFTA_VERDICT_CODE => code = Some(be_u32(vv) as i32),
                                                NFTA_VERDICT_CHAIN => {
                                                    let s = vv.split(|b| *b == 0).next();
                                                    chain = s.map(|s| {
                                                        String::from_utf8_lossy(s).into_owned()
                                                    });
                                                }
                                                _ => {}
                                            }
                                        }
                                        if let Some(c) = code {
                                            e.verdict = Some((c, chain));
                                        }
                                    }
                                    _ => {}
                                }
                            }
                        }
                        // Timeouts, expirations, expressions: only dynamic sets have them.
                        _ => {}
                    }
                }
                raw.push(e);
            }
        }
    }
    let mut out = BTreeMap::new();
    if set.flags.interval && set.key.len() == 1 {
        return rbtree(family, set, &raw, bad);
    }
    for e in &raw {
        let Some(key) = e.key else {
            return Err(bad("element without key".into(), &[]));
        };
        let key_end = if set.flags.interval { e.key_end } else { None };
        let values = decode_key(set, key, key_end).map_err(|r| bad(r, key))?;
        let data = decode_data(family, set, e).map_err(|r| bad(r, e.data.unwrap_or(key)))?;
        out.insert(values, data);
    }
    Ok(out)
}

fn key_len(k: KeyType) -> usize {
    match k {
        KeyType::Ipv4Addr => 4,
        KeyType::Ipv6Addr => 16,
        KeyType::InetProto => 1,
        KeyType::InetService => 2,
    }
}

fn addr(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

fn component(k: KeyType, b: &[u8]) -> Result<Value, String> {
    match k {
        KeyType::Ipv4Addr | KeyType::Ipv6Addr => addr(b)
            .map(Value::Addr)
            .ok_or_else(|| format!("address of {} bytes", b.len())),
        KeyType::InetProto => match b.first() {
            Some(6) => Ok(Value::Proto(Protocol::Tcp)),
            Some(17) => Ok(Value::Proto(Protocol::Udp)),
            Some(132) => Ok(Value::Proto(Protocol::Sctp)),
            other => Err(format!("protocol {other:?} is none we write")),
        },
        KeyType::InetService => match b {
            [hi, lo, ..] => Ok(Value::Port(u16::from_be_bytes([*hi, *lo]))),
            _ => Err("port shorter than 2 bytes".into()),
        },
    }
}

/// The prefix covering exactly `start..=end`, if there is one.
fn prefix_of(start: IpAddr, end: IpAddr) -> Option<IpNet> {
    let (s, e, bits) = match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (u128::from(u32::from(s)), u128::from(u32::from(e)), 32),
        (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128),
        _ => return None,
    };
    let span = e.checked_sub(s)?;
    let host_bits = 128 - span.leading_zeros();
    let host_bits = if span == 0 { 0 } else { host_bits };
    if span != 0 && (span.checked_add(1)?.count_ones() != 1 || host_bits > bits) {
        return None;
    }
    let mask = if host_bits == 0 {
        0
    } else {
        (1u128 << host_bits) - 1
    };
    if s & mask != 0 {
        return None;
    }
    IpNet::new(start, (bits - host_bits) as u8).ok()
}

fn decode_key(set: &Set, key: &[u8], key_end: Option<&[u8]>) -> Result<Vec<Value>, String> {
    let concat = set.key.len() > 1;
    let mut out = Vec::new();
    let mut o = 0;
    let last = set.key.len() - 1;
    for (i, k) in set.key.iter().enumerate() {
        let len = key_len(*k);
        let b = key.get(o..o + len).ok_or("key too short")?;
        let v = component(*k, b)?;
        let v = match key_end {
            Some(end) => {
                let eb = end.get(o..o + len).ok_or("key end too short")?;
                let ev = component(*k, eb)?;
                match (&v, &ev) {
                    (Value::Addr(s), Value::Addr(e)) if s != e || i == last => {
                        let net = prefix_of(*s, *e).ok_or("a range that is no prefix")?;
                        Value::Prefix(net)
                    }
                    _ if v == ev => v,
                    _ => return Err("a range of protocols or ports".into()),
                }
            }
            None => v,
        };
        out.push(v);
        o += if concat { len.div_ceil(4) * 4 } else { len };
    }
    if o != key.len() {
        return Err(format!("key of {} bytes, {} expected", key.len(), o));
    }
    Ok(out)
}

fn decode_data(family: IpFamily, set: &Set, e: &RawElem<'_>) -> Result<Option<ElemData>, String> {
    match (set.data, e.verdict.clone(), e.data) {
        (None, None, None) => Ok(None),
        (Some(DataType::Verdict), Some((code, chain)), None) => {
            let v = match (code, chain) {
                (NF_ACCEPT, None) => Verdict::Accept,
                (NF_DROP, None) => Verdict::Drop,
                (NFT_RETURN, None) => Verdict::Return,
                (NFT_JUMP, Some(c)) => Verdict::Jump(c),
                (NFT_GOTO, Some(c)) => Verdict::Goto(c),
                (code, _) => return Err(format!("verdict code {code}")),
            };
            Ok(Some(ElemData::Verdict(v)))
        }
        (Some(DataType::Addr), None, Some(b)) => {
            let a = addr(b).ok_or("address data of the wrong length")?;
            let ok = matches!(
                (family, a),
                (IpFamily::V4, IpAddr::V4(_)) | (IpFamily::V6, IpAddr::V6(_))
            );
            if !ok {
                return Err("address of the other family".into());
            }
            Ok(Some(ElemData::Addr(a)))
        }
        (Some(DataType::InetService), None, Some([hi, lo])) => {
            Ok(Some(ElemData::Port(u16::from_be_bytes([*hi, *lo]))))
        }
        _ => Err("element data that does not fit the set's type".into()),
    }
}

/// Pairs rbtree start and end elements into prefixes.
fn rbtree(
    family: IpFamily,
    set: &Set,
    raw: &[RawElem<'_>],
    bad: impl Fn(String, &[u8]) -> ReadbackError,
) -> Result<BTreeMap<Vec<Value>, Option<ElemData>>, ReadbackError> {
    let _ = family;
    let len = key_len(set.key[0]);
    let mut points: Vec<(Vec<u8>, bool, bool)> = Vec::new();
    for e in raw {
        let key = e
            .key
            .ok_or_else(|| bad("element without key".into(), &[]))?;
        if key.len() != len {
            return Err(bad(format!("key of {} bytes", key.len()), key));
        }
        if e.data.is_some() || e.verdict.is_some() {
            return Err(bad("data in an interval set".into(), key));
        }
        let end = e.flags & NFT_SET_ELEM_INTERVAL_END != 0;
        // NFTNL_UDATA_SET_ELEM_FLAGS with NFTNL_SET_ELEM_F_INTERVAL_OPEN.
        let open = e
            .udata
            .is_some_and(|u| u.len() >= 6 && u[0] == NFTNL_UDATA_SET_ELEM_FLAGS && u[2] & 1 == 1);
        points.push((key.to_vec(), end, open));
    }
    // Ascending by key; an end sorts before a start at the same key (it closes the interval
    // before).
    points.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < points.len() {
        let (start, is_end, open) = &points[i];
        i += 1;
        if *is_end {
            // An end without a start: nft's leading zero end, or the end of an interval
            // already closed.
            continue;
        }
        let last = if *open {
            vec![0xff; len]
        } else {
            match points.get(i) {
                Some((end, true, _)) => {
                    i += 1;
                    decrement(end)
                }
                _ => return Err(bad("interval without end".into(), start)),
            }
        };
        let (Some(s), Some(e)) = (addr(start), addr(&last)) else {
            return Err(bad("interval of non-addresses".into(), start));
        };
        let net = prefix_of(s, e).ok_or_else(|| bad("a range that is no prefix".into(), start))?;
        out.insert(vec![Value::Prefix(net)], None);
    }
    Ok(out)
}

fn decrement(b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    for x in out.iter_mut().rev() {
        if *x == 0 {
            *x = 0xff;
        } else {
            *x -= 1;
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_that_are_prefixes() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            prefix_of(a("10.0.0.0"), a("10.255.255.255")),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            prefix_of(a("10.0.0.1"), a("10.0.0.1")),
            Some("10.0.0.1/32".parse().unwrap())
        );
        assert_eq!(
            prefix_of(a("0.0.0.0"), a("255.255.255.255")),
            Some("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(prefix_of(a("10.0.0.1"), a("10.0.0.2")), None);
        assert_eq!(prefix_of(a("10.0.0.0"), a("10.0.0.2")), None);
        assert_eq!(
            prefix_of(a("fd00:10::"), a("fd00:10:0:ffff:ffff:ffff:ffff:ffff")),
            Some("fd00:10::/48".parse().unwrap())
        );
    }
}
