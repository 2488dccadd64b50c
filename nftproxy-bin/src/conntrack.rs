//! Deleting stale UDP conntrack entries (which ones: [`nftproxy_core::conntrack`]).

use nftproxy_core::conntrack::StaleFlow;

use crate::nft::Nft;

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

/// Deletes the entries (in nft's network namespace); returns how many filters were run. A missing `conntrack` tool is a warning.
pub fn flush(nft: &Nft, flows: &[StaleFlow]) -> usize {
    let mut n = 0;
    for f in flows {
        match nft.command("conntrack").args(args(f)).output() {
            Ok(_) => n += 1, // exit status 1 only means "0 flow entries deleted"
            Err(e) => {
                tracing::warn!("cannot run conntrack to delete stale UDP entries: {e}");
                break;
            }
        }
    }
    n
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
}
