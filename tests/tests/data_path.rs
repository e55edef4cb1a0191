//! The fast data path end to end: real `node` (and `relay`) binaries, real TUN devices, bulk
//! TCP both ways at once, with segmentation offload on (TUN TSO/GRO, UDP GSO/GRO) and forced
//! off (`--offload=false`), over a direct path and through a relay.
//!
//! ```text
//!   coordinator 203.0.113.10:3478, relay r1 203.0.113.30        on the switch
//!   direct:  node a 203.0.113.21, node b 203.0.113.22           on the switch
//!   relayed: router ra 203.0.113.21 (symmetric) ── node a
//!            router rb 203.0.113.22 (symmetric) ── node b
//! ```
//!
//! - `bulk_both_ways_{direct,relayed}_{offload,no_offload}`: 200 MB a → b and 200 MB b → a
//!   at the same time, every byte checksummed; `node status` must show the batching that was
//!   asked for (trains of packets per call with offload, one per call without) and the
//!   WireGuard byte counters of the two ends must agree.
//! - `mixed_traffic_under_bulk`: while a bulk transfer fills the path, small UDP datagrams
//!   and pings between the same pair all arrive.
//!
//! A relayed transfer that moves to a direct path midway is `relay_upgrade_after_nat_reset`
//! in `relay.rs` (offload is on by default).
//!
//! Needs root; skips without it (fails under `CI`).

use lanmesh_e2e::mesh::{Node, Status, MESH_TIMEOUT};
use lanmesh_e2e::world::{host_pair, World, WorldSpec};
use lanmesh_e2e::{require_root, testkit, wait_for, wait_until, Lab, Transfer};
use serde_json::Value;
use std::time::Duration;

const BULK_BYTES: u64 = 200 * 1000 * 1000;
const LIMIT: Duration = Duration::from_secs(180);

/// Nodes a and b that know each other, on a direct or a relayed path.
struct Pair {
    a: Node,
    b: Node,
    a_ip: String,
    b_ip: String,
}

fn pair(lab: &Lab, w: &World, relayed: bool, offload: bool) -> Pair {
    let (ha, hb) = host_pair(lab, relayed);
    let flag = format!("--offload={offload}");
    let mut nodes = Vec::new();
    for (h, name) in [(&ha, "a"), (&hb, "b")] {
        let mut n = Node::new(lab, h, name, &w.coord.addr);
        n.up(lab, Some(&w.key), &["--interface", "lm0", &flag]);
        nodes.push(n);
    }
    let b = nodes.pop().expect("two nodes");
    let a = nodes.pop().expect("two nodes");
    let b_ip = b.wait_peers(lab, 1, MESH_TIMEOUT).mesh_ip;
    let a_ip = a.wait_peers(lab, 1, MESH_TIMEOUT).mesh_ip;
    for (from, ip) in [(&a, &b_ip), (&b, &a_ip)] {
        wait_until(MESH_TIMEOUT, "a first ping", || {
            lab.ping(&from.host.ns, ip, 1)
        });
    }
    let path = if relayed { "relay" } else { "direct" };
    a.wait_path(lab, "b", path, MESH_TIMEOUT);
    b.wait_path(lab, "a", path, MESH_TIMEOUT);
    Pair { a, b, a_ip, b_ip }
}

fn counter(s: &Status, key: &str) -> u64 {
    s.raw["data_path"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no data_path.{key}: {}", s.raw))
}

fn flag(s: &Status, key: &str) -> bool {
    s.raw["data_path"][key] == Value::Bool(true)
}

/// Packets per call, e.g. `per(s, "tun_packets_in", "tun_reads")`.
fn per(s: &Status, packets: &str, calls: &str) -> f64 {
    counter(s, packets) as f64 / counter(s, calls).max(1) as f64
}

/// Polls until each end's WireGuard byte counters match the other's (bytes sealed by one
/// are the bytes the other opened: nothing was lost or counted twice).
fn counters_agree(lab: &Lab, p: &Pair) -> (u64, u64) {
    wait_for(
        Duration::from_secs(15),
        "a's and b's byte counters to agree",
        || {
            let sa = p.a.status(lab)?;
            let sb = p.b.status(lab)?;
            let (ab, ba) = (sa.peer("b")?, sb.peer("a")?);
            (ab.tx_bytes == ba.rx_bytes && ba.tx_bytes == ab.rx_bytes)
                .then_some((ab.tx_bytes, ba.tx_bytes))
        },
    )
}

fn bulk_both_ways(tag: &str, relayed: bool, offload: bool) {
    if !require_root() {
        return;
    }
    let what = format!(
        "{}, offload {}",
        if relayed { "relayed" } else { "direct" },
        if offload { "on" } else { "off" }
    );
    let lab = Lab::new(tag);
    let relays: &[(&str, &str)] = if relayed {
        &[("r1", "203.0.113.30")]
    } else {
        &[]
    };
    let w = World::build(
        &lab,
        WorldSpec {
            stun: false,
            relays,
        },
    );
    let p = pair(&lab, &w, relayed, offload);
    // a → b and b → a at once.
    let transfers = [(&p.a, &p.b, &p.b_ip, 5001), (&p.b, &p.a, &p.a_ip, 5002)].map(
        |(from, to, to_ip, port)| {
            let target = format!("{to_ip}:{port}");
            let t = Transfer::start(
                &lab,
                &from.host.ns,
                &to.host.ns,
                &target,
                BULK_BYTES,
                None,
                LIMIT,
            );
            (format!("{} → {}", from.name, to.name), t)
        },
    );
    for (direction, t) in transfers {
        let took = t.finish(&lab, LIMIT);
        let mbit = BULK_BYTES as f64 * 8.0 / took.as_secs_f64() / 1e6;
        eprintln!("{what}: {direction} {mbit:.0} Mbit/s (both ways at once)");
    }
    let (ab, ba) = counters_agree(&lab, &p);
    assert!(
        ab >= BULK_BYTES && ba >= BULK_BYTES,
        "{what}: sealed {ab} and {ba} bytes for 200 MB each way"
    );
    for node in [&p.a, &p.b] {
        let s = node.status(&lab).expect("status");
        eprintln!("{what}: {} data path {}", node.name, s.raw["data_path"]);
        assert_eq!(flag(&s, "tun_offload"), offload, "{what}: {}", s.raw);
        assert_eq!(flag(&s, "udp_gso"), offload, "{what}: {}", s.raw);
        let reads = per(&s, "tun_packets_in", "tun_reads");
        let sends = per(&s, "udp_datagrams_out", "udp_sends");
        let writes = per(&s, "tun_packets_out", "tun_writes");
        if offload {
            // Bulk TCP comes from the kernel in trains and goes back coalesced.
            assert!(reads > 2.0, "{what}: {reads:.2} packets per TUN read");
            assert!(sends > 2.0, "{what}: {sends:.2} datagrams per UDP send");
            assert!(writes > 2.0, "{what}: {writes:.2} packets per TUN write");
        } else {
            assert_eq!(reads, 1.0, "{what}: packets per TUN read");
            assert_eq!(sends, 1.0, "{what}: datagrams per UDP send");
            assert!(
                (0.99..=1.0).contains(&writes),
                "{what}: {writes:.3} packets per TUN write"
            );
        }
    }
}

#[test]
fn bulk_both_ways_direct_offload() {
    bulk_both_ways("dpdo", false, true);
}

#[test]
fn bulk_both_ways_direct_no_offload() {
    bulk_both_ways("dpdn", false, false);
}

#[test]
fn bulk_both_ways_relayed_offload() {
    bulk_both_ways("dpro", true, true);
}

#[test]
fn bulk_both_ways_relayed_no_offload() {
    bulk_both_ways("dprn", true, false);
}

/// While bulk TCP fills the direct path a → b, 40 small UDP requests a → b (each answered
/// b → a) and 10 pings share it: none may be lost, and the byte counters agree afterwards.
#[test]
fn mixed_traffic_under_bulk() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("dpmix");
    let w = World::build(&lab, WorldSpec::default());
    let p = pair(&lab, &w, false, true);
    let bulk = Transfer::start(
        &lab,
        &p.a.host.ns,
        &p.b.host.ns,
        &format!("{}:5001", p.b_ip),
        10 * BULK_BYTES,
        None,
        LIMIT,
    );
    // Under way: a sealed a good part of it.
    wait_until(Duration::from_secs(30), "the bulk transfer to flow", || {
        p.a.status(&lab)
            .and_then(|s| s.peer("b").map(|b| b.tx_bytes > BULK_BYTES / 4))
            .unwrap_or(false)
    });
    let tk = testkit();
    let echo_addr = format!("{}:7000", p.b_ip);
    let echo = lab.spawn(
        &p.b.host.ns,
        &tk,
        ["udp-echo", "--listen", &echo_addr, "--timeout", "60"],
        "udp-echo",
    );
    wait_until(Duration::from_secs(10), "udp-echo to listen", || {
        lab.listening(&p.b.host.ns, 7000)
    });
    let small = lab.spawn(
        &p.a.host.ns,
        &tk,
        [
            "udp-send",
            "--to",
            &echo_addr,
            "--text",
            "probe",
            "--count",
            "40",
            "--recv-ms",
            "1500",
        ],
        "udp-send",
    );
    let pings = lab.ping_received(&p.a.host.ns, &p.b_ip, 10);
    lab.wait_exit(&small, Duration::from_secs(30))
        .expect("udp-send finished");
    assert!(
        bulk.is_running(&lab),
        "the bulk transfer ended before the small traffic did: the test proves nothing"
    );
    let log = lab.log(&small);
    assert_eq!(pings, 10, "pings lost under bulk traffic");
    // "<local> got \"probe\" from <src>", one line per request.
    let echoed = lab.log(&echo).matches("got \"probe\"").count();
    assert_eq!(
        echoed, 40,
        "small UDP requests lost under bulk traffic (a → b)"
    );
    assert!(
        log.contains("received 40 datagrams"),
        "small UDP answers lost under bulk traffic (b → a): {log}"
    );
    bulk.finish(&lab, LIMIT);
    let (ab, ba) = counters_agree(&lab, &p);
    eprintln!("mixed: a sealed {ab} bytes for b, b {ba} for a");
    assert!(ab >= 10 * BULK_BYTES, "a sealed only {ab} bytes");
}
