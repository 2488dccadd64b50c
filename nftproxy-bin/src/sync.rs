//! Keeping the kernel in step with a changing cluster, as a long-running proxy does.
//!
//! A [`Syncer`] keeps the compiled ruleset in memory ([`IncrementalCompiler`]) and assumes the
//! kernel holds what it last sent, so a sync costs what changed: recompile the changed services,
//! send their element changes. The first sync, and the first after a failure, reads our tables
//! back from the kernel and sends the full difference (a resync).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nftproxy_core::compile::IncrementalCompiler;
use nftproxy_core::plan;
use nftproxy_core::snapshot::ObjectName;
use nftproxy_core::{ProxyConfig, Snapshot};

use crate::apply::{read_current, send};
use crate::conntrack;
use crate::nft::{Backend, Nft};

/// What one sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// nft operations sent (0: nothing changed).
    pub ops: usize,
    /// Elements added or deleted.
    pub elements: usize,
    /// Whether this sync read the kernel's state back (first sync or after a failure).
    pub resync: bool,
    /// Time to compile the change and plan the transaction.
    pub compile_plan: Duration,
    /// Time nft took to apply it.
    pub apply: Duration,
    /// conntrack filters run for stale UDP flows.
    pub conntrack_flushes: usize,
}

/// Incremental synchronisation of one node's ruleset.
#[derive(Debug)]
pub struct Syncer {
    compiler: IncrementalCompiler,
    nft: Nft,
    backend: Backend,
    table: String,
    in_sync: bool,
}

impl Syncer {
    /// A syncer that will resync from the kernel on its first [`sync`](Self::sync).
    pub fn new(config: ProxyConfig, nft: Nft, backend: Backend) -> Result<Self> {
        let table = config.table_name.clone();
        Ok(Self {
            compiler: IncrementalCompiler::new(config)?,
            nft,
            backend,
            table,
            in_sync: false,
        })
    }

    /// The ruleset the kernel holds after the last successful sync.
    pub fn ruleset(&self) -> &nftproxy_core::Ruleset {
        self.compiler.ruleset()
    }

    /// Moves the kernel to `snapshot`. With `changed`, only those services are recompiled (the
    /// caller promises nothing else changed, as a watch event stream tells).
    pub fn sync(
        &mut self,
        snapshot: &Snapshot,
        changed: Option<&[ObjectName]>,
    ) -> Result<SyncReport> {
        let start = Instant::now();
        let resync = !self.in_sync;
        let tx = if resync {
            self.compiler.update(snapshot, None)?;
            let current =
                read_current(&self.nft, &self.table).context("resync: reading our tables back")?;
            plan::plan(&current, self.compiler.ruleset())
        } else {
            self.compiler.update(snapshot, changed)?
        };
        let compile_plan = start.elapsed();
        let mut report = SyncReport {
            ops: tx.len(),
            elements: tx.element_count(),
            resync,
            compile_plan,
            ..SyncReport::default()
        };
        if tx.is_empty() {
            self.in_sync = true;
            return Ok(report);
        }
        let start = Instant::now();
        if let Err(e) = send(&self.nft, self.backend, &tx) {
            self.in_sync = false;
            return Err(e);
        }
        report.apply = start.elapsed();
        self.in_sync = true;
        let flows =
            conntrack::stale_flows_removed(self.compiler.removed(), self.compiler.ruleset());
        report.conntrack_flushes = conntrack::flush(&self.nft, &flows);
        Ok(report)
    }
}
