//! NAT traversal end to end: the real `coordinator` and `node` binaries with every node
//! behind a lab NAT router (see [`Nat`] and `nat_lab.rs`, which proves what each router
//! kind does).
//!
//! ```text
//!   coordinator 203.0.113.10:3478 (also STUN)          on the switch ("the internet")
//!   stun        203.0.113.11:3478 (a second coordinator, used only as an extra STUN server)
//!   router ra 203.0.113.21 ── 10.N.0.2 node a (port 41641)
//!   router rb 203.0.113.22 ── 10.M.0.2 node b (port 41700)
//! ```
//!
//! Pairs of NATs that allow hole punching must reach `path: "direct"` within seconds and
//! carry pings and a checksummed TCP transfer; pairs that cannot (port-restricted or
//! symmetric facing symmetric) must never claim `"direct"`. Three pairs run here through real
//! NATs; the whole matrix runs in the simulator (`sim.rs`).
//!
//! Needs root; skips without it (fails under `CI`).

use lanmesh_e2e::mesh::{assert_ping, Node, Peer, Status, MESH_TIMEOUT};
use lanmesh_e2e::world::{World, WorldSpec};
use lanmesh_e2e::{require_root, transfer, wait_until, Lab, Nat, Router};
use std::time::{Duration, Instant};

/// How long a punchable pair may take to show `"direct"` both ways (aim: a few seconds).
const DIRECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an unpunchable pair is watched for a false `"direct"` after both registered.
const OBSERVE: Duration = Duration::from_secs(8);
/// How long pings may take to work again after a NAT lost its mappings.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
const TRANSFER_BYTES: u64 = 2 * 1024 * 1024;
const PORT_A: &str = "41641";
const PORT_B: &str = "41700";

/// The coordinator with a reusable join key, and a second STUN server, on the switch.
fn world(lab: &Lab) -> World {
    World::build(
        lab,
        WorldSpec {
            stun: true,
            relays: &[],
        },
    )
}

/// If the node reports `mapping_varies_by_destination` (its own STUN verdict on its NAT),
/// waits until it is known and checks it against the lab: true exactly for a symmetric NAT.
fn check_nat_detection(lab: &Lab, node: &Node, nat: Nat) {
    const FIELD: &str = "mapping_varies_by_destination";
    let Some(s) = node.status(lab) else { return };
    if s.raw.get(FIELD).is_none() {
        return;
    }
    let s = node.wait_status(
        lab,
        Duration::from_secs(10),
        &format!("{FIELD} known"),
        |s| s.raw.get(FIELD).is_some_and(|v| v.is_boolean()),
    );
    let varies = s.raw[FIELD].as_bool();
    assert_eq!(
        varies,
        Some(nat == Nat::Symmetric),
        "node {} behind a {nat:?} NAT says {FIELD} = {varies:?}",
        node.name
    );
}

/// Starts `a`, waits until it has joined, then starts `b`, and waits until each lists the
/// other. Returns both statuses.
fn join_pair(lab: &Lab, a: &Node, b: &mut dyn FnMut() -> Node) -> (Node, Status, Status) {
    a.wait_status(lab, MESH_TIMEOUT, "joined (has a mesh IP)", |s| {
        !s.mesh_ip.is_empty()
    });
    let b = b();
    let sb = b.wait_peers(lab, 1, MESH_TIMEOUT);
    let sa = a.wait_peers(lab, 1, MESH_TIMEOUT);
    (b, sa, sb)
}

/// Waits until `a` and `b` both use a direct path to each other; returns (a's view of b,
/// b's view of a) and prints how long it took since `since`.
fn wait_direct(lab: &Lab, a: &Node, b: &Node, since: Instant) -> (Peer, Peer) {
    let pb = a.wait_path(lab, &b.name, "direct", DIRECT_TIMEOUT);
    let pa = b.wait_path(lab, &a.name, "direct", DIRECT_TIMEOUT);
    eprintln!(
        "{} <-> {}: direct both ways {:.2}s after {} started ({} uses {:?}, {} uses {:?})",
        a.name,
        b.name,
        since.elapsed().as_secs_f64(),
        b.name,
        a.name,
        pb.endpoint,
        b.name,
        pa.endpoint
    );
    (pb, pa)
}

/// The IP part of a peer's endpoint (`"ip:port"`); panics if there is none.
fn endpoint_ip(p: &Peer) -> String {
    let ep = p
        .endpoint
        .as_deref()
        .unwrap_or_else(|| panic!("direct peer {} has no endpoint", p.name));
    ep.rsplit_once(':')
        .map(|(ip, _)| ip.to_string())
        .unwrap_or_else(|| panic!("endpoint {ep:?} of {} is not IP:PORT", p.name))
}

/// Polls both nodes for `OBSERVE` in parallel; asserts neither ever shows `"direct"` for
/// the other, and that both did report a path (so the check is not vacuous).
fn assert_never_direct(lab: &Lab, a: &Node, b: &Node, what: &str) {
    let (seen_a, seen_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.observe_paths(lab, &b.name, OBSERVE));
        let seen_b = b.observe_paths(lab, &a.name, OBSERVE);
        (ta.join().expect("observer thread"), seen_b)
    });
    eprintln!(
        "{what}: paths over {}s: {} -> {}: {seen_a:?}, {} -> {}: {seen_b:?}",
        OBSERVE.as_secs(),
        a.name,
        b.name,
        b.name,
        a.name
    );
    for (from, to, seen) in [(a, b, &seen_a), (b, a, &seen_b)] {
        assert!(
            !seen.is_empty(),
            "{what}: {} never reported a path to {}",
            from.name,
            to.name
        );
        assert!(
            !seen.iter().any(|p| p == "direct"),
            "{what}: {} claimed a direct path to {} although the NATs cannot be punched \
             (paths seen: {seen:?})",
            from.name,
            to.name
        );
        for p in seen {
            assert!(
                p == "connecting" || p == "relay",
                "{what}: {} reports an unknown path {p:?} to {}",
                from.name,
                to.name
            );
        }
    }
}

/// One pair of the matrix: node a behind a router of kind `na`, node b behind one of kind
/// `nb`, the coordinator on the switch.
fn nat_pair(tag: &str, na: Nat, nb: Nat) {
    let what = format!("{na:?} <-> {nb:?}");
    let lab = Lab::new(tag);
    let w = world(&lab);
    let ra = lab.add_router("ra", "203.0.113.21", na);
    let rb = lab.add_router("rb", "203.0.113.22", nb);
    let ha = lab.add_host_behind(&ra, "a", 2);
    let hb = lab.add_host_behind(&rb, "b", 2);

    let a = w.start_node(&lab, &ha, "a", PORT_A, None);
    let mut b_started = Instant::now();
    let (b, sa, sb) = join_pair(&lab, &a, &mut || {
        b_started = Instant::now();
        w.start_node(&lab, &hb, "b", PORT_B, None)
    });

    if !Nat::punchable(na, nb) {
        assert_never_direct(&lab, &a, &b, &what);
        check_nat_detection(&lab, &a, na);
        check_nat_detection(&lab, &b, nb);
        return;
    }

    let (pb, pa) = wait_direct(&lab, &a, &b, b_started);
    assert_eq!(
        endpoint_ip(&pb),
        rb.wan_ip.to_string(),
        "{what}: a's direct endpoint for b is not b's NAT"
    );
    assert_eq!(
        endpoint_ip(&pa),
        ra.wan_ip.to_string(),
        "{what}: b's direct endpoint for a is not a's NAT"
    );
    assert_ping(&lab, &a, "b", &sb.mesh_ip);
    assert_ping(&lab, &b, "a", &sa.mesh_ip);
    transfer(
        &lab,
        &a.host.ns,
        &b.host.ns,
        &sb.mesh_ip,
        5001,
        TRANSFER_BYTES,
    );
    // Still direct after carrying traffic.
    for (n, peer) in [(&a, "b"), (&b, "a")] {
        let s = n.status(&lab).expect("status");
        let p = s.peer(peer).expect("peer listed");
        assert_eq!(
            p.path, "direct",
            "{what}: {} fell off the direct path",
            n.name
        );
    }
}

macro_rules! nat_matrix {
    ($($name:ident: $a:ident, $b:ident;)*) => {
        $(
            #[test]
            fn $name() {
                if !require_root() {
                    return;
                }
                nat_pair(stringify!($name), Nat::$a, Nat::$b);
            }
        )*
    };
}

// Three pairs through real NATs (nftables in namespaces), one of each outcome: direct
// between port-restricted cones, direct between a full cone and a symmetric NAT (only through
// a peer-reflexive address), never direct between port-restricted and symmetric. Every other
// pair of kinds, with and without a relay, runs in the simulator (`tests/tests/sim.rs`,
// `nat_matrix`), whose NAT models must agree with these (`lab_and_simulator_agree`).
nat_matrix! {
    nat_port_port: PortRestricted, PortRestricted;
    nat_full_sym: FullCone, Symmetric;
    nat_port_sym: PortRestricted, Symmetric;
}

/// The table the lab's NATs encode, and the simulator's models agree with it.
#[test]
fn lab_and_simulator_agree() {
    use lanmesh_e2e::sim::{can_punch, nat::NatConfig};
    use Nat::*;
    let punchable = [
        (FullCone, FullCone),
        (FullCone, AddressRestricted),
        (FullCone, PortRestricted),
        (FullCone, Symmetric),
        (AddressRestricted, AddressRestricted),
        (AddressRestricted, PortRestricted),
        (AddressRestricted, Symmetric),
        (PortRestricted, PortRestricted),
    ];
    let model = |n: Nat| match n {
        FullCone => NatConfig::FULL_CONE,
        AddressRestricted => NatConfig::RESTRICTED,
        PortRestricted => NatConfig::PORT_RESTRICTED,
        Symmetric => NatConfig::SYMMETRIC,
    };
    for a in Nat::ALL {
        for b in Nat::ALL {
            let want = punchable.contains(&(a, b)) || punchable.contains(&(b, a));
            assert_eq!(Nat::punchable(a, b), want, "lab: {a:?} <-> {b:?}");
            assert_eq!(
                can_punch(Some(model(a)), Some(model(b))),
                Some(want),
                "sim: {a:?} <-> {b:?}"
            );
        }
    }
}

/// Two nodes behind one port-restricted router without hairpinning: they must find each
/// other's LAN address.
#[test]
fn nat_same_lan() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("natlan");
    let w = world(&lab);
    let r = lab.add_router("r", "203.0.113.21", Nat::PortRestricted);
    let ha = lab.add_host_behind(&r, "a", 2);
    let hb = lab.add_host_behind(&r, "b", 3);
    // Both on the default port: the router maps the second to another WAN port.
    let a = w.start_node(&lab, &ha, "a", PORT_A, None);
    let mut started = Instant::now();
    let (b, sa, sb) = join_pair(&lab, &a, &mut || {
        started = Instant::now();
        w.start_node(&lab, &hb, "b", PORT_A, None)
    });
    let (pb, pa) = wait_direct(&lab, &a, &b, started);
    assert_eq!(
        endpoint_ip(&pb),
        hb.ip.to_string(),
        "a does not use b's LAN address"
    );
    assert_eq!(
        endpoint_ip(&pa),
        ha.ip.to_string(),
        "b does not use a's LAN address"
    );
    assert_ping(&lab, &a, "b", &sb.mesh_ip);
    assert_ping(&lab, &b, "a", &sa.mesh_ip);
}

/// Double NAT: a behind a home router behind a carrier-grade NAT (both port-restricted;
/// the carrier LAN is 100.64.N.0/24, inside the mesh range) meets b behind a
/// port-restricted router.
#[test]
fn nat_double_nat() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("natdbl");
    let w = world(&lab);
    let carrier = lab.add_carrier_router("cgn", "203.0.113.30", Nat::PortRestricted);
    let home = lab.add_router_behind(&carrier, "home", Nat::PortRestricted);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::PortRestricted);
    let ha = lab.add_host_behind(&home, "a", 2);
    let hb = lab.add_host_behind(&rb, "b", 2);
    let a = w.start_node(&lab, &ha, "a", PORT_A, None);
    let mut started = Instant::now();
    let (b, sa, sb) = join_pair(&lab, &a, &mut || {
        started = Instant::now();
        w.start_node(&lab, &hb, "b", PORT_B, None)
    });
    let (_, pa) = wait_direct(&lab, &a, &b, started);
    assert_eq!(
        endpoint_ip(&pa),
        carrier.wan_ip.to_string(),
        "b does not reach a through the carrier's address"
    );
    assert_ping(&lab, &a, "b", &sb.mesh_ip);
    assert_ping(&lab, &b, "a", &sa.mesh_ip);
}

/// A node whose own underlay address is inside 100.64.0.0/10 (directly on a carrier-grade
/// NAT's LAN, as a phone would be) still reaches the coordinator and punches through to a
/// node behind a port-restricted router.
#[test]
fn nat_cgnat_underlay_in_mesh_range() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("natcgn");
    let w = world(&lab);
    let carrier = lab.add_carrier_router("cgn", "203.0.113.30", Nat::PortRestricted);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::PortRestricted);
    let ha = lab.add_host_behind(&carrier, "a", 2);
    assert_eq!(ha.ip.octets()[..2], [100, 64]);
    let hb = lab.add_host_behind(&rb, "b", 2);
    let a = w.start_node(&lab, &ha, "a", PORT_A, None);
    let mut started = Instant::now();
    let (b, sa, sb) = join_pair(&lab, &a, &mut || {
        started = Instant::now();
        w.start_node(&lab, &hb, "b", PORT_B, None)
    });
    wait_direct(&lab, &a, &b, started);
    assert_ping(&lab, &a, "b", &sb.mesh_ip);
    assert_ping(&lab, &b, "a", &sa.mesh_ip);
    // The underlay keeps working next to the mesh route.
    assert!(
        lab.ping(&ha.ns, carrier.lan_ip, 1),
        "a lost its own carrier gateway"
    );
}

/// Waits until `from` pings `to_ip` again within [`RECOVERY_TIMEOUT`]; returns how long it took.
fn wait_ping_back(lab: &Lab, from: &Node, to_name: &str, to_ip: &str, what: &str) -> f64 {
    let start = Instant::now();
    wait_until(
        RECOVERY_TIMEOUT,
        &format!("{what}: {} to ping {to_name} again", from.name),
        || lab.ping(&from.host.ns, to_ip, 1),
    );
    start.elapsed().as_secs_f64()
}

/// A port-restricted pair is direct; then a router forgets its mappings (`conntrack -F`),
/// later both do (one also gets its ruleset replaced). Pings must work again within
/// seconds and the path must be direct again.
#[test]
fn nat_mapping_loss() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("natloss");
    let w = world(&lab);
    let ra = lab.add_router("ra", "203.0.113.21", Nat::PortRestricted);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::PortRestricted);
    let ha = lab.add_host_behind(&ra, "a", 2);
    let hb = lab.add_host_behind(&rb, "b", 2);
    // A short keepalive (when the node has the flag), so that a side that has nothing to
    // send still refreshes its NAT within the recovery window.
    let a = w.start_node(&lab, &ha, "a", PORT_A, Some(5));
    let mut started = Instant::now();
    let (b, sa, sb) = join_pair(&lab, &a, &mut || {
        started = Instant::now();
        w.start_node(&lab, &hb, "b", PORT_B, Some(5))
    });
    wait_direct(&lab, &a, &b, started);
    assert_ping(&lab, &a, "b", &sb.mesh_ip);
    assert_ping(&lab, &b, "a", &sa.mesh_ip);

    let phases: [(&str, Vec<&Router>); 2] = [
        ("ra flushed", vec![&ra]),
        ("ra and rb flushed, rb's ruleset replaced", vec![&ra, &rb]),
    ];
    for (what, routers) in phases {
        if routers.len() == 2 {
            lab.set_nat(&rb, Nat::PortRestricted);
        }
        for r in &routers {
            lab.conntrack_flush(r);
        }
        // b -> a first: after ra's flush, b's packets are dropped at ra until a sends.
        let t_ba = wait_ping_back(&lab, &b, "a", &sa.mesh_ip, what);
        let t_ab = wait_ping_back(&lab, &a, "b", &sb.mesh_ip, what);
        eprintln!("{what}: b->a pings again after {t_ba:.2}s, a->b {t_ab:.2}s later");
        assert_ping(&lab, &a, "b", &sb.mesh_ip);
        assert_ping(&lab, &b, "a", &sa.mesh_ip);
        for (n, peer) in [(&a, "b"), (&b, "a")] {
            n.wait_path(&lab, peer, "direct", RECOVERY_TIMEOUT);
        }
    }
}
