//! Relays end to end: the real `coordinator`, `relay` and `node` binaries, with nodes behind
//! lab NATs that cannot be punched (symmetric facing symmetric or port-restricted), so that
//! their traffic has to go through a relay.
//!
//! ```text
//!   coordinator 203.0.113.10:3478 (also STUN)            on the switch ("the internet")
//!   stun        203.0.113.11:3478 (a second coordinator, only an extra STUN server)
//!   relay r1    203.0.113.30:3479, r2 .31 (failover only)
//!   stranger    203.0.113.40 (non-member test only)
//!   router ra 203.0.113.21 ── 10.N.0.2 node a (port 41641)
//!   router rb 203.0.113.22 ── 10.M.0.2 node b (port 41700)
//! ```
//!
//! - `relay_sym_port`: the pair talks through the relay both ways (pings, checksummed TCP
//!   transfers), and the relay counts its two members and what it forwarded.
//! - `relay_upgrade_after_nat_reset`: a relayed pair moves to a direct path mid-transfer when
//!   a's NAT is replaced by a fresh port-restricted one; the one TCP connection survives.
//! - `relay_failover`: the relay carrying a transfer is killed; the pair moves to the other
//!   relay within seconds and the transfer completes intact.
//!
//! The same behaviours across every NAT pair, relay failover twice over, and many timings run
//! in the simulator (`tests/tests/sim.rs`); these keep the real sockets, NATs and processes.
//! - `relay_refuses_non_members`: a stranger's binds and sends (random keys, a member's key
//!   with a bad seal, guessed sessions) are dropped and answered with nothing; a node removed
//!   at the coordinator stops being served.
//!
//! Needs root; skips without it (fails under `CI`).

use lanmesh_e2e::mesh::{assert_ping, Node, Peer, Relay, RelayStatus, Status, MESH_TIMEOUT};
use lanmesh_e2e::world::{World, WorldSpec};
use lanmesh_e2e::{
    require_root, testkit_bin, transfer, wait_for, wait_until, Lab, Nat, Router, Transfer,
};
use std::time::{Duration, Instant};

const RELAY1_IP: &str = "203.0.113.30";
const RELAY2_IP: &str = "203.0.113.31";
const STRANGER_IP: &str = "203.0.113.40";
const RA_WAN: &str = "203.0.113.21";
const RB_WAN: &str = "203.0.113.22";
const PORT_A: &str = "41641";
const PORT_B: &str = "41700";
const TRANSFER_PORT: u16 = 5001;

/// How long a pair may take to show `"relay"` both ways once traffic flows.
const RELAY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes of the plain relayed transfer.
const TRANSFER_BYTES: u64 = 8 * 1024 * 1024;
/// Paced transfers that must outlive a change of path run at 20 Mbit/s: 40 MB (about 16 s)
/// across a relay failover, 60 MB (about 24 s) across an upgrade to direct (which takes
/// longer: a punch must succeed).
const LONG_RATE_MBPS: u64 = 20;
const LONG_BYTES: u64 = 40 * 1000 * 1000;
const UPGRADE_BYTES: u64 = 60 * 1000 * 1000;
/// How long a pair may take to go direct after its NAT became punchable.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a paced transfer may take in all (with a path change in the middle).
const LONG_LIMIT: Duration = Duration::from_secs(120);
/// How soon pings must work again after the relay carrying them died (the node replaces a
/// dead home relay within ~3–4 s).
const FAILOVER_PING_LIMIT: Duration = Duration::from_secs(6);
/// How soon a removed node must stop being served by the relay (aim: ~5 s).
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(8);

/// The coordinator with a reusable node key, a second STUN server, and one relay per
/// `(name, ip)`, registered.
fn world(lab: &Lab, relays: &[(&str, &str)]) -> World {
    World::build(lab, WorldSpec { stun: true, relays })
}

/// Two nodes, a behind router ra and b behind router rb, that know each other.
struct Pair {
    a: Node,
    b: Node,
    /// a's and b's own statuses once each listed the other.
    sa: Status,
    sb: Status,
    ra: Router,
}

/// Node a behind a NAT of kind `na`, node b behind one of kind `nb`; starts a, then b, and
/// waits until each lists the other.
fn pair(lab: &Lab, w: &World, na: Nat, nb: Nat) -> Pair {
    pair_with(lab, w, na, nb, None)
}

/// [`pair`] with `--keepalive` for both nodes.
fn pair_with(lab: &Lab, w: &World, na: Nat, nb: Nat, keepalive: Option<u32>) -> Pair {
    let ra = lab.add_router("ra", RA_WAN, na);
    let rb = lab.add_router("rb", RB_WAN, nb);
    let ha = lab.add_host_behind(&ra, "a", 2);
    let hb = lab.add_host_behind(&rb, "b", 2);
    let a = w.start_node(lab, &ha, "a", PORT_A, keepalive);
    a.wait_status(lab, MESH_TIMEOUT, "joined (has a mesh IP)", |s| {
        !s.mesh_ip.is_empty()
    });
    let b = w.start_node(lab, &hb, "b", PORT_B, keepalive);
    let sb = b.wait_peers(lab, 1, MESH_TIMEOUT);
    let sa = a.wait_peers(lab, 1, MESH_TIMEOUT);
    Pair { a, b, sa, sb, ra }
}

/// Waits until `from` shows `to` on path `"relay"` through one of `w`'s relays (name set,
/// endpoint = that relay's address); returns the peer entry.
fn wait_relayed(lab: &Lab, w: &World, from: &Node, to: &str, timeout: Duration) -> Peer {
    let what = format!("path to {to} \"relay\"");
    let s = from.wait_peer(lab, to, timeout, &what, |p| {
        p.path == "relay" && p.relay.is_some()
    });
    let p = s.peer(to).cloned().expect("peer listed");
    let name = p.relay.clone().expect("checked");
    let relay = w.relays.iter().find(|r| r.name == name).unwrap_or_else(|| {
        panic!(
            "{} relays to {to} through {name:?}, which is not a relay of the lab: {}",
            from.name, s.raw
        )
    });
    assert_eq!(
        p.endpoint.as_deref(),
        Some(relay.addr.as_str()),
        "{}: a relayed peer's endpoint is not its relay's address: {}",
        from.name,
        s.raw
    );
    p
}

/// Pings both ways (the relay fallback needs traffic), then waits until both sides show
/// `"relay"`; returns (a's view of b, b's view of a).
fn relayed_both_ways(lab: &Lab, w: &World, p: &Pair, since: Instant) -> (Peer, Peer) {
    assert_ping(lab, &p.a, "b", &p.sb.mesh_ip);
    assert_ping(lab, &p.b, "a", &p.sa.mesh_ip);
    let pb = wait_relayed(lab, w, &p.a, "b", RELAY_TIMEOUT);
    let pa = wait_relayed(lab, w, &p.b, "a", RELAY_TIMEOUT);
    eprintln!(
        "a <-> b relayed both ways {:.2}s after b started (a -> b via {:?}, b -> a via {:?})",
        since.elapsed().as_secs_f64(),
        pb.relay,
        pa.relay
    );
    (pb, pa)
}

/// Every node lists every relay of the lab, and the ones alive with a round trip.
fn assert_lists_relays(lab: &Lab, w: &World, node: &Node) {
    let s = node.wait_status(lab, MESH_TIMEOUT, "every relay measured", |s| {
        w.relays.iter().all(|r| {
            s.relays
                .iter()
                .any(|(name, rtt)| *name == r.name && rtt.is_some())
        })
    });
    eprintln!("{} sees relays {:?}", node.name, s.relays);
}

fn relay_pair(tag: &str, na: Nat, nb: Nat) {
    let what = format!("{na:?} <-> {nb:?}");
    let lab = Lab::new(tag);
    let w = world(&lab, &[("r1", RELAY1_IP)]);
    let started = Instant::now();
    let p = pair(&lab, &w, na, nb);
    let relay = w.relay("r1");
    relay.wait_status(&lab, MESH_TIMEOUT, "2 members, both bound", |s| {
        s.members == 2 && s.members_connected == 2
    });
    let (pb, pa) = relayed_both_ways(&lab, &w, &p, started);
    assert_eq!(pb.relay.as_deref(), Some("r1"), "{what}");
    assert_eq!(pa.relay.as_deref(), Some("r1"), "{what}");
    assert_lists_relays(&lab, &w, &p.a);
    assert_lists_relays(&lab, &w, &p.b);

    let before = relay.status(&lab).expect("relay status");
    let t = Transfer::start(
        &lab,
        &p.a.host.ns,
        &p.b.host.ns,
        &format!("{}:{TRANSFER_PORT}", p.sb.mesh_ip),
        TRANSFER_BYTES,
        None,
        LONG_LIMIT,
    );
    let took = t.finish(&lab, LONG_LIMIT);
    eprintln!(
        "{what}: {} MB through the relay in {:.2}s ({:.1} Mbit/s)",
        TRANSFER_BYTES / (1024 * 1024),
        took.as_secs_f64(),
        TRANSFER_BYTES as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    // And the other way.
    transfer(
        &lab,
        &p.b.host.ns,
        &p.a.host.ns,
        &p.sa.mesh_ip,
        TRANSFER_PORT + 1,
        TRANSFER_BYTES,
    );
    assert_ping(&lab, &p.b, "a", &p.sa.mesh_ip);

    let s = relay.status(&lab).expect("relay status");
    eprintln!("{what}: relay status after the transfer: {}", s.raw);
    assert_eq!(s.members, 2, "{what}: relay members: {}", s.raw);
    assert_eq!(
        s.members_connected, 2,
        "{what}: relay members_connected: {}",
        s.raw
    );
    assert!(s.packets_forwarded > 0, "{what}: nothing forwarded");
    assert!(
        s.bytes_forwarded - before.bytes_forwarded >= 2 * TRANSFER_BYTES,
        "{what}: the relay forwarded {} bytes during two transfers of {TRANSFER_BYTES}",
        s.bytes_forwarded - before.bytes_forwarded
    );
    // Still relayed: the NATs cannot be punched.
    for (n, peer) in [(&p.a, "b"), (&p.b, "a")] {
        let st = n.status(&lab).expect("status");
        let pp = st.peer(peer).expect("peer listed");
        assert_eq!(
            (pp.path.as_str(), pp.relay.as_deref()),
            ("relay", Some("r1")),
            "{what}: {} left the relay although the NATs cannot be punched: {}",
            n.name,
            st.raw
        );
    }
}

#[test]
fn relay_sym_port() {
    if !require_root() {
        return;
    }
    relay_pair("relsymprt", Nat::Symmetric, Nat::PortRestricted);
}

/// Sum of `bytes_forwarded` over the relays that answer.
fn relayed_bytes(lab: &Lab, relays: &[&Relay]) -> u64 {
    relays
        .iter()
        .filter_map(|r| r.status(lab))
        .map(|s| s.bytes_forwarded)
        .sum()
}

/// Waits until the relays forwarded `bytes` more than `base` (a transfer is under way
/// through them), or panics if the transfer ends first.
fn wait_relay_traffic(lab: &Lab, relays: &[&Relay], base: u64, bytes: u64, t: &Transfer) {
    wait_until(
        Duration::from_secs(30),
        "the transfer to flow through the relay",
        || {
            assert!(
                t.is_running(lab),
                "the transfer ended before it was seen at the relay"
            );
            relayed_bytes(lab, relays) >= base + bytes
        },
    );
}

/// a (symmetric) and b (port-restricted) talk through the relay; mid-transfer a's router is
/// replaced by a fresh port-restricted one: the pair must move to a direct path while the
/// paced transfer runs, and the one TCP connection must carry every byte intact.
fn upgrade_to_direct(tag: &str) {
    let lab = Lab::new(tag);
    let w = world(&lab, &[("r1", RELAY1_IP)]);
    let started = Instant::now();
    let p = pair(&lab, &w, Nat::Symmetric, Nat::PortRestricted);
    relayed_both_ways(&lab, &w, &p, started);
    let relay = w.relay("r1");

    let base = relayed_bytes(&lab, &[relay]);
    let t = Transfer::start(
        &lab,
        &p.a.host.ns,
        &p.b.host.ns,
        &format!("{}:{TRANSFER_PORT}", p.sb.mesh_ip),
        UPGRADE_BYTES,
        Some(LONG_RATE_MBPS),
        LONG_LIMIT,
    );
    wait_relay_traffic(&lab, &[relay], base, 3_000_000, &t);
    for (n, peer) in [(&p.a, "b"), (&p.b, "a")] {
        let s = n.status(&lab).expect("status");
        assert_eq!(
            s.peer(peer).map(|x| x.path.as_str()),
            Some("relay"),
            "{} is not relayed before the NAT changed: {}",
            n.name,
            s.raw
        );
    }

    let changed = Instant::now();
    let at = t.elapsed();
    lab.set_nat(&p.ra, Nat::PortRestricted);
    lab.conntrack_flush(&p.ra);
    eprintln!("ra replaced {:.1}s into the transfer", at.as_secs_f64());
    let pb = p.a.wait_path(&lab, "b", "direct", UPGRADE_TIMEOUT);
    let pa = p.b.wait_path(&lab, "a", "direct", UPGRADE_TIMEOUT);
    let direct_after = changed.elapsed();
    let running = t.is_running(&lab);
    eprintln!(
        "direct both ways {:.2}s after the NAT change (a -> b {:?}, b -> a {:?}); transfer {}",
        direct_after.as_secs_f64(),
        pb.endpoint,
        pa.endpoint,
        if running { "still running" } else { "finished" }
    );
    assert!(
        running,
        "the transfer finished before the pair went direct ({:.1}s after the NAT change): \
         the test proves nothing",
        direct_after.as_secs_f64()
    );
    let ip = |p: &Peer| {
        p.endpoint
            .as_deref()
            .and_then(|e| e.rsplit_once(':'))
            .map(|x| x.0.to_string())
    };
    assert_eq!(
        ip(&pb).as_deref(),
        Some(RB_WAN),
        "a's direct endpoint for b is not b's NAT"
    );
    assert_eq!(
        ip(&pa).as_deref(),
        Some(RA_WAN),
        "b's direct endpoint for a is not a's NAT"
    );
    let at_direct = relayed_bytes(&lab, &[relay]);
    t.finish(&lab, LONG_LIMIT);
    let after = relayed_bytes(&lab, &[relay]);
    eprintln!(
        "relay forwarded {} bytes of the transfer before the pair went direct, {} after",
        at_direct - base,
        after - at_direct
    );
    for (n, peer) in [(&p.a, "b"), (&p.b, "a")] {
        let s = n.status(&lab).expect("status");
        assert_eq!(
            s.peer(peer).map(|x| x.path.as_str()),
            Some("direct"),
            "{} fell off the direct path: {}",
            n.name,
            s.raw
        );
    }
    assert_ping(&lab, &p.a, "b", &p.sb.mesh_ip);
    assert_ping(&lab, &p.b, "a", &p.sa.mesh_ip);
}

/// A relayed pair goes direct mid-transfer when a's symmetric NAT is replaced by a fresh
/// port-restricted one (every mapping of a is new: the relay and the coordinator see a move).
///
/// Note: `set_nat(ra, PortRestricted)` *without* the flush cannot work, for any node: a's
/// mapping towards b stays the old random one (a's own punches keep it alive), and b's
/// port-restricted NAT only lets in what comes from where b sent, which is a's public
/// endpoint as the coordinator sees it, another old mapping.
#[test]
fn relay_upgrade_after_nat_reset() {
    if !require_root() {
        return;
    }
    upgrade_to_direct("relupreset");
}

/// Two relays; a symmetric pair talks through one of them. That relay is killed (SIGKILL)
/// mid-transfer: pings must work again within seconds, both nodes must move to the other
/// relay, and the transfer must complete intact.
#[test]
fn relay_failover() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("relfail");
    let w = world(&lab, &[("r1", RELAY1_IP), ("r2", RELAY2_IP)]);
    let started = Instant::now();
    let p = pair(&lab, &w, Nat::Symmetric, Nat::Symmetric);
    for r in &w.relays {
        r.wait_status(&lab, MESH_TIMEOUT, "2 members, both bound", |s| {
            s.members == 2 && s.members_connected == 2
        });
    }
    let (pb, pa) = relayed_both_ways(&lab, &w, &p, started);
    assert_lists_relays(&lab, &w, &p.a);
    assert_lists_relays(&lab, &w, &p.b);
    let doomed = pb.relay.clone().expect("relayed");
    let survivor = w
        .relays
        .iter()
        .find(|r| r.name != doomed)
        .expect("two relays")
        .name
        .clone();
    eprintln!(
        "a -> b goes through {doomed}, b -> a through {}; killing {doomed}",
        pa.relay.as_deref().unwrap_or("?")
    );

    let all: Vec<&Relay> = w.relays.iter().collect();
    let base = relayed_bytes(&lab, &all);
    let t = Transfer::start(
        &lab,
        &p.a.host.ns,
        &p.b.host.ns,
        &format!("{}:{TRANSFER_PORT}", p.sb.mesh_ip),
        LONG_BYTES,
        Some(LONG_RATE_MBPS),
        LONG_LIMIT,
    );
    wait_relay_traffic(&lab, &all, base, 3_000_000, &t);

    // Pings every 100 ms across the kill; -D stamps every reply with the time it came.
    let pinger = lab.spawn(
        &p.a.host.ns,
        "ping",
        ["-n", "-D", "-i", "0.1", &p.sb.mesh_ip],
        "ping-a-b",
    );
    wait_until(Duration::from_secs(10), "the first ping reply", || {
        !reply_times(&lab.log(&pinger)).is_empty()
    });
    let killed = Instant::now();
    let killed_unix = unix_now();
    lab.kill_now(w.relay(&doomed).proc());
    // Replies still in flight at the kill arrive within a few ms; anything 200 ms later
    // went through the new path.
    let resumed = wait_for(
        Duration::from_secs(30),
        "pings a -> b to get answers again after the relay died",
        || {
            reply_times(&lab.log(&pinger))
                .into_iter()
                .find(|&t| t > killed_unix + 0.2)
                .map(|t| t - killed_unix)
        },
    );
    lab.kill(&pinger);
    eprintln!("pings a -> b answered again {resumed:.2}s after {doomed} was killed");
    let pb2 = wait_relayed(&lab, &w, &p.a, "b", Duration::from_secs(15));
    let pa2 = wait_relayed(&lab, &w, &p.b, "a", Duration::from_secs(15));
    eprintln!(
        "{:.2}s after the kill: a -> b via {:?}, b -> a via {:?}; transfer {}",
        killed.elapsed().as_secs_f64(),
        pb2.relay,
        pa2.relay,
        if t.is_running(&lab) {
            "still running"
        } else {
            "finished"
        }
    );
    assert_eq!(pb2.relay.as_deref(), Some(survivor.as_str()));
    assert_eq!(pa2.relay.as_deref(), Some(survivor.as_str()));
    assert!(
        resumed <= FAILOVER_PING_LIMIT.as_secs_f64(),
        "pings a -> b resumed only {resumed:.2}s after the relay died (limit {}s)",
        FAILOVER_PING_LIMIT.as_secs()
    );
    assert_ping(&lab, &p.b, "a", &p.sa.mesh_ip);
    let before = w.relay(&survivor).status(&lab).expect("survivor status");
    t.finish(&lab, LONG_LIMIT);
    let s = w.relay(&survivor).status(&lab).expect("survivor status");
    eprintln!("{survivor} after the transfer: {}", s.raw);
    assert!(
        s.packets_forwarded > before.packets_forwarded,
        "the surviving relay forwarded nothing after the kill"
    );
}

/// Seconds since the Unix epoch, as `ping -D` stamps replies.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The receive times of the replies in a `ping -D` log:
/// `[1700000000.123456] 64 bytes from 100.64.0.2: icmp_seq=7 ttl=64 time=0.9 ms`.
fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Non-members
// ---------------------------------------------------------------------------------------

/// A small deterministic generator for the stranger's junk.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A relay frame: `LM`, version 1, `kind`, then `body`.
fn frame(kind: u8, body: &[&[u8]]) -> Vec<u8> {
    let mut f = vec![b'L', b'M', 0x01, kind];
    for part in body {
        f.extend_from_slice(part);
    }
    f
}

const KIND_BIND: u8 = 8;
const KIND_SEND: u8 = 10;

/// A 72-byte bind from `sender` with a random nonce and a random (so wrong) seal.
fn bind_frame(rng: &mut SplitMix64, sender: &[u8; 32]) -> Vec<u8> {
    let f = frame(KIND_BIND, &[sender, &rng.bytes(12), &rng.bytes(24)]);
    assert_eq!(f.len(), 72);
    f
}

/// A send frame on `session` to `to` with a random payload of `len` bytes and a random MAC.
/// Odd payload lengths make the frame unlike any member's (WireGuard datagrams are
/// multiples of 4 bytes), so a forwarded one is recognisable at the receiver.
fn send_frame(rng: &mut SplitMix64, session: u32, to: &[u8; 32], len: usize) -> Vec<u8> {
    let counter = rng.next();
    frame(
        KIND_SEND,
        &[
            &session.to_le_bytes(),
            &counter.to_le_bytes(),
            to,
            &rng.bytes(len),
            &rng.bytes(16),
        ],
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes standard base64 (as `node status` shows keys).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.trim().bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn key_bytes(key: &str) -> [u8; 32] {
    base64_decode(key)
        .and_then(|v| v.try_into().ok())
        .unwrap_or_else(|| panic!("{key:?} is not a base64 32-byte key"))
}

/// What the stranger's `udp-send` saw come back.
#[derive(Debug)]
struct Replies {
    datagrams: u64,
    bytes: u64,
    largest: u64,
    output: String,
}

/// Sends `frames` (each `rounds` times) from the stranger's port 40000 to the relay, keeps
/// listening 1.5 s, and returns what came back.
fn stranger_sends(lab: &Lab, ns: &str, relay: &Relay, frames: &[Vec<u8>], rounds: u32) -> Replies {
    let mut args = vec![
        "udp-send".to_string(),
        "--to".into(),
        relay.addr.clone(),
        "--bind".into(),
        format!("{STRANGER_IP}:40000"),
        "--count".into(),
        rounds.to_string(),
        "--recv-ms".into(),
        "1500".into(),
    ];
    for f in frames {
        args.extend(["--hex".to_string(), hex(f)]);
    }
    let out = lab.exec(ns, testkit_bin!(), &args);
    let text = lanmesh_e2e::stdout(&out);
    assert!(
        out.status.success(),
        "udp-send failed ({}): {text}{}",
        out.status,
        lanmesh_e2e::stderr(&out)
    );
    // "received N datagrams B bytes, largest L"
    let line = text
        .lines()
        .find(|l| l.starts_with("received "))
        .unwrap_or_else(|| panic!("udp-send printed no summary: {text}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 3, "cannot parse {line:?}");
    Replies {
        datagrams: nums[0],
        bytes: nums[1],
        largest: nums[2],
        output: text,
    }
}

/// Waits until the relay's `packets_forwarded` has not changed for `quiet`; returns the
/// status.
fn wait_quiet(lab: &Lab, relay: &Relay, quiet: Duration) -> RelayStatus {
    let mut last: Option<(u64, Instant)> = None;
    relay.wait_status(
        lab,
        Duration::from_secs(40),
        &format!("nothing forwarded for {}s", quiet.as_secs()),
        |s| match last {
            Some((n, since)) if n == s.packets_forwarded => since.elapsed() >= quiet,
            _ => {
                last = Some((s.packets_forwarded, Instant::now()));
                false
            }
        },
    )
}

/// One attack from the stranger: sends `frames` `rounds` times, then checks that the relay
/// dropped them all (its `dropped` grew by at least as many), forwarded nothing, answered
/// nothing, and that node b got nothing odd-sized from the relay.
fn attack(
    lab: &Lab,
    what: &str,
    stranger_ns: &str,
    relay: &Relay,
    b: &Node,
    frames: &[Vec<u8>],
    rounds: u32,
) {
    let before = relay.status(lab).expect("relay status");
    let replies = stranger_sends(lab, stranger_ns, relay, frames, rounds);
    let n = frames.len() as u64 * u64::from(rounds);
    let after = relay.wait_status(
        lab,
        Duration::from_secs(10),
        &format!("{what}: {n} more datagrams dropped"),
        |s| s.dropped >= before.dropped + n,
    );
    eprintln!(
        "{what}: sent {n} datagrams; relay dropped {} more, forwarded {} more; the stranger \
         got {} datagrams ({} bytes) back",
        after.dropped - before.dropped,
        after.packets_forwarded - before.packets_forwarded,
        replies.datagrams,
        replies.bytes
    );
    assert_eq!(
        after.packets_forwarded, before.packets_forwarded,
        "{what}: the relay forwarded something: before {}, after {}",
        before.raw, after.raw
    );
    let request = frames.iter().map(Vec::len).min().unwrap_or(0) as u64;
    assert!(
        replies.largest <= request,
        "{what}: the relay answered with a datagram of {} bytes, bigger than the request \
         ({request}):\n{}",
        replies.largest,
        replies.output
    );
    assert_eq!(
        replies.datagrams, 0,
        "{what}: the relay answered a non-member:\n{}",
        replies.output
    );
    assert_eq!(
        lab.packets_counted(&b.host.ns, "stranger"),
        0,
        "{what}: node b received a frame the stranger sent"
    );
}

/// A relay with two members (a and b, both behind symmetric NATs):
/// (a) a stranger's binds with random keys and sends with random sessions are dropped and
///     answered with nothing;
/// (c) so are binds that claim to be member a (random seal) and sends with guessed sessions;
///     meanwhile a and b still talk through the relay;
/// (b) after `coordinator nodes remove b` the relay has one member within seconds and a's
///     traffic to b no longer gets through it.
#[test]
fn relay_refuses_non_members() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("relrefuse");
    let w = world(&lab, &[("r1", RELAY1_IP)]);
    let stranger = lab.add_host("stranger", STRANGER_IP);
    let started = Instant::now();
    // Idle tunnels stay quiet (no keepalives through the relay) while the stranger is at it,
    // so that the relay's forwarding counter shows exactly what it did for the stranger.
    let p = pair_with(&lab, &w, Nat::Symmetric, Nat::Symmetric, Some(120));
    let relay = w.relay("r1");
    relay.wait_status(&lab, MESH_TIMEOUT, "2 members, both bound", |s| {
        s.members == 2 && s.members_connected == 2
    });
    // The nodes may open their tunnel on their own (a WireGuard handshake through the
    // relay) right after they met: wait until the relay has forwarded nothing for 3 s.
    let s0 = wait_quiet(&lab, relay, Duration::from_secs(3));
    eprintln!("relay with both members bound, quiet: {}", s0.raw);
    // Anything odd-sized from the relay reaching b came from the stranger.
    lab.count_packets(
        &p.b.host.ns,
        "stranger",
        &format!("ip saddr {RELAY1_IP} udp length & 1 == 1"),
    );
    // The same kind of counter at the relay, for the stranger's odd-sized sends: proves
    // the counting works (the relay does get them).
    lab.count_packets(
        &relay.host.ns,
        "stranger",
        &format!("ip saddr {STRANGER_IP} udp length & 1 == 1"),
    );
    let key_a = key_bytes(&p.sa.public_key);
    let key_b = key_bytes(&p.sb.public_key);
    let mut rng = SplitMix64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7),
    );

    // (a) Strangers: binds with random keys, sends on random sessions to b.
    let mut frames = Vec::new();
    for _ in 0..4 {
        let k: [u8; 32] = rng.bytes(32).try_into().expect("32 bytes");
        frames.push(bind_frame(&mut rng, &k));
    }
    for len in [1001, 333, 77] {
        let session = rng.next() as u32;
        frames.push(send_frame(&mut rng, session, &key_b, len));
    }
    attack(
        &lab,
        "(a) random binds and sends",
        &stranger.ns,
        relay,
        &p.b,
        &frames,
        5,
    );
    let odd_at_relay = lab.packets_counted(&relay.host.ns, "stranger");
    assert!(
        odd_at_relay >= 15,
        "the relay's host counted {odd_at_relay} odd-sized datagrams from the stranger, \
         which sent 15: the packet counters do not work"
    );
    let s = relay.status(&lab).expect("relay status");
    assert_eq!(
        (s.members, s.members_connected),
        (2, 2),
        "the stranger changed the relay's members: {}",
        s.raw
    );

    // (c) A forged sender: binds claiming to be a (the seal cannot be right), then sends on
    // guessed sessions, small numbers and random ones, as if the bind had worked.
    let mut frames = Vec::new();
    for _ in 0..4 {
        frames.push(bind_frame(&mut rng, &key_a));
    }
    for session in [0u32, 1, 2, 3] {
        frames.push(send_frame(&mut rng, session, &key_b, 1001));
    }
    for _ in 0..8 {
        let session = rng.next() as u32;
        frames.push(send_frame(&mut rng, session, &key_b, 201));
    }
    attack(
        &lab,
        "(c) binds as member a with a bad seal, guessed sessions",
        &stranger.ns,
        relay,
        &p.b,
        &frames,
        5,
    );

    // The members still talk through the relay (its refusals are not a blanket refusal).
    relayed_both_ways(&lab, &w, &p, started);
    let s = relay.status(&lab).expect("relay status");
    assert!(
        s.packets_forwarded > 0,
        "the relay forwarded nothing for its members: {}",
        s.raw
    );
    assert_eq!(
        lab.packets_counted(&p.b.host.ns, "stranger"),
        0,
        "node b received a frame the stranger sent"
    );

    // (b) b is removed at the coordinator.
    let removed = Instant::now();
    w.coord.remove_node(&lab, "b");
    let s = relay.wait_status(&lab, REMOVAL_TIMEOUT, "1 member after b's removal", |s| {
        s.members == 1
    });
    eprintln!(
        "relay has 1 member {:.2}s after b's removal: {}",
        removed.elapsed().as_secs_f64(),
        s.raw
    );
    assert!(
        s.members_connected <= 1,
        "relay still counts b as connected: {}",
        s.raw
    );
    wait_until(
        REMOVAL_TIMEOUT,
        "a's pings to b to stop getting through",
        || lab.ping_received(&p.a.host.ns, &p.sb.mesh_ip, 2) == 0,
    );
    eprintln!(
        "a's pings to b fail {:.2}s after b's removal",
        removed.elapsed().as_secs_f64()
    );
    // Nothing more is forwarded between them while a keeps trying.
    let f1 = relay.status(&lab).expect("relay status").packets_forwarded;
    let got = lab.ping_received(&p.a.host.ns, &p.sb.mesh_ip, 5);
    let got_back = lab.ping_received(&p.b.host.ns, &p.sa.mesh_ip, 3);
    let s = relay.status(&lab).expect("relay status");
    assert_eq!(got, 0, "a's pings reached removed node b");
    assert_eq!(got_back, 0, "removed node b's pings reached a");
    assert_eq!(
        s.packets_forwarded, f1,
        "the relay still forwards for removed node b: {}",
        s.raw
    );
    assert_eq!(s.members, 1, "{}", s.raw);
    if lab.is_running(p.b.proc()) {
        eprintln!(
            "removed node b still runs; its status: {:?}",
            p.b.status(&lab).map(|s| s.raw)
        );
    } else {
        eprintln!("removed node b exited");
    }
}
