//! Tests of the attacker's tooling itself (`lanmesh-attack`, `lanmesh_e2e::attack`),
//! independent of lanmesh: forged sources arrive as forged, floods reach the rate asked,
//! the victim counts, nftables counts bytes, and tcpdump + pcap-extract recover what was
//! sent (ready to replay). The adversary tests rely on all of it.
//!
//! ```text
//!   a 203.0.113.11 (attacker) ── switch ── b 203.0.113.12 (victim: listen, tcpdump, nft)
//! ```
//!
//! Needs root and tcpdump; skips without root (fails under `CI`).

use lanmesh_e2e::attack::{self, Flood, Listen, Payload, IPV4_UDP_OVERHEAD};
use lanmesh_e2e::{require_root, run, stdout, Lab};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("IP:PORT")
}

#[test]
fn attacker_tools_spoof_flood_listen_capture() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("attack");
    let a = lab.add_host("a", "203.0.113.11");
    let b = lab.add_host("b", "203.0.113.12");
    attack::fast_switch(&lab);

    // 1. Forged sources: the victim sees the forged IP:port; both kinds of capture (eth0:
    //    Ethernet, any: Linux cooked) recover the payloads, and tcpdump finds the UDP
    //    checksums right.
    let cap_any = attack::capture_start(&lab, &b.ns, "any", "udp port 7000");
    let cap_eth = attack::capture_start(&lab, &b.ns, "eth0", "udp port 7000");
    let victim = Listen::new(addr("203.0.113.12:7000"))
        .seconds(20.0)
        .count(3)
        .show(3)
        .spawn(&lab, &b.ns);
    let forged = addr("203.0.113.99:4444");
    let payloads: Vec<Vec<u8>> = vec![
        b"spoofed-1".to_vec(),
        vec![0x4c, 0x4d, 0x01, 0x0c, 0, 1, 2, 3, 4],
        (0..1200u32).map(|i| (i * 7) as u8).collect(),
    ];
    let sent = attack::spoof(&lab, &a.ns, forged, addr("203.0.113.12:7000"), &payloads, 1);
    let total: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    assert_eq!((sent.datagrams, sent.bytes), (3, total));
    let got = attack::listen_wait(&lab, &victim, Duration::from_secs(10));
    assert_eq!((got.datagrams, got.bytes, got.sources), (3, total, 1));
    for p in &payloads {
        assert!(got.got(forged, p), "no {p:02x?} from {forged}: {got:?}");
    }

    let any = cap_any.stop_and_extract_udp(&lab, &[7000]);
    let got_payloads: Vec<Vec<u8>> = any.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(got_payloads, payloads, "capture on any");
    assert!(any.iter().all(|e| (e.src_port, e.dst_port) == (4444, 7000)));
    assert_eq!(
        cap_eth.stop_and_extract(&lab, &[7000]),
        payloads,
        "capture on eth0"
    );
    // Other ports filter everything out.
    assert!(attack::pcap_extract(cap_eth.file(), &lab.subdir("none"), &[9]).is_empty());
    let check = run(
        "tcpdump",
        ["-r", &cap_eth.file().display().to_string(), "-n", "-vv"],
        Duration::from_secs(10),
    );
    let text = stdout(&check);
    assert_eq!(text.matches("udp sum ok").count(), 3, "{text}");
    assert!(
        text.contains("203.0.113.99.4444 > 203.0.113.12.7000"),
        "{text}"
    );

    // 2. A flood from the real source at 20,000 pps for 1 s, random 400-500 byte payloads:
    //    the rate is reached, the victim counts, nftables counts packets and bytes.
    attack::count_bytes(&lab, &b.ns, "flood", "udp dport 7001");
    let victim = Listen::new(addr("203.0.113.12:7001"))
        .seconds(30.0)
        .spawn(&lab, &b.ns);
    let sent = Flood::new(addr("203.0.113.12:7001"), 20_000, 1.0)
        .payload(Payload::Random { min: 400, max: 500 })
        .run(&lab, &a.ns);
    eprintln!(
        "flood: {} datagrams {} bytes, {:.0} pps",
        sent.datagrams,
        sent.bytes,
        sent.pps()
    );
    assert!(sent.datagrams >= 16_000, "{sent:?}");
    assert!(sent.pps() >= 16_000.0, "{sent:?}");
    assert!(sent.bytes >= sent.datagrams * 400 && sent.bytes <= sent.datagrams * 500);
    std::thread::sleep(Duration::from_millis(300));
    let got = attack::listen_stop(&lab, &victim);
    let counted = attack::bytes_counted(&lab, &b.ns, "flood");
    eprintln!("victim: {got:?}; nft: {counted:?}");
    assert!(
        got.datagrams * 10 >= sent.datagrams * 9,
        "{got:?} of {sent:?}"
    );
    assert!(got.datagrams <= sent.datagrams);
    assert_eq!(got.sources, 1);
    assert!(counted.packets >= got.datagrams && counted.packets <= sent.datagrams);
    if counted.packets == sent.datagrams {
        assert_eq!(
            counted.bytes,
            sent.bytes + IPV4_UDP_OVERHEAD * sent.datagrams
        );
    }
    if got.datagrams == sent.datagrams {
        assert_eq!(got.bytes, sent.bytes);
    }
    let reset = attack::reset_counter(&lab, &b.ns, "flood");
    assert_eq!(reset, counted);
    assert_eq!(attack::bytes_counted(&lab, &b.ns, "flood").packets, 0);

    // 3. A spoofed flood of "junk Hellos" (a fixed 4-byte header, then random bytes) from
    //    random sources of 203.0.113.128/25.
    let victim = Listen::new(addr("203.0.113.12:7002"))
        .seconds(30.0)
        .show(5)
        .spawn(&lab, &b.ns);
    let sent = Flood::new(addr("203.0.113.12:7002"), 5_000, 0.5)
        .src_net("203.0.113.128/25")
        .payload(Payload::Template {
            bytes: vec![0x4c, 0x4d, 0x01, 0x0c],
            randomize: 4..64,
        })
        .run(&lab, &a.ns);
    assert!(sent.datagrams >= 2_000, "{sent:?}");
    assert_eq!(sent.bytes, sent.datagrams * 64);
    std::thread::sleep(Duration::from_millis(300));
    let got = attack::listen_stop(&lab, &victim);
    assert!(
        got.datagrams * 10 >= sent.datagrams * 9,
        "{got:?} of {sent:?}"
    );
    assert!(got.sources > 100, "{got:?}");
    assert_eq!(got.shown.len(), 5);
    for (src, p) in &got.shown {
        let SocketAddr::V4(src) = src else {
            panic!("IPv6 source {src}")
        };
        assert!(
            src.ip().octets()[..3] == [203, 0, 113] && src.ip().octets()[3] > 128,
            "{src}"
        );
        assert_eq!(p.len(), 64);
        assert_eq!(&p[..4], &[0x4c, 0x4d, 0x01, 0x0c]);
    }

    // 4. Replaying the captured payloads, in turn, from a bound real source.
    let victim = Listen::new(addr("203.0.113.12:7003"))
        .seconds(30.0)
        .count(6)
        .show(6)
        .spawn(&lab, &b.ns);
    let sent = Flood::new(addr("203.0.113.12:7003"), 1_000, 10.0)
        .replay(&got_payloads)
        .bind(addr("203.0.113.11:5555"))
        .count(6)
        .run(&lab, &a.ns);
    assert_eq!(sent.datagrams, 6);
    let got = attack::listen_wait(&lab, &victim, Duration::from_secs(10));
    let from = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 11), 5555));
    let replayed: Vec<Vec<u8>> = got
        .shown
        .iter()
        .map(|(s, p)| {
            assert_eq!(*s, from);
            p.clone()
        })
        .collect();
    let twice: Vec<Vec<u8>> = payloads.iter().chain(payloads.iter()).cloned().collect();
    assert_eq!(replayed, twice);
}
