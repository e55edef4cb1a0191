//! Everyday use, end to end in the NAT lab: `node ping` by name over a direct and a relayed
//! path, `node netcheck` telling a symmetric NAT from a cone one with nothing but the
//! coordinator (and a relay), `coordinator nodes remove` reaching the peers at once, and the
//! plain `node status` table (also with a peer name wider than its column).
//!
//! ```text
//!   coordinator 203.0.113.10:3478 (STUN also on :3480)     on the switch ("the internet")
//!   relay r1    203.0.113.30:3479                           (where a test needs one)
//!   router ra 203.0.113.21 ── 10.N.0.2 node a (port 41641)
//!   router rb 203.0.113.22 ── 10.M.0.2 node b (port 41700)
//!   router rc 203.0.113.23 ── 10.K.0.2 node c (port 41800)
//! ```
//!
//! No node gets an extra `--stun` server: the coordinator's second STUN port must be enough.
//!
//! Needs root; skips without it (fails under `CI`).

use lanmesh_e2e::mesh::{assert_ping, Node, Status, MESH_TIMEOUT};
use lanmesh_e2e::world::{World, WorldSpec};
use lanmesh_e2e::{require_root, stderr, stdout, transfer, wait_for, Lab, Nat, Router};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

const RELAY_IP: &str = "203.0.113.30";
const RELAY_NAME: &str = "r1";
/// How long a punchable pair may take to show `"direct"`.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a pair may take to show `"relay"` once traffic flows.
const RELAY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `node netcheck` may take to know the NAT and the relay's latency.
const NETCHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon the other nodes must drop a removed node (the coordinator promises 1 s).
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The coordinator with a reusable join key, and optionally relay r1 (no extra STUN server:
/// the coordinator's second port must be enough).
fn world(lab: &Lab, with_relay: bool) -> World {
    let relays: &[(&str, &str)] = if with_relay {
        &[(RELAY_NAME, RELAY_IP)]
    } else {
        &[]
    };
    World::build(
        lab,
        WorldSpec {
            stun: false,
            relays,
        },
    )
}

/// Starts node `name` on a new host `.2` behind `router`, on UDP `port`; does not wait.
fn start_node(lab: &Lab, w: &World, router: &Router, name: &str, port: &str) -> Node {
    let host = lab.add_host_behind(router, name, 2);
    w.start_node(lab, &host, name, port, None)
}

fn wait_joined(lab: &Lab, node: &Node) -> Status {
    node.wait_status(lab, MESH_TIMEOUT, "joined (has a mesh IP)", |s| {
        !s.mesh_ip.is_empty()
    })
}

/// Runs `node <args> --state-dir <its dir>` in the node's namespace and returns the output
/// and how long it took.
fn node_cmd(lab: &Lab, node: &Node, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = node.cli(lab, args);
    (out, start.elapsed())
}

// ---------------------------------------------------------------------------------------
// node ping output
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Via {
    Direct(SocketAddr),
    Relay(String),
}

/// One `pong from NAME (MESH_IP) direct IP:PORT in X.XX ms` or `... via relay NAME in X.XX
/// ms` line.
#[derive(Clone, Debug)]
struct Pong {
    peer: String,
    mesh_ip: String,
    via: Via,
    ms: f64,
}

fn parse_pong(line: &str) -> Option<Pong> {
    let rest = line.strip_prefix("pong from ")?;
    let (peer, rest) = rest.split_once(" (")?;
    let (mesh_ip, rest) = rest.split_once(") ")?;
    let (via, time) = rest.rsplit_once(" in ")?;
    let ms_text = time.strip_suffix(" ms")?;
    // X.XX: two decimals.
    let (_, decimals) = ms_text.split_once('.')?;
    if decimals.len() != 2 {
        return None;
    }
    let ms: f64 = ms_text.parse().ok()?;
    let via = if let Some(ep) = via.strip_prefix("direct ") {
        Via::Direct(ep.parse().ok()?)
    } else {
        Via::Relay(via.strip_prefix("via relay ")?.to_string())
    };
    Some(Pong {
        peer: peer.to_string(),
        mesh_ip: mesh_ip.to_string(),
        via,
        ms,
    })
}

/// Every line of `node ping` stdout as a pong; panics on any other line.
fn pongs(what: &str, out: &Output) -> Vec<Pong> {
    let text = stdout(out);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            parse_pong(l).unwrap_or_else(|| {
                panic!(
                    "{what}: not a `pong from NAME (IP) direct IP:PORT|via relay NAME in X.XX \
                     ms` line: {l:?}\nstdout:\n{text}\nstderr:\n{}",
                    stderr(out)
                )
            })
        })
        .collect()
}

/// Asserts every pong came from `peer` (name and mesh IP) in a plausible time.
fn assert_from(what: &str, pongs: &[Pong], peer: &str, mesh_ip: &str) {
    for p in pongs {
        assert_eq!(p.peer, peer, "{what}: a pong from another peer: {p:?}");
        assert_eq!(p.mesh_ip, mesh_ip, "{what}: wrong mesh IP: {p:?}");
        assert!(
            p.ms > 0.0 && p.ms < 2000.0,
            "{what}: implausible round trip: {p:?}"
        );
    }
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Two nodes behind port-restricted NATs: `node ping` by name (and by mesh IP) shows the
/// direct path through the other's NAT; `--until-direct` stops after the first reply.
#[test]
fn ping_direct_by_name() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("evpingd");
    let w = world(&lab, false);
    let ra = lab.add_router("ra", "203.0.113.21", Nat::PortRestricted);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::PortRestricted);
    let a = start_node(&lab, &w, &ra, "a", "41641");
    let sa = wait_joined(&lab, &a);
    let b = start_node(&lab, &w, &rb, "b", "41700");
    let sb = b.wait_peers(&lab, 1, MESH_TIMEOUT);
    a.wait_peers(&lab, 1, MESH_TIMEOUT);
    a.wait_path(&lab, "b", "direct", DIRECT_TIMEOUT);
    b.wait_path(&lab, "a", "direct", DIRECT_TIMEOUT);

    let what = "a: node ping b -c 3";
    let (out, took) = node_cmd(&lab, &a, &["ping", "b", "-c", "3"]);
    assert_success(what, &out);
    let ps = pongs(what, &out);
    eprintln!("{what} ({:.2}s):\n{}", took.as_secs_f64(), stdout(&out));
    assert_eq!(ps.len(), 3, "{what}: want 3 pongs:\n{}", stdout(&out));
    assert_from(what, &ps, "b", &sb.mesh_ip);
    for p in &ps {
        match &p.via {
            Via::Direct(ep) => assert_eq!(
                ep.ip().to_string(),
                rb.wan_ip.to_string(),
                "{what}: the direct path is not b's NAT: {p:?}"
            ),
            Via::Relay(r) => panic!("{what}: relayed through {r:?} on a direct path: {p:?}"),
        }
    }

    // By mesh IP, and the other way round.
    let what = "a: node ping <b's mesh IP> -c 1";
    let (out, _) = node_cmd(&lab, &a, &["ping", &sb.mesh_ip, "-c", "1"]);
    assert_success(what, &out);
    let ps = pongs(what, &out);
    assert_eq!(ps.len(), 1, "{what}:\n{}", stdout(&out));
    assert_from(what, &ps, "b", &sb.mesh_ip);
    let what = "b: node ping a -c 2";
    let (out, _) = node_cmd(&lab, &b, &["ping", "a", "-c", "2"]);
    assert_success(what, &out);
    let ps = pongs(what, &out);
    assert_eq!(ps.len(), 2, "{what}:\n{}", stdout(&out));
    assert_from(what, &ps, "a", &sa.mesh_ip);
    for p in &ps {
        assert!(
            matches!(&p.via, Via::Direct(ep) if ep.ip() == ra.wan_ip),
            "{what}: not direct through a's NAT: {p:?}"
        );
    }

    // --until-direct: done after the first (direct) reply, not after 5 pings a second apart.
    let what = "a: node ping b --until-direct -c 5";
    let (out, took) = node_cmd(&lab, &a, &["ping", "b", "--until-direct", "-c", "5"]);
    assert_success(what, &out);
    let ps = pongs(what, &out);
    eprintln!("{what} ({:.2}s):\n{}", took.as_secs_f64(), stdout(&out));
    assert_eq!(
        ps.len(),
        1,
        "{what}: should stop after the first direct reply:\n{}",
        stdout(&out)
    );
    assert!(matches!(ps[0].via, Via::Direct(_)), "{what}: {:?}", ps[0]);
    assert!(
        took < Duration::from_secs(3),
        "{what} took {:.1}s; it should stop at the first direct reply",
        took.as_secs_f64()
    );

    // b dies: no reply at all is a failure; lines that are printed say `timeout from b`.
    lab.kill_now(b.proc());
    let what = "a: node ping b -c 2 after b died";
    let (out, took) = node_cmd(&lab, &a, &["ping", "b", "-c", "2"]);
    eprintln!(
        "{what} ({}, {:.2}s):\n{}{}",
        out.status,
        took.as_secs_f64(),
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !out.status.success(),
        "{what}: succeeded without a reply:\n{}",
        stdout(&out)
    );
    let prefix = format!("timeout from b ({}) ", sb.mesh_ip);
    for l in stdout(&out).lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            l.starts_with(&prefix),
            "{what}: not a `{prefix}...` line: {l:?}"
        );
    }
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].contains('b'),
        "{what}: stderr should be one `error: ...` line:\n{err}"
    );
}

/// Two nodes behind symmetric NATs, with one relay: `node ping` by name shows `via relay
/// r1`; `--until-direct -c 3` gets three relayed replies and fails.
#[test]
fn ping_relayed_by_name() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("evpingr");
    let w = world(&lab, true);
    let ra = lab.add_router("ra", "203.0.113.21", Nat::Symmetric);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::Symmetric);
    let a = start_node(&lab, &w, &ra, "a", "41641");
    let sa = wait_joined(&lab, &a);
    let b = start_node(&lab, &w, &rb, "b", "41700");
    let sb = b.wait_peers(&lab, 1, MESH_TIMEOUT);
    a.wait_peers(&lab, 1, MESH_TIMEOUT);
    // Traffic makes the pair fall back to the relay.
    assert_ping(&lab, &a, "b", &sb.mesh_ip);
    assert_ping(&lab, &b, "a", &sa.mesh_ip);
    a.wait_path(&lab, "b", "relay", RELAY_TIMEOUT);
    b.wait_path(&lab, "a", "relay", RELAY_TIMEOUT);

    let relayed = Via::Relay(RELAY_NAME.to_string());
    let what = "a: node ping b -c 3";
    let (out, took) = node_cmd(&lab, &a, &["ping", "b", "-c", "3"]);
    assert_success(what, &out);
    let ps = pongs(what, &out);
    eprintln!("{what} ({:.2}s):\n{}", took.as_secs_f64(), stdout(&out));
    assert_eq!(ps.len(), 3, "{what}: want 3 pongs:\n{}", stdout(&out));
    assert_from(what, &ps, "b", &sb.mesh_ip);
    for p in &ps {
        assert_eq!(p.via, relayed, "{what}: {p:?}");
    }
    let what = "b: node ping a -c 1";
    let (out, _) = node_cmd(&lab, &b, &["ping", "a", "-c", "1"]);
    assert_success(what, &out);
    let ps = pongs(what, &out);
    assert_eq!(ps.len(), 1, "{what}:\n{}", stdout(&out));
    assert_from(what, &ps, "a", &sa.mesh_ip);
    assert_eq!(ps[0].via, relayed, "{what}: {:?}", ps[0]);

    let what = "a: node ping b --until-direct -c 3";
    let (out, took) = node_cmd(&lab, &a, &["ping", "b", "--until-direct", "-c", "3"]);
    eprintln!(
        "{what} ({}, {:.2}s):\n{}{}",
        out.status,
        took.as_secs_f64(),
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !out.status.success(),
        "{what} succeeded although no reply was direct:\n{}",
        stdout(&out)
    );
    let ps = pongs(what, &out);
    assert_eq!(
        ps.len(),
        3,
        "{what}: want 3 relayed pongs:\n{}",
        stdout(&out)
    );
    for p in &ps {
        assert_eq!(p.via, relayed, "{what}: {p:?}");
    }
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].contains("direct"),
        "{what}: stderr should be one `error: ...` line about the missing direct path:\n{err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
}

// ---------------------------------------------------------------------------------------
// node netcheck
// ---------------------------------------------------------------------------------------

/// `node netcheck --json`, parsed; `None` while the command fails or prints no JSON.
fn netcheck(lab: &Lab, node: &Node) -> Option<Value> {
    let out = node.cli(lab, &["netcheck", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_str(&stdout(&out)).ok()
}

/// The relay's latency in a `relays` list of `{name, latency_ms}`.
fn relay_latency(report: &Value, name: &str) -> Option<f64> {
    report["relays"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)?
        .get("latency_ms")?
        .as_f64()
}

/// Polls netcheck until the mapping is known and the relay has a latency; checks the report
/// against the NAT kind `nat` of `router`.
fn check_netcheck(lab: &Lab, node: &Node, router: &Router, nat: Nat) -> Value {
    let what = format!("node {} behind a {nat:?} NAT", node.name);
    let mut last = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            NETCHECK_TIMEOUT,
            &format!("{what}: netcheck knows the mapping and r1's latency"),
            || {
                if let Some(st) = lab.wait_exit(node.proc(), Duration::ZERO) {
                    panic!("node {} exited ({st})", node.name);
                }
                let v = netcheck(lab, node)?;
                last = Some(v.clone());
                (v["mapping_known"] == Value::Bool(true) && relay_latency(&v, RELAY_NAME).is_some())
                    .then_some(v)
            },
        )
    }));
    let v = match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{what}: last netcheck: {last:?}");
            std::panic::resume_unwind(e)
        }
    };
    eprintln!("{what}: netcheck --json: {v}");
    let symmetric = nat == Nat::Symmetric;
    assert_eq!(v["udp"], Value::Bool(true), "{what}: udp: {v}");
    assert_eq!(
        v["mapping_varies_by_destination"],
        Value::Bool(symmetric),
        "{what}: mapping_varies_by_destination: {v}"
    );
    let wan = router.wan_ip.to_string();
    let endpoints: Vec<&str> = v["public_endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: public_endpoints is not a list: {v}"))
        .iter()
        .map(|e| e.as_str().expect("public endpoints are strings"))
        .collect();
    assert!(!endpoints.is_empty(), "{what}: no public endpoint: {v}");
    for e in &endpoints {
        let addr: SocketAddr = e
            .parse()
            .unwrap_or_else(|_| panic!("{what}: endpoint {e:?} is not IP:PORT"));
        assert_eq!(
            addr.ip().to_string(),
            wan,
            "{what}: public endpoint {e} is not the router's WAN address: {v}"
        );
    }
    if symmetric {
        assert!(
            endpoints.len() >= 2,
            "{what}: a symmetric NAT shows one endpoint per destination: {v}"
        );
    } else {
        assert_eq!(
            endpoints.len(),
            1,
            "{what}: a cone NAT shows one endpoint to everyone: {v}"
        );
    }
    let seen_by = v["seen_by"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: seen_by is not a list: {v}"));
    assert!(
        seen_by.len() >= 2,
        "{what}: the mapping is known, so at least two servers saw the node: {v}"
    );
    for s in seen_by {
        let ep = s["endpoint"].as_str().unwrap_or_default();
        assert!(
            s["server"].is_string() && endpoints.contains(&ep),
            "{what}: bad seen_by entry {s} (public_endpoints {endpoints:?})"
        );
    }
    assert!(
        seen_by.iter().any(|s| s["server"] == "coordinator"),
        "{what}: the coordinator is not among seen_by: {v}"
    );
    let ms = relay_latency(&v, RELAY_NAME).expect("checked above");
    assert!(
        ms > 0.0 && ms < 2000.0,
        "{what}: implausible relay latency {ms}: {v}"
    );
    // status --json agrees.
    let s = node.status(lab).expect("status");
    assert_eq!(
        s.raw["mapping_varies_by_destination"],
        Value::Bool(symmetric),
        "{what}: status --json disagrees with netcheck: {}",
        s.raw
    );
    // The text form works too and shows the same.
    let out = node.cli(lab, &["netcheck"]);
    assert_success(&format!("{what}: node netcheck"), &out);
    let text = stdout(&out);
    assert!(
        text.contains(&wan) && text.contains(RELAY_NAME),
        "{what}: node netcheck does not show the public address and relay:\n{text}"
    );
    v
}

/// `node netcheck` tells a symmetric NAT from a port-restricted one with only the coordinator
/// (its second STUN port) and a relay to ask.
#[test]
fn netcheck_tells_symmetric_from_cone() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("evnetchk");
    let w = world(&lab, true);
    let ra = lab.add_router("ra", "203.0.113.21", Nat::Symmetric);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::PortRestricted);
    let a = start_node(&lab, &w, &ra, "a", "41641");
    let b = start_node(&lab, &w, &rb, "b", "41700");
    wait_joined(&lab, &a);
    wait_joined(&lab, &b);
    check_netcheck(&lab, &a, &ra, Nat::Symmetric);
    let vb = check_netcheck(&lab, &b, &rb, Nat::PortRestricted);
    // A port-restricted NAT keeps the port while it is free.
    assert_eq!(
        vb["public_endpoints"][0], "203.0.113.22:41700",
        "b's public endpoint: {vb}"
    );
}

// ---------------------------------------------------------------------------------------
// coordinator nodes remove
// ---------------------------------------------------------------------------------------

/// `coordinator nodes list --json` describes both nodes; `nodes remove b` makes a drop b
/// within ~2 s, and b is no longer listed.
#[test]
fn nodes_remove_propagates() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("evremove");
    let w = world(&lab, false);
    let ha = lab.add_host("a", "203.0.113.11");
    let hb = lab.add_host("b", "203.0.113.12");
    let mut a = Node::new(&lab, &ha, "a", &w.coord.addr);
    a.up(&lab, Some(&w.key), &["--interface", "lm0"]);
    let mut b = Node::new(&lab, &hb, "b", &w.coord.addr);
    b.up(&lab, Some(&w.key), &["--interface", "lm0"]);
    let sa = a.wait_peers(&lab, 1, MESH_TIMEOUT);
    let sb = b.wait_peers(&lab, 1, MESH_TIMEOUT);

    let nodes = w.coord.nodes_json(&lab);
    let list = nodes
        .as_array()
        .unwrap_or_else(|| panic!("nodes list --json is not a list: {nodes}"));
    assert_eq!(list.len(), 2, "nodes list --json: {nodes}");
    for (s, host) in [(&sa, &ha), (&sb, &hb)] {
        let n = list
            .iter()
            .find(|n| n["name"] == s.name.as_str())
            .unwrap_or_else(|| panic!("nodes list --json lacks {}: {nodes}", s.name));
        assert_eq!(n["role"], "node", "{n}");
        assert_eq!(n["mesh_ip"], s.mesh_ip.as_str(), "{n}");
        assert_eq!(n["public_key"], s.public_key.as_str(), "{n}");
        assert_eq!(n["online"], Value::Bool(true), "{n}");
        let ago = n["last_seen_secs_ago"]
            .as_u64()
            .unwrap_or_else(|| panic!("last_seen_secs_ago is not a number: {n}"));
        assert!(ago < 60, "{n}");
        let ep = n["endpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("endpoint is not a string: {n}"));
        assert!(
            ep.starts_with(&format!("{}:", host.ip)),
            "the endpoint is not where the node is: {n}"
        );
    }

    let removed = Instant::now();
    w.coord.remove_node(&lab, "b");
    a.wait_status(&lab, REMOVAL_TIMEOUT, "b gone after nodes remove", |s| {
        s.peer("b").is_none()
    });
    eprintln!(
        "a dropped b {:.2}s after `nodes remove b` returned",
        removed.elapsed().as_secs_f64()
    );
    let nodes = w.coord.nodes_json(&lab);
    let names: Vec<&str> = nodes
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["a"],
        "nodes list --json after removing b: {nodes}"
    );
    let table = w.coord.cli_ok(&lab, &["nodes", "list"]);
    assert!(
        !table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some("b")),
        "nodes list still shows b:\n{table}"
    );
    let out = w.coord.cli(&lab, &["nodes", "remove", "b"]);
    assert!(
        !out.status.success() && stderr(&out).contains("nodes list"),
        "removing b twice: {}\n{}",
        out.status,
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------
// node status (table)
// ---------------------------------------------------------------------------------------

/// One row of the plain `node status` table, cut at the header's column offsets.
#[derive(Debug)]
struct Row {
    peer: String,
    mesh_ip: String,
    online: String,
    path: String,
    handshake: String,
    rx: String,
    tx: String,
}

/// Where each header column starts.
struct Columns {
    mesh_ip: usize,
    online: usize,
    path: usize,
    handshake: usize,
    rx: usize,
    tx: usize,
}

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// Parses the whole table; panics with the text on anything malformed. Returns the first
/// line and the rows.
fn parse_table(text: &str) -> (String, Vec<Row>) {
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "node status prints too little:\n{text}");
    let header = lines[1];
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "PEER",
            "MESH",
            "IP",
            "ONLINE",
            "PATH",
            "HANDSHAKE",
            "RX",
            "TX"
        ],
        "node status header:\n{text}"
    );
    assert!(header.starts_with("PEER"), "header:\n{text}");
    let find = |name: &str, from: usize| {
        from + header[from..]
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in the header:\n{text}"))
    };
    let mesh_ip = find("MESH IP", 0);
    let online = find("ONLINE", mesh_ip);
    let path = find("PATH", online);
    let handshake = find("HANDSHAKE", path);
    let rx = find("RX", handshake);
    let tx = find("TX", rx);
    let c = Columns {
        mesh_ip,
        online,
        path,
        handshake,
        rx,
        tx,
    };
    // The table ends at the first blank line (LAN broadcast and names follow).
    let rows = lines[2..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| parse_row(l, header, &c, text))
        .collect();
    (lines[0].to_string(), rows)
}

fn parse_row(row: &str, header: &str, c: &Columns, text: &str) -> Row {
    let bad = |why: &str| -> ! {
        panic!("node status row {row:?}: {why}\nheader {header:?}\n{text}");
    };
    if !row.is_char_boundary(c.handshake) || row.len() <= c.handshake {
        bad("shorter than the header's HANDSHAKE column");
    }
    // Left-aligned columns start exactly under their header: a blank before, text at it.
    for (name, at) in [
        ("MESH IP", c.mesh_ip),
        ("ONLINE", c.online),
        ("PATH", c.path),
        ("HANDSHAKE", c.handshake),
    ] {
        let b = row.as_bytes();
        if b[at - 1] != b' ' || b[at] == b' ' {
            bad(&format!(
                "the {name} cell does not start at the header's offset {at}"
            ));
        }
    }
    let cell = |from: usize, to: usize| row[from..to].trim().to_string();
    // HANDSHAKE, then RX and TX: `<number> <unit>` each, at the end of the line.
    let tail: Vec<&str> = row[c.handshake..].split_whitespace().collect();
    if tail.len() < 5 {
        bad("too few fields after HANDSHAKE");
    }
    let n = tail.len();
    let rx = format!("{} {}", tail[n - 4], tail[n - 3]);
    let tx = format!("{} {}", tail[n - 2], tail[n - 1]);
    for v in [&rx, &tx] {
        let (num, unit) = v.split_once(' ').expect("two words");
        let ok = UNITS.contains(&unit)
            && num.parse::<f64>().is_ok()
            && (unit != "B" || num.parse::<u64>().is_ok())
            && (unit == "B" || num.split_once('.').is_some_and(|(_, d)| d.len() == 1));
        if !ok {
            bad(&format!(
                "{v:?} is not a size in human units like `1.2 MiB`"
            ));
        }
    }
    // RX and TX line up with their headers (right- or left-aligned).
    let trimmed = row.trim_end();
    let tx_end = trimmed.len();
    let tx_start = tx_end - tx.len();
    let rx_end = row[..tx_start].trim_end().len();
    let rx_start = rx_end - rx.len();
    let lines_up = |start: usize, end: usize, col: usize, name: &str| {
        let col_end = col + name.len();
        start == col || end == col_end
    };
    if !lines_up(rx_start, rx_end, c.rx, "RX") || !lines_up(tx_start, tx_end, c.tx, "TX") {
        bad("RX/TX do not line up with their headers");
    }
    let handshake = tail[..n - 4].join(" ");
    Row {
        peer: cell(0, c.mesh_ip),
        mesh_ip: cell(c.mesh_ip, c.online),
        online: cell(c.online, c.path),
        path: cell(c.path, c.handshake),
        handshake,
        rx,
        tx,
    }
}

/// a (port-restricted) has a direct peer b (port-restricted) and a relayed peer c
/// (symmetric): the plain `node status` table shows both paths in aligned columns, with
/// sizes in human units.
#[test]
fn status_table() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("evstatus");
    let w = world(&lab, true);
    let ra = lab.add_router("ra", "203.0.113.21", Nat::PortRestricted);
    let rb = lab.add_router("rb", "203.0.113.22", Nat::PortRestricted);
    let rc = lab.add_router("rc", "203.0.113.23", Nat::Symmetric);
    let a = start_node(&lab, &w, &ra, "a", "41641");
    let sa = wait_joined(&lab, &a);
    let b = start_node(&lab, &w, &rb, "b", "41700");
    let c = start_node(&lab, &w, &rc, "c", "41800");
    let sb = b.wait_peers(&lab, 2, MESH_TIMEOUT);
    let sc = c.wait_peers(&lab, 2, MESH_TIMEOUT);
    a.wait_peers(&lab, 2, MESH_TIMEOUT);
    a.wait_path(&lab, "b", "direct", DIRECT_TIMEOUT);
    // Traffic makes a <-> c fall back to the relay; 2 MiB to b shows in MiB.
    assert_ping(&lab, &a, "c", &sc.mesh_ip);
    a.wait_path(&lab, "c", "relay", RELAY_TIMEOUT);
    transfer(
        &lab,
        &a.host.ns,
        &b.host.ns,
        &sb.mesh_ip,
        5001,
        2 * 1024 * 1024,
    );

    let coord_addr = w.coord.addr.clone();
    let mut last = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            RELAY_TIMEOUT,
            "a's status table shows b direct and c via relay r1",
            || {
                let out = a.cli(&lab, &["status"]);
                if !out.status.success() {
                    return None;
                }
                last = stdout(&out);
                let (_, rows) = parse_table(&last);
                let path = |n: &str| {
                    rows.iter()
                        .find(|r| r.peer == n)
                        .map(|r| r.path.clone())
                        .unwrap_or_default()
                };
                (path("b").starts_with("direct ") && path("c").starts_with("via relay "))
                    .then(|| last.clone())
            },
        )
    }));
    let text = match r {
        Ok(t) => t,
        Err(e) => {
            eprintln!("last node status of a:\n{last}");
            std::panic::resume_unwind(e)
        }
    };
    eprintln!("node status of a:\n{text}");
    let (first, rows) = parse_table(&text);
    assert_eq!(
        first,
        format!("a {} (coordinator {coord_addr} connected)", sa.mesh_ip),
        "first line of node status:\n{text}"
    );
    assert_eq!(rows.len(), 2, "one row per peer:\n{text}");
    let header = text.lines().nth(1).expect("header");
    let path_col = header.find("PATH").expect("PATH");
    for r in &rows {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(r.peer.as_str()))
            .expect("row line");
        assert_eq!(
            line.find(&r.path),
            Some(path_col),
            "PATH of {} does not start at the header's offset:\n{text}",
            r.peer
        );
        assert_eq!(r.online, "yes", "{r:?}\n{text}");
        assert!(
            r.handshake == "-" || r.handshake.ends_with("s ago"),
            "HANDSHAKE {:?}:\n{text}",
            r.handshake
        );
    }
    let row = |n: &str| rows.iter().find(|r| r.peer == n).expect("row");
    let rb_row = row("b");
    assert_eq!(rb_row.mesh_ip, sb.mesh_ip, "{text}");
    let ep: SocketAddr = rb_row
        .path
        .strip_prefix("direct ")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("b's PATH is not `direct IP:PORT`: {:?}", rb_row.path));
    assert_eq!(
        ep.ip(),
        rb.wan_ip,
        "b's direct path is not b's NAT:\n{text}"
    );
    assert!(
        rb_row.tx.ends_with(" MiB"),
        "a sent 2 MiB to b, TX shows {:?}:\n{text}",
        rb_row.tx
    );
    assert!(
        rb_row.handshake.ends_with("s ago"),
        "b's direct path carried traffic but shows no handshake:\n{text}"
    );
    let rc_row = row("c");
    assert_eq!(rc_row.mesh_ip, sc.mesh_ip, "{text}");
    assert_eq!(rc_row.path, format!("via relay {RELAY_NAME}"), "{text}");
    assert!(
        rc_row.rx != "0 B" && rc_row.tx != "0 B",
        "pings to c went through, but RX/TX show nothing:\n{text}"
    );
}

/// Names may be up to 63 characters (hostnames often are long): the table's columns still
/// line up when a peer's name is longer than the PEER column is wide.
#[test]
fn status_table_long_names() {
    if !require_root() {
        return;
    }
    const LONG: &str = "build-server-01-office-example";
    let lab = Lab::new("evlong");
    let w = world(&lab, false);
    let ha = lab.add_host("a", "203.0.113.11");
    let hb = lab.add_host("b", "203.0.113.12");
    let hc = lab.add_host("c", "203.0.113.13");
    let mut a = Node::new(&lab, &ha, "a", &w.coord.addr);
    a.up(&lab, Some(&w.key), &["--interface", "lm0"]);
    let mut b = Node::new(&lab, &hb, LONG, &w.coord.addr);
    b.up(&lab, Some(&w.key), &["--interface", "lm0"]);
    let mut c = Node::new(&lab, &hc, "c", &w.coord.addr);
    c.up(&lab, Some(&w.key), &["--interface", "lm0"]);
    a.wait_peers(&lab, 2, MESH_TIMEOUT);
    a.wait_path(&lab, LONG, "direct", DIRECT_TIMEOUT);
    a.wait_path(&lab, "c", "direct", DIRECT_TIMEOUT);
    let out = a.cli(&lab, &["status"]);
    assert_success("a: node status", &out);
    let text = stdout(&out);
    eprintln!("node status of a:\n{text}");
    let (_, rows) = parse_table(&text);
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows.iter().any(|r| r.peer == LONG),
        "the long name is not shown whole:\n{text}"
    );
}
