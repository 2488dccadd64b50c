//! `nftproxy`: render, trace, apply and clean up nftables rulesets for Kubernetes Services.

use std::process::ExitCode;

use std::net::IpAddr;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use nftproxy_core::snapshot::Protocol;
use nftproxy_core::trace;

mod input;

/// mimalloc instead of glibc's allocator: after a full load frees hundreds of thousands of
/// small allocations, glibc's next allocations consolidate them for 100+ ms (the first
/// one-endpoint sync after a full sync took 133 ms at 10k services; 0.55 ms with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use nftproxy_bin::{apply, nft, probe, run};

use input::InputArgs;

/// A Kubernetes Service proxy for nftables.
#[derive(Debug, Parser)]
#[command(name = "nftproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ruleset for a snapshot, as nft text or libnftables JSON.
    Render {
        #[command(flatten)]
        input: InputArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = RenderFormat::Nft)]
        format: RenderFormat,
        /// Compare with this golden file instead of printing: exit 0 when equal, else print a
        /// unified diff (hunks named by table and chain/set) and exit 1; 2 on errors.
        #[arg(long, value_name = "FILE")]
        check: Option<std::path::PathBuf>,
    },
    /// Program the kernel (current network namespace) with the ruleset for a snapshot; a second
    /// run sends only the difference.
    Apply {
        #[command(flatten)]
        input: InputArgs,
        /// How to program the kernel (default: netlink if it works, else JSON if the installed nft
        /// accepts our ruleset, else text).
        #[arg(long, value_enum)]
        backend: Option<nft::Backend>,
        /// Print the transaction instead of sending it.
        #[arg(long)]
        dry_run: bool,
        /// Apply even a snapshot without Services, or one that removes more than half of the
        /// service entry points the kernel holds (normally a truncated or wrong snapshot).
        #[arg(long)]
        allow_mass_delete: bool,
    },
    /// Remove everything nftproxy created (its own tables only).
    Cleanup {
        /// Table name (as `nftproxy.tableName` in the config).
        #[arg(long, default_value = "nftproxy")]
        table: String,
        /// How to program the kernel (default: JSON).
        #[arg(long, value_enum)]
        backend: Option<nft::Backend>,
    },
    /// Explain where a packet goes: evaluate the ruleset for one new connection.
    Trace {
        #[command(flatten)]
        input: InputArgs,
        /// Source address.
        #[arg(long)]
        src: IpAddr,
        /// Destination address.
        #[arg(long)]
        dst: IpAddr,
        /// Destination port.
        #[arg(long)]
        dport: u16,
        /// Protocol.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// The packet is sent by the node itself (output hook) instead of arriving on an interface.
        #[arg(long)]
        local: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TraceFormat::Text)]
        format: TraceFormat,
    },
    /// Show what the installed nft supports and which backend would be used.
    Probe,
    /// Run the node proxy: watch the API server and keep this node's rules in step (flags as
    /// kube-proxy's; flags override the --config file).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A KubeProxyConfiguration file (as kube-proxy's ConfigMap mounts it).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// kubeconfig to reach the API server (default: clientConnection.kubeconfig, else in-cluster,
    /// else $KUBECONFIG / ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The API server's URL (overrides the kubeconfig's).
    #[arg(long, value_name = "URL")]
    master: Option<String>,
    /// This node's name (the Node object, and endpoints' nodeName).
    #[arg(long, value_name = "NAME")]
    hostname_override: Option<String>,
    /// Cluster (pod) CIDRs, comma-separated (dual-stack: one per family).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    cluster_cidr: Vec<ipnet::IpNet>,
    /// CIDRs whose node addresses answer NodePorts, comma-separated (default: the node's
    /// primary IPs; 0.0.0.0/0 for every local address).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// Service CIDRs, comma-separated, for API servers without ServiceCIDR objects (before 1.33):
    /// traffic to an unallocated address inside is dropped.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    service_cidr: Vec<ipnet::IpNet>,
    /// Masquerade all traffic to service IPs.
    #[arg(long)]
    masquerade_all: bool,
    /// Health server address (healthzBindAddress).
    #[arg(long, value_name = "ADDR")]
    healthz_bind_address: Option<String>,
    /// Metrics server address (metricsBindAddress).
    #[arg(long, value_name = "ADDR")]
    metrics_bind_address: Option<String>,
    /// Least time between syncs, e.g. 1s (nftables.minSyncPeriod).
    #[arg(long, value_name = "DURATION")]
    min_sync_period: Option<String>,
    /// Retry interval after a failed sync, e.g. 30s (nftables.syncPeriod).
    #[arg(long, value_name = "DURATION")]
    sync_period: Option<String>,
    /// How to program the kernel (default: netlink if it works, else JSON if the installed nft
    /// accepts our ruleset, else text).
    #[arg(long, value_enum)]
    backend: Option<nft::Backend>,
    /// Take over from kube-proxy: once our rules are in place, delete kube-proxy's `ip` and
    /// `ip6 kube-proxy` tables (nftables mode).
    #[arg(long)]
    cleanup_kube_proxy: bool,
    /// Leave the conntrack sysctls alone (by default they are set from the config's `conntrack:`
    /// section after the first sync, as kube-proxy does).
    #[arg(long)]
    no_conntrack_sysctls: bool,
    /// Log verbosity as kube-proxy's -v: 0-2 info, 3-4 debug, 5+ trace (NFTPROXY_LOG overrides).
    #[arg(short = 'v', long = "v", value_name = "N", default_value_t = 0)]
    verbosity: u8,
}

impl RunArgs {
    fn options(self) -> Result<run::RunOptions> {
        use anyhow::Context;
        use nftproxy_core::parse::{parse_daemon_config, parse_duration, DaemonConfig};
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                parse_daemon_config(&text)
                    .with_context(|| format!("invalid config {}", path.display()))?
            }
            None => DaemonConfig::default(),
        };
        if let Some(name) = self.hostname_override {
            config.proxy.node_name = name.trim().to_ascii_lowercase();
        }
        if !self.cluster_cidr.is_empty() {
            config.proxy.cluster_cidrs = self.cluster_cidr.iter().map(|c| c.trunc()).collect();
        }
        if !self.nodeport_addresses.is_empty() {
            if self.nodeport_addresses.iter().any(|a| a == "primary") {
                anyhow::ensure!(
                    self.nodeport_addresses.len() == 1,
                    "--nodeport-addresses: \"primary\" cannot be combined with cidrs"
                );
                config.proxy.node_port_addresses.clear();
            } else {
                config.proxy.node_port_addresses = self
                    .nodeport_addresses
                    .iter()
                    .map(|a| {
                        a.parse::<ipnet::IpNet>()
                            .map(|n| n.trunc())
                            .with_context(|| format!("--nodeport-addresses: {a:?} is not a cidr"))
                    })
                    .collect::<Result<_>>()?;
            }
        }
        if self.masquerade_all {
            config.proxy.masquerade_all = true;
        }
        config.proxy.service_cidrs = self.service_cidr.iter().map(|c| c.trunc()).collect();
        if let Some(a) = self.healthz_bind_address {
            config.healthz_bind_address = a;
        }
        if let Some(a) = self.metrics_bind_address {
            config.metrics_bind_address = a;
        }
        for (flag, value, slot) in [
            (
                "--min-sync-period",
                &self.min_sync_period,
                &mut config.timing.min_sync_period,
            ),
            (
                "--sync-period",
                &self.sync_period,
                &mut config.timing.sync_period,
            ),
        ] {
            if let Some(v) = value {
                *slot = parse_duration(v).with_context(|| {
                    format!("{flag}: {v:?} is not a valid duration (e.g. 30s, 1m0s, 500ms)")
                })?;
            }
        }
        Ok(run::RunOptions {
            config,
            kubeconfig: self.kubeconfig,
            master: self.master,
            backend: self.backend,
            cleanup_kube_proxy: self.cleanup_kube_proxy,
            conntrack_sysctls: !self.no_conntrack_sysctls,
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TraceFormat {
    /// For people: the chains and rules hit, then a sentence.
    Text,
    /// One JSON object: verdict, endpoints, masquerade, path.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RenderFormat {
    /// nft script (`nft -f`).
    Nft,
    /// libnftables JSON (`nft -j -f`).
    Json,
}

/// The command line that rewrites `golden`: this one without `--check FILE`, redirected to it.
fn update_command(golden: &std::path::Path) -> String {
    let mut args = Vec::new();
    let mut skip = false;
    for a in std::env::args() {
        if skip {
            skip = false;
        } else if a == "--check" {
            skip = true;
        } else if !a.starts_with("--check=") {
            args.push(a);
        }
    }
    format!("{} > {}", args.join(" "), golden.display())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Render {
            input,
            format,
            check,
        } => {
            let (_, _, ruleset) = input.compile()?;
            let out = match format {
                RenderFormat::Nft => nftproxy_core::render::to_nft_text(&ruleset),
                RenderFormat::Json => nftproxy_core::render::to_json(&ruleset),
            };
            let Some(golden) = check else {
                print!("{out}");
                return Ok(ExitCode::SUCCESS);
            };
            let update = update_command(&golden);
            let expected = std::fs::read_to_string(&golden).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {}: {e}; create it with: {update}",
                    golden.display()
                )
            })?;
            let name = golden.display().to_string();
            if let Some(d) = nftproxy_bin::check::diff(&expected, &out, &name, "rendered") {
                print!("{d}");
                eprintln!("{name} differs from the rendered ruleset; to update it: {update}");
                return Ok(ExitCode::from(1));
            }
        }
        Command::Apply {
            input,
            backend,
            dry_run,
            allow_mass_delete,
        } => {
            let (snapshot, config) = input.load()?;
            anyhow::ensure!(
                allow_mass_delete || !snapshot.services.is_empty(),
                "the snapshot {} has no Services: applying it would delete every Service's rules; \
                 pass --allow-mass-delete if that is intended",
                input.snapshot.display()
            );
            apply::apply(
                &snapshot,
                &config,
                &apply::ApplyOptions {
                    backend,
                    dry_run,
                    allow_mass_delete,
                },
            )?;
        }
        Command::Cleanup { table, backend } => {
            nftproxy_core::parse::validate_table_name(&table)?;
            apply::cleanup(&table, backend)?;
        }
        Command::Trace {
            input,
            src,
            dst,
            dport,
            proto,
            local,
            format,
        } => {
            let (snapshot, config, ruleset) = input.compile()?;
            let packet = trace::Packet {
                src,
                dst,
                dport,
                proto: match proto {
                    Proto::Tcp => Protocol::Tcp,
                    Proto::Udp => Protocol::Udp,
                    Proto::Sctp => Protocol::Sctp,
                },
                origin: if local {
                    trace::Origin::Local
                } else {
                    trace::Origin::Interface
                },
            };
            let local_addrs = nftproxy_core::compile::node_addresses(&snapshot, &config);
            let outcome = trace::trace(&ruleset, &packet, &trace::TraceEnv { local_addrs })?;
            match format {
                TraceFormat::Text => print!("{}", trace::format_text(&outcome, &packet)),
                TraceFormat::Json => println!("{}", trace::format_json(&outcome)),
            }
        }
        Command::Probe => {
            let caps = probe::probe(&nft::Nft::from_env())?;
            println!("nft {}", caps.version);
            for (name, r) in [
                ("netlink", &caps.netlink),
                ("json", &caps.json),
                ("text", &caps.text),
            ] {
                match r {
                    Ok(()) => println!("{name} backend: ok"),
                    Err(why) => println!("{name} backend: unavailable: {why}"),
                }
            }
            println!("default backend: {}", caps.choose(None)?.as_str());
        }
        Command::Run(args) => run::run(args.options()?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Run(a) if a.verbosity >= 5 => "trace",
        Command::Run(a) if a.verbosity >= 3 => "debug",
        _ => "info",
    };
    let timestamps = matches!(cli.command, Command::Run(_));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NFTPROXY_LOG").unwrap_or_else(|_| {
                // Our messages at the chosen level; libraries' only when they warn.
                // kube-rs's own messages repeat what our watch errors say: off unless asked.
                tracing_subscriber::EnvFilter::new(format!(
                    "warn,kube_client=off,kube_runtime=off,nftproxy={default_level},\
                     nftproxy_bin={default_level},nftproxy_core={default_level}"
                ))
            }),
        );
    if timestamps {
        builder.init();
    } else {
        builder.without_time().init();
    }
    // `render --check` exits as diff does: 0 equal, 1 different, 2 trouble.
    let trouble = if matches!(&cli.command, Command::Render { check: Some(_), .. }) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", escape_controls(&format!("{e:#}")));
            trouble
        }
    }
}

/// Escapes control characters (newlines, ESC, ...) so that object names in an error can neither
/// forge log lines nor reach the terminal as escape sequences.
fn escape_controls(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::escape_controls("service a\nerror: forged \u{1b}[31m"),
            "service a\\nerror: forged \\u{1b}[31m"
        );
    }
}
