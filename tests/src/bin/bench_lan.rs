//! `lanmesh-bench-lan`: LAN-game discovery over the mesh. Run it through `bench/lan.sh`
//! (needs root: network namespaces).
//!
//! ```text
//! lanmesh-bench-lan [--servers 2,8] [--runs N] [--pps 1000] [--seconds S]
//! ```
//!
//! For each server count N, one lab: a coordinator and N + 1 nodes on the switch (direct
//! paths), a game server (`lanmesh-lan-game server`, bound to 0.0.0.0) on N of them and a LAN
//! browser on the other, which broadcasts a query to 255.255.255.255 every 250 ms until all
//! N servers answered by unicast. Measured: the time from the first query to the last
//! answer, once with every tunnel idle (the query builds them: a handshake per peer), then
//! `--runs` times with the tunnels up; median and max.
//!
//! Then the cost of fan-out: the browser's node (limit raised to `--pps`) carries a
//! broadcast stream of `--pps` packets a second (64-byte payloads) to its N peers for
//! `--seconds` s; the node daemon's CPU time (utime + stime, /proc/PID/stat) per second, per
//! packet and per copy sent, and what the peers' counters say arrived; and for scale the
//! same rate of unicast packets to one peer. Last, names: the time from a new node's `node
//! up` to its name resolving (`getent hosts late.mesh`, /etc/hosts) on the browser's node.
//! Binaries: `$LANMESH_BIN_DIR` (coordinator, node) and the lanmesh-lan-game beside this one.

use lanmesh_e2e::mesh::{Coordinator, Node, MESH_TIMEOUT};
use lanmesh_e2e::{clock_ticks, cpu_ticks_split, median, require_root, stdout, wait_until, Lab};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PORT: &str = "27960";

fn usage() -> ! {
    eprintln!("usage: lanmesh-bench-lan [--servers 2,8] [--runs N] [--pps N] [--seconds S]");
    std::process::exit(2);
}

fn game() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("lanmesh-lan-game")
}

fn main() {
    let mut servers = vec![2usize, 8];
    let mut runs = 5u32;
    let mut pps = 1000u32;
    let mut seconds = 10u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--servers" => {
                servers = v
                    .split(',')
                    .map(|n| n.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--runs" => runs = v.parse().unwrap_or_else(|_| usage()),
            "--pps" => pps = v.parse().unwrap_or_else(|_| usage()),
            "--seconds" => seconds = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if !require_root() {
        std::process::exit(1);
    }
    println!(
        "LAN discovery over the mesh: broadcast query to 255.255.255.255, N servers answer by unicast; {} CPU cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for n in servers {
        one_lab(n, runs, pps, seconds);
    }
}

/// `found N in MS` of a browse, if all `expect` answered.
fn browse(lab: &Lab, ns: &str, expect: usize) -> Option<f64> {
    let out = lab.exec_timeout(
        ns,
        game(),
        [
            "browse",
            "--port",
            PORT,
            "--to",
            "255.255.255.255",
            "--expect",
            &expect.to_string(),
            "--wait-ms",
            "15000",
        ],
        Duration::from_secs(30),
    );
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("found "))?;
    let mut words = line.split_whitespace().skip(1);
    let found: usize = words.next()?.parse().ok()?;
    let ms: f64 = words.nth(1)?.parse().ok()?;
    (found >= expect).then_some(ms)
}

fn summary(times: &mut [f64]) -> String {
    let Some(median) = median(times) else {
        return "no successful run".into();
    };
    format!(
        "median {median:.1} ms, max {:.1} ms ({} runs)",
        times[times.len() - 1],
        times.len()
    )
}

fn counter(s: &Value, key: &str) -> u64 {
    s.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn one_lab(n: usize, runs: u32, pps: u32, seconds: u64) {
    let lab = Lab::new(&format!("benchlan{n}"));
    let ch = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &ch, &[]);
    let key = coord.create_key(&lab, &["--reusable"]);
    let pps_arg = pps.min(1000).to_string();
    let mut nodes = Vec::new();
    for i in 0..=n {
        let name = if i == 0 {
            "browser".to_string()
        } else {
            format!("s{i}")
        };
        let host = lab.add_host(&name, &format!("203.0.113.{}", 20 + i));
        let mut node = Node::new(&lab, &host, &name, &coord.addr);
        // Limits raised (sending and receiving) so that the whole stream goes through.
        // The browser's node writes peer names to its namespace's own /etc/hosts.
        let args = [
            "--interface",
            "lm0",
            "--dns",
            if i == 0 { "hosts" } else { "off" },
            "--lan-broadcast-pps",
            &pps_arg,
            "--lan-broadcast-kbit",
            "100000",
        ];
        node.up(&lab, Some(&key), &args);
        nodes.push(node);
    }
    for node in &nodes {
        node.wait_peers(&lab, n, MESH_TIMEOUT);
    }
    for node in &nodes[1..] {
        let name = format!("server-{}", node.name);
        lab.spawn(
            &node.host.ns,
            game(),
            ["server", "--port", PORT, "--name", &name],
            &name,
        );
    }
    wait_until(MESH_TIMEOUT, "servers listening", || {
        nodes[1..]
            .iter()
            .all(|s| lab.listening(&s.host.ns, PORT.parse().unwrap()))
    });
    let browser = &nodes[0];
    let cold = browse(&lab, &browser.host.ns, n);
    let mut warm = Vec::new();
    for _ in 0..runs {
        if let Some(ms) = browse(&lab, &browser.host.ns, n) {
            warm.push(ms);
        }
    }
    println!(
        "N = {n}: query to last answer: idle tunnels {}; tunnels up: {}",
        cold.map_or("no answer from all".to_string(), |ms| format!("{ms:.1} ms")),
        summary(&mut warm)
    );

    // Fan-out cost: `pps` broadcasts a second from the browser's node to its N peers; and,
    // for scale, the same rate of unicast packets to one peer.
    let bcast = stream(&lab, &nodes, "255.255.255.255:27961", pps, seconds);
    let copies = bcast.sent * n as u64;
    println!(
        "N = {n}: fan-out of {pps} broadcasts/s for {seconds} s: node sent {} ({} over its limit), \
         {copies} copies, peers took in {}; node CPU {:.1}% of a core ({:.1}% user), \
         {:.1} µs per broadcast, {:.1} µs per copy",
        bcast.sent,
        bcast.dropped,
        bcast.peers_rx,
        bcast.cpu_pct(),
        bcast.user_pct(),
        bcast.cpu_s * 1e6 / bcast.sent.max(1) as f64,
        bcast.cpu_s * 1e6 / copies.max(1) as f64,
    );
    let peer = nodes[1].status(&lab).map(|s| s.mesh_ip).unwrap_or_default();
    let uni = stream(&lab, &nodes, &format!("{peer}:27961"), pps, seconds);
    let packets = (pps as u64 * seconds) as f64;
    println!(
        "N = {n}: for scale, {pps} unicast packets/s to one peer: node CPU {:.1}% of a core \
         ({:.1}% user), {:.1} µs per packet",
        uni.cpu_pct(),
        uni.user_pct(),
        uni.cpu_s * 1e6 / packets,
    );
    // Names: from a new node's `node up` to its name resolving on the browser's node.
    let late_host = lab.add_host("late", "203.0.113.99");
    let mut late = Node::new(&lab, &late_host, "late", &coord.addr);
    let started = Instant::now();
    late.up(&lab, Some(&key), &["--interface", "lm0", "--dns", "off"]);
    let mut resolved_after = None;
    while started.elapsed() < Duration::from_secs(20) {
        let out = lab.exec(&browser.host.ns, "getent", ["hosts", "late.mesh"]);
        if out.status.success() {
            resolved_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let registered = late
        .status(&lab)
        .map(|s| !s.mesh_ip.is_empty())
        .unwrap_or(false);
    println!(
        "N = {n}: a new node's name resolved on another node {} after its `node up`{}",
        resolved_after.map_or("never (20 s)".into(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1000.0
        )),
        if registered {
            ""
        } else {
            " (it did not register)"
        }
    );
}

struct Stream {
    sent: u64,
    dropped: u64,
    peers_rx: u64,
    cpu_s: f64,
    user_s: f64,
    elapsed: f64,
}

impl Stream {
    fn cpu_pct(&self) -> f64 {
        self.cpu_s / self.elapsed * 100.0
    }
    fn user_pct(&self) -> f64 {
        self.user_s / self.elapsed * 100.0
    }
}

/// `pps` datagrams a second to `to` from the first node for `seconds`; the node daemon's CPU
/// time meanwhile and the broadcast counters.
fn stream(lab: &Lab, nodes: &[Node], to: &str, pps: u32, seconds: u64) -> Stream {
    let sender = &nodes[0];
    let pid = sender.proc().pid();
    let peers_rx = || -> u64 {
        nodes[1..]
            .iter()
            .filter_map(|s| s.status(lab))
            .map(|s| counter(&s.raw, "broadcast_rx"))
            .sum()
    };
    let before = sender.status(lab).map(|s| s.raw).unwrap_or_default();
    let rx_before = peers_rx();
    let t0 = cpu_ticks_split(pid);
    let start = Instant::now();
    let flood = lab.spawn(
        &sender.host.ns,
        game(),
        [
            "flood",
            "--to",
            to,
            "--pps",
            &pps.to_string(),
            "--seconds",
            &seconds.to_string(),
        ],
        "flood",
    );
    lab.wait_exit(&flood, Duration::from_secs(seconds + 20));
    let elapsed = start.elapsed().as_secs_f64();
    let t1 = cpu_ticks_split(pid);
    std::thread::sleep(Duration::from_millis(500));
    let after = sender.status(lab).map(|s| s.raw).unwrap_or_default();
    let ticks = clock_ticks();
    Stream {
        sent: counter(&after, "broadcast_tx") - counter(&before, "broadcast_tx"),
        dropped: counter(&after, "broadcast_dropped") - counter(&before, "broadcast_dropped"),
        peers_rx: peers_rx() - rx_before,
        cpu_s: (t1.0 + t1.1).saturating_sub(t0.0 + t0.1) as f64 / ticks,
        user_s: t1.0.saturating_sub(t0.0) as f64 / ticks,
        elapsed,
    }
}
