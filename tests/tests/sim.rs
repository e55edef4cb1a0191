//! The mesh in a simulated network (see `lanmesh_e2e::sim`): the real coordinator, relay and
//! node cores, NAT routers per RFC 4787, and a virtual clock. `cargo test sim` runs these;
//! each prints what it measured, in simulated time.

mod sim {
    use lanmesh_e2e::sim::nat::{Dependence, NatConfig};
    use lanmesh_e2e::sim::{can_punch, HostId, Link, Realm, Sim};
    use lanmesh_node::mesh::Path;
    use std::time::Duration;

    const S: Duration = Duration::from_secs(1);

    /// The kinds of network a node can sit in: none (a public address) or a NAT.
    const KINDS: [(&str, Option<NatConfig>); 6] = [
        ("public", None),
        ("full-cone", Some(NatConfig::FULL_CONE)),
        ("restricted", Some(NatConfig::RESTRICTED)),
        ("port-restricted", Some(NatConfig::PORT_RESTRICTED)),
        ("symmetric", Some(NatConfig::SYMMETRIC)),
        ("linux", Some(NatConfig::LINUX)),
    ];

    /// A node in a network of kind `nat`: behind its own router, or on the internet.
    fn node_behind(sim: &mut Sim, name: &str, nat: Option<NatConfig>, link: Link) -> HostId {
        match nat {
            Some(config) => {
                let r = sim.add_home_router(config, link);
                sim.add_node(name, Realm::Lan(r), Link::ms(1))
            }
            None => sim.add_node(name, Realm::Internet, link),
        }
    }

    fn ms(d: Option<Duration>) -> String {
        d.map_or("-".into(), |d| format!("{} ms", d.as_millis()))
    }

    #[test]
    fn nat_matrix() {
        let mut table = Vec::new();
        let mut failures = Vec::new();
        for (i, (a_name, a_nat)) in KINDS.iter().enumerate() {
            for (b_name, b_nat) in &KINDS[i..] {
                for relay in [false, true] {
                    let mut sim = Sim::new(1000 + table.len() as u64);
                    sim.add_coordinator(Link::ms(20));
                    if relay {
                        sim.add_relay("relay", Link::ms(5));
                    }
                    // Asymmetric: a is close to the coordinator, b far away.
                    let a = node_behind(&mut sim, "a", *a_nat, Link::ms(3));
                    let b = node_behind(&mut sim, "b", *b_nat, Link::ms(40));
                    sim.join_all(&[a, b], 10 * S);
                    let start = sim.elapsed();
                    let first = sim.ping_until_answered(a, b, 10 * S);
                    let direct = sim
                        .until_path(a, b, Path::Direct, 20 * S)
                        .map(|_| sim.elapsed() - start);
                    let settled = (sim.path(a, b), sim.path(b, a));
                    let expect = can_punch(*a_nat, *b_nat);
                    let line = format!(
                        "{a_name:>15} × {b_name:<15} relay {relay:<5}  first ping {:>8}  direct after {:>8}  path {:?}/{:?}",
                        ms(first),
                        ms(direct),
                        settled.0,
                        settled.1
                    );
                    let mut wrong = |why: &str| failures.push(format!("{line}: {why}"));
                    match expect {
                        Some(true) if direct.is_none() => wrong("should have gone direct"),
                        Some(true) if first.is_none() => wrong("no ping answered"),
                        // Two round trips (handshake, ping) of at most 2 × 43 ms, plus the
                        // punch: crossed handshakes once made this 1.1 s.
                        Some(true) if first > Some(Duration::from_millis(800)) => {
                            wrong("the first ping took longer than 800 ms")
                        }
                        Some(false) if direct.is_some() => {
                            wrong("went direct through NATs that cannot allow it")
                        }
                        Some(false) if relay && settled != (Path::Relay, Path::Relay) => {
                            wrong("should be relayed")
                        }
                        Some(false) if relay && first.is_none() => {
                            wrong("no ping answered through the relay")
                        }
                        Some(false) if !relay && first.is_some() => {
                            wrong("answered without any path")
                        }
                        None if relay && first.is_none() => {
                            wrong("no ping answered through the relay")
                        }
                        _ => {}
                    }
                    if !sim.violations().is_empty() {
                        failures.push(format!("{line}: {:?}", sim.violations()));
                    }
                    table.push(line);
                }
            }
        }
        println!("{}", table.join("\n"));
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    /// Two nodes that cannot punch, a relay, and a router that changes.
    fn relayed_pair(seed: u64, relays: usize) -> (Sim, HostId, HostId, usize) {
        let mut sim = Sim::new(seed);
        sim.add_coordinator(Link::ms(20));
        for i in 0..relays {
            sim.add_relay(&format!("relay{i}"), Link::ms(5 + 10 * i as u64));
        }
        let ra = sim.add_home_router(NatConfig::SYMMETRIC, Link::ms(10));
        let rb = sim.add_home_router(NatConfig::PORT_RESTRICTED, Link::ms(15));
        let a = sim.add_node("a", Realm::Lan(ra), Link::ms(1));
        let b = sim.add_node("b", Realm::Lan(rb), Link::ms(1));
        sim.join_all(&[a, b], 10 * S);
        (sim, a, b, ra)
    }

    #[test]
    fn relay_fallback_then_upgrade_to_direct() {
        let (mut sim, a, b, ra) = relayed_pair(7, 1);
        let first = sim.ping_until_answered(a, b, 10 * S).expect("relayed ping");
        let relayed = sim.until_path(a, b, Path::Relay, 10 * S).expect("relayed");
        println!(
            "first ping through the relay after {first:?}, relayed both ways {relayed:?} later"
        );
        // The symmetric NAT is replaced by a full-cone one (a better network, a fixed router).
        sim.router(ra).nat.config = NatConfig::FULL_CONE;
        sim.router(ra).nat.flush();
        let upgraded = sim.until_path(a, b, Path::Direct, 120 * S);
        println!("direct {upgraded:?} after the NAT changed");
        assert!(
            upgraded.is_some_and(|d| d <= 10 * S),
            "a→b {:?}",
            sim.peer(a, b)
        );
        assert!(sim.ping_until_answered(a, b, 3 * S).is_some());
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }

    #[test]
    fn relay_failover() {
        let (mut sim, a, b, _) = relayed_pair(8, 2);
        sim.ping_until_answered(a, b, 10 * S).expect("relayed ping");
        sim.until_path(a, b, Path::Relay, 10 * S).expect("relayed");
        let home = sim
            .peer(a, b)
            .and_then(|p| p.relay)
            .expect("a relay carries it");
        let home_id = sim.hosts.iter().position(|h| h.name == home).unwrap();
        sim.set_up(home_id, false);
        let back = sim.ping_until_answered(a, b, 60 * S);
        let now_via = sim.peer(a, b).and_then(|p| p.relay);
        println!("home relay {home} down: pings answered again after {back:?}, via {now_via:?}");
        assert!(back.is_some_and(|d| d <= 8 * S), "a→b {:?}", sim.peer(a, b));
        assert_ne!(now_via, Some(home));
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }

    #[test]
    fn roaming_to_another_network() {
        let mut sim = Sim::new(9);
        sim.add_coordinator(Link::ms(20));
        sim.add_relay("relay", Link::ms(5));
        let ra = sim.add_home_router(NatConfig::FULL_CONE, Link::ms(10));
        let rb = sim.add_home_router(NatConfig::PORT_RESTRICTED, Link::ms(15));
        let cafe = sim.add_home_router(NatConfig::RESTRICTED, Link::ms(30));
        let a = sim.add_node("a", Realm::Lan(ra), Link::ms(1));
        let b = sim.add_node("b", Realm::Lan(rb), Link::ms(1));
        sim.join_all(&[a, b], 10 * S);
        sim.ping_until_answered(a, b, 10 * S).expect("ping");
        sim.until_path(a, b, Path::Direct, 20 * S).expect("direct");
        sim.move_host(a, Realm::Lan(cafe));
        let back = sim.ping_until_answered(a, b, 60 * S);
        let direct = sim.until_path(a, b, Path::Direct, 60 * S);
        println!("a moved networks: pings answered after {back:?}, direct again {direct:?} later");
        assert!(back.is_some_and(|d| d <= 5 * S));
        assert!(
            direct.is_some_and(|d| d <= 10 * S),
            "a→b {:?}",
            sim.peer(a, b)
        );
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }

    #[test]
    fn coordinator_outage_keeps_tunnels_and_recovers() {
        let mut sim = Sim::new(10);
        let c = sim.add_coordinator(Link::ms(20));
        let ra = sim.add_home_router(NatConfig::PORT_RESTRICTED, Link::ms(10));
        let rb = sim.add_home_router(NatConfig::PORT_RESTRICTED, Link::ms(15));
        let a = sim.add_node("a", Realm::Lan(ra), Link::ms(1));
        let b = sim.add_node("b", Realm::Lan(rb), Link::ms(1));
        sim.join_all(&[a, b], 10 * S);
        sim.ping_until_answered(a, b, 10 * S).expect("ping");
        sim.set_up(c, false);
        for _ in 0..6 {
            sim.run_for(20 * S);
            assert!(
                sim.ping_until_answered(a, b, 3 * S).is_some(),
                "tunnel broke without the coordinator"
            );
        }
        sim.set_up(c, true);
        let start = sim.elapsed();
        let ok = sim.run_until_true(sim.now + 120 * S, |s| {
            s.node(a).control().is_connected() && s.node(b).control().is_connected()
        });
        println!(
            "coordinator back: both nodes reconnected after {:?}",
            sim.elapsed() - start
        );
        assert!(ok);
        // A newcomer reaches both.
        let rc = sim.add_home_router(NatConfig::RESTRICTED, Link::ms(5));
        let newcomer = sim.add_node("c", Realm::Lan(rc), Link::ms(1));
        sim.join_all(&[a, b, newcomer], 10 * S);
        assert!(sim.ping_until_answered(newcomer, a, 10 * S).is_some());
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }

    #[test]
    fn mappings_that_expire_between_keepalives_come_back() {
        let mut sim = Sim::new(11);
        sim.add_coordinator(Link::ms(20));
        let short = NatConfig {
            timeout: 20 * S,
            ..NatConfig::PORT_RESTRICTED
        };
        let ra = sim.add_home_router(short, Link::ms(10));
        let rb = sim.add_home_router(short, Link::ms(15));
        let a = sim.add_node("a", Realm::Lan(ra), Link::ms(1));
        let b = sim.add_node("b", Realm::Lan(rb), Link::ms(1));
        sim.join_all(&[a, b], 10 * S);
        sim.ping_until_answered(a, b, 10 * S).expect("ping");
        sim.run_for(90 * S);
        let after_idle = sim.ping_until_answered(a, b, 30 * S);
        println!(
            "after 90 s idle behind 20 s mappings: answered after {after_idle:?}, path {:?}",
            sim.path(a, b)
        );
        assert!(after_idle.is_some_and(|d| d <= 3 * S));
        // A router reboot that hands out a new port: the coordinator sees it, peers re-punch.
        let random_ports = NatConfig {
            port_preservation: false,
            ..NatConfig::FULL_CONE
        };
        sim.router(ra).nat.config = random_ports;
        sim.router(ra).nat.flush();
        let after_reboot = sim.ping_until_answered(a, b, 60 * S);
        let direct = sim.until_path(a, b, Path::Direct, 60 * S);
        println!("router rebooted with new ports: answered after {after_reboot:?}, direct {direct:?} later");
        assert!(after_reboot.is_some_and(|d| d <= 5 * S));
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }

    #[test]
    fn five_percent_loss_everywhere() {
        let lossy = |ms: u64| Link {
            latency: Duration::from_millis(ms),
            jitter: Duration::from_millis(ms / 2),
            loss: 0.05,
        };
        let mut slow = Vec::new();
        for seed in 0..20 {
            let mut sim = Sim::new(100 + seed);
            sim.add_coordinator(lossy(20));
            sim.add_relay("relay", lossy(5));
            let ra = sim.add_home_router(NatConfig::PORT_RESTRICTED, lossy(10));
            let rb = sim.add_home_router(NatConfig::RESTRICTED, lossy(30));
            let a = sim.add_node("a", Realm::Lan(ra), lossy(1));
            let b = sim.add_node("b", Realm::Lan(rb), lossy(2));
            let joined = sim.join_all(&[a, b], 30 * S);
            let first = sim.ping_until_answered(a, b, 20 * S);
            let direct = sim.until_path(a, b, Path::Direct, 30 * S);
            println!(
                "seed {seed}: joined {joined:?}, first ping {first:?}, direct {direct:?} later"
            );
            assert!(
                first.is_some() && direct.is_some(),
                "seed {seed}: a→b {:?}",
                sim.peer(a, b)
            );
            assert!(sim.violations().is_empty(), "{:?}", sim.violations());
            slow.push(first.unwrap());
        }
        slow.sort();
        assert!(
            slow[slow.len() / 2] <= 2 * S && *slow.last().unwrap() <= 8 * S,
            "{slow:?}"
        );
        println!(
            "first ping under 5 % loss: median {:?}, worst {:?}",
            slow[slow.len() / 2],
            slow.last().unwrap()
        );
    }

    /// What a node sits behind (`None`: public), its router, and whether that router is
    /// behind another NAT.
    type Nat = (Option<NatConfig>, Option<usize>, bool);

    /// One random world: its nodes, what each sits behind, and whether a relay exists.
    struct World {
        sim: Sim,
        nodes: Vec<HostId>,
        /// Per node: the NAT it sits behind (`None`: public), and its router (shared by nodes
        /// on one LAN); `double` when that router sits behind another NAT.
        nat: Vec<Nat>,
        relay: bool,
    }

    fn random_world(seed: u64) -> World {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        let link = |rng: &mut rand::rngs::StdRng| {
            let ms = rng.gen_range(1..60);
            Link {
                latency: Duration::from_millis(ms),
                jitter: Duration::from_millis(rng.gen_range(0..=ms / 2)),
                loss: if rng.gen_bool(0.3) {
                    rng.gen_range(0.0..0.03)
                } else {
                    0.0
                },
            }
        };
        let mut sim = Sim::new(seed);
        sim.add_coordinator(link(&mut rng));
        let relay = rng.gen_bool(0.7);
        if relay {
            sim.add_relay("relay", link(&mut rng));
        }
        let mut nodes = Vec::new();
        let mut nat = Vec::new();
        for i in 0..rng.gen_range(2..=4) {
            let name = format!("n{i}");
            let l = link(&mut rng);
            // Sometimes on the LAN of an earlier node.
            let lans: Vec<_> = nat
                .iter()
                .filter(|n: &&Nat| n.1.is_some())
                .copied()
                .collect();
            if !lans.is_empty() && rng.gen_bool(0.2) {
                let (kind, r, double) = lans[rng.gen_range(0..lans.len())];
                nodes.push(sim.add_node(&name, Realm::Lan(r.expect("a LAN")), l));
                nat.push((kind, r, double));
                continue;
            }
            let (_, kind) = KINDS[rng.gen_range(0..KINDS.len())];
            let Some(mut config) = kind else {
                nodes.push(sim.add_node(&name, Realm::Internet, l));
                nat.push((None, None, false));
                continue;
            };
            // Variations that must not change who can punch: hairpinning, how long mappings
            // live, and whether an endpoint-independent NAT keeps the port.
            config.hairpin = rng.gen_bool(0.3);
            if !config.linux_conntrack {
                config.timeout = Duration::from_secs([30, 60, 120, 300][rng.gen_range(0..4)]);
            }
            if config.mapping == Dependence::Independent {
                config.port_preservation = rng.gen_bool(0.5);
            }
            let r = if rng.gen_bool(0.1) {
                // Behind two NATs: a home router inside a carrier's.
                let outer = sim.add_home_router(NatConfig::PORT_RESTRICTED, link(&mut rng));
                let wan = sim.address_in(Realm::Lan(outer));
                sim.add_router(Realm::Lan(outer), wan, Link::ms(1), config)
            } else {
                sim.add_home_router(config, link(&mut rng))
            };
            let double = sim.routers[r].realm != Realm::Internet;
            nodes.push(sim.add_node(&name, Realm::Lan(r), Link::ms(rng.gen_range(1..5))));
            nat.push((Some(config), Some(r), double));
        }
        World {
            sim,
            nodes,
            nat,
            relay,
        }
    }

    /// Checks one random world; what went wrong, if anything.
    fn check_world(seed: u64) -> Result<(), String> {
        let mut w = random_world(seed);
        if std::env::var_os("LANMESH_SIM_SEED").is_some() {
            for (i, n) in w.nat.iter().enumerate() {
                let name = n.0.map_or("public".to_string(), |c| format!("{c:?}"));
                println!("n{i}: {name}, router {:?}, double NAT {}", n.1, n.2);
            }
            println!("relay: {}", w.relay);
        }
        let sim = &mut w.sim;
        let nodes = w.nodes.clone();
        let joined = sim.run_until_true(sim.now + 30 * S, |s| {
            nodes.iter().all(|&a| {
                s.mesh_ip(a).is_some() && nodes.iter().all(|&b| a == b || s.peer(a, b).is_some())
            })
        });
        if !joined {
            return Err("not every node joined and saw the others within 30 s".into());
        }
        for i in 0..nodes.len() {
            for j in i + 1..nodes.len() {
                let (a, b) = (nodes[i], nodes[j]);
                let (na, nb) = (w.nat[i], w.nat[j]);
                let same_lan = na.1.is_some() && na.1 == nb.1;
                let punchable = if same_lan {
                    Some(true)
                } else if na.2 || nb.2 {
                    None
                } else {
                    can_punch(na.0, nb.0)
                };
                let answered = sim.ping_until_answered(a, b, 20 * S);
                if answered.is_none() && (w.relay || punchable == Some(true)) {
                    return Err(format!("n{i} → n{j}: no ping answered in 20 s (relay {}, punchable {punchable:?}): {:?}", w.relay, sim.peer(a, b)));
                }
                if punchable == Some(true) && sim.until_path(a, b, Path::Direct, 30 * S).is_none() {
                    return Err(format!(
                        "n{i} → n{j}: should have gone direct within 30 s: {:?} / {:?}",
                        sim.peer(a, b),
                        sim.peer(b, a)
                    ));
                }
                if punchable == Some(false) && sim.path(a, b) == Path::Direct {
                    return Err(format!(
                        "n{i} → n{j}: direct through NATs that cannot allow it"
                    ));
                }
            }
        }
        junk_earns_no_amplification(sim, seed)?;
        match sim.violations() {
            [] => Ok(()),
            v => Err(format!("{v:?}")),
        }
    }

    /// A stranger on the internet sends junk (random bytes, and random bytes behind each of
    /// our protocols' first bytes) to every address of the world: nothing it gets back may be
    /// larger than what it sent there.
    fn junk_earns_no_amplification(sim: &mut Sim, seed: u64) -> Result<(), String> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xbad);
        let stranger = sim.add_raw("stranger", Realm::Internet, Link::ms(5));
        let mut targets: Vec<std::net::SocketAddr> = Vec::new();
        for h in &sim.hosts {
            if h.realm == Realm::Internet && h.name != "stranger" {
                for port in [7000, 7001, sim.relay_port(), sim.node_port()] {
                    targets.push((h.ip, port).into());
                }
            }
        }
        for r in &sim.routers {
            targets.push((r.nat.wan, sim.node_port()).into());
        }
        let prefixes: [&[u8]; 6] = [
            b"",
            &[1, 0, 0, 0],
            &[4, 0, 0, 0],
            b"LM\x01",
            b"LM\x01\x09",
            &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42],
        ];
        let mut sent: std::collections::HashMap<std::net::SocketAddr, (usize, usize)> =
            Default::default();
        for _ in 0..200 {
            let dst = targets[rng.gen_range(0..targets.len())];
            let prefix = prefixes[rng.gen_range(0..prefixes.len())];
            let len = rng.gen_range(prefix.len().max(1)..300);
            let mut junk = prefix.to_vec();
            junk.resize(len, 0);
            rng.fill(&mut junk[prefix.len()..]);
            let e = sent.entry(dst).or_default();
            e.0 = e.0.max(len);
            e.1 += len;
            sim.send_raw(stranger, 4444, dst, junk);
            sim.run_for(Duration::from_millis(5));
        }
        sim.run_for(2 * S);
        let mut got: std::collections::HashMap<std::net::SocketAddr, usize> = Default::default();
        for (_, src, data) in sim.raw_inbox(stranger) {
            let Some(&(largest, total)) = sent.get(src) else {
                return Err(format!("{src} wrote to a stranger that never wrote to it"));
            };
            if data.len() > largest {
                return Err(format!(
                    "{src} answered junk with {} bytes, more than any it got ({largest})",
                    data.len()
                ));
            }
            *got.entry(*src).or_default() += data.len();
            if got[src] > total {
                return Err(format!(
                    "{src} sent a stranger more bytes than it got from it"
                ));
            }
        }
        Ok(())
    }

    /// Thousands of random worlds (`LANMESH_SIM_WORLDS`; by default 1000 in release builds,
    /// 200 in debug ones; `LANMESH_SIM_SEED=N` replays one): random NATs, LANs, double NATs, latencies, jitter and loss, with and
    /// without a relay. Every failure names its seed.
    #[test]
    fn random_worlds() {
        let seeds: Vec<u64> = match std::env::var("LANMESH_SIM_SEED") {
            Ok(s) => vec![s.parse().expect("LANMESH_SIM_SEED is a number")],
            Err(_) => {
                let n = std::env::var("LANMESH_SIM_WORLDS")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(if cfg!(debug_assertions) { 200 } else { 1000 });
                (0..n).collect()
            }
        };
        let started = std::time::Instant::now();
        let mut failures = Vec::new();
        for &seed in &seeds {
            if let Err(e) = check_world(seed) {
                failures.push(format!("seed {seed}: {e}\n  replay: LANMESH_SIM_SEED={seed} cargo test sim::random_worlds -- --nocapture"));
            }
        }
        println!(
            "{} random worlds in {:.1} s",
            seeds.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            failures.is_empty(),
            "{} of {} worlds failed:\n{}",
            failures.len(),
            seeds.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn a_seed_replays_exactly() {
        let run = || {
            let mut w = random_world(42);
            let nodes = w.nodes.clone();
            w.sim.join_all(&nodes, 30 * S);
            let t = w.sim.ping_until_answered(nodes[0], nodes[1], 20 * S);
            (t, w.sim.delivered, w.sim.lost, w.sim.elapsed())
        };
        assert_eq!(run(), run());
    }

    /// Two nodes with a direct path and nothing to say: each wakes a few times a second at
    /// most (WireGuard's timers), never spins.
    #[test]
    fn an_idle_node_sleeps() {
        let mut sim = Sim::new(12);
        sim.add_coordinator(Link::ms(1));
        let a = sim.add_node("a", Realm::Internet, Link::ms(1));
        let b = sim.add_node("b", Realm::Internet, Link::ms(1));
        sim.join_all(&[a, b], 10 * S);
        sim.ping_until_answered(a, b, 5 * S).expect("ping");
        sim.until_path(a, b, Path::Direct, 10 * S).expect("direct");
        let before = sim.wakes(a);
        sim.run_for(60 * S);
        let per_sec = (sim.wakes(a) - before) as f64 / 60.0;
        println!("idle node: {per_sec:.1} wakeups per second");
        assert!(per_sec <= 4.5, "{per_sec} wakeups a second");
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }
}
