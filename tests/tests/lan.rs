//! LAN party over the mesh, end to end: broadcast and multicast game discovery between three
//! nodes behind different NATs, one pair of them only through a relay.
//!
//! ```text
//!   coordinator 203.0.113.10:3478, relay r1 203.0.113.30:3479   on the switch ("the internet")
//!   router ra 203.0.113.21 (full cone)      ── 10.N.0.2 node a, 10.N.0.3 lanbox (a's LAN)
//!   router rb 203.0.113.22 (symmetric)      ── 10.M.0.2 node b
//!   router rc 203.0.113.23 (port-restricted) ── 10.K.0.2 node c
//! ```
//! a–b and a–c go direct; b–c cannot be punched (symmetric against port-restricted) and go
//! through the relay.
//!
//! `lan_party` (one lab, in steps):
//! - a LAN browser on each node broadcasts a query to 255.255.255.255 (from a socket bound to
//!   no interface) and to the mesh broadcast address; servers on the two other nodes, bound to
//!   0.0.0.0, answer by unicast; the browser gets both answers, including over the relayed
//!   pair;
//! - a real game server (DDNet, `ddnet-server`) on c is found from a and b by `quakestat
//!   -tees +255.255.255.255:8303`, a LAN broadcast query;
//! - nothing broadcast into the mesh reaches a's physical LAN (lanbox hears nothing), and a
//!   broadcast on that LAN does not enter the mesh;
//! - a Minecraft-style announcement (224.0.2.60:4445) from a reaches listeners that joined with
//!   INADDR_ANY on b and c;
//! - a broadcast flood from a (50,000 a second for 5 s) is cut to its limit at a (counted in
//!   `node status --json`), and a ping between b and c meanwhile loses nothing.
//!
//! `lan_broadcast_switches`: `node up --lan-broadcast=false` and `coordinator serve
//! --no-lan-broadcast` keep broadcasts out of the mesh, and `node status` says so.

use lanmesh_e2e::mesh::{nat_flags, Coordinator, Node, Relay, Status, MESH_TIMEOUT};
use lanmesh_e2e::{require_root, stdout, wait_for, wait_until, Host, Lab, Nat, Proc};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const COORD_IP: &str = "203.0.113.10";
const RELAY_IP: &str = "203.0.113.30";
const GAME_PORT: &str = "27960";
const MINECRAFT: &str = "224.0.2.60:4445";
const DDNET: &str = "/usr/games/DDNet-Server";
const DDNET_PORT: u16 = 8303;
const MESH_BROADCAST: &str = "100.127.255.255";
/// How long discovery may take (tunnels to idle peers are built by the first query).
const DISCOVERY_MS: &str = "8000";

fn game() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lanmesh-lan-game"))
}

fn run_game(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let out = lab.exec_timeout(ns, game(), args, Duration::from_secs(40));
    assert!(
        out.status.success(),
        "lanmesh-lan-game {args:?} in {ns} failed: {}",
        lanmesh_e2e::stderr(&out)
    );
    stdout(&out)
}

fn spawn_game(lab: &Lab, host: &Host, args: &[&str], log: &str) -> Proc {
    lab.spawn(&host.ns, game(), args, log)
}

struct Party {
    coord: Coordinator,
    _relay: Relay,
    nodes: Vec<Node>,
    statuses: Vec<Status>,
    lanbox: Host,
}

fn party(lab: &Lab, coord_flags: &[&str], node_flags: &[&[&str]]) -> Party {
    let ch = lab.add_host("coord", COORD_IP);
    let coord = Coordinator::start(lab, &ch, coord_flags);
    let key = coord.create_key(lab, &["--reusable"]);
    let relay_key = coord.create_key(lab, &["--relay", "--reusable"]);
    let rh = lab.add_host("relay1", RELAY_IP);
    let relay = Relay::start(lab, &rh, "r1", &coord.addr, &relay_key, &[]);
    relay.wait_status(lab, MESH_TIMEOUT, "connected", |s| s.coordinator_connected);
    let routers = [
        lab.add_router("ra", "203.0.113.21", Nat::FullCone),
        lab.add_router("rb", "203.0.113.22", Nat::Symmetric),
        lab.add_router("rc", "203.0.113.23", Nat::PortRestricted),
    ];
    let lanbox = lab.add_host_behind(&routers[0], "lanbox", 3);
    let mut nodes = Vec::new();
    for (i, (name, router)) in ["a", "b", "c"].iter().zip(&routers).enumerate() {
        let host = lab.add_host_behind(router, name, 2);
        let mut node = Node::new(lab, &host, name, &coord.addr);
        let mut args: Vec<String> = ["--interface", "lm0"].map(String::from).to_vec();
        args.extend(nat_flags(&[], None));
        args.extend(
            node_flags
                .get(i)
                .unwrap_or(&&[][..])
                .iter()
                .map(|s| s.to_string()),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node.up(lab, Some(&key), &args);
        nodes.push(node);
    }
    let statuses = nodes
        .iter()
        .map(|n| n.wait_peers(lab, 2, MESH_TIMEOUT))
        .collect();
    Party {
        coord,
        _relay: relay,
        nodes,
        statuses,
        lanbox,
    }
}

/// `found N` from a browse.
fn found(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("answer "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

fn counters(s: &Status) -> (u64, u64, u64) {
    let n = |k: &str| s.raw.get(k).and_then(Value::as_u64).unwrap_or(u64::MAX);
    (n("broadcast_tx"), n("broadcast_rx"), n("broadcast_dropped"))
}

#[test]
fn lan_party() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("lan");
    let p = party(&lab, &[], &[]);
    let names = ["a", "b", "c"];
    // Game servers on every node, and a listener on a's physical LAN.
    let servers = start_servers(&lab, &p.nodes);
    let lan_sink = spawn_game(
        &lab,
        &p.lanbox,
        &["sink", "--port", GAME_PORT, "--seconds", "40"],
        "lanbox-sink",
    );
    wait_until(MESH_TIMEOUT, "a listener on a's physical LAN", || {
        lab.listening(&p.lanbox.ns, GAME_PORT.parse().unwrap())
    });

    // 1. Every node's browser finds the two other servers, by 255.255.255.255 and by the
    //    mesh broadcast address (b and c find each other through the relay).
    for (i, node) in p.nodes.iter().enumerate() {
        for to in ["255.255.255.255", MESH_BROADCAST] {
            let out = run_game(
                &lab,
                &node.host.ns,
                &[
                    "browse",
                    "--port",
                    GAME_PORT,
                    "--to",
                    to,
                    "--expect",
                    "3",
                    "--wait-ms",
                    DISCOVERY_MS,
                ],
            );
            let got = found(&out);
            for (j, other) in names.iter().enumerate() {
                if i != j {
                    assert!(
                        got.contains(&format!("server-{other}")),
                        "{}'s browser (to {to}) did not find server-{other}: {out}",
                        node.name
                    );
                }
            }
        }
    }
    // 1b. A real game: DDNet's server on c is found from a (direct) and from b (through the
    //     relay) by qstat's LAN broadcast query, never by its address.
    let home = lab.subdir("ddnet");
    let ddnet = lab.spawn(
        &p.nodes[2].host.ns,
        "sh",
        [
            "-c",
            &format!(
                "cd {0} && exec env HOME={0} {DDNET} 'sv_port {DDNET_PORT}; sv_name lanmesh-party; sv_register 0'",
                home.display()
            ),
        ],
        "ddnet-c",
    );
    wait_until(MESH_TIMEOUT, "DDNet's server listening on c", || {
        lab.listening(&p.nodes[2].host.ns, DDNET_PORT)
    });
    let c_ip = p.statuses[2].mesh_ip.clone();
    for n in &p.nodes[..2] {
        let query = format!("+255.255.255.255:{DDNET_PORT}");
        let mut last = String::new();
        let found = wait_for(
            MESH_TIMEOUT,
            &format!("{} finds DDNet by broadcast", n.name),
            || {
                let out = lab.exec(&n.host.ns, "quakestat", ["-tees", &query]);
                last = stdout(&out);
                (last.contains("lanmesh-party") && last.contains(&format!("{c_ip}:{DDNET_PORT}")))
                    .then(|| last.clone())
            },
        );
        eprintln!("{}: quakestat -tees {query}:\n{found}", n.name);
    }
    lab.kill(&ddnet);

    let b_view = p.nodes[1].wait_peer(&lab, "c", MESH_TIMEOUT, "c relayed", |x| x.path == "relay");
    assert_eq!(
        b_view.peer("c").unwrap().path,
        "relay",
        "b–c must be the relayed pair"
    );

    // 2. a's physical LAN: nothing from the mesh reached it, and its broadcasts stay there.
    let box_ip = p.lanbox.ip.to_string();
    let lan_bcast = {
        let o = p.lanbox.ip.octets();
        format!("{}.{}.{}.255", o[0], o[1], o[2])
    };
    for to in ["255.255.255.255", lan_bcast.as_str()] {
        run_game(
            &lab,
            &p.lanbox.ns,
            &[
                "browse",
                "--port",
                GAME_PORT,
                "--to",
                to,
                "--wait-ms",
                "1000",
            ],
        );
    }
    for (n, server) in p.nodes[1..].iter().zip(&servers[1..]) {
        let log = lab.log(server);
        assert!(
            !log.contains(&box_ip),
            "a broadcast on a's LAN entered the mesh and reached {}: {log}",
            n.name
        );
    }

    // 3. Multicast: listeners joined with INADDR_ANY on b and c hear a's announcements.
    let listeners: Vec<Proc> = p.nodes[1..]
        .iter()
        .map(|n| {
            spawn_game(
                &lab,
                &n.host,
                &["listen", "--group", MINECRAFT, "--timeout", "30"],
                &format!("listen-{}", n.name),
            )
        })
        .collect();
    for l in &listeners {
        wait_until(MESH_TIMEOUT, "listener joined", || {
            lab.log(l).contains("joined")
        });
    }
    let announcer = spawn_game(
        &lab,
        &p.nodes[0].host,
        &[
            "announce",
            "--group",
            MINECRAFT,
            "--text",
            "[MOTD]party[/MOTD][AD]25565[/AD]",
            "--count",
            "100",
            "--interval-ms",
            "200",
        ],
        "announce",
    );
    for (l, n) in listeners.iter().zip(&p.nodes[1..]) {
        let got = lab.wait_exit(l, Duration::from_secs(25));
        assert!(
            got.is_some_and(|s| s.success()) && lab.log(l).contains("[MOTD]party"),
            "{} did not hear the multicast announcement: {}",
            n.name,
            lab.log(l)
        );
    }
    lab.kill(&announcer);

    // 4. A broadcast flood from a is cut to the limit; a ping between b and c (relayed)
    //    meanwhile loses nothing.
    let (tx0, _, dropped0) = counters(&p.nodes[0].status(&lab).unwrap());
    let flood = spawn_game(
        &lab,
        &p.nodes[0].host,
        &[
            "flood",
            "--to",
            "255.255.255.255:27961",
            "--pps",
            "50000",
            "--seconds",
            "5",
        ],
        "flood",
    );
    let c_ip = &p.statuses[2].mesh_ip;
    let received = lab.ping_received(&p.nodes[1].host.ns, c_ip, 20);
    lab.wait_exit(&flood, Duration::from_secs(20));
    assert_eq!(
        received, 20,
        "pings between b and c were lost during a's broadcast flood"
    );
    let s = p.nodes[0].status(&lab).unwrap();
    let (tx, _, dropped) = counters(&s);
    let sent = tx - tx0;
    assert!(
        sent <= 200 * 6 + 200,
        "a sent {sent} broadcasts in ~5 s, over its 200/s limit: {}",
        s.raw
    );
    assert!(
        dropped - dropped0 > 10_000,
        "a dropped only {} of the flood",
        dropped - dropped0
    );
    let (_, rx_b, _) = counters(&p.nodes[1].status(&lab).unwrap());
    assert!(rx_b <= 200 * 8 + 400, "b took in {rx_b} broadcasts");

    // Nothing of all that reached a's physical LAN.
    lab.kill(&lan_sink);
    assert!(
        lab.log(&lan_sink).contains("received 0") || !lab.log(&lan_sink).contains("received"),
        "mesh broadcasts reached a's physical LAN: {}",
        lab.log(&lan_sink)
    );
    let _ = &p.coord;
}

/// A game server `server-<name>` on every node; waits until they listen.
fn start_servers(lab: &Lab, nodes: &[Node]) -> Vec<Proc> {
    let servers = nodes
        .iter()
        .map(|n| {
            let name = format!("server-{}", n.name);
            spawn_game(
                lab,
                &n.host,
                &["server", "--port", GAME_PORT, "--name", &name],
                &name,
            )
        })
        .collect();
    wait_until(MESH_TIMEOUT, "game servers listening", || {
        nodes
            .iter()
            .all(|n| lab.listening(&n.host.ns, GAME_PORT.parse().unwrap()))
    });
    servers
}

/// A LAN browser on `node` querying `to` for `wait_ms`; its output.
fn browse_from(lab: &Lab, node: &Node, to: &str, wait_ms: &str) -> String {
    run_game(
        lab,
        &node.host.ns,
        &[
            "browse",
            "--port",
            GAME_PORT,
            "--to",
            to,
            "--wait-ms",
            wait_ms,
        ],
    )
}

#[test]
fn lan_broadcast_switches() {
    if !require_root() {
        return;
    }
    // The node's switch: b carries none, so a's browser finds only c's server.
    let lab = Lab::new("lansw");
    let p = party(&lab, &[], &[&[], &["--lan-broadcast=false"], &[]]);
    start_servers(&lab, &p.nodes);
    let out = browse_from(&lab, &p.nodes[0], "255.255.255.255", "4000");
    // (a's own server answers too: the kernel loops a broadcast back, as on any LAN.)
    assert_eq!(found(&out), ["server-a", "server-c"], "{out}");
    let sb = p.nodes[1].status(&lab).unwrap();
    assert_eq!(sb.raw["lan_broadcast"]["enabled"], false, "{}", sb.raw);
    assert_eq!(sb.raw["lan_broadcast"]["active"], false, "{}", sb.raw);
    let text = stdout(&p.nodes[1].cli(&lab, &["status"]));
    assert!(
        text.contains("lan broadcast: off (--lan-broadcast=false)"),
        "{text}"
    );
    drop(p);
    drop(lab);

    // The coordinator's switch: nobody carries any.
    let lab = Lab::new("lansw2");
    let p = party(&lab, &["--no-lan-broadcast"], &[]);
    start_servers(&lab, &p.nodes);
    let out = browse_from(&lab, &p.nodes[0], MESH_BROADCAST, "3000");
    // (The interface has no broadcast address then: the kernel sends this as unicast into
    // the mesh, where the node drops it; not even a's own server sees it.)
    assert!(found(&out).is_empty(), "{out}");
    let s = wait_for(MESH_TIMEOUT, "a's status", || p.nodes[0].status(&lab));
    assert_eq!(
        s.raw["lan_broadcast"]["allowed_by_network"], false,
        "{}",
        s.raw
    );
    let text = stdout(&p.nodes[0].cli(&lab, &["status"]));
    assert!(text.contains("switched off by the coordinator"), "{text}");
}
