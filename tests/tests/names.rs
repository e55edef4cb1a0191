//! Peer names end to end, through /etc/hosts (the lab has no systemd-resolved; each lab
//! namespace has its own /etc/hosts, which `ip netns exec` mounts over the machine's):
//! `getent hosts b.party`, `ping b.party` and bare `b` resolve on every node, names appear
//! as peers join, go when a node is removed at the coordinator, follow a rename there, and
//! leave the hosts file on
//! `node down` — and after a crash, at the next start.

use lanmesh_e2e::mesh::{Coordinator, Node, MESH_TIMEOUT};
use lanmesh_e2e::{hosts_file, require_root, stdout, wait_for, wait_until, Lab};
use std::time::{Duration, Instant};

/// Names must follow the peer map within about a second; the test allows some slack for a
/// busy machine (the bench measures).
const NAMES_TIMEOUT: Duration = Duration::from_secs(5);

fn resolve(lab: &Lab, node: &Node, name: &str) -> Option<String> {
    let out = lab.exec(&node.host.ns, "getent", ["hosts", name]);
    out.status.success().then(|| {
        stdout(&out)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

#[test]
fn peer_names_resolve_through_etc_hosts() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("names");
    let ch = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &ch, &["--domain", "party"]);
    let key = coord.create_key(&lab, &["--reusable"]);
    let mut nodes: Vec<Node> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let h = lab.add_host(name, &format!("203.0.113.{}", 21 + i));
            let mut n = Node::new(&lab, &h, name, &coord.addr);
            n.up(&lab, Some(&key), &["--interface", "lm0"]);
            n
        })
        .collect();
    let sa = nodes[0].wait_peers(&lab, 1, MESH_TIMEOUT);
    let sb = nodes[1].wait_peers(&lab, 1, MESH_TIMEOUT);
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_until(NAMES_TIMEOUT, "a resolves b.party", || {
        resolve(&lab, a, "b.party").as_deref() == Some(sb.mesh_ip.as_str())
    });
    assert_eq!(
        resolve(&lab, a, "B.Party").as_deref(),
        Some(sb.mesh_ip.as_str())
    );
    assert_eq!(
        resolve(&lab, a, "b").as_deref(),
        Some(sb.mesh_ip.as_str()),
        "bare name"
    );
    assert_eq!(
        resolve(&lab, a, "a.party").as_deref(),
        Some(sa.mesh_ip.as_str()),
        "own name"
    );
    assert_eq!(resolve(&lab, a, "nobody.party"), None);
    wait_until(NAMES_TIMEOUT, "b resolves a.party", || {
        resolve(&lab, b, "a.party").as_deref() == Some(sa.mesh_ip.as_str())
    });
    // Programs use the names: ping by name over the mesh.
    wait_until(MESH_TIMEOUT, "a pings b.party", || {
        lab.ping(&a.host.ns, "b.party", 1)
    });
    // The status says how names resolve.
    let s = a.status(&lab).unwrap();
    assert_eq!(s.raw["names"], "/etc/hosts", "{}", s.raw);
    assert_eq!(s.raw["domain"], "party", "{}", s.raw);
    assert_eq!(s.raw["peers"][0]["dns_name"], "b.party", "{}", s.raw);
    // The machine's own lines stay first and untouched.
    let hosts = std::fs::read_to_string(hosts_file(&a.host.ns)).unwrap();
    assert!(hosts.starts_with("127.0.0.1 localhost\n"), "{hosts}");
    assert_eq!(hosts.matches("# lanmesh lm0 begin").count(), 1, "{hosts}");

    // A node joining shows up by name within about a second.
    let hc = lab.add_host("c", "203.0.113.23");
    let mut c = Node::new(&lab, &hc, "c", &coord.addr);
    let started = Instant::now();
    c.up(&lab, Some(&key), &["--interface", "lm0"]);
    let sc = c.wait_status(&lab, MESH_TIMEOUT, "registered", |s| !s.mesh_ip.is_empty());
    let registered = started.elapsed();
    wait_until(NAMES_TIMEOUT, "a resolves c.party", || {
        resolve(&lab, &nodes[0], "c.party").as_deref() == Some(sc.mesh_ip.as_str())
    });
    eprintln!(
        "c registered after {:?}; a resolved c.party after {:?}",
        registered,
        started.elapsed()
    );

    // Removed at the coordinator: the name goes.
    coord.remove_node(&lab, "c");
    wait_until(NAMES_TIMEOUT, "a forgets c.party", || {
        resolve(&lab, &nodes[0], "c.party").is_none()
    });
    lab.kill(c.proc());

    // Renamed at the coordinator: peers resolve the new name, and the node itself knows it.
    coord.cli_ok(&lab, &["nodes", "rename", "b", "bob"]);
    wait_until(
        NAMES_TIMEOUT,
        "a resolves bob.party and not b.party",
        || {
            resolve(&lab, &nodes[0], "bob.party").as_deref() == Some(sb.mesh_ip.as_str())
                && resolve(&lab, &nodes[0], "b.party").is_none()
        },
    );
    nodes[1].wait_status(&lab, NAMES_TIMEOUT, "knows its new name", |s| {
        s.name == "bob"
    });
    wait_until(NAMES_TIMEOUT, "b resolves its own new name", || {
        resolve(&lab, &nodes[1], "bob.party").as_deref() == Some(sb.mesh_ip.as_str())
    });

    // `node down` takes the block out of the hosts file.
    let (status, _) = nodes[1].down(&lab, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "b did not stop");
    let hosts_b = std::fs::read_to_string(hosts_file(&nodes[1].host.ns)).unwrap();
    assert!(!hosts_b.contains("lanmesh"), "{hosts_b}");

    // A crash leaves it; the next start clears it before anything else.
    lab.kill_now(nodes[0].proc());
    let left = std::fs::read_to_string(hosts_file(&nodes[0].host.ns)).unwrap();
    assert!(left.contains("# lanmesh lm0 begin"), "{left}");
    nodes[0].up(&lab, None, &["--interface", "lm0"]);
    let cleared = wait_for(MESH_TIMEOUT, "a restarted and rewrote its names", || {
        let text = std::fs::read_to_string(hosts_file(&nodes[0].host.ns)).ok()?;
        let s = nodes[0].status(&lab)?;
        (!s.mesh_ip.is_empty() && text.matches("# lanmesh lm0 begin").count() == 1).then_some(text)
    });
    assert!(!cleared.contains("c.party"), "{cleared}");
    assert!(
        cleared.contains("b.party"),
        "b stays listed (offline): {cleared}"
    );
}
