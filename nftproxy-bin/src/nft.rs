//! Running `nft`: the libnftables JSON API through `nft -j -f -`, or the text API through `nft -f -`.

use std::io::Write;
use std::process::{Command, Stdio};

/// How transactions are sent to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// libnftables JSON (`nft -j -f -`).
    Json,
    /// nft script (`nft -f -`).
    Text,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
        }
    }
}

/// A failed nft invocation, classified as knftables does.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started.
    #[error("cannot run {bin}: {source} (is the nftables package installed?)")]
    Spawn {
        /// The binary.
        bin: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `nft` ran and failed; nothing was changed (a batch is one transaction).
    #[error("nft {args} failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What nft printed.
        stderr: String,
    },
}

impl NftError {
    fn stderr(&self) -> &str {
        match self {
            Self::Failed { stderr, .. } => stderr,
            Self::Spawn { .. } => "",
        }
    }
    /// The object did not exist.
    pub fn is_not_found(&self) -> bool {
        self.stderr().contains("No such file or directory")
    }
    /// The object already existed.
    #[allow(dead_code)]
    pub fn is_exists(&self) -> bool {
        self.stderr().contains("File exists")
    }
    /// The kernel or nft does not support something in the request.
    #[allow(dead_code)]
    pub fn is_unsupported(&self) -> bool {
        let s = self.stderr();
        s.contains("Operation not supported")
            || s.contains("not supported")
            || s.contains("syntax error")
            || s.contains("Invalid")
    }
}

/// The `nft` command.
#[derive(Debug, Clone)]
pub struct Nft {
    bin: String,
    /// Run inside this network namespace (`ip netns exec NAME ...`), else in the current one.
    netns: Option<String>,
}

impl Nft {
    /// `nft` from `$NFTPROXY_NFT` or the PATH.
    pub fn from_env() -> Self {
        Self {
            bin: std::env::var("NFTPROXY_NFT").unwrap_or_else(|_| "nft".to_owned()),
            netns: None,
        }
    }

    /// `nft` run inside a named network namespace (for tests and benchmarks).
    pub fn in_netns(name: &str) -> Self {
        Self {
            netns: Some(name.to_owned()),
            ..Self::from_env()
        }
    }

    /// A command for `program` in the same network namespace as nft.
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Runs nft with arguments and optional standard input; returns standard output.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let mut child = self
            .command(&self.bin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as nft's own failure below.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| NftError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NftError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Sends a batch: JSON (`-j -f -`) or text (`-f -`); with `check`, only validates it.
    pub fn batch(&self, backend: Backend, input: &str, check: bool) -> Result<(), NftError> {
        let mut args = Vec::new();
        if backend == Backend::Json {
            args.push("-j");
        }
        if check {
            args.push("--check");
        }
        args.extend(["-f", "-"]);
        self.run(&args, Some(input)).map(drop)
    }

    /// The installed version, e.g. `1.0.6`.
    pub fn version(&self) -> Result<String, NftError> {
        let out = self.run(&["--version"], None)?;
        // "nftables v1.0.6 (Lester Gooch #5)"
        Ok(out
            .split_whitespace()
            .find_map(|w| w.strip_prefix('v'))
            .unwrap_or(out.trim())
            .to_owned())
    }
}
