//! `lanmesh-bench-first-ping`: how long after `node up` of a second node its first ping
//! to the first node is answered, through two port-restricted cone NATs. Run it through
//! `bench/first-ping.sh` (needs root: network namespaces).
//!
//! ```text
//! lanmesh-bench-first-ping [--runs N] [--timeout SECS]
//! ```
//!
//! Every run builds a fresh lab (coordinator on the switch, node a behind router ra,
//! node b behind router rb, both port-restricted), starts a, waits until it has joined,
//! then starts `ping -i 0.01 -D` from b's namespace to a's mesh IP together with b's
//! `node up`. The time is from just before b's `node up` was spawned to the receive
//! timestamp of the first reply. Prints each run, then the median and the maximum.
//! Binaries: `$LANMESH_BIN_DIR` (coordinator, node), as for the tests.

use lanmesh_e2e::mesh::{Coordinator, Node, MESH_TIMEOUT};
use lanmesh_e2e::{median, require_root, Lab, Nat};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn usage() -> ! {
    eprintln!("usage: lanmesh-bench-first-ping [--runs N] [--timeout SECS]");
    std::process::exit(2);
}

fn main() {
    let mut runs = 10u32;
    let mut timeout = 30u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--runs" => runs = v.parse().unwrap_or_else(|_| usage()),
            "--timeout" => timeout = v.parse().unwrap_or_else(|_| usage()),
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

    println!("first ping through two port-restricted cone NATs, {runs} runs");
    let mut times = Vec::new();
    let mut failures = 0;
    for run in 1..=runs {
        if STOP.load(Ordering::SeqCst) {
            eprintln!("interrupted");
            break;
        }
        match one_run(run, Duration::from_secs(timeout)) {
            Some(t) => {
                println!("run {run:2}: {:7.1} ms", t * 1000.0);
                times.push(t);
            }
            None if STOP.load(Ordering::SeqCst) => {
                eprintln!("interrupted");
                break;
            }
            None => {
                println!("run {run:2}: no reply within {timeout} s");
                failures += 1;
            }
        }
    }
    if times.is_empty() {
        println!("no successful run");
        std::process::exit(1);
    }
    let median = median(&mut times).expect("not empty");
    let n = times.len();
    println!(
        "median {:.1} ms, max {:.1} ms, min {:.1} ms ({n} runs{})",
        median * 1000.0,
        times[n - 1] * 1000.0,
        times[0] * 1000.0,
        if failures > 0 {
            format!(", {failures} without a reply")
        } else {
            String::new()
        }
    );
    if failures > 0 {
        std::process::exit(1);
    }
}

/// One measurement in a fresh lab (dropped, with its namespaces, at the end); seconds.
fn one_run(run: u32, timeout: Duration) -> Option<f64> {
    let lab = Lab::new(&format!("bench{run}"));
    let coord_host = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &coord_host, &[]);
    let key = coord.create_key(&lab, &["--reusable"]);
    let ra = lab.add_router("ra", "203.0.113.21", Nat::PortRestricted);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::PortRestricted);
    let ha = lab.add_host_behind(&ra, "a", 2);
    let hb = lab.add_host_behind(&rb, "b", 2);
    let args = ["--interface", "lm0"];

    let mut a = Node::new(&lab, &ha, "a", &coord.addr);
    a.up(&lab, Some(&key), &args);
    let sa = a.wait_status(&lab, MESH_TIMEOUT, "joined (has a mesh IP)", |s| {
        !s.mesh_ip.is_empty()
    });

    let mut b = Node::new(&lab, &hb, "b", &coord.addr);
    let started = SystemTime::now();
    let t0 = Instant::now();
    b.up(&lab, Some(&key), &args);
    // No -w: with a deadline, ping gives up at the first ICMP error (b's router answers
    // "net unreachable" until b's mesh route exists). The loop below ends it.
    let ping = lab.spawn(
        &hb.ns,
        "ping",
        ["-n", "-D", "-i", "0.01", &sa.mesh_ip],
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
