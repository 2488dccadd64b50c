//! Carrying out the proxy engine's actions against the kernel.
//!
//! [`nftproxy_core::Engine`] decides what to do; [`Kernel`] does it in the current (or a named)
//! network namespace with nft and conntrack: read our tables back, send a transaction, delete
//! stale conntrack entries. [`Kernel::perform`] is the IO alone (so an async driver can run it on
//! a blocking thread) and [`Outcome::report`] hands its result to the engine; [`drive`] runs every
//! due action in order, which is what a synchronous caller (the benchmark, tests) needs.

use std::time::{Duration, Instant};

use nftproxy_core::engine::{Action, SyncReport};
use nftproxy_core::{Engine, Ruleset};

use crate::apply::{read_current_with, send};
use crate::conntrack;
use crate::nft::{Backend, Nft};

/// Our tables in one network namespace, reached through nft.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// How nft is run (binary, namespace).
    pub nft: Nft,
    /// JSON or text input.
    pub backend: Backend,
    /// Our table name.
    pub table: String,
}

/// The result of one action's IO.
#[derive(Debug)]
pub enum Outcome {
    /// Our tables, or why they could not be read.
    ReadBack(Result<Ruleset, String>),
    /// Whether the transaction was committed.
    Apply(Result<(), String>),
    /// conntrack filters run and entries deleted.
    Conntrack(Result<conntrack::Flushed, String>),
    /// An action this driver does not know (the engine may grow new ones).
    Unknown,
}

impl Outcome {
    /// `read-back`, `apply` or `conntrack`.
    pub fn what(&self) -> &'static str {
        match self {
            Self::ReadBack(_) => "read-back",
            Self::Apply(_) => "apply",
            Self::Conntrack(_) => "conntrack",
            Self::Unknown => "unknown",
        }
    }

    /// Hands the result to the engine; returns the finished sync, for an apply.
    pub fn report(self, engine: &mut Engine) -> Option<SyncReport> {
        let now = Instant::now();
        match self {
            Self::ReadBack(r) => {
                engine.readback_done(r, now);
                None
            }
            Self::Apply(r) => engine.apply_done(r, now),
            Self::Conntrack(r) => {
                engine.conntrack_done(r.map(|f| f.filters), now);
                None
            }
            Self::Unknown => None,
        }
    }
}

/// What carrying out one action took.
#[derive(Debug, Clone)]
pub struct Executed {
    /// Which action: `read-back`, `apply` or `conntrack`.
    pub what: &'static str,
    /// Time spent in nft or conntrack.
    pub duration: Duration,
    /// Time the engine took to take the result (after a read-back: compiling and planning).
    pub engine: Duration,
    /// The finished sync, for `apply`.
    pub report: Option<SyncReport>,
}

impl Kernel {
    /// Does the IO of `action`.
    pub fn perform(&self, action: Action) -> Outcome {
        match action {
            Action::ReadBack => Outcome::ReadBack(
                read_current_with(&self.nft, self.backend, &self.table)
                    .map_err(|e| format!("{e:#}")),
            ),
            Action::Apply(a) => Outcome::Apply(
                send(&self.nft, self.backend, &a.transaction).map_err(|e| format!("{e:#}")),
            ),
            Action::DeleteConntrack(flows) => {
                Outcome::Conntrack(conntrack::flush(&self.nft, &flows))
            }
            other => {
                tracing::warn!("unknown engine action {other:?}; ignored");
                Outcome::Unknown
            }
        }
    }

    /// Carries out `action` and reports its result to `engine`.
    pub fn execute(&self, engine: &mut Engine, action: Action) -> Executed {
        let start = Instant::now();
        let outcome = self.perform(action);
        let duration = start.elapsed();
        let what = outcome.what();
        let start = Instant::now();
        let report = outcome.report(engine);
        Executed {
            what,
            duration,
            engine: start.elapsed(),
            report,
        }
    }
}

/// One [`drive`] run: the actions carried out, and the time spent deciding them (compiling and
/// planning inside [`Engine::poll`] and the result callbacks, i.e. everything but nft).
#[derive(Debug, Clone, Default)]
pub struct Driven {
    /// The actions, in order.
    pub actions: Vec<Executed>,
    /// Time in the engine.
    pub engine_time: Duration,
}

impl Driven {
    /// The last finished sync among the actions.
    pub fn report(&self) -> Option<&SyncReport> {
        self.actions.iter().rev().find_map(|a| a.report.as_ref())
    }

    /// Time spent in nft applying transactions.
    pub fn apply_time(&self) -> Duration {
        self.actions
            .iter()
            .filter(|a| a.what == "apply")
            .map(|a| a.duration)
            .sum()
    }
}

/// Carries out every action that is due now, until the engine has nothing more to do.
pub fn drive(engine: &mut Engine, kernel: &Kernel) -> Driven {
    let mut out = Driven::default();
    loop {
        let start = Instant::now();
        let action = engine.poll(start);
        out.engine_time += start.elapsed();
        let Some(action) = action else { break };
        let executed = kernel.execute(engine, action);
        out.engine_time += executed.engine;
        out.actions.push(executed);
    }
    out
}
