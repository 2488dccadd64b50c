//! One writer per table: an exclusive `flock` on `/run/nftproxy/<netns>-<table>.lock`, released by
//! the kernel when the process ends (also on `kill -9`), so no stale lock ever blocks a restart.
//!
//! The network namespace is part of the name (its inode), so tables of the same name in different
//! namespaces do not contend. The daemon holds its lock for as long as it runs; `apply` and
//! `cleanup` hold theirs for one transaction and wait a bounded time for another writer.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::nft::Nft;

/// Where lock files live (`$NFTPROXY_LOCK_DIR`, default `/run/nftproxy`).
fn lock_dir() -> PathBuf {
    std::env::var_os("NFTPROXY_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/nftproxy"))
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct TableLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
}

/// The network namespace nft works in, as an inode number.
fn netns_id(nft: &Nft) -> Result<u64> {
    let path = match nft.netns() {
        Some(name) => PathBuf::from("/run/netns").join(name),
        None => PathBuf::from("/proc/self/ns/net"),
    };
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("identifying the network namespace ({})", path.display()))?
        .ino())
}

/// Takes the writer lock of `table` in nft's network namespace, waiting up to `wait` for another
/// writer to finish.
pub fn lock_table(nft: &Nft, table: &str, wait: Duration) -> Result<TableLock> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}-{table}.lock", netns_id(nft)?));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "another nftproxy ({}) is writing table {table} in this network namespace; \
                     gave up after {wait:?} (lock {})",
                    holder.trim(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
    // Who holds it, for the message a waiting writer prints.
    let _ = file.set_len(0);
    let _ = write!(file, "pid {}", std::process::id());
    Ok(TableLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_waits_then_fails_clearly() {
        let dir = std::env::temp_dir().join(format!("nftproxy-lock-test-{}", std::process::id()));
        std::env::set_var("NFTPROXY_LOCK_DIR", &dir);
        let nft = Nft::from_env();
        let first = lock_table(&nft, "locktest", Duration::ZERO).unwrap();
        let start = Instant::now();
        let e = lock_table(&nft, "locktest", Duration::from_millis(200)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        let msg = e.to_string();
        assert!(
            msg.contains("another nftproxy (pid ") && msg.contains("table locktest"),
            "{msg}"
        );
        drop(first);
        lock_table(&nft, "locktest", Duration::ZERO).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
