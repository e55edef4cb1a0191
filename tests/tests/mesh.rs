//! End-to-end tests: the real `coordinator` and `node` binaries in a network-namespace lab.
//!
//! They need root (network namespaces, TUN devices); without root they skip, unless `CI`
//! is set, where they fail. Run them with `./test.sh`.

use lanmesh_e2e::mesh::{assert_ping, Coordinator, Node, Status, MESH_TIMEOUT};
use lanmesh_e2e::{
    bin, clock_ticks, cpu_ticks, require_root, run, stderr, stdout, transfer, wait_until, Lab, Nat,
};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

const TRANSFER_BYTES: u64 = 10 * 1024 * 1024;
/// How long a rejected `node up` may take to give up.
const REJECT_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Names of the namespaces that exist right now.
fn live_namespaces() -> HashSet<String> {
    let out = run("ip", ["netns", "list"], Duration::from_secs(10));
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every ordered pair of `nodes` pings by mesh IP.
fn assert_all_ping(lab: &Lab, nodes: &[&Node], ips: &[String]) {
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i != j {
                assert_ping(lab, from, &to.name, &ips[j]);
            }
        }
    }
}

fn assert_mesh_ip(ip: &str) -> Ipv4Addr {
    let addr: Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|_| panic!("mesh_ip {ip:?} is not an IPv4 address"));
    let o = addr.octets();
    assert!(
        o[0] == 100 && (o[1] & 0xc0) == 64,
        "mesh_ip {addr} is not in the default network 100.64.0.0/10"
    );
    addr
}

/// Each node's view of the others agrees with what they say about themselves.
fn assert_views_agree(statuses: &[Status]) {
    for s in statuses {
        for other in statuses.iter().filter(|o| o.name != s.name) {
            let p = s.peer(&other.name).unwrap_or_else(|| {
                panic!(
                    "{} does not list {} as a peer: {}",
                    s.name, other.name, s.raw
                )
            });
            assert_eq!(
                p.mesh_ip, other.mesh_ip,
                "{} sees {} at another mesh IP",
                s.name, other.name
            );
            assert_eq!(
                p.public_key, other.public_key,
                "{} sees {} with another key",
                s.name, other.name
            );
        }
    }
}

/// Waits for a `node up` that must fail; returns its error (the last line it printed),
/// lowercased.
fn expect_rejected(lab: &Lab, node: &Node, what: &str) -> String {
    let p = node.proc();
    let status = lab.wait_exit(p, REJECT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "node up {what} still runs after {}s; it should exit with an error. Log:\n{}",
            REJECT_TIMEOUT.as_secs(),
            lab.log(p)
        )
    });
    let log = lab.log(p);
    assert!(
        !status.success(),
        "node up {what} exited successfully; it should fail. Log:\n{log}"
    );
    assert!(
        !log.contains("panicked"),
        "node up {what} panicked instead of reporting an error:\n{log}"
    );
    let error = log
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    eprintln!("node up {what}: {status}: {error}");
    error.to_lowercase()
}

// ---------------------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------------------

#[test]
fn lab_smoke() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("smoke");
    let h1 = lab.add_host("h1", "203.0.113.21");
    let h2 = lab.add_host("h2", "203.0.113.22");
    assert!(lab.ping(&h1.ns, h2.ip, 3), "h1 cannot ping h2");
    assert!(lab.ping(&h2.ns, h1.ip, 3), "h2 cannot ping h1");
    assert!(
        !lab.ping(&h1.ns, "203.0.113.99", 1),
        "a missing host answered"
    );

    // spawn, logs and exit status.
    let p = lab.spawn(
        &h1.ns,
        "sh",
        ["-c", "echo hello; echo oops >&2; exit 7"],
        "sh",
    );
    let status = lab
        .wait_exit(&p, Duration::from_secs(10))
        .expect("sh exits");
    assert_eq!(status.code(), Some(7));
    let log = lab.log(&p);
    assert!(log.contains("hello") && log.contains("oops"), "{log}");

    // kill: SIGTERM ends a sleep.
    let s = lab.spawn(&h2.ns, "sleep", ["600"], "sleep");
    assert!(lab.is_running(&s));
    assert_eq!(lab.wait_exit(&s, Duration::from_millis(200)), None);
    lab.kill(&s);
    assert!(!lab.is_running(&s));

    // The namespaces really are separate: h1 has only its own addresses.
    let addrs = stdout(&lab.exec(&h1.ns, "ip", ["-o", "-4", "addr", "show"]));
    let mut addrs: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["127.0.0.1/8", "203.0.113.21/24"]);

    // testkit over the plain lab network.
    transfer(&lab, &h1.ns, &h2.ns, &h2.ip.to_string(), 5001, 1_000_000);

    let names = lab.namespaces();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| live_namespaces().contains(n)));
    drop(lab);
    let live = live_namespaces();
    for n in &names {
        assert!(!live.contains(n), "namespace {n} survived the lab");
    }
}

#[test]
fn lab_cleans_up_after_panic() {
    if !require_root() {
        return;
    }
    let mut names = Vec::new();
    let mut pid = 0;
    let mut dir = std::path::PathBuf::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new("panic");
        dir = lab.dir().to_path_buf();
        let h = lab.add_host("h", "203.0.113.30");
        let p = lab.spawn(&h.ns, "sleep", ["600"], "sleeper");
        pid = p.pid();
        names = lab.namespaces();
        panic!("forced failure to test the cleanup");
    }));
    assert!(r.is_err());
    assert_eq!(names.len(), 2);
    let live = live_namespaces();
    for n in &names {
        assert!(!live.contains(n), "namespace {n} survived a panicking test");
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived a panicking test"
    );
    // A failed lab keeps its files for inspection; this failure was on purpose.
    assert!(dir.join("logs").is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lab_nat_router() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("nat");
    let public = lab.add_host("pub", "203.0.113.40");
    let router = lab.add_router("r1", "203.0.113.41", Nat::PortRestricted);
    let inside = lab.add_host_behind(&router, "in", 10);
    assert_eq!(inside.ip.to_string(), "10.1.0.10");
    assert!(
        lab.ping(&inside.ns, public.ip, 2),
        "inside host cannot reach the internet"
    );
    // The public host cannot reach into the LAN.
    assert!(!lab.ping(&public.ns, inside.ip, 1));
    // Connections from inside appear to come from the router's WAN address.
    let log = transfer(&lab, &inside.ns, &public.ns, "203.0.113.40", 5002, 100_000);
    assert!(
        log.contains(&format!("connection from {}:", router.wan_ip)),
        "not masqueraded: {log}"
    );
}

// ---------------------------------------------------------------------------------------
// lanmesh
// ---------------------------------------------------------------------------------------

#[test]
fn status_without_daemon() {
    let dir = std::env::temp_dir().join(format!("lm-nodaemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = run(
        bin("node"),
        [
            "status".as_ref(),
            "--state-dir".as_ref(),
            dir.as_os_str(),
            "--json".as_ref(),
        ],
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "node status without a daemon succeeded: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        !err.trim().is_empty(),
        "node status without a daemon failed without a message"
    );
    assert!(
        !err.contains("unrecognized") && !err.contains("unexpected argument"),
        "node status --state-dir DIR --json is not understood: {err}"
    );
}

#[test]
fn three_nodes_mesh() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("mesh3");
    let coord_host = lab.add_host("coord", "203.0.113.10");
    let mut coord = Coordinator::start(&lab, &coord_host, &[]);
    let key = coord.create_key(&lab, &["--reusable"]);

    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let host = lab.add_host(name, &format!("203.0.113.{}", 11 + i));
            Node::new(&lab, &host, name, &coord.addr)
        })
        .collect();
    for n in nodes.iter_mut() {
        n.up(&lab, Some(&key), &["--interface", "lm0"]);
    }

    // Everyone learns about everyone.
    let statuses: Vec<Status> = nodes
        .iter()
        .map(|n| n.wait_peers(&lab, 2, MESH_TIMEOUT))
        .collect();
    let ips: Vec<String> = statuses.iter().map(|s| s.mesh_ip.clone()).collect();
    let distinct: HashSet<Ipv4Addr> = ips.iter().map(|ip| assert_mesh_ip(ip)).collect();
    assert_eq!(distinct.len(), 3, "mesh IPs are not distinct: {ips:?}");
    for (n, s) in nodes.iter().zip(&statuses) {
        assert_eq!(s.name, n.name, "status of {} has another name", n.name);
    }
    assert_views_agree(&statuses);

    // Every ordered pair pings by mesh IP, over direct paths.
    let refs: Vec<&Node> = nodes.iter().collect();
    assert_all_ping(&lab, &refs, &ips);
    for n in &nodes {
        n.wait_status(&lab, MESH_TIMEOUT, "all paths direct", |s| {
            s.peers.len() == 2 && s.peers.iter().all(|p| p.path == "direct")
        });
    }

    // Idle daemons sleep: a spinning event loop (a timeout that stays in the past) shows as a
    // core's worth of CPU.
    let ticks: Vec<u64> = nodes.iter().map(|n| cpu_ticks(n.proc().pid())).collect();
    std::thread::sleep(Duration::from_secs(3));
    for (n, before) in nodes.iter().zip(ticks) {
        let used = (cpu_ticks(n.proc().pid()) - before) as f64 / clock_ticks() / 3.0;
        assert!(
            used < 0.2,
            "idle node {} used {:.0} % of a core",
            n.name,
            used * 100.0
        );
    }

    // 10 MB a -> c through the mesh, checksummed on both ends.
    transfer(
        &lab,
        &nodes[0].host.ns,
        &nodes[2].host.ns,
        &ips[2],
        5001,
        TRANSFER_BYTES,
    );
    nodes[0].wait_status(
        &lab,
        Duration::from_secs(10),
        "tx_bytes to c >= 10 MB",
        |s| s.peer("c").is_some_and(|p| p.tx_bytes >= TRANSFER_BYTES),
    );

    // The node put its address, routes and rules in place through netlink as documented
    // (LAN broadcast is on by default: the interface looks like a LAN).
    let b = &mut nodes[1];
    assert!(
        lab.has_interface(&b.host.ns, "lm0"),
        "b has no interface lm0"
    );
    let show = |args: &[&str]| stdout(&lab.exec(&b.host.ns, "ip", args));
    let addr = show(&["-4", "addr", "show", "dev", "lm0"]);
    assert!(
        addr.contains(&format!("inet {}/10 brd 100.127.255.255", ips[1]))
            && addr.contains("noprefixroute"),
        "lm0 of b: {addr}"
    );
    let table = show(&["-4", "route", "show", "table", "5252"]);
    for dst in [
        "100.64.0.0/10 dev lm0",
        "255.255.255.255 dev lm0",
        "224.0.0.0/4 dev lm0",
    ] {
        assert!(table.contains(dst), "table 5252 of b lacks {dst}: {table}");
    }
    let rules = show(&["-4", "rule", "show"]);
    for rule in [
        "5250:\tfrom all fwmark 0x4c4d lookup main",
        "5260:\tfrom all lookup main suppress_prefixlength 0",
        "5270:\tfrom all lookup 5252",
    ] {
        assert!(rules.contains(rule), "b's rules lack {rule:?}: {rules}");
    }

    // Restart b: `node down` ends the daemon quickly and removes the interface and its rules;
    // `node up` with the same state dir gets the same mesh IP back.
    let started = Instant::now();
    let (exit, out) = b.down(&lab, Duration::from_secs(3));
    assert!(
        out.status.success(),
        "node down failed ({}): {}",
        out.status,
        stderr(&out)
    );
    let exit = exit.unwrap_or_else(|| panic!("node b did not exit within 3 s of node down"));
    assert!(exit.success(), "node b exited with {exit} after node down");
    eprintln!(
        "node b stopped {:.2}s after node down",
        started.elapsed().as_secs_f64()
    );
    wait_until(Duration::from_secs(2), "lm0 of b to be removed", || {
        !lab.has_interface(&b.host.ns, "lm0")
    });
    let rules = stdout(&lab.exec(&b.host.ns, "ip", ["-4", "rule", "show"]));
    assert!(
        !rules.contains("5250:") && !rules.contains("5270:"),
        "b's rules outlived it: {rules}"
    );
    b.up(&lab, Some(&key), &["--interface", "lm0"]);
    let sb = b.wait_peers(&lab, 2, MESH_TIMEOUT);
    assert_eq!(sb.mesh_ip, ips[1], "b got another mesh IP after a restart");
    assert_eq!(
        sb.public_key, statuses[1].public_key,
        "b has a new key after a restart"
    );
    for (from, to) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
        assert_ping(&lab, &nodes[from], &nodes[to].name, &ips[to]);
    }

    // The coordinator crashes: the data plane keeps working.
    lab.kill_now(coord.proc());
    for round in 0..4 {
        for (from, to) in [(0, 1), (1, 0), (0, 2), (2, 0)] {
            assert!(
                lab.ping(&nodes[from].host.ns, &ips[to], 1),
                "{} cannot ping {} {round} rounds after the coordinator died",
                nodes[from].name,
                nodes[to].name
            );
        }
        std::thread::sleep(Duration::from_millis(800));
    }

    // The coordinator comes back with its data; a fourth node joins and meets everyone.
    coord.restart(&lab);
    let key_d = coord.create_key(&lab, &[]);
    let host_d = lab.add_host("d", "203.0.113.14");
    let mut d = Node::new(&lab, &host_d, "d", &coord.addr);
    d.up(&lab, Some(&key_d), &[]);
    let sd = d.wait_peers(&lab, 3, MESH_TIMEOUT);
    assert_mesh_ip(&sd.mesh_ip);
    assert!(
        !ips.contains(&sd.mesh_ip),
        "d got a mesh IP that is already taken: {}",
        sd.mesh_ip
    );
    let mut all_statuses = vec![sd.clone()];
    for n in &nodes {
        all_statuses.push(n.wait_peers(&lab, 3, MESH_TIMEOUT));
    }
    assert_views_agree(&all_statuses);
    for (i, n) in nodes.iter().enumerate() {
        assert_ping(&lab, &d, &n.name, &ips[i]);
        assert_ping(&lab, n, "d", &sd.mesh_ip);
    }
}

#[test]
fn join_rejections() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("reject");
    let coord_host = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &coord_host, &[]);
    let h1 = lab.add_host("h1", "203.0.113.11");

    // No key at all.
    let mut nokey = Node::new(&lab, &h1, "nokey", &coord.addr);
    nokey.up(&lab, None, &[]);
    let log = expect_rejected(&lab, &nokey, "without --auth-key");
    assert!(
        log.contains("key"),
        "the error does not say a join key is needed: {log}"
    );

    // A key whose secret is wrong.
    let valid = coord.create_key(&lab, &["--reusable"]);
    let mut bad: Vec<char> = valid.chars().collect();
    // The text is lmk1- + base64url(coordinator key 32 | id 8 | secret 16): the third last
    // character holds 6 bits of the secret alone.
    let i = bad.len() - 3;
    bad[i] = if bad[i] == 'A' { 'B' } else { 'A' };
    let bad: String = bad.into_iter().collect();
    assert_ne!(bad, valid);
    let mut badkey = Node::new(&lab, &h1, "badkey", &coord.addr);
    badkey.up(&lab, Some(&bad), &[]);
    let log = expect_rejected(&lab, &badkey, "with a wrong key");
    assert!(
        log.contains("key"),
        "the error does not mention the key: {log}"
    );

    // A one-off key works once.
    let once = coord.create_key(&lab, &[]);
    let hx = lab.add_host("x", "203.0.113.12");
    let mut x = Node::new(&lab, &hx, "x", &coord.addr);
    x.up(&lab, Some(&once), &[]);
    let sx = x.wait_status(&lab, MESH_TIMEOUT, "joined (has a mesh IP)", |s| {
        !s.mesh_ip.is_empty()
    });
    assert_mesh_ip(&sx.mesh_ip);
    let hy = lab.add_host("y", "203.0.113.13");
    let mut y = Node::new(&lab, &hy, "y", &coord.addr);
    y.up(&lab, Some(&once), &[]);
    let log = expect_rejected(&lab, &y, "with a used one-off key");
    assert!(
        log.contains("used"),
        "the error does not say the key was used: {log}"
    );
    assert!(lab.is_running(x.proc()), "node x died when y was rejected");
}

#[test]
fn open_mode_and_node_removal() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("open");
    let coord_host = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &coord_host, &["--open"]);
    let mut nodes: Vec<Node> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let host = lab.add_host(name, &format!("203.0.113.{}", 11 + i));
            Node::new(&lab, &host, name, &coord.addr)
        })
        .collect();
    for n in nodes.iter_mut() {
        n.up(&lab, None, &[]);
    }
    let statuses: Vec<Status> = nodes
        .iter()
        .map(|n| n.wait_peers(&lab, 1, MESH_TIMEOUT))
        .collect();
    assert_views_agree(&statuses);
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_ping(&lab, a, "b", &statuses[1].mesh_ip);

    let listed = coord.nodes_json(&lab).to_string();
    assert!(
        listed.contains("\"a\"") && listed.contains("\"b\""),
        "nodes list --json misses a or b: {listed}"
    );

    coord.remove_node(&lab, &b.name);
    a.wait_status(
        &lab,
        Duration::from_secs(10),
        "b to disappear after nodes remove",
        |s| s.peer("b").is_none(),
    );
}
