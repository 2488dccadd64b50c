//! Reading our tables back from nf_tables netlink dumps, the reverse of
//! [`crate::render::netlink`], into the same AST [`super::from_nft_json`] gives for
//! `nft -j list table`, normal forms included (see the parent module).
//!
//! [`decode_table`] takes the `GETTABLE`, `GETCHAIN`, `GETSET`, `GETRULE` and `GETSETELEM` dump
//! answers of one family and rebuilds the table: chains from their hooks, sets from key types
//! and userdata comments, rules by following the registers (loads, masks, comparisons, lookups,
//! verdicts, `dynset`, `nat`, `masq`, `reject`), anonymous sets from their elements.
//! [`decode_elements`] decodes one set's elements:
//!
//! * interval concatenations (pipapo: `KEY` .. `KEY_END`): a component whose range covers a
//!   prefix is that [`Value::Prefix`]; an exact address in the last component is a full-length
//!   prefix;
//! * interval sets keyed by one address (rbtree): each start element and the next interval end
//!   form a range, which must be a prefix; nft's leading zero end is skipped;
//! * dynamic sets (`NFT_SET_EVAL`) are not dumped: their elements are session state.
//!
//! Anything else (an expression or flag we never write, a range that is no prefix, a protocol
//! we never use, data that does not fit) is "not representable", naming the object as the JSON
//! reader does, with the offending attributes in hex.

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

// ---------------------------------------------------------------------------------------------
// Whole tables from netlink dumps.

use crate::ruleset::{
    BaseChain, Chain, ChainType, Expr, Hook, MapRef, MarkOp, MatchOp, MatchRight, Rule, SetFlags,
    Stmt, Table,
};

/// The dump answers (payloads: `nfgenmsg` and attributes) for one table, as
/// `GETTABLE`/`GETCHAIN`/`GETSET`/`GETRULE` dumps of its family and `GETSETELEM` dumps of its
/// sets, anonymous ones included.
#[derive(Debug, Clone, Default)]
pub struct TableDump {
    /// `NFT_MSG_GETTABLE` answers.
    pub tables: Vec<Vec<u8>>,
    /// `NFT_MSG_GETCHAIN` answers.
    pub chains: Vec<Vec<u8>>,
    /// `NFT_MSG_GETSET` answers.
    pub sets: Vec<Vec<u8>>,
    /// `NFT_MSG_GETRULE` answers, in rule order.
    pub rules: Vec<Vec<u8>>,
    /// `NFT_MSG_GETSETELEM` answers by set name.
    pub elements: BTreeMap<String, Vec<Vec<u8>>>,
}

fn attrs_of(payload: &[u8]) -> BTreeMap<u16, &[u8]> {
    attributes(payload.get(NFGENMSG_LEN..).unwrap_or_default()).collect()
}

fn str_of(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn be_u64(v: &[u8]) -> u64 {
    v.get(..8).map_or(0, |b| {
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

/// A set definition as dumped, with what decoding rules and elements needs.
#[derive(Debug, Clone)]
pub struct SetInfo {
    /// The set, without elements (`None` key for anonymous sets, whose key type is the rule's).
    pub set: Set,
    /// Key length in bytes.
    pub key_len: usize,
    /// Anonymous (`__set%d`, `__map%d`).
    pub anonymous: bool,
}

/// The names of the sets of `table` in a `GETSET` dump, anonymous ones included.
pub fn set_names(table: &str, dump: &[Vec<u8>]) -> Vec<String> {
    dump.iter()
        .map(|p| attrs_of(p))
        .filter(|a| a.get(&NFTA_SET_TABLE).map(|v| str_of(v)).as_deref() == Some(table))
        .filter_map(|a| a.get(&NFTA_SET_NAME).map(|v| str_of(v)))
        .collect()
}

fn key_types(id: u32, len: usize, concat: bool) -> Option<Vec<KeyType>> {
    let mut ids = Vec::new();
    let mut id = id;
    while id > 0 {
        ids.push(id & 63);
        id >>= 6;
    }
    ids.reverse();
    let keys: Option<Vec<KeyType>> = ids
        .iter()
        .map(|i| match *i {
            TYPE_IPADDR => Some(KeyType::Ipv4Addr),
            TYPE_IP6ADDR => Some(KeyType::Ipv6Addr),
            TYPE_INET_PROTOCOL => Some(KeyType::InetProto),
            TYPE_INET_SERVICE => Some(KeyType::InetService),
            _ => None,
        })
        .collect();
    let keys = keys?;
    let total: usize = if concat || keys.len() > 1 {
        keys.iter().map(|k| key_len(*k).div_ceil(4) * 4).sum()
    } else {
        keys.iter().map(|k| key_len(*k)).sum()
    };
    (total == len && !keys.is_empty()).then_some(keys)
}

/// Reads one `GETSET` answer.
fn set_info(family: IpFamily, table: &str, payload: &[u8]) -> Result<SetInfo, ReadbackError> {
    let a = attrs_of(payload);
    let name = a.get(&NFTA_SET_NAME).map(|v| str_of(v)).unwrap_or_default();
    let bad = |reason: &str| ReadbackError::Set {
        family,
        table: table.to_owned(),
        set: name.clone(),
        reason: reason.to_owned(),
        fragment: hex(payload),
    };
    let flags = a.get(&NFTA_SET_FLAGS).map_or(0, |v| be_u32(v));
    let known = NFT_SET_ANONYMOUS
        | NFT_SET_CONSTANT
        | NFT_SET_INTERVAL
        | NFT_SET_MAP
        | NFT_SET_TIMEOUT
        | NFT_SET_EVAL
        | NFT_SET_CONCAT;
    if flags & !known != 0 {
        return Err(bad(&format!("set flags {flags:#x}")));
    }
    let anonymous = flags & NFT_SET_ANONYMOUS != 0;
    let key_len = a.get(&NFTA_SET_KEY_LEN).map_or(0, |v| be_u32(v)) as usize;
    let key_type = a.get(&NFTA_SET_KEY_TYPE).map_or(0, |v| be_u32(v));
    let key = if anonymous {
        Vec::new()
    } else {
        key_types(key_type, key_len, flags & NFT_SET_CONCAT != 0)
            .ok_or_else(|| bad(&format!("key type {key_type:#x} of {key_len} bytes")))?
    };
    let data = if flags & NFT_SET_MAP != 0 {
        let t = a.get(&NFTA_SET_DATA_TYPE).map_or(0, |v| be_u32(v));
        let l = a.get(&NFTA_SET_DATA_LEN).map_or(0, |v| be_u32(v));
        Some(match (t, l, family) {
            (NFT_DATA_VERDICT, _, _) => DataType::Verdict,
            (TYPE_IPADDR, 4, IpFamily::V4) | (TYPE_IP6ADDR, 16, IpFamily::V6) => DataType::Addr,
            (TYPE_INET_SERVICE, 2, _) => DataType::InetService,
            _ => return Err(bad(&format!("map data type {t:#x} of {l} bytes"))),
        })
    } else {
        None
    };
    let timeout = match a.get(&NFTA_SET_TIMEOUT) {
        Some(v) => {
            let ms = be_u64(v);
            if !ms.is_multiple_of(1000) {
                return Err(bad("a timeout that is not whole seconds"));
            }
            Some(u32::try_from(ms / 1000).map_err(|_| bad("timeout too long"))?)
        }
        None => None,
    };
    if !anonymous {
        if let Some(desc) = a.get(&NFTA_SET_DESC) {
            for (t, v) in attributes(desc) {
                if t == NFTA_SET_DESC_SIZE && be_u32(v) != 65535 {
                    return Err(bad(&format!("size {}", be_u32(v))));
                }
            }
        }
    }
    let mut comment = None;
    if let Some(ud) = a.get(&NFTA_SET_USERDATA) {
        let mut o = 0;
        while o + 2 <= ud.len() {
            let (t, l) = (ud[o], ud[o + 1] as usize);
            let v = ud.get(o + 2..o + 2 + l).unwrap_or_default();
            if t == NFTNL_UDATA_SET_COMMENT {
                comment = Some(str_of(v));
            }
            o += 2 + l;
        }
    }
    let mut set = Set::new(name.clone(), key, data);
    set.flags = SetFlags {
        interval: flags & NFT_SET_INTERVAL != 0,
        dynamic: flags & NFT_SET_EVAL != 0,
        timeout,
    };
    if flags & NFT_SET_TIMEOUT != 0 && timeout.is_none() && !anonymous {
        return Err(bad("timeout flag without a default timeout"));
    }
    set.comment = comment;
    Ok(SetInfo {
        set,
        key_len,
        anonymous,
    })
}

/// Reads our table `name` of `family` from its dumps; `None` when the table does not exist.
pub fn decode_table(
    family: IpFamily,
    name: &str,
    dump: &TableDump,
) -> Result<Option<Table>, ReadbackError> {
    let table_error = |reason: &str, fragment: &[u8]| ReadbackError::Table {
        family,
        table: name.to_owned(),
        reason: reason.to_owned(),
        fragment: hex(fragment),
    };
    let mut found = false;
    for p in &dump.tables {
        let a = attrs_of(p);
        if a.get(&NFTA_TABLE_NAME).map(|v| str_of(v)).as_deref() != Some(name) {
            continue;
        }
        found = true;
        if a.get(&NFTA_TABLE_FLAGS).is_some_and(|v| be_u32(v) != 0) {
            return Err(table_error("table flags", p));
        }
        if a.contains_key(&NFTA_TABLE_USERDATA) {
            return Err(table_error("table userdata (a comment?)", p));
        }
    }
    if !found {
        return Ok(None);
    }
    let mut table = Table::new(family, name);
    // Sets.
    let mut infos: BTreeMap<String, SetInfo> = BTreeMap::new();
    for p in &dump.sets {
        let a = attrs_of(p);
        if a.get(&NFTA_SET_TABLE).map(|v| str_of(v)).as_deref() != Some(name) {
            continue;
        }
        let info = set_info(family, name, p)?;
        infos.insert(info.set.name.clone(), info);
    }
    for info in infos.values().filter(|i| !i.anonymous) {
        let mut set = info.set.clone();
        if !set.flags.dynamic {
            let answers = dump.elements.get(&set.name).cloned().unwrap_or_default();
            set.elements = decode_elements(family, name, &set, &answers)?;
        }
        table.sets.insert(set.name.clone(), set);
    }
    // Chains.
    for p in &dump.chains {
        let a = attrs_of(p);
        if a.get(&NFTA_CHAIN_TABLE).map(|v| str_of(v)).as_deref() != Some(name) {
            continue;
        }
        let chain = a
            .get(&NFTA_CHAIN_NAME)
            .map(|v| str_of(v))
            .unwrap_or_default();
        let bad = |reason: &str| ReadbackError::Chain {
            family,
            table: name.to_owned(),
            chain: chain.clone(),
            reason: reason.to_owned(),
            fragment: hex(p),
        };
        if a.contains_key(&NFTA_CHAIN_USERDATA) {
            return Err(bad("chain userdata (a comment?)"));
        }
        let base = match a.get(&NFTA_CHAIN_HOOK) {
            None => None,
            Some(hook) => {
                let h: BTreeMap<u16, &[u8]> = attributes(hook).collect();
                if h.contains_key(&NFTA_HOOK_DEV) {
                    return Err(bad("a device"));
                }
                let hook = match h.get(&NFTA_HOOK_HOOKNUM).map(|v| be_u32(v)) {
                    Some(NF_INET_PRE_ROUTING) => Hook::Prerouting,
                    Some(NF_INET_LOCAL_IN) => Hook::Input,
                    Some(NF_INET_FORWARD) => Hook::Forward,
                    Some(NF_INET_LOCAL_OUT) => Hook::Output,
                    Some(NF_INET_POST_ROUTING) => Hook::Postrouting,
                    other => return Err(bad(&format!("hook {other:?}"))),
                };
                let priority = h.get(&NFTA_HOOK_PRIORITY).map_or(0, |v| be_u32(v) as i32);
                let chain_type = match a.get(&NFTA_CHAIN_TYPE).map(|v| str_of(v)).as_deref() {
                    Some("filter") => ChainType::Filter,
                    Some("nat") => ChainType::Nat,
                    other => return Err(bad(&format!("chain type {other:?}"))),
                };
                if a.get(&NFTA_CHAIN_POLICY).map(|v| be_u32(v)) != Some(NF_ACCEPT as u32) {
                    return Err(bad("a policy other than accept"));
                }
                Some(BaseChain {
                    chain_type,
                    hook,
                    priority,
                })
            }
        };
        table.chains.insert(
            chain.clone(),
            Chain {
                name: chain,
                base,
                rules: Vec::new(),
            },
        );
    }
    // Rules, in dump order (the chain's order).
    for p in &dump.rules {
        let a = attrs_of(p);
        if a.get(&NFTA_RULE_TABLE).map(|v| str_of(v)).as_deref() != Some(name) {
            continue;
        }
        let chain = a
            .get(&NFTA_RULE_CHAIN)
            .map(|v| str_of(v))
            .unwrap_or_default();
        let handle = a.get(&NFTA_RULE_HANDLE).map(|v| be_u64(v));
        let bad = |reason: String, fragment: &[u8]| ReadbackError::Rule {
            family,
            table: name.to_owned(),
            chain: chain.clone(),
            handle,
            reason,
            fragment: hex(fragment),
        };
        let exprs = a.get(&NFTA_RULE_EXPRESSIONS).copied().unwrap_or_default();
        let ctx = RuleCtx {
            family,
            table: name,
            infos: &infos,
            dump,
        };
        let stmts = ctx.stmts(exprs).map_err(|(r, f)| bad(r, &f))?;
        let mut rule = Rule::new(stmts);
        if let Some(ud) = a.get(&NFTA_RULE_USERDATA) {
            match ud {
                [NFTNL_UDATA_RULE_COMMENT, l, rest @ ..] if rest.len() >= *l as usize => {
                    rule.comment = Some(str_of(&rest[..*l as usize]));
                }
                _ => return Err(bad("rule userdata other than a comment".into(), ud)),
            }
        }
        match table.chains.get_mut(&chain) {
            Some(c) => c.rules.push(rule),
            None => return Err(bad("a rule of an unknown chain".into(), p)),
        }
    }
    Ok(Some(table))
}

type RuleRes<T> = Result<T, (String, Vec<u8>)>;

struct RuleCtx<'a> {
    family: IpFamily,
    table: &'a str,
    infos: &'a BTreeMap<String, SetInfo>,
    dump: &'a TableDump,
}

/// What a register slot holds.
#[derive(Debug, Clone)]
enum Loaded {
    /// A packet field or computed value of this many bytes.
    Expr(Expr, usize),
    /// The first `bytes` bytes of an address (a byte-aligned prefix comparison).
    AddrBytes(Expr, usize),
    /// An address masked by nft (a prefix comparison), or a flag field masked (flag match).
    Masked(Expr, Vec<u8>),
    /// `meta mark & MASK ^ XOR` with a nonzero XOR: the value of `meta mark set`.
    MarkOp(u32, u32),
}

fn slot_of(reg: u32) -> Option<u32> {
    match reg {
        1..=4 => Some((reg - 1) * 4),
        8..=23 => Some(reg - 8),
        _ => None,
    }
}

fn ne_u32v(v: &[u8]) -> u32 {
    v.get(..4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

impl RuleCtx<'_> {
    fn field_len(e: &Expr) -> usize {
        match e {
            Expr::Saddr(IpFamily::V4) | Expr::Daddr(IpFamily::V4) => 4,
            Expr::Saddr(IpFamily::V6) | Expr::Daddr(IpFamily::V6) => 16,
            Expr::L4Proto => 1,
            Expr::Dport => 2,
            _ => 4,
        }
    }

    /// The key that a lookup at `sreg` of `len` bytes reads: one load, or the loads filling
    /// consecutive slots (a concatenation).
    fn key(&self, loaded: &BTreeMap<u32, Loaded>, sreg: u32, len: usize) -> RuleRes<Expr> {
        let mut slot = slot_of(sreg).ok_or_else(|| (format!("register {sreg}"), vec![]))?;
        let mut parts = Vec::new();
        let mut covered = 0;
        while covered < len {
            match loaded.get(&slot) {
                Some(Loaded::Expr(e, l)) => {
                    parts.push(e.clone());
                    let padded = l.div_ceil(4) * 4;
                    covered += if len == *l { *l } else { padded };
                    slot += (padded / 4) as u32;
                }
                _ => return Err(("a key from an unknown register".into(), vec![])),
            }
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Concat(parts)
        })
    }

    fn value_for(&self, left: &Expr, b: &[u8]) -> RuleRes<Value> {
        let err = || (format!("a value of {} bytes", b.len()), b.to_vec());
        Ok(match left {
            Expr::Saddr(_) | Expr::Daddr(_) => Value::Addr(addr(b).ok_or_else(err)?),
            Expr::L4Proto => component(KeyType::InetProto, b).map_err(|r| (r, b.to_vec()))?,
            Expr::Dport => component(KeyType::InetService, b).map_err(|r| (r, b.to_vec()))?,
            Expr::Mark | Expr::MarkAnd(_) | Expr::Numgen { .. } if b.len() == 4 => {
                Value::Int(ne_u32v(b))
            }
            Expr::Concat(parts) => {
                let mut o = 0;
                let mut vs = Vec::new();
                for p in parts {
                    let l = Self::field_len(p);
                    let v = b.get(o..o + l).ok_or_else(err)?;
                    vs.push(self.value_for(p, v)?);
                    o += l.div_ceil(4) * 4;
                }
                Value::Concat(vs)
            }
            _ => return Err(err()),
        })
    }

    /// Elements of an anonymous set, keyed as `key` is.
    fn anon_elements(&self, set: &str, key: &Expr) -> RuleRes<Vec<(Value, Option<Verdict>)>> {
        let info = self
            .infos
            .get(set)
            .ok_or_else(|| (format!("a lookup in unknown set {set}"), vec![]))?;
        let answers = self.dump.elements.get(set).cloned().unwrap_or_default();
        let interval = info.set.flags.interval;
        let mut out = Vec::new();
        for p in &answers {
            let attrs = p.get(NFGENMSG_LEN..).unwrap_or_default();
            for (ty, list) in attributes(attrs) {
                if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
                    continue;
                }
                for (_, elem) in attributes(list) {
                    let mut k = None;
                    let mut verdict = None;
                    let mut flags = 0;
                    for (t, v) in attributes(elem) {
                        match t {
                            NFTA_SET_ELEM_KEY => k = value_of(v),
                            NFTA_SET_ELEM_FLAGS => flags = be_u32(v),
                            NFTA_SET_ELEM_DATA => {
                                for (dt, dv) in attributes(v) {
                                    if dt == NFTA_DATA_VERDICT {
                                        let m: BTreeMap<u16, &[u8]> = attributes(dv).collect();
                                        let code =
                                            m.get(&NFTA_VERDICT_CODE).map(|v| be_u32(v) as i32);
                                        let chain = m.get(&NFTA_VERDICT_CHAIN).map(|v| str_of(v));
                                        verdict = Some(match (code, chain) {
                                            (Some(NF_ACCEPT), None) => Verdict::Accept,
                                            (Some(NF_DROP), None) => Verdict::Drop,
                                            (Some(NFT_RETURN), None) => Verdict::Return,
                                            (Some(NFT_JUMP), Some(c)) => Verdict::Jump(c),
                                            (Some(NFT_GOTO), Some(c)) => Verdict::Goto(c),
                                            _ => return Err(("a verdict".into(), dv.to_vec())),
                                        });
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    if interval {
                        return Err(("an anonymous interval set".into(), elem.to_vec()));
                    }
                    if flags != 0 {
                        continue;
                    }
                    let k = k.ok_or_else(|| ("an element without key".to_owned(), vec![]))?;
                    out.push((self.value_for(key, k)?, verdict));
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn stmts(&self, exprs: &[u8]) -> RuleRes<Vec<Stmt>> {
        let mut loaded: BTreeMap<u32, Loaded> = BTreeMap::new();
        let mut out = Vec::new();
        let mut pending_dnat: Option<(Expr, String)> = None;
        let mut pending_port: Option<String> = None;
        for (_, e) in attributes(exprs) {
            let m: BTreeMap<u16, &[u8]> = attributes(e).collect();
            let name = m
                .get(&NFTA_EXPR_NAME)
                .map(|v| str_of(v))
                .unwrap_or_default();
            let d: BTreeMap<u16, &[u8]> =
                attributes(m.get(&NFTA_EXPR_DATA).copied().unwrap_or_default()).collect();
            let u = |k: u16| d.get(&k).map(|v| be_u32(v));
            let unknown = || (format!("expression {name}"), e.to_vec());
            match name.as_str() {
                "payload" => {
                    let dreg = u(NFTA_PAYLOAD_DREG).ok_or_else(unknown)?;
                    let slot = slot_of(dreg).ok_or_else(unknown)?;
                    let (base, off, len) = (
                        u(NFTA_PAYLOAD_BASE).unwrap_or(9),
                        u(NFTA_PAYLOAD_OFFSET).unwrap_or(0),
                        u(NFTA_PAYLOAD_LEN).unwrap_or(0) as usize,
                    );
                    let f = self.family;
                    let full = if f == IpFamily::V4 { 4 } else { 16 };
                    let field = match (base, off, f) {
                        (NFT_PAYLOAD_NETWORK_HEADER, 12, IpFamily::V4)
                        | (NFT_PAYLOAD_NETWORK_HEADER, 8, IpFamily::V6) => Expr::Saddr(f),
                        (NFT_PAYLOAD_NETWORK_HEADER, 16, IpFamily::V4)
                        | (NFT_PAYLOAD_NETWORK_HEADER, 24, IpFamily::V6) => Expr::Daddr(f),
                        (NFT_PAYLOAD_TRANSPORT_HEADER, 2, _) if len == 2 => {
                            loaded.insert(slot, Loaded::Expr(Expr::Dport, 2));
                            continue;
                        }
                        _ => return Err(unknown()),
                    };
                    let l = if len == full {
                        Loaded::Expr(field, len)
                    } else if len > 0 && len < full {
                        Loaded::AddrBytes(field, len)
                    } else {
                        return Err(unknown());
                    };
                    loaded.insert(slot, l);
                }
                "meta" => {
                    let key = u(NFTA_META_KEY);
                    if let Some(sreg) = u(NFTA_META_SREG) {
                        let slot = slot_of(sreg).ok_or_else(unknown)?;
                        match (key, loaded.get(&slot)) {
                            (Some(NFT_META_MARK), Some(Loaded::MarkOp(mask, xor))) => {
                                let op = if *mask == u32::MAX {
                                    MarkOp::Xor(*xor)
                                } else if *mask == !*xor {
                                    MarkOp::Or(*xor)
                                } else {
                                    return Err(unknown());
                                };
                                out.push(Stmt::SetMark(op));
                            }
                            _ => return Err(unknown()),
                        }
                        continue;
                    }
                    let slot =
                        slot_of(u(NFTA_META_DREG).ok_or_else(unknown)?).ok_or_else(unknown)?;
                    let l = match key {
                        Some(NFT_META_L4PROTO) => Loaded::Expr(Expr::L4Proto, 1),
                        Some(NFT_META_MARK) => Loaded::Expr(Expr::Mark, 4),
                        _ => return Err(unknown()),
                    };
                    loaded.insert(slot, l);
                }
                "ct" => {
                    let slot = slot_of(u(NFTA_CT_DREG).ok_or_else(unknown)?).ok_or_else(unknown)?;
                    let l = match u(NFTA_CT_KEY) {
                        Some(NFT_CT_STATE) => Expr::CtState,
                        Some(NFT_CT_STATUS) => Expr::CtStatus,
                        _ => return Err(unknown()),
                    };
                    if d.len() != 2 {
                        return Err(unknown());
                    }
                    loaded.insert(slot, Loaded::Expr(l, 4));
                }
                "fib" => {
                    let slot =
                        slot_of(u(NFTA_FIB_DREG).ok_or_else(unknown)?).ok_or_else(unknown)?;
                    let saddr = match (u(NFTA_FIB_FLAGS), u(NFTA_FIB_RESULT)) {
                        (Some(NFTA_FIB_F_SADDR), Some(NFT_FIB_RESULT_ADDRTYPE)) => true,
                        (Some(NFTA_FIB_F_DADDR), Some(NFT_FIB_RESULT_ADDRTYPE)) => false,
                        _ => return Err(unknown()),
                    };
                    loaded.insert(slot, Loaded::Expr(Expr::FibAddrType { saddr }, 4));
                }
                "numgen" => {
                    let slot = slot_of(u(NFTA_NG_DREG).ok_or_else(unknown)?).ok_or_else(unknown)?;
                    if u(NFTA_NG_TYPE) != Some(NFT_NG_RANDOM) {
                        return Err(unknown());
                    }
                    let modulus = u(NFTA_NG_MODULUS).ok_or_else(unknown)?;
                    let offset = u(NFTA_NG_OFFSET).unwrap_or(0);
                    loaded.insert(slot, Loaded::Expr(Expr::Numgen { modulus, offset }, 4));
                }
                "byteorder" => {}
                "bitwise" => {
                    let (Some(sreg), Some(dreg)) = (u(NFTA_BITWISE_SREG), u(NFTA_BITWISE_DREG))
                    else {
                        return Err(unknown());
                    };
                    let slot = slot_of(sreg).ok_or_else(unknown)?;
                    if sreg != dreg {
                        return Err(unknown());
                    }
                    let mask = d
                        .get(&NFTA_BITWISE_MASK)
                        .and_then(|v| value_of(v))
                        .ok_or_else(unknown)?;
                    let xor = d
                        .get(&NFTA_BITWISE_XOR)
                        .and_then(|v| value_of(v))
                        .ok_or_else(unknown)?;
                    // The kernel lists a boolean operation for every mask, so which ones nft
                    // wrote as an explicit `&` shows only in what follows.
                    if u(NFTA_BITWISE_OP).is_some_and(|op| op != NFT_BITWISE_BOOL) {
                        return Err(unknown());
                    }
                    let l = match loaded.get(&slot) {
                        Some(Loaded::Expr(Expr::Mark, _)) if xor.iter().all(|b| *b == 0) => {
                            Loaded::Expr(Expr::MarkAnd(ne_u32v(mask)), 4)
                        }
                        Some(Loaded::Expr(Expr::Mark, _)) => {
                            Loaded::MarkOp(ne_u32v(mask), ne_u32v(xor))
                        }
                        Some(Loaded::Expr(e @ (Expr::CtState | Expr::CtStatus), _))
                            if xor.iter().all(|b| *b == 0) =>
                        {
                            Loaded::Masked(e.clone(), mask.to_vec())
                        }
                        Some(Loaded::Expr(e @ (Expr::Saddr(_) | Expr::Daddr(_)), _))
                            if xor.iter().all(|b| *b == 0) =>
                        {
                            Loaded::Masked(e.clone(), mask.to_vec())
                        }
                        _ => return Err(unknown()),
                    };
                    loaded.insert(slot, l);
                }
                "cmp" => {
                    let slot =
                        slot_of(u(NFTA_CMP_SREG).ok_or_else(unknown)?).ok_or_else(unknown)?;
                    let data = d
                        .get(&NFTA_CMP_DATA)
                        .and_then(|v| value_of(v))
                        .ok_or_else(unknown)?;
                    let op = match u(NFTA_CMP_OP) {
                        Some(NFT_CMP_EQ) => MatchOp::Eq,
                        Some(NFT_CMP_NEQ) => MatchOp::Ne,
                        _ => return Err(unknown()),
                    };
                    let stmt = match loaded.get(&slot) {
                        Some(Loaded::Expr(e @ Expr::FibAddrType { .. }, _))
                            if ne_u32v(data) == RTN_LOCAL && data.len() == 4 =>
                        {
                            Stmt::Match {
                                left: e.clone(),
                                op,
                                right: MatchRight::Value(Value::FibLocal),
                            }
                        }
                        Some(Loaded::Expr(e, _)) => Stmt::Match {
                            left: e.clone(),
                            op,
                            right: MatchRight::Value(self.value_for(e, data)?),
                        },
                        Some(Loaded::AddrBytes(e, n)) => {
                            let mut full = data.to_vec();
                            full.resize(Self::field_len(e), 0);
                            let a = addr(&full).ok_or_else(unknown)?;
                            let net = IpNet::new(a, (n * 8) as u8).map_err(|_| unknown())?;
                            Stmt::Match {
                                left: e.clone(),
                                op,
                                right: MatchRight::Value(Value::Prefix(net)),
                            }
                        }
                        Some(Loaded::Masked(e @ (Expr::CtState | Expr::CtStatus), m)) => {
                            let bits = ne_u32v(m);
                            let value = match (e, bits) {
                                (Expr::CtState, NF_CT_STATE_NEW) => Value::CtStateNew,
                                (Expr::CtStatus, IPS_DST_NAT) => Value::CtStatusDnat,
                                _ => return Err(unknown()),
                            };
                            // `ct state new`: masked != 0; `ct state & new != new`.
                            let op = match (op, ne_u32v(data)) {
                                (MatchOp::Ne, 0) => MatchOp::Eq,
                                (MatchOp::Ne, v) if v == bits => MatchOp::Ne,
                                _ => return Err(unknown()),
                            };
                            Stmt::Match {
                                left: e.clone(),
                                op,
                                right: MatchRight::Value(value),
                            }
                        }
                        Some(Loaded::Masked(e, mask)) => {
                            let bits: u32 = mask.iter().map(|b| b.count_ones()).sum();
                            let a = addr(data).ok_or_else(unknown)?;
                            let net = IpNet::new(a, bits as u8).map_err(|_| unknown())?;
                            Stmt::Match {
                                left: e.clone(),
                                op,
                                right: MatchRight::Value(Value::Prefix(net)),
                            }
                        }
                        _ => return Err(unknown()),
                    };
                    out.push(stmt);
                }
                "lookup" => {
                    let sreg = u(NFTA_LOOKUP_SREG).ok_or_else(unknown)?;
                    let set = d
                        .get(&NFTA_LOOKUP_SET)
                        .map(|v| str_of(v))
                        .ok_or_else(unknown)?;
                    let info = self
                        .infos
                        .get(&set)
                        .ok_or_else(|| (format!("a lookup in unknown set {set}"), e.to_vec()))?;
                    let key = self.key(&loaded, sreg, info.key_len)?;
                    let invert = u(NFTA_LOOKUP_FLAGS).unwrap_or(0) & NFT_LOOKUP_F_INV != 0;
                    let op = if invert { MatchOp::Ne } else { MatchOp::Eq };
                    match u(NFTA_LOOKUP_DREG) {
                        None => {
                            let right = if info.anonymous {
                                let values: Vec<Value> = self
                                    .anon_elements(&set, &key)?
                                    .into_iter()
                                    .map(|(v, _)| v)
                                    .collect();
                                match values.as_slice() {
                                    [v @ Value::Concat(_)] => MatchRight::Value(v.clone()),
                                    _ => MatchRight::AnonSet(values),
                                }
                            } else {
                                MatchRight::Set(set.clone())
                            };
                            out.push(Stmt::Match {
                                left: key,
                                op,
                                right,
                            });
                        }
                        Some(NFT_REG_VERDICT) => {
                            let map = if info.anonymous {
                                let entries = self
                                    .anon_elements(&set, &key)?
                                    .into_iter()
                                    .map(|(v, verdict)| verdict.map(|x| (v, x)))
                                    .collect::<Option<Vec<_>>>()
                                    .ok_or_else(unknown)?;
                                MapRef::Anon(entries)
                            } else {
                                MapRef::Named(set.clone())
                            };
                            out.push(Stmt::Vmap { key, map });
                        }
                        Some(dreg) => {
                            // The address and port lookups of a `dnat to ... map`.
                            match (&pending_dnat, dreg) {
                                (None, NFT_REG_1) => pending_dnat = Some((key, set.clone())),
                                (Some((k, _)), 2) if *k == key => pending_port = Some(set.clone()),
                                _ => return Err(unknown()),
                            }
                            if let Some(s) = slot_of(dreg) {
                                // The result is no packet field.
                                loaded.remove(&s);
                            }
                        }
                    }
                }
                "nat" => {
                    let ok = u(NFTA_NAT_TYPE) == Some(NFT_NAT_DNAT)
                        && u(NFTA_NAT_FAMILY) == Some(u32::from(crate::render::netlink::nfproto(self.family)))
                        && u(NFTA_NAT_REG_ADDR_MIN) == Some(NFT_REG_1)
                        && u(NFTA_NAT_REG_PROTO_MIN) == Some(2)
                        // The kernel lists max registers equal to the min ones and adds
                        // NF_NAT_RANGE_MAP_IPS (1).
                        && u(NFTA_NAT_REG_ADDR_MAX).is_none_or(|r| r == NFT_REG_1)
                        && u(NFTA_NAT_REG_PROTO_MAX).is_none_or(|r| r == 2)
                        && u(NFTA_NAT_FLAGS).map(|f| f & !1) == Some(NF_NAT_RANGE_PROTO_SPECIFIED)
                        && d.len() <= 7;
                    match (ok, pending_dnat.take(), pending_port.take()) {
                        (true, Some((key, addr_map)), Some(port_map)) => out.push(Stmt::DnatMap {
                            key,
                            addr_map,
                            port_map,
                        }),
                        _ => return Err(unknown()),
                    }
                }
                "masq" => match (u(NFTA_MASQ_FLAGS), d.len()) {
                    (None, 0) => out.push(Stmt::Masquerade {
                        fully_random: false,
                    }),
                    (Some(NF_NAT_RANGE_PROTO_RANDOM_FULLY), 1) => {
                        out.push(Stmt::Masquerade { fully_random: true })
                    }
                    _ => return Err(unknown()),
                },
                "reject" => {
                    let code = d
                        .get(&NFTA_REJECT_ICMP_CODE)
                        .and_then(|v| v.first().copied());
                    let want = match self.family {
                        IpFamily::V4 => ICMP_PORT_UNREACH,
                        IpFamily::V6 => ICMPV6_PORT_UNREACH,
                    };
                    if u(NFTA_REJECT_TYPE) != Some(NFT_REJECT_ICMP_UNREACH) || code != Some(want) {
                        return Err(unknown());
                    }
                    out.push(Stmt::Reject);
                }
                "immediate" => {
                    if u(NFTA_IMMEDIATE_DREG) != Some(NFT_REG_VERDICT) {
                        return Err(unknown());
                    }
                    let data = d.get(&NFTA_IMMEDIATE_DATA).copied().ok_or_else(unknown)?;
                    let vnest = attributes(data)
                        .find(|(t, _)| *t == NFTA_DATA_VERDICT)
                        .map(|(_, v)| v)
                        .ok_or_else(unknown)?;
                    let vm: BTreeMap<u16, &[u8]> = attributes(vnest).collect();
                    let code = vm.get(&NFTA_VERDICT_CODE).map(|v| be_u32(v) as i32);
                    let chain = vm.get(&NFTA_VERDICT_CHAIN).map(|v| str_of(v));
                    let v = match (code, chain) {
                        (Some(NF_ACCEPT), None) => Verdict::Accept,
                        (Some(NF_DROP), None) => Verdict::Drop,
                        (Some(NFT_RETURN), None) => Verdict::Return,
                        (Some(NFT_JUMP), Some(c)) => Verdict::Jump(c),
                        (Some(NFT_GOTO), Some(c)) => Verdict::Goto(c),
                        _ => return Err(unknown()),
                    };
                    out.push(Stmt::Verdict(v));
                }
                "dynset" => {
                    if u(NFTA_DYNSET_OP) != Some(NFT_DYNSET_OP_UPDATE) {
                        return Err(unknown());
                    }
                    let set = d
                        .get(&NFTA_DYNSET_SET_NAME)
                        .map(|v| str_of(v))
                        .ok_or_else(unknown)?;
                    let info = self.infos.get(&set).ok_or_else(unknown)?;
                    let key = self.key(
                        &loaded,
                        u(NFTA_DYNSET_SREG_KEY).ok_or_else(unknown)?,
                        info.key_len,
                    )?;
                    let timeout = match d.get(&NFTA_DYNSET_TIMEOUT) {
                        Some(v) if be_u64(v).is_multiple_of(1000) => {
                            Some((be_u64(v) / 1000) as u32)
                        }
                        Some(_) => return Err(unknown()),
                        None => None,
                    };
                    let known = [
                        NFTA_DYNSET_SET_NAME,
                        NFTA_DYNSET_SET_ID,
                        NFTA_DYNSET_OP,
                        NFTA_DYNSET_SREG_KEY,
                        NFTA_DYNSET_TIMEOUT,
                    ];
                    // The kernel lists zero flags (NFTA_DYNSET_FLAGS, 9).
                    let empty = |k: &u16| *k == 9 && d.get(k).is_some_and(|v| be_u32(v) == 0);
                    if d.keys().any(|k| !known.contains(k) && !empty(k)) {
                        return Err(unknown());
                    }
                    out.push(Stmt::SetUpdate { set, key, timeout });
                }
                _ => return Err(unknown()),
            }
        }
        if pending_dnat.is_some() {
            return Err(("a map lookup without dnat".into(), exprs.to_vec()));
        }
        let _ = self.table;
        Ok(out)
    }
}
