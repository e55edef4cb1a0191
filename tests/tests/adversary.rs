//! The mesh under attack, end to end: an attacker namespace on the lab's switch with raw
//! sockets (forged source addresses, floods, replays of captured packets) and a registered
//! member that misbehaves (`lanmesh-evil-member`). Each test reproduces a finding of the
//! hardening issue and asserts the fix.
//!
//! ```text
//!   coordinator 203.0.113.10:3478   relay r1 203.0.113.30:3479   (on the switch: "the internet")
//!   attacker    203.0.113.66        victim   203.0.113.99
//!   nodes a 203.0.113.11, b .12 (or behind routers ra .21 / rb .22), c .13, d .14
//!   router rl 203.0.113.40 ── LAN 10.N.0.0/24: node h .2 and a LAN victim .9
//! ```
//!
//! Needs root; skips without it (fails under `CI`).

use lanmesh_e2e::attack::{
    self, bytes_counted, count_bytes, count_bytes_at, fast_switch, Flood, Hook, Listen, Payload,
};
use lanmesh_e2e::mesh::{Coordinator, Node, Relay, MESH_TIMEOUT};
use lanmesh_e2e::{require_root, stdout, wait_for, wait_until, Host, Lab, Nat};
use lanmesh_proto::channel::HELLO_MAC_LEN;
use serde_json::Value;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

const COORD_IP: &str = "203.0.113.10";
const RELAY_IP: &str = "203.0.113.30";
const ATTACKER_IP: &str = "203.0.113.66";
const VICTIM_IP: &str = "203.0.113.99";
const COORD_PORT: u16 = 3478;
/// How long a node may take to register, in the tests' polls.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

fn coord_addr() -> SocketAddrV4 {
    SocketAddrV4::new(COORD_IP.parse().unwrap(), COORD_PORT)
}

/// The `lanmesh-evil-member` binary, as cargo built it for these tests.
fn evil_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lanmesh-evil-member"))
}

/// Runs the evil member in `ns` with `args`; panics unless it succeeds; returns stdout.
fn evil(lab: &Lab, ns: &str, args: &[String]) -> String {
    let out: Output = lab.exec_timeout(ns, evil_bin(), args, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "lanmesh-evil-member {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        stdout(&out),
        lanmesh_e2e::stderr(&out)
    );
    stdout(&out)
}

/// `sent N datagrams B bytes` → B.
fn sent_bytes(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 5 && w[0] == "sent" && w[4] == "bytes").then(|| w[3].parse().ok())?
        })
        .unwrap_or_else(|| panic!("no `sent` line in {out:?}"))
}

/// The evil member's flags to join `w`'s coordinator from the attacker's address, then
/// `extra`.
fn evil_args(w: &World, extra: &[&str]) -> Vec<String> {
    let bind = format!("{ATTACKER_IP}:41641");
    let mut args: Vec<String> = [
        "--auth-key",
        &w.key,
        "--coordinator",
        &w.coord.addr,
        "--bind",
        &bind,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The coordinator, a reusable key, and the attacker's namespace.
struct World {
    coord: Coordinator,
    key: String,
    attacker: Host,
}

fn world(lab: &Lab, coord_args: &[&str]) -> World {
    fast_switch(lab);
    let ch = lab.add_host("coord", COORD_IP);
    let coord = Coordinator::start(lab, &ch, coord_args);
    let key = coord.create_key(lab, &["--reusable"]);
    let attacker = lab.add_host("attacker", ATTACKER_IP);
    attack::allow_spoofed_sources(lab, &attacker.ns);
    World {
        coord,
        key,
        attacker,
    }
}

fn node_on_switch(lab: &Lab, w: &World, name: &str, ip: &str) -> Node {
    let h = lab.add_host(name, ip);
    let mut n = Node::new(lab, &h, name, &w.coord.addr);
    n.up(
        lab,
        Some(&w.key),
        &["--interface", "lm0", "--port", "41641"],
    );
    n
}

fn registered(lab: &Lab, n: &Node, timeout: Duration) -> String {
    n.wait_status(lab, timeout, "registered", |s| !s.mesh_ip.is_empty())
        .mesh_ip
}

fn assert_pings(lab: &Lab, from: &Node, to_ip: &str) {
    let got = wait_for(Duration::from_secs(20), "pings through the mesh", || {
        let n = lab.ping_received(&from.host.ns, to_ip, 3);
        (n > 0).then_some(n)
    });
    assert!(got > 0, "{} cannot ping {to_ip}", from.name);
}

/// Where the coordinator sees `name` (its validated public endpoint).
fn endpoint_of(lab: &Lab, coord: &Coordinator, name: &str) -> Option<String> {
    let nodes: Value = coord.nodes_json(lab);
    nodes
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)?
        .get("endpoint")?
        .as_str()
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------
// 1. Forged control datagrams stop nobody
// ---------------------------------------------------------------------------------------

/// Datagrams that claim to come from the coordinator: other protocol versions, key answers
/// with another key, and junk of every control kind.
fn forged_control_datagrams() -> Vec<Vec<u8>> {
    let mut v = vec![
        b"LM\x07\x06".to_vec(),
        b"LM\x00\x06".to_vec(),
        b"LM\x02\xff".to_vec(),
        b"LM\x09\x02".to_vec(),
    ];
    let mut key_answer = b"LM\x01\x02".to_vec();
    key_answer.extend_from_slice(&[0x5a; 32]);
    v.push(key_answer);
    for kind in [4u8, 5, 9, 11, 13] {
        let mut d = vec![0x4c, 0x4d, 1, kind];
        d.extend(std::iter::repeat_n(0xa5, 120));
        v.push(d);
    }
    v
}

#[test]
fn forged_coordinator_datagrams_stop_no_node_and_no_relay() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advforge");
    let w = world(&lab, &[]);
    let relay_key = w.coord.create_key(&lab, &["--relay"]);
    let rh = lab.add_host("relay", RELAY_IP);
    let relay = Relay::start(&lab, &rh, "r1", &w.coord.addr, &relay_key, &[]);
    relay.wait_status(&lab, MESH_TIMEOUT, "connected", |s| s.coordinator_connected);
    // a and b behind symmetric NATs: their traffic goes through the relay.
    let ra = lab.add_router("ra", "203.0.113.21", Nat::Symmetric);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::Symmetric);
    let mut a = Node::new(&lab, &lab.add_host_behind(&ra, "a", 2), "a", &w.coord.addr);
    a.up(
        &lab,
        Some(&w.key),
        &["--interface", "lm0", "--port", "41641"],
    );
    let mut b = Node::new(&lab, &lab.add_host_behind(&rb, "b", 2), "b", &w.coord.addr);
    b.up(
        &lab,
        Some(&w.key),
        &["--interface", "lm0", "--port", "41700"],
    );
    let ip_a = registered(&lab, &a, JOIN_TIMEOUT);
    let ip_b = registered(&lab, &b, JOIN_TIMEOUT);
    a.wait_path(&lab, "b", "relay", Duration::from_secs(30));
    let forwarded = relay.status(&lab).expect("relay status").packets_forwarded;

    // The attacker sends them from the coordinator's address to where the coordinator sees
    // each node (through their NATs) and to the relay: each 20 times.
    let forged = forged_control_datagrams();
    let mut targets: Vec<SocketAddrV4> = ["a", "b"]
        .iter()
        .map(|n| {
            endpoint_of(&lab, &w.coord, n)
                .and_then(|e| e.parse().ok())
                .unwrap_or_else(|| panic!("no endpoint for {n}"))
        })
        .collect();
    targets.push(SocketAddrV4::new(RELAY_IP.parse().unwrap(), 3479));
    for dst in &targets {
        let sent = attack::spoof(
            &lab,
            &w.attacker.ns,
            SocketAddr::V4(coord_addr()),
            SocketAddr::V4(*dst),
            &forged,
            20,
        );
        assert_eq!(sent.datagrams, 20 * forged.len() as u64);
    }
    // A node that is joining right now gets the same treatment, all along its join.
    let ch = lab.add_host("c", "203.0.113.13");
    let c_addr = SocketAddrV4::new("203.0.113.13".parse().unwrap(), 41641);
    let flood = Flood::new(SocketAddr::V4(c_addr), 200, 6.0)
        .src(coord_addr())
        .replay(&forged)
        .spawn(&lab, &w.attacker.ns);
    let mut c = Node::new(&lab, &ch, "c", &w.coord.addr);
    c.up(
        &lab,
        Some(&w.key),
        &["--interface", "lm0", "--port", "41641"],
    );
    registered(&lab, &c, JOIN_TIMEOUT);
    attack::flood_wait(&lab, &flood, Duration::from_secs(20));

    for (n, who) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        assert!(
            lab.is_running(n.proc()),
            "node {who} stopped:\n{}",
            lab.log(n.proc())
        );
        n.wait_status(&lab, MESH_TIMEOUT, "still connected", |s| {
            s.raw["coordinator_connected"] == Value::Bool(true)
        });
    }
    assert!(lab.is_running(relay.proc()), "the relay stopped");
    // Still forwarding: a and b ping each other through it.
    assert_pings(&lab, &a, &ip_b);
    assert_pings(&lab, &b, &ip_a);
    let s = relay.status(&lab).expect("relay status");
    assert!(s.coordinator_connected);
    assert!(
        s.packets_forwarded > forwarded,
        "the relay forwarded nothing after the attack"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Hello floods do not keep honest nodes out
// ---------------------------------------------------------------------------------------

/// Captures a real Hello (with MACs) on its way to the coordinator while `node` joins.
fn capture_hello(lab: &Lab, w: &World, node: &mut Node) -> Vec<u8> {
    let cap = attack::capture_start(
        lab,
        &w.coord.host.ns,
        "any",
        &format!("udp dst port {COORD_PORT}"),
    );
    node.up(
        lab,
        Some(&w.key),
        &["--interface", "lm0", "--port", "41641"],
    );
    registered(lab, node, JOIN_TIMEOUT);
    cap.stop_and_extract(lab, &[COORD_PORT])
        .into_iter()
        .find(|p| p.len() == HELLO_MAC_LEN && p.starts_with(&[0x4c, 0x4d, 1, 12]))
        .expect("a captured Hello")
}

#[test]
fn hello_floods_do_not_keep_an_honest_node_out() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advflood");
    let w = world(&lab, &[]);
    let a = node_on_switch(&lab, &w, "a", "203.0.113.11");
    let ip_a = registered(&lab, &a, JOIN_TIMEOUT);
    let mut r = Node::new(
        &lab,
        &lab.add_host("rec", "203.0.113.19"),
        "recorded",
        &w.coord.addr,
    );
    let recorded = capture_hello(&lab, &w, &mut r);
    count_bytes(&lab, &w.coord.host.ns, "hellos", "udp dport 3478");
    let dst = SocketAddr::V4(coord_addr());
    let junk = Payload::Template {
        bytes: vec![0x4c, 0x4d, 1, 12],
        randomize: 4..HELLO_MAC_LEN,
    };
    let floods = [
        (
            "junk hellos from random sources",
            Flood::new(dst, 50_000, 8.0)
                .src_net("203.0.113.128/25")
                .payload(junk),
        ),
        (
            "a replayed hello from the attacker",
            Flood::new(dst, 50_000, 8.0).replay(std::slice::from_ref(&recorded)),
        ),
    ];
    for (i, (what, flood)) in floods.into_iter().enumerate() {
        let before = bytes_counted(&lab, &w.coord.host.ns, "hellos").packets;
        let p = flood.spawn(&lab, &w.attacker.ns);
        std::thread::sleep(Duration::from_secs(1));
        let name = format!("n{i}");
        let started = Instant::now();
        let mut n = node_on_switch(&lab, &w, &name, &format!("203.0.113.{}", 50 + i));
        registered(&lab, &n, Duration::from_secs(10));
        let joined = started.elapsed();
        assert_pings(&lab, &n, &ip_a);
        let pinged = started.elapsed();
        let sent = attack::flood_wait(&lab, &p, Duration::from_secs(30));
        let arrived = bytes_counted(&lab, &w.coord.host.ns, "hellos").packets - before;
        eprintln!(
            "{what}: {:.0} pps sent, {arrived} datagrams reached the coordinator; \
             {name} registered after {} ms, pinged a after {} ms",
            sent.pps(),
            joined.as_millis(),
            pinged.as_millis()
        );
        // Loose bounds for a shared CI machine; bench/flood.sh measures the real figures.
        assert!(
            joined < Duration::from_secs(4),
            "{what}: joined after {joined:?}"
        );
        assert!(
            pinged < Duration::from_secs(8),
            "{what}: pinged after {pinged:?}"
        );
        assert!(lab.is_running(w.coord.proc()));
        n.down(&lab, Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------------------
// 3. A member cannot aim traffic at a victim
// ---------------------------------------------------------------------------------------

#[test]
fn a_member_cannot_aim_traffic_at_a_victim() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advreflect");
    let w = world(&lab, &[]);
    let a = node_on_switch(&lab, &w, "a", "203.0.113.11");
    let b = node_on_switch(&lab, &w, "b", "203.0.113.12");
    // h shares a LAN with a victim machine that has nothing to do with the mesh.
    let rl = lab.add_router("rl", "203.0.113.40", Nat::PortRestricted);
    let hh = lab.add_host_behind(&rl, "h", 2);
    let lan_victim = lab.add_host_behind(&rl, "lanvictim", 9);
    let mut h = Node::new(&lab, &hh, "h", &w.coord.addr);
    h.up(
        &lab,
        Some(&w.key),
        &["--interface", "lm0", "--port", "41641"],
    );
    let victim = lab.add_host("victim", VICTIM_IP);
    for n in [&a, &b, &h] {
        n.wait_peers(&lab, 2, JOIN_TIMEOUT);
    }
    count_bytes(&lab, &victim.ns, "hit", "meta l4proto udp");
    count_bytes(&lab, &lan_victim.ns, "hit", "meta l4proto udp");
    count_bytes_at(
        &lab,
        &w.attacker.ns,
        Hook::Output,
        "out",
        &format!("ip saddr {ATTACKER_IP} meta l4proto udp"),
    );
    // The member reports the victims as its LAN addresses (4 ports each: 8 is the most a
    // Hello may carry), asks for punches
    // with everyone every 100 ms, and sends authenticated requests from the public victim's
    // address, for 12 s.
    let forge_src = format!("{VICTIM_IP}:53");
    let mut args = evil_args(
        &w,
        &[
            "--punch-every-ms",
            "100",
            "--forge-src",
            &forge_src,
            "--forge-rounds",
            "50",
            "--seconds",
            "12",
        ],
    );
    for port in 40_001..=40_004 {
        args.extend(["--local".into(), format!("{}:{port}", lan_victim.ip)]);
        args.extend(["--local".into(), format!("{VICTIM_IP}:{port}")]);
    }
    let out = evil(&lab, &w.attacker.ns, &args);
    let claimed = sent_bytes(&out);
    let attacker_sent = bytes_counted(&lab, &w.attacker.ns, "out").bytes;
    let at_victim = bytes_counted(&lab, &victim.ns, "hit").bytes;
    let at_lan_victim = bytes_counted(&lab, &lan_victim.ns, "hit").bytes;
    eprintln!(
        "attacker sent {attacker_sent} bytes ({claimed} by its own count); the public victim got \
         {at_victim}, the LAN victim {at_lan_victim}"
    );
    assert!(
        attacker_sent >= claimed / 2,
        "the attacker's counter missed its traffic"
    );
    assert!(
        at_victim <= attacker_sent,
        "the public victim got {at_victim} bytes for {attacker_sent}"
    );
    assert!(
        at_lan_victim <= attacker_sent,
        "the LAN victim got {at_lan_victim} bytes for {attacker_sent}"
    );
    // The honest mesh did not mind.
    let sb = b.status(&lab).expect("b status");
    assert_pings(&lab, &a, &sb.mesh_ip);
}

// ---------------------------------------------------------------------------------------
// 4. Replayed probes earn no pong
// ---------------------------------------------------------------------------------------

#[test]
fn replayed_probes_earn_no_pong() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advprobe");
    let w = world(&lab, &[]);
    let a = node_on_switch(&lab, &w, "a", "203.0.113.11");
    let b = node_on_switch(&lab, &w, "b", "203.0.113.12");
    a.wait_peers(&lab, 1, JOIN_TIMEOUT);
    b.wait_peers(&lab, 1, JOIN_TIMEOUT);
    // Record a's probes to b while they punch.
    let cap = attack::capture_start(&lab, &b.host.ns, "any", "udp dst port 41641");
    a.wait_path(&lab, "b", "direct", Duration::from_secs(20));
    let out = a.cli(&lab, &["ping", "b", "-c", "2"]);
    assert!(
        out.status.success(),
        "node ping: {}",
        lanmesh_e2e::stderr(&out)
    );
    let probes: Vec<Vec<u8>> = cap
        .stop_and_extract(&lab, &[41641])
        .into_iter()
        .filter(|p| p.len() == 96 && p.starts_with(&[0x4c, 0x4d, 1, 7]))
        .collect();
    assert!(!probes.is_empty(), "no probe captured");
    // Replayed from the attacker's own address (listening for an answer) and from a victim's.
    let me: SocketAddr = format!("{ATTACKER_IP}:7000").parse().unwrap();
    let listen = Listen::new(me).seconds(4.0).spawn(&lab, &w.attacker.ns);
    let victim = lab.add_host("victim", VICTIM_IP);
    count_bytes(&lab, &victim.ns, "hit", "meta l4proto udp");
    let b_addr = SocketAddr::V4(SocketAddrV4::new("203.0.113.12".parse().unwrap(), 41641));
    attack::spoof(&lab, &w.attacker.ns, me, b_addr, &probes, 20);
    attack::spoof(
        &lab,
        &w.attacker.ns,
        SocketAddr::V4(SocketAddrV4::new(VICTIM_IP.parse().unwrap(), 7000)),
        b_addr,
        &probes,
        20,
    );
    let got = attack::listen_wait(&lab, &listen, Duration::from_secs(20));
    assert_eq!(got.datagrams, 0, "replayed probes were answered: {got:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bytes_counted(&lab, &victim.ns, "hit").bytes, 0);
    // Fresh probes still work.
    let out = a.cli(&lab, &["ping", "b", "-c", "1"]);
    assert!(out.status.success(), "node ping after the replays");
}

// ---------------------------------------------------------------------------------------
// 5. Endpoint flapping costs the coordinator little
// ---------------------------------------------------------------------------------------

#[test]
fn endpoint_flapping_costs_the_mesh_little() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advflap");
    let w = world(&lab, &[]);
    let nodes: Vec<Node> = (0..4)
        .map(|i| node_on_switch(&lab, &w, &format!("n{i}"), &format!("203.0.113.{}", 11 + i)))
        .collect();
    for n in &nodes {
        n.wait_peers(&lab, 3, JOIN_TIMEOUT);
    }
    let to_honest = format!("ip daddr != {ATTACKER_IP} udp sport {COORD_PORT}");
    count_bytes_at(&lab, &w.coord.host.ns, Hook::Output, "honest", &to_honest);
    std::thread::sleep(Duration::from_secs(10));
    let quiet = bytes_counted(&lab, &w.coord.host.ns, "honest").packets;
    let args = evil_args(&w, &["--flap-every-ms", "100", "--seconds", "10"]);
    let before = bytes_counted(&lab, &w.coord.host.ns, "honest").packets;
    evil(&lab, &w.attacker.ns, &args);
    let flapping = bytes_counted(&lab, &w.coord.host.ns, "honest").packets - before;
    eprintln!(
        "coordinator datagrams to the 4 honest nodes in 10 s: {quiet} quiet, {flapping} while \
         a member flapped its addresses every 100 ms"
    );
    // A join and a handful of visible changes, each a small delta per node: not a map pull
    // per flap (before the fix: over 1,000).
    assert!(
        flapping <= quiet + 120,
        "{flapping} datagrams (quiet: {quiet})"
    );
}

// ---------------------------------------------------------------------------------------
// 6. A recorded Hello replayed after a coordinator restart
// ---------------------------------------------------------------------------------------

#[test]
fn a_hello_replayed_after_a_restart_is_refused() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advreplay");
    let mut w = world(&lab, &[]);
    let b = node_on_switch(&lab, &w, "b", "203.0.113.12");
    let mut a = Node::new(&lab, &lab.add_host("a", "203.0.113.11"), "a", &w.coord.addr);
    let recorded = capture_hello(&lab, &w, &mut a);
    a.wait_peers(&lab, 1, JOIN_TIMEOUT);
    let endpoint = endpoint_of(&lab, &w.coord, "a").expect("a's endpoint");
    lab.kill(w.coord.proc());
    w.coord.restart(&lab);
    a.wait_status(&lab, JOIN_TIMEOUT, "reconnected", |s| {
        s.raw["coordinator_connected"] == Value::Bool(true)
    });
    // The replay, from the attacker's own (listening) address and forged from elsewhere.
    let me: SocketAddr = format!("{ATTACKER_IP}:7001").parse().unwrap();
    let listen = Listen::new(me).seconds(3.0).spawn(&lab, &w.attacker.ns);
    attack::spoof(
        &lab,
        &w.attacker.ns,
        me,
        SocketAddr::V4(coord_addr()),
        std::slice::from_ref(&recorded),
        20,
    );
    attack::spoof(
        &lab,
        &w.attacker.ns,
        SocketAddr::V4(SocketAddrV4::new(VICTIM_IP.parse().unwrap(), 41641)),
        SocketAddr::V4(coord_addr()),
        &[recorded],
        5,
    );
    let got = attack::listen_wait(&lab, &listen, Duration::from_secs(20));
    assert_eq!(got.datagrams, 0, "the replayed Hello was answered");
    // The real node is unaffected.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(endpoint_of(&lab, &w.coord, "a"), Some(endpoint));
    a.wait_status(&lab, MESH_TIMEOUT, "still connected", |s| {
        s.raw["coordinator_connected"] == Value::Bool(true)
    });
    let sb = b.status(&lab).expect("b status");
    assert_pings(&lab, &a, &sb.mesh_ip);
    assert!(lab
        .log(w.coord.proc())
        .lines()
        .all(|l| !l.contains("panicked")));
}

// ---------------------------------------------------------------------------------------
// 7. An open coordinator under a registration flood
// ---------------------------------------------------------------------------------------

#[test]
fn open_mode_registration_floods_are_capped() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advopen");
    let w = world(&lab, &["--open", "--open-max-nodes", "8"]);
    let a = node_on_switch(&lab, &w, "a", "203.0.113.11");
    let b = node_on_switch(&lab, &w, "b", "203.0.113.12");
    let ip_b = registered(&lab, &b, JOIN_TIMEOUT);
    registered(&lab, &a, JOIN_TIMEOUT);
    let args: Vec<String> = [
        "--coordinator",
        &w.coord.addr,
        "--coordinator-key",
        &coordinator_key(&lab, &w.coord),
        "--bind",
        &format!("{ATTACKER_IP}:41641"),
        "--register-many",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = evil(&lab, &w.attacker.ns, &args);
    eprintln!("registration flood: {}", out.trim());
    let nodes = w.coord.nodes_json(&lab);
    let count = nodes.as_array().map_or(0, Vec::len);
    assert!(count <= 8, "{count} nodes registered: {nodes}");
    // The honest nodes are unaffected, and a node with a key still gets in.
    assert_pings(&lab, &a, &ip_b);
    let one_off = w.coord.create_key(&lab, &[]);
    let mut c = Node::new(&lab, &lab.add_host("c", "203.0.113.13"), "c", &w.coord.addr);
    c.up(
        &lab,
        Some(&one_off),
        &["--interface", "lm0", "--port", "41641"],
    );
    registered(&lab, &c, JOIN_TIMEOUT);
    let s = a.status(&lab).expect("a status");
    assert!(s.peers.len() <= 8, "a lists {} peers", s.peers.len());
}

/// The coordinator's public key, from its banner.
fn coordinator_key(lab: &Lab, coord: &Coordinator) -> String {
    let log = lab.log(coord.proc());
    log.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("public key:")
                .map(|k| k.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no public key in the coordinator's banner:\n{log}"))
}

// ---------------------------------------------------------------------------------------
// 8. A locked database during joins
// ---------------------------------------------------------------------------------------

#[test]
fn a_locked_database_delays_joins_but_refuses_none() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("advlock");
    let w = world(&lab, &[]);
    let keys: Vec<String> = (0..2).map(|_| w.coord.create_key(&lab, &[])).collect();
    let db = w.coord.data_dir.join("coordinator.db");
    // Another process holds the database for 6 s (as a backup or an admin's sqlite3 might).
    let lock_secs = 6;
    let script = format!(
        "import sqlite3, time\n\
         c = sqlite3.connect({db:?}, isolation_level=None)\n\
         c.execute('BEGIN EXCLUSIVE')\n\
         print('locked', flush=True)\n\
         time.sleep({lock_secs})\n\
         c.execute('COMMIT')\n",
        db = db.display().to_string()
    );
    let locker = lab.spawn(
        &w.coord.host.ns,
        "python3",
        ["-c", script.as_str()],
        "locker",
    );
    wait_until(Duration::from_secs(10), "the database to be locked", || {
        lab.log(&locker).contains("locked")
    });
    let locked_at = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut n = Node::new(
            &lab,
            &lab.add_host(&format!("n{i}"), &format!("203.0.113.{}", 11 + i)),
            &format!("n{i}"),
            &w.coord.addr,
        );
        n.up(&lab, Some(key), &["--interface", "lm0", "--port", "41641"]);
        nodes.push(n);
    }
    for n in &nodes {
        registered(&lab, n, Duration::from_secs(lock_secs + 20));
        assert!(lab.is_running(n.proc()), "{} was refused", n.name);
    }
    eprintln!(
        "both nodes registered {:.1}s after the database was locked for {lock_secs}s",
        locked_at.elapsed().as_secs_f64()
    );
    assert!(
        locked_at.elapsed() >= Duration::from_secs(lock_secs - 1),
        "registered while the database was locked: the lock did not hold"
    );
    let keys_json: Value = serde_json::from_str(&w.coord.cli_ok(&lab, &["keys", "list", "--json"]))
        .expect("keys list --json");
    let uses: Vec<u64> = keys_json
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|k| k["uses"].as_u64())
        .collect();
    assert!(uses.iter().filter(|u| **u == 1).count() >= 2, "{keys_json}");
}
