//! The netlink renderer against nft itself, in throwaway network namespaces (root):
//!
//! * `batches_are_the_bytes_nft_sends`: for every fixture, the full transaction rendered by
//!   `render::netlink` equals, message by message, the batch nft 1.0.6 sends for the same
//!   transaction as nft text (captured with strace; skipped without strace);
//! * `fixtures_load_over_netlink`: every fixture's full transaction sent over netlink reads back
//!   (`nft -j list table`, JSON read-back) as the compiled ruleset, and `nft list table` prints
//!   exactly what it prints after `nft -f` of our text rendering; a planned partial transaction (elements changed, a service
//!   removed, one added) leaves the same ruleset over netlink as over nft JSON;
//! * `netlink_read_back_equals_json_read_back`: for every fixture, loaded over netlink and also
//!   with affinity entries added from the packet path, the netlink read-back (dumps only, no
//!   nft) equals the JSON read-back; a rule someone else added to our table is an error naming
//!   the chain and the rule handle;
//! * `a_refused_op_changes_nothing_and_is_named`: an element delete of an absent key fails the
//!   whole batch, names the op and the element with the kernel's reason, and changes nothing.

use std::process::Command;

use nftproxy_bin::apply::{read_current, read_current_netlink, send};
use nftproxy_bin::netlink::{NetlinkError, NetlinkSocket};
use nftproxy_bin::nft::{call_timeout, Backend, Nft};
use nftproxy_core::plan::{self, Op, TableRef, Transaction};
use nftproxy_core::render::netlink::{self, BatchOptions};
use nftproxy_core::ruleset::Value;
use nftproxy_core::snapshot::IpFamily;
use nftproxy_core::{compile, readback, render, Ruleset};
use nftproxy_tests::fixtures::{self, without_set_comments};
use nftproxy_tests::netns::Netns;
use nftproxy_tests::require_root;

fn family_word(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The kernel's copy of `like`'s tables, through `nft -j list table` and the JSON read-back.
fn read_json(ns: &Netns, like: &Ruleset) -> Ruleset {
    let mut out = Ruleset::default();
    for t in like.tables.values() {
        let json = ns.ok(&["nft", "-j", "list", "table", family_word(t.family), &t.name]);
        out.tables
            .extend(readback::from_nft_json(&json).expect("read back").tables);
    }
    out
}

fn send_netlink(ns: &Netns, tx: &Transaction) -> Result<(), NetlinkError> {
    NetlinkSocket::open(Some(&ns.name))?.transact(tx, call_timeout())
}

/// First differing lines of two texts.
fn diff(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .take(4)
        .map(|(x, y)| format!("  kernel: {x}\n  ours:   {y}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn fixtures_load_over_netlink() {
    require_root!();
    let mut failures = Vec::new();
    for case in fixtures::cases() {
        let ruleset = fixtures::compile_case(&case);
        let ns = Netns::new("nlload");
        send_netlink(&ns, &plan::full(&ruleset)).unwrap_or_else(|e| panic!("{case}: {e}"));
        // (a) the JSON read-back is the compiled ruleset, set comments included.
        let back = read_json(&ns, &ruleset);
        if back != ruleset {
            failures.push(format!(
                "{case}: JSON read-back differs\n{}",
                diff(&render::to_nft_text(&back), &render::to_nft_text(&ruleset))
            ));
        }
        // (b) nft lists each table exactly as it does after loading our text rendering with
        // `nft -f`. (nft's listing is not our rendering verbatim either way: it names
        // priorities, shortens timeouts, lists hash sets in hash order and /32 prefixes as
        // addresses.)
        let text_ns = Netns::new("nltext");
        let out = text_ns.run_stdin(&["nft", "-f", "-"], Some(&render::to_nft_text(&ruleset)));
        assert!(out.status.success(), "{case}: nft -f");
        for t in ruleset.tables.values() {
            let list =
                |ns: &Netns| ns.ok(&["nft", "list", "table", family_word(t.family), &t.name]);
            let (listed, from_text) = (list(&ns), list(&text_ns));
            if listed != from_text {
                failures.push(format!(
                    "{case}: nft list table {} {} differs from the text load\n{}",
                    family_word(t.family),
                    t.name,
                    diff(&listed, &from_text)
                ));
            }
        }
        // (c) a partial transaction: the same result over netlink as over nft JSON.
        let (mut snapshot, config) = fixtures::load(&case);
        let first = snapshot.services.keys().next().cloned();
        if let Some(name) = first {
            snapshot.services.remove(&name);
        }
        for slice in snapshot.slices.values_mut() {
            if let Some(e) = slice.endpoints.pop() {
                let mut moved = e.clone();
                if let std::net::IpAddr::V4(a) = e.address {
                    let o = a.octets();
                    moved.address = std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3] ^ 0x80).into();
                }
                slice.endpoints.push(moved);
            }
        }
        let (extra, _) = fixtures::load("nodeport");
        for (name, svc) in extra.services.into_iter().take(1) {
            let mut name = name;
            name.name = format!("{}-extra", name.name);
            snapshot.services.insert(name, svc);
        }
        let changed = compile(&snapshot, &config)
            .unwrap_or_else(|e| panic!("{case}: {e}"))
            .ruleset;
        let tx = plan::plan(&ruleset, &changed);
        let json_ns = Netns::new("nljson");
        let nft = Nft::in_netns(&json_ns.name);
        send(&nft, Backend::Json, &plan::full(&ruleset)).unwrap();
        send(&nft, Backend::Json, &tx).unwrap_or_else(|e| panic!("{case}: json: {e:#}"));
        send(&Nft::in_netns(&ns.name), Backend::Netlink, &tx)
            .unwrap_or_else(|e| panic!("{case}: netlink: {e:#}"));
        let over_netlink = without_set_comments(&read_json(&ns, &changed));
        let over_json = without_set_comments(&read_json(&json_ns, &changed));
        if over_netlink != over_json || over_json != without_set_comments(&changed) {
            failures.push(format!(
                "{case}: partial transaction of {} ops: netlink and JSON differ\n{}",
                tx.len(),
                diff(
                    &render::to_nft_text(&over_netlink),
                    &render::to_nft_text(&over_json)
                )
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_refused_op_changes_nothing_and_is_named() {
    require_root!();
    let ruleset = fixtures::compile_case("session-affinity");
    let ns = Netns::new("nlrefuse");
    send_netlink(&ns, &plan::full(&ruleset)).unwrap();
    let before = ns.ok(&["nft", "list", "ruleset"]);
    let table = TableRef {
        family: IpFamily::V4,
        name: "nftproxy".into(),
    };
    let present = ruleset.tables[&IpFamily::V4].sets["cluster-ips"]
        .elements
        .keys()
        .next()
        .unwrap()
        .clone();
    let absent = vec![Value::Addr("172.30.99.99".parse().unwrap())];
    let tx = Transaction {
        ops: vec![
            Op::AddTable(table.clone()),
            Op::DeleteElements {
                table: table.clone(),
                set: "cluster-ips".into(),
                keys: vec![present, absent],
            },
            Op::FlushChain {
                table: table.clone(),
                chain: "services".into(),
            },
        ],
    };
    let e = send_netlink(&ns, &tx).unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        msg,
        "delete element ip nftproxy cluster-ips { 172.30.99.99 }: No such file or directory",
    );
    assert!(matches!(e, NetlinkError::Refused { index: 1, .. }) && e.is_not_found());
    assert_eq!(ns.ok(&["nft", "list", "ruleset"]), before);
    // Through apply's sender the error says that nothing changed.
    let e = send(&Nft::in_netns(&ns.name), Backend::Netlink, &tx).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("nothing was changed") && msg.contains("cluster-ips { 172.30.99.99 }"),
        "{msg}"
    );
}

/// Splits a buffer of netlink messages.
fn split(buf: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut o = 0;
    while o + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap()) as usize;
        out.push(buf[o..o + len].to_vec());
        o += len.div_ceil(4) * 4;
    }
    out
}

/// The bytes nft sends with `sendmsg` for `script`, from strace's hex dump of fd 3.
fn nft_batch(ns: &Netns, script: &str) -> Vec<u8> {
    let path = std::env::temp_dir().join(format!("{}.strace", ns.name));
    let path_s = path.to_string_lossy().into_owned();
    let out = ns.run_stdin(
        &[
            "strace",
            "-f",
            "-xx",
            "-s",
            "0",
            "-e",
            "trace=sendmsg",
            "-e",
            "write=3",
            "-o",
            &path_s,
            "nft",
            "-f",
            "-",
        ],
        Some(script),
    );
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    for line in text.lines() {
        let l = line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
        if l.starts_with("sendmsg(") {
            bufs.push(Vec::new());
            continue;
        }
        if let (Some(buf), Some(rest)) = (bufs.last_mut(), line.strip_prefix(" | ")) {
            if rest.len() >= 55 {
                for h in rest[7..55].split_whitespace() {
                    buf.push(u8::from_str_radix(h, 16).unwrap());
                }
            }
        }
    }
    // The batch is the largest sendmsg (nft also sends its cache queries).
    bufs.into_iter().max_by_key(Vec::len).unwrap_or_default()
}

/// The first two attributes (table and set name) of a message's attributes.
fn first_two_attrs(attrs: &[u8]) -> Vec<u8> {
    let mut o = 0;
    for _ in 0..2 {
        if o + 4 > attrs.len() {
            break;
        }
        let len = u16::from_ne_bytes([attrs[o], attrs[o + 1]]) as usize;
        o += len.div_ceil(4) * 4;
    }
    attrs[..o.min(attrs.len())].to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn batches_are_the_bytes_nft_sends() {
    require_root!();
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: needs strace");
        return;
    }
    let mut failures = Vec::new();
    for case in fixtures::cases() {
        let ruleset = fixtures::compile_case(&case);
        let tx = plan::full(&ruleset);
        let ns = Netns::new("nlbytes");
        let theirs = split(&nft_batch(&ns, &tx.to_string()));
        let batch = netlink::to_netlink(&tx, BatchOptions { seq: 0, ack: false });
        let ours = split(&batch.bytes);
        // nft sends the elements of an interval set created in the same batch right after the
        // set; otherwise the order is the transaction's. Compare without sequence numbers, in
        // any order, and name the messages only one side has.
        let strip = |m: &Vec<u8>| {
            let mut m = m.clone();
            m[8..12].fill(0);
            m
        };
        let mut theirs_n: Vec<Vec<u8>> = theirs.iter().map(strip).collect();
        let mut ours_n: Vec<(Vec<u8>, String)> = ours
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let what = batch
                    .messages
                    .get(i.wrapping_sub(1))
                    .map(|m| format!("{} ({})", tx.ops[m.op], m.what))
                    .unwrap_or_else(|| "batch begin/end".into());
                (strip(m), what)
            })
            .collect();
        theirs_n.sort();
        ours_n.sort();
        let only_ours: Vec<&(Vec<u8>, String)> = ours_n
            .iter()
            .filter(|(m, _)| theirs_n.binary_search(m).is_err())
            .collect();
        let only_theirs: Vec<&Vec<u8>> = theirs_n
            .iter()
            .filter(|m| ours_n.binary_search_by(|(o, _)| o.cmp(m)).is_err())
            .collect();
        for (m, what) in only_ours.iter().take(3) {
            failures.push(format!("{case}: only ours: {what}\n  {}", hex(m)));
        }
        // nft sends the elements of an interval set created in the batch twice: with the set
        // (with a leading zero interval end) and again for the `add element` command.
        let set_name = |m: &[u8]| {
            let ty = u16::from_ne_bytes([m[4], m[5]]);
            (ty == 0x0a0c).then(|| m[20..].to_vec())
        };
        let our_elem_sets: Vec<Vec<u8>> = ours
            .iter()
            .filter_map(|m| set_name(m).map(|attrs| first_two_attrs(&attrs)))
            .collect();
        let only_theirs: Vec<&Vec<u8>> = only_theirs
            .into_iter()
            .filter(|m| match set_name(m) {
                Some(attrs) => !our_elem_sets.contains(&first_two_attrs(&attrs)),
                None => true,
            })
            .collect();
        let duplicates = theirs.len() - ours.len().min(theirs.len());
        for m in only_theirs.iter().take(3) {
            failures.push(format!("{case}: only nft's:\n  {}", hex(m)));
        }
        if only_theirs.is_empty() && only_ours.is_empty() && duplicates > 0 {
            // Only nft's repeated element messages.
        } else if theirs.len() != ours.len() {
            failures.push(format!(
                "{case}: nft sent {} messages, we {}",
                theirs.len(),
                ours.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn netlink_read_back_equals_json_read_back() {
    require_root!();
    let mut failures = Vec::new();
    for case in fixtures::cases() {
        let ruleset = fixtures::compile_case(&case);
        let ns = Netns::new("nlread");
        send_netlink(&ns, &plan::full(&ruleset)).unwrap();
        let table = ruleset.tables.values().next().unwrap().name.clone();
        // Session state the packet path would add: not configuration, in neither read-back.
        if ruleset.tables[&IpFamily::V4].sets.contains_key("aff-0") {
            ns.ok(&[
                "nft",
                "add",
                "element",
                "ip",
                &table,
                "aff-0",
                "{ 10.9.9.9 . 172.30.0.110 . tcp . 80 }",
            ]);
        }
        let nft = Nft::in_netns(&ns.name);
        let json = read_current(&nft, &table).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        let netlink =
            read_current_netlink(&nft, &table).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        if json != netlink || netlink != ruleset {
            failures.push(format!(
                "{case}: read-backs differ\n{}",
                diff(&render::to_nft_text(&netlink), &render::to_nft_text(&json))
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn foreign_rules_fail_netlink_read_back_loudly() {
    require_root!();
    let ruleset = fixtures::compile_case("clusterip-protocols");
    let ns = Netns::new("nlforeign");
    send_netlink(&ns, &plan::full(&ruleset)).unwrap();
    ns.ok(&[
        "nft", "add", "rule", "ip", "nftproxy", "services", "counter",
    ]);
    let e = read_current_netlink(&Nft::in_netns(&ns.name), "nftproxy").unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("in chain ip nftproxy services is not representable: expression counter"),
        "{msg}"
    );
}
