//! Packet tracer: follows the first packet of one new connection through a [`Ruleset`] the way
//! nf_tables would, and reports where it goes. Pure: no kernel, no IO.
//!
//! # Model
//!
//! * Only the table of the packet's family is consulted (source and destination must agree).
//! * The packet walks the netfilter hooks. Arriving on an interface
//!   ([`Origin::Interface`]) it passes `prerouting`; then, if its destination (after any DNAT) is
//!   a local address, `input`, where the trace ends (locally delivered packets never reach
//!   `postrouting`); otherwise `forward` and `postrouting`. Sent by the node itself
//!   ([`Origin::Local`]) it passes `output` and `postrouting`; if its destination (after any
//!   DNAT) is a local address it then comes back over loopback through `prerouting` and `input`,
//!   as in the kernel (this is where a NodePort without endpoints rejects the node's own
//!   connections). The path records every routing decision as a `routing: ...` line.
//! * At each hook the base chains run in priority order (lower first; equal priorities in name
//!   order, for determinism). Base chain policy is accept. `accept`, `dnat` and `masquerade` end
//!   the current base chain (the packet goes on to the next one); `drop` and `reject` end the
//!   trace. `jump` pushes a return point, `goto` does not, `return` pops (in a base chain it means
//!   the policy), and falling off the end of a regular chain is a `return`.
//! * NAT takes effect at once, as in the kernel: after a DNAT, every later base chain (later
//!   hooks, and later priorities of the same hook, such as a filter chain at -90 after the nat
//!   chain at -100) sees the new `ip daddr` and `th dport`, and `ct status dnat` holds.
//! * nat chains see only the first packet of a connection, until its binding is set up: once a
//!   `dnat` happened, or a hook doing destination NAT (`prerouting`, `output`) has run all its nat
//!   chains, no further nat chain of those hooks runs (and likewise for source NAT at `input` and
//!   `postrouting`). So the loopback pass of a locally sent packet runs only filter chains.
//! * The connection is new: `ct state new` holds. The mark starts at 0. `numgen` is followed for
//!   every value it can take, so every endpoint it can pick becomes a [`Branch`]; branches with
//!   the same verdict, endpoint and masquerading are merged (keeping the first path).
//! * Dynamic sets, such as the ClientIP affinity sets `aff-N`, are modelled *empty*: the tracer
//!   follows a client that has no affinity entry yet, so a lookup in a set flagged dynamic never
//!   matches, and an `update` of one is recorded in the path but does not change this packet's fate.
//! * `fib saddr type local` / `fib daddr type local` holds for the addresses in
//!   [`TraceEnv::local_addrs`] and for loopback addresses.
//!
//! Whatever the tracer cannot evaluate faithfully (a comparison of mismatched types, a lookup of
//! the mark in a set, `dnat` outside a nat chain, a jump to a missing chain, ...) is an error that
//! names the chain and the rule; nothing is silently skipped.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde_json::json;

use crate::render;
use crate::ruleset::{
    BaseChain, Chain, ChainType, DataType, ElemData, Expr, Hook, KeyType, MapRef, MarkOp, MatchOp,
    MatchRight, Rule, Ruleset, Set, Stmt, Table, Value, Verdict,
};
use crate::snapshot::{IpFamily, Protocol};

/// Deepest jump nesting the kernel allows (`NFT_JUMP_STACK_SIZE`).
pub const MAX_JUMP_DEPTH: usize = 16;

/// Most rules evaluated in one trace before it is considered a loop (goto cycles do not grow the
/// jump stack, so they need a separate bound).
pub const MAX_STEPS: usize = 100_000;

/// Where the traced packet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// It arrives on a network interface: `prerouting`, then `input` or `forward` + `postrouting`.
    Interface,
    /// The node itself sends it: `output`, then `postrouting`.
    Local,
}

/// The first packet of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (before any DNAT).
    pub dst: IpAddr,
    /// Layer-4 protocol.
    pub proto: Protocol,
    /// Destination port.
    pub dport: u16,
    /// Where it comes from.
    pub origin: Origin,
}

/// What the tracer knows about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceEnv {
    /// Addresses the node owns: `fib saddr|daddr type local` holds for them (and for loopback
    /// addresses), and a packet whose destination is one of them is delivered to `input`.
    pub local_addrs: Vec<IpAddr>,
}

impl TraceEnv {
    /// An environment for a node owning these addresses.
    pub fn new(local_addrs: Vec<IpAddr>) -> Self {
        Self { local_addrs }
    }

    /// Is `addr` an address of this node (or loopback)?
    pub fn is_local(&self, addr: IpAddr) -> bool {
        addr.is_loopback() || self.local_addrs.contains(&addr)
    }
}

/// The fate of a traced packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TraceVerdict {
    /// Destination-NATed to a service endpoint.
    Dnat,
    /// Dropped.
    Drop,
    /// Rejected (ICMP / ICMPv6 port unreachable).
    Reject,
    /// No rule of ours claimed the packet: it goes on unchanged.
    Pass,
}

impl TraceVerdict {
    /// The lowercase name used in JSON output: `dnat`, `drop`, `reject`, `pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dnat => "dnat",
            Self::Drop => "drop",
            Self::Reject => "reject",
            Self::Pass => "pass",
        }
    }
}

impl fmt::Display for TraceVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One possible outcome of a trace (one per value a `numgen` can take, after merging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The verdict.
    pub verdict: TraceVerdict,
    /// The DNAT destination; `None` unless the verdict is [`TraceVerdict::Dnat`].
    pub endpoint: Option<SocketAddr>,
    /// Whether the packet reached a `masquerade` statement.
    pub masquerade: bool,
    /// The rules hit, in order, as `"CHAIN: RULE"` lines (plus `routing: ...` lines).
    pub path: Vec<String>,
}

/// Result of [`trace`]: every distinct outcome. All branches have the same verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceOutcome {
    /// Distinct outcomes, in the order the tracer found them (lowest `numgen` value first).
    pub branches: Vec<Branch>,
}

impl TraceOutcome {
    /// The verdict common to all branches ([`trace`] fails with [`TraceError::Ambiguous`] when
    /// branches disagree).
    pub fn verdict(&self) -> TraceVerdict {
        self.branches
            .first()
            .map_or(TraceVerdict::Pass, |b| b.verdict)
    }

    /// All endpoints the packet may be DNATed to, sorted; empty unless the verdict is DNAT.
    pub fn endpoints(&self) -> BTreeSet<SocketAddr> {
        self.branches
            .iter()
            .filter(|b| b.verdict == TraceVerdict::Dnat)
            .filter_map(|b| b.endpoint)
            .collect()
    }

    /// Whether any branch is masqueraded.
    pub fn masquerade(&self) -> bool {
        self.branches.iter().any(|b| b.masquerade)
    }

    /// Endpoints whose branch is masqueraded (differs from [`Self::endpoints`] for hairpin traffic).
    pub fn masqueraded_endpoints(&self) -> BTreeSet<SocketAddr> {
        self.branches
            .iter()
            .filter(|b| b.masquerade)
            .filter_map(|b| b.endpoint)
            .collect()
    }

    /// The path of the first branch.
    pub fn path(&self) -> Vec<String> {
        self.branches
            .first()
            .map(|b| b.path.clone())
            .unwrap_or_default()
    }
}

/// Why a trace failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The packet's source and destination are of different IP families.
    #[error("packet source {src} and destination {dst} are of different ip families")]
    FamilyMismatch {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
    },
    /// A rule uses a construct the tracer cannot evaluate, or one nf_tables would not accept
    /// where it stands.
    #[error("chain {chain}: cannot evaluate rule `{rule}`: {reason}")]
    Unsupported {
        /// The chain holding the rule.
        chain: String,
        /// The rule, rendered.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A jump, goto or verdict-map element names a chain that does not exist.
    #[error("chain {chain}: rule `{rule}` refers to missing chain {target}")]
    UnknownChain {
        /// The chain holding the rule.
        chain: String,
        /// The rule, rendered.
        rule: String,
        /// The missing chain.
        target: String,
    },
    /// A rule refers to a named set or map that does not exist.
    #[error("chain {chain}: rule `{rule}` refers to missing set or map @{set}")]
    UnknownSet {
        /// The chain holding the rule.
        chain: String,
        /// The rule, rendered.
        rule: String,
        /// The missing set.
        set: String,
    },
    /// Jumps are nested deeper than the kernel allows.
    #[error("chain {chain}: jumps nested deeper than {MAX_JUMP_DEPTH}")]
    JumpDepth {
        /// The chain whose jump went too deep.
        chain: String,
    },
    /// Too many rules were evaluated: the chains loop (through `goto`).
    #[error("more than {MAX_STEPS} rules evaluated, last in chain {chain}: the chains loop")]
    StepLimit {
        /// The chain being evaluated when the limit was hit.
        chain: String,
    },
    /// The branches of the trace end with different verdicts.
    #[error("the trace branches end with different verdicts: {}", describe_branches(.branches))]
    Ambiguous {
        /// The distinct branches.
        branches: Vec<Branch>,
    },
}

fn describe_branches(branches: &[Branch]) -> String {
    branches
        .iter()
        .map(|b| {
            let mut s = b.verdict.to_string();
            if let Some(ep) = b.endpoint {
                s.push_str(&format!(" to {ep}"));
            }
            if b.masquerade {
                s.push_str(" (masqueraded)");
            }
            if let Some(last) = b.path.last() {
                s.push_str(&format!(" after `{last}`"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Traces the first packet of a new connection through `ruleset`.
///
/// See the [module documentation](self) for the model. Fails when the packet's addresses are of
/// different families, when a rule cannot be evaluated, or when the branches disagree on the
/// verdict.
pub fn trace(
    ruleset: &Ruleset,
    packet: &Packet,
    env: &TraceEnv,
) -> Result<TraceOutcome, TraceError> {
    let family = IpFamily::of(&packet.src);
    if IpFamily::of(&packet.dst) != family {
        return Err(TraceError::FamilyMismatch {
            src: packet.src,
            dst: packet.dst,
        });
    }
    let Some(table) = ruleset.tables.get(&family) else {
        return Ok(TraceOutcome {
            branches: vec![Branch {
                verdict: TraceVerdict::Pass,
                endpoint: None,
                masquerade: false,
                path: vec![format!("ruleset: no {} table", family_keyword(family))],
            }],
        });
    };
    let mut tracer = Tracer {
        table,
        packet,
        env,
        family,
        steps: 0,
    };
    let start = State {
        daddr: packet.dst,
        dport: packet.dport,
        mark: 0,
        dnat: None,
        snat: false,
        dst_bound: false,
        src_bound: false,
        looped: false,
        path: Vec::new(),
    };
    let first = match packet.origin {
        Origin::Interface => Hook::Prerouting,
        Origin::Local => Hook::Output,
    };
    let mut raw = Vec::new();
    tracer.walk(start, first, &mut raw)?;

    let mut branches: Vec<Branch> = Vec::new();
    for b in raw {
        let seen = branches.iter().any(|x| {
            x.verdict == b.verdict && x.endpoint == b.endpoint && x.masquerade == b.masquerade
        });
        if !seen {
            branches.push(b);
        }
    }
    let verdicts: BTreeSet<TraceVerdict> = branches.iter().map(|b| b.verdict).collect();
    if verdicts.len() > 1 {
        return Err(TraceError::Ambiguous { branches });
    }
    Ok(TraceOutcome { branches })
}

/// Renders an outcome for people: a header naming the packet, one line per rule hit, then a
/// sentence with the result.
pub fn format_text(outcome: &TraceOutcome, packet: &Packet) -> String {
    let origin = match packet.origin {
        Origin::Interface => "arriving on an interface",
        Origin::Local => "sent by the node",
    };
    let mut out = format!(
        "{} {} -> {}, {origin}\n",
        packet.proto,
        packet.src,
        SocketAddr::new(packet.dst, packet.dport)
    );
    for line in outcome.path() {
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
    if outcome.branches.len() > 1 {
        out.push_str(&format!(
            "  (path of the first of {} possible outcomes)\n",
            outcome.branches.len()
        ));
    }
    out.push_str(&summary(outcome, packet));
    out.push('\n');
    out
}

fn join_addrs(addrs: &BTreeSet<SocketAddr>) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one-sentence result of [`format_text`].
fn summary(outcome: &TraceOutcome, packet: &Packet) -> String {
    let masq_all = !outcome.branches.is_empty() && outcome.branches.iter().all(|b| b.masquerade);
    let mut s = match outcome.verdict() {
        TraceVerdict::Dnat => {
            let eps = outcome.endpoints();
            if eps.len() == 1 {
                format!("DNAT to {}", join_addrs(&eps))
            } else {
                format!(
                    "DNAT to one of {} endpoints: {}",
                    eps.len(),
                    join_addrs(&eps)
                )
            }
        }
        TraceVerdict::Reject => match IpFamily::of(&packet.dst) {
            IpFamily::V4 => "rejected (ICMP port unreachable)".to_owned(),
            IpFamily::V6 => "rejected (ICMPv6 port unreachable)".to_owned(),
        },
        TraceVerdict::Drop => "dropped".to_owned(),
        TraceVerdict::Pass => "not handled by any service rule (pass)".to_owned(),
    };
    if masq_all {
        s.push_str(", masqueraded");
    } else if outcome.masquerade() {
        // Hairpin: only the branches back to the client itself are masqueraded.
        s.push_str(&format!(
            ", masqueraded only when sent to {}",
            join_addrs(&outcome.masqueraded_endpoints())
        ));
    }
    s
}

/// Renders an outcome as JSON:
/// `{"verdict": "dnat"|"drop"|"reject"|"pass", "endpoints": [...], "masquerade": bool, "path": [...]}`.
/// Endpoints are sorted (`"10.0.0.1:80"`, `"[fd00::1]:80"`) and empty unless the verdict is DNAT.
pub fn format_json(outcome: &TraceOutcome) -> serde_json::Value {
    let endpoints: Vec<String> = outcome
        .endpoints()
        .iter()
        .map(ToString::to_string)
        .collect();
    json!({
        "verdict": outcome.verdict().as_str(),
        "endpoints": endpoints,
        "masquerade": outcome.masquerade(),
        "path": outcome.path(),
    })
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

/// The type of one component of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addr(IpFamily),
    Proto,
    Port,
    Int,
    CtState,
    CtStatus,
    FibType,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Self::Addr(IpFamily::V4) => "an ipv4 address",
            Self::Addr(IpFamily::V6) => "an ipv6 address",
            Self::Proto => "a protocol",
            Self::Port => "a port",
            Self::Int => "an integer",
            Self::CtState => "a ct state",
            Self::CtStatus => "a ct status",
            Self::FibType => "a fib address type",
        }
    }

    fn fits_value(self, v: &Value) -> bool {
        match (self, v) {
            (Self::Addr(f), Value::Addr(a)) => IpFamily::of(a) == f,
            (Self::Addr(f), Value::Prefix(p)) => IpFamily::of(&p.addr()) == f,
            (Self::Proto, Value::Proto(_))
            | (Self::Port, Value::Port(_))
            | (Self::Int, Value::Int(_))
            | (Self::CtState, Value::CtStateNew)
            | (Self::CtStatus, Value::CtStatusDnat)
            | (Self::FibType, Value::FibLocal) => true,
            _ => false,
        }
    }

    fn fits_key_type(self, t: KeyType) -> bool {
        matches!(
            (self, t),
            (Self::Addr(IpFamily::V4), KeyType::Ipv4Addr)
                | (Self::Addr(IpFamily::V6), KeyType::Ipv6Addr)
                | (Self::Proto, KeyType::InetProto)
                | (Self::Port, KeyType::InetService)
        )
    }
}

/// A packet-side key: one component per concatenated expression. `None` stands for a value no
/// constant of the AST can equal (an address type other than local, a ct status without dnat).
type Key = Vec<Option<Value>>;

/// The packet as one branch of the trace sees it.
#[derive(Debug, Clone)]
struct State {
    daddr: IpAddr,
    dport: u16,
    mark: u32,
    dnat: Option<SocketAddr>,
    snat: bool,
    /// The destination-NAT binding is set up (after a `dnat`, or after a hook with nat chains
    /// that did not DNAT): no further nat chain at prerouting or output runs.
    dst_bound: bool,
    /// The source-NAT binding is set up: no further nat chain at input or postrouting runs.
    src_bound: bool,
    /// A locally sent packet is on its second pass, over loopback.
    looped: bool,
    path: Vec<String>,
}

/// How a base chain ended for one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Accepted (policy, `accept`, or a NAT statement): on to the next base chain.
    Continue,
    Drop,
    Reject,
}

/// How one rule ended for one branch.
#[derive(Debug, Clone)]
enum RuleEnd {
    /// No match, or matched without a verdict: next rule.
    Next,
    Verdict(Verdict),
    /// A terminal NAT statement (`dnat`, `masquerade`): accept for this base chain.
    Nat,
    Reject,
}

/// The rule being evaluated and the base chain it runs under.
struct Cx<'a> {
    chain: &'a str,
    rule: &'a Rule,
    base: BaseChain,
}

struct Tracer<'a> {
    table: &'a Table,
    packet: &'a Packet,
    env: &'a TraceEnv,
    family: IpFamily,
    steps: usize,
}

struct Task<'a> {
    st: State,
    chain: &'a Chain,
    idx: usize,
    stack: Vec<(&'a Chain, usize)>,
}

impl<'a> Tracer<'a> {
    fn unsupported(&self, cx: &Cx<'_>, reason: impl Into<String>) -> TraceError {
        TraceError::Unsupported {
            chain: cx.chain.to_owned(),
            rule: render::rule_body_text(cx.rule),
            reason: reason.into(),
        }
    }

    /// Runs `hook` and the hooks after it for one branch, collecting finished branches.
    fn walk(&mut self, st: State, hook: Hook, out: &mut Vec<Branch>) -> Result<(), TraceError> {
        for (mut st, end) in self.run_hook(hook, st)? {
            let stopped = match end {
                End::Drop => Some(TraceVerdict::Drop),
                End::Reject => Some(TraceVerdict::Reject),
                End::Continue => None,
            };
            if let Some(verdict) = stopped {
                out.push(Branch {
                    verdict,
                    endpoint: None,
                    masquerade: false,
                    path: st.path,
                });
                continue;
            }
            let next = match hook {
                Hook::Prerouting => {
                    let local = self.env.is_local(st.daddr);
                    let (is, to) = if local {
                        ("is a local address", Hook::Input)
                    } else {
                        ("is not a local address", Hook::Forward)
                    };
                    st.path
                        .push(format!("routing: {} {is} -> {}", st.daddr, to.as_str()));
                    Some(to)
                }
                Hook::Forward | Hook::Output => Some(Hook::Postrouting),
                Hook::Postrouting
                    if self.packet.origin == Origin::Local
                        && !st.looped
                        && self.env.is_local(st.daddr) =>
                {
                    st.looped = true;
                    st.path.push(format!(
                        "routing: {} is a local address -> loopback -> prerouting",
                        st.daddr
                    ));
                    Some(Hook::Prerouting)
                }
                Hook::Input | Hook::Postrouting => None,
            };
            match next {
                Some(h) => self.walk(st, h, out)?,
                None => out.push(Branch {
                    verdict: if st.dnat.is_some() {
                        TraceVerdict::Dnat
                    } else {
                        TraceVerdict::Pass
                    },
                    endpoint: st.dnat,
                    masquerade: st.snat,
                    path: st.path,
                }),
            }
        }
        Ok(())
    }

    /// Runs the base chains of one hook in priority order.
    fn run_hook(&mut self, hook: Hook, st: State) -> Result<Vec<(State, End)>, TraceError> {
        let mut chains: Vec<(&'a Chain, BaseChain)> = self
            .table
            .chains
            .values()
            .filter_map(|c| c.base.filter(|b| b.hook == hook).map(|b| (c, b)))
            .collect();
        chains.sort_by(|a, b| (a.1.priority, &a.0.name).cmp(&(b.1.priority, &b.0.name)));
        let mut live = vec![st];
        let mut done = Vec::new();
        for (chain, base) in chains {
            let nat = base.chain_type == ChainType::Nat;
            if nat && hook == Hook::Forward {
                return Err(TraceError::Unsupported {
                    chain: chain.name.clone(),
                    rule: "type nat hook forward".to_owned(),
                    reason: "nat chains cannot attach to the forward hook".to_owned(),
                });
            }
            let mut next = Vec::new();
            for st in live {
                let nat_done = match hook {
                    Hook::Prerouting | Hook::Output => st.dst_bound,
                    Hook::Input | Hook::Postrouting | Hook::Forward => st.src_bound,
                };
                if nat && nat_done {
                    // The kernel only consults nat chains until a binding of their kind exists.
                    next.push(st);
                    continue;
                }
                for (st, end) in self.run_base(chain, base, st)? {
                    match end {
                        End::Continue => next.push(st),
                        End::Drop | End::Reject => done.push((st, end)),
                    }
                }
            }
            live = next;
        }
        // After a hook's nat chains, the kernel sets up a null binding for the kind of NAT that
        // hook does, so nat chains of later hooks of the same kind no longer run.
        done.extend(live.into_iter().map(|mut st| {
            match hook {
                Hook::Prerouting | Hook::Output => st.dst_bound = true,
                Hook::Input | Hook::Postrouting => st.src_bound = true,
                Hook::Forward => {}
            }
            (st, End::Continue)
        }));
        Ok(done)
    }

    /// Looks up the target of a jump or goto.
    fn target(&self, cx: &Cx<'_>, name: &str) -> Result<&'a Chain, TraceError> {
        let Some(chain) = self.table.chains.get(name) else {
            return Err(TraceError::UnknownChain {
                chain: cx.chain.to_owned(),
                rule: render::rule_body_text(cx.rule),
                target: name.to_owned(),
            });
        };
        if chain.base.is_some() {
            return Err(self.unsupported(
                cx,
                format!("{name} is a base chain: it cannot be a jump target"),
            ));
        }
        Ok(chain)
    }

    /// Runs one base chain (and the chains it jumps to) for one branch.
    fn run_base(
        &mut self,
        chain: &'a Chain,
        base: BaseChain,
        st: State,
    ) -> Result<Vec<(State, End)>, TraceError> {
        let mut work = vec![Task {
            st,
            chain,
            idx: 0,
            stack: Vec::new(),
        }];
        let mut done = Vec::new();
        while let Some(mut task) = work.pop() {
            let Some(rule) = task.chain.rules.get(task.idx) else {
                // Falling off the end of a chain is a return; in a base chain, the policy.
                match task.stack.pop() {
                    Some((c, i)) => {
                        task.chain = c;
                        task.idx = i;
                        work.push(task);
                    }
                    None => done.push((task.st, End::Continue)),
                }
                continue;
            };
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(TraceError::StepLimit {
                    chain: task.chain.name.clone(),
                });
            }
            let cx = Cx {
                chain: &task.chain.name,
                rule,
                base,
            };
            let mut results = Vec::new();
            self.eval_stmts(&cx, task.st, 0, Vec::new(), &mut results)?;
            let mut next = Vec::new();
            for (st, end) in results {
                let mut stack = task.stack.clone();
                match end {
                    RuleEnd::Next => {
                        next.push(Task {
                            st,
                            chain: task.chain,
                            idx: task.idx + 1,
                            stack,
                        });
                    }
                    RuleEnd::Nat | RuleEnd::Verdict(Verdict::Accept) => {
                        done.push((st, End::Continue));
                    }
                    RuleEnd::Reject => done.push((st, End::Reject)),
                    RuleEnd::Verdict(Verdict::Drop) => done.push((st, End::Drop)),
                    RuleEnd::Verdict(Verdict::Return) => match stack.pop() {
                        Some((c, i)) => next.push(Task {
                            st,
                            chain: c,
                            idx: i,
                            stack,
                        }),
                        None => done.push((st, End::Continue)),
                    },
                    RuleEnd::Verdict(Verdict::Jump(name)) => {
                        let target = self.target(&cx, &name)?;
                        if stack.len() >= MAX_JUMP_DEPTH {
                            return Err(TraceError::JumpDepth {
                                chain: task.chain.name.clone(),
                            });
                        }
                        stack.push((task.chain, task.idx + 1));
                        next.push(Task {
                            st,
                            chain: target,
                            idx: 0,
                            stack,
                        });
                    }
                    RuleEnd::Verdict(Verdict::Goto(name)) => {
                        let target = self.target(&cx, &name)?;
                        next.push(Task {
                            st,
                            chain: target,
                            idx: 0,
                            stack,
                        });
                    }
                }
            }
            // Depth first, lowest numgen value first.
            work.extend(next.into_iter().rev());
        }
        Ok(done)
    }

    /// Appends the path line of the current rule.
    fn record(&self, cx: &Cx<'_>, st: &mut State, notes: &[String]) {
        let mut line = format!("{}: {}", cx.chain, render::rule_body_text(cx.rule));
        for n in notes {
            line.push(' ');
            line.push_str(n);
        }
        st.path.push(line);
    }

    /// Evaluates statements `i..` of the rule, branching where an expression has several values.
    fn eval_stmts(
        &self,
        cx: &Cx<'_>,
        mut st: State,
        i: usize,
        notes: Vec<String>,
        out: &mut Vec<(State, RuleEnd)>,
    ) -> Result<(), TraceError> {
        let stmts = &cx.rule.stmts;
        let Some(stmt) = stmts.get(i) else {
            self.record(cx, &mut st, &notes);
            out.push((st, RuleEnd::Next));
            return Ok(());
        };
        let terminal = |what: &str| -> Result<(), TraceError> {
            if i + 1 == stmts.len() {
                Ok(())
            } else {
                Err(self.unsupported(cx, format!("statements after the terminal {what}")))
            }
        };
        match stmt {
            Stmt::Match { left, op, right } => {
                let kinds = self.kinds(cx, left)?;
                for key in self.eval_expr(left, &st) {
                    let (member, dynamic) = self.test(cx, &kinds, &key, right)?;
                    let holds = match op {
                        MatchOp::Eq => member,
                        MatchOp::Ne => !member,
                    };
                    let mut st = st.clone();
                    if holds {
                        let mut notes = notes.clone();
                        if contains_numgen(left) {
                            notes.push(format!("(numgen: {})", render_key(&key)));
                        }
                        self.eval_stmts(cx, st, i + 1, notes, out)?;
                    } else {
                        if let Some(set) = dynamic {
                            let mut notes = notes.clone();
                            notes.push(format!(
                                "-> no match (@{set} is dynamic: traced as a client without \
                                 affinity entries)"
                            ));
                            self.record(cx, &mut st, &notes);
                        }
                        out.push((st, RuleEnd::Next));
                    }
                }
            }
            Stmt::Verdict(v) => {
                terminal("verdict")?;
                self.record(cx, &mut st, &notes);
                out.push((st, RuleEnd::Verdict(v.clone())));
            }
            Stmt::Vmap { key, map } => {
                terminal("vmap")?;
                let kinds = self.kinds(cx, key)?;
                for k in self.eval_expr(key, &st) {
                    let mut st = st.clone();
                    let mut notes = notes.clone();
                    match self.vmap_lookup(cx, &kinds, &k, map)? {
                        Some(v) => {
                            notes.push(format!("-> {} : {v}", render_key(&k)));
                            self.record(cx, &mut st, &notes);
                            out.push((st, RuleEnd::Verdict(v)));
                        }
                        None => {
                            notes.push(format!("-> no element {}", render_key(&k)));
                            self.record(cx, &mut st, &notes);
                            out.push((st, RuleEnd::Next));
                        }
                    }
                }
            }
            Stmt::SetMark(op) => {
                st.mark = match op {
                    MarkOp::Or(bits) => st.mark | bits,
                    MarkOp::Xor(bits) => st.mark ^ bits,
                };
                self.eval_stmts(cx, st, i + 1, notes, out)?;
            }
            Stmt::SetUpdate {
                set,
                key,
                timeout: _,
            } => {
                let s = self.named(cx, set)?;
                if !s.flags.dynamic {
                    return Err(self.unsupported(cx, format!("@{set} is updated but not dynamic")));
                }
                if s.is_map() {
                    return Err(self.unsupported(cx, format!("@{set} is a map, not a set")));
                }
                let kinds = self.kinds(cx, key)?;
                self.check_key_types(cx, s, &kinds)?;
                for k in self.eval_expr(key, &st) {
                    let mut notes = notes.clone();
                    notes.push(format!(
                        "(adds {} to @{set}; no effect on this packet)",
                        render_key(&k)
                    ));
                    self.eval_stmts(cx, st.clone(), i + 1, notes, out)?;
                }
            }
            Stmt::DnatMap {
                key,
                addr_map,
                port_map,
            } => {
                terminal("dnat")?;
                let b = cx.base;
                if b.chain_type != ChainType::Nat
                    || !matches!(b.hook, Hook::Prerouting | Hook::Output)
                {
                    return Err(self.unsupported(
                        cx,
                        "dnat is only valid under a nat chain at prerouting or output",
                    ));
                }
                let kinds = self.kinds(cx, key)?;
                for k in self.eval_expr(key, &st) {
                    let mut st = st.clone();
                    let mut notes = notes.clone();
                    let addr = self.data_lookup(cx, &kinds, &k, addr_map, DataType::Addr)?;
                    let port = self.data_lookup(cx, &kinds, &k, port_map, DataType::InetService)?;
                    match (addr, port) {
                        (Some(ElemData::Addr(a)), Some(ElemData::Port(p))) => {
                            if IpFamily::of(a) != self.family {
                                return Err(self.unsupported(
                                    cx,
                                    format!("@{addr_map} maps to {a}, of the wrong family"),
                                ));
                            }
                            let to = SocketAddr::new(*a, *p);
                            st.daddr = *a;
                            st.dport = *p;
                            st.dnat = Some(to);
                            st.dst_bound = true;
                            notes.push(format!("-> {to}"));
                            self.record(cx, &mut st, &notes);
                            out.push((st, RuleEnd::Nat));
                        }
                        (None, _) | (_, None) => {
                            notes.push(format!("-> no element {}", render_key(&k)));
                            self.record(cx, &mut st, &notes);
                            out.push((st, RuleEnd::Next));
                        }
                        _ => {
                            return Err(self.unsupported(
                                cx,
                                format!("@{addr_map} / @{port_map} hold data of the wrong type"),
                            ))
                        }
                    }
                }
            }
            Stmt::Masquerade { .. } => {
                terminal("masquerade")?;
                let b = cx.base;
                if b.chain_type != ChainType::Nat || b.hook != Hook::Postrouting {
                    return Err(self.unsupported(
                        cx,
                        "masquerade is only valid under a nat chain at postrouting",
                    ));
                }
                st.snat = true;
                st.src_bound = true;
                self.record(cx, &mut st, &notes);
                out.push((st, RuleEnd::Nat));
            }
            Stmt::Reject => {
                terminal("reject")?;
                if cx.base.hook == Hook::Postrouting {
                    return Err(self.unsupported(cx, "reject is not valid at postrouting"));
                }
                self.record(cx, &mut st, &notes);
                out.push((st, RuleEnd::Reject));
            }
        }
        Ok(())
    }

    /// The component types of an expression.
    fn kinds(&self, cx: &Cx<'_>, e: &Expr) -> Result<Vec<Kind>, TraceError> {
        Ok(match e {
            Expr::Saddr(f) | Expr::Daddr(f) => {
                if *f != self.family {
                    return Err(self.unsupported(
                        cx,
                        format!(
                            "{} used in the {} table",
                            render::expr_text(e),
                            family_keyword(self.family)
                        ),
                    ));
                }
                vec![Kind::Addr(*f)]
            }
            Expr::L4Proto => vec![Kind::Proto],
            Expr::Dport => vec![Kind::Port],
            Expr::Mark | Expr::MarkAnd(_) => vec![Kind::Int],
            Expr::CtState => vec![Kind::CtState],
            Expr::CtStatus => vec![Kind::CtStatus],
            Expr::FibAddrType { .. } => vec![Kind::FibType],
            Expr::Numgen { modulus, .. } => {
                if *modulus == 0 {
                    return Err(self.unsupported(cx, "numgen with modulus 0"));
                }
                vec![Kind::Int]
            }
            Expr::Concat(es) => {
                if es.is_empty() {
                    return Err(self.unsupported(cx, "empty concatenation"));
                }
                let mut out = Vec::new();
                for e in es {
                    out.extend(self.kinds(cx, e)?);
                }
                out
            }
        })
    }

    /// Every value the expression can take for this packet (several only with `numgen`).
    fn eval_expr(&self, e: &Expr, st: &State) -> Vec<Key> {
        let one = |v: Option<Value>| vec![vec![v]];
        match e {
            Expr::Saddr(_) => one(Some(Value::Addr(self.packet.src))),
            Expr::Daddr(_) => one(Some(Value::Addr(st.daddr))),
            Expr::L4Proto => one(Some(Value::Proto(self.packet.proto))),
            Expr::Dport => one(Some(Value::Port(st.dport))),
            Expr::Mark => one(Some(Value::Int(st.mark))),
            Expr::MarkAnd(m) => one(Some(Value::Int(st.mark & m))),
            Expr::CtState => one(Some(Value::CtStateNew)),
            Expr::CtStatus => one(st.dnat.map(|_| Value::CtStatusDnat)),
            Expr::FibAddrType { saddr } => {
                let a = if *saddr { self.packet.src } else { st.daddr };
                one(self.env.is_local(a).then_some(Value::FibLocal))
            }
            Expr::Numgen { modulus, offset } => (0..*modulus)
                .map(|i| vec![Some(Value::Int(offset.wrapping_add(i)))])
                .collect(),
            Expr::Concat(es) => {
                let mut acc: Vec<Key> = vec![Vec::new()];
                for e in es {
                    let alts = self.eval_expr(e, st);
                    acc = acc
                        .iter()
                        .flat_map(|k| {
                            alts.iter().map(move |a| {
                                let mut k = k.clone();
                                k.extend(a.iter().cloned());
                                k
                            })
                        })
                        .collect();
                }
                acc
            }
        }
    }

    fn named(&self, cx: &Cx<'_>, name: &str) -> Result<&'a Set, TraceError> {
        self.table
            .sets
            .get(name)
            .ok_or_else(|| TraceError::UnknownSet {
                chain: cx.chain.to_owned(),
                rule: render::rule_body_text(cx.rule),
                set: name.to_owned(),
            })
    }

    fn check_key_types(&self, cx: &Cx<'_>, set: &Set, kinds: &[Kind]) -> Result<(), TraceError> {
        let fits = set.key.len() == kinds.len()
            && kinds.iter().zip(&set.key).all(|(k, t)| k.fits_key_type(*t));
        if fits {
            Ok(())
        } else {
            let want = set
                .key
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" . ");
            let got = kinds
                .iter()
                .map(|k| k.describe())
                .collect::<Vec<_>>()
                .join(" . ");
            Err(self.unsupported(
                cx,
                format!("@{} has type {want}, looked up with {got}", set.name),
            ))
        }
    }

    fn check_value(&self, cx: &Cx<'_>, kinds: &[Kind], v: &Value) -> Result<(), TraceError> {
        let comps = components(v);
        let fits =
            comps.len() == kinds.len() && kinds.iter().zip(&comps).all(|(k, c)| k.fits_value(c));
        if fits {
            Ok(())
        } else {
            let want = kinds
                .iter()
                .map(|k| k.describe())
                .collect::<Vec<_>>()
                .join(" . ");
            Err(self.unsupported(
                cx,
                format!("{} compared with {want}", render::value_text(v)),
            ))
        }
    }

    /// Membership of `key` on the right side of a match; the second value names the dynamic set
    /// when the answer is "no" only because dynamic sets are modelled empty.
    fn test(
        &self,
        cx: &Cx<'_>,
        kinds: &[Kind],
        key: &Key,
        right: &MatchRight,
    ) -> Result<(bool, Option<String>), TraceError> {
        match right {
            MatchRight::Value(v) => {
                self.check_value(cx, kinds, v)?;
                Ok((value_matches(key, v), None))
            }
            MatchRight::Set(name) => {
                let set = self.named(cx, name)?;
                if set.is_map() {
                    return Err(self.unsupported(cx, format!("@{name} is a map, not a set")));
                }
                self.check_key_types(cx, set, kinds)?;
                if set.flags.dynamic {
                    return Ok((false, Some(name.clone())));
                }
                Ok((lookup(set, key).is_some(), None))
            }
            MatchRight::AnonSet(values) => {
                if kinds.contains(&Kind::CtStatus) {
                    return Err(self.unsupported(cx, "ct status compared with a set of values"));
                }
                for v in values {
                    self.check_value(cx, kinds, v)?;
                }
                Ok((values.iter().any(|v| value_matches(key, v)), None))
            }
        }
    }

    fn vmap_lookup(
        &self,
        cx: &Cx<'_>,
        kinds: &[Kind],
        key: &Key,
        map: &MapRef<Verdict>,
    ) -> Result<Option<Verdict>, TraceError> {
        match map {
            MapRef::Named(name) => {
                match self.data_lookup(cx, kinds, key, name, DataType::Verdict)? {
                    Some(ElemData::Verdict(v)) => Ok(Some(v.clone())),
                    Some(_) => Err(self.unsupported(cx, format!("@{name} holds a non-verdict"))),
                    None => Ok(None),
                }
            }
            MapRef::Anon(entries) => {
                for (v, _) in entries {
                    self.check_value(cx, kinds, v)?;
                }
                Ok(entries
                    .iter()
                    .find(|(v, _)| value_matches(key, v))
                    .map(|(_, d)| d.clone()))
            }
        }
    }

    /// Looks `key` up in the named map `name`, which must have data type `want`.
    fn data_lookup(
        &self,
        cx: &Cx<'_>,
        kinds: &[Kind],
        key: &Key,
        name: &str,
        want: DataType,
    ) -> Result<Option<&'a ElemData>, TraceError> {
        let set = self.named(cx, name)?;
        if set.data != Some(want) {
            return Err(self.unsupported(
                cx,
                format!("@{name} is not a map of the type this statement needs ({want:?})"),
            ));
        }
        self.check_key_types(cx, set, kinds)?;
        if set.flags.dynamic {
            return Ok(None);
        }
        match lookup(set, key) {
            Some(Some(d)) => Ok(Some(d)),
            Some(None) => Err(self.unsupported(cx, format!("an element of @{name} has no data"))),
            None => Ok(None),
        }
    }
}

/// The components of a constant (one unless it is a concatenation).
fn components(v: &Value) -> Vec<&Value> {
    match v {
        Value::Concat(vs) => vs.iter().flat_map(components).collect(),
        other => vec![other],
    }
}

/// Does a packet-side component equal (or, for a prefix, fall inside) a constant?
fn component_matches(packet: &Option<Value>, constant: &Value) -> bool {
    match (packet, constant) {
        (Some(Value::Addr(a)), Value::Prefix(p)) => p.contains(a),
        (Some(v), c) => v == c,
        (None, _) => false,
    }
}

fn value_matches(key: &Key, v: &Value) -> bool {
    let comps = components(v);
    comps.len() == key.len() && key.iter().zip(comps).all(|(k, c)| component_matches(k, c))
}

/// The element of a named set or map matching `key` (by prefix containment in interval sets).
fn lookup<'s>(set: &'s Set, key: &Key) -> Option<&'s Option<ElemData>> {
    if !set.flags.interval {
        let exact: Option<Vec<Value>> = key.iter().cloned().collect();
        if let Some(found) = exact.and_then(|k| set.elements.get(&k)) {
            return Some(found);
        }
    }
    set.elements
        .iter()
        .find(|(k, _)| {
            k.len() == key.len()
                && key
                    .iter()
                    .zip(k.iter())
                    .all(|(p, c)| component_matches(p, c))
        })
        .map(|(_, d)| d)
}

fn contains_numgen(e: &Expr) -> bool {
    match e {
        Expr::Numgen { .. } => true,
        Expr::Concat(es) => es.iter().any(contains_numgen),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering rules for the path, nft-like.

fn family_keyword(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

fn render_key(key: &Key) -> String {
    key.iter()
        .map(|c| {
            c.as_ref()
                .map_or_else(|| "(other)".to_owned(), render::value_text)
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ipnet::IpNet;

    use super::*;
    use crate::compile::compile;
    use crate::config::ProxyConfig;
    use crate::ruleset::{Chain, SetFlags};
    use crate::snapshot::{
        AddressType, Endpoint, EndpointSlice, ObjectName, Service, ServicePort, ServiceType,
        SlicePort, Snapshot, TrafficPolicy,
    };

    // kube-proxy unit-test conventions.
    const NODE_IP: &str = "192.168.0.2";
    const POD: &str = "10.0.1.1";
    const EXTERNAL: &str = "203.0.113.2";
    const LB_IP: &str = "1.2.3.4";
    const CLUSTER_IP: &str = "172.30.0.41";
    const EP_LOCAL: &str = "10.180.0.1";
    const EP_REMOTE: &str = "10.180.0.2";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn config() -> ProxyConfig {
        ProxyConfig {
            node_name: "node-a".into(),
            node_ips: vec![ip(NODE_IP)],
            cluster_cidrs: vec![net("10.0.0.0/8")],
            ..ProxyConfig::default()
        }
    }

    fn env() -> TraceEnv {
        TraceEnv::new(vec![ip(NODE_IP)])
    }

    fn service(name: &str, cluster_ips: &[&str], ports: Vec<ServicePort>) -> Service {
        Service {
            name: ObjectName::new("ns", name),
            service_type: ServiceType::ClusterIp,
            cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
            ports,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity_timeout: None,
            service_proxy_name: None,
            traffic_distribution: None,
            health_check_node_port: None,
        }
    }

    /// A LoadBalancer service: ClusterIP 172.30.0.41, LB IP 1.2.3.4, port 80/tcp, NodePort 3001.
    fn load_balancer(name: &str) -> Service {
        let mut s = service(
            name,
            &[CLUSTER_IP],
            vec![port("p", Protocol::Tcp, 80, Some(3001))],
        );
        s.service_type = ServiceType::LoadBalancer;
        s.load_balancer_ips = vec![ip(LB_IP)];
        s
    }

    fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol,
            port,
            node_port,
        }
    }

    fn ep(addr: &str, node: &str) -> Endpoint {
        Endpoint {
            address: ip(addr),
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some(node.into()),
            zone: None,
            hint_zones: Vec::new(),
            hint_nodes: Vec::new(),
        }
    }

    fn terminating(addr: &str, node: &str) -> Endpoint {
        Endpoint {
            ready: false,
            terminating: true,
            ..ep(addr, node)
        }
    }

    fn slice(
        service: &str,
        name: &str,
        address_type: AddressType,
        ports: &[(&str, Protocol, u16)],
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            name: ObjectName::new("ns", name),
            service_name: Some(service.into()),
            address_type,
            headless_label: false,
            ports: ports
                .iter()
                .map(|(n, protocol, port)| SlicePort {
                    name: (*n).into(),
                    protocol: *protocol,
                    port: *port,
                })
                .collect(),
            endpoints,
        }
    }

    /// Endpoints of service `name` for port `p`/tcp, target port 8080.
    fn tcp_slice(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        slice(
            name,
            &format!("{name}-1"),
            AddressType::Ipv4,
            &[("p", Protocol::Tcp, 8080)],
            endpoints,
        )
    }

    fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
        Snapshot {
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            slices: slices.into_iter().map(|s| (s.name.clone(), s)).collect(),
            nodes: BTreeMap::new(),
            service_cidrs: BTreeMap::new(),
        }
    }

    /// Service `web`: ClusterIP 172.30.0.41:80/tcp → 8080 on a local and a remote endpoint.
    fn web() -> Snapshot {
        snapshot(
            vec![service(
                "web",
                &[CLUSTER_IP],
                vec![port("p", Protocol::Tcp, 80, None)],
            )],
            vec![tcp_slice(
                "web",
                vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")],
            )],
        )
    }

    fn packet(src: &str, dst: &str, proto: Protocol, dport: u16, origin: Origin) -> Packet {
        Packet {
            src: ip(src),
            dst: ip(dst),
            proto,
            dport,
            origin,
        }
    }

    fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
        packet(src, dst, Protocol::Tcp, dport, Origin::Interface)
    }

    fn run_with(snap: &Snapshot, cfg: &ProxyConfig, p: Packet) -> TraceOutcome {
        let compiled = compile(snap, cfg).unwrap();
        match trace(&compiled.ruleset, &p, &env()) {
            Ok(o) => o,
            Err(e) => panic!("trace failed: {e}"),
        }
    }

    fn run(snap: &Snapshot, p: Packet) -> TraceOutcome {
        run_with(snap, &config(), p)
    }

    fn eps(list: &[&str]) -> BTreeSet<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn both_endpoints() -> BTreeSet<SocketAddr> {
        eps(&["10.180.0.1:8080", "10.180.0.2:8080"])
    }

    fn assert_dnat(o: &TraceOutcome, endpoints: &[&str], masquerade: bool) {
        assert_eq!(o.verdict(), TraceVerdict::Dnat, "{o:#?}");
        assert_eq!(o.endpoints(), eps(endpoints), "{o:#?}");
        assert!(
            o.branches.iter().all(|b| b.masquerade == masquerade),
            "{o:#?}"
        );
    }

    #[test]
    fn pod_to_cluster_ip_dnats_to_every_endpoint_without_masquerade() {
        let o = run(&web(), tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], false);
        assert_eq!(o.branches.len(), 2);
        let path = o.path();
        assert!(
            path.contains(
                &"services: ip daddr . meta l4proto . th dport vmap @service-ips \
                            -> 172.30.0.41 . tcp . 80 : goto internal-cluster"
                    .to_owned()
            ),
            "{path:#?}"
        );
        assert!(path
            .iter()
            .any(|l| l.starts_with("routing: 10.180.0.1 is not a local address")));
        let text = format_text(&o, &tcp(POD, CLUSTER_IP, 80));
        assert!(
            text.ends_with("DNAT to one of 2 endpoints: 10.180.0.1:8080, 10.180.0.2:8080\n"),
            "{text}"
        );
    }

    #[test]
    fn external_client_to_cluster_ip_is_masqueraded() {
        let o = run(&web(), tcp(EXTERNAL, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("internal-cluster: ip saddr != @pod-cidrs")));
        assert!(o
            .path()
            .contains(&"masquerading: masquerade fully-random".to_owned()));
        let text = format_text(&o, &tcp(EXTERNAL, CLUSTER_IP, 80));
        assert!(text.ends_with("10.180.0.2:8080, masqueraded\n"), "{text}");
    }

    #[test]
    fn hairpin_is_masqueraded_only_on_the_branch_back_to_the_client() {
        let o = run(&web(), tcp(EP_LOCAL, CLUSTER_IP, 80));
        assert_eq!(o.verdict(), TraceVerdict::Dnat);
        assert_eq!(o.endpoints(), both_endpoints());
        assert!(o.masquerade());
        assert_eq!(o.masqueraded_endpoints(), eps(&["10.180.0.1:8080"]));
        let text = format_text(&o, &tcp(EP_LOCAL, CLUSTER_IP, 80));
        assert!(
            text.ends_with(", masqueraded only when sent to 10.180.0.1:8080\n"),
            "{text}"
        );
    }

    #[test]
    fn external_client_to_node_port_is_masqueraded() {
        let mut s = service(
            "web",
            &[CLUSTER_IP],
            vec![port("p", Protocol::Tcp, 80, Some(3001))],
        );
        s.service_type = ServiceType::NodePort;
        let snap = snapshot(
            vec![s],
            vec![tcp_slice(
                "web",
                vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")],
            )],
        );
        let o = run(&snap, tcp(EXTERNAL, NODE_IP, 3001));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("np-external: jump mark-for-masq")));
        // The NodePort only answers on the node's primary address.
        let o = run(&snap, tcp(EXTERNAL, "192.168.0.3", 3001));
        assert_eq!(o.verdict(), TraceVerdict::Pass);
    }

    #[test]
    fn node_port_without_endpoints_rejects() {
        let mut s = service(
            "web",
            &[CLUSTER_IP],
            vec![port("p", Protocol::Tcp, 80, Some(3001))],
        );
        s.service_type = ServiceType::NodePort;
        let snap = snapshot(vec![s], vec![]);
        let o = run(&snap, tcp(EXTERNAL, NODE_IP, 3001));
        assert_eq!(o.verdict(), TraceVerdict::Reject, "{o:#?}");
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("routing: 192.168.0.2 is a local address -> input")));
    }

    #[test]
    fn external_client_to_load_balancer_ip_is_masqueraded() {
        let snap = snapshot(
            vec![load_balancer("lb")],
            vec![tcp_slice(
                "lb",
                vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")],
            )],
        );
        let o = run(&snap, tcp(EXTERNAL, LB_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        assert!(o.path().iter().any(|l| l.contains("goto external")));
    }

    #[test]
    fn load_balancer_source_ranges_allow_and_block() {
        let mut s = load_balancer("lb");
        s.load_balancer_source_ranges = vec![net("203.0.113.0/25")];
        let snap = snapshot(
            vec![s],
            vec![tcp_slice(
                "lb",
                vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")],
            )],
        );
        let allowed = run(&snap, tcp(EXTERNAL, LB_IP, 80));
        assert_dnat(&allowed, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        let blocked = run(&snap, tcp("203.0.113.200", LB_IP, 80));
        assert_eq!(blocked.verdict(), TraceVerdict::Drop, "{blocked:#?}");
        assert!(blocked.endpoints().is_empty());
        assert!(blocked
            .path()
            .iter()
            .any(|l| l.starts_with("firewall-check: ")));
        assert!(format_text(&blocked, &tcp("203.0.113.200", LB_IP, 80)).ends_with("dropped\n"));
        // The ClusterIP is not guarded by the source ranges.
        let o = run(&snap, tcp("203.0.113.200", CLUSTER_IP, 80));
        assert_eq!(o.verdict(), TraceVerdict::Dnat);
    }

    #[test]
    fn cluster_ip_without_endpoints_rejects() {
        let snap = snapshot(
            vec![service(
                "web",
                &[CLUSTER_IP],
                vec![port("p", Protocol::Tcp, 80, None)],
            )],
            vec![],
        );
        let p = tcp(POD, CLUSTER_IP, 80);
        let o = run(&snap, p);
        assert_eq!(o.verdict(), TraceVerdict::Reject, "{o:#?}");
        assert!(o.endpoints().is_empty());
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("reject-chain: reject")));
        assert!(format_text(&o, &p).ends_with("rejected (ICMP port unreachable)\n"));
        assert_eq!(format_json(&o)["verdict"], "reject");
    }

    #[test]
    fn undefined_port_on_cluster_ip_rejects() {
        let o = run(&web(), tcp(POD, CLUSTER_IP, 81));
        assert_eq!(o.verdict(), TraceVerdict::Reject, "{o:#?}");
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("cluster-ips-check: ip daddr @cluster-ips reject")));
    }

    fn etp_local(endpoints: Vec<Endpoint>) -> Snapshot {
        let mut s = load_balancer("lb");
        s.external_traffic_policy = TrafficPolicy::Local;
        snapshot(vec![s], vec![tcp_slice("lb", endpoints)])
    }

    #[test]
    fn external_traffic_policy_local_uses_local_endpoints_without_masquerade() {
        let snap = etp_local(vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")]);
        let o = run(&snap, tcp(EXTERNAL, LB_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080"], false);
        let o = run(&snap, tcp(EXTERNAL, NODE_IP, 3001));
        assert_dnat(&o, &["10.180.0.1:8080"], false);
        // The ClusterIP still uses every endpoint.
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], false);
    }

    #[test]
    fn external_traffic_policy_local_without_local_endpoints_drops() {
        let snap = etp_local(vec![ep(EP_REMOTE, "node-b")]);
        let o = run(&snap, tcp(EXTERNAL, LB_IP, 80));
        assert_eq!(o.verdict(), TraceVerdict::Drop, "{o:#?}");
        let o = run(&snap, tcp(EXTERNAL, NODE_IP, 3001));
        assert_eq!(o.verdict(), TraceVerdict::Drop, "{o:#?}");
    }

    #[test]
    fn external_traffic_policy_local_short_circuits_pod_traffic() {
        let snap = etp_local(vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")]);
        let o = run(&snap, tcp(POD, LB_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], false);
        assert!(o
            .path()
            .iter()
            .any(|l| l.contains("short-circuit pod traffic")));
        // Even when no endpoint is local.
        let snap = etp_local(vec![ep(EP_REMOTE, "node-b")]);
        let o = run(&snap, tcp(POD, LB_IP, 80));
        assert_dnat(&o, &["10.180.0.2:8080"], false);
    }

    #[test]
    fn external_traffic_policy_local_from_the_node_is_masqueraded_to_every_endpoint() {
        let snap = etp_local(vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")]);
        let o = run(
            &snap,
            packet(NODE_IP, LB_IP, Protocol::Tcp, 80, Origin::Local),
        );
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("external-local: fib saddr type local jump mark-for-masq")));
    }

    #[test]
    fn internal_traffic_policy_local() {
        let mut s = service(
            "web",
            &[CLUSTER_IP],
            vec![port("p", Protocol::Tcp, 80, None)],
        );
        s.internal_traffic_policy = TrafficPolicy::Local;
        let snap = snapshot(
            vec![s.clone()],
            vec![tcp_slice(
                "web",
                vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")],
            )],
        );
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080"], false);
        assert!(o.path().iter().any(|l| l.contains("goto internal-local")));
        // No local endpoint: dropped (the service has endpoints elsewhere).
        let snap = snapshot(
            vec![s],
            vec![tcp_slice("web", vec![ep(EP_REMOTE, "node-b")])],
        );
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_eq!(o.verdict(), TraceVerdict::Drop, "{o:#?}");
    }

    #[test]
    fn terminating_endpoints_are_a_fallback() {
        let svc = || {
            service(
                "web",
                &[CLUSTER_IP],
                vec![port("p", Protocol::Tcp, 80, None)],
            )
        };
        let snap = snapshot(
            vec![svc()],
            vec![tcp_slice(
                "web",
                vec![
                    terminating(EP_LOCAL, "node-a"),
                    terminating(EP_REMOTE, "node-b"),
                ],
            )],
        );
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], false);
        // Ready endpoints win over terminating ones.
        let snap = snapshot(
            vec![svc()],
            vec![tcp_slice(
                "web",
                vec![terminating(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")],
            )],
        );
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.2:8080"], false);
        // Terminating but not serving: no usable endpoint.
        let mut gone = terminating(EP_LOCAL, "node-a");
        gone.serving = false;
        let snap = snapshot(vec![svc()], vec![tcp_slice("web", vec![gone])]);
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_eq!(o.verdict(), TraceVerdict::Reject);
    }

    #[test]
    fn client_ip_affinity_still_lists_every_endpoint() {
        let mut snap = web();
        for s in snap.services.values_mut() {
            s.session_affinity_timeout = Some(10800);
        }
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], false);
        let path = o.path();
        assert!(
            path.iter()
                .any(|l| l.contains("update @aff-0") && l.contains("no effect on this packet")),
            "{path:#?}"
        );
        assert!(
            path.iter().any(|l| l.contains("@aff-0 is dynamic")),
            "{path:#?}"
        );
    }

    #[test]
    fn dual_stack_traces_ipv6_in_the_ip6_table() {
        let mut cfg = config();
        cfg.cluster_cidrs.push(net("fd00:10::/48"));
        let snap = snapshot(
            vec![service(
                "web",
                &[CLUSTER_IP, "fd00:30::41"],
                vec![port("p", Protocol::Tcp, 80, None)],
            )],
            vec![
                tcp_slice("web", vec![ep(EP_LOCAL, "node-a")]),
                slice(
                    "web",
                    "web-v6",
                    AddressType::Ipv6,
                    &[("p", Protocol::Tcp, 8080)],
                    vec![ep("fd00:10::1", "node-a"), ep("fd00:10::2", "node-b")],
                ),
            ],
        );
        let o = run_with(&snap, &cfg, tcp("fd00:10::5", "fd00:30::41", 80));
        assert_dnat(&o, &["[fd00:10::1]:8080", "[fd00:10::2]:8080"], false);
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("services: ip6 daddr")));
        let json = format_json(&o);
        assert_eq!(
            json["endpoints"],
            json!(["[fd00:10::1]:8080", "[fd00:10::2]:8080"])
        );
        let o = run_with(&snap, &cfg, tcp("2001:db8::7", "fd00:30::41", 80));
        assert_dnat(&o, &["[fd00:10::1]:8080", "[fd00:10::2]:8080"], true);
        // The IPv4 side is independent.
        let o = run_with(&snap, &cfg, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080"], false);
        // An IPv6 packet to a port only in IPv4: rejected as an undefined port.
        let o = run_with(&snap, &cfg, tcp("fd00:10::5", "fd00:30::41", 81));
        assert!(format_text(&o, &tcp("fd00:10::5", "fd00:30::41", 81))
            .ends_with("rejected (ICMPv6 port unreachable)\n"));
    }

    #[test]
    fn udp_and_sctp_ports() {
        let snap = snapshot(
            vec![service(
                "dns",
                &[CLUSTER_IP],
                vec![
                    port("dns", Protocol::Udp, 53, None),
                    port("s", Protocol::Sctp, 9999, None),
                ],
            )],
            vec![slice(
                "dns",
                "dns-1",
                AddressType::Ipv4,
                &[("dns", Protocol::Udp, 5353), ("s", Protocol::Sctp, 7777)],
                vec![ep(EP_LOCAL, "node-a")],
            )],
        );
        let o = run(
            &snap,
            packet(POD, CLUSTER_IP, Protocol::Udp, 53, Origin::Interface),
        );
        assert_dnat(&o, &["10.180.0.1:5353"], false);
        let o = run(
            &snap,
            packet(POD, CLUSTER_IP, Protocol::Sctp, 9999, Origin::Interface),
        );
        assert_dnat(&o, &["10.180.0.1:7777"], false);
        let o = run(
            &snap,
            packet(POD, CLUSTER_IP, Protocol::Tcp, 53, Origin::Interface),
        );
        assert_eq!(o.verdict(), TraceVerdict::Reject);
    }

    #[test]
    fn random_address_passes() {
        let p = tcp(POD, "8.8.8.8", 443);
        let o = run(&web(), p);
        assert_eq!(o.verdict(), TraceVerdict::Pass, "{o:#?}");
        assert!(!o.masquerade());
        assert!(o.endpoints().is_empty());
        assert!(format_text(&o, &p).ends_with("not handled by any service rule (pass)\n"));
        assert!(o
            .path()
            .iter()
            .any(|l| l.ends_with("vmap @service-ips -> no element 8.8.8.8 . tcp . 443")));
    }

    #[test]
    fn node_to_cluster_ip_is_dnated_and_not_rejected_after_dnat() {
        let o = run(
            &web(),
            packet(NODE_IP, CLUSTER_IP, Protocol::Tcp, 80, Origin::Local),
        );
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        let path = o.path();
        assert!(path[0].starts_with("filter-output: "), "{path:#?}");
        assert!(
            !path.iter().any(|l| l.starts_with("cluster-ips-check")),
            "{path:#?}"
        );
    }

    #[test]
    fn json_has_exactly_the_documented_shape() {
        let o = run(&web(), tcp(EXTERNAL, CLUSTER_IP, 80));
        let json = format_json(&o);
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["endpoints", "masquerade", "path", "verdict"]);
        assert_eq!(json["verdict"], "dnat");
        assert_eq!(
            json["endpoints"],
            json!(["10.180.0.1:8080", "10.180.0.2:8080"])
        );
        assert_eq!(json["masquerade"], true);
        assert_eq!(json["path"], json!(o.path()));
    }

    #[test]
    fn mixed_families_are_an_error() {
        let err = trace(&Ruleset::default(), &tcp(POD, "fd00::1", 80), &env()).unwrap_err();
        assert!(matches!(err, TraceError::FamilyMismatch { .. }));
    }

    #[test]
    fn a_family_without_table_passes() {
        let o = trace(&Ruleset::default(), &tcp("fd00::1", "fd00::2", 80), &env()).unwrap();
        assert_eq!(o.verdict(), TraceVerdict::Pass);
    }

    // Hand-built rulesets.

    fn base(chain_type: ChainType, hook: Hook, priority: i32) -> Option<BaseChain> {
        Some(BaseChain {
            chain_type,
            hook,
            priority,
        })
    }

    fn table(chains: Vec<(&str, Option<BaseChain>, Vec<Rule>)>, sets: Vec<Set>) -> Ruleset {
        let mut t = Table::new(IpFamily::V4, "t");
        for (name, base, rules) in chains {
            t.chains.insert(
                name.into(),
                Chain {
                    name: name.into(),
                    base,
                    rules,
                },
            );
        }
        for s in sets {
            t.sets.insert(s.name.clone(), s);
        }
        Ruleset {
            tables: BTreeMap::from([(IpFamily::V4, t)]),
        }
    }

    #[test]
    fn unsupported_construct_is_an_error_naming_the_rule() {
        // The mark looked up in a set keyed by ports.
        let rs = table(
            vec![(
                "pre",
                base(ChainType::Filter, Hook::Prerouting, 0),
                vec![Rule::new(vec![
                    Stmt::Match {
                        left: Expr::Mark,
                        op: MatchOp::Eq,
                        right: MatchRight::Set("ports".into()),
                    },
                    Stmt::Verdict(Verdict::Drop),
                ])],
            )],
            vec![Set::new("ports", vec![KeyType::InetService], None)],
        );
        let err = trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()).unwrap_err();
        match &err {
            TraceError::Unsupported { chain, rule, .. } => {
                assert_eq!(chain, "pre");
                assert_eq!(rule, "meta mark @ports drop");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err
            .to_string()
            .starts_with("chain pre: cannot evaluate rule `meta mark @ports drop`"));

        // A port compared with an address.
        let rs = table(
            vec![(
                "pre",
                base(ChainType::Filter, Hook::Prerouting, 0),
                vec![Rule::new(vec![
                    Stmt::Match {
                        left: Expr::Dport,
                        op: MatchOp::Eq,
                        right: MatchRight::Value(Value::Addr(ip(POD))),
                    },
                    Stmt::Verdict(Verdict::Drop),
                ])],
            )],
            vec![],
        );
        assert!(matches!(
            trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()),
            Err(TraceError::Unsupported { .. })
        ));

        // dnat in a filter chain.
        let mut addr = Set::new("a", vec![KeyType::InetService], Some(DataType::Addr));
        addr.elements
            .insert(vec![Value::Port(80)], Some(ElemData::Addr(ip(EP_LOCAL))));
        let mut prt = Set::new("p", vec![KeyType::InetService], Some(DataType::InetService));
        prt.elements
            .insert(vec![Value::Port(80)], Some(ElemData::Port(8080)));
        let rs = table(
            vec![(
                "fwd",
                base(ChainType::Filter, Hook::Prerouting, 0),
                vec![Rule::new(vec![Stmt::DnatMap {
                    key: Expr::Dport,
                    addr_map: "a".into(),
                    port_map: "p".into(),
                }])],
            )],
            vec![addr, prt],
        );
        let err = trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()).unwrap_err();
        assert!(
            err.to_string()
                .contains("dnat is only valid under a nat chain"),
            "{err}"
        );
    }

    #[test]
    fn missing_chains_and_sets_are_errors() {
        let rs = table(
            vec![(
                "pre",
                base(ChainType::Filter, Hook::Prerouting, 0),
                vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump(
                    "nowhere".into(),
                ))])],
            )],
            vec![],
        );
        assert!(
            matches!(trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()), Err(TraceError::UnknownChain { target, .. }) if target == "nowhere")
        );
        let rs = table(
            vec![(
                "pre",
                base(ChainType::Filter, Hook::Prerouting, 0),
                vec![Rule::new(vec![Stmt::Vmap {
                    key: Expr::Dport,
                    map: MapRef::Named("m".into()),
                }])],
            )],
            vec![],
        );
        assert!(
            matches!(trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()), Err(TraceError::UnknownSet { set, .. }) if set == "m")
        );
    }

    #[test]
    fn loops_are_errors() {
        let rs = table(
            vec![
                (
                    "pre",
                    base(ChainType::Filter, Hook::Prerouting, 0),
                    vec![Rule::new(vec![Stmt::Verdict(Verdict::Goto("a".into()))])],
                ),
                (
                    "a",
                    None,
                    vec![Rule::new(vec![Stmt::Verdict(Verdict::Goto("a".into()))])],
                ),
            ],
            vec![],
        );
        assert!(matches!(
            trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()),
            Err(TraceError::StepLimit { .. })
        ));
        let rs = table(
            vec![
                (
                    "pre",
                    base(ChainType::Filter, Hook::Prerouting, 0),
                    vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump("a".into()))])],
                ),
                (
                    "a",
                    None,
                    vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump("a".into()))])],
                ),
            ],
            vec![],
        );
        assert!(matches!(
            trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()),
            Err(TraceError::JumpDepth { .. })
        ));
    }

    #[test]
    fn branches_with_different_verdicts_are_ambiguous() {
        let rs = table(
            vec![(
                "pre",
                base(ChainType::Filter, Hook::Prerouting, 0),
                vec![Rule::new(vec![Stmt::Vmap {
                    key: Expr::Numgen {
                        modulus: 2,
                        offset: 0,
                    },
                    map: MapRef::Anon(vec![
                        (Value::Int(0), Verdict::Drop),
                        (Value::Int(1), Verdict::Accept),
                    ]),
                }])],
            )],
            vec![],
        );
        let err = trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()).unwrap_err();
        match err {
            TraceError::Ambiguous { branches } => {
                let v: Vec<TraceVerdict> = branches.iter().map(|b| b.verdict).collect();
                assert_eq!(v, [TraceVerdict::Drop, TraceVerdict::Pass]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn jump_return_goto_and_priorities() {
        // Two prerouting chains: the one with the lower priority runs first; a return from a
        // jumped-to chain resumes after the jump; accept ends only its base chain.
        let mark_is = |m: u32| Stmt::Match {
            left: Expr::MarkAnd(0xff),
            op: MatchOp::Eq,
            right: MatchRight::Value(Value::Int(m)),
        };
        let rs = table(
            vec![
                (
                    "b-late",
                    base(ChainType::Filter, Hook::Prerouting, 10),
                    vec![Rule::new(vec![mark_is(3), Stmt::Verdict(Verdict::Drop)])],
                ),
                (
                    "a-early",
                    base(ChainType::Filter, Hook::Prerouting, -10),
                    vec![
                        Rule::new(vec![Stmt::Verdict(Verdict::Jump("sub".into()))]),
                        Rule::new(vec![
                            mark_is(1),
                            Stmt::SetMark(MarkOp::Or(2)),
                            Stmt::Verdict(Verdict::Accept),
                        ]),
                        Rule::new(vec![Stmt::SetMark(MarkOp::Xor(0xff))]),
                    ],
                ),
                (
                    "sub",
                    None,
                    vec![
                        Rule::new(vec![
                            Stmt::SetMark(MarkOp::Or(1)),
                            Stmt::Verdict(Verdict::Return),
                        ]),
                        Rule::new(vec![Stmt::Verdict(Verdict::Drop)]),
                    ],
                ),
            ],
            vec![],
        );
        let o = trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()).unwrap();
        assert_eq!(o.verdict(), TraceVerdict::Drop, "{o:#?}");
        assert_eq!(o.path(), [
            "a-early: jump sub",
            "sub: meta mark set meta mark | 0x00000001 return",
            "a-early: meta mark & 0x000000ff == 0x00000001 meta mark set meta mark | 0x00000002 accept",
            "b-late: meta mark & 0x000000ff == 0x00000003 drop",
        ]);
    }

    #[test]
    fn interval_sets_match_prefixes_inside_concatenations() {
        let mut allow = Set::new("allow", vec![KeyType::InetService, KeyType::Ipv4Addr], None);
        allow.flags = SetFlags {
            interval: true,
            ..SetFlags::default()
        };
        allow.elements.insert(
            vec![Value::Port(80), Value::Prefix(net("10.0.0.0/8"))],
            None,
        );
        let rs = table(
            vec![(
                "pre",
                base(ChainType::Filter, Hook::Prerouting, 0),
                vec![Rule::new(vec![
                    Stmt::Match {
                        left: Expr::Concat(vec![Expr::Dport, Expr::Saddr(IpFamily::V4)]),
                        op: MatchOp::Ne,
                        right: MatchRight::Set("allow".into()),
                    },
                    Stmt::Reject,
                ])],
            )],
            vec![allow],
        );
        let o = trace(&rs, &tcp(POD, CLUSTER_IP, 80), &env()).unwrap();
        assert_eq!(o.verdict(), TraceVerdict::Pass);
        let o = trace(&rs, &tcp(EXTERNAL, CLUSTER_IP, 80), &env()).unwrap();
        assert_eq!(o.verdict(), TraceVerdict::Reject);
        let o = trace(&rs, &tcp(POD, CLUSTER_IP, 81), &env()).unwrap();
        assert_eq!(o.verdict(), TraceVerdict::Reject);
    }

    #[test]
    fn node_to_its_own_node_port_passes_input_over_loopback() {
        let mut s = service(
            "web",
            &[CLUSTER_IP],
            vec![port("p", Protocol::Tcp, 80, Some(3001))],
        );
        s.service_type = ServiceType::NodePort;
        let from_node = packet(NODE_IP, NODE_IP, Protocol::Tcp, 3001, Origin::Local);
        // Without endpoints, filter-input rejects on the loopback pass.
        let o = run(&snapshot(vec![s.clone()], vec![]), from_node);
        assert_eq!(o.verdict(), TraceVerdict::Reject, "{o:#?}");
        let path = o.path();
        assert!(
            path.contains(
                &"routing: 192.168.0.2 is a local address -> loopback -> prerouting".to_owned()
            ),
            "{path:#?}"
        );
        assert!(
            path.iter()
                .any(|l| l.starts_with("nodeport-endpoints-check: ")),
            "{path:#?}"
        );
        // With endpoints: DNAT, masqueraded, and the remote endpoint is not looped back.
        let snap = snapshot(
            vec![s],
            vec![tcp_slice(
                "web",
                vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")],
            )],
        );
        let o = run(&snap, from_node);
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        assert!(!o.path().iter().any(|l| l.contains("loopback")));
    }

    #[test]
    fn node_to_a_host_network_endpoint_runs_no_nat_chain_twice() {
        let snap = snapshot(
            vec![service(
                "web",
                &[CLUSTER_IP],
                vec![port("p", Protocol::Tcp, 80, None)],
            )],
            vec![tcp_slice("web", vec![ep(NODE_IP, "node-a")])],
        );
        let o = run(
            &snap,
            packet(NODE_IP, CLUSTER_IP, Protocol::Tcp, 80, Origin::Local),
        );
        assert_dnat(&o, &["192.168.0.2:8080"], true);
        let path = o.path();
        assert!(path.iter().any(|l| l.contains("loopback")), "{path:#?}");
        assert_eq!(
            path.iter().filter(|l| l.starts_with("nat-")).count(),
            2,
            "{path:#?}"
        );
        assert!(
            path.iter().any(|l| l.starts_with("filter-input: ")),
            "{path:#?}"
        );
        // From a pod, the packet is delivered to input and never reaches postrouting.
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["192.168.0.2:8080"], false);
        assert!(o
            .path()
            .contains(&"routing: 192.168.0.2 is a local address -> input".to_owned()));
    }

    #[test]
    fn external_traffic_policy_local_falls_back_to_local_terminating_endpoints() {
        let snap = etp_local(vec![
            terminating(EP_LOCAL, "node-a"),
            ep(EP_REMOTE, "node-b"),
        ]);
        let o = run(&snap, tcp(EXTERNAL, LB_IP, 80));
        assert_dnat(&o, &["10.180.0.1:8080"], false);
        let o = run(&snap, tcp(EXTERNAL, NODE_IP, 3001));
        assert_dnat(&o, &["10.180.0.1:8080"], false);
        // Cluster traffic uses the ready endpoint only.
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(&o, &["10.180.0.2:8080"], false);
        let o = run(&snap, tcp(POD, LB_IP, 80));
        assert_dnat(&o, &["10.180.0.2:8080"], false);
    }

    #[test]
    fn services_share_load_balancing_chains_but_not_endpoints() {
        let snap = snapshot(
            vec![
                service("a", &[CLUSTER_IP], vec![port("p", Protocol::Tcp, 80, None)]),
                service(
                    "b",
                    &["172.30.0.42"],
                    vec![port("p", Protocol::Tcp, 80, None)],
                ),
                service(
                    "c",
                    &["172.30.0.43"],
                    vec![port("p", Protocol::Tcp, 80, None)],
                ),
            ],
            vec![
                tcp_slice(
                    "a",
                    vec![
                        ep("10.180.0.1", "node-a"),
                        ep("10.180.0.2", "node-b"),
                        ep("10.180.0.3", "node-b"),
                    ],
                ),
                tcp_slice("b", vec![ep("10.180.1.1", "node-a")]),
                tcp_slice(
                    "c",
                    vec![
                        ep("10.180.2.1", "node-a"),
                        ep("10.180.2.2", "node-b"),
                        ep("10.180.2.3", "node-b"),
                    ],
                ),
            ],
        );
        let o = run(&snap, tcp(POD, CLUSTER_IP, 80));
        assert_dnat(
            &o,
            &["10.180.0.1:8080", "10.180.0.2:8080", "10.180.0.3:8080"],
            false,
        );
        let o = run(&snap, tcp(POD, "172.30.0.42", 80));
        assert_dnat(&o, &["10.180.1.1:8080"], false);
        let o = run(&snap, tcp(POD, "172.30.0.43", 80));
        assert_dnat(
            &o,
            &["10.180.2.1:8080", "10.180.2.2:8080", "10.180.2.3:8080"],
            false,
        );
    }

    #[test]
    fn external_ips_follow_the_external_traffic_policy() {
        let mut s = service(
            "web",
            &[CLUSTER_IP],
            vec![port("p", Protocol::Tcp, 80, None)],
        );
        s.external_ips = vec![ip("192.0.2.10")];
        let eps = vec![ep(EP_LOCAL, "node-a"), ep(EP_REMOTE, "node-b")];
        let snap = snapshot(vec![s.clone()], vec![tcp_slice("web", eps.clone())]);
        let o = run(&snap, tcp(EXTERNAL, "192.0.2.10", 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        // Pods reaching an external IP are masqueraded too with the Cluster policy.
        let o = run(&snap, tcp(POD, "192.0.2.10", 80));
        assert_dnat(&o, &["10.180.0.1:8080", "10.180.0.2:8080"], true);
        s.external_traffic_policy = TrafficPolicy::Local;
        let snap = snapshot(vec![s], vec![tcp_slice("web", eps)]);
        let o = run(&snap, tcp(EXTERNAL, "192.0.2.10", 80));
        assert_dnat(&o, &["10.180.0.1:8080"], false);
    }

    #[test]
    fn node_to_undefined_or_empty_cluster_ip_ports_rejects() {
        let from_node = |port| packet(NODE_IP, CLUSTER_IP, Protocol::Tcp, port, Origin::Local);
        let o = run(&web(), from_node(81));
        assert_eq!(o.verdict(), TraceVerdict::Reject, "{o:#?}");
        assert!(o
            .path()
            .iter()
            .any(|l| l.starts_with("filter-output-post-dnat: ")));
        let snap = snapshot(
            vec![service(
                "web",
                &[CLUSTER_IP],
                vec![port("p", Protocol::Tcp, 80, None)],
            )],
            vec![],
        );
        let o = run(&snap, from_node(80));
        assert_eq!(o.verdict(), TraceVerdict::Reject, "{o:#?}");
        assert!(o.path().iter().any(|l| l.starts_with("filter-output: ")));
    }
}
