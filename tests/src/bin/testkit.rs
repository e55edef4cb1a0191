//! `lanmesh-testkit`: a tiny TCP transfer tool and UDP NAT probe for the end-to-end tests.
//!
//! ```text
//! lanmesh-testkit recv --listen IP:PORT [--timeout SECS]
//!     accepts one connection, reads it to EOF, prints `<bytes> <sha256hex>`
//! lanmesh-testkit send --to IP:PORT --bytes N [--seed S] [--rate-mbps R] [--seconds T]
//!                      [--timeout SECS]
//!     sends N deterministic pseudo-random bytes, prints `<bytes> <sha256hex>`; with
//!     --rate-mbps no faster than R megabits (10^6 bits) per second on average, so that a
//!     transfer lasts a known time (the connection stays busy all along); with --seconds it
//!     stops early after T seconds (the line then shows what was sent, and stderr `sent B
//!     bytes in S s`, for throughput)
//!
//! lanmesh-testkit udp-echo --listen IP:PORT [--listen IP:PORT]... [--timeout SECS]
//!     a STUN-like UDP server on every --listen address. It answers
//!       `probe`          with `seen SRC` (SRC = the sender's address as it arrived),
//!                        from the socket the request came in on;
//!       `probe alt`      the same, and `alt SRC` from every *other* --listen socket (another
//!                        port and/or address of this host: tests NAT filtering);
//!       `knock IP:PORT`  by sending `knock` to IP:PORT from the socket it came in on
//!                        (an unsolicited packet from exactly this address).
//!     Prints one line per request to stdout.
//! lanmesh-testkit udp-probe --bind IP:PORT --to IP:PORT [--to IP:PORT]... [--alt]
//!                           [--linger-ms MS] [--timeout SECS]
//!     from ONE socket, sends `probe` (`probe alt` with --alt) to each --to in turn,
//!     retrying every 300 ms for up to 2 s, and prints `mapped TO SEEN` (SEEN = the address
//!     the server saw: the NAT mapping for that destination) or `mapped TO none`. Every other
//!     datagram that arrives (alt replies, unsolicited packets) is printed as `from SRC TEXT`.
//!     After the last target it keeps listening --linger-ms (default 1000), then prints `done`.
//! lanmesh-testkit udp-send --to IP:PORT [--bind IP:PORT] [--count N] [--text TEXT]
//!                          [--hex HEX]... [--recv-ms MS]
//!     sends N (default 3) datagrams TEXT (default `hello`), 50 ms apart, prints `sent N`.
//!     With --hex (repeatable) each round sends every HEX payload (raw bytes) instead of
//!     TEXT, and prints `sent N datagrams B bytes`. With --recv-ms it then keeps the socket
//!     open MS milliseconds (it also listens while sending) and prints `reply SRC LEN` for
//!     every datagram that arrives, then `received N datagrams B bytes, largest L`.
//! ```
//!
//! Every command exits with status 2 after the timeout (default 60 s), whatever it is
//! doing, so a broken network never hangs a test. Errors go to stderr; stdout carries only
//! results.

use lanmesh_e2e::tool_opts::{fail, parse_addr, Opts};
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  lanmesh-testkit recv --listen IP:PORT [--timeout SECS]
  lanmesh-testkit send --to IP:PORT --bytes N [--seed S] [--rate-mbps R] [--seconds T] [--timeout SECS]
  lanmesh-testkit udp-echo --listen IP:PORT [--listen IP:PORT]... [--timeout SECS]
  lanmesh-testkit udp-probe --bind IP:PORT --to IP:PORT [--to IP:PORT]... [--alt] [--linger-ms MS] [--timeout SECS]
  lanmesh-testkit udp-send --to IP:PORT [--bind IP:PORT] [--count N] [--text TEXT] [--hex HEX]... [--recv-ms MS] [--timeout SECS]";

/// Flags that take no value.
const SWITCHES: [&str; 1] = ["--alt"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        fail(USAGE);
    };
    let opts = Opts::parse(&args[1..], &SWITCHES, USAGE);
    let timeout = Duration::from_secs(opts.num("--timeout").unwrap_or(60));
    start_watchdog(timeout);
    let deadline = Instant::now() + timeout;
    let result = match cmd.as_str() {
        "recv" => recv(&opts, deadline).map(|(bytes, hash)| println!("{bytes} {hash}")),
        "send" => send(&opts, deadline).map(|(bytes, hash)| println!("{bytes} {hash}")),
        "udp-echo" => udp_echo(&opts),
        "udp-probe" => udp_probe(&opts),
        "udp-send" => udp_send(&opts),
        _ => fail(USAGE),
    };
    if let Err(e) = result {
        fail(&format!("lanmesh-testkit {cmd}: {e:#}"));
    }
}

/// Ends the whole process after `timeout`, even if a syscall is stuck.
fn start_watchdog(timeout: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        fail(&format!(
            "lanmesh-testkit: timed out after {}s",
            timeout.as_secs()
        ));
    });
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10))
}

fn recv(opts: &Opts, deadline: Instant) -> anyhow::Result<(u64, String)> {
    let listen = opts.addr("--listen");
    let listener = TcpListener::bind(listen)?;
    eprintln!("listening on {listen}");
    let (mut stream, from) = listener.accept()?;
    eprintln!("connection from {from}");
    stream.set_read_timeout(Some(left(deadline)))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

fn send(opts: &Opts, deadline: Instant) -> anyhow::Result<(u64, String)> {
    let to = opts.addr("--to");
    let bytes = opts
        .num("--bytes")
        .unwrap_or_else(|| fail(&format!("missing --bytes\n{USAGE}")));
    let seed = opts.num("--seed").unwrap_or(1);
    // Bytes per second, if paced.
    let rate = opts.num("--rate-mbps").map(|m| (m * 1_000_000 / 8).max(1));
    let stop_after = opts.num("--seconds").map(Duration::from_secs);

    // The receiver may still be starting: retry refused connections for a while.
    let retry_until = Instant::now() + Duration::from_secs(10).min(left(deadline));
    let mut stream = loop {
        match TcpStream::connect_timeout(&to, left(deadline).min(Duration::from_secs(10))) {
            Ok(s) => break s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < retry_until => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(anyhow::anyhow!("connect to {to}: {e}")),
        }
    };
    stream.set_write_timeout(Some(left(deadline)))?;

    let mut rng = SplitMix64(seed);
    let mut hasher = Sha256::new();
    // Paced transfers write smaller chunks, so that the pace is smooth.
    let chunk = if rate.is_some() { 16 * 1024 } else { 64 * 1024 };
    let mut buf = vec![0u8; chunk];
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < bytes {
        if stop_after.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        if let Some(rate) = rate {
            // Wait until the bytes sent so far are due.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            let word = rng.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        hasher.update(&buf[..n]);
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    stream.flush()?;
    stream.shutdown(Shutdown::Write)?;
    // Wait for the receiver to close its side, so that "send finished" means "received".
    stream.set_read_timeout(Some(left(deadline)))?;
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sent {sent} bytes in {secs:.3} s ({:.1} Mbit/s)",
        sent as f64 * 8.0 / secs.max(1e-9) / 1e6
    );
    Ok((sent, hex(&hasher.finalize())))
}

// ---------------------------------------------------------------------------------------
// UDP: NAT mapping and filtering probes
// ---------------------------------------------------------------------------------------

/// `udp-echo`: one thread per --listen socket; runs until the watchdog ends the process.
fn udp_echo(opts: &Opts) -> anyhow::Result<()> {
    let mut sockets = Vec::new();
    for addr in opts.addrs("--listen") {
        let s = UdpSocket::bind(addr).map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
        sockets.push(s);
    }
    let sockets = Arc::new(sockets);
    let mut threads = Vec::new();
    for i in 0..sockets.len() {
        let sockets = Arc::clone(&sockets);
        threads.push(std::thread::spawn(move || echo_loop(&sockets, i)));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn echo_loop(sockets: &[UdpSocket], i: usize) {
    let me = &sockets[i];
    let local = me.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut buf = [0u8; 1500];
    loop {
        let (n, src) = match me.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => fail(&format!("udp-echo {local}: {e}")),
        };
        let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        println!("{local} got {text:?} from {src}");
        if text == "probe" || text == "probe alt" {
            let _ = me.send_to(format!("seen {src}").as_bytes(), src);
            if text == "probe alt" {
                for (j, other) in sockets.iter().enumerate() {
                    if j != i {
                        let _ = other.send_to(format!("alt {src}").as_bytes(), src);
                    }
                }
            }
        } else if let Some(target) = text.strip_prefix("knock ") {
            match target.trim().parse::<SocketAddr>() {
                Ok(t) => {
                    let _ = me.send_to(b"knock", t);
                }
                Err(_) => eprintln!("udp-echo: bad knock target {target:?}"),
            }
        }
    }
}

/// `udp-probe`: see the module docs.
fn udp_probe(opts: &Opts) -> anyhow::Result<()> {
    let bind = opts.addr("--bind");
    let targets = opts.addrs("--to");
    let request: &[u8] = if opts.has("--alt") {
        b"probe alt"
    } else {
        b"probe"
    };
    let linger = Duration::from_millis(opts.num("--linger-ms").unwrap_or(1000));
    let sock = UdpSocket::bind(bind).map_err(|e| anyhow::anyhow!("bind {bind}: {e}"))?;
    let mut answered: Vec<SocketAddr> = Vec::new();
    let mut buf = [0u8; 1500];
    // Receives until `until`; returns the address `target` saw, if its answer came.
    let mut receive = |until: Instant, target: Option<SocketAddr>, answered: &mut Vec<_>| {
        loop {
            let now = Instant::now();
            if now >= until {
                return None;
            }
            sock.set_read_timeout(Some(until - now)).ok()?;
            let (n, src) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(_) => continue,
            };
            let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            if let Some(seen) = text.strip_prefix("seen ") {
                if answered.contains(&src) {
                    continue; // the answer to a retry
                }
                if Some(src) == target {
                    answered.push(src);
                    return Some(seen.to_string());
                }
            }
            println!("from {src} {text}");
        }
    };
    for to in targets {
        let mut seen = None;
        for _ in 0..7 {
            sock.send_to(request, to)
                .map_err(|e| anyhow::anyhow!("send to {to}: {e}"))?;
            seen = receive(
                Instant::now() + Duration::from_millis(300),
                Some(to),
                &mut answered,
            );
            if seen.is_some() {
                break;
            }
        }
        println!("mapped {to} {}", seen.as_deref().unwrap_or("none"));
    }
    receive(Instant::now() + linger, None, &mut answered);
    println!("done");
    Ok(())
}

/// `udp-send`: datagrams (text or raw bytes), optionally counting what comes back.
fn udp_send(opts: &Opts) -> anyhow::Result<()> {
    let to = opts.addr("--to");
    let bind = match opts.get("--bind") {
        Some(v) => parse_addr("--bind", v),
        None => "0.0.0.0:0".parse().expect("literal address"),
    };
    let count = opts.num("--count").unwrap_or(3);
    let hex_payloads: Vec<Vec<u8>> = opts
        .all("--hex")
        .into_iter()
        .map(|h| unhex(h).unwrap_or_else(|| fail(&format!("--hex: not hex: {h:?}"))))
        .collect();
    let recv_ms = opts.num("--recv-ms");
    let sock = UdpSocket::bind(bind).map_err(|e| anyhow::anyhow!("bind {bind}: {e}"))?;

    // Everything that comes back, counted by a listener thread from the start.
    let replies = Arc::new(std::sync::Mutex::new(Vec::<(SocketAddr, usize)>::new()));
    if recv_ms.is_some() {
        let sock = sock.try_clone()?;
        let replies = Arc::clone(&replies);
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, src)) => replies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((src, n)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ) => {}
                    // E.g. ICMP port unreachable reported on the socket: not a reply.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
    }

    let text = opts.get("--text").unwrap_or("hello");
    let payloads: Vec<&[u8]> = if hex_payloads.is_empty() {
        vec![text.as_bytes()]
    } else {
        hex_payloads.iter().map(Vec::as_slice).collect()
    };
    let mut datagrams = 0u64;
    let mut bytes = 0u64;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in &payloads {
            sock.send_to(p, to)
                .map_err(|e| anyhow::anyhow!("send to {to}: {e}"))?;
            datagrams += 1;
            bytes += p.len() as u64;
        }
    }
    if hex_payloads.is_empty() {
        println!("sent {count}");
    } else {
        println!("sent {datagrams} datagrams {bytes} bytes");
    }
    if let Some(ms) = recv_ms {
        std::thread::sleep(Duration::from_millis(ms));
        let replies = replies.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (src, n) in &replies {
            println!("reply {src} {n}");
        }
        let total: usize = replies.iter().map(|(_, n)| n).sum();
        let largest = replies.iter().map(|(_, n)| *n).max().unwrap_or(0);
        println!(
            "received {} datagrams {total} bytes, largest {largest}",
            replies.len()
        );
    }
    Ok(())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A small deterministic generator: the same seed always gives the same bytes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
