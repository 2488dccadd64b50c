//! Talking nfnetlink to the kernel: one `sendmsg` per transaction batch, then the acknowledgements;
//! and dumps for the read-back.
//!
//! The batch bytes come from [`nftproxy_core::render::netlink`]; this is only the socket. A socket
//! belongs to the network namespace it was opened in, so for a named namespace (`ip netns`) it is
//! opened on a short-lived thread that first enters the namespace: the calling thread never
//! changes namespace.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr};
use nftproxy_core::plan::{Op, Transaction};
use nftproxy_core::render::netlink::{self as nl, sys, Ack, Batch, BatchOptions};

/// Why a batch or a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, configured or used.
    #[error("netlink socket: {what}: {source}")]
    Socket {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel refused an operation; the batch was not committed.
    #[error("{op}: {}", errno_text(*errno, message.as_deref()))]
    Refused {
        /// The refused operation as nft text (with the offending element, when known).
        op: String,
        /// Index of the op in the transaction.
        index: usize,
        /// The errno.
        errno: i32,
        /// The kernel's extended ACK message.
        message: Option<String>,
    },
    /// The kernel refused the batch as a whole (e.g. `Operation not permitted` without
    /// CAP_NET_ADMIN).
    #[error("batch refused: {}", errno_text(*errno, None))]
    BatchRefused {
        /// The errno.
        errno: i32,
    },
    /// Not every message was answered in time.
    #[error(
        "no answer from the kernel within {timeout:?} ({missing} of {total} messages unanswered)"
    )]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// Messages without answer.
        missing: usize,
        /// Messages sent.
        total: usize,
    },
    /// A dump answered with an error.
    #[error("{what}: {}", errno_text(*errno, None))]
    Dump {
        /// What was dumped.
        what: String,
        /// The errno.
        errno: i32,
    },
}

impl NetlinkError {
    fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { errno, .. }
            | Self::BatchRefused { errno }
            | Self::Dump { errno, .. } => Some(*errno),
            Self::Socket { source, .. } => source.raw_os_error(),
            Self::Timeout { .. } => None,
        }
    }
    /// The object did not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(2)
    }
    /// The object already existed.
    #[allow(dead_code)]
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(17)
    }
    /// The kernel does not support something in the request.
    #[allow(dead_code)]
    pub fn is_unsupported(&self) -> bool {
        matches!(self.errno(), Some(95) | Some(22))
    }
}

/// `No such file or directory`, as nft prints errno values (without "(os error N)").
fn errno_text(errno: i32, message: Option<&str>) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = match text.rfind(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    match message {
        Some(m) if !m.is_empty() => format!("{text} ({m})"),
        _ => text,
    }
}

fn sock_err(what: &str) -> impl FnOnce(io::Error) -> NetlinkError + '_ {
    move |source| NetlinkError::Socket {
        what: what.to_owned(),
        source,
    }
}

/// An nfnetlink socket in one network namespace.
pub struct NetlinkSocket {
    sock: Socket,
    /// Sequence number of the next request.
    seq: u32,
}

impl NetlinkSocket {
    /// Opens a socket in the current network namespace, or in the named one (`/run/netns/NAME`).
    pub fn open(netns: Option<&str>) -> Result<Self, NetlinkError> {
        let sock = match netns {
            None => Self::raw_socket()?,
            Some(name) => {
                let path = format!("/run/netns/{name}");
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let ns = std::fs::File::open(&path)
                            .map_err(sock_err(&format!("opening {path}")))?;
                        rustix::thread::move_into_link_name_space(
                            ns.as_fd(),
                            Some(rustix::thread::LinkNameSpaceType::Network),
                        )
                        .map_err(|e| NetlinkError::Socket {
                            what: format!("entering network namespace {name}"),
                            source: e.into(),
                        })?;
                        Self::raw_socket()
                    })
                    .join()
                    .unwrap_or_else(|_| {
                        Err(NetlinkError::Socket {
                            what: "namespace thread".into(),
                            source: io::Error::other("panicked"),
                        })
                    })
                })?
            }
        };
        // Sequence numbers start from the clock, as nft's do, so that answers to an earlier
        // socket's requests can never be mistaken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Self { sock, seq })
    }

    fn raw_socket() -> Result<Socket, NetlinkError> {
        let mut sock = Socket::new(sys::NETLINK_NETFILTER).map_err(sock_err("socket"))?;
        sock.bind_auto().map_err(sock_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(sock_err("connect"))?;
        // Errors name the offending attribute; acknowledgements do not echo our requests.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(sock)
    }

    fn set_timeout(&self, timeout: Duration) -> Result<(), NetlinkError> {
        let t = timeout.max(Duration::from_millis(1));
        rustix::net::sockopt::set_socket_timeout(
            self.sock.as_fd(),
            rustix::net::sockopt::Timeout::Recv,
            Some(t),
        )
        .map_err(|e| NetlinkError::Socket {
            what: "SO_RCVTIMEO".into(),
            source: e.into(),
        })
    }

    /// Receives one datagram (any number of messages); `None` on timeout.
    fn recv(&self, buf: &mut Vec<u8>) -> Result<Option<usize>, NetlinkError> {
        buf.clear();
        match self.sock.recv(buf, 0) {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
            Err(e) => Err(sock_err("recv")(e)),
        }
    }

    /// Sends a transaction as one batch and waits for every message's acknowledgement, or for
    /// the kernel's errors (then nothing was committed).
    pub fn transact(&mut self, tx: &Transaction, timeout: Duration) -> Result<(), NetlinkError> {
        let batch = nl::to_netlink(
            tx,
            BatchOptions {
                seq: self.seq,
                ack: true,
            },
        );
        self.seq = batch.end_seq.wrapping_add(1);
        self.send_batch(tx, &batch, timeout)
    }

    fn send_batch(
        &self,
        tx: &Transaction,
        batch: &Batch,
        timeout: Duration,
    ) -> Result<(), NetlinkError> {
        // The whole batch goes in one datagram: the send buffer must hold it (nft does the same).
        let want = batch.bytes.len() + 4096;
        if rustix::net::sockopt::set_socket_send_buffer_size_force(self.sock.as_fd(), want).is_err()
        {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(self.sock.as_fd(), want);
        }
        // Every message is acknowledged by its own small datagram (about 1 KiB of buffer
        // each): the receive buffer must hold them all, or acknowledgements are lost.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(
            self.sock.as_fd(),
            (batch.messages.len() * 2048).max(1 << 20),
        );
        let deadline = Instant::now() + timeout;
        self.sock
            .send(&batch.bytes, 0)
            .map_err(sock_err("sending the batch"))?;
        let mut pending: std::collections::BTreeSet<u32> =
            batch.messages.iter().map(|m| m.seq).collect();
        let total = pending.len();
        let mut errors: Vec<Ack> = Vec::new();
        let mut buf = Vec::with_capacity(1 << 16);
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.set_timeout(left)?;
            let Some(_) = self.recv(&mut buf)? else {
                break;
            };
            for msg in nl::split_messages(&buf) {
                let Some(ack) = nl::parse_ack(&msg) else {
                    continue;
                };
                if ack.seq == batch.begin_seq && ack.errno != 0 {
                    return Err(NetlinkError::BatchRefused { errno: ack.errno });
                }
                if pending.remove(&ack.seq) && ack.errno != 0 {
                    errors.push(ack);
                }
            }
            // After an error the kernel has answered everything it is going to.
            if !errors.is_empty() && self.drain(&mut buf, &mut pending, &mut errors)? {
                break;
            }
        }
        if let Some(first) = errors.into_iter().min_by_key(|a| a.seq) {
            return Err(refused(tx, batch, &first));
        }
        if !pending.is_empty() {
            return Err(NetlinkError::Timeout {
                timeout,
                missing: pending.len(),
                total,
            });
        }
        Ok(())
    }

    /// Reads what is already queued without waiting; true when nothing more is queued.
    fn drain(
        &self,
        buf: &mut Vec<u8>,
        pending: &mut std::collections::BTreeSet<u32>,
        errors: &mut Vec<Ack>,
    ) -> Result<bool, NetlinkError> {
        loop {
            buf.clear();
            match self.sock.recv(buf, libc_dontwait()) {
                Ok(_) => {
                    for msg in nl::split_messages(buf) {
                        if let Some(ack) = nl::parse_ack(&msg) {
                            if pending.remove(&ack.seq) && ack.errno != 0 {
                                errors.push(ack);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(sock_err("recv")(e)),
            }
        }
    }

    /// Sends one dump request (`NLM_F_DUMP`) of `msg_type` for `family` with the given
    /// attributes and returns the payload of every answer message (`nfgenmsg` and attributes).
    pub fn dump(
        &mut self,
        what: &str,
        msg_type: u16,
        family: u8,
        attrs: &[(u16, &str)],
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let request = nl::dump_request(msg_type, family, seq, attrs);
        let deadline = Instant::now() + timeout;
        self.sock
            .send(&request, 0)
            .map_err(sock_err("sending a dump request"))?;
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(1 << 20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NetlinkError::Timeout {
                    timeout,
                    missing: 1,
                    total: 1,
                });
            }
            self.set_timeout(left)?;
            if self.recv(&mut buf)?.is_none() {
                continue;
            }
            for msg in nl::split_messages(&buf) {
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    sys::NLMSG_DONE => return Ok(out),
                    sys::NLMSG_ERROR => {
                        let errno = nl::parse_ack(&msg).map_or(0, |a| a.errno);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkError::Dump {
                            what: what.to_owned(),
                            errno,
                        });
                    }
                    _ => out.push(msg.payload.to_vec()),
                }
            }
        }
    }
}

/// `MSG_DONTWAIT`.
fn libc_dontwait() -> i32 {
    0x40
}

/// The error for the first refused message: the op as nft text, narrowed to the offending
/// element when the kernel named it.
fn refused(tx: &Transaction, batch: &Batch, ack: &Ack) -> NetlinkError {
    let Some(m) = batch.message(ack.seq) else {
        return NetlinkError::BatchRefused { errno: ack.errno };
    };
    let op = &tx.ops[m.op];
    let element = ack.offset.and_then(|o| batch.element_at(ack.seq, o));
    let text = match (op, element) {
        (Op::AddElements { table, set, elems }, Some(k)) => Op::AddElements {
            table: table.clone(),
            set: set.clone(),
            elems: vec![elems[k].clone()],
        }
        .to_string(),
        (Op::DeleteElements { table, set, keys }, Some(k)) => Op::DeleteElements {
            table: table.clone(),
            set: set.clone(),
            keys: vec![keys[k].clone()],
        }
        .to_string(),
        _ => summarize(op),
    };
    NetlinkError::Refused {
        op: text,
        index: m.op,
        errno: ack.errno,
        message: ack.message.clone(),
    }
}

/// An op as nft text, with long element lists cut to their first elements.
fn summarize(op: &Op) -> String {
    const SHOWN: usize = 4;
    match op {
        Op::AddElements { table, set, elems } if elems.len() > SHOWN => format!(
            "{} (and {} more elements)",
            Op::AddElements {
                table: table.clone(),
                set: set.clone(),
                elems: elems[..SHOWN].to_vec(),
            },
            elems.len() - SHOWN
        ),
        Op::DeleteElements { table, set, keys } if keys.len() > SHOWN => format!(
            "{} (and {} more elements)",
            Op::DeleteElements {
                table: table.clone(),
                set: set.clone(),
                keys: keys[..SHOWN].to_vec(),
            },
            keys.len() - SHOWN
        ),
        op => op.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftproxy_core::plan::TableRef;
    use nftproxy_core::ruleset::Value;
    use nftproxy_core::snapshot::IpFamily;

    #[test]
    fn errno_values_read_as_nft_prints_them() {
        assert_eq!(errno_text(2, None), "No such file or directory");
        assert_eq!(errno_text(17, None), "File exists");
        assert_eq!(errno_text(1, None), "Operation not permitted");
        assert_eq!(
            errno_text(22, Some("bad key")),
            "Invalid argument (bad key)"
        );
    }

    #[test]
    fn long_element_ops_are_cut_in_errors() {
        let op = Op::DeleteElements {
            table: TableRef {
                family: IpFamily::V4,
                name: "t".into(),
            },
            set: "s".into(),
            keys: (1..=6u16).map(|p| vec![Value::Port(p)]).collect(),
        };
        assert_eq!(
            summarize(&op),
            "delete element ip t s { 1, 2, 3, 4 } (and 2 more elements)"
        );
    }
}
