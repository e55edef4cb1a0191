//! `lanmesh-bench-throughput`: the data path against boringtun-cli and wireguard-go, on the
//! same machine in the same run. Run it through `bench/throughput.sh` (needs root: network
//! namespaces; the script installs the peers).
//!
//! ```text
//! lanmesh-bench-throughput [--seconds S] [--rounds R] [--only NAME[,NAME...]]
//! ```
//!
//! Two hosts on the lab's switch (a veth each, one bridge), one tunnel between them, and
//! from a to b: iperf3 TCP with 1 and with 4 streams, iperf3 UDP at 1300-byte datagrams as
//! fast as it goes (goodput and loss at the receiver), and 200 pings 10 ms apart (avg, mdev);
//! the CPU both daemons used during each transfer. Implementations, interleaved, a fresh lab
//! each time, R rounds (default 3), medians printed:
//! - `lanmesh`: coordinator, node a, node b (direct over the switch);
//! - `lanmesh-nooff`: the same with `--offload=false` (one packet per system call: the
//!   fallback path's figures);
//! - `lanmesh-relay`: a and b behind symmetric NATs, so every packet goes through a relay;
//! - `bt1`: boringtun-cli 0.7.1 `--threads 1`; `bt`: boringtun-cli with its default 4 threads;
//! - `wggo`: wireguard-go (the Debian package).
//!
//! The WireGuard peers run in a mount namespace each (both put their socket at
//! /run/wireguard/wg0.sock) and are configured with `wg`; their MTU is 1420, lanmesh's 1360.
//! Then an idle lanmesh node: its RSS, the CPU it uses in 10 s of silence and how often it
//! woke up (context switches a second).
//!
//! Binaries: `$LANMESH_BIN_DIR` (coordinator, node, relay); `$LANMESH_BORINGTUN` (boringtun-cli).

use lanmesh_e2e::mesh::{Coordinator, Node, Relay, MESH_TIMEOUT};
use lanmesh_e2e::world::host_pair;
use lanmesh_e2e::{clock_ticks, cpu_ticks, median, require_root, stdout, wait_until, Host, Lab};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const USAGE: &str = "usage: lanmesh-bench-throughput [--seconds S] [--rounds R] [--only NAME,...]";
const IMPLS: [&str; 6] = [
    "lanmesh",
    "lanmesh-nooff",
    "bt1",
    "bt",
    "wggo",
    "lanmesh-relay",
];
const IPERF_PORT: &str = "5201";

/// Starts a WireGuard peer (boringtun-cli or wireguard-go) in a mount namespace of its own,
/// configures it with `wg`, and waits for it: `wgpeer.sh DAEMON PRIVFILE PEERPUB ENDPOINT IP`.
const WG_PEER: &str = r#"#!/bin/sh
set -e
DAEMON=$1; PRIV=$2; PEER=$3; EP=$4; MYIP=$5
mkdir -p /run/wireguard && mount -t tmpfs tmpfs /run/wireguard
case $DAEMON in
  bt1) WG_SUDO=1 "$LANMESH_BORINGTUN" -f --disable-drop-privileges -t 1 wg0 & ;;
  bt) WG_SUDO=1 "$LANMESH_BORINGTUN" -f --disable-drop-privileges wg0 & ;;
  wggo) WG_PROCESS_FOREGROUND=1 wireguard-go -f wg0 & ;;
esac
DPID=$!
i=0
while [ ! -S /run/wireguard/wg0.sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
wg set wg0 private-key "$PRIV" listen-port 51820 peer "$PEER" allowed-ips 10.77.0.0/24 endpoint "$EP"
ip addr add "$MYIP/24" dev wg0
ip link set wg0 mtu 1420 up
echo "$DPID" > "$PRIV.pid"
wait $DPID
"#;

struct Opts {
    seconds: u64,
    rounds: u32,
    only: Vec<String>,
}

/// What one run of one implementation measured.
#[derive(Default, Clone)]
struct Run {
    tcp1: f64,
    tcp4: f64,
    udp: f64,
    udp_loss: f64,
    ping_avg: f64,
    ping_mdev: f64,
    /// CPU seconds of both daemons per Gbit moved, during the single-stream transfer.
    cpu_per_gbit: f64,
    /// Both daemons' CPU during it, in % of one core.
    cpu_pct: f64,
}

/// A tunnel from a to b, ready: where b is inside it and which processes carry it.
struct Pair {
    lab: Lab,
    a_ns: String,
    b_ns: String,
    b_ip: String,
    pids: Vec<u32>,
    /// Kept alive while measuring.
    _nodes: Vec<Node>,
}

fn main() {
    let mut o = Opts {
        seconds: 10,
        rounds: 3,
        only: IMPLS.iter().map(|s| s.to_string()).collect(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--seconds" => o.seconds = value().parse().unwrap_or_else(|_| usage()),
            "--rounds" => o.rounds = value().parse().unwrap_or_else(|_| usage()),
            "--only" => o.only = value().split(',').map(str::to_string).collect(),
            _ => usage(),
        }
    }
    if !require_root() {
        std::process::exit(1);
    }
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 1..=o.rounds {
        for name in IMPLS.iter().filter(|n| o.only.iter().any(|x| x == *n)) {
            let short = match *name {
                "lanmesh" => "lm",
                "lanmesh-nooff" => "lmno",
                "lanmesh-relay" => "lmrl",
                other => other,
            };
            let tag = format!("tp{short}{round}");
            let pair = match *name {
                "lanmesh" => lanmesh_pair(&tag, false, true),
                "lanmesh-nooff" => lanmesh_pair(&tag, false, false),
                "lanmesh-relay" => lanmesh_pair(&tag, true, true),
                daemon => wg_pair(&tag, daemon),
            };
            let run = measure(&pair, o.seconds);
            println!(
                "round {round} {name:>13}: TCP×1 {:.2} Gbit/s, TCP×4 {:.2}, UDP {:.2} ({:.1} % lost), ping {:.3}/{:.3} ms, CPU {:.0} % ({:.2} s/Gbit)",
                run.tcp1, run.tcp4, run.udp, run.udp_loss, run.ping_avg, run.ping_mdev, run.cpu_pct, run.cpu_per_gbit
            );
            runs.entry(name).or_default().push(run);
        }
    }
    table(&runs);
    if o.only.iter().any(|n| n == "lanmesh") {
        idle();
    }
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn lanmesh_pair(tag: &str, relayed: bool, offload: bool) -> Pair {
    let lab = Lab::new(tag);
    let coord_host = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &coord_host, &[]);
    let key = coord.create_key(&lab, &["--reusable"]);
    let mut relays = Vec::new();
    if relayed {
        let relay_key = coord.create_key(&lab, &["--relay"]);
        let h = lab.add_host("relay", "203.0.113.30");
        relays.push(Relay::start(&lab, &h, "r1", &coord.addr, &relay_key, &[]));
    }
    let (ha, hb) = host_pair(&lab, relayed);
    let mut nodes = Vec::new();
    for (h, name) in [(&ha, "a"), (&hb, "b")] {
        let mut n = Node::new(&lab, h, name, &coord.addr);
        let flag = format!("--offload={offload}");
        n.up(&lab, Some(&key), &["--interface", "lm0", &flag]);
        nodes.push(n);
    }
    let sb = nodes[1].wait_peers(&lab, 1, MESH_TIMEOUT);
    let sa = nodes[0].wait_peers(&lab, 1, MESH_TIMEOUT);
    for (from, ip) in [(&nodes[0], &sb.mesh_ip), (&nodes[1], &sa.mesh_ip)] {
        wait_until(MESH_TIMEOUT, "a first ping", || {
            lab.ping(&from.host.ns, ip, 1)
        });
    }
    let path = if relayed { "relay" } else { "direct" };
    nodes[0].wait_path(&lab, "b", path, MESH_TIMEOUT);
    nodes[1].wait_path(&lab, "a", path, MESH_TIMEOUT);
    let mut pids: Vec<u32> = nodes.iter().map(|n| n.proc().pid()).collect();
    pids.extend(relays.iter().map(|r| r.proc().pid()));
    Pair {
        a_ns: ha.ns.clone(),
        b_ns: hb.ns.clone(),
        b_ip: sb.mesh_ip,
        pids,
        _nodes: nodes,
        lab,
    }
}

fn wg_pair(tag: &str, daemon: &str) -> Pair {
    let lab = Lab::new(tag);
    let script = lab.dir().join("wgpeer.sh");
    std::fs::write(&script, WG_PEER).expect("write the peer script");
    let hosts: Vec<Host> = [("a", "203.0.113.11"), ("b", "203.0.113.12")]
        .iter()
        .map(|(n, ip)| lab.add_host(n, ip))
        .collect();
    let mut keys = Vec::new();
    for h in &hosts {
        let private = lab.dir().join(format!("{}.key", h.role));
        let out = lab.exec(&hosts[0].ns, "wg", ["genkey"]);
        std::fs::write(&private, stdout(&out)).expect("write a key");
        let public = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(std::fs::File::open(&private).expect("key"))
            .output()
            .expect("wg pubkey");
        keys.push((private, stdout(&public).trim().to_string()));
    }
    let mut daemons = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let other = 1 - i;
        let endpoint = format!("{}:51820", hosts[other].ip);
        let me = format!("10.77.0.{}", i + 1);
        let args = [
            "-m".to_string(),
            "sh".into(),
            script.display().to_string(),
            daemon.into(),
            keys[i].0.display().to_string(),
            keys[other].1.clone(),
            endpoint,
            me,
        ];
        daemons.push(lab.spawn(&h.ns, "unshare", &args, &format!("{daemon}-{}", h.role)));
    }
    let pidfiles: Vec<_> = keys.iter().map(|k| k.0.with_extension("key.pid")).collect();
    wait_until(
        Duration::from_secs(20),
        "the WireGuard daemons to start",
        || pidfiles.iter().all(|p| p.exists()),
    );
    wait_until(Duration::from_secs(20), "a ping through the tunnel", || {
        lab.ping(&hosts[0].ns, "10.77.0.2", 1)
    });
    let pids = pidfiles
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .expect("a daemon pid")
        })
        .collect();
    Pair {
        a_ns: hosts[0].ns.clone(),
        b_ns: hosts[1].ns.clone(),
        b_ip: "10.77.0.2".into(),
        pids,
        _nodes: Vec::new(),
        lab,
    }
}

fn cpu(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum()
}

/// One iperf3 run from a to b; its JSON and both daemons' CPU ticks meanwhile.
fn iperf(p: &Pair, seconds: u64, extra: &[&str]) -> (Value, u64) {
    let server = p.lab.spawn(
        &p.b_ns,
        "iperf3",
        ["-s", "-1", "-p", IPERF_PORT],
        "iperf3-server",
    );
    wait_until(
        Duration::from_secs(10),
        "the iperf3 server to listen",
        || p.lab.listening(&p.b_ns, 5201),
    );
    let secs = seconds.to_string();
    let mut args = vec!["-c", &p.b_ip, "-p", IPERF_PORT, "-t", &secs, "-J"];
    args.extend_from_slice(extra);
    let before = cpu(&p.pids);
    let out = p
        .lab
        .exec_timeout(&p.a_ns, "iperf3", &args, Duration::from_secs(seconds + 30));
    let ticks = cpu(&p.pids) - before;
    let _ = p.lab.wait_exit(&server, Duration::from_secs(5));
    let json = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
    (json, ticks)
}

fn measure(p: &Pair, seconds: u64) -> Run {
    let mut run = Run::default();
    let (json, ticks) = iperf(p, seconds, &[]);
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    run.tcp1 = bps / 1e9;
    let cpu_s = ticks as f64 / clock_ticks();
    run.cpu_pct = 100.0 * cpu_s / seconds as f64;
    run.cpu_per_gbit = if bps > 0.0 {
        cpu_s / (bps * seconds as f64 / 1e9)
    } else {
        0.0
    };
    let (json, _) = iperf(p, seconds, &["-P", "4"]);
    run.tcp4 = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    let (json, _) = iperf(p, seconds, &["-u", "-b", "0", "-l", "1300"]);
    let sum = &json["end"]["sum_received"];
    let sum = if sum.is_null() {
        &json["end"]["sum"]
    } else {
        sum
    };
    run.udp = sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    run.udp_loss = json["end"]["sum"]["lost_percent"].as_f64().unwrap_or(100.0);
    let out = p.lab.exec_timeout(
        &p.a_ns,
        "ping",
        ["-q", "-c", "200", "-i", "0.01", &p.b_ip],
        Duration::from_secs(30),
    );
    // "rtt min/avg/max/mdev = 0.040/0.061/0.113/0.012 ms"
    if let Some(line) = stdout(&out).lines().find(|l| l.contains("min/avg/max")) {
        let nums: Vec<f64> = line
            .split('=')
            .nth(1)
            .unwrap_or("")
            .trim()
            .trim_end_matches(" ms")
            .split('/')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        if nums.len() == 4 {
            (run.ping_avg, run.ping_mdev) = (nums[1], nums[3]);
        }
    }
    run
}

fn table(runs: &BTreeMap<&str, Vec<Run>>) {
    let med = |name: &str, f: &dyn Fn(&Run) -> f64| -> Option<f64> {
        let mut v: Vec<f64> = runs.get(name)?.iter().map(f).collect();
        median(&mut v)
    };
    let base = |f: &dyn Fn(&Run) -> f64| med("bt1", f);
    println!();
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>7} {:>8}  × bt1: TCP×1 TCP×4 UDP",
        "medians", "TCP×1", "TCP×4", "UDP", "loss%", "ping avg", "mdev", "CPU%", "s/Gbit",
    );
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}",
        "", "Gbit/s", "Gbit/s", "Gbit/s", "", "ms", "ms"
    );
    for name in IMPLS {
        if !runs.contains_key(name) {
            continue;
        }
        let m = |f: &dyn Fn(&Run) -> f64| med(name, f).unwrap_or(f64::NAN);
        let ratio = |f: &dyn Fn(&Run) -> f64| {
            base(f).map_or("-".to_string(), |b| format!("{:.2}", m(f) / b))
        };
        let ratios = format!(
            "{:>5} {:>5} {:>5}",
            ratio(&|r| r.tcp1),
            ratio(&|r| r.tcp4),
            ratio(&|r| r.udp)
        );
        println!(
            "{:<14} {:>8.3} {:>8.3} {:>8.3} {:>7.1} {:>9.3} {:>9.3} {:>7.0} {:>8.2}  {:>19}",
            name,
            m(&|r| r.tcp1),
            m(&|r| r.tcp4),
            m(&|r| r.udp),
            m(&|r| r.udp_loss),
            m(&|r| r.ping_avg),
            m(&|r| r.ping_mdev),
            m(&|r| r.cpu_pct),
            m(&|r| r.cpu_per_gbit),
            ratios
        );
    }
}

/// An idle lanmesh pair: node a's RSS, and the CPU it uses in 10 s of silence.
fn idle() {
    let p = lanmesh_pair("tpidle", false, true);
    std::thread::sleep(Duration::from_secs(2));
    let pid = p.pids[0];
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let switches = |text: &str| -> u64 {
        ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
            .iter()
            .map(|k| field(text, k).parse::<u64>().unwrap_or(0))
            .sum()
    };
    let (before, woke_before) = (cpu_ticks(pid), switches(&status()));
    std::thread::sleep(Duration::from_secs(10));
    let after = status();
    let ticks = cpu_ticks(pid) - before;
    println!(
        "\nidle lanmesh node: RSS {}, CPU {:.2} % of a core over 10 s, {:.1} wakeups/s",
        field(&after, "VmRSS:"),
        100.0 * ticks as f64 / clock_ticks() / 10.0,
        (switches(&after) - woke_before) as f64 / 10.0
    );
}
