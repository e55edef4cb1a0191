//! `lanmesh-bench-relay`: what a relay costs. Run it through `bench/relay.sh` (needs root:
//! network namespaces).
//!
//! ```text
//! lanmesh-bench-relay [--runs N] [--seconds S] [--repeat R] [--timeout SECS]
//!                     [--skip-throughput] [--skip-ping]
//! ```
//!
//! 1. Single-stream TCP throughput from node a to node b over the mesh for S seconds
//!    (default 10), R rounds (default 3; each a fresh lab; the medians are compared), with
//!    iperf3 when it is installed, else with `lanmesh-testkit send --seconds`:
//!    - direct: a and b behind port-restricted cone NATs, no relay in the mesh (the pair
//!      punches through);
//!    - relayed: a and b behind symmetric NATs (no punching possible), one relay.
//!
//!    Both labs have the same layout and the same namespaces (coordinator, routers ra/rb,
//!    hosts a/b, plus the relay in the second); the path is checked before and after.
//! 2. Time to the first ping through the relay, N runs (default 10), each in a fresh lab:
//!    a and b behind symmetric NATs, one relay; a is up and bound to the relay, then b's
//!    `node up` is spawned together with `ping -i 0.01 -D` from b to a's mesh IP. The time is
//!    from just before the spawn to the receive stamp of the first reply.
//!
//! Binaries: `$LANMESH_BIN_DIR` (coordinator, node, relay), as for the tests.

use lanmesh_e2e::mesh::{Coordinator, Node, Relay, Status, MESH_TIMEOUT};
use lanmesh_e2e::{require_root, stdout, testkit, wait_until, Host, Lab, Nat};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const USAGE: &str = "usage: lanmesh-bench-relay [--runs N] [--seconds S] [--repeat R] \
                     [--timeout SECS] [--skip-throughput] [--skip-ping]";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

struct Opts {
    runs: u32,
    seconds: u64,
    repeat: u32,
    timeout: u64,
    throughput: bool,
    ping: bool,
}

fn main() {
    let mut o = Opts {
        runs: 10,
        seconds: 10,
        repeat: 3,
        timeout: 30,
        throughput: true,
        ping: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--runs" => o.runs = num() as u32,
            "--seconds" => o.seconds = num().max(1),
            "--repeat" => o.repeat = (num() as u32).max(1),
            "--timeout" => o.timeout = num(),
            "--skip-throughput" => o.throughput = false,
            "--skip-ping" => o.ping = false,
            _ => usage(),
        }
    }
    if !require_root() {
        std::process::exit(1);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut ok = true;
    if o.throughput {
        ok &= throughput(&o);
    }
    if o.ping && !STOP.load(Ordering::SeqCst) {
        ok &= first_pings(&o);
    }
    if !ok {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Labs
// ---------------------------------------------------------------------------------------

/// A lab with the coordinator, optionally relay r1, and nodes a and b behind routers of
/// kind `nat`. Node b is not started.
struct Mesh {
    lab: Lab,
    coord: Coordinator,
    key: String,
    relay: Option<Relay>,
    hb: Host,
    a: Node,
    sa: Status,
}

fn mesh(tag: &str, nat: Nat, with_relay: bool) -> Mesh {
    let lab = Lab::new(tag);
    let coord_host = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &coord_host, &[]);
    let key = coord.create_key(&lab, &["--reusable"]);
    let relay = with_relay.then(|| {
        let relay_key = coord.create_key(&lab, &["--relay", "--reusable"]);
        let h = lab.add_host("relayr1", "203.0.113.30");
        let r = Relay::start(&lab, &h, "r1", &coord.addr, &relay_key, &[]);
        r.wait_status(&lab, MESH_TIMEOUT, "connected", |s| s.coordinator_connected);
        r
    });
    let ra = lab.add_router("ra", "203.0.113.21", nat);
    let rb = lab.add_router("rb", "203.0.113.22", nat);
    let ha = lab.add_host_behind(&ra, "a", 2);
    let hb = lab.add_host_behind(&rb, "b", 2);
    let mut a = Node::new(&lab, &ha, "a", &coord.addr);
    a.up(&lab, Some(&key), &node_args("41641"));
    let sa = a.wait_status(&lab, MESH_TIMEOUT, "joined, bound to every relay", |s| {
        !s.mesh_ip.is_empty()
            && s.relays.len() == usize::from(with_relay)
            && s.relays.iter().all(|(_, rtt)| rtt.is_some())
    });
    Mesh {
        lab,
        coord,
        key,
        relay,
        hb,
        a,
        sa,
    }
}

fn node_args(port: &str) -> [&str; 4] {
    ["--interface", "lm0", "--port", port]
}

impl Mesh {
    fn start_b(&self) -> Node {
        let mut b = Node::new(&self.lab, &self.hb, "b", &self.coord.addr);
        b.up(&self.lab, Some(&self.key), &node_args("41700"));
        b
    }
}

// ---------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------

fn have_iperf3() -> bool {
    std::process::Command::new("iperf3")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One throughput measurement a -> b in Mbit/s, with the path it must use.
fn measure(o: &Opts, tag: &str, nat: Nat, with_relay: bool, path: &str) -> Option<f64> {
    let m = mesh(tag, nat, with_relay);
    let lab = &m.lab;
    let b = m.start_b();
    let sb = b.wait_peers(lab, 1, MESH_TIMEOUT);
    m.a.wait_peers(lab, 1, MESH_TIMEOUT);
    // Traffic both ways first (a relayed path only comes with traffic).
    for (from, ip) in [(&m.a, &sb.mesh_ip), (&b, &m.sa.mesh_ip)] {
        wait_until(MESH_TIMEOUT, "a first ping", || {
            lab.ping(&from.host.ns, ip, 1)
        });
    }
    m.a.wait_path(lab, "b", path, MESH_TIMEOUT);
    b.wait_path(lab, "a", path, MESH_TIMEOUT);
    let before = m.relay.as_ref().and_then(|r| r.status(lab));

    let secs = o.seconds.to_string();
    let mbps = if have_iperf3() {
        let server = lab.spawn(
            &b.host.ns,
            "iperf3",
            ["-s", "-1", "-B", &sb.mesh_ip, "-p", "5201"],
            "iperf3-server",
        );
        wait_until(Duration::from_secs(10), "iperf3 server to listen", || {
            lab.listening(&b.host.ns, 5201)
        });
        let out = lab.exec_timeout(
            &m.a.host.ns,
            "iperf3",
            ["-c", &sb.mesh_ip, "-p", "5201", "-t", &secs, "-J"],
            Duration::from_secs(o.seconds + 30),
        );
        let _ = lab.wait_exit(&server, Duration::from_secs(5));
        let text = stdout(&out);
        let json: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{tag}: iperf3 printed no JSON ({e}):\n{text}");
                return None;
            }
        };
        let end = &json["end"];
        let rx = end["sum_received"]["bits_per_second"].as_f64();
        let retr = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        match rx {
            Some(bps) => {
                println!(
                    "  {tag}: iperf3 {secs} s: {:.1} Mbit/s received, {retr} retransmits",
                    bps / 1e6
                );
                bps / 1e6
            }
            None => {
                eprintln!("{tag}: iperf3 failed: {text}");
                return None;
            }
        }
    } else {
        let tk = testkit();
        let addr = format!("{}:5201", sb.mesh_ip);
        let recv = lab.spawn(&b.host.ns, &tk, ["recv", "--listen", &addr], "recv");
        wait_until(Duration::from_secs(10), "testkit recv to listen", || {
            lab.listening(&b.host.ns, 5201)
        });
        let start = Instant::now();
        let out = lab.exec_timeout(
            &m.a.host.ns,
            &tk,
            [
                "send",
                "--to",
                &addr,
                "--bytes",
                "100000000000",
                "--seconds",
                &secs,
            ],
            Duration::from_secs(o.seconds + 30),
        );
        let took = start.elapsed().as_secs_f64();
        let _ = lab.wait_exit(&recv, Duration::from_secs(10));
        let Some((bytes, _)) = lanmesh_e2e::transfer_result(&stdout(&out)) else {
            eprintln!("{tag}: testkit send failed: {}", lanmesh_e2e::stderr(&out));
            return None;
        };
        let mbps = bytes as f64 * 8.0 / took / 1e6;
        println!("  {tag}: testkit {secs} s: {bytes} bytes, {mbps:.1} Mbit/s");
        mbps
    };

    // Still on the same path, and (relayed) the relay carried it.
    for (n, peer) in [(&m.a, "b"), (&b, "a")] {
        let s = n.status(lab)?;
        let p = s.peer(peer)?;
        if p.path != path {
            eprintln!(
                "{tag}: {} left the {path} path during the measurement: {}",
                n.name, s.raw
            );
            return None;
        }
    }
    if let (Some(r), Some(before)) = (&m.relay, before) {
        let after = r.status(lab)?;
        println!(
            "  {tag}: the relay forwarded {:.1} MB",
            (after.bytes_forwarded - before.bytes_forwarded) as f64 / 1e6
        );
    }
    Some(mbps)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn throughput(o: &Opts) -> bool {
    println!(
        "single-stream TCP throughput a -> b over the mesh, {} s each, {} rounds ({})",
        o.seconds,
        o.repeat,
        if have_iperf3() {
            "iperf3"
        } else {
            "lanmesh-testkit; install iperf3 for iperf3 figures"
        }
    );
    let mut direct = Vec::new();
    let mut relayed = Vec::new();
    for round in 1..=o.repeat {
        // Alternating, so that a slow spell of the machine hits both kinds.
        for (list, tag, nat, with_relay, path) in [
            (
                &mut direct,
                "bthdirect",
                Nat::PortRestricted,
                false,
                "direct",
            ),
            (&mut relayed, "bthrelay", Nat::Symmetric, true, "relay"),
        ] {
            if STOP.load(Ordering::SeqCst) {
                return false;
            }
            match measure(o, &format!("{tag}{round}"), nat, with_relay, path) {
                Some(mbps) => list.push(mbps),
                None => {
                    println!("throughput: a measurement failed");
                    return false;
                }
            }
        }
    }
    let (d, r) = (median(direct), median(relayed));
    println!(
        "throughput (median of {}): direct {d:.1} Mbit/s, relayed {r:.1} Mbit/s: relayed is \
         {:.0}% of direct (target >= 50%)",
        o.repeat,
        r / d * 100.0
    );
    true
}

// ---------------------------------------------------------------------------------------
// First ping through the relay
// ---------------------------------------------------------------------------------------

fn first_pings(o: &Opts) -> bool {
    println!(
        "first ping through the relay (two symmetric NATs), {} runs",
        o.runs
    );
    let mut times = Vec::new();
    let mut failures = 0;
    for run in 1..=o.runs {
        if STOP.load(Ordering::SeqCst) {
            eprintln!("interrupted");
            break;
        }
        match first_ping(run, Duration::from_secs(o.timeout)) {
            Some(t) => {
                println!("run {run:2}: {:7.1} ms", t * 1000.0);
                times.push(t);
            }
            None if STOP.load(Ordering::SeqCst) => {
                eprintln!("interrupted");
                break;
            }
            None => {
                println!("run {run:2}: no reply within {} s", o.timeout);
                failures += 1;
            }
        }
    }
    if times.is_empty() {
        println!("no successful run");
        return false;
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = median(times.clone());
    println!(
        "first ping via the relay: median {:.1} ms, max {:.1} ms, min {:.1} ms ({n} runs{}; \
         target < 2000 ms)",
        median * 1000.0,
        times[n - 1] * 1000.0,
        times[0] * 1000.0,
        if failures > 0 {
            format!(", {failures} without a reply")
        } else {
            String::new()
        }
    );
    failures == 0
}

/// One measurement in a fresh lab; seconds.
fn first_ping(run: u32, timeout: Duration) -> Option<f64> {
    let m = mesh(&format!("bfp{run}"), Nat::Symmetric, true);
    let lab = &m.lab;
    let started = SystemTime::now();
    let t0 = Instant::now();
    let b = m.start_b();
    // No -w: ping would give up at the first ICMP error (before b's mesh route exists).
    let ping = lab.spawn(
        &m.hb.ns,
        "ping",
        ["-n", "-D", "-i", "0.01", &m.sa.mesh_ip],
        "ping",
    );
    let start_unix = started
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    loop {
        // "[1700000000.123456] 64 bytes from 100.64.0.1: icmp_seq=7 ttl=64 time=0.9 ms"
        let log = lab.log(&ping);
        if let Some(ts) = log.lines().find_map(|l| {
            if !l.contains("bytes from") {
                return None;
            }
            l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok()
        }) {
            lab.kill(&ping);
            // It must have gone through the relay (symmetric NATs cannot be punched).
            let s = b.status(lab);
            let path = s
                .as_ref()
                .and_then(|s| s.peer("a"))
                .map(|p| p.path.clone())
                .unwrap_or_default();
            if path != "relay" {
                eprintln!("run {run}: b's path to a is {path:?}, not \"relay\"");
            }
            return Some((ts - start_unix).max(0.0));
        }
        if STOP.load(Ordering::SeqCst) {
            return None;
        }
        if !lab.is_running(&ping) || t0.elapsed() > timeout {
            lab.kill(&ping);
            eprintln!("run {run}: no reply; node b log:\n{}", lab.log(b.proc()));
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
