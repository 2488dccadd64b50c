//! `nftproxy apply` and `nftproxy cleanup`: program the kernel in the current network namespace.
//!
//! Every apply reads our own tables back from the kernel, plans the difference to the desired
//! ruleset and sends it as one nft batch, which the kernel commits atomically. Because the current
//! state is always read back, an apply after a failed one is a full resync. Other tables are never
//! read or touched.

use anyhow::{Context, Result};
use nftproxy_core::plan::{self, Transaction};
use nftproxy_core::snapshot::IpFamily;
use nftproxy_core::{readback, ProxyConfig, Ruleset, Snapshot};

use crate::conntrack;
use crate::netlink::NetlinkSocket;
use crate::nft::{call_timeout, Backend, Nft};
use crate::probe;

fn family_word(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// Our tables as the kernel has them now, read through the backend's path: for netlink,
/// [`read_current_netlink`], otherwise [`read_current`].
pub fn read_current_with(nft: &Nft, backend: Backend, table: &str) -> Result<Ruleset> {
    match backend {
        Backend::Netlink => read_current_netlink(nft, table),
        Backend::Json | Backend::Text => read_current(nft, table),
    }
}

/// Our tables read back over netlink alone: `GETTABLE`, `GETCHAIN`, `GETSET` and `GETRULE`
/// dumps of each family and a `GETSETELEM` dump per set (anonymous ones included, dynamic ones
/// not), decoded by [`nftproxy_core::readback::netlink::decode_table`]. No nft process runs.
/// The result equals [`read_current`]'s; what we never write is not representable there too.
pub fn read_current_netlink(nft: &Nft, table: &str) -> Result<Ruleset> {
    use nftproxy_core::readback::netlink::{decode_table, set_names, TableDump};
    use nftproxy_core::render::netlink::{nfproto, sys};
    let mut current = Ruleset::default();
    let mut sock = NetlinkSocket::open(nft.netns())?;
    let timeout = call_timeout();
    for family in [IpFamily::V4, IpFamily::V6] {
        let word = family_word(family);
        let fam = nfproto(family);
        let mut dump = TableDump::default();
        let mut get = |what: &str, ty: u16, attrs: &[(u16, &str)]| {
            sock.dump(what, ty, fam, attrs, timeout)
                .with_context(|| format!("reading back table {word} {table}: {what}"))
        };
        dump.tables = get("tables", sys::NFT_MSG_GETTABLE, &[])?;
        if decode_table(family, table, &dump)?.is_none() {
            continue;
        }
        dump.chains = get("chains", sys::NFT_MSG_GETCHAIN, &[])?;
        dump.sets = get("sets", sys::NFT_MSG_GETSET, &[(sys::NFTA_SET_TABLE, table)])?;
        dump.rules = get(
            "rules",
            sys::NFT_MSG_GETRULE,
            &[(sys::NFTA_RULE_TABLE, table)],
        )?;
        let dynamic = |name: &str| {
            dump.sets.iter().any(|p| {
                let attrs = &p[4..];
                nftproxy_core::render::netlink::attributes(attrs).any(|(t, v)| {
                    t == sys::NFTA_SET_NAME && v.split(|b| *b == 0).next() == Some(name.as_bytes())
                }) && nftproxy_core::render::netlink::attributes(attrs).any(|(t, v)| {
                    t == sys::NFTA_SET_FLAGS
                        && v.len() == 4
                        && u32::from_be_bytes([v[0], v[1], v[2], v[3]]) & sys::NFT_SET_EVAL != 0
                })
            })
        };
        let names: Vec<String> = set_names(table, &dump.sets)
            .into_iter()
            .filter(|n| !dynamic(n))
            .collect();
        for name in names {
            let answers = get(
                &format!("elements of set {name}"),
                sys::NFT_MSG_GETSETELEM,
                &[
                    (sys::NFTA_SET_ELEM_LIST_TABLE, table),
                    (sys::NFTA_SET_ELEM_LIST_SET, &name),
                ],
            )?;
            dump.elements.insert(name, answers);
        }
        if let Some(t) = decode_table(family, table, &dump)? {
            current.tables.insert(family, t);
        }
    }
    Ok(current)
}

/// Our tables as the kernel has them now (missing tables are simply absent).
pub fn read_current(nft: &Nft, table: &str) -> Result<Ruleset> {
    let mut current = Ruleset::default();
    for family in [IpFamily::V4, IpFamily::V6] {
        let word = family_word(family);
        match nft.run(&["-j", "list", "table", word, table], None) {
            Ok(json) => {
                let read = readback::from_nft_json(&json)
                    .with_context(|| format!("reading back table {word} {table}"))?;
                current.tables.extend(read.tables);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("listing table {word} {table}")),
        }
    }
    Ok(current)
}

fn render(tx: &Transaction, backend: Backend) -> String {
    match backend {
        Backend::Json => tx.to_json_compact(),
        Backend::Text | Backend::Netlink => tx.to_string(),
    }
}

/// After a failed batch (which changed nothing), finds the first operation nft refuses by checking
/// ever longer prefixes of the transaction (`--check` commits nothing), to name the object.
fn first_refused(nft: &Nft, backend: Backend, tx: &Transaction) -> Option<String> {
    // The whole batch passing `--check` means the commit failed for another reason (transient,
    // a crash): no operation is to blame.
    if nft.batch(backend, &render(tx, backend), true).is_ok() {
        return None;
    }
    let (mut ok, mut bad) = (0usize, tx.ops.len());
    // Invariant: prefix [..ok] passes, prefix [..bad] fails.
    while bad - ok > 1 {
        let mid = (ok + bad) / 2;
        let prefix = Transaction {
            ops: tx.ops[..mid].to_vec(),
        };
        if nft.batch(backend, &render(&prefix, backend), true).is_ok() {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    tx.ops.get(bad - 1).map(|op| op.to_string())
}

/// Sends a transaction; on failure the error names the refused operation.
pub fn send(nft: &Nft, backend: Backend, tx: &Transaction) -> Result<()> {
    if backend == Backend::Netlink {
        // The kernel answers each message on its own: the refused op comes with the error.
        let mut sock = NetlinkSocket::open(nft.netns())?;
        return sock.transact(tx, call_timeout()).with_context(|| {
            format!(
                "transaction of {} operations refused; nothing was changed, the next apply \
                 resynchronises from the kernel's state",
                tx.len()
            )
        });
    }
    if let Err(e) = nft.batch(backend, &render(tx, backend), false) {
        let culprit = first_refused(nft, backend, tx)
            .map(|op| format!(" at `{op}`"))
            .unwrap_or_else(|| " (nft --check accepts it: the commit itself failed)".to_owned());
        return Err(e).with_context(|| {
            format!(
                "transaction of {} operations refused{culprit}; nothing was changed, the next apply \
                 resynchronises from the kernel's state",
                tx.len()
            )
        });
    }
    Ok(())
}

/// Options of `nftproxy apply`.
pub struct ApplyOptions {
    pub backend: Option<Backend>,
    pub dry_run: bool,
    /// Apply even if most service entry points the kernel holds would go.
    pub allow_mass_delete: bool,
}

/// How long `apply` and `cleanup` wait for another writer of the same table.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Service entry points (ClusterIP, external and LoadBalancer IP keys, with or without
/// endpoints) in a ruleset.
fn service_keys(r: &Ruleset) -> usize {
    use nftproxy_core::compile::names::{NO_ENDPOINT_SERVICES, SERVICE_IPS};
    r.tables
        .values()
        .map(|t| {
            let keys = |name: &str| t.sets.get(name).into_iter().flat_map(|s| s.elements.keys());
            keys(SERVICE_IPS)
                .chain(keys(NO_ENDPOINT_SERVICES))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .sum()
}

/// Refuses a transaction that would remove more than half of the service entry points the
/// kernel holds (a truncated or wrong snapshot), unless allowed.
fn check_mass_delete(current: &Ruleset, desired: &Ruleset, allowed: bool) -> Result<()> {
    let (now, after) = (service_keys(current), service_keys(desired));
    if !allowed && now > 0 && after * 2 < now {
        anyhow::bail!(
            "refusing to apply: the kernel holds {now} service entry points and this snapshot \
             keeps only {after}; if that is intended, pass --allow-mass-delete"
        );
    }
    Ok(())
}

/// Moves the kernel from its current state to `desired`.
///
/// The ruleset is compiled against what the kernel holds ([`compile_with_previous`]), so
/// endpoints keep their slots and a one-endpoint change stays a few operations.
///
/// [`compile_with_previous`]: nftproxy_core::compile::compile_with_previous
pub fn apply(snapshot: &Snapshot, config: &ProxyConfig, opts: &ApplyOptions) -> Result<()> {
    let table = config.table_name.as_str();
    let nft = Nft::from_env();
    let caps = probe::probe(&nft)?;
    let backend = caps.choose(opts.backend)?;
    tracing::info!(
        "nft {}: using the {} backend",
        caps.version,
        backend.as_str()
    );
    if let (Backend::Json | Backend::Text, Err(why)) = (backend, &caps.netlink) {
        tracing::info!("netlink backend unavailable: {why}");
    }
    if let (Backend::Text, Err(why)) = (backend, &caps.json) {
        tracing::info!("JSON backend unavailable: {why}");
    }
    let _lock = crate::lock::lock_table(&nft, table, LOCK_WAIT)?;
    let current = read_current_with(&nft, backend, table)?;
    let compiled = nftproxy_core::compile::compile_with_previous(snapshot, config, &current)?;
    for w in &compiled.warnings {
        tracing::warn!("{w}");
    }
    let desired = &compiled.ruleset;
    check_mass_delete(&current, desired, opts.allow_mass_delete)?;
    let tx = plan::plan(&current, desired);
    if opts.dry_run {
        match backend {
            Backend::Json => print!("{}", tx.to_json()),
            // The netlink batch holds the same commands as the nft script.
            Backend::Text | Backend::Netlink => print!("{tx}"),
        }
        eprintln!("dry run: {} operations not sent", tx.len());
        return Ok(());
    }
    if tx.is_empty() {
        println!("up to date: sent 0 operations");
        return Ok(());
    }
    send(&nft, backend, &tx)?;
    let flows = nftproxy_core::conntrack::stale_flows(&current, desired);
    let flushed = match conntrack::flush(&nft, &flows) {
        Ok(f) => f.filters,
        Err(e) => {
            // The rules are in place; stale UDP flows only live until they time out.
            tracing::warn!("deleting stale UDP conntrack entries: {e}");
            0
        }
    };
    println!(
        "applied {} operations ({} elements, {} rules) with the {} backend{}",
        tx.len(),
        tx.element_count(),
        tx.rule_count(),
        backend.as_str(),
        if flushed > 0 {
            format!("; flushed stale UDP conntrack entries ({flushed} filters)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Deletes our tables, atomically; other tables stay as they are.
pub fn cleanup(table: &str, backend: Option<Backend>) -> Result<()> {
    let nft = Nft::from_env();
    let _lock = crate::lock::lock_table(&nft, table, LOCK_WAIT)?;
    let backend = backend.unwrap_or(Backend::Json);
    let current = read_current_with(&nft, backend, table)?;
    if current.tables.is_empty() {
        println!("nothing to clean up: no table {table}");
        return Ok(());
    }
    let tx = plan::delete_all(&current);
    send(&nft, backend, &tx)?;
    let names: Vec<String> = current
        .tables
        .keys()
        .map(|f| format!("{} {table}", family_word(*f)))
        .collect();
    println!("deleted table {}", names.join(" and table "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftproxy_core::parse::parse_snapshot;
    use nftproxy_core::{compile, ProxyConfig};

    fn services(n: usize) -> Ruleset {
        let mut yaml = String::new();
        for i in 0..n {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: d}}\n\
                 spec: {{clusterIP: 172.30.0.{}, ports: [{{port: 80}}]}}\n",
                i + 1
            ));
        }
        let snap = parse_snapshot(&yaml).unwrap().snapshot;
        let cfg = ProxyConfig {
            node_name: "n".into(),
            ..ProxyConfig::default()
        };
        compile(&snap, &cfg).unwrap().ruleset
    }

    #[test]
    fn mass_deletes_need_the_flag() {
        let (ten, four, five) = (services(10), services(4), services(5));
        let e = check_mass_delete(&ten, &four, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds 10 service entry points and this snapshot keeps only 4"),
            "{e}"
        );
        check_mass_delete(&ten, &four, true).unwrap();
        check_mass_delete(&ten, &five, false).unwrap();
        check_mass_delete(&Ruleset::default(), &four, false).unwrap();
    }
}
