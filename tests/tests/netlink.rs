//! The netlink renderer against nft itself, in throwaway network namespaces (root):
//!
//! * `batches_are_the_bytes_nft_sends`: for every fixture, the full transaction rendered by
//!   `render::netlink` equals, message by message, the batch nft 1.0.6 sends for the same
//!   transaction as nft text (captured with strace; skipped without strace).

use std::process::Command;

use nftproxy_core::plan;
use nftproxy_core::render::netlink::{self, BatchOptions};
use nftproxy_tests::fixtures;
use nftproxy_tests::netns::Netns;
use nftproxy_tests::require_root;

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
