//! `nftproxy-echo`: a tiny TCP/UDP server and client for the traffic tests.
//!
//! ```text
//! nftproxy-echo serve --name NAME [--tcp ADDR:PORT]... [--udp ADDR:PORT]... [--lifetime-ms N]
//! nftproxy-echo connect (--tcp|--udp) ADDR:PORT [--bind SRC] [--timeout-ms N] [--count N]
//!                       [--keep-going] [--hold-ms N]
//! ```
//!
//! The server answers every TCP connection, every line received on it and every UDP datagram with
//! `NAME <peer-ip>`: the peer address as the server sees it, so tests can tell a preserved client
//! address from a masqueraded one. It prints `ready` once all sockets are bound, and exits when its
//! standard input closes or its lifetime (default 120 s) ends, so it never outlives a test.
//!
//! The client prints one line per attempt: the reply, `refused`, `timeout`, `unreachable` or
//! `error: ...`, and exits 0. It stops at the first attempt that gets no answer (so a broken
//! ruleset fails a test in one timeout, not `count` of them) unless `--keep-going`. With
//! `--hold-ms` it keeps one TCP connection open, sends a line every 100 ms and prints every reply,
//! for testing that an established connection keeps working.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The longest a client waits for one connect or reply.
const MAX_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a client holds a connection open.
const MAX_HOLD: Duration = Duration::from_secs(10);
/// The most attempts one client makes.
const MAX_COUNT: u32 = 1000;
/// How often a holding client sends a line.
const HOLD_INTERVAL: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => parse_serve(&args[1..]).and_then(serve),
        Some("connect") => parse_connect(&args[1..]).map(connect),
        _ => Err("usage: nftproxy-echo serve|connect ... (see the source)".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nftproxy-echo: {e}");
            ExitCode::from(2)
        }
    }
}

/// Takes the value following a flag.
fn value<'a>(args: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a str, String> {
    args.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn parse_num<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: invalid number {text:?}"))
}

fn parse_addr(text: &str, flag: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{flag}: invalid ADDR:PORT {text:?}"))
}

// ---------------------------------------------------------------------------------------------
// serve

struct ServeArgs {
    name: String,
    tcp: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    lifetime: Duration,
}

fn parse_serve(args: &[String]) -> Result<ServeArgs, String> {
    let mut out = ServeArgs {
        name: String::new(),
        tcp: vec![],
        udp: vec![],
        lifetime: Duration::from_secs(120),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--name" => out.name = value(&mut it, flag)?.to_string(),
            "--tcp" => out.tcp.push(parse_addr(value(&mut it, flag)?, flag)?),
            "--udp" => out.udp.push(parse_addr(value(&mut it, flag)?, flag)?),
            "--lifetime-ms" => {
                out.lifetime = Duration::from_millis(parse_num(value(&mut it, flag)?, flag)?)
            }
            other => return Err(format!("serve: unknown argument {other:?}")),
        }
    }
    if out.name.is_empty() {
        return Err("serve: --name is required".into());
    }
    if out.tcp.is_empty() && out.udp.is_empty() {
        return Err("serve: give at least one --tcp or --udp address".into());
    }
    Ok(out)
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut tcp = Vec::new();
    for addr in &args.tcp {
        tcp.push(TcpListener::bind(addr).map_err(|e| format!("binding tcp {addr}: {e}"))?);
    }
    let mut udp = Vec::new();
    for addr in &args.udp {
        udp.push(UdpSocket::bind(addr).map_err(|e| format!("binding udp {addr}: {e}"))?);
    }
    for listener in tcp {
        let name = args.name.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                thread::spawn(move || serve_tcp(&name, stream));
            }
        });
    }
    for socket in udp {
        let name = args.name.clone();
        thread::spawn(move || serve_udp(&name, &socket));
    }
    println!("ready");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("writing stdout: {e}"))?;

    // Exit when the test that started us goes away (stdin closes) or the lifetime ends.
    let (done, wait) = std::sync::mpsc::channel::<()>();
    thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(args.lifetime);
    Ok(())
}

fn serve_tcp(name: &str, stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else { return };
    let reply = format!("{name} {}\n", peer.ip());
    // A client that stops talking is dropped after a while so threads do not pile up.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    if writer.write_all(reply.as_bytes()).is_err() {
        return;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if writer.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

fn serve_udp(name: &str, socket: &UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let reply = format!("{name} {}\n", peer.ip());
                let _ = socket.send_to(reply.as_bytes(), peer);
            }
            // ICMP errors for earlier replies surface here; keep serving.
            Err(_) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// connect

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

struct ConnectArgs {
    proto: Proto,
    target: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
    count: u32,
    hold: Option<Duration>,
    keep_going: bool,
}

fn parse_connect(args: &[String]) -> Result<ConnectArgs, String> {
    let mut target = None;
    let mut out = ConnectArgs {
        proto: Proto::Tcp,
        target: SocketAddr::from(([0, 0, 0, 0], 0)),
        bind: None,
        timeout: Duration::from_millis(1000),
        count: 1,
        hold: None,
        keep_going: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--tcp" | "--udp" => {
                out.proto = if flag == "--tcp" {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                target = Some(parse_addr(value(&mut it, flag)?, flag)?);
            }
            "--bind" => {
                let text = value(&mut it, flag)?;
                out.bind = Some(
                    text.parse()
                        .map_err(|_| format!("--bind: invalid address {text:?}"))?,
                );
            }
            "--timeout-ms" => {
                let ms: u64 = parse_num(value(&mut it, flag)?, flag)?;
                out.timeout = Duration::from_millis(ms.max(1)).min(MAX_TIMEOUT);
            }
            "--count" => {
                out.count = parse_num::<u32>(value(&mut it, flag)?, flag)?.clamp(1, MAX_COUNT)
            }
            "--hold-ms" => {
                let ms: u64 = parse_num(value(&mut it, flag)?, flag)?;
                out.hold = Some(Duration::from_millis(ms).min(MAX_HOLD));
            }
            "--keep-going" => out.keep_going = true,
            other => return Err(format!("connect: unknown argument {other:?}")),
        }
    }
    out.target = target.ok_or("connect: give --tcp ADDR:PORT or --udp ADDR:PORT")?;
    if out.hold.is_some() && out.proto != Proto::Tcp {
        return Err("connect: --hold-ms needs --tcp".into());
    }
    Ok(out)
}

fn connect(args: ConnectArgs) {
    let mut out = std::io::stdout().lock();
    if let Some(hold) = args.hold {
        hold_tcp(&args, hold, &mut out);
        return;
    }
    for _ in 0..args.count {
        let line = match args.proto {
            Proto::Tcp => once_tcp(&args),
            Proto::Udp => once_udp(&args),
        };
        let _ = writeln!(out, "{line}");
        if !args.keep_going && !is_answer(&line) {
            break;
        }
    }
}

/// True for a server's answer (`NAME PEER-IP`), false for `refused`, `timeout`, `error: ...`.
fn is_answer(line: &str) -> bool {
    line.contains(' ') && !line.starts_with("error:")
}

/// Describes a failed socket operation the way the tests match it.
fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable".into(),
        _ => format!("error: {e}"),
    }
}

fn tcp_stream(args: &ConnectArgs) -> std::io::Result<TcpStream> {
    let domain = if args.target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(src) = args.bind {
        socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(args.target), args.timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(args.timeout))?;
    stream.set_write_timeout(Some(args.timeout))?;
    Ok(stream)
}

/// Reads one reply line; an empty read is reported as the peer closing.
fn read_reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => "error: connection closed".into(),
        Ok(_) => line.trim_end().to_string(),
        Err(e) => match describe(&e).as_str() {
            "timeout" => "error: no reply".into(),
            other => other.to_string(),
        },
    }
}

fn once_tcp(args: &ConnectArgs) -> String {
    match tcp_stream(args) {
        Ok(stream) => {
            let mut reader = BufReader::new(stream);
            read_reply(&mut reader)
        }
        Err(e) => describe(&e),
    }
}

fn hold_tcp(args: &ConnectArgs, hold: Duration, out: &mut impl Write) {
    let stream = match tcp_stream(args) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "{}", describe(&e));
            return;
        }
    };
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    let start = Instant::now();
    let first = read_reply(&mut reader);
    let _ = writeln!(out, "{first}");
    let _ = out.flush();
    if !is_answer(&first) {
        return;
    }
    while start.elapsed() < hold {
        thread::sleep(HOLD_INTERVAL);
        if let Err(e) = writer.write_all(b"ping\n") {
            let _ = writeln!(out, "{}", describe(&e));
            return;
        }
        let line = read_reply(&mut reader);
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if !is_answer(&line) {
            return;
        }
    }
}

fn once_udp(args: &ConnectArgs) -> String {
    let result = (|| {
        let src = args.bind.unwrap_or(if args.target.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        });
        let socket = UdpSocket::bind(SocketAddr::new(src, 0))?;
        socket.connect(args.target)?;
        socket.set_read_timeout(Some(args.timeout))?;
        socket.send(b"ping\n")?;
        let mut buf = [0u8; 2048];
        let n = socket.recv(&mut buf)?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
    })();
    result.unwrap_or_else(|e| describe(&e))
}
