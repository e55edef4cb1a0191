//! Mixed versions, end to end: the previous lanmesh (the commit in `tests/previous-version`,
//! built by `scripts/build-previous.sh` into `target/previous/`) and this one work together.
//! A node of either version on a coordinator of either version registers and reaches a
//! node of the other version over WireGuard — the newer side speaks the older Hello form, pads
//! what the older side would not, and reads the older side's shorter messages.
//!
//! ```text
//!   coordinator 203.0.113.10:3478     node a 203.0.113.11     node b 203.0.113.12
//! ```
//!
//! The newer node also carries LAN traffic to the older one (its broadcast query finds a game
//! server there), and on an older coordinator, which names no domain and switches nothing,
//! it uses the defaults (names under `mesh`, broadcast on).
//!
//! Needs root; skips without it (fails under `CI`).

use lanmesh_e2e::mesh::{Coordinator, Node, MESH_TIMEOUT};
use lanmesh_e2e::{require_root, wait_until, workspace_root, Lab};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The previous version's bin dir: `$LANMESH_PREVIOUS_BIN_DIR`, else what
/// `scripts/build-previous.sh` built (it builds once, then reuses).
fn previous(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("LANMESH_PREVIOUS_BIN_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/build-previous.sh"))
            .current_dir(workspace_root())
            .output()
            .expect("cannot run scripts/build-previous.sh");
        assert!(
            out.status.success(),
            "scripts/build-previous.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    });
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// How long a node of one version may take to register with a coordinator of the other (a
/// newer node tries the older Hello form on its third attempt, about 3 s in).
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Both nodes list each other and ping each other through the mesh.
fn assert_pair_works(lab: &Lab, a: &Node, b: &Node) {
    let sa = a.wait_peers(lab, 1, JOIN_TIMEOUT);
    let sb = b.wait_peers(lab, 1, JOIN_TIMEOUT);
    assert_eq!(sa.peers[0].mesh_ip, sb.mesh_ip);
    assert_eq!(sb.peers[0].mesh_ip, sa.mesh_ip);
    for (from, to) in [(a, &sb), (b, &sa)] {
        let got = lab.ping_received(&from.host.ns, &to.mesh_ip, 5);
        assert!(
            got >= 3,
            "{} ({}) got {got}/5 answers from {} ({})",
            from.name,
            from.program.display(),
            to.name,
            to.mesh_ip
        );
    }
}

#[test]
fn an_older_node_and_a_newer_one_on_a_newer_coordinator() {
    if !require_root() {
        return;
    }
    let old_node = previous("node");
    let lab = Lab::new("compatnew");
    let ch = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start(&lab, &ch, &[]);
    let key = coord.create_key(&lab, &["--reusable"]);
    let mut a = Node::new(&lab, &lab.add_host("a", "203.0.113.11"), "a", &coord.addr);
    a.program = old_node;
    a.up(&lab, Some(&key), &["--interface", "lm0"]);
    let mut b = Node::new(&lab, &lab.add_host("b", "203.0.113.12"), "b", &coord.addr);
    b.up(&lab, Some(&key), &["--interface", "lm0"]);
    assert_pair_works(&lab, &a, &b);
    // The newer node's path-level ping gets the older node's pong.
    let out = b.cli(&lab, &["ping", "a", "-c", "2"]);
    assert!(
        out.status.success(),
        "node ping from the newer node to the older one: {}{}",
        lanmesh_e2e::stdout(&out),
        lanmesh_e2e::stderr(&out)
    );
    // The older node is still registered after its heartbeats (unpadded) a while.
    std::thread::sleep(Duration::from_secs(1));
    a.wait_status(&lab, MESH_TIMEOUT, "still connected", |s| {
        s.raw["coordinator_connected"] == serde_json::Value::Bool(true)
    });
    // LAN traffic: the newer node's broadcast query reaches a game server on the older node
    // (which writes what its peer sent into its TUN; the kernel delivers a limited
    // broadcast), and the answer comes back by unicast. The group reports the newer node
    // sends the older one are ignored there.
    let server = lab.spawn(
        &a.host.ns,
        game(),
        ["server", "--port", "27960", "--name", "old-a"],
        "server-a",
    );
    wait_until(MESH_TIMEOUT, "a's game server listening", || {
        lab.listening(&a.host.ns, 27960)
    });
    let out = lab.exec(
        &b.host.ns,
        game(),
        [
            "browse",
            "--port",
            "27960",
            "--to",
            "255.255.255.255",
            "--expect",
            "1",
            "--wait-ms",
            "8000",
        ],
    );
    assert!(
        lanmesh_e2e::stdout(&out).contains("answer old-a"),
        "the newer node's broadcast did not find the older node's server: {}",
        lanmesh_e2e::stdout(&out)
    );
    lab.kill(&server);
}

fn game() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lanmesh-lan-game"))
}

#[test]
fn a_newer_node_and_an_older_one_on_an_older_coordinator() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("compatold");
    let ch = lab.add_host("coord", "203.0.113.10");
    let coord = Coordinator::start_program(&lab, &ch, &[], previous("coordinator"));
    let key = coord.create_key(&lab, &["--reusable"]);
    let mut a = Node::new(&lab, &lab.add_host("a", "203.0.113.11"), "a", &coord.addr);
    a.up(&lab, Some(&key), &["--interface", "lm0"]);
    let mut b = Node::new(&lab, &lab.add_host("b", "203.0.113.12"), "b", &coord.addr);
    b.program = previous("node");
    b.up(&lab, Some(&key), &["--interface", "lm0"]);
    assert_pair_works(&lab, &a, &b);
    let s = a.status(&lab).expect("status of the newer node");
    assert_eq!(
        s.raw["coordinator_connected"],
        serde_json::Value::Bool(true)
    );
    assert!(s.raw["problem"].is_null(), "{}", s.raw);
    // An older coordinator names no domain and switches nothing off: the defaults hold.
    assert_eq!(s.raw["domain"], "mesh", "{}", s.raw);
    assert_eq!(s.raw["lan_broadcast"]["active"], true, "{}", s.raw);
    let sb = b.status(&lab).expect("status of the older node");
    wait_until(MESH_TIMEOUT, "the newer node resolves b.mesh", || {
        let out = lab.exec(&a.host.ns, "getent", ["hosts", "b.mesh"]);
        lanmesh_e2e::stdout(&out).starts_with(&format!("{} ", sb.mesh_ip))
    });
}
