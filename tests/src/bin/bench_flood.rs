//! `lanmesh-bench-flood`: what a flood of Hellos does to the coordinator and to an honest
//! node joining meanwhile. Run it through `bench/flood.sh` (needs root: network namespaces).
//!
//! ```text
//! lanmesh-bench-flood [--runs N] [--pps RATE] [--seconds S] [--timeout SECS]
//!                     [--cases NAME,...] [--coordinator-debug]
//! ```
//!
//! One lab, everything on the lab switch: the coordinator (203.0.113.10:3478), honest nodes
//! a (.11), b (.12) and c (.13), and an attacker (.200) whose /25 (203.0.113.128/25) holds
//! none of them. [`attack::fast_switch`] lets the switch carry about 200k datagrams/s.
//! First node c joins while tcpdump records the coordinator's namespace: its Hello (kind 12,
//! `4c4d010c`, [`HELLO_MAC_LEN`] bytes, valid mac1) is what the replay cases send. Node a
//! stays up throughout.
//!
//! Cases (`--cases`, default all, in this order; each run goes through all of them):
//!
//! - `baseline`: no flood;
//! - `junk-random`: junk Hellos (the header, then random bytes up to [`HELLO_MAC_LEN`]) from a
//!   random address of the attacker's /25 and a random port per datagram;
//! - `junk-fixed`: junk Hellos from the attacker's own address;
//! - `replay-fixed`: the recorded valid Hello over and over from the attacker's own address;
//! - `replay-random`: the recorded Hello from random addresses of the /25.
//!
//! Each flood runs `--pps` (default 200,000) datagrams/s for `--seconds` (default 10, at most
//! 12). One second in, a fresh node b (new name and state dir, reusable key) is started with
//! `node up`. A thread polls `node status --json` every 25 ms until b has a mesh IP: "b
//! registered after" (the time b's own log stamps its "registered" line is shown next to
//! it: the poll, a process started inside a busy machine, can lag). As soon as b's mesh IP
//! is known (from its log, or the poll), `ping -D -i 0.01` runs from a's namespace to it
//! until the first reply; its kernel receive stamp is "b first ping after". Both count from
//! just before b's `node up`. Over the flood window (baseline: the same 10 s without one)
//! the bench reads the coordinator process's CPU time (utime + stime of all threads,
//! /proc/PID/stat, as % of one core) and RSS (VmRSS, /proc/PID/status: before the flood, the
//! last sample during it, and 3 s after it), and what the flood sent; in the coordinator's
//! namespace, over the case: datagrams arriving for UDP 3478 (nftables input counter), UDP
//! `RcvbufErrors` and `SndbufErrors` (/proc/net/snmp; tokio stops calling send once a send
//! hit a full buffer, until the socket is writable again, so `SndbufErrors` counts the
//! first failure of each such stretch, not the answers lost), b's Hellos arriving, and
//! 64-byte answers (cookie replies) leaving, to b and in all. For the diagnosis it also
//! reads the run-queue wait of the coordinator's threads (/proc/PID/task/*/schedstat), the
//! flooder's CPU time and the whole machine's busy and softirq time (/proc/stat): on a
//! small machine, the flood's sender and the receive path compete with the coordinator for
//! the same cores (and so does anything else running). Then b is stopped (`node down`).
//!
//! Prints each case of each run, then per case the median over the runs (a run where b
//! never registered or never got a reply counts as infinitely slow) and whether the goals
//! hold: b registered (poll) within 1 s, first ping within 2 s, coordinator RSS flat (at the
//! end of and after the flood at most [`RSS_FLAT_KIB`] KiB above before).
//!
//! `--coordinator-debug` runs the coordinator with `-v` and prints, per case, a mid-flood
//! sample of its socket's memory (`ss -m`) and neighbour table, the reasons of its
//! (rate-limited: a sample) "dropped datagram" debug lines, and its lines about b.
//!
//! Binaries: `$LANMESH_BIN_DIR` (coordinator, node), `lanmesh-attack` as
//! [`attack::attack_bin`] finds it (`$LANMESH_ATTACK`).

use lanmesh_e2e::attack::{self, Flood, Hook, Payload, Sent};
use lanmesh_e2e::mesh::{Coordinator, Node, MESH_TIMEOUT};
use lanmesh_e2e::{clock_ticks, cpu_ticks, require_root, stdout, Host, Lab, Proc};
use lanmesh_proto::header::{write_header, ControlKind, HEADER_LEN};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The header of a Hello with MACs: `LM`, version, kind 12 (`4c4d010c`).
fn hello_header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    write_header(ControlKind::HelloMac, &mut h);
    h
}

/// The length of a Hello with MACs (mac1, mac2).
const HELLO_MAC_LEN: usize = lanmesh_proto::channel::HELLO_MAC_LEN;
/// The length of a cookie reply.
const COOKIE_REPLY_LEN: usize = lanmesh_proto::cookie::COOKIE_REPLY_LEN;
/// Roughly what one small datagram from a veth costs in a socket's receive buffer (for the
/// printed estimate only).
const SKB_TRUESIZE: u64 = 1280;

const COORD_IP: &str = "203.0.113.10";
const A_IP: &str = "203.0.113.11";
const B_IP: &str = "203.0.113.12";
const C_IP: &str = "203.0.113.13";
const ATTACKER_IP: &str = "203.0.113.200";
/// The attacker's /25: no honest host is in it.
const ATTACKER_NET: &str = "203.0.113.128/25";

/// When b starts, after the flood did.
const B_START_AFTER: Duration = Duration::from_secs(1);
/// How often b's status is polled.
const POLL: Duration = Duration::from_millis(25);
/// When the `--coordinator-debug` socket sample is taken, after b's start.
const MID_SAMPLE: Duration = Duration::from_secs(3);
/// How long after the flood the "after" RSS is read.
const SETTLE: Duration = Duration::from_secs(3);
/// Goals from the issue.
const JOIN_GOAL_MS: f64 = 1000.0;
const PING_GOAL_MS: f64 = 2000.0;
/// "Flat" memory: at most this much above the RSS before the flood.
const RSS_FLAT_KIB: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Baseline,
    JunkRandom,
    JunkFixed,
    ReplayFixed,
    ReplayRandom,
}

const ALL_CASES: [Case; 5] = [
    Case::Baseline,
    Case::JunkRandom,
    Case::JunkFixed,
    Case::ReplayFixed,
    Case::ReplayRandom,
];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Baseline => "baseline",
            Case::JunkRandom => "junk-random",
            Case::JunkFixed => "junk-fixed",
            Case::ReplayFixed => "replay-fixed",
            Case::ReplayRandom => "replay-random",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Case::Baseline => "baseline (no flood)",
            Case::JunkRandom => "junk Hellos, random srcs /25",
            Case::JunkFixed => "junk Hellos, one src",
            Case::ReplayFixed => "replayed Hello, attacker src",
            Case::ReplayRandom => "replayed Hello, random srcs",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Case::Baseline => "base",
            Case::JunkRandom => "jr",
            Case::JunkFixed => "jf",
            Case::ReplayFixed => "rf",
            Case::ReplayRandom => "rr",
        }
    }

    fn parse(s: &str) -> Option<Case> {
        ALL_CASES.into_iter().find(|c| c.name() == s)
    }
}

struct Opts {
    runs: u32,
    pps: u64,
    seconds: f64,
    timeout: Duration,
    cases: Vec<Case>,
    coordinator_debug: bool,
}

const USAGE: &str = "usage: lanmesh-bench-flood [--runs N] [--pps RATE] [--seconds S] \
     [--timeout SECS] [--cases baseline,junk-random,junk-fixed,replay-fixed,replay-random] \
     [--coordinator-debug]";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        runs: 3,
        pps: 200_000,
        seconds: 10.0,
        timeout: Duration::from_secs(30),
        cases: ALL_CASES.to_vec(),
        coordinator_debug: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--coordinator-debug" {
            o.coordinator_debug = true;
            continue;
        }
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--runs" => o.runs = v.parse::<u32>().unwrap_or_else(|_| usage()).max(1),
            "--pps" => o.pps = v.parse().unwrap_or_else(|_| usage()),
            "--seconds" => {
                let s: f64 = v.parse().unwrap_or_else(|_| usage());
                if !(2.0..=12.0).contains(&s) {
                    eprintln!("--seconds: 2 to 12 (floods stay short)");
                    usage();
                }
                o.seconds = s;
            }
            "--timeout" => {
                o.timeout = Duration::from_secs(v.parse().unwrap_or_else(|_| usage()));
            }
            "--cases" => {
                o.cases = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        Case::parse(s).unwrap_or_else(|| {
                            eprintln!("unknown case {s:?}");
                            usage()
                        })
                    })
                    .collect();
                if o.cases.is_empty() {
                    usage();
                }
            }
            _ => usage(),
        }
    }
    o
}

fn main() {
    let o = parse_opts();
    if !require_root() {
        std::process::exit(1);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Hello floods against the coordinator: {} pps for {} s per case, node b started {} s in; \
         {} run(s); {cores} cores",
        o.pps,
        o.seconds,
        B_START_AFTER.as_secs(),
        o.runs
    );
    let results = bench(&o);
    if results.iter().all(|(_, r)| r.is_empty()) {
        println!("no case finished");
        std::process::exit(1);
    }
    report(&o, &results);
    if STOP.load(Ordering::SeqCst) {
        std::process::exit(130);
    }
}

// ---------------------------------------------------------------------------------------
// The lab and the cases
// ---------------------------------------------------------------------------------------

struct World<'a> {
    lab: &'a Lab,
    coord: Coordinator,
    coord_pid: u32,
    key: String,
    a_ns: String,
    hb: Host,
    attacker: Host,
    /// The recorded valid Hello.
    hello: Vec<u8>,
    /// The length of a Hello with MACs (from the capture).
    hello_len: usize,
}

/// What one case of one run measured.
#[derive(Clone, Debug, Default)]
struct Measured {
    sent: Option<Sent>,
    registered_ms: Option<f64>,
    ping_ms: Option<f64>,
    cpu_pct: f64,
    /// Time the coordinator's threads spent runnable but waiting for a CPU (% of the window).
    coord_wait_pct: f64,
    /// The whole machine: busy and softirq, % of all cores.
    machine_busy_pct: f64,
    machine_softirq_pct: f64,
    /// The flooder's own CPU use, % of one core.
    flood_cpu_pct: f64,
    /// b's first log line and its "registered" line, after its start.
    b_log_start_ms: Option<f64>,
    b_log_registered_ms: Option<f64>,
    window_s: f64,
    /// `--coordinator-debug` output for this case.
    debug: String,
    rss_before_kib: u64,
    rss_end_kib: u64,
    rss_max_kib: u64,
    rss_after_kib: u64,
    received: u64,
    rcvbuf_errors: u64,
    /// Sends that failed for want of send buffer (the coordinator drops those answers).
    sndbuf_errors: u64,
    udp_out: u64,
    b_hellos: u64,
    cookies_to_b: u64,
    cookies_all: u64,
}

impl Measured {
    /// Datagrams the coordinator read (arrived minus dropped at its socket).
    fn processed(&self) -> u64 {
        self.received.saturating_sub(self.rcvbuf_errors)
    }

    /// The coordinator's CPU time per datagram it read, µs.
    fn us_per_datagram(&self) -> f64 {
        self.cpu_pct / 100.0 * self.window_s * 1e6 / self.processed().max(1) as f64
    }

    fn rss_flat(&self) -> bool {
        self.rss_end_kib <= self.rss_before_kib + RSS_FLAT_KIB
            && self.rss_after_kib <= self.rss_before_kib + RSS_FLAT_KIB
    }

    fn meets_goals(&self) -> bool {
        self.registered_ms.is_some_and(|t| t <= JOIN_GOAL_MS)
            && self.ping_ms.is_some_and(|t| t <= PING_GOAL_MS)
            && self.rss_flat()
    }
}

fn bench(o: &Opts) -> Vec<(Case, Vec<Measured>)> {
    let mut results: Vec<(Case, Vec<Measured>)> =
        o.cases.iter().map(|&c| (c, Vec::new())).collect();
    let lab = Lab::new("flood");
    let Some(w) = setup(&lab, o) else {
        return results;
    };
    'runs: for run in 1..=o.runs {
        for (case, got) in results.iter_mut() {
            if STOP.load(Ordering::SeqCst) {
                eprintln!("interrupted");
                break 'runs;
            }
            let m = one_case(&w, o, *case, run);
            print_run(run, *case, &m);
            got.push(m);
        }
    }
    if STOP.load(Ordering::SeqCst) {
        eprintln!("interrupted; cleaning up");
    }
    results
}

/// Builds the lab, starts the coordinator and node a, records node c's Hello.
fn setup<'a>(lab: &'a Lab, o: &Opts) -> Option<World<'a>> {
    let coord_host = lab.add_host("coord", COORD_IP);
    let ha = lab.add_host("a", A_IP);
    let hb = lab.add_host("b", B_IP);
    let hc = lab.add_host("c", C_IP);
    let attacker = lab.add_host("attacker", ATTACKER_IP);
    attack::fast_switch(lab);
    // Sources of the attacker's /25 are on the coordinator's subnet anyway; this makes sure
    // no reverse-path filter mode drops them.
    attack::allow_spoofed_sources(lab, &coord_host.ns);

    let extra: &[&str] = if o.coordinator_debug { &["-v"] } else { &[] };
    let coord = Coordinator::start(lab, &coord_host, extra);
    let coord_pid = coordinator_pid(coord.proc());
    let key = coord.create_key(lab, &["--reusable"]);

    // Counters in the coordinator's namespace (read and zeroed per case).
    let port = lanmesh_e2e::mesh::COORDINATOR_PORT;
    let cookie_udp = COOKIE_REPLY_LEN + 8;
    attack::count_bytes(lab, &coord_host.ns, "rx", &format!("udp dport {port}"));
    attack::count_bytes(
        lab,
        &coord_host.ns,
        "b_hello",
        &format!(
            "ip saddr {B_IP} udp dport {port} udp length {}",
            HELLO_MAC_LEN + 8
        ),
    );
    attack::count_bytes_at(
        lab,
        &coord_host.ns,
        Hook::Output,
        "cookie_all",
        &format!("udp sport {port} udp length {cookie_udp}"),
    );
    attack::count_bytes_at(
        lab,
        &coord_host.ns,
        Hook::Output,
        "cookie_b",
        &format!("ip daddr {B_IP} udp sport {port} udp length {cookie_udp}"),
    );

    let mut a = Node::new(lab, &ha, "a", &coord.addr);
    a.up(lab, Some(&key), &["--interface", "lma"]);
    a.wait_status(lab, MESH_TIMEOUT, "joined (has a mesh IP)", |s| {
        !s.mesh_ip.is_empty()
    });

    // Record a real Hello: node c's, as it arrives at the coordinator.
    let cap = attack::capture_start(lab, &coord_host.ns, "any", &format!("udp dst port {port}"));
    let mut c = Node::new(lab, &hc, "c", &coord.addr);
    c.up(lab, Some(&key), &["--interface", "lmc"]);
    c.wait_status(lab, MESH_TIMEOUT, "joined (has a mesh IP)", |s| {
        !s.mesh_ip.is_empty()
    });
    let payloads = cap.stop_and_extract(lab, &[port]);
    stop_node(lab, &mut c);
    let hellos: Vec<&Vec<u8>> = payloads
        .iter()
        .filter(|p| p.starts_with(&hello_header()))
        .collect();
    let Some(hello) = hellos
        .iter()
        .find(|p| p.len() == HELLO_MAC_LEN)
        .or_else(|| hellos.first())
        .map(|p| p.to_vec())
    else {
        eprintln!(
            "no Hello (4c4d010c...) among the {} datagrams captured at the coordinator during \
             node c's join",
            payloads.len()
        );
        return None;
    };
    if hello.len() != HELLO_MAC_LEN {
        eprintln!(
            "note: the captured Hello is {} bytes, not {HELLO_MAC_LEN} \
             (HELLO_MAC_LEN: does the node speak another Hello form?); using {} for junk \
             Hellos too",
            hello.len(),
            hello.len()
        );
    }
    println!(
        "recorded node c's Hello: {} bytes, {}...",
        hello.len(),
        attack::hex_encode(&hello[..16])
    );
    let hello_len = hello.len();
    let ss = lab.exec(
        &coord_host.ns,
        "ss",
        ["-u", "-a", "-m", "-n", &format!("sport = :{port}")],
    );
    let rcvbuf = stdout(&ss)
        .split(|c: char| c == ',' || c == '(' || c.is_whitespace())
        .find_map(|w| w.strip_prefix("rb")?.parse::<u64>().ok());
    println!(
        "coordinator pid {coord_pid}: UDP {port} socket receive buffer {} bytes \
         (about {} datagrams of {hello_len} bytes at ~{}-byte skb truesize)",
        rcvbuf.map_or("?".to_string(), |b| b.to_string()),
        rcvbuf.map_or("?".to_string(), |b| (b / SKB_TRUESIZE).to_string()),
        SKB_TRUESIZE
    );
    Some(World {
        lab,
        coord,
        coord_pid,
        key,
        a_ns: ha.ns.clone(),
        hb,
        attacker,
        hello,
        hello_len,
    })
}

/// The coordinator's own PID: the spawned process (`ip netns exec` execs it), or its child
/// if an `ip` that forks was in between.
fn coordinator_pid(p: &Proc) -> u32 {
    let pid = p.pid();
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm(pid).trim() == "coordinator" {
        return pid;
    }
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| comm(c).trim() == "coordinator")
        .unwrap_or(pid)
}

fn flood_for(w: &World, o: &Opts, case: Case) -> Option<Flood> {
    let dst: SocketAddr = w.coord.addr.parse().expect("coordinator address");
    let base = Flood::new(dst, o.pps, o.seconds);
    let junk = Payload::Template {
        bytes: hello_header().to_vec(),
        randomize: hello_header().len()..w.hello_len,
    };
    Some(match case {
        Case::Baseline => return None,
        Case::JunkRandom => base.payload(junk).src_net(ATTACKER_NET),
        Case::JunkFixed => base.payload(junk),
        Case::ReplayFixed => base.replay(&[&w.hello]),
        Case::ReplayRandom => base.replay(&[&w.hello]).src_net(ATTACKER_NET),
    })
}

fn one_case(w: &World, o: &Opts, case: Case, run: u32) -> Measured {
    let lab = w.lab;
    let ns = &w.coord.host.ns;
    let mut m = Measured::default();
    let log_from = std::fs::metadata(w.coord.proc().log_path()).map_or(0, |md| md.len());

    // Zero the counters; note the kernel's UDP counters and the coordinator's state.
    for c in ["rx", "b_hello", "cookie_all", "cookie_b"] {
        attack::reset_counter(lab, ns, c);
    }
    let snmp_before = udp_snmp(lab, ns);
    m.rss_before_kib = rss_kib(w.coord_pid);
    m.rss_max_kib = m.rss_before_kib;

    let window = Duration::from_secs_f64(o.seconds);
    let cpu0 = Cpu::read(w.coord_pid);
    let t_flood = Instant::now();
    let flood = flood_for(w, o, case).map(|f| f.spawn(lab, &w.attacker.ns));
    let flood_cpu0 = flood.as_ref().map_or(0, |p| cpu_ticks(p.pid()));

    // b starts one second in.
    sleep_unless_stopped(B_START_AFTER);
    let name = format!("b{run}-{}", case.short());
    let mut b = Node::new(lab, &w.hb, &name, &w.coord.addr);
    let iface = format!("lmb{run}{}", case.short());
    let b_unix = unix_now();
    let t_b = Instant::now();
    b.up(lab, Some(&w.key), &["--interface", &iface]);

    let mut ping: Option<Proc> = None;
    let mut window_end: Option<(Instant, Cpu, u64)> = None;
    let mut last_rss = Instant::now() - Duration::from_secs(1);
    let mut flood_cpu_last = flood_cpu0;
    let mut sampled = false;
    let (polled_tx, polled_rx) = std::sync::mpsc::channel::<(f64, String)>();
    let poller_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // The registration as `node status --json` shows it, polled every POLL.
        let b_ref = &b;
        let done = &poller_done;
        scope.spawn(move || {
            while !done.load(Ordering::SeqCst) && !STOP.load(Ordering::SeqCst) {
                let tick = Instant::now();
                if let Some(s) = b_ref.status(lab).filter(|s| !s.mesh_ip.is_empty()) {
                    let _ = polled_tx.send((t_b.elapsed().as_secs_f64() * 1000.0, s.mesh_ip));
                    return;
                }
                if let Some(rest) = POLL.checked_sub(tick.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        loop {
            let flood_running = flood.as_ref().is_some_and(|p| lab.is_running(p));
            let in_window = match &flood {
                Some(_) => flood_running,
                None => t_flood.elapsed() < window,
            };
            if in_window {
                if last_rss.elapsed() >= Duration::from_millis(50) {
                    last_rss = Instant::now();
                    let rss = rss_kib(w.coord_pid);
                    m.rss_end_kib = rss;
                    m.rss_max_kib = m.rss_max_kib.max(rss);
                    // The flooder is reaped when it ends: read it while it runs.
                    if let Some(p) = &flood {
                        flood_cpu_last = cpu_ticks(p.pid()).max(flood_cpu_last);
                    }
                }
            } else if window_end.is_none() {
                window_end = Some((Instant::now(), Cpu::read(w.coord_pid), flood_cpu_last));
            }
            if o.coordinator_debug && in_window && !sampled && t_b.elapsed() >= MID_SAMPLE {
                sampled = true;
                m.debug += &format!(
                    "      {:.1} s into the flood: {}\n",
                    t_flood.elapsed().as_secs_f64(),
                    socket_sample(w)
                );
            }
            // b's mesh IP: from the poll, or earlier from b's own log (no process to
            // spawn), so that the ping starts as soon as possible.
            let b_log = lab.log(b.proc());
            let from_log = registered_line(&b_log);
            if let Ok((ms, ip)) = polled_rx.try_recv() {
                m.registered_ms = Some(ms);
                if ping.is_none() {
                    ping = Some(start_ping(lab, &w.a_ns, &ip, &name));
                }
            }
            if let (None, Some((_, ip))) = (&ping, &from_log) {
                ping = Some(start_ping(lab, &w.a_ns, ip, &name));
            }
            if let Some(p) = &ping {
                if m.ping_ms.is_none() {
                    if let Some(ts) = first_reply_stamp(&lab.log(p)) {
                        m.ping_ms = Some(((ts - b_unix) * 1000.0).max(0.0));
                        lab.kill(p);
                    }
                }
            }
            let timed_out = t_b.elapsed() > o.timeout;
            let b_done = (m.ping_ms.is_some() && m.registered_ms.is_some()) || timed_out;
            if (b_done && window_end.is_some()) || STOP.load(Ordering::SeqCst) {
                break;
            }
            if !lab.is_running(b.proc()) {
                eprintln!("node {name} exited:\n{}", lab.log(b.proc()));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        poller_done.store(true, Ordering::SeqCst);
    });
    let b_log = lab.log(b.proc());
    m.b_log_start_ms = log_stamp_of(&b_log, "node starting").map(|t| (t - b_unix) * 1000.0);
    m.b_log_registered_ms = registered_line(&b_log).map(|(t, _)| (t - b_unix) * 1000.0);
    let (t_end, cpu1, flood_cpu1) =
        window_end.unwrap_or_else(|| (Instant::now(), Cpu::read(w.coord_pid), 0));
    m.window_s = t_end.duration_since(t_flood).as_secs_f64();
    let d = cpu1.since(&cpu0);
    let per_s = |ticks: u64| ticks as f64 / clock_ticks() / m.window_s * 100.0;
    m.cpu_pct = per_s(d.coord_ticks);
    m.coord_wait_pct = d.coord_wait_ns as f64 / 1e9 / m.window_s * 100.0;
    m.machine_busy_pct = d.busy_pct();
    m.machine_softirq_pct = d.softirq_pct();
    m.flood_cpu_pct = per_s(flood_cpu1.saturating_sub(flood_cpu0));
    if m.rss_end_kib == 0 {
        m.rss_end_kib = rss_kib(w.coord_pid);
    }
    if let Some(p) = &flood {
        m.sent = Some(if lab.is_running(p) {
            attack::flood_stop(lab, p)
        } else {
            attack::flood_wait(lab, p, Duration::from_secs(5))
        });
    }
    m.received = attack::bytes_counted(lab, ns, "rx").packets;
    m.b_hellos = attack::bytes_counted(lab, ns, "b_hello").packets;
    m.cookies_all = attack::bytes_counted(lab, ns, "cookie_all").packets;
    m.cookies_to_b = attack::bytes_counted(lab, ns, "cookie_b").packets;
    let snmp_after = udp_snmp(lab, ns);
    let delta = |k: &str| {
        snmp_after
            .get(k)
            .unwrap_or(&0)
            .saturating_sub(*snmp_before.get(k).unwrap_or(&0))
    };
    m.rcvbuf_errors = delta("RcvbufErrors");
    m.sndbuf_errors = delta("SndbufErrors");
    m.udp_out = delta("OutDatagrams");

    if let Some(p) = &ping {
        lab.kill(p);
    }
    if m.ping_ms.is_none() && !STOP.load(Ordering::SeqCst) {
        let lines: Vec<&str> = b_log.lines().collect();
        let from = lines.len().saturating_sub(15);
        eprintln!(
            "run {run} {}: node {name} {}; last lines of its log:\n  {}",
            case.name(),
            if m.registered_ms.is_some() {
                "registered but no ping reply"
            } else {
                "did not register"
            },
            lines[from..].join("\n  ")
        );
    }
    stop_node(lab, &mut b);
    sleep_unless_stopped(SETTLE);
    m.rss_after_kib = rss_kib(w.coord_pid);

    if o.coordinator_debug {
        m.debug += &coordinator_log_summary(w, log_from, &name);
    }
    m
}

fn start_ping(lab: &Lab, ns: &str, ip: &str, name: &str) -> Proc {
    lab.spawn(
        ns,
        "ping",
        ["-n", "-D", "-i", "0.01", ip],
        &format!("ping-{name}"),
    )
}

/// The `registered ... mesh_ip=IP` line of a node's log: its time stamp (Unix seconds) and
/// the mesh IP.
fn registered_line(log: &str) -> Option<(f64, String)> {
    log.lines().find_map(|l| {
        if !l.contains(" registered ") {
            return None;
        }
        let ip = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mesh_ip="))?;
        let ip = ip.split('/').next()?.to_string();
        Some((rfc3339_unix(l.split_whitespace().next()?)?, ip))
    })
}

/// The time stamp (Unix seconds) of the first log line containing `what`.
fn log_stamp_of(log: &str, what: &str) -> Option<f64> {
    log.lines()
        .find(|l| l.contains(what))
        .and_then(|l| rfc3339_unix(l.split_whitespace().next()?))
}

/// `2026-12-01T14:37:33.167618Z` (tracing's UTC stamps) as Unix seconds.
fn rfc3339_unix(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo, da) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some(secs as f64 + frac)
}

/// `node down`, and a kill if that does not end it.
fn stop_node(lab: &Lab, n: &mut Node) {
    if !lab.is_running(n.proc()) {
        return;
    }
    let (status, _) = n.down(lab, Duration::from_secs(5));
    if status.is_none() {
        lab.kill(n.proc());
    }
}

fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The `-D` stamp of the first reply in `ping -D` output:
/// `[1700000000.123456] 64 bytes from 100.64.0.1: icmp_seq=7 ttl=64 time=0.9 ms`.
fn first_reply_stamp(log: &str) -> Option<f64> {
    log.lines().find_map(|l| {
        if !l.contains("bytes from") {
            return None;
        }
        l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok()
    })
}

// ---------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------

/// CPU counters at one moment: the coordinator's (all threads) and the machine's.
struct Cpu {
    coord_ticks: u64,
    coord_wait_ns: u64,
    /// `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal.
    machine: Vec<u64>,
}

impl Cpu {
    fn read(pid: u32) -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let machine = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(8)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Cpu {
            coord_ticks: cpu_ticks(pid),
            coord_wait_ns: run_queue_wait_ns(pid),
            machine,
        }
    }

    /// The difference from `earlier`.
    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            coord_ticks: self.coord_ticks.saturating_sub(earlier.coord_ticks),
            coord_wait_ns: self.coord_wait_ns.saturating_sub(earlier.coord_wait_ns),
            machine: self
                .machine
                .iter()
                .zip(earlier.machine.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    fn machine_total(&self) -> f64 {
        self.machine.iter().sum::<u64>().max(1) as f64
    }

    /// Busy (not idle, not iowait) share of all cores, %.
    fn busy_pct(&self) -> f64 {
        let idle = self.machine.get(3).unwrap_or(&0) + self.machine.get(4).unwrap_or(&0);
        (self.machine_total() - idle as f64) / self.machine_total() * 100.0
    }

    /// Softirq share of all cores, %.
    fn softirq_pct(&self) -> f64 {
        *self.machine.get(6).unwrap_or(&0) as f64 / self.machine_total() * 100.0
    }
}

/// Nanoseconds the process's threads spent waiting on a run queue (schedstat, summed over
/// the threads that exist now).
fn run_queue_wait_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// VmRSS in KiB (0 when the process is gone).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `Udp:` counters of /proc/net/snmp in namespace `ns`.
fn udp_snmp(lab: &Lab, ns: &str) -> BTreeMap<String, u64> {
    let out = lab.exec(ns, "cat", ["/proc/net/snmp"]);
    let text = stdout(&out);
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut map = BTreeMap::new();
    if let [names, values, ..] = udp[..] {
        for (k, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            if let Ok(v) = v.parse() {
                map.insert(k.to_string(), v);
            }
        }
    }
    map
}

/// With `--coordinator-debug`: what the coordinator logged during the case (from byte
/// `from` of its log): "dropped datagram" reasons with counts, and its lines about b.
/// With `--coordinator-debug`, mid-flood: the coordinator socket's memory (`ss -m`: `r`/`rb`
/// receive queue and buffer, `t`/`tb` send queue and buffer, `d` drops) and the states of
/// its neighbour entries (answers to forged sources wait for ARP that never comes, and
/// hold send buffer meanwhile).
fn socket_sample(w: &World) -> String {
    let ns = &w.coord.host.ns;
    let port = lanmesh_e2e::mesh::COORDINATOR_PORT;
    let ss = stdout(&w.lab.exec(
        ns,
        "ss",
        ["-u", "-a", "-m", "-n", "-H", &format!("sport = :{port}")],
    ));
    let skmem = ss
        .split_whitespace()
        .find(|x| x.starts_with("skmem:"))
        .unwrap_or("?")
        .to_string();
    format!("socket {skmem}; neighbours {:?}", neighbour_states(w))
}

fn neighbour_states(w: &World) -> BTreeMap<String, u64> {
    let neigh = stdout(&w.lab.exec(&w.coord.host.ns, "ip", ["neigh", "show"]));
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    for l in neigh.lines() {
        if let Some(st) = l.split_whitespace().last() {
            *states.entry(st.to_string()).or_default() += 1;
        }
    }
    states
}

/// With `--coordinator-debug`: what the coordinator logged during the case (from byte
/// `from` of its log): "dropped datagram" reasons with counts, and its lines about b.
fn coordinator_log_summary(w: &World, from: u64, b_name: &str) -> String {
    let log = std::fs::read(w.coord.proc().log_path()).unwrap_or_default();
    let text = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default());
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut about_b = Vec::new();
    for l in text.lines() {
        if let Some((_, why)) = l.split_once("dropped datagram: ") {
            let why = why.split(" src=").next().unwrap_or(why).trim();
            *reasons.entry(why.to_string()).or_default() += 1;
        }
        if l.contains(&format!("{B_IP}:")) || l.contains(b_name) {
            about_b.push(l.to_string());
        }
    }
    let mut out = String::from(
        "      coordinator log during the case (drop lines are a sample: 5 a second):\n",
    );
    for (why, n) in &reasons {
        out += &format!("        {n:5} x dropped: {why}\n");
    }
    for l in about_b.iter().take(20) {
        out += &format!("        | {l}\n");
    }
    if about_b.len() > 20 {
        out += &format!("        | ... {} more lines about b\n", about_b.len() - 20);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn fmt_ms(t: Option<f64>) -> String {
    match t {
        Some(t) if t.is_finite() => format!("{t:.0}"),
        _ => "never".to_string(),
    }
}

fn fmt_pps(sent: &Option<Sent>) -> String {
    match sent {
        Some(s) => format!("{:.0}", s.pps()),
        None => "-".to_string(),
    }
}

fn print_run(run: u32, case: Case, m: &Measured) {
    println!(
        "run {run} {:<13} flood {:>6} pps, {:>7} rx at coordinator, {:>7} RcvbufErrors; \
         b registered {:>5} ms (its log: start +{}, registered +{}), first ping {:>5} ms; \
         b Hellos in {}, cookie replies to b {} (all {}); UDP out {}, SndbufErrors {}",
        case.name(),
        fmt_pps(&m.sent),
        m.received,
        m.rcvbuf_errors,
        fmt_ms(m.registered_ms),
        fmt_ms(m.b_log_start_ms),
        fmt_ms(m.b_log_registered_ms),
        fmt_ms(m.ping_ms),
        m.b_hellos,
        m.cookies_to_b,
        m.cookies_all,
        m.udp_out,
        m.sndbuf_errors,
    );
    println!(
        "      coordinator CPU {:.1}% (run-queue wait {:.1}%; read {} datagrams, {:.1} µs each), RSS {:.1}/{:.1}/{:.1} MiB (max {:.1}); \
         flooder CPU {:.1}%; machine busy {:.1}% of all cores (softirq {:.1}%) over {:.1} s",
        m.cpu_pct,
        m.coord_wait_pct,
        m.processed(),
        m.us_per_datagram(),
        mib(m.rss_before_kib),
        mib(m.rss_end_kib),
        mib(m.rss_after_kib),
        mib(m.rss_max_kib),
        m.flood_cpu_pct,
        m.machine_busy_pct,
        m.machine_softirq_pct,
        m.window_s,
    );
    print!("{}", m.debug);
}

/// Median of values; `None` (never happened) counts as +infinity.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn med(ms: &[Measured], f: impl Fn(&Measured) -> f64) -> f64 {
    median(ms.iter().map(f).collect())
}

fn med_opt(ms: &[Measured], f: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
    let m = median(ms.iter().map(|m| f(m).unwrap_or(f64::INFINITY)).collect());
    m.is_finite().then_some(m)
}

fn report(o: &Opts, results: &[(Case, Vec<Measured>)]) {
    println!();
    println!(
        "medians over {} run(s) of {} pps floods; goals: b registered <= {JOIN_GOAL_MS:.0} ms, first ping <= \
         {PING_GOAL_MS:.0} ms, RSS at the end of and after the flood <= before + {} MiB",
        o.runs,
        o.pps,
        RSS_FLAT_KIB / 1024
    );
    println!(
        "{:<30} | {:>9} | {:>14} | {:>14} | {:>8} | {:>22} | goals",
        "case", "flood pps", "b registered", "b first ping", "coord", "coordinator RSS MiB"
    );
    println!(
        "{:<30} | {:>9} | {:>14} | {:>14} | {:>8} | {:>22} |",
        "", "achieved", "ms: poll (log)", "after (ms)", "CPU %", "before / end / after"
    );
    println!("{}", "-".repeat(30 + 9 + 14 + 14 + 8 + 22 + 3 * 6 + 12));
    for (case, ms) in results {
        if ms.is_empty() {
            continue;
        }
        let pps = if *case == Case::Baseline {
            "-".to_string()
        } else {
            format!("{:.0}", med(ms, |m| m.sent.as_ref().map_or(0.0, Sent::pps)))
        };
        let reg = med_opt(ms, |m| m.registered_ms);
        let reg_log = med_opt(ms, |m| m.b_log_registered_ms);
        let ping = med_opt(ms, |m| m.ping_ms);
        let before = med(ms, |m| m.rss_before_kib as f64);
        let end = med(ms, |m| m.rss_end_kib as f64);
        let after = med(ms, |m| m.rss_after_kib as f64);
        let flat = ms.iter().all(Measured::rss_flat);
        let ok_runs = ms.iter().filter(|m| m.meets_goals()).count();
        let med_ok = reg.is_some_and(|t| t <= JOIN_GOAL_MS)
            && ping.is_some_and(|t| t <= PING_GOAL_MS)
            && flat;
        let mut why = Vec::new();
        if !reg.is_some_and(|t| t <= JOIN_GOAL_MS) {
            why.push("join");
        }
        if !ping.is_some_and(|t| t <= PING_GOAL_MS) {
            why.push("ping");
        }
        if !flat {
            why.push("memory");
        }
        println!(
            "{:<30} | {:>9} | {:>14} | {:>14} | {:>8.1} | {:>6.1} / {:>5.1} / {:>5.1} | {} ({ok_runs}/{} runs){}",
            case.describe(),
            pps,
            format!("{} ({})", fmt_ms(reg), fmt_ms(reg_log)),
            fmt_ms(ping),
            med(ms, |m| m.cpu_pct),
            before / 1024.0,
            end / 1024.0,
            after / 1024.0,
            if med_ok { "MET" } else { "MISSED" },
            ms.len(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join(", "))
            }
        );
    }
    println!();
    println!(
        "diagnostics (medians): in the coordinator's namespace over the case (datagrams for its \
         port arriving, dropped at its socket for a full receive buffer, its sends failed for a \
         full send buffer, b's Hellos arriving, 64-byte answers = cookie replies sent), and CPU \
         over the flood window (coordinator run-queue wait and CPU time per datagram it read, \
         the flooder's CPU, the machine)"
    );
    let head = [
        ("case", ""),
        ("rx", ""),
        ("RcvbufErr", ""),
        ("SndbufErr", ""),
        ("b Hellos", "in"),
        ("cookies", "to b"),
        ("cookies", "(all)"),
        ("RSS max", "MiB"),
        ("coord", "rq wait"),
        ("coord", "us/dgram"),
        ("flooder", "CPU %"),
        ("machine", "busy %"),
        ("softirq", "%"),
    ];
    for row in [0, 1] {
        let cells: Vec<String> = head
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let t = if row == 0 { h.0 } else { h.1 };
                if i == 0 {
                    format!("{t:<30}")
                } else {
                    format!("{t:>9}")
                }
            })
            .collect();
        println!("{}", cells.join(" | "));
    }
    for (case, ms) in results {
        if ms.is_empty() {
            continue;
        }
        let mut cells = vec![format!("{:<30}", case.describe())];
        let int = |f: &dyn Fn(&Measured) -> u64| format!("{:>9.0}", med(ms, |m| f(m) as f64));
        let dec = |f: &dyn Fn(&Measured) -> f64| format!("{:>9.1}", med(ms, f));
        cells.push(int(&|m| m.received));
        cells.push(int(&|m| m.rcvbuf_errors));
        cells.push(int(&|m| m.sndbuf_errors));
        cells.push(int(&|m| m.b_hellos));
        cells.push(int(&|m| m.cookies_to_b));
        cells.push(int(&|m| m.cookies_all));
        cells.push(dec(&|m| mib(m.rss_max_kib)));
        cells.push(dec(&|m| m.coord_wait_pct));
        cells.push(if *case == Case::Baseline {
            format!("{:>9}", "-")
        } else {
            dec(&Measured::us_per_datagram)
        });
        cells.push(dec(&|m| m.flood_cpu_pct));
        cells.push(dec(&|m| m.machine_busy_pct));
        cells.push(dec(&|m| m.machine_softirq_pct));
        println!("{}", cells.join(" | "));
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn log_and_ping_lines_parse() {
        assert_eq!(
            rfc3339_unix("2026-12-01T14:37:33.167618Z"),
            Some(1_796_135_853.167_618)
        );
        assert_eq!(rfc3339_unix("2024-02-29T00:00:00Z"), Some(1_709_164_800.0));
        assert_eq!(rfc3339_unix("14:37:33"), None);
        let log = "2026-12-01T14:37:33.147300Z  INFO node starting; registering with the coordinator\n\
                   2026-12-01T14:37:33.167618Z  INFO registered name=b1 mesh_ip=100.64.0.4/10 network=100.64.0.0/10\n";
        let (t, ip) = registered_line(log).unwrap();
        assert_eq!(ip, "100.64.0.4");
        assert!((t - 1_796_135_853.167_618).abs() < 1e-6);
        assert!((log_stamp_of(log, "node starting").unwrap() - 1_796_135_853.147_3).abs() < 1e-6);
        assert!(registered_line("2026-12-01T14:37:33.1Z WARN not registered yet").is_none());
        assert_eq!(
            first_reply_stamp(
                "PING 100.64.0.6 (100.64.0.6) 56(84) bytes of data.\n\
                 [1796135982.469148] 64 bytes from 100.64.0.6: icmp_seq=119 ttl=64 time=2.09 ms\n"
            ),
            Some(1_796_135_982.469_148)
        );
    }

    #[test]
    fn medians_count_never_as_slowest() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let run = |t: Option<f64>| Measured {
            registered_ms: t,
            ..Measured::default()
        };
        let ms = [run(Some(100.0)), run(None), run(Some(300.0))];
        assert_eq!(med_opt(&ms, |m| m.registered_ms), Some(300.0));
        let ms = [run(None), run(None), run(Some(300.0))];
        assert_eq!(med_opt(&ms, |m| m.registered_ms), None);
    }
}
