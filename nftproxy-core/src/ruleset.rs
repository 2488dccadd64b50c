//! The nftables ruleset AST: tables, chains, rules, named sets and maps.
//!
//! It holds only what the compiler emits, typed so that the renderers, the planner and the packet
//! tracer can work on it without re-parsing strings. Everything is kept in sorted containers, so two
//! equal rulesets render byte-identically.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::snapshot::{IpFamily, Protocol};

/// A complete ruleset: our tables, one per family in use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Tables keyed by family.
    pub tables: BTreeMap<IpFamily, Table>,
}

/// One nftables table (`ip NAME` or `ip6 NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Address family.
    pub family: IpFamily,
    /// Table name.
    pub name: String,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Named sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    /// An empty table.
    pub fn new(family: IpFamily, name: impl Into<String>) -> Self {
        Self {
            family,
            name: name.into(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }
}

/// Kind of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `type filter`.
    Filter,
    /// `type nat`.
    Nat,
}

/// Netfilter hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl Hook {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Output => "output",
            Self::Postrouting => "postrouting",
        }
    }
}

/// Hook attachment of a base chain (`policy accept` always: we never drop by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// `type`.
    pub chain_type: ChainType,
    /// `hook`.
    pub hook: Hook,
    /// `priority`, numeric (dstnat = -100, filter = 0, srcnat = 100).
    pub priority: i32,
}

/// A chain: a base chain when `base` is set, otherwise a regular chain reached by jump/goto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Chain name.
    pub name: String,
    /// Hook attachment, for base chains.
    pub base: Option<BaseChain>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// One rule: statements evaluated left to right; a failing match ends the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The statements.
    pub stmts: Vec<Stmt>,
    /// An optional comment (rendered in text and JSON).
    pub comment: Option<String>,
}

impl Rule {
    /// A rule without comment.
    pub fn new(stmts: Vec<Stmt>) -> Self {
        Self {
            stmts,
            comment: None,
        }
    }
    /// Attaches a comment.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

/// A packet field or computed value, as used on the left of a match or as a map key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expr {
    /// `ip saddr` / `ip6 saddr`.
    Saddr(IpFamily),
    /// `ip daddr` / `ip6 daddr`.
    Daddr(IpFamily),
    /// `meta l4proto`.
    L4Proto,
    /// `th dport`.
    Dport,
    /// `meta mark`.
    Mark,
    /// `meta mark & MASK`.
    MarkAnd(u32),
    /// `ct state`.
    CtState,
    /// `ct status`.
    CtStatus,
    /// `fib saddr type` (`true`) or `fib daddr type` (`false`).
    FibAddrType {
        /// Look up the source address (else the destination).
        saddr: bool,
    },
    /// `numgen random mod MOD offset OFFSET`.
    Numgen {
        /// Modulus.
        modulus: u32,
        /// Offset added to the result.
        offset: u32,
    },
    /// Concatenation `a . b . c`.
    Concat(Vec<Self>),
}

/// A constant value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// An address.
    Addr(IpAddr),
    /// A prefix (in interval sets).
    Prefix(IpNet),
    /// A layer-4 protocol.
    Proto(Protocol),
    /// A port.
    Port(u16),
    /// A plain integer (mark values, numgen results).
    Int(u32),
    /// `ct state new`.
    CtStateNew,
    /// `ct status dnat`.
    CtStatusDnat,
    /// `fib ... type local`.
    FibLocal,
    /// A concatenated value `a . b`.
    Concat(Vec<Self>),
}

/// Right-hand side of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchRight {
    /// A constant.
    Value(Value),
    /// A named set `@name`.
    Set(String),
    /// An anonymous set `{ a, b }`.
    AnonSet(Vec<Value>),
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `==` (or set membership; for flag-like left sides, "all bits set").
    Eq,
    /// `!=` (or set non-membership).
    Ne,
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

/// Where a verdict-map or data-map lookup looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapRef<D> {
    /// A named map `@name`.
    Named(String),
    /// An anonymous map `{ k : v, ... }`.
    Anon(Vec<(Value, D)>),
}

/// How `meta mark set` computes the new mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkOp {
    /// `meta mark set meta mark | BITS`.
    Or(u32),
    /// `meta mark set meta mark ^ BITS`.
    Xor(u32),
}

/// A statement of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `LEFT [!=] RIGHT`: stop evaluating the rule unless it holds.
    Match {
        /// The packet field.
        left: Expr,
        /// Operator.
        op: MatchOp,
        /// The constant, set or anonymous set.
        right: MatchRight,
    },
    /// A verdict.
    Verdict(Verdict),
    /// `KEY vmap MAP`: a verdict from a map; no element means the rule does not match.
    Vmap {
        /// The lookup key.
        key: Expr,
        /// The map.
        map: MapRef<Verdict>,
    },
    /// `meta mark set ...`.
    SetMark(MarkOp),
    /// `update @SET { KEY [timeout Ns] }`: add the key to a dynamic set, refreshing its timeout.
    SetUpdate {
        /// The set name.
        set: String,
        /// The key expression.
        key: Expr,
        /// Per-element timeout in seconds.
        timeout: Option<u32>,
    },
    /// `dnat to KEY map @ADDR_MAP : KEY map @PORT_MAP`: both maps are looked up with the same key;
    /// a missing element in either means the rule does not match.
    DnatMap {
        /// The lookup key.
        key: Expr,
        /// Map from key to the new destination address.
        addr_map: String,
        /// Map from key to the new destination port.
        port_map: String,
    },
    /// `masquerade [fully-random]`.
    Masquerade {
        /// `fully-random`.
        fully_random: bool,
    },
    /// `reject` (ICMP port unreachable / ICMPv6 port unreachable).
    Reject,
}

/// Key component type of a named set or map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`.
    InetProto,
    /// `inet_service`.
    InetService,
}

impl KeyType {
    /// The address type of a family.
    pub fn addr(family: IpFamily) -> Self {
        match family {
            IpFamily::V4 => Self::Ipv4Addr,
            IpFamily::V6 => Self::Ipv6Addr,
        }
    }
    /// The nft type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4Addr => "ipv4_addr",
            Self::Ipv6Addr => "ipv6_addr",
            Self::InetProto => "inet_proto",
            Self::InetService => "inet_service",
        }
    }
}

/// Data type of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    /// A verdict map.
    Verdict,
    /// An address (`ipv4_addr` or `ipv6_addr` per the table's family).
    Addr,
    /// `inet_service`.
    InetService,
}

/// Data of a map element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElemData {
    /// A verdict.
    Verdict(Verdict),
    /// An address.
    Addr(IpAddr),
    /// A port.
    Port(u16),
}

/// Flags and timeout of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetFlags {
    /// `flags interval`: elements may be prefixes.
    pub interval: bool,
    /// `flags dynamic`: updated from the packet path.
    pub dynamic: bool,
    /// `flags timeout` with this default timeout in seconds.
    pub timeout: Option<u32>,
}

/// A named set (when `data` is `None`) or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Name.
    pub name: String,
    /// Key type, a concatenation when longer than one.
    pub key: Vec<KeyType>,
    /// Data type for maps.
    pub data: Option<DataType>,
    /// Flags.
    pub flags: SetFlags,
    /// A comment describing what the set holds.
    pub comment: Option<String>,
    /// Elements: key (one [`Value`] per key component) to data (`None` for sets).
    pub elements: BTreeMap<Vec<Value>, Option<ElemData>>,
}

impl Set {
    /// An empty set or map.
    pub fn new(name: impl Into<String>, key: Vec<KeyType>, data: Option<DataType>) -> Self {
        Self {
            name: name.into(),
            key,
            data,
            flags: SetFlags::default(),
            comment: None,
            elements: BTreeMap::new(),
        }
    }
    /// Is this a map (has data)?
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accept => f.write_str("accept"),
            Self::Drop => f.write_str("drop"),
            Self::Return => f.write_str("return"),
            Self::Jump(c) => write!(f, "jump {c}"),
            Self::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

impl Ruleset {
    /// Number of chains over all tables.
    pub fn chain_count(&self) -> usize {
        self.tables.values().map(|t| t.chains.len()).sum()
    }
    /// Number of anonymous sets and maps over all rules.
    pub fn anonymous_set_count(&self) -> usize {
        let mut n = 0;
        for t in self.tables.values() {
            for c in t.chains.values() {
                for r in &c.rules {
                    for s in &r.stmts {
                        match s {
                            Stmt::Match {
                                right: MatchRight::AnonSet(_),
                                ..
                            } => n += 1,
                            Stmt::Vmap {
                                map: MapRef::Anon(_),
                                ..
                            } => n += 1,
                            _ => {}
                        }
                    }
                }
            }
        }
        n
    }
    /// Number of set and map elements over all tables.
    pub fn element_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.sets.values())
            .map(|s| s.elements.len())
            .sum()
    }
}
