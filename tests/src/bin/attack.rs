//! `lanmesh-attack`: the attacker's tooling for the adversary tests. Test-only; run it as
//! root inside a lab namespace (see `tests/src/attack.rs` for the helpers that do).
//!
//! ```text
//! lanmesh-attack spoof --src IP:PORT --dst IP:PORT PAYLOAD... [--count N] [--interval-ms MS]
//!     sends raw IPv4/UDP datagrams whose source address and port are forged (IP header
//!     written here, UDP checksum computed). Each of the N rounds (default 1) sends every
//!     --hex/--file payload once, in order (or one --random/--template datagram), MS
//!     milliseconds apart (default 0). Prints `sent N datagrams B bytes` (B: UDP payload).
//! lanmesh-attack flood --dst IP:PORT --pps RATE --seconds T [--src IP:PORT | --src-net CIDR]
//!                      [--bind IP:PORT] [--count N] [--seed S] PAYLOAD...
//!     a bounded flood paced to RATE datagrams/s (0: as fast as it can) for at most T
//!     seconds (at most 300) and at most N datagrams, in sendmmsg batches of up to 64.
//!     With --src every datagram is forged from IP:PORT, with --src-net from a random
//!     address of CIDR and a random port (1024-65535) each (raw socket); otherwise a normal
//!     UDP socket sends from the real address (bound to --bind if given). --hex/--file
//!     payloads are sent in turn. SIGTERM stops it early. Prints
//!     `sent N datagrams B bytes in S s (R pps, M Mbit/s)` (M: payload megabits per second).
//! lanmesh-attack listen --bind IP:PORT [--seconds T] [--count N] [--show N]
//!     a victim: counts the datagrams and payload bytes arriving on a UDP socket for T
//!     seconds (default 10), or until N datagrams came, or until SIGTERM. The first --show
//!     datagrams (default 0) are printed as `from SRC LEN HEX`. Then prints
//!     `received N datagrams B bytes from K sources` (K: distinct source addresses, counted
//!     up to a million).
//! lanmesh-attack pcap-extract --pcap FILE --out-dir DIR [--udp-port P]...
//!     reads a classic pcap file (tcpdump -w; Ethernet, Linux cooked v1/v2 or raw IP) and
//!     writes every IPv4 UDP payload (only those to or from a --udp-port, if given) to
//!     DIR/<index>-<srcport>-<dstport>-<len>.bin (index: 6 digits from 000000, capture
//!     order). Prints `extracted N payloads`; counts of skipped packets go to stderr.
//!
//! PAYLOAD (spoof and flood) is one of:
//!     --hex HEX | --file PATH   (repeatable, mixed: sent in turn, cycling)
//!     --random MIN-MAX          random bytes, length uniform in MIN..=MAX (or one LEN)
//!     --template HEX [--randomize FROM-TO]
//!                               HEX with bytes FROM..TO (TO exclusive) random; a range
//!                               past the end extends the datagram to TO bytes
//! ```
//!
//! Every command stops by itself: exit 2 after --timeout seconds (default 60, or the
//! command's own --seconds plus 10 if that is longer), exit 2 on a usage error, exit 1 on
//! any other error. Results go to stdout (one line, plus `from` lines of listen --show),
//! errors to stderr.

use lanmesh_e2e::attack::{
    from_sockaddr_in, hex_decode, hex_encode, parse_cidr, pcap, prefix_mask, raw_socket,
    set_socket_buffer, sockaddr_in, write_ipv4_udp_headers, MAX_FLOOD_SECS, MAX_UDP_PAYLOAD,
};
use std::collections::HashSet;
use std::io::{self, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  lanmesh-attack spoof --src IP:PORT --dst IP:PORT PAYLOAD... [--count N] [--interval-ms MS] [--timeout SECS]
  lanmesh-attack flood --dst IP:PORT --pps RATE --seconds T [--src IP:PORT | --src-net CIDR] [--bind IP:PORT] [--count N] [--seed S] PAYLOAD... [--timeout SECS]
  lanmesh-attack listen --bind IP:PORT [--seconds T] [--count N] [--show N] [--timeout SECS]
  lanmesh-attack pcap-extract --pcap FILE --out-dir DIR [--udp-port P]... [--timeout SECS]
PAYLOAD: --hex HEX | --file PATH (repeatable) | --random MIN-MAX | --template HEX [--randomize FROM-TO]";

/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;

/// Set by SIGTERM/SIGINT: flood and listen stop and print their result.
static STOP: AtomicBool = AtomicBool::new(false);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        fail(USAGE);
    };
    let opts = Opts::parse(&args[1..]).unwrap_or_else(|e| fail(&format!("{e}\n{USAGE}")));
    let own_secs = opts
        .float("--seconds")
        .unwrap_or_else(|e| usage(&e))
        .unwrap_or(0.0);
    let default_timeout = 60f64.max(own_secs.min(MAX_FLOOD_SECS as f64) + 10.0);
    let timeout = opts
        .float("--timeout")
        .unwrap_or_else(|e| usage(&e))
        .unwrap_or(default_timeout);
    if !(timeout > 0.0 && timeout < 1e6) {
        usage("--timeout: must be positive");
    }
    start_watchdog(Duration::from_secs_f64(timeout));
    install_stop_handler();
    let result = match cmd.as_str() {
        "spoof" => spoof(&opts),
        "flood" => flood(&opts),
        "listen" => listen(&opts),
        "pcap-extract" => pcap_extract(&opts),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => usage(&format!("unknown command {cmd:?}")),
    };
    if let Err(e) = result {
        eprintln!("lanmesh-attack {cmd}: {e:#}");
        exit(1);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    exit(2);
}

fn usage(msg: &str) -> ! {
    fail(&format!("{msg}\n{USAGE}"))
}

/// Ends the whole process after `timeout`, even if a syscall is stuck.
fn start_watchdog(timeout: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        fail(&format!(
            "lanmesh-attack: timed out after {:.1}s",
            timeout.as_secs_f64()
        ));
    });
}

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handler() {
    // SAFETY: a plain sigaction with a handler that only stores an atomic; no SA_RESTART,
    // so blocking calls return EINTR and the loops notice.
    unsafe {
        let mut sa: libc::sigaction = mem::zeroed();
        sa.sa_sigaction = on_stop as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

/// `--flag value` pairs in command-line order.
#[derive(Debug)]
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if !flag.starts_with("--") {
                return Err(format!("unexpected argument {flag:?}"));
            }
            let Some(value) = it.next() else {
                return Err(format!("{flag} needs a value"));
            };
            out.push((flag.clone(), value.clone()));
        }
        Ok(Opts(out))
    }

    /// Fails on any flag not in `known` (a typo must not silently change an attack).
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .0
            .iter()
            .find(|(f, _)| f != "--timeout" && !known.contains(&f.as_str()))
        {
            Some((f, _)) => Err(format!("unknown option {f}")),
            None => Ok(()),
        }
    }

    fn get(&self, flag: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|(f, _)| f == flag)
    }

    fn all(&self, flag: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn required(&self, flag: &str) -> Result<&str, String> {
        self.get(flag).ok_or_else(|| format!("missing {flag}"))
    }

    fn num(&self, flag: &str) -> Result<Option<u64>, String> {
        self.get(flag)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("{flag}: not a whole number: {v:?}"))
            })
            .transpose()
    }

    fn float(&self, flag: &str) -> Result<Option<f64>, String> {
        self.get(flag)
            .map(|v| match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                _ => Err(format!("{flag}: not a number of seconds: {v:?}")),
            })
            .transpose()
    }

    fn addr(&self, flag: &str) -> Result<SocketAddr, String> {
        let v = self.required(flag)?;
        v.parse()
            .map_err(|_| format!("{flag}: not an IP:PORT: {v:?}"))
    }

    fn addr_v4(&self, flag: &str) -> Result<SocketAddrV4, String> {
        match self.addr(flag)? {
            SocketAddr::V4(a) => Ok(a),
            SocketAddr::V6(a) => Err(format!("{flag}: IPv4 only: {a}")),
        }
    }
}

/// `A-B` (or `A`, meaning `A-A`) as two numbers.
fn parse_range(flag: &str, v: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{flag}: not a range MIN-MAX: {v:?}");
    let (a, b) = v.split_once('-').unwrap_or((v, v));
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

// ---------------------------------------------------------------------------------------
// Payloads and randomness
// ---------------------------------------------------------------------------------------

/// xorshift64*: fast, good enough for junk bytes, addresses and ports.
struct Rng(u64);

impl Rng {
    fn new(seed: Option<u64>) -> Rng {
        let seed = seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            t ^ (u64::from(std::process::id()) << 32)
        });
        // splitmix64 the seed so that small seeds give well-mixed states; never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            return lo;
        }
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let r = self.next().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&r[..n]);
    }
}

/// What to send, from the PAYLOAD options.
#[derive(Debug, PartialEq, Eq)]
enum Payloads {
    /// Sent in turn.
    Fixed(Vec<Vec<u8>>),
    Random {
        min: usize,
        max: usize,
    },
    Template {
        bytes: Vec<u8>,
        from: usize,
        to: usize,
    },
}

impl Payloads {
    fn from_opts(opts: &Opts) -> Result<Payloads, String> {
        let mut fixed = Vec::new();
        for (flag, v) in &opts.0 {
            match flag.as_str() {
                "--hex" => fixed.push(hex_decode(v).map_err(|e| format!("--hex: {e}"))?),
                "--file" => fixed
                    .push(std::fs::read(v).map_err(|e| format!("--file: cannot read {v}: {e}"))?),
                _ => {}
            }
        }
        let random = opts.get("--random");
        let template = opts.get("--template");
        let kinds = usize::from(!fixed.is_empty())
            + usize::from(random.is_some())
            + usize::from(template.is_some());
        if kinds == 0 {
            return Err("no payload: give --hex, --file, --random or --template".into());
        }
        if kinds > 1 {
            return Err("choose one payload kind: --hex/--file, --random or --template".into());
        }
        if opts.has("--randomize") && template.is_none() {
            return Err("--randomize needs --template".into());
        }
        let p = if let Some(r) = random {
            let (min, max) = parse_range("--random", r)?;
            Payloads::Random { min, max }
        } else if let Some(t) = template {
            let bytes = hex_decode(t).map_err(|e| format!("--template: {e}"))?;
            let (from, to) = match opts.get("--randomize") {
                Some(r) => parse_range("--randomize", r)?,
                None => (0, 0),
            };
            Payloads::Template { bytes, from, to }
        } else {
            Payloads::Fixed(fixed)
        };
        if p.max_len() > MAX_UDP_PAYLOAD {
            return Err(format!(
                "payload of {} bytes: at most {MAX_UDP_PAYLOAD}",
                p.max_len()
            ));
        }
        Ok(p)
    }

    fn max_len(&self) -> usize {
        match self {
            Payloads::Fixed(v) => v.iter().map(Vec::len).max().unwrap_or(0),
            Payloads::Random { max, .. } => *max,
            Payloads::Template { bytes, to, .. } => bytes.len().max(*to),
        }
    }

    /// Datagrams per spoof round.
    fn per_round(&self) -> usize {
        match self {
            Payloads::Fixed(v) => v.len(),
            _ => 1,
        }
    }

    /// Writes datagram number `i` into `buf` (at least [`Payloads::max_len`] long) and
    /// returns its length.
    fn write(&self, i: u64, rng: &mut Rng, buf: &mut [u8]) -> usize {
        match self {
            Payloads::Fixed(v) => {
                let p = &v[(i % v.len() as u64) as usize];
                buf[..p.len()].copy_from_slice(p);
                p.len()
            }
            Payloads::Random { min, max } => {
                let n = rng.range(*min, *max);
                rng.fill(&mut buf[..n]);
                n
            }
            Payloads::Template { bytes, from, to } => {
                let n = bytes.len().max(*to);
                buf[..bytes.len()].copy_from_slice(bytes);
                buf[bytes.len()..n].fill(0);
                rng.fill(&mut buf[*from..*to]);
                n
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------

/// Where the source of each datagram comes from.
enum Src {
    /// The real address: a normal UDP socket.
    Real,
    Fixed(SocketAddrV4),
    /// A random address in `net/len` and a random port per datagram.
    Net {
        net: u32,
        len: u8,
    },
}

impl Src {
    fn spoofed(&self) -> bool {
        !matches!(self, Src::Real)
    }

    fn pick(&self, rng: &mut Rng) -> SocketAddrV4 {
        match *self {
            Src::Real => unreachable!("a real source is not built"),
            Src::Fixed(a) => a,
            Src::Net { net, len } => {
                let host_mask = !prefix_mask(len);
                let ip = loop {
                    let host = (rng.next() as u32) & host_mask;
                    // Not the network or broadcast address of a real subnet.
                    if len > 30 || (host != 0 && host != host_mask) {
                        break net | host;
                    }
                };
                let port = 1024 + (rng.next() % (65536 - 1024)) as u16;
                SocketAddrV4::new(Ipv4Addr::from(ip), port)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The batch sender
// ---------------------------------------------------------------------------------------

/// sendmmsg over up to [`BATCH`] datagrams at a time, built in place: payloads only for a
/// UDP socket, whole IPv4 packets for a raw one. Fixed payloads from a fixed source are
/// built once and sent from there.
struct Sender {
    fd: OwnedFd,
    src: Src,
    dst: SocketAddrV4,
    payloads: Payloads,
    rng: Rng,
    /// Prebuilt datagrams (fixed payloads and source), with their payload lengths.
    prebuilt: Option<Vec<(Vec<u8>, usize)>>,
    /// One buffer per batch slot, for datagrams built per send.
    slots: Vec<Vec<u8>>,
    slot_payload: [usize; BATCH],
    /// Boxed so that the pointers in `msgs` stay valid.
    name: Box<libc::sockaddr_in>,
    iovs: Box<[libc::iovec; BATCH]>,
    msgs: Box<[libc::mmsghdr; BATCH]>,
    ip_id: u16,
    /// Datagrams handed to the kernel so far, and their payload bytes.
    sent: u64,
    bytes: u64,
}

impl Sender {
    fn new(
        src: Src,
        dst: SocketAddrV4,
        bind: Option<SocketAddr>,
        payloads: Payloads,
        rng: Rng,
    ) -> anyhow::Result<Sender> {
        let fd = if src.spoofed() {
            if bind.is_some() {
                anyhow::bail!("--bind is for the real source only");
            }
            raw_socket()?
        } else {
            let sock = UdpSocket::bind(bind.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()))?;
            // Connected: the route is looked up once, not per datagram. An ICMP error
            // then fails one sendmmsg call (see `send`), and the flood goes on.
            sock.connect(dst)?;
            let fd = OwnedFd::from(sock);
            set_socket_buffer(fd.as_raw_fd(), libc::SO_SNDBUF, 4 << 20);
            fd
        };
        let header = if src.spoofed() { 28 } else { 0 };
        let mut ip_id = 1u16;
        let prebuilt = match (&payloads, &src) {
            (Payloads::Fixed(v), Src::Real) => {
                Some(v.iter().map(|p| (p.clone(), p.len())).collect())
            }
            (Payloads::Fixed(v), Src::Fixed(a)) => Some(
                v.iter()
                    .map(|p| {
                        let mut buf = vec![0u8; 28 + p.len()];
                        buf[28..].copy_from_slice(p);
                        write_ipv4_udp_headers(&mut buf, *a, dst, p.len(), ip_id);
                        ip_id = ip_id.wrapping_add(1).max(1);
                        (buf, p.len())
                    })
                    .collect(),
            ),
            _ => None,
        };
        let slot_len = header + payloads.max_len();
        let slots = if prebuilt.is_some() {
            Vec::new()
        } else {
            (0..BATCH).map(|_| vec![0u8; slot_len]).collect()
        };
        // SAFETY: iovec and mmsghdr are plain data; all-zero (null pointers) is valid.
        let iovs: Box<[libc::iovec; BATCH]> = Box::new(unsafe { mem::zeroed() });
        let msgs: Box<[libc::mmsghdr; BATCH]> = Box::new(unsafe { mem::zeroed() });
        let mut s = Sender {
            fd,
            src,
            dst,
            payloads,
            rng,
            prebuilt,
            slots,
            slot_payload: [0; BATCH],
            name: Box::new(sockaddr_in(dst)),
            iovs,
            msgs,
            ip_id,
            sent: 0,
            bytes: 0,
        };
        // The raw socket ignores the port; the kernel routes on the address. The UDP
        // socket is connected and takes no address.
        let name: *mut libc::sockaddr_in = &mut *s.name;
        let spoofed = s.src.spoofed();
        for i in 0..BATCH {
            let iov: *mut libc::iovec = &mut s.iovs[i];
            let h = &mut s.msgs[i].msg_hdr;
            if spoofed {
                h.msg_name = name.cast();
                h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            h.msg_iov = iov;
            h.msg_iovlen = 1;
        }
        Ok(s)
    }

    /// Sends up to `n` (at most [`BATCH`]) datagrams in one sendmmsg; returns how many the
    /// kernel took (0 when it was out of buffer space or interrupted).
    fn send(&mut self, n: usize) -> io::Result<usize> {
        let n = n.clamp(1, BATCH);
        // Payload length of each slot, summed after the send for the ones that went.
        let mut plen = [0usize; BATCH];
        for (j, len) in plen.iter_mut().enumerate().take(n) {
            let i = self.sent + j as u64;
            let (ptr, total) = match &self.prebuilt {
                Some(v) => {
                    let (buf, p) = &v[(i % v.len() as u64) as usize];
                    *len = *p;
                    (buf.as_ptr(), buf.len())
                }
                None => {
                    let slot = &mut self.slots[j];
                    let total = if self.src.spoofed() {
                        let p = self.payloads.write(i, &mut self.rng, &mut slot[28..]);
                        let src = self.src.pick(&mut self.rng);
                        self.ip_id = self.ip_id.wrapping_add(1).max(1);
                        *len = p;
                        write_ipv4_udp_headers(slot, src, self.dst, p, self.ip_id)
                    } else {
                        let p = self.payloads.write(i, &mut self.rng, slot);
                        *len = p;
                        p
                    };
                    (slot.as_ptr(), total)
                }
            };
            self.iovs[j].iov_base = ptr as *mut libc::c_void;
            self.iovs[j].iov_len = total;
        }
        self.slot_payload = plen;
        // SAFETY: msgs[..n] point at live iovecs, buffers and the boxed sockaddr.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => Ok(0),
                // An ICMP error from an earlier datagram (the flood goes on).
                Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => Ok(0),
                _ => Err(io::Error::new(e.kind(), format!("sendmmsg: {e}"))),
            };
        }
        let k = r as usize;
        self.sent += k as u64;
        self.bytes += self.slot_payload[..k]
            .iter()
            .map(|&p| p as u64)
            .sum::<u64>();
        Ok(k)
    }
}

// ---------------------------------------------------------------------------------------
// spoof
// ---------------------------------------------------------------------------------------

fn spoof(opts: &Opts) -> anyhow::Result<()> {
    let cfg = (|| -> Result<_, String> {
        opts.only(&[
            "--src",
            "--dst",
            "--hex",
            "--file",
            "--random",
            "--template",
            "--randomize",
            "--count",
            "--interval-ms",
            "--seed",
        ])?;
        let src = opts.addr_v4("--src")?;
        let dst = opts.addr_v4("--dst")?;
        let payloads = Payloads::from_opts(opts)?;
        let count = opts.num("--count")?.unwrap_or(1);
        let interval = Duration::from_millis(opts.num("--interval-ms")?.unwrap_or(0));
        let seed = opts.num("--seed")?;
        Ok((src, dst, payloads, count, interval, seed))
    })();
    let (src, dst, payloads, count, interval, seed) = cfg.unwrap_or_else(|e| usage(&e));
    let per_round = payloads.per_round() as u64;
    let mut s = Sender::new(Src::Fixed(src), dst, None, payloads, Rng::new(seed))?;
    let total = count.saturating_mul(per_round);
    while s.sent < total {
        if s.send(1)? == 0 {
            // Out of buffer space: try again shortly.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if s.sent < total && !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    println!("sent {} datagrams {} bytes", s.sent, s.bytes);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// flood
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct FloodCfg {
    dst: SocketAddrV4,
    pps: u64,
    seconds: f64,
    count: Option<u64>,
    src: Option<SocketAddrV4>,
    src_net: Option<(Ipv4Addr, u8)>,
    bind: Option<SocketAddr>,
    seed: Option<u64>,
}

fn flood_cfg(opts: &Opts) -> Result<(FloodCfg, Payloads), String> {
    opts.only(&[
        "--dst",
        "--pps",
        "--seconds",
        "--count",
        "--src",
        "--src-net",
        "--bind",
        "--seed",
        "--hex",
        "--file",
        "--random",
        "--template",
        "--randomize",
    ])?;
    let seconds = opts.float("--seconds")?.ok_or("missing --seconds")?;
    if seconds > MAX_FLOOD_SECS as f64 {
        return Err(format!("--seconds: at most {MAX_FLOOD_SECS}"));
    }
    let pps = opts.num("--pps")?.ok_or("missing --pps")?;
    if opts.has("--src") && opts.has("--src-net") {
        return Err("--src and --src-net exclude each other".into());
    }
    let src = opts
        .has("--src")
        .then(|| opts.addr_v4("--src"))
        .transpose()?;
    let src_net = opts
        .get("--src-net")
        .map(|v| parse_cidr(v).map_err(|e| format!("--src-net: {e:#}")))
        .transpose()?;
    let bind = opts
        .has("--bind")
        .then(|| opts.addr("--bind"))
        .transpose()?;
    if bind.is_some() && (src.is_some() || src_net.is_some()) {
        return Err("--bind is for the real source only".into());
    }
    let cfg = FloodCfg {
        dst: opts.addr_v4("--dst")?,
        pps,
        seconds,
        count: opts.num("--count")?,
        src,
        src_net,
        bind,
        seed: opts.num("--seed")?,
    };
    Ok((cfg, Payloads::from_opts(opts)?))
}

fn flood(opts: &Opts) -> anyhow::Result<()> {
    let (cfg, payloads) = flood_cfg(opts).unwrap_or_else(|e| usage(&e));
    let src = match (cfg.src, cfg.src_net) {
        (Some(a), _) => Src::Fixed(a),
        (None, Some((net, len))) => Src::Net {
            net: u32::from(net),
            len,
        },
        (None, None) => Src::Real,
    };
    let mut s = Sender::new(src, cfg.dst, cfg.bind, payloads, Rng::new(cfg.seed))?;
    let limit = cfg.count.unwrap_or(u64::MAX);
    let duration = Duration::from_secs_f64(cfg.seconds);
    // Send about a millisecond's worth per call (1..=BATCH datagrams).
    let chunk = (cfg.pps / 1000).clamp(1, BATCH as u64);
    let start = Instant::now();
    let elapsed = loop {
        let elapsed = start.elapsed();
        if stopped() || elapsed >= duration || s.sent >= limit {
            break elapsed;
        }
        let want = if cfg.pps == 0 {
            BATCH as u64
        } else {
            let due = (elapsed.as_secs_f64() * cfg.pps as f64) as u64 + 1;
            let behind = due.saturating_sub(s.sent);
            if behind < chunk {
                // Sleep until a chunk is due (or the end).
                let next = (s.sent + chunk) as f64 / cfg.pps as f64;
                let wait = Duration::from_secs_f64(next)
                    .saturating_sub(elapsed)
                    .min(duration.saturating_sub(elapsed))
                    .max(Duration::from_micros(20));
                std::thread::sleep(wait);
                continue;
            }
            behind
        };
        let n = want.min(BATCH as u64).min(limit - s.sent) as usize;
        if s.send(n)? == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "sent {} datagrams {} bytes in {:.3} s ({:.0} pps, {:.1} Mbit/s)",
        s.sent,
        s.bytes,
        secs,
        s.sent as f64 / secs,
        s.bytes as f64 * 8.0 / secs / 1e6
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// listen
// ---------------------------------------------------------------------------------------

/// Distinct sources are remembered up to this many.
const MAX_SOURCES: usize = 1_000_000;

fn listen(opts: &Opts) -> anyhow::Result<()> {
    let cfg = (|| -> Result<_, String> {
        opts.only(&["--bind", "--seconds", "--count", "--show"])?;
        let bind = opts.addr("--bind")?;
        let seconds = opts.float("--seconds")?.unwrap_or(10.0);
        let count = opts.num("--count")?.unwrap_or(u64::MAX);
        let show = opts.num("--show")?.unwrap_or(0);
        Ok((bind, seconds, count, show))
    })();
    let (bind, seconds, count, show) = cfg.unwrap_or_else(|e| usage(&e));
    if !bind.is_ipv4() {
        usage("--bind: IPv4 only");
    }
    let sock = UdpSocket::bind(bind)?;
    // Polled without blocking (a short sleep when the queue is empty): a sleeping reader
    // would make the sender's CPU, which runs our receive path over veth, pay a wakeup
    // per datagram.
    let fd = sock.as_raw_fd();
    set_socket_buffer(fd, libc::SO_RCVBUF, 32 << 20);
    eprintln!("listening on {bind}");

    const BUF: usize = 65536;
    let mut bufs = vec![0u8; BATCH * BUF];
    // SAFETY: plain data; all-zero is valid.
    let mut names: Box<[libc::sockaddr_in; BATCH]> = Box::new(unsafe { mem::zeroed() });
    let mut iovs: Box<[libc::iovec; BATCH]> = Box::new(unsafe { mem::zeroed() });
    let mut msgs: Box<[libc::mmsghdr; BATCH]> = Box::new(unsafe { mem::zeroed() });
    for i in 0..BATCH {
        iovs[i].iov_base = bufs[i * BUF..].as_mut_ptr().cast();
        iovs[i].iov_len = BUF;
    }

    let (mut n, mut bytes, mut shown) = (0u64, 0u64, 0u64);
    let mut sources: HashSet<SocketAddrV4> = HashSet::new();
    let out = io::stdout();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while !stopped() && n < count && Instant::now() < deadline {
        for i in 0..BATCH {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY: msgs point at live buffers, iovecs and names.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Some(libc::EINTR) => continue,
                _ => anyhow::bail!("recvmmsg: {e}"),
            }
        }
        for i in 0..r as usize {
            let len = msgs[i].msg_len as usize;
            let src = from_sockaddr_in(&names[i]);
            n += 1;
            bytes += len as u64;
            if sources.len() < MAX_SOURCES {
                sources.insert(src);
            }
            if shown < show {
                shown += 1;
                let data = &bufs[i * BUF..i * BUF + len];
                let _ = writeln!(out.lock(), "from {src} {len} {}", hex_encode(data));
            }
        }
    }
    println!(
        "received {n} datagrams {bytes} bytes from {} sources",
        sources.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// pcap-extract
// ---------------------------------------------------------------------------------------

fn pcap_extract(opts: &Opts) -> anyhow::Result<()> {
    let cfg = (|| -> Result<_, String> {
        opts.only(&["--pcap", "--out-dir", "--udp-port"])?;
        let file = opts.required("--pcap")?.to_string();
        let dir = opts.required("--out-dir")?.to_string();
        let ports = opts
            .all("--udp-port")
            .into_iter()
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| format!("--udp-port: not a port: {p:?}"))
            })
            .collect::<Result<Vec<u16>, String>>()?;
        Ok((file, dir, ports))
    })();
    let (file, dir, ports) = cfg.unwrap_or_else(|e| usage(&e));
    let data = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?;
    let s = pcap::udp_payloads(&data)?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut n = 0usize;
    for p in &s.udp {
        let (sp, dp) = (p.src.port(), p.dst.port());
        if !ports.is_empty() && !ports.contains(&sp) && !ports.contains(&dp) {
            continue;
        }
        let path = dir.join(lanmesh_e2e::attack::extracted_name(
            n,
            sp,
            dp,
            p.payload.len(),
        ));
        std::fs::write(&path, &p.payload)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        n += 1;
    }
    eprintln!(
        "{file}: link type {}, {} packets, {} IPv4 UDP, {} other, {} fragments, {} truncated",
        s.linktype,
        s.packets,
        s.udp.len(),
        s.other,
        s.fragments,
        s.truncated
    );
    println!("extracted {n} payloads");
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    fn opts(s: &str) -> Result<Opts, String> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        Opts::parse(&v)
    }

    #[test]
    fn options_parse() {
        let o = opts("--hex 01 --file /x --hex 02 --count 3").unwrap();
        assert_eq!(o.all("--hex"), ["01", "02"]);
        assert_eq!(o.num("--count").unwrap(), Some(3));
        assert_eq!(o.num("--missing").unwrap(), None);
        assert!(o.num("--hex").is_ok());
        assert!(opts("--count").is_err());
        assert!(opts("stray").is_err());
        assert!(opts("--count x").unwrap().num("--count").is_err());
        assert!(opts("--seconds -1").unwrap().float("--seconds").is_err());
        assert_eq!(
            opts("--seconds 0.5").unwrap().float("--seconds").unwrap(),
            Some(0.5)
        );
        assert!(opts("--src ::1:5").unwrap().addr_v4("--src").is_err());
        assert!(opts("--src [::1]:5").unwrap().addr_v4("--src").is_err());
        assert!(opts("--bogus 1").unwrap().only(&["--src"]).is_err());
        assert!(opts("--timeout 1").unwrap().only(&["--src"]).is_ok());
        assert_eq!(parse_range("--random", "400-500"), Ok((400, 500)));
        assert_eq!(parse_range("--random", "450"), Ok((450, 450)));
        assert!(parse_range("--random", "5-4").is_err());
        assert!(parse_range("--random", "a-4").is_err());
    }

    #[test]
    fn payload_options() {
        let p = |s| Payloads::from_opts(&opts(s).unwrap());
        assert_eq!(
            p("--hex 0102 --hex ff").unwrap(),
            Payloads::Fixed(vec![vec![1, 2], vec![0xff]])
        );
        assert_eq!(
            p("--random 10-20").unwrap(),
            Payloads::Random { min: 10, max: 20 }
        );
        assert_eq!(
            p("--template 4c4d010c --randomize 4-120").unwrap(),
            Payloads::Template {
                bytes: vec![0x4c, 0x4d, 1, 0x0c],
                from: 4,
                to: 120
            }
        );
        assert!(p("").is_err());
        assert!(p("--hex 01 --random 1-2").is_err());
        assert!(p("--randomize 1-2 --hex 00").is_err());
        assert!(p("--hex 0").is_err());
        assert!(p("--file /nonexistent/lanmesh").is_err());
        assert!(p("--random 1-70000").is_err());

        let mut rng = Rng::new(Some(7));
        let mut buf = vec![0u8; 200];
        let t = p("--template 4c4d010c --randomize 4-120").unwrap();
        let n = t.write(0, &mut rng, &mut buf);
        assert_eq!(n, 120);
        assert_eq!(&buf[..4], &[0x4c, 0x4d, 1, 0x0c]);
        assert!(buf[4..120].iter().any(|&b| b != 0));
        // Random lengths stay in range and vary.
        let r = p("--random 10-20").unwrap();
        let lens: HashSet<usize> = (0..200).map(|i| r.write(i, &mut rng, &mut buf)).collect();
        assert!(lens.iter().all(|l| (10..=20).contains(l)));
        assert!(lens.len() > 5);
        // Fixed payloads cycle.
        let f = p("--hex aa --hex bbcc").unwrap();
        assert_eq!(f.write(0, &mut rng, &mut buf), 1);
        assert_eq!(f.write(3, &mut rng, &mut buf), 2);
        assert_eq!(&buf[..2], &[0xbb, 0xcc]);
    }

    #[test]
    fn flood_options() {
        let (c, _) = flood_cfg(
            &opts("--dst 203.0.113.12:7000 --pps 1000 --seconds 2 --random 10-20").unwrap(),
        )
        .unwrap();
        assert_eq!(
            (c.pps, c.seconds, c.src, c.src_net),
            (1000, 2.0, None, None)
        );
        let (c, _) = flood_cfg(
            &opts("--dst 203.0.113.12:7000 --pps 1 --seconds 1 --src-net 198.51.100.9/24 --hex 00")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(c.src_net, Some(("198.51.100.0".parse().unwrap(), 24)));
        for bad in [
            "--dst 1.2.3.4:5 --pps 1 --seconds 301 --hex 00",
            "--dst 1.2.3.4:5 --seconds 1 --hex 00",
            "--dst 1.2.3.4:5 --pps 1 --hex 00",
            "--dst 1.2.3.4:5 --pps 1 --seconds 1",
            "--dst 1.2.3.4:5 --pps 1 --seconds 1 --hex 00 --src 1.1.1.1:1 --src-net 1.0.0.0/8",
            "--dst 1.2.3.4:5 --pps 1 --seconds 1 --hex 00 --src 1.1.1.1:1 --bind 0.0.0.0:0",
            "--dst 1.2.3.4:5 --pps 1 --seconds 1 --hex 00 --src-net 1.0.0.0/40",
        ] {
            assert!(flood_cfg(&opts(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_sources_stay_in_the_network() {
        let mut rng = Rng::new(Some(1));
        let src = Src::Net {
            net: u32::from(Ipv4Addr::new(198, 51, 100, 0)),
            len: 24,
        };
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let a = src.pick(&mut rng);
            let o = a.ip().octets();
            assert_eq!(&o[..3], &[198, 51, 100]);
            assert!(o[3] != 0 && o[3] != 255);
            assert!(a.port() >= 1024);
            seen.insert(o[3]);
        }
        assert!(seen.len() > 200);
        let one = Src::Net {
            net: u32::from(Ipv4Addr::new(10, 0, 0, 7)),
            len: 32,
        };
        assert_eq!(one.pick(&mut rng).ip(), &Ipv4Addr::new(10, 0, 0, 7));
    }
}
