//! The conntrack sysctls kube-proxy sets from its `conntrack:` settings.
//!
//! * `net/netfilter/nf_conntrack_max` becomes `max(maxPerCore × CPUs, min)` when that is larger
//!   than the current value, and the conntrack hash table (`/sys/module/nf_conntrack/parameters/
//!   hashsize`) is raised to a quarter of it, as kube-proxy does. Both are global to the machine,
//!   so they are only touched from the initial network namespace (a proxy run inside a test
//!   namespace must not change the host).
//! * The TCP established / close-wait and UDP timeouts and `nf_conntrack_tcp_be_liberal` are per
//!   network namespace and are written when set and different.
//!
//! Failures are reported, not fatal (kube-proxy logs them and goes on): the proxy works without.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nftproxy_core::parse::ConntrackSettings;

/// One sysctl change, done or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Written: name, old value, new value.
    Set(String, String, String),
    /// Already at the wanted value (or above it, for the maximum).
    Kept(String),
    /// Left alone because it is global and we are not in the initial network namespace.
    NotOurs(String),
    /// Could not be read or written.
    Failed(String, String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Set(name, old, new) => write!(f, "{name}: {old} -> {new}"),
            Self::Kept(name) => write!(f, "{name}: already as wanted"),
            Self::NotOurs(name) => write!(
                f,
                "{name}: global to the machine, left alone outside the initial network namespace"
            ),
            Self::Failed(name, why) => write!(f, "{name}: {why}"),
        }
    }
}

/// Where the files are: `/proc/sys` and `/sys` (a test points them elsewhere).
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/proc/sys`.
    pub proc_sys: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
    /// Whether this process is in the initial network namespace.
    pub initial_netns: bool,
    /// CPUs, for `maxPerCore`.
    pub cpus: u32,
}

impl Roots {
    /// The real ones.
    pub fn system() -> Self {
        let ns = |p: &str| std::fs::read_link(p).ok();
        Self {
            proc_sys: PathBuf::from("/proc/sys"),
            sys: PathBuf::from("/sys"),
            initial_netns: ns("/proc/self/ns/net").is_some()
                && ns("/proc/self/ns/net") == ns("/proc/1/ns/net"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        }
    }
}

/// Applies `settings`; returns what happened to each sysctl it concerns.
pub fn apply(settings: &ConntrackSettings, roots: &Roots) -> Vec<Change> {
    let mut out = Vec::new();
    let netfilter = roots.proc_sys.join("net/netfilter");
    if settings.max_per_core > 0 {
        let max = settings
            .max_per_core
            .saturating_mul(roots.cpus)
            .max(settings.min);
        let name = "net/netfilter/nf_conntrack_max";
        if roots.initial_netns {
            out.push(raise(&netfilter.join("nf_conntrack_max"), name, max));
            let hash = roots.sys.join("module/nf_conntrack/parameters/hashsize");
            out.push(raise(&hash, "nf_conntrack hashsize", max / 4));
        } else {
            out.push(Change::NotOurs(name.to_owned()));
        }
    }
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs().max(1));
    for (file, value) in [
        (
            "nf_conntrack_tcp_timeout_established",
            secs(settings.tcp_established_timeout),
        ),
        (
            "nf_conntrack_tcp_timeout_close_wait",
            secs(settings.tcp_close_wait_timeout),
        ),
        // kube-proxy only ever turns it on.
        (
            "nf_conntrack_tcp_be_liberal",
            settings.tcp_be_liberal.then_some(1),
        ),
        ("nf_conntrack_udp_timeout", secs(settings.udp_timeout)),
        (
            "nf_conntrack_udp_timeout_stream",
            secs(settings.udp_stream_timeout),
        ),
    ] {
        if let Some(v) = value {
            out.push(set(
                &netfilter.join(file),
                &format!("net/netfilter/{file}"),
                v,
            ));
        }
    }
    out
}

fn read(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("holds {:?}, not a number", text.trim()))
}

fn write(path: &Path, name: &str, old: u64, new: u64) -> Change {
    match std::fs::write(path, format!("{new}\n")) {
        Ok(()) => Change::Set(name.to_owned(), old.to_string(), new.to_string()),
        Err(e) => Change::Failed(name.to_owned(), format!("cannot write {new}: {e}")),
    }
}

/// Writes `value` unless the current value is already at least that.
fn raise(path: &Path, name: &str, value: u32) -> Change {
    match read(path) {
        Ok(old) if old >= u64::from(value) => Change::Kept(name.to_owned()),
        Ok(old) => write(path, name, old, value.into()),
        Err(why) => Change::Failed(name.to_owned(), why),
    }
}

/// Writes `value` unless it is the current value.
fn set(path: &Path, name: &str, value: u64) -> Change {
    match read(path) {
        Ok(old) if old == value => Change::Kept(name.to_owned()),
        Ok(old) => write(path, name, old, value),
        Err(why) => Change::Failed(name.to_owned(), why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(initial_netns: bool) -> (tempdir::Dir, Roots) {
        let dir = tempdir::Dir::new();
        let nf = dir.0.join("proc/net/netfilter");
        std::fs::create_dir_all(&nf).unwrap();
        for (f, v) in [
            ("nf_conntrack_max", "65536"),
            ("nf_conntrack_tcp_timeout_established", "432000"),
            ("nf_conntrack_tcp_timeout_close_wait", "60"),
            ("nf_conntrack_tcp_be_liberal", "0"),
            ("nf_conntrack_udp_timeout", "30"),
        ] {
            std::fs::write(nf.join(f), format!("{v}\n")).unwrap();
        }
        let hash = dir.0.join("sys/module/nf_conntrack/parameters");
        std::fs::create_dir_all(&hash).unwrap();
        std::fs::write(hash.join("hashsize"), "262144\n").unwrap();
        let roots = Roots {
            proc_sys: dir.0.join("proc"),
            sys: dir.0.join("sys"),
            initial_netns,
            cpus: 8,
        };
        (dir, roots)
    }

    mod tempdir {
        /// A directory removed when dropped.
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "nftproxy-sysctl-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn value(roots: &Roots, rel: &str) -> String {
        std::fs::read_to_string(roots.proc_sys.join(rel))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn kube_proxy_defaults_in_the_initial_namespace() {
        let (_dir, roots) = tree(true);
        let changes = apply(&ConntrackSettings::default(), &roots);
        // 32768 × 8 CPUs = 262144 > min 131072 > current 65536.
        assert_eq!(value(&roots, "net/netfilter/nf_conntrack_max"), "262144");
        assert!(changes.contains(&Change::Kept("nf_conntrack hashsize".into())));
        assert_eq!(
            value(&roots, "net/netfilter/nf_conntrack_tcp_timeout_established"),
            "86400"
        );
        assert_eq!(
            value(&roots, "net/netfilter/nf_conntrack_tcp_timeout_close_wait"),
            "3600"
        );
        // Not asked for: left alone.
        assert_eq!(
            value(&roots, "net/netfilter/nf_conntrack_tcp_be_liberal"),
            "0"
        );
        assert_eq!(
            value(&roots, "net/netfilter/nf_conntrack_udp_timeout"),
            "30"
        );
        // Again: nothing to do.
        let again = apply(&ConntrackSettings::default(), &roots);
        assert!(
            again.iter().all(|c| matches!(c, Change::Kept(_))),
            "{again:?}"
        );
    }

    #[test]
    fn global_settings_are_left_alone_in_another_namespace() {
        let (_dir, roots) = tree(false);
        let settings = ConntrackSettings {
            tcp_be_liberal: true,
            udp_timeout: Some(Duration::from_secs(45)),
            udp_stream_timeout: Some(Duration::from_secs(120)),
            ..ConntrackSettings::default()
        };
        let changes = apply(&settings, &roots);
        assert_eq!(value(&roots, "net/netfilter/nf_conntrack_max"), "65536");
        assert!(changes.contains(&Change::NotOurs("net/netfilter/nf_conntrack_max".into())));
        assert_eq!(
            value(&roots, "net/netfilter/nf_conntrack_tcp_be_liberal"),
            "1"
        );
        assert_eq!(
            value(&roots, "net/netfilter/nf_conntrack_udp_timeout"),
            "45"
        );
        // A file that does not exist is reported, not fatal.
        assert!(changes.iter().any(|c| matches!(
            c,
            Change::Failed(name, why) if name.ends_with("udp_timeout_stream") && why.starts_with("cannot read")
        )));
    }

    #[test]
    fn a_lower_maximum_never_lowers_the_current_one() {
        let (_dir, roots) = tree(true);
        let settings = ConntrackSettings {
            max_per_core: 1,
            min: 1000,
            ..ConntrackSettings::default()
        };
        apply(&settings, &roots);
        assert_eq!(value(&roots, "net/netfilter/nf_conntrack_max"), "65536");
    }
}
