//! Carrying out the proxy engine's actions against the kernel.
//!
//! [`nftproxy_core::Engine`] decides what to do; [`Kernel`] does it in the current (or a named)
//! network namespace with nft and conntrack: read our tables back, send a transaction, delete
//! stale conntrack entries. [`drive`] runs every due action in order, which is what a
//! synchronous caller (the benchmark, tests) needs; the daemon calls [`Kernel::execute`] from its
//! event loop.

use std::time::{Duration, Instant};

use nftproxy_core::engine::{Action, SyncReport};
use nftproxy_core::Engine;

use crate::apply::{read_current, send};
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
    /// Carries out `action` and reports its result to `engine`.
    pub fn execute(&self, engine: &mut Engine, action: Action) -> Executed {
        let start = Instant::now();
        match action {
            Action::ReadBack => {
                let r = read_current(&self.nft, &self.table).map_err(|e| format!("{e:#}"));
                let duration = start.elapsed();
                let cb = Instant::now();
                engine.readback_done(r, Instant::now());
                let engine_time = cb.elapsed();
                Executed {
                    what: "read-back",
                    duration,
                    engine: engine_time,
                    report: None,
                }
            }
            Action::Apply(a) => {
                let r = send(&self.nft, self.backend, &a.transaction).map_err(|e| format!("{e:#}"));
                let duration = start.elapsed();
                let cb = Instant::now();
                let report = engine.apply_done(r, Instant::now());
                let engine_time = cb.elapsed();
                Executed {
                    what: "apply",
                    duration,
                    engine: engine_time,
                    report,
                }
            }
            Action::DeleteConntrack(flows) => {
                let n = conntrack::flush(&self.nft, &flows);
                let duration = start.elapsed();
                let cb = Instant::now();
                engine.conntrack_done(Ok(n), Instant::now());
                let engine_time = cb.elapsed();
                Executed {
                    what: "conntrack",
                    duration,
                    engine: engine_time,
                    report: None,
                }
            }
            other => {
                tracing::warn!("unknown engine action {other:?}; ignored");
                Executed {
                    what: "unknown",
                    duration: Duration::ZERO,
                    engine: Duration::ZERO,
                    report: None,
                }
            }
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
