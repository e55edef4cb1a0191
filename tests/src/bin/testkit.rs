//! `lanmesh-testkit`: a tiny TCP transfer tool for the end-to-end tests.
//!
//! ```text
//! lanmesh-testkit recv --listen IP:PORT [--timeout SECS]
//!     accepts one connection, reads it to EOF, prints `<bytes> <sha256hex>`
//! lanmesh-testkit send --to IP:PORT --bytes N [--seed S] [--timeout SECS]
//!     sends N deterministic pseudo-random bytes, prints `<bytes> <sha256hex>`
//! ```
//!
//! Both commands exit with status 2 after the timeout (default 60 s), whatever they are
//! doing, so a broken network never hangs a test. Errors go to stderr; stdout carries only
//! the result line.

use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::exit;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  lanmesh-testkit recv --listen IP:PORT [--timeout SECS]
  lanmesh-testkit send --to IP:PORT --bytes N [--seed S] [--timeout SECS]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        fail(USAGE);
    };
    let opts = Opts::parse(&args[1..]);
    let timeout = Duration::from_secs(opts.num("--timeout").unwrap_or(60));
    start_watchdog(timeout);
    let deadline = Instant::now() + timeout;
    let result = match cmd.as_str() {
        "recv" => recv(&opts, deadline),
        "send" => send(&opts, deadline),
        _ => fail(USAGE),
    };
    match result {
        Ok((bytes, hash)) => println!("{bytes} {hash}"),
        Err(e) => fail(&format!("lanmesh-testkit {cmd}: {e:#}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    exit(2);
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

struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if !flag.starts_with("--") {
                fail(&format!("unexpected argument {flag:?}\n{USAGE}"));
            }
            let Some(value) = it.next() else {
                fail(&format!("{flag} needs a value\n{USAGE}"));
            };
            out.push((flag.clone(), value.clone()));
        }
        Opts(out)
    }

    fn get(&self, flag: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, flag: &str) -> &str {
        self.get(flag)
            .unwrap_or_else(|| fail(&format!("missing {flag}\n{USAGE}")))
    }

    fn num(&self, flag: &str) -> Option<u64> {
        self.get(flag).map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{flag}: not a number: {v:?}")))
        })
    }

    fn addr(&self, flag: &str) -> SocketAddr {
        let v = self.required(flag);
        v.parse()
            .unwrap_or_else(|_| fail(&format!("{flag}: not an IP:PORT: {v:?}")))
    }
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
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
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
    Ok((sent, hex(&hasher.finalize())))
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
