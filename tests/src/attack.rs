//! The attacker's tooling for the adversary tests: helpers that drive `lanmesh-attack`
//! (`src/bin/attack.rs`) inside a [`Lab`], capture traffic with `tcpdump`, and count packets
//! *and bytes* with nftables; plus the pure parts the binary shares (IPv4/UDP packet
//! building with checksums, a pcap reader, hex, CIDR parsing, result-line parsers).
//!
//! ```text
//! lanmesh-attack spoof --src IP:PORT --dst IP:PORT PAYLOAD... [--count N] [--interval-ms MS]
//!     raw IPv4 datagrams with a forged source: prints `sent N datagrams B bytes`
//! lanmesh-attack flood --dst IP:PORT --pps RATE --seconds T [--src IP:PORT | --src-net CIDR]
//!                      [--bind IP:PORT] [--count N] PAYLOAD...
//!     a paced, bounded flood: prints `sent N datagrams B bytes in S s (R pps, M Mbit/s)`
//! lanmesh-attack listen --bind IP:PORT [--seconds T] [--count N] [--show N]
//!     a victim: prints `from SRC LEN HEX` for the first --show datagrams, then
//!     `received N datagrams B bytes from K sources`
//! lanmesh-attack pcap-extract --pcap FILE --out-dir DIR [--udp-port P]...
//!     every IPv4 UDP payload of a tcpdump capture as DIR/<index>-<sport>-<dport>-<len>.bin
//! ```
//!
//! The helpers:
//!
//! - [`spoof`] / [`spoof_with`]: forged datagrams, run to completion, returning [`Sent`];
//! - [`Flood`] (builder) with [`flood_spawn`], [`flood_wait`], [`flood_stop`]: floods from the
//!   real source, a forged one or random ones, of [`Payload`]s (replayed recordings, random
//!   bytes, "junk" templates);
//! - [`Listen`] (builder), [`listen_spawn`], [`listen_wait`], [`listen_stop`]: a counting
//!   victim, returning [`Received`] (with sources and payloads of the first datagrams);
//! - [`capture_start`] and [`Capture::stop_and_extract`]: `tcpdump` in a namespace, then the
//!   UDP payloads it saw (to replay them);
//! - [`count_bytes`], [`count_bytes_at`], [`bytes_counted`], [`reset_counter`]: nftables
//!   counters of packets *and* bytes;
//! - [`fast_switch`] (floods across the lab switch at full speed) and
//!   [`allow_spoofed_sources`] (no reverse-path filtering in a namespace).
//!
//! Only lab namespaces ever see this traffic: every helper takes the [`Lab`] and a namespace
//! of it, and every flood is bounded in time (at most 300 s) and optionally in count.
//!
//! Rates: over veth the sending CPU also runs the switch's bridge and the victim's receive
//! path, so that is what a flood's rate measures. On the 2-core reference machine one
//! flood reached about 200,000 datagrams/s of 450 bytes across the switch after
//! [`fast_switch`] (about 170,000 without it); random sources per datagram somewhat less.
//!
//! Forged sources and reverse-path filtering: a new namespace inherits `rp_filter` from the
//! machine's initial namespace. A forged source inside the receiver's own subnet (e.g. an
//! unused `203.0.113.x` on the lab switch) passes any `rp_filter` mode; for sources from
//! elsewhere call [`allow_spoofed_sources`] on the receiving namespace first.

use crate::{run, stderr, stdout, wait_until, workspace_root, Lab, Proc};
use anyhow::{bail, Context};
pub use lanmesh_common::net::set_socket_buffer;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The longest flood `lanmesh-attack` accepts, in seconds.
pub const MAX_FLOOD_SECS: u64 = 300;

/// IPv4 header (20, no options) plus UDP header (8): what nftables counts on top of the
/// UDP payload at the IP layer.
pub const IPV4_UDP_OVERHEAD: u64 = 28;

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

fn cargo() -> OsString {
    std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(OsString::from))
        .unwrap_or_else(|| "cargo".into())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| workspace_root().join(d))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `lanmesh-attack` binary: `$LANMESH_ATTACK` if set, else the binary beside the
/// running test executable (cargo builds it for this package's integration tests), else the
/// one in `$LANMESH_BIN_DIR`, else built once with `cargo build --release -p lanmesh-e2e
/// --bin lanmesh-attack`.
pub fn attack_bin() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("LANMESH_ATTACK").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        // Test executables live in target/<profile>/deps/, binaries in target/<profile>/.
        if let Ok(exe) = std::env::current_exe() {
            if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
                let p = profile_dir.join("lanmesh-attack");
                if p.is_file() {
                    return p;
                }
            }
        }
        if let Some(dir) = std::env::var_os("LANMESH_BIN_DIR").filter(|d| !d.is_empty()) {
            let p = PathBuf::from(dir).join("lanmesh-attack");
            if p.is_file() {
                return p;
            }
        }
        let status = Command::new(cargo())
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "lanmesh-e2e",
                "--bin",
                "lanmesh-attack",
            ])
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
        assert!(status.success(), "building lanmesh-attack failed: {status}");
        target_dir().join("release").join("lanmesh-attack")
    })
    .clone()
}

// ---------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------

/// What a `spoof` or `flood` sends. Several [`Payload::Bytes`]/[`Payload::File`] are sent
/// in turn (cycling); [`Payload::Random`] and [`Payload::Template`] stand alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// These exact bytes (`--hex`), e.g. a recorded valid packet to replay.
    Bytes(Vec<u8>),
    /// The contents of a file (`--file`).
    File(PathBuf),
    /// Random bytes, length uniform in `min..=max` (`--random MIN-MAX`).
    Random { min: usize, max: usize },
    /// `bytes` with the byte range `randomize` replaced by random bytes (`--template HEX
    /// --randomize FROM-TO`, TO exclusive). The datagram is `max(bytes.len(), randomize.end)`
    /// long: a range past the end extends the template, so `Template { bytes: valid 4-byte
    /// header, randomize: 4..120 }` is a "junk Hello" of 120 bytes.
    Template {
        bytes: Vec<u8>,
        randomize: Range<usize>,
    },
}

/// Total hex above which [`payload_args`] passes [`Payload::Bytes`] as files instead.
const MAX_HEX_ARGS: usize = 64 * 1024;

/// The command-line options for `payloads`. Large byte payloads go into files in a fresh
/// subdirectory of the lab dir (command lines have a size limit).
pub fn payload_args(lab: &Lab, payloads: &[Payload]) -> Vec<String> {
    let hex_total: usize = payloads
        .iter()
        .map(|p| match p {
            Payload::Bytes(b) => 2 * b.len(),
            _ => 0,
        })
        .sum();
    let dir = (hex_total > MAX_HEX_ARGS).then(|| {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        lab.subdir(&format!("attack-payloads-{n}"))
    });
    let mut args = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        match p {
            Payload::Bytes(b) => match &dir {
                Some(dir) => {
                    let path = dir.join(format!("{i:06}.bin"));
                    std::fs::write(&path, b)
                        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                    args.extend(["--file".to_string(), path.display().to_string()]);
                }
                None => args.extend(["--hex".to_string(), hex_encode(b)]),
            },
            Payload::File(path) => args.extend(["--file".to_string(), path.display().to_string()]),
            Payload::Random { min, max } => {
                args.extend(["--random".to_string(), format!("{min}-{max}")])
            }
            Payload::Template { bytes, randomize } => args.extend([
                "--template".to_string(),
                hex_encode(bytes),
                "--randomize".to_string(),
                format!("{}-{}", randomize.start, randomize.end),
            ]),
        }
    }
    args
}

// ---------------------------------------------------------------------------------------
// spoof
// ---------------------------------------------------------------------------------------

/// What `spoof` or `flood` printed: `sent N datagrams B bytes[ in S s ...]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sent {
    /// Datagrams the kernel accepted.
    pub datagrams: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
    /// How long it took (floods only).
    pub secs: Option<f64>,
}

impl Sent {
    /// Parses the result line (the first `sent ...` line of `text`).
    pub fn parse(text: &str) -> Option<Sent> {
        text.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 5 || w[0] != "sent" || w[2] != "datagrams" || w[4] != "bytes" {
                return None;
            }
            let secs = (w.len() >= 8 && w[5] == "in" && w[7] == "s")
                .then(|| w[6].parse().ok())
                .flatten();
            Some(Sent {
                datagrams: w[1].parse().ok()?,
                bytes: w[3].parse().ok()?,
                secs,
            })
        })
    }

    /// Datagrams per second (floods; 0 when the time is unknown or zero).
    pub fn pps(&self) -> f64 {
        match self.secs {
            Some(s) if s > 0.0 => self.datagrams as f64 / s,
            _ => 0.0,
        }
    }

    /// Payload megabits (10^6 bits) per second (floods; 0 when the time is unknown).
    pub fn mbps(&self) -> f64 {
        match self.secs {
            Some(s) if s > 0.0 => self.bytes as f64 * 8.0 / s / 1e6,
            _ => 0.0,
        }
    }
}

fn run_attack(lab: &Lab, ns: &str, args: &[String], timeout: Duration) -> String {
    let out = lab.exec_timeout(ns, attack_bin(), args, timeout);
    assert!(
        out.status.success(),
        "lanmesh-attack {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Sends each of `payloads` `count` times (rounds: every payload once per round, in
/// order) from namespace `ns` to `dst` as raw IPv4/UDP datagrams whose source is the forged
/// `src`. Panics if it fails; returns what was sent.
pub fn spoof<P: AsRef<[u8]>>(
    lab: &Lab,
    ns: &str,
    src: SocketAddr,
    dst: SocketAddr,
    payloads: &[P],
    count: u64,
) -> Sent {
    let payloads: Vec<Payload> = payloads
        .iter()
        .map(|p| Payload::Bytes(p.as_ref().to_vec()))
        .collect();
    spoof_with(lab, ns, src, dst, &payloads, count, 0)
}

/// [`spoof`] with any [`Payload`]s and `interval_ms` milliseconds between datagrams.
pub fn spoof_with(
    lab: &Lab,
    ns: &str,
    src: SocketAddr,
    dst: SocketAddr,
    payloads: &[Payload],
    count: u64,
    interval_ms: u64,
) -> Sent {
    let n = payloads.len().max(1) as u64;
    let secs = 30 + count.saturating_mul(n).saturating_mul(interval_ms) / 1000;
    let mut args = vec![
        "spoof".to_string(),
        "--src".to_string(),
        src.to_string(),
        "--dst".to_string(),
        dst.to_string(),
        "--count".to_string(),
        count.to_string(),
        "--interval-ms".to_string(),
        interval_ms.to_string(),
        "--timeout".to_string(),
        secs.to_string(),
    ];
    args.extend(payload_args(lab, payloads));
    let text = run_attack(lab, ns, &args, Duration::from_secs(secs + 5));
    Sent::parse(&text).unwrap_or_else(|| panic!("spoof printed no result: {text}"))
}

// ---------------------------------------------------------------------------------------
// flood
// ---------------------------------------------------------------------------------------

/// Where a flood's datagrams come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A normal UDP socket: the namespace's real address (optionally bound: [`Flood::bind`]).
    Real,
    /// Every datagram forged from this address (raw socket).
    Spoofed(SocketAddrV4),
    /// A random address of this network (`IP/LEN`) and a random port per datagram.
    RandomIn(String),
}

/// A bounded flood: `lanmesh-attack flood`. Build with [`Flood::new`] and the builder
/// methods, then [`Flood::run`] it or [`Flood::spawn`] it (see [`flood_spawn`]).
#[derive(Clone, Debug)]
pub struct Flood {
    pub dst: SocketAddr,
    /// Datagrams per second; 0 = as fast as possible.
    pub pps: u64,
    /// How long, at most [`MAX_FLOOD_SECS`].
    pub seconds: f64,
    pub source: Source,
    /// Local address of the socket with [`Source::Real`].
    pub bind: Option<SocketAddr>,
    /// Stop after this many datagrams.
    pub count: Option<u64>,
    /// Default: random 450-byte datagrams.
    pub payloads: Vec<Payload>,
}

impl Flood {
    /// `pps` datagrams per second to `dst` for `seconds`, from the real source address, of
    /// random 450-byte payloads unless [`Flood::payload`] says otherwise.
    pub fn new(dst: SocketAddr, pps: u64, seconds: f64) -> Flood {
        Flood {
            dst,
            pps,
            seconds,
            source: Source::Real,
            bind: None,
            count: None,
            payloads: Vec::new(),
        }
    }

    /// Forges every datagram's source as `src`.
    pub fn src(mut self, src: SocketAddrV4) -> Flood {
        self.source = Source::Spoofed(src);
        self
    }

    /// A random source address of `cidr` (e.g. `198.51.100.0/24`) and a random port per
    /// datagram.
    pub fn src_net(mut self, cidr: &str) -> Flood {
        self.source = Source::RandomIn(cidr.to_string());
        self
    }

    /// Binds the (real source) socket to `addr`.
    pub fn bind(mut self, addr: SocketAddr) -> Flood {
        self.bind = Some(addr);
        self
    }

    /// Stops after `n` datagrams.
    pub fn count(mut self, n: u64) -> Flood {
        self.count = Some(n);
        self
    }

    /// Adds a payload (see [`Payload`] for how several combine).
    pub fn payload(mut self, p: Payload) -> Flood {
        self.payloads.push(p);
        self
    }

    /// Adds recorded datagrams to replay in turn.
    pub fn replay<P: AsRef<[u8]>>(mut self, payloads: &[P]) -> Flood {
        self.payloads
            .extend(payloads.iter().map(|p| Payload::Bytes(p.as_ref().to_vec())));
        self
    }

    /// The command line (without the program).
    pub fn args(&self, lab: &Lab) -> Vec<String> {
        let mut args = vec![
            "flood".to_string(),
            "--dst".to_string(),
            self.dst.to_string(),
            "--pps".to_string(),
            self.pps.to_string(),
            "--seconds".to_string(),
            format!("{}", self.seconds),
            "--timeout".to_string(),
            (self.seconds.ceil() as u64 + 30).to_string(),
        ];
        match &self.source {
            Source::Real => {}
            Source::Spoofed(a) => args.extend(["--src".to_string(), a.to_string()]),
            Source::RandomIn(net) => args.extend(["--src-net".to_string(), net.clone()]),
        }
        if let Some(b) = self.bind {
            args.extend(["--bind".to_string(), b.to_string()]);
        }
        if let Some(n) = self.count {
            args.extend(["--count".to_string(), n.to_string()]);
        }
        if self.payloads.is_empty() {
            args.extend(payload_args(lab, &[Payload::Random { min: 450, max: 450 }]));
        } else {
            args.extend(payload_args(lab, &self.payloads));
        }
        args
    }

    /// Starts the flood in `ns` in the background.
    pub fn spawn(&self, lab: &Lab, ns: &str) -> Proc {
        lab.spawn(ns, attack_bin(), self.args(lab), "attack-flood")
    }

    /// Runs the flood in `ns` to the end; panics if it fails.
    pub fn run(&self, lab: &Lab, ns: &str) -> Sent {
        let p = self.spawn(lab, ns);
        flood_wait(lab, &p, Duration::from_secs_f64(self.seconds + 30.0))
    }
}

/// Starts `flood` in namespace `ns` in the background; [`flood_wait`] (or [`flood_stop`])
/// reads its result.
pub fn flood_spawn(lab: &Lab, ns: &str, flood: &Flood) -> Proc {
    flood.spawn(lab, ns)
}

/// Waits up to `timeout` for a flood to finish and returns what it sent; panics if it fails
/// or does not finish.
pub fn flood_wait(lab: &Lab, p: &Proc, timeout: Duration) -> Sent {
    let status = lab
        .wait_exit(p, timeout)
        .unwrap_or_else(|| panic!("flood {} did not finish", p.name()));
    let log = lab.log(p);
    assert!(status.success(), "flood failed ({status}): {log}");
    Sent::parse(&log).unwrap_or_else(|| panic!("flood printed no result: {log}"))
}

/// Stops a running flood early (SIGTERM: it stops sending and prints its result) and
/// returns what it sent.
pub fn flood_stop(lab: &Lab, p: &Proc) -> Sent {
    lab.signal(p, libc::SIGTERM);
    flood_wait(lab, p, Duration::from_secs(10))
}

// ---------------------------------------------------------------------------------------
// listen
// ---------------------------------------------------------------------------------------

/// What `listen` printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Received {
    pub datagrams: u64,
    /// UDP payload bytes.
    pub bytes: u64,
    /// Distinct source addresses (counted up to a million).
    pub sources: u64,
    /// The first `--show` datagrams: source as it arrived, and payload.
    pub shown: Vec<(SocketAddr, Vec<u8>)>,
}

impl Received {
    /// Parses `listen`'s output: `from SRC LEN HEX` lines and the `received ...` line.
    pub fn parse(text: &str) -> Option<Received> {
        let mut shown = Vec::new();
        let mut result = None;
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["from", src, len, rest @ ..] => {
                    let (Ok(src), Ok(len)) = (src.parse(), len.parse::<usize>()) else {
                        continue;
                    };
                    let data = match rest {
                        [] => Vec::new(),
                        [hex] => match hex_decode(hex) {
                            Ok(d) => d,
                            Err(_) => continue,
                        },
                        _ => continue,
                    };
                    if data.len() == len {
                        shown.push((src, data));
                    }
                }
                ["received", n, "datagrams", b, "bytes", rest @ ..] => {
                    let sources = match rest {
                        ["from", k, "sources"] => k.parse().ok(),
                        _ => Some(0),
                    };
                    result = Some((n.parse().ok(), b.parse().ok(), sources));
                }
                _ => {}
            }
        }
        let (Some(datagrams), Some(bytes), Some(sources)) = result? else {
            return None;
        };
        Some(Received {
            datagrams,
            bytes,
            sources,
            shown,
        })
    }

    /// Whether a shown datagram came from `src` with payload `payload`.
    pub fn got(&self, src: SocketAddr, payload: &[u8]) -> bool {
        self.shown.iter().any(|(s, p)| *s == src && p == payload)
    }
}

/// A `listen` victim to start: [`Listen::new`] then the builder methods, then
/// [`Listen::spawn`].
#[derive(Clone, Debug)]
pub struct Listen {
    pub bind: SocketAddr,
    /// How long it listens (default 30 s).
    pub seconds: f64,
    /// Stop after this many datagrams.
    pub count: Option<u64>,
    /// Print source and payload of the first N datagrams.
    pub show: usize,
}

impl Listen {
    pub fn new(bind: SocketAddr) -> Listen {
        Listen {
            bind,
            seconds: 30.0,
            count: None,
            show: 0,
        }
    }

    pub fn seconds(mut self, s: f64) -> Listen {
        self.seconds = s;
        self
    }

    pub fn count(mut self, n: u64) -> Listen {
        self.count = Some(n);
        self
    }

    pub fn show(mut self, n: usize) -> Listen {
        self.show = n;
        self
    }

    /// The command line (without the program).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "listen".to_string(),
            "--bind".to_string(),
            self.bind.to_string(),
            "--seconds".to_string(),
            format!("{}", self.seconds),
            "--show".to_string(),
            self.show.to_string(),
            "--timeout".to_string(),
            (self.seconds.ceil() as u64 + 30).to_string(),
        ];
        if let Some(n) = self.count {
            args.extend(["--count".to_string(), n.to_string()]);
        }
        args
    }

    /// Starts it in `ns` and waits until the socket is bound.
    pub fn spawn(&self, lab: &Lab, ns: &str) -> Proc {
        let p = lab.spawn(ns, attack_bin(), self.args(), "attack-listen");
        let port = self.bind.port();
        wait_until(
            Duration::from_secs(10),
            "lanmesh-attack listen to bind",
            || {
                assert!(lab.is_running(&p), "listen exited early: {}", lab.log(&p));
                lab.listening(ns, port)
            },
        );
        p
    }
}

/// Starts `listen --bind bind --seconds seconds` in `ns`, printing the first `show`
/// datagrams, and waits until it is bound. Read it with [`listen_wait`] or [`listen_stop`].
pub fn listen_spawn(lab: &Lab, ns: &str, bind: SocketAddr, seconds: f64, show: usize) -> Proc {
    Listen::new(bind).seconds(seconds).show(show).spawn(lab, ns)
}

/// Waits up to `timeout` for a `listen` to end (its time is up or it got its count) and
/// returns what it received; panics if it fails or does not end.
pub fn listen_wait(lab: &Lab, p: &Proc, timeout: Duration) -> Received {
    let status = lab
        .wait_exit(p, timeout)
        .unwrap_or_else(|| panic!("listen {} did not finish", p.name()));
    let log = lab.log(p);
    assert!(status.success(), "listen failed ({status}): {log}");
    Received::parse(&log).unwrap_or_else(|| panic!("listen printed no result: {log}"))
}

/// Ends a `listen` now (SIGTERM: it prints its result) and returns what it received.
pub fn listen_stop(lab: &Lab, p: &Proc) -> Received {
    lab.signal(p, libc::SIGTERM);
    listen_wait(lab, p, Duration::from_secs(10))
}

// ---------------------------------------------------------------------------------------
// tcpdump capture and pcap-extract
// ---------------------------------------------------------------------------------------

/// One UDP payload recovered from a capture by `pcap-extract`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// Its position among the extracted payloads (capture order).
    pub index: usize,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

/// A running `tcpdump -w` in a lab namespace: [`capture_start`].
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

/// Starts `tcpdump -i IFACE -n -U --immediate-mode -B 16384 -Z root -w FILE FILTER` in
/// namespace `ns` (`iface` e.g. `"any"` or `"eth0"`; `filter` a pcap filter expression such
/// as `"udp port 3478"`, or empty for everything) and waits until it captures. The file is
/// in the lab dir. Needs the `tcpdump` package.
pub fn capture_start(lab: &Lab, ns: &str, iface: &str, filter: &str) -> Capture {
    let dir = lab.subdir("captures");
    let mut n = 0;
    let file = loop {
        let f = dir.join(format!("{}-{iface}-{n}.pcap", short(ns)));
        if !f.exists() {
            break f;
        }
        n += 1;
    };
    // Reserve the name before tcpdump creates it.
    std::fs::write(&file, b"").unwrap_or_else(|e| panic!("cannot create {}: {e}", file.display()));
    let mut args: Vec<String> = [
        "-i",
        iface,
        "-n",
        "-U",
        "--immediate-mode",
        "-B",
        "16384",
        "-Z",
        "root",
        "-w",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(file.display().to_string());
    if !filter.trim().is_empty() {
        args.push(filter.to_string());
    }
    let proc = lab.spawn(ns, "tcpdump", &args, &format!("tcpdump-{iface}"));
    wait_until(
        Duration::from_secs(10),
        "tcpdump to start capturing",
        || {
            assert!(
                lab.is_running(&proc),
                "tcpdump exited: {} (is the tcpdump package installed?)",
                lab.log(&proc)
            );
            lab.log(&proc).contains("listening on")
        },
    );
    Capture { proc, file }
}

fn short(ns: &str) -> &str {
    ns.rsplit('-').next().unwrap_or(ns)
}

impl Capture {
    /// The pcap file being written.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The tcpdump process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Stops tcpdump (after 300 ms for the last packets to be written; SIGTERM by PID
    /// through the lab) and returns the pcap file. Prints tcpdump's summary (captured /
    /// dropped by kernel) to stderr.
    pub fn stop(&self, lab: &Lab) -> PathBuf {
        std::thread::sleep(Duration::from_millis(300));
        lab.kill(&self.proc);
        let log = lab.log(&self.proc);
        for l in log.lines().filter(|l| l.contains("packets")) {
            eprintln!("tcpdump ({}): {l}", self.proc.name());
        }
        self.file.clone()
    }

    /// [`Capture::stop`], then `lanmesh-attack pcap-extract` on the file: every IPv4 UDP
    /// payload to or from one of `ports` (all UDP payloads if `ports` is empty), in capture
    /// order, with its ports.
    pub fn stop_and_extract_udp(&self, lab: &Lab, ports: &[u16]) -> Vec<Extracted> {
        let file = self.stop(lab);
        let out = file.with_extension("payloads");
        pcap_extract(&file, &out, ports)
    }

    /// [`Capture::stop_and_extract_udp`], just the payloads.
    pub fn stop_and_extract(&self, lab: &Lab, ports: &[u16]) -> Vec<Vec<u8>> {
        self.stop_and_extract_udp(lab, ports)
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }
}

/// Runs `lanmesh-attack pcap-extract` (no namespace needed) on `pcap` into `out_dir`
/// (created; emptied of earlier `.bin` files) and reads the payloads back in order.
pub fn pcap_extract(pcap: &Path, out_dir: &Path, ports: &[u16]) -> Vec<Extracted> {
    if out_dir.is_dir() {
        for e in std::fs::read_dir(out_dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "bin") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut args = vec![
        "pcap-extract".to_string(),
        "--pcap".to_string(),
        pcap.display().to_string(),
        "--out-dir".to_string(),
        out_dir.display().to_string(),
    ];
    for p in ports {
        args.extend(["--udp-port".to_string(), p.to_string()]);
    }
    let out = run(attack_bin(), &args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "pcap-extract failed ({}): {}",
        out.status,
        stderr(&out)
    );
    let n: usize = stdout(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pcap-extract printed no result: {}", stdout(&out)));
    let got = read_extracted(out_dir).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(got.len(), n, "pcap-extract said {n} payloads");
    got
}

/// Reads the `<index>-<srcport>-<dstport>-<len>.bin` files of a `pcap-extract` output dir,
/// sorted by index.
pub fn read_extracted(dir: &Path) -> anyhow::Result<Vec<Extracted>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((index, src_port, dst_port, len)) = parse_extracted_name(name) else {
            continue;
        };
        let payload = std::fs::read(&path).with_context(|| format!("reading {name}"))?;
        if payload.len() != len {
            bail!("{name}: {} bytes, name says {len}", payload.len());
        }
        out.push(Extracted {
            index,
            src_port,
            dst_port,
            payload,
        });
    }
    out.sort_by_key(|e| e.index);
    Ok(out)
}

/// The file name `pcap-extract` gives payload number `index`.
pub fn extracted_name(index: usize, src_port: u16, dst_port: u16, len: usize) -> String {
    format!("{index:06}-{src_port}-{dst_port}-{len}.bin")
}

/// `(index, src_port, dst_port, len)` from an [`extracted_name`].
pub fn parse_extracted_name(name: &str) -> Option<(usize, u16, u16, usize)> {
    let stem = name.strip_suffix(".bin")?;
    let mut it = stem.split('-');
    let r = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    it.next().is_none().then_some(r)
}

// ---------------------------------------------------------------------------------------
// nftables packet and byte counters
// ---------------------------------------------------------------------------------------

/// The nftables hook a counter sits on (a base chain of priority -300 in table `ip
/// lanmesh_attack`, before conntrack and NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Everything arriving on any interface (also what a router forwards).
    Prerouting,
    /// What arrives for the namespace itself.
    Input,
    /// What a router forwards.
    Forward,
    /// What the namespace itself sends.
    Output,
    /// Everything leaving.
    Postrouting,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// Packets and bytes an nftables counter saw. Bytes are IP packet lengths: for an IPv4 UDP
/// datagram without options, payload + [`IPV4_UDP_OVERHEAD`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub packets: u64,
    pub bytes: u64,
}

fn nft(lab: &Lab, ns: &str, cmd: &str) -> String {
    let out = lab.exec(ns, "nft", [cmd]);
    assert!(
        out.status.success(),
        "nft {cmd:?} in {ns} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Starts counting packets and bytes arriving for namespace `ns` itself (input hook) that
/// match the nftables expression `expr` (e.g. `udp dport 3478`, or empty for all), in a
/// counter `name` (letters, digits, `_`). Read it with [`bytes_counted`]. Note that
/// [`Lab::set_nat`] flushes a router's whole ruleset, counters included.
pub fn count_bytes(lab: &Lab, ns: &str, name: &str, expr: &str) {
    count_bytes_at(lab, ns, Hook::Input, name, expr)
}

/// [`count_bytes`] at any [`Hook`].
pub fn count_bytes_at(lab: &Lab, ns: &str, hook: Hook, name: &str, expr: &str) {
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "bad counter name {name:?}"
    );
    let chain = hook.name();
    nft(lab, ns, "add table ip lanmesh_attack");
    nft(
        lab,
        ns,
        &format!(
            "add chain ip lanmesh_attack {chain} {{ type filter hook {chain} priority -300 ; policy accept ; }}"
        ),
    );
    nft(lab, ns, &format!("add counter ip lanmesh_attack {name}"));
    nft(
        lab,
        ns,
        &format!("add rule ip lanmesh_attack {chain} {expr} counter name {name}"),
    );
}

/// Packets and bytes the counter `name` of [`count_bytes`] has seen in `ns`.
pub fn bytes_counted(lab: &Lab, ns: &str, name: &str) -> Counted {
    let text = nft(lab, ns, &format!("list counter ip lanmesh_attack {name}"));
    parse_counter(&text).unwrap_or_else(|| panic!("no counter values in: {text}"))
}

/// Reads and zeroes the counter `name` of [`count_bytes`]; returns what it had.
pub fn reset_counter(lab: &Lab, ns: &str, name: &str) -> Counted {
    let text = nft(lab, ns, &format!("reset counter ip lanmesh_attack {name}"));
    parse_counter(&text).unwrap_or_else(|| panic!("no counter values in: {text}"))
}

/// Parses `... { packets 3 bytes 180 }` as nft prints a named counter.
pub fn parse_counter(text: &str) -> Option<Counted> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let value = |key: &str| {
        words
            .windows(2)
            .find(|w| w[0] == key)
            .and_then(|w| w[1].parse().ok())
    };
    Some(Counted {
        packets: value("packets")?,
        bytes: value("bytes")?,
    })
}

/// Turns reverse-path filtering off in `ns` (all, default and every interface), so that
/// datagrams with forged sources from networks `ns` has no route to are delivered.
pub fn allow_spoofed_sources(lab: &Lab, ns: &str) {
    let out = lab.exec(
        ns,
        "sh",
        [
            "-c",
            "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > \"$f\"; done",
        ],
    );
    assert!(
        out.status.success(),
        "cannot turn rp_filter off in {ns}: {}",
        stderr(&out)
    );
}

/// Stops the lab's switch namespace from passing bridged frames through IP netfilter.
/// Where the `br_netfilter` module is loaded (Docker loads it), every new namespace starts
/// with `net.bridge.bridge-nf-call-iptables=1`, so each frame crossing the switch takes an
/// IP route lookup and netfilter hooks. The switch has no rules, so this changes nothing but
/// speed: over veth the sender's CPU does all the work along the path, and a flood across
/// the switch gets about a quarter more datagrams through. No-op without the module.
pub fn fast_switch(lab: &Lab) {
    let out = lab.exec(
        lab.switch_ns(),
        "sh",
        [
            "-c",
            "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e \"$f\" ] && echo 0 > \"$f\"; done; true",
        ],
    );
    assert!(
        out.status.success(),
        "cannot turn bridge netfilter off in the switch: {}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------
// Pure parts: hex, CIDR, checksums, packets
// ---------------------------------------------------------------------------------------

/// Lowercase hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string (either case; `:` and `_` separators allowed, e.g. `4c:4d`).
pub fn hex_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b':' && c != b'_').collect();
    if !digits.len().is_multiple_of(2) {
        bail!("odd number of hex digits in {s:?}");
    }
    let val = |c: u8| -> anyhow::Result<u8> {
        Ok(match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => bail!("not a hex digit {:?} in {s:?}", c as char),
        })
    };
    digits
        .chunks_exact(2)
        .map(|p| Ok(val(p[0])? << 4 | val(p[1])?))
        .collect()
}

/// An IPv4 network `IP/LEN` (a bare IP is `/32`): the network address (host bits cleared)
/// and the prefix length.
pub fn parse_cidr(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (
            ip,
            len.parse::<u8>()
                .with_context(|| format!("bad prefix length in {s:?}"))?,
        ),
        None => (s, 32),
    };
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("bad IPv4 address in {s:?}"))?;
    if len > 32 {
        bail!("prefix length over 32 in {s:?}");
    }
    let mask = prefix_mask(len);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// The netmask of a prefix length, as a number.
pub fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// The 32-bit ones' complement sum of `data` as big-endian 16-bit words (an odd last byte
/// padded with zero), added to `acc`. Fold it with [`fold_checksum`].
pub fn sum16(data: &[u8], acc: u64) -> u64 {
    let mut acc = acc;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a [`sum16`] accumulator into the 16-bit Internet checksum (RFC 1071): the ones'
/// complement of the ones' complement sum.
pub fn fold_checksum(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data` (RFC 1071), e.g. of an IPv4 header.
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold_checksum(sum16(data, 0))
}

/// The UDP checksum of the UDP datagram `udp` (header with its checksum field zero, then
/// payload) from `src` to `dst` (RFC 768: over the IPv4 pseudo-header too). A computed 0
/// is sent as 0xffff.
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(udp.len() as u16).to_be_bytes());
    match fold_checksum(sum16(udp, sum16(&pseudo, 0))) {
        0 => 0xffff,
        c => c,
    }
}

/// The largest UDP payload of one IPv4 datagram.
pub const MAX_UDP_PAYLOAD: usize = 65535 - 28;

/// Writes the IPv4 header (20 bytes, don't-fragment, TTL 64, identification `id`) and the
/// UDP header, both with correct checksums, into `buf[..28]` for the payload that is
/// already in `buf[28..28 + payload_len]`. Returns the packet length.
pub fn write_ipv4_udp_headers(
    buf: &mut [u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload_len: usize,
    id: u16,
) -> usize {
    assert!(payload_len <= MAX_UDP_PAYLOAD, "UDP payload too large");
    let total = 28 + payload_len;
    let (ip, udp) = buf[..total].split_at_mut(20);
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = internet_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    udp[6..8].fill(0);
    let c = udp_checksum(*src.ip(), *dst.ip(), udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    total
}

/// A complete IPv4/UDP packet carrying `payload` (see [`write_ipv4_udp_headers`]).
pub fn ipv4_udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], id: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 28 + payload.len()];
    buf[28..].copy_from_slice(payload);
    write_ipv4_udp_headers(&mut buf, src, dst, payload.len(), id);
    buf
}

// ---------------------------------------------------------------------------------------
// Raw sockets (forged sources)
// ---------------------------------------------------------------------------------------

pub fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

/// A raw IPv4 socket for packets with our own IP header (IPPROTO_RAW implies IP_HDRINCL).
pub fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = check(
        unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        },
        "raw socket (needs root or CAP_NET_RAW)",
    )?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_socket_buffer(fd.as_raw_fd(), libc::SO_SNDBUF, 4 << 20);
    Ok(fd)
}

pub fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

pub fn from_sockaddr_in(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// Sends single UDP datagrams with forged IPv4 sources (raw socket).
pub struct RawSender {
    fd: OwnedFd,
    id: u16,
}

impl RawSender {
    pub fn new() -> io::Result<RawSender> {
        Ok(RawSender {
            fd: raw_socket()?,
            id: 1,
        })
    }

    /// Sends `payload` from `src` (forged) to `dst`.
    pub fn send(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
        self.id = self.id.wrapping_add(1);
        let packet = ipv4_udp_packet(src, dst, payload, self.id);
        let sa = sockaddr_in(dst);
        // SAFETY: sendto with a live buffer and a sockaddr_in of the right size.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        check(r as libc::c_int, "sendto")?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Pure parts: pcap
// ---------------------------------------------------------------------------------------

/// Reading classic pcap files (as `tcpdump -w` writes them; not pcapng).
pub mod pcap {
    use anyhow::bail;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// Ethernet.
    pub const LINKTYPE_ETHERNET: u32 = 1;
    /// Raw IP (no link header), as libpcap writes DLT_RAW.
    pub const LINKTYPE_RAW: u32 = 101;
    /// Linux's DLT_RAW value, found in some old files.
    pub const LINKTYPE_RAW_LINUX: u32 = 12;
    /// Linux "cooked" capture v1 (`tcpdump -i any`).
    pub const LINKTYPE_LINUX_SLL: u32 = 113;
    /// Raw IPv4.
    pub const LINKTYPE_IPV4: u32 = 228;
    /// Linux "cooked" capture v2 (`tcpdump -i any -y LINUX_SLL2`).
    pub const LINKTYPE_LINUX_SLL2: u32 = 276;

    /// One IPv4 UDP datagram found in a capture.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UdpPacket {
        pub src: SocketAddrV4,
        pub dst: SocketAddrV4,
        pub payload: Vec<u8>,
    }

    /// What [`udp_payloads`] found.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Summary {
        pub linktype: u32,
        /// Records in the file.
        pub packets: usize,
        /// Every complete, unfragmented IPv4 UDP datagram, in file order.
        pub udp: Vec<UdpPacket>,
        /// Records that are not IPv4 UDP (other protocols, IPv6, ARP, ...).
        pub other: usize,
        /// IPv4 fragments (not reassembled).
        pub fragments: usize,
        /// UDP datagrams cut short by the snap length, and a cut-off last record.
        pub truncated: usize,
    }

    struct Reader<'a> {
        data: &'a [u8],
        big_endian: bool,
    }

    impl Reader<'_> {
        fn u32_at(&self, off: usize) -> Option<u32> {
            let b: [u8; 4] = self.data.get(off..off + 4)?.try_into().ok()?;
            Some(if self.big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            })
        }
    }

    /// Parses a classic pcap file (microsecond or nanosecond, either byte order) of link
    /// type Ethernet (VLAN tags skipped), Linux cooked v1/v2, or raw IP, and returns its IPv4
    /// UDP datagrams.
    pub fn udp_payloads(data: &[u8]) -> anyhow::Result<Summary> {
        if data.len() < 24 {
            bail!("not a pcap file: {} bytes", data.len());
        }
        let magic = [data[0], data[1], data[2], data[3]];
        let big_endian = match magic {
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
            [0x0a, 0x0d, 0x0d, 0x0a] => bail!("pcapng files are not supported (use tcpdump -w)"),
            _ => bail!("not a pcap file (magic {:02x?})", magic),
        };
        let r = Reader { data, big_endian };
        // The upper bits may carry FCS information.
        let linktype = r.u32_at(20).unwrap_or(0) & 0x0fff_ffff;
        let link_header: fn(&[u8]) -> Option<&[u8]> = match linktype {
            LINKTYPE_ETHERNET => ethernet,
            LINKTYPE_LINUX_SLL => sll,
            LINKTYPE_LINUX_SLL2 => sll2,
            LINKTYPE_RAW | LINKTYPE_RAW_LINUX | LINKTYPE_IPV4 => raw,
            _ => bail!("unsupported pcap link type {linktype}"),
        };
        let mut s = Summary {
            linktype,
            ..Summary::default()
        };
        let mut off = 24;
        while off < data.len() {
            let (Some(incl), Some(orig)) = (r.u32_at(off + 8), r.u32_at(off + 12)) else {
                s.truncated += 1;
                break;
            };
            let start = off + 16;
            let Some(rec) = data.get(start..start + incl as usize) else {
                s.truncated += 1;
                break;
            };
            s.packets += 1;
            off = start + incl as usize;
            let Some(ip) = link_header(rec) else {
                s.other += 1;
                continue;
            };
            match ipv4_udp(ip, orig > incl) {
                Ip::Udp(p) => s.udp.push(p),
                Ip::Other => s.other += 1,
                Ip::Fragment => s.fragments += 1,
                Ip::Truncated => s.truncated += 1,
            }
        }
        Ok(s)
    }

    fn be16(b: &[u8], off: usize) -> Option<u16> {
        Some(u16::from_be_bytes(b.get(off..off + 2)?.try_into().ok()?))
    }

    const ETHERTYPE_IPV4: u16 = 0x0800;

    /// The IPv4 packet in an Ethernet frame (up to two VLAN tags).
    fn ethernet(f: &[u8]) -> Option<&[u8]> {
        let mut off = 12;
        loop {
            match be16(f, off)? {
                0x8100 | 0x88a8 if off < 20 => off += 4,
                ETHERTYPE_IPV4 => return f.get(off + 2..),
                _ => return None,
            }
        }
    }

    /// Linux cooked v1: 16-byte header, protocol at 14.
    fn sll(f: &[u8]) -> Option<&[u8]> {
        (be16(f, 14)? == ETHERTYPE_IPV4)
            .then(|| f.get(16..))
            .flatten()
    }

    /// Linux cooked v2: 20-byte header, protocol at 0.
    fn sll2(f: &[u8]) -> Option<&[u8]> {
        (be16(f, 0)? == ETHERTYPE_IPV4)
            .then(|| f.get(20..))
            .flatten()
    }

    fn raw(f: &[u8]) -> Option<&[u8]> {
        (f.first()? >> 4 == 4).then_some(f)
    }

    enum Ip {
        Udp(UdpPacket),
        Other,
        Fragment,
        Truncated,
    }

    /// The UDP datagram in an IPv4 packet. `cut`: the record was cut by the snap length.
    fn ipv4_udp(ip: &[u8], cut: bool) -> Ip {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return if cut { Ip::Truncated } else { Ip::Other };
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < 20 || ip[9] != 17 {
            return Ip::Other;
        }
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        if frag & 0x3fff != 0 {
            // More-fragments set, or a non-zero offset.
            return Ip::Fragment;
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if total < ihl + 8 {
            return Ip::Other;
        }
        if ip.len() < total {
            return Ip::Truncated;
        }
        let udp = &ip[ihl..total];
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len < 8 || udp_len > udp.len() {
            return Ip::Other;
        }
        let addr = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
        Ip::Udp(UdpPacket {
            src: SocketAddrV4::new(addr(12), u16::from_be_bytes([udp[0], udp[1]])),
            dst: SocketAddrV4::new(addr(16), u16::from_be_bytes([udp[2], udp[3]])),
            payload: udp[8..udp_len].to_vec(),
        })
    }
}

#[cfg(test)]
mod unit {
    use super::pcap::*;
    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_encode(&[0x4c, 0x4d, 0x01, 0x0c, 0xff]), "4c4d010cff");
        assert_eq!(hex_decode("4C4d:01_0c").unwrap(), vec![0x4c, 0x4d, 1, 0x0c]);
        assert_eq!(hex_decode("").unwrap(), Vec::<u8>::new());
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("198.51.100.77/24").unwrap(),
            ("198.51.100.0".parse().unwrap(), 24)
        );
        assert_eq!(
            parse_cidr("10.0.0.1").unwrap(),
            ("10.0.0.1".parse().unwrap(), 32)
        );
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().1, 0);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(32), u32::MAX);
    }

    #[test]
    fn checksums_match_rfc1071_and_a_real_packet() {
        // RFC 1071's example: the sum of 0001 f203 f4f5 f6f7 is ddf2 (checksum 220d).
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length is padded with a zero byte.
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
        // 10.0.0.1:40000 -> 10.0.0.2:5000, payload "hello": `tcpdump -vv` says "udp sum ok"
        // to this checksum (computed apart, in Python).
        let src: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let dst: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let mut udp = vec![0x9c, 0x40, 0x13, 0x88, 0x00, 0x0d, 0x00, 0x00];
        udp.extend_from_slice(b"hello");
        assert_eq!(udp_checksum(src, dst, &udp), HELLO_CSUM);
    }

    /// See `checksums_match_rfc1071_and_a_real_packet`.
    const HELLO_CSUM: u16 = 0xf836;

    #[test]
    fn built_packets_verify() {
        let src = v4("203.0.113.99:4444");
        let dst = v4("203.0.113.12:7000");
        for payload in [&b""[..], b"x", b"spoofed-1", &[0xffu8; 1001][..]] {
            let p = ipv4_udp_packet(src, dst, payload, 0x1234);
            assert_eq!(p.len(), 28 + payload.len());
            // A correct header sums to zero with its checksum in it.
            assert_eq!(internet_checksum(&p[..20]), 0);
            assert_eq!(fold_checksum(sum16(&p[20..], sum16(&pseudo(&p), 0))), 0);
            assert_eq!(&p[12..16], &[203, 0, 113, 99]);
            assert_eq!(u16::from_be_bytes([p[20], p[21]]), 4444);
            assert_eq!(u16::from_be_bytes([p[22], p[23]]), 7000);
            assert_eq!(&p[28..], payload);
        }
    }

    fn pseudo(p: &[u8]) -> [u8; 12] {
        let mut ps = [0u8; 12];
        ps[0..8].copy_from_slice(&p[12..20]);
        ps[9] = 17;
        ps[10..12].copy_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        ps
    }

    /// A classic little-endian microsecond pcap file of `linktype` with these records
    /// (`(captured bytes, original length)`).
    fn pcap_file(linktype: u32, records: &[(Vec<u8>, u32)]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&262144u32.to_le_bytes());
        f.extend_from_slice(&linktype.to_le_bytes());
        for (i, (rec, orig)) in records.iter().enumerate() {
            f.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(&(rec.len() as u32).to_le_bytes());
            f.extend_from_slice(&orig.to_le_bytes());
            f.extend_from_slice(rec);
        }
        f
    }

    fn eth(ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn sll_frame(body: &[u8]) -> Vec<u8> {
        let mut f = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn pcap_ethernet_and_cooked_captures() {
        let a = ipv4_udp_packet(v4("203.0.113.11:5555"), v4("203.0.113.12:7000"), b"one", 1);
        let b = ipv4_udp_packet(v4("203.0.113.12:7000"), v4("203.0.113.11:5555"), b"two!", 2);
        // A TCP segment, an ARP frame, a fragment and a datagram cut by the snap length.
        let mut tcp = a.clone();
        tcp[9] = 6;
        let mut frag = a.clone();
        frag[6] = 0x20; // more fragments
        let big = ipv4_udp_packet(v4("1.2.3.4:1"), v4("5.6.7.8:2"), &[7; 100], 3);

        let mut vlan = vec![0x00, 0x05, 0x08, 0x00];
        vlan.extend_from_slice(&b);
        let records = vec![
            (eth(0x0800, &a), (a.len() + 14) as u32),
            (eth(0x0806, &[0; 28]), 42),
            (eth(0x8100, &vlan), (b.len() + 18) as u32),
            (eth(0x0800, &tcp), (tcp.len() + 14) as u32),
            (eth(0x0800, &frag), (frag.len() + 14) as u32),
            (eth(0x0800, &big[..60]), (big.len() + 14) as u32),
        ];
        let s = udp_payloads(&pcap_file(LINKTYPE_ETHERNET, &records)).unwrap();
        assert_eq!(s.packets, 6);
        assert_eq!(s.other, 2);
        assert_eq!(s.fragments, 1);
        assert_eq!(s.truncated, 1);
        assert_eq!(s.udp.len(), 2);
        assert_eq!(s.udp[0].src, v4("203.0.113.11:5555"));
        assert_eq!(s.udp[0].dst, v4("203.0.113.12:7000"));
        assert_eq!(s.udp[0].payload, b"one");
        assert_eq!(s.udp[1].payload, b"two!");

        // The same in Linux cooked v1 and raw IP, and v2 with an IPv6 frame.
        let s = udp_payloads(&pcap_file(
            LINKTYPE_LINUX_SLL,
            &[(sll_frame(&a), 0), (sll_frame(&b), 0)],
        ))
        .unwrap();
        assert_eq!(s.udp.len(), 2);
        assert_eq!(s.udp[1].payload, b"two!");
        let s = udp_payloads(&pcap_file(LINKTYPE_RAW, &[(a.clone(), 0)])).unwrap();
        assert_eq!(s.udp[0].payload, b"one");
        let mut v2 = vec![
            0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
        ];
        v2.extend_from_slice(&b);
        let mut v6 = vec![0x86, 0xdd];
        v6.extend_from_slice(&[0; 58]);
        let s = udp_payloads(&pcap_file(LINKTYPE_LINUX_SLL2, &[(v6, 60), (v2, 0)])).unwrap();
        assert_eq!((s.other, s.udp.len()), (1, 1));
        assert_eq!(s.udp[0].src.port(), 7000);

        // A file cut off in the middle of its last record.
        let mut f = pcap_file(LINKTYPE_ETHERNET, &records[..1]);
        f.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let s = udp_payloads(&f).unwrap();
        assert_eq!((s.udp.len(), s.truncated), (1, 1));

        assert!(udp_payloads(b"nope").is_err());
        assert!(udp_payloads(&pcap_file(9, &[])).is_err());
    }

    /// Files tcpdump 4.99 wrote (x86: little-endian) in the e2e test `attack_tools`: the
    /// first two datagrams `spoof` forged from 203.0.113.99:4444 to 203.0.113.12:7000,
    /// captured with `-i any` (tcpdump 4.99 chooses Linux cooked v2), and the first one
    /// captured with `-i eth0` (Ethernet).
    #[test]
    fn pcap_real_tcpdump_files() {
        let s = udp_payloads(&hex_decode(REAL_ANY_CAPTURE).unwrap()).unwrap();
        assert_eq!(s.linktype, LINKTYPE_LINUX_SLL2);
        assert_eq!((s.packets, s.udp.len()), (2, 2));
        assert_eq!(s.udp[0].src, v4("203.0.113.99:4444"));
        assert_eq!(s.udp[0].dst, v4("203.0.113.12:7000"));
        assert_eq!(s.udp[0].payload, b"spoofed-1");
        assert_eq!(s.udp[1].payload, [0x4c, 0x4d, 0x01, 0x0c, 0, 1, 2, 3, 4]);
        let s = udp_payloads(&hex_decode(REAL_ETH_CAPTURE).unwrap()).unwrap();
        assert_eq!(s.linktype, LINKTYPE_ETHERNET);
        assert_eq!(s.udp.len(), 1);
        assert_eq!(s.udp[0].src, v4("203.0.113.99:4444"));
        assert_eq!(s.udp[0].payload, b"spoofed-1");
        // What we built is byte for byte what was captured.
        let ip = &hex_decode(REAL_ETH_CAPTURE).unwrap()[24 + 16 + 14..];
        let built = ipv4_udp_packet(
            v4("203.0.113.99:4444"),
            v4("203.0.113.12:7000"),
            b"spoofed-1",
            1,
        );
        assert_eq!(ip, &built[..]);
    }

    const REAL_ANY_CAPTURE: &str = "d4c3b2a102000400000000000000000000000400140100001cd50e6b6ad70200390000003900000008000000000000020001000606d926f86b39000045000025000140004011c256cb007163cb00710c115c1b5800117c3473706f6f6665642d311cd50e6bfad70200390000003900000008000000000000020001000606d926f86b39000045000025000240004011c255cb007163cb00710c115c1b580011074a4c4d010c0001020304";
    const REAL_ETH_CAPTURE: &str = "d4c3b2a102000400000000000000000000000400010000001cd50e6b71d70200330000003300000042c0d7c60edc06d926f86b39080045000025000140004011c256cb007163cb00710c115c1b5800117c3473706f6f6665642d31";

    #[test]
    fn result_lines_parse() {
        let s = Sent::parse("noise\nsent 3 datagrams 27 bytes\n").unwrap();
        assert_eq!((s.datagrams, s.bytes, s.secs), (3, 27, None));
        let s =
            Sent::parse("sent 20000 datagrams 9000000 bytes in 1.000 s (20000 pps, 72.0 Mbit/s)")
                .unwrap();
        assert_eq!(s.secs, Some(1.0));
        assert!((s.pps() - 20000.0).abs() < 1e-6);
        assert!((s.mbps() - 72.0).abs() < 1e-6);
        assert!(Sent::parse("sent 3").is_none());

        let r = Received::parse(
            "from 203.0.113.99:4444 2 6869\nfrom 1.2.3.4:5 0\nreceived 7 datagrams 90 bytes from 2 sources\n",
        )
        .unwrap();
        assert_eq!((r.datagrams, r.bytes, r.sources), (7, 90, 2));
        assert!(r.got("203.0.113.99:4444".parse().unwrap(), b"hi"));
        assert!(r.got("1.2.3.4:5".parse().unwrap(), b""));
        assert!(Received::parse("from 1.2.3.4:5 0").is_none());

        assert_eq!(
            parse_counter("table ip lanmesh_attack {\n counter c {\n  packets 3 bytes 180\n }\n}"),
            Some(Counted {
                packets: 3,
                bytes: 180
            })
        );
        assert_eq!(
            parse_extracted_name(&extracted_name(7, 4444, 7000, 9)),
            Some((7, 4444, 7000, 9))
        );
        assert_eq!(parse_extracted_name("x-1-2-3.bin"), None);
        assert_eq!(parse_extracted_name("1-2-3-4-5.bin"), None);
    }
}
