//! Deleting stale UDP conntrack entries (which ones: [`nftproxy_core::conntrack`]).

use nftproxy_core::conntrack::StaleFlow;

use crate::nft::{call_timeout, output_with_timeout, CallError, Nft};

/// `conntrack -D` arguments for one filter.
pub fn args(f: &StaleFlow) -> Vec<String> {
    let mut a: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
    if f.ipv6 {
        a.extend(["-f".into(), "ipv6".into()]);
    }
    if let Some(d) = f.orig_dst {
        a.extend(["--orig-dst".into(), d.to_string()]);
    }
    a.extend(["--orig-port-dst".into(), f.port.to_string()]);
    if let Some(t) = f.dnat_to {
        a.extend(["--dst-nat".into(), t.to_string()]);
    }
    a
}

/// What a [`flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// `conntrack -D` filters run.
    pub filters: usize,
    /// Entries deleted, as conntrack reported them.
    pub deleted: u64,
}

/// Deletes the entries (in nft's network namespace), one `conntrack -D` call per filter, each
/// killed after the nft call timeout. Exit status 1 with "0 flow entries" only means nothing
/// matched; any other failure is an error naming the filter.
pub fn flush(nft: &Nft, flows: &[StaleFlow]) -> Result<Flushed, String> {
    let mut done = Flushed::default();
    for f in flows {
        let mut cmd = nft.command("conntrack");
        cmd.args(args(f));
        let out = output_with_timeout(cmd, None, call_timeout()).map_err(|e| match e {
            CallError::Spawn(e) => {
                format!("cannot run conntrack: {e} (is the conntrack package installed?)")
            }
            CallError::Timeout(t) => format!(
                "conntrack {} did not finish within {t:?}",
                args(f).join(" ")
            ),
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let nothing_matched = out.status.code() == Some(1) && stderr.contains("0 flow entries");
        if !out.status.success() && !nothing_matched {
            return Err(format!(
                "conntrack {} failed ({}): {}",
                args(f).join(" "),
                out.status,
                stderr.trim()
            ));
        }
        done.filters += 1;
        done.deleted += deleted_count(&stderr);
    }
    Ok(done)
}

/// The count in conntrack's "N flow entries have been deleted." line (0 if absent).
fn deleted_count(stderr: &str) -> u64 {
    stderr
        .split("): ")
        .nth(1)
        .unwrap_or(stderr)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_arguments() {
        let f = StaleFlow {
            ipv6: false,
            orig_dst: Some("172.30.0.10".parse().unwrap()),
            port: 53,
            dnat_to: Some("10.0.0.2".parse().unwrap()),
        };
        assert_eq!(
            args(&f).join(" "),
            "-D -p udp --orig-dst 172.30.0.10 --orig-port-dst 53 --dst-nat 10.0.0.2"
        );
        let np = StaleFlow {
            ipv6: true,
            orig_dst: None,
            port: 30053,
            dnat_to: None,
        };
        assert_eq!(
            args(&np).join(" "),
            "-D -p udp -f ipv6 --orig-port-dst 30053"
        );
    }

    #[test]
    fn deleted_entries_are_counted() {
        assert_eq!(
            deleted_count(
                "conntrack v1.4.7 (conntrack-tools): 12 flow entries have been deleted.\n"
            ),
            12
        );
        assert_eq!(deleted_count(""), 0);
    }
}
