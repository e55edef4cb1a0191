//! Tests of the NAT lab itself, independent of lanmesh: for every [`Nat`] kind, what
//! mapping and filtering behaviour the router really has, measured with `lanmesh-testkit
//! udp-echo`/`udp-probe`/`udp-send`. They are what makes the NAT traversal matrix in
//! `nat.rs` trustworthy.
//!
//! The setup of each test:
//!
//! ```text
//!   srv  203.0.113.20 (+ 203.0.113.30)   udp-echo on .20:5000, .20:5001, .30:5000
//!   other 203.0.113.40                   a third host that the inside host never contacts
//!   router 203.0.113.2 ── LAN 10.1.0.0/24: h 10.1.0.2, h2 10.1.0.3
//! ```
//!
//! Needs root; skips without it (fails under `CI`).

use lanmesh_e2e::udp::{self, Probe};
use lanmesh_e2e::{require_root, Host, Lab, Nat, Router};
use std::net::SocketAddr;
use std::time::Duration;

const S1: &str = "203.0.113.20:5000";
/// Same address as S1, another port.
const S1_PORT2: &str = "203.0.113.20:5001";
/// Another address of the same server.
const S2: &str = "203.0.113.30:5000";
const WAN: &str = "203.0.113.2";

struct NatLab {
    lab: Lab,
    router: Router,
    h: Host,
    h2: Host,
    other: Host,
}

fn nat_lab(tag: &str, nat: Nat) -> NatLab {
    let lab = Lab::new(tag);
    let srv = lab.add_host("srv", "203.0.113.20");
    let out = lab.exec(
        &srv.ns,
        "ip",
        ["addr", "add", "203.0.113.30/24", "dev", "eth0"],
    );
    assert!(out.status.success(), "cannot add a second address to srv");
    let other = lab.add_host("other", "203.0.113.40");
    let router = lab.add_router("r", WAN, nat);
    let h = lab.add_host_behind(&router, "h", 2);
    let h2 = lab.add_host_behind(&router, "h2", 3);
    udp::echo(&lab, &srv.ns, &[S1, S1_PORT2, S2]);
    NatLab {
        lab,
        router,
        h,
        h2,
        other,
    }
}

fn port(a: SocketAddr) -> u16 {
    a.port()
}

/// Mapping: one socket of h probes three destinations; returns the three mappings.
fn check_mapping(t: &NatLab, nat: Nat, bind_port: u16) -> Vec<SocketAddr> {
    let bind = format!("{}:{bind_port}", t.h.ip);
    let p = udp::probe(&t.lab, &t.h.ns, &bind, &[S1, S1_PORT2, S2], false, 0);
    let m: Vec<SocketAddr> = [S1, S1_PORT2, S2].iter().map(|s| p.mapping(s)).collect();
    eprintln!("{nat:?}: {bind} is seen as {m:?}");
    for a in &m {
        assert_eq!(
            a.ip().to_string(),
            t.router.wan_ip.to_string(),
            "{nat:?}: not masqueraded to the WAN address"
        );
    }
    if nat.endpoint_independent_mapping() {
        assert!(
            m.iter().all(|a| port(*a) == bind_port),
            "{nat:?}: mapping is not endpoint-independent (or not port-preserving): {m:?}"
        );
    } else {
        assert_ne!(
            port(m[0]),
            port(m[1]),
            "{nat:?}: same external port for another port of the same server: {m:?}"
        );
        assert_ne!(
            port(m[0]),
            port(m[2]),
            "{nat:?}: same external port for another server: {m:?}"
        );
    }
    m
}

/// Filtering: h probes S1 only and asks for `alt` replies from S1's other port and from
/// S2's other address; returns (other port got in, other address got in).
fn check_filtering(t: &NatLab, nat: Nat, bind_port: u16) -> (bool, bool) {
    let bind = format!("{}:{bind_port}", t.h.ip);
    let p = udp::probe(&t.lab, &t.h.ns, &bind, &[S1], true, 1000);
    let other_port = p.got_from(S1_PORT2);
    let other_addr = p.got_from(S2);
    eprintln!(
        "{nat:?}: after sending to {S1} only: from {S1_PORT2} {}, from {S2} {}",
        if other_port { "in" } else { "blocked" },
        if other_addr { "in" } else { "blocked" }
    );
    let (want_port, want_addr) = match nat {
        Nat::FullCone => (true, true),
        Nat::AddressRestricted => (true, false),
        Nat::PortRestricted | Nat::Symmetric => (false, false),
    };
    assert_eq!(
        other_port,
        want_port,
        "{nat:?}: a packet from another port of the contacted host {}:\n{}",
        if other_port { "got in" } else { "was blocked" },
        p.output
    );
    assert_eq!(
        other_addr,
        want_addr,
        "{nat:?}: a packet from an address h never sent to {}:\n{}",
        if other_addr { "got in" } else { "was blocked" },
        p.output
    );
    (other_port, other_addr)
}

/// A third host that h never contacted, and h2 on the same LAN (hairpinning), send to h's
/// mapped address while h listens. Only a full cone lets the third host in; hairpinning
/// never works.
fn check_unsolicited_and_hairpin(t: &NatLab, nat: Nat, bind_port: u16) {
    let bind = format!("{}:{bind_port}", t.h.ip);
    let (proc, early) = udp::probe_spawn(&t.lab, &t.h.ns, &bind, &[S1], false, 2500);
    let mapped = early.mapping(S1).to_string();
    udp::send(&t.lab, &t.other.ns, None, &mapped, "stranger", 3);
    udp::send(&t.lab, &t.h2.ns, None, &mapped, "hairpin", 3);
    let p: Probe = udp::probe_finish(&t.lab, &proc);
    let stranger = p.got_text("stranger");
    eprintln!(
        "{nat:?}: a third host sending to {mapped}: {}",
        if stranger { "in" } else { "blocked" }
    );
    assert_eq!(
        stranger,
        nat == Nat::FullCone,
        "{nat:?}: a packet from a host h never sent to {}:\n{}",
        if stranger { "got in" } else { "was blocked" },
        p.output
    );
    assert!(
        !p.got_text("hairpin"),
        "{nat:?}: hairpinning works (h2 reached h through {mapped}); the lab must not \
         hairpin:\n{}",
        p.output
    );
}

/// The hole punching race: a packet from exactly S1 reaches `wan:P` *before* h sends from
/// P to S1. A cone NAT must still map h's socket to P (the early packet is dropped, it
/// does not take the port). Skipped for symmetric NATs, whose port is random anyway.
fn check_peer_first(t: &NatLab, nat: Nat, bind_port: u16) {
    if !nat.endpoint_independent_mapping() {
        return;
    }
    let target = format!("{WAN}:{bind_port}");
    // Ask the echo server to send from S1 to the router's still unused port.
    udp::send(&t.lab, &t.other.ns, None, S1, &format!("knock {target}"), 2);
    std::thread::sleep(Duration::from_millis(300));
    let bind = format!("{}:{bind_port}", t.h.ip);
    let p = udp::probe(&t.lab, &t.h.ns, &bind, &[S1], false, 300);
    let m = p.mapping(S1);
    eprintln!("{nat:?}: after a packet from {S1} arrived first, {bind} is seen as {m}");
    assert_eq!(
        m.port(),
        bind_port,
        "{nat:?}: an early inbound packet from {S1} took the port, h got another mapping"
    );
}

fn check_kind(nat: Nat) {
    let t = nat_lab(&format!("nl{}", nat.short()), nat);
    assert_eq!(t.lab.nat_of(&t.router), nat);
    check_mapping(&t, nat, 4000);
    check_filtering(&t, nat, 4001);
    check_unsolicited_and_hairpin(&t, nat, 4002);
    check_peer_first(&t, nat, 4003);
}

#[test]
fn nat_lab_full_cone() {
    if !require_root() {
        return;
    }
    check_kind(Nat::FullCone);
}

#[test]
fn nat_lab_address_restricted() {
    if !require_root() {
        return;
    }
    check_kind(Nat::AddressRestricted);
}

#[test]
fn nat_lab_port_restricted() {
    if !require_root() {
        return;
    }
    check_kind(Nat::PortRestricted);
}

#[test]
fn nat_lab_symmetric() {
    if !require_root() {
        return;
    }
    check_kind(Nat::Symmetric);
}

/// Two LAN hosts behind a full cone use the same inside port: masquerade gives the second
/// another external port, and inbound packets to each mapped port reach the right host.
#[test]
fn nat_lab_full_cone_two_hosts_same_port() {
    if !require_root() {
        return;
    }
    let t = nat_lab("nlfull2", Nat::FullCone);
    let a = udp::probe(
        &t.lab,
        &t.h.ns,
        &format!("{}:4100", t.h.ip),
        &[S1],
        false,
        0,
    );
    let b = udp::probe(
        &t.lab,
        &t.h2.ns,
        &format!("{}:4100", t.h2.ip),
        &[S1],
        false,
        0,
    );
    let (ma, mb) = (a.mapping(S1), b.mapping(S1));
    assert_eq!(ma.port(), 4100, "h did not keep its port");
    assert_ne!(ma, mb, "two inside sockets share one mapping");
    for (host, m) in [(&t.h, mb), (&t.h2, ma)] {
        // Each host listens on its port; the stranger writes to the *other* mapping first
        // (must not arrive), then to this host's own.
        let bind = format!("{}:4100", host.ip);
        let (proc, early) = udp::probe_spawn(&t.lab, &host.ns, &bind, &[S1], false, 1500);
        let own = early.mapping(S1).to_string();
        udp::send(&t.lab, &t.other.ns, None, &m.to_string(), "wrong", 2);
        udp::send(&t.lab, &t.other.ns, None, &own, "right", 2);
        let p = udp::probe_finish(&t.lab, &proc);
        assert!(
            p.got_text("right") && !p.got_text("wrong"),
            "{}: inbound packets went to the wrong host:\n{}",
            host.role,
            p.output
        );
    }
}

/// Double NAT: a home router (port-restricted) behind a carrier router (port-restricted)
/// with a 100.64.N.0/24 LAN. The composition is a port-restricted cone seen from the
/// carrier's WAN address; a host directly on the carrier LAN also gets out.
#[test]
fn nat_lab_double_nat() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("nldouble");
    let srv = lab.add_host("srv", "203.0.113.20");
    assert!(lab
        .exec(
            &srv.ns,
            "ip",
            ["addr", "add", "203.0.113.30/24", "dev", "eth0"]
        )
        .status
        .success());
    let carrier = lab.add_carrier_router("cgn", "203.0.113.3", Nat::PortRestricted);
    let home = lab.add_router_behind(&carrier, "home", Nat::PortRestricted);
    let h = lab.add_host_behind(&home, "h", 2);
    let phone = lab.add_host_behind(&carrier, "phone", 2);
    assert_eq!(
        carrier.lan_net(),
        format!("100.64.{}.0/24", carrier.lan_index)
    );
    assert_eq!(home.wan_ip, carrier.lan_addr(200));
    assert_eq!(home.upstream.as_deref(), Some(carrier.ns.as_str()));
    assert_eq!(h.ip.octets()[0], 10);
    assert_ne!(home.lan_index, carrier.lan_index);
    assert_eq!(phone.ip, carrier.lan_addr(2));
    udp::echo(&lab, &srv.ns, &[S1, S1_PORT2, S2]);

    let p = udp::probe(&lab, &h.ns, &format!("{}:4000", h.ip), &[S1, S2], false, 0);
    for s in [S1, S2] {
        assert_eq!(
            p.mapping(s),
            "203.0.113.3:4000".parse().unwrap(),
            "the host behind two NATs is not seen as carrier-wan:4000 by {s}"
        );
    }
    let p = udp::probe(&lab, &h.ns, &format!("{}:4001", h.ip), &[S1], true, 1000);
    assert!(
        p.received.is_empty(),
        "double port-restricted NAT let unsolicited packets in:\n{}",
        p.output
    );
    let p = udp::probe(
        &lab,
        &phone.ns,
        &format!("{}:4000", phone.ip),
        &[S1],
        false,
        0,
    );
    assert_eq!(p.mapping(S1).ip().to_string(), "203.0.113.3");
    assert!(lab.ping(&h.ns, "203.0.113.20", 1), "h cannot ping srv");
}

/// Changing a router at runtime: a symmetric NAT turned into a full cone, conntrack
/// flushing, and short UDP timeouts.
#[test]
fn nat_lab_runtime_changes() {
    if !require_root() {
        return;
    }
    let t = nat_lab("nlchange", Nat::Symmetric);
    check_mapping(&t, Nat::Symmetric, 4000);

    t.lab.set_nat(&t.router, Nat::FullCone);
    assert_eq!(t.lab.nat_of(&t.router), Nat::FullCone);
    assert_eq!(
        t.router.nat,
        Nat::Symmetric,
        "Router::nat is the initial kind"
    );
    check_mapping(&t, Nat::FullCone, 4001);
    check_filtering(&t, Nat::FullCone, 4002);

    t.lab.set_nat(&t.router, Nat::AddressRestricted);
    check_filtering(&t, Nat::AddressRestricted, 4003);

    // Flushing forgets every mapping.
    assert!(
        !t.lab.conntrack_list(&t.router).is_empty(),
        "no conntrack entries after the probes"
    );
    t.lab.conntrack_flush(&t.router);
    assert_eq!(
        t.lab.conntrack_list(&t.router),
        Vec::<String>::new(),
        "conntrack entries survived conntrack_flush"
    );
    // ... also the address-restricted map: S1 contacted 4003 before, but now another port
    // of S1 cannot get in until h sends again. h listens without sending to S1 (it probes
    // S2 only) while S1 knocks from its other port.
    let bind = format!("{}:4003", t.h.ip);
    let (proc, _) = udp::probe_spawn(&t.lab, &t.h.ns, &bind, &[S2], false, 1500);
    udp::send(
        &t.lab,
        &t.other.ns,
        None,
        S1_PORT2,
        &format!("knock {WAN}:4003"),
        2,
    );
    let p = udp::probe_finish(&t.lab, &proc);
    assert!(
        !p.got_text("knock"),
        "the address-restricted mapping survived conntrack_flush:\n{}",
        p.output
    );

    // Short timeouts: mappings disappear after 2 s idle.
    t.lab.set_nat(&t.router, Nat::PortRestricted);
    t.lab.set_udp_timeout(&t.router, 2);
    t.lab.conntrack_flush(&t.router);
    check_mapping(&t, Nat::PortRestricted, 4004);
    assert!(!t.lab.conntrack_list(&t.router).is_empty());
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        t.lab.conntrack_list(&t.router),
        Vec::<String>::new(),
        "mappings outlived a 2 s UDP timeout"
    );
}
