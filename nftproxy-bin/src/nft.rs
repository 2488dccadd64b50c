//! Running `nft`: the libnftables JSON API through `nft -j -f -`, or the text API through `nft -f -`.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long an nft or conntrack call may take before it is killed (`$NFTPROXY_NFT_TIMEOUT`,
/// seconds; default 300, enough for a full load of 100k services).
pub fn call_timeout() -> Duration {
    std::env::var("NFTPROXY_NFT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::from_secs(300))
}

/// Why a child process gave no result.
#[derive(Debug)]
pub enum CallError {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It ran longer than allowed and was killed.
    Timeout(Duration),
}

/// Runs `cmd` with optional standard input, killing it after `timeout`. Standard output and error
/// are collected on their own threads, so a large output or input never blocks.
pub fn output_with_timeout(
    mut cmd: Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, CallError> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(CallError::Spawn)?;
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let in_pipe = child.stdin.take();
    // Scoped threads borrow `stdin` (a full load's batch is ~100 MB: never copied).
    std::thread::scope(|scope| {
        let out = scope.spawn(|| read_all(out_pipe));
        let err = scope.spawn(|| read_all(err_pipe));
        if let (Some(input), Some(mut pipe)) = (stdin, in_pipe) {
            scope.spawn(move || {
                // A write error shows up as the child's own failure.
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait().map_err(CallError::Spawn)? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    // Killing closes its pipes, which ends the reader and writer threads.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CallError::Timeout(timeout));
                }
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    })
}

/// Everything a child wrote to one pipe; a read error leaves what was read (the exit status
/// tells the rest).
fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    buf
}

/// How transactions are sent to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// nf_tables netlink batches sent directly to the kernel (no nft process).
    Netlink,
    /// libnftables JSON (`nft -j -f -`).
    Json,
    /// nft script (`nft -f -`).
    Text,
}

impl Backend {
    /// The `--backend` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netlink => "netlink",
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
    /// `nft` was killed by a signal (crashed).
    #[error("nft {args} crashed with signal {signal}: {stderr}")]
    Crashed {
        /// The arguments.
        args: String,
        /// The signal number.
        signal: i32,
        /// What nft printed before.
        stderr: String,
    },
    /// `nft` did not finish in time and was killed.
    #[error("nft {args} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The arguments.
        args: String,
        /// The limit.
        timeout: Duration,
    },
}

impl NftError {
    fn stderr(&self) -> &str {
        match self {
            Self::Failed { stderr, .. } | Self::Crashed { stderr, .. } => stderr,
            Self::Spawn { .. } | Self::Timeout { .. } => "",
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

    /// The named network namespace nft runs in, if not the current one.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
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

    /// Runs nft with arguments and optional standard input; returns standard output. The call
    /// is killed after [`call_timeout`].
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let mut cmd = self.command(&self.bin);
        cmd.args(args);
        let out = output_with_timeout(cmd, stdin, call_timeout()).map_err(|e| match e {
            CallError::Spawn(source) => NftError::Spawn {
                bin: self.bin.clone(),
                source,
            },
            CallError::Timeout(timeout) => NftError::Timeout {
                args: args.join(" "),
                timeout,
            },
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else if let Some(signal) = out.status.signal() {
            Err(NftError::Crashed {
                args: args.join(" "),
                signal,
                stderr,
            })
        } else {
            Err(NftError::Failed {
                args: args.join(" "),
                stderr,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_child_is_killed_after_the_timeout() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let start = Instant::now();
        let r = output_with_timeout(cmd, None, Duration::from_millis(200));
        assert!(matches!(r, Err(CallError::Timeout(_))));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn large_input_and_output_do_not_block() {
        let input = "x".repeat(4 << 20);
        let out = output_with_timeout(Command::new("cat"), Some(&input), Duration::from_secs(20))
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), input.len());
    }

    #[test]
    fn crashes_and_timeouts_are_named() {
        let nft = Nft {
            bin: "sh".into(),
            netns: None,
        };
        let e = nft.run(&["-c", "kill -SEGV $$"], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("nft -c kill -SEGV $$ crashed with signal 11"),
            "{e}"
        );
    }
}
