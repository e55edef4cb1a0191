//! Helpers that drive lanmesh's `coordinator` and `node` binaries inside a [`Lab`].
//!
//! They code against the CLI contract:
//!
//! ```text
//! coordinator serve --listen IP:PORT --data-dir DIR [--network CIDR] [--open] [--offline-after SECS]
//! coordinator keys create --data-dir DIR [--reusable] [--expires 24h]   (key = last stdout line)
//! coordinator nodes list --data-dir DIR [--json]
//! coordinator nodes remove NAME --data-dir DIR
//! node up --coordinator IP:PORT [--auth-key KEY] --name NAME --state-dir DIR [--interface lm0] [--port 41641]
//!         [--stun HOST:PORT]... [--keepalive SECS]
//! node status --state-dir DIR --json      peers[].path: "direct" | "relay" | "connecting"
//! node down --state-dir DIR
//! ```
//!
//! The coordinator also answers STUN Binding requests on its UDP port.
//!
//! Relays forward WireGuard ciphertext between members (nodes the coordinator lists) that
//! cannot reach each other directly:
//!
//! ```text
//! coordinator keys create --relay [--reusable] --data-dir DIR      (key = last stdout line)
//! relay serve --listen IP:PORT --coordinator IP:PORT --auth-key KEY --state-dir DIR [--name NAME]
//!             [--rate-limit-mbps N]
//! relay status --state-dir DIR --json
//! node status --json      relays[]: {name, latency_ms}; peers[].relay: the relay's name when
//!                         path is "relay" (endpoint is then the relay's address)
//! ```

use crate::{bin, run, stderr, stdout, wait_for, wait_until, Host, Lab, Proc};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The coordinator's UDP port in the lab.
pub const COORDINATOR_PORT: u16 = 3478;

/// How long a node may take to notice changes in the mesh, in the tests' polls.
pub const MESH_TIMEOUT: Duration = Duration::from_secs(30);

/// The `coordinator` binary.
pub fn coordinator_bin() -> PathBuf {
    bin("coordinator")
}

/// The `node` binary.
pub fn node_bin() -> PathBuf {
    bin("node")
}

/// The `relay` binary.
pub fn relay_bin() -> PathBuf {
    bin("relay")
}

/// The UDP port relays listen on in the lab.
pub const RELAY_PORT: u16 = 3479;

/// Whether `node up --help` of the binary under test mentions `flag` (e.g. `"--stun"`):
/// lets the tests pass newer flags only to a node that knows them. Cached per flag.
pub fn node_up_supports(flag: &str) -> bool {
    static HELP: OnceLock<String> = OnceLock::new();
    static NOTED: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        let out = run(node_bin(), ["up", "--help"], Duration::from_secs(10));
        format!("{}{}", stdout(&out), stderr(&out))
    });
    let supported = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|w| w == flag);
    let mut noted = NOTED
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !supported && noted.insert(flag.to_string(), supported).is_none() {
        eprintln!("note: `node up` does not know {flag} yet; not passing it");
    }
    supported
}

/// `[--stun S]... [--keepalive SECS]`: the `node up` flags of a NAT traversal test, each
/// only if the node knows it ([`node_up_supports`]). The coordinator is always asked for
/// STUN; `stun` are *extra* servers (a second one lets the node tell a symmetric NAT).
pub fn nat_flags(stun: &[&str], keepalive: Option<u32>) -> Vec<String> {
    let mut flags = Vec::new();
    if !stun.is_empty() && node_up_supports("--stun") {
        for s in stun {
            flags.extend(["--stun".to_string(), s.to_string()]);
        }
    }
    if let Some(secs) = keepalive {
        if node_up_supports("--keepalive") {
            flags.extend(["--keepalive".to_string(), secs.to_string()]);
        }
    }
    flags
}

/// A `coordinator serve` process and its data dir.
pub struct Coordinator {
    pub host: Host,
    pub data_dir: PathBuf,
    /// `IP:PORT` it listens on; what nodes get as `--coordinator`.
    pub addr: String,
    /// The `coordinator` binary it runs (another version's, in mixed-version tests).
    pub program: PathBuf,
    serve_args: Vec<String>,
    proc: Option<Proc>,
}

impl Coordinator {
    /// Starts `coordinator serve --listen <host ip>:3478 --data-dir <lab>/<role>-data
    /// <extra>` in `host`'s namespace and waits until it listens.
    pub fn start(lab: &Lab, host: &Host, extra: &[&str]) -> Coordinator {
        Self::start_program(lab, host, extra, coordinator_bin())
    }

    /// [`Coordinator::start`] with another `coordinator` binary.
    pub fn start_program(lab: &Lab, host: &Host, extra: &[&str], program: PathBuf) -> Coordinator {
        let mut c = Coordinator {
            host: host.clone(),
            data_dir: lab.subdir(&format!("{}-data", host.role)),
            addr: format!("{}:{COORDINATOR_PORT}", host.ip),
            program,
            serve_args: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        c.restart(lab);
        c
    }

    /// Starts `coordinator serve` again (same data dir and flags) after a stop or crash.
    pub fn restart(&mut self, lab: &Lab) {
        if let Some(p) = &self.proc {
            assert!(!lab.is_running(p), "coordinator is still running");
        }
        let data_dir = self.data_dir.display().to_string();
        let mut args = vec!["serve", "--listen", &self.addr, "--data-dir", &data_dir];
        args.extend(self.serve_args.iter().map(String::as_str));
        let log = format!("{}-coordinator", self.host.role);
        let p = lab.spawn(&self.host.ns, &self.program, &args, &log);
        wait_for(Duration::from_secs(20), "the coordinator to listen", || {
            if lab.listening(&self.host.ns, COORDINATOR_PORT) {
                return Some(());
            }
            if let Some(status) = lab.wait_exit(&p, Duration::ZERO) {
                panic!("coordinator exited at start ({status}):\n{}", lab.log(&p));
            }
            None
        });
        self.proc = Some(p);
    }

    /// The running (or last) `serve` process.
    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("coordinator was started")
    }

    /// Runs `coordinator <args> --data-dir <data dir>` in the coordinator's namespace.
    pub fn cli(&self, lab: &Lab, args: &[&str]) -> Output {
        let data_dir = self.data_dir.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", &data_dir]);
        lab.exec(&self.host.ns, &self.program, &all)
    }

    /// Like [`Coordinator::cli`], but panics unless the command succeeds; returns stdout.
    pub fn cli_ok(&self, lab: &Lab, args: &[&str]) -> String {
        let out = self.cli(lab, args);
        assert!(
            out.status.success(),
            "coordinator {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `coordinator keys create [extra]`: the new join key (last line of stdout).
    pub fn create_key(&self, lab: &Lab, extra: &[&str]) -> String {
        let mut args = vec!["keys", "create"];
        args.extend_from_slice(extra);
        let out = self.cli_ok(lab, &args);
        let key = out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string();
        assert!(
            key.starts_with("lmk1-"),
            "keys create: last line is not a join key: {out:?}"
        );
        key
    }

    /// `coordinator nodes list --json`, parsed.
    pub fn nodes_json(&self, lab: &Lab) -> Value {
        let out = self.cli_ok(lab, &["nodes", "list", "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("nodes list --json is not JSON ({e}): {out}"))
    }

    /// `coordinator nodes remove NAME`; panics on failure.
    pub fn remove_node(&self, lab: &Lab, name: &str) {
        self.cli_ok(lab, &["nodes", "remove", name]);
    }
}

/// One node: its host namespace, name and state dir, and its `node up` process when running.
pub struct Node {
    pub host: Host,
    pub name: String,
    pub state_dir: PathBuf,
    /// `IP:PORT` of the coordinator.
    pub coordinator: String,
    /// The `node` binary it runs (another version's, in mixed-version tests).
    pub program: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    /// A node named `name` on `host`, with state dir `<lab>/node-<name>`; not started yet.
    pub fn new(lab: &Lab, host: &Host, name: &str, coordinator: &str) -> Node {
        Node {
            host: host.clone(),
            name: name.to_string(),
            state_dir: lab.subdir(&format!("node-{name}")),
            coordinator: coordinator.to_string(),
            program: node_bin(),
            proc: None,
        }
    }

    /// Starts `node up --coordinator C [--auth-key KEY] --name N --state-dir D <extra>`.
    /// Returns the process (also kept as [`Node::proc`]); it does not wait for anything.
    pub fn up(&mut self, lab: &Lab, key: Option<&str>, extra: &[&str]) -> Proc {
        let state_dir = self.state_dir.display().to_string();
        let mut args = vec!["up", "--coordinator", &self.coordinator];
        if let Some(k) = key {
            args.extend(["--auth-key", k]);
        }
        args.extend(["--name", &self.name, "--state-dir", &state_dir]);
        args.extend_from_slice(extra);
        let p = lab.spawn(
            &self.host.ns,
            &self.program,
            &args,
            &format!("node-{}", self.name),
        );
        self.proc = Some(p.clone());
        p
    }

    /// The last `node up` process.
    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("node was started")
    }

    /// Runs `node <args> --state-dir <state dir>` in the node's namespace.
    pub fn cli(&self, lab: &Lab, args: &[&str]) -> Output {
        let state_dir = self.state_dir.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state-dir", &state_dir]);
        lab.exec(&self.host.ns, &self.program, &all)
    }

    /// `node down`, then waits for the daemon to exit; returns the daemon's exit status
    /// (`None` if it did not exit within `timeout`) and the output of `node down`.
    pub fn down(&mut self, lab: &Lab, timeout: Duration) -> (Option<ExitStatus>, Output) {
        let out = self.cli(lab, &["down"]);
        let status = lab.wait_exit(self.proc(), timeout);
        (status, out)
    }

    /// `node status --json`, parsed; `None` if the command fails (no daemon yet) or prints
    /// something that is not a status.
    pub fn status(&self, lab: &Lab) -> Option<Status> {
        let out = self.cli(lab, &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        Status::parse(&stdout(&out)).ok()
    }

    /// Polls until `cond` holds for this node's status; panics after `timeout`, and right
    /// away if the daemon exits.
    pub fn wait_status(
        &self,
        lab: &Lab,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Status) -> bool,
    ) -> Status {
        let what = format!("node {}: {what}", self.name);
        let mut last = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(timeout, &what, || {
                if let Some(p) = &self.proc {
                    if let Some(st) = lab.wait_exit(p, Duration::ZERO) {
                        panic!("node {} exited ({st}) while waiting for: {what}", self.name);
                    }
                }
                let s = self.status(lab)?;
                let ok = cond(&s);
                last = Some(s.raw.clone());
                ok.then_some(s)
            })
        }));
        match r {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "last status of node {}: {}",
                    self.name,
                    last.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                );
                std::panic::resume_unwind(e)
            }
        }
    }

    /// Waits until the status lists exactly `n` peers.
    pub fn wait_peers(&self, lab: &Lab, n: usize, timeout: Duration) -> Status {
        self.wait_status(lab, timeout, &format!("{n} peers"), |s| s.peers.len() == n)
    }

    /// Sends one datagram into the mesh to `peer_ip` (the discard port): nodes build a
    /// peer's tunnel, and punch, on the first packet for it.
    pub fn nudge(&self, lab: &Lab, peer_ip: &str) {
        let to = format!("{peer_ip}:9");
        let out = lab.exec(
            &self.host.ns,
            crate::testkit(),
            [
                "udp-send",
                "--to",
                to.as_str(),
                "--count",
                "1",
                "--text",
                "nudge",
            ],
        );
        assert!(
            out.status.success(),
            "udp-send to {to} failed: {}",
            crate::stderr(&out)
        );
    }

    /// Polls until the peer called `peer` satisfies `cond`, with traffic: while it is not
    /// direct, a datagram goes to it every second (tunnels are built, and punches asked
    /// for, when there is traffic). Returns the last status.
    pub fn wait_peer(
        &self,
        lab: &Lab,
        peer: &str,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Peer) -> bool,
    ) -> Status {
        let mut last_nudge: Option<Instant> = None;
        self.wait_status(lab, timeout, what, |s| {
            let Some(p) = s.peer(peer) else {
                return false;
            };
            if cond(p) {
                return true;
            }
            if p.path != "direct"
                && last_nudge.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                last_nudge = Some(Instant::now());
                self.nudge(lab, &p.mesh_ip);
            }
            false
        })
    }

    /// Waits until the peer called `peer` has `path` (e.g. `"direct"`), sending it traffic
    /// meanwhile (see [`Node::wait_peer`]); returns it.
    pub fn wait_path(&self, lab: &Lab, peer: &str, path: &str, timeout: Duration) -> Peer {
        let what = format!("path to {peer} {path:?}");
        let s = self.wait_peer(lab, peer, timeout, &what, |p| p.path == path);
        s.peer(peer).cloned().expect("peer is listed")
    }

    /// Polls the status for `duration`, sending the peer a datagram every second (so the
    /// node keeps trying to reach it), and returns every distinct `path` value seen for
    /// `peer` (in order of first appearance), to assert what never happens. Panics if the
    /// daemon exits meanwhile.
    pub fn observe_paths(&self, lab: &Lab, peer: &str, duration: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut seen: Vec<String> = Vec::new();
        let mut last_nudge: Option<Instant> = None;
        while start.elapsed() < duration {
            if let Some(p) = &self.proc {
                if let Some(st) = lab.wait_exit(p, Duration::ZERO) {
                    panic!("node {} exited ({st}) while observed", self.name);
                }
            }
            if let Some(p) = self.status(lab).as_ref().and_then(|s| s.peer(peer)) {
                if last_nudge.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_nudge = Some(Instant::now());
                    self.nudge(lab, &p.mesh_ip);
                }
                if !seen.contains(&p.path) && p.path != "idle" {
                    seen.push(p.path.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        seen
    }
}

/// A `relay serve` process and its state dir.
pub struct Relay {
    pub host: Host,
    /// The name given with `--name` (nodes show it as a peer's `relay`).
    pub name: String,
    pub state_dir: PathBuf,
    /// `IP:PORT` it listens on.
    pub addr: String,
    args: Vec<String>,
    proc: Proc,
}

/// `relay status --json`.
#[derive(Clone, Debug)]
pub struct RelayStatus {
    pub name: String,
    pub public_key: String,
    pub coordinator_connected: bool,
    /// Members the coordinator listed.
    pub members: u64,
    /// Members bound to the relay now.
    pub members_connected: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub dropped: u64,
    /// The whole document.
    pub raw: Value,
}

impl RelayStatus {
    /// Parses `relay status --json` output.
    pub fn parse(text: &str) -> anyhow::Result<RelayStatus> {
        let raw: Value = serde_json::from_str(text.trim())?;
        let num = |k: &str| raw.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(RelayStatus {
            name: str_field(&raw, "name"),
            public_key: str_field(&raw, "public_key"),
            coordinator_connected: raw
                .get("coordinator_connected")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            members: num("members"),
            members_connected: num("members_connected"),
            packets_forwarded: num("packets_forwarded"),
            bytes_forwarded: num("bytes_forwarded"),
            dropped: num("dropped"),
            raw,
        })
    }
}

impl Relay {
    /// Starts `relay serve --listen <host ip>:3479 --coordinator C --auth-key KEY --state-dir
    /// <lab>/relay-<name> --name NAME <extra>` in `host`'s namespace and waits until it
    /// listens and answers `relay status`.
    pub fn start(
        lab: &Lab,
        host: &Host,
        name: &str,
        coordinator: &str,
        key: &str,
        extra: &[&str],
    ) -> Relay {
        let state_dir = lab.subdir(&format!("relay-{name}"));
        let addr = format!("{}:{RELAY_PORT}", host.ip);
        let sd = state_dir.display().to_string();
        let mut args = vec![
            "serve",
            "--listen",
            &addr,
            "--coordinator",
            coordinator,
            "--auth-key",
            key,
            "--state-dir",
            &sd,
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        let proc = lab.spawn(&host.ns, relay_bin(), &args, &format!("relay-{name}"));
        let relay = Relay {
            host: host.clone(),
            name: name.to_string(),
            state_dir,
            addr,
            args,
            proc,
        };
        relay.wait_started(lab);
        relay
    }

    /// Starts `relay serve` again (same state dir, so the same key, and the same flags)
    /// after a stop or crash, and waits until it answers `relay status`.
    pub fn restart(&mut self, lab: &Lab) {
        assert!(
            !lab.is_running(&self.proc),
            "relay {} still runs",
            self.name
        );
        self.proc = lab.spawn(
            &self.host.ns,
            relay_bin(),
            &self.args,
            &format!("relay-{}", self.name),
        );
        self.wait_started(lab);
    }

    fn wait_started(&self, lab: &Lab) {
        wait_for(
            Duration::from_secs(20),
            "the relay to answer status",
            || {
                if let Some(status) = lab.wait_exit(&self.proc, Duration::ZERO) {
                    panic!(
                        "relay {} exited at start ({status}):\n{}",
                        self.name,
                        lab.log(&self.proc)
                    );
                }
                (lab.listening(&self.host.ns, RELAY_PORT) && self.status(lab).is_some())
                    .then_some(())
            },
        );
    }

    /// The `relay serve` process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// `relay status --json`, parsed; `None` if the command fails (relay not running).
    pub fn status(&self, lab: &Lab) -> Option<RelayStatus> {
        let sd = self.state_dir.display().to_string();
        let out = lab.exec(
            &self.host.ns,
            relay_bin(),
            ["status", "--json", "--state-dir", &sd],
        );
        if !out.status.success() {
            return None;
        }
        RelayStatus::parse(&stdout(&out)).ok()
    }

    /// Polls until `cond` holds for the relay's status; panics after `timeout` (printing the
    /// last status), and right away if the relay exits.
    pub fn wait_status(
        &self,
        lab: &Lab,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&RelayStatus) -> bool,
    ) -> RelayStatus {
        let what = format!("relay {}: {what}", self.name);
        let mut last = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(timeout, &what, || {
                if let Some(st) = lab.wait_exit(&self.proc, Duration::ZERO) {
                    panic!(
                        "relay {} exited ({st}) while waiting for: {what}",
                        self.name
                    );
                }
                let s = self.status(lab)?;
                let ok = cond(&s);
                last = Some(s.raw.clone());
                ok.then_some(s)
            })
        }));
        match r {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "last status of relay {}: {}",
                    self.name,
                    last.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                );
                std::panic::resume_unwind(e)
            }
        }
    }
}

/// Polls until `from` gets a ping answer from `to_ip`, then asserts 3 more are answered.
pub fn assert_ping(lab: &Lab, from: &Node, to_name: &str, to_ip: &str) {
    let what = format!("{} to ping {to_name} ({to_ip}) over the mesh", from.name);
    wait_until(MESH_TIMEOUT, &what, || lab.ping(&from.host.ns, to_ip, 1));
    assert!(
        lab.ping(&from.host.ns, to_ip, 3),
        "{what}: pings lost after the first reply"
    );
}

/// `node status --json`.
#[derive(Clone, Debug)]
pub struct Status {
    pub name: String,
    /// Without a prefix length, e.g. `100.64.0.1`.
    pub mesh_ip: String,
    pub public_key: String,
    pub peers: Vec<Peer>,
    /// The relays the coordinator lists: name and round trip in ms (`None`: not answering).
    pub relays: Vec<(String, Option<f64>)>,
    /// The whole document, for fields not modelled here.
    pub raw: Value,
}

/// One entry of `peers` in `node status --json`.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub mesh_ip: String,
    pub public_key: String,
    pub online: bool,
    /// `"direct"`, `"relay"`, `"connecting"` or `"idle"` (no traffic yet: no tunnel).
    pub path: String,
    pub endpoint: Option<String>,
    /// The name of the relay carrying the traffic when `path` is `"relay"`.
    pub relay: Option<String>,
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Status {
    /// Parses `node status --json` output.
    pub fn parse(text: &str) -> anyhow::Result<Status> {
        let raw: Value = serde_json::from_str(text.trim())?;
        let peers = match raw.get("peers") {
            Some(Value::Array(items)) => items.iter().map(Peer::from_json).collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => anyhow::bail!("peers is not an array: {other}"),
        };
        let relays = match raw.get("relays") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|r| {
                    (
                        str_field(r, "name"),
                        r.get("latency_ms").and_then(Value::as_f64),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Status {
            name: str_field(&raw, "name"),
            mesh_ip: strip_prefix_len(&str_field(&raw, "mesh_ip")),
            public_key: str_field(&raw, "public_key"),
            peers,
            relays,
            raw,
        })
    }

    /// The peer called `name`.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }
}

impl Peer {
    fn from_json(v: &Value) -> Peer {
        Peer {
            name: str_field(v, "name"),
            mesh_ip: strip_prefix_len(&str_field(v, "mesh_ip")),
            public_key: str_field(v, "public_key"),
            online: v.get("online").and_then(Value::as_bool).unwrap_or(false),
            path: str_field(v, "path"),
            endpoint: v
                .get("endpoint")
                .and_then(Value::as_str)
                .map(str::to_string),
            relay: v.get("relay").and_then(Value::as_str).map(str::to_string),
            last_handshake_secs: v.get("last_handshake_secs").and_then(Value::as_u64),
            rx_bytes: v.get("rx_bytes").and_then(Value::as_u64).unwrap_or(0),
            tx_bytes: v.get("tx_bytes").and_then(Value::as_u64).unwrap_or(0),
        }
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn strip_prefix_len(ip: &str) -> String {
    ip.split('/').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_status() {
        let s = Status::parse(
            r#"{"name":"a","mesh_ip":"100.64.0.1/10","public_key":"k","peers":[
                {"name":"b","mesh_ip":"100.64.0.2","public_key":"kb","online":true,"path":"direct",
                 "endpoint":"203.0.113.12:41641","last_handshake_secs":3,"rx_bytes":10,"tx_bytes":20},
                {"name":"c","mesh_ip":"100.64.0.3","public_key":"kc","online":false,"path":"connecting",
                 "endpoint":null,"last_handshake_secs":null,"rx_bytes":0,"tx_bytes":0}]}"#,
        )
        .unwrap();
        assert_eq!(s.mesh_ip, "100.64.0.1");
        assert_eq!(s.peers.len(), 2);
        let b = s.peer("b").unwrap();
        assert!(b.online);
        assert_eq!(b.path, "direct");
        assert_eq!(b.endpoint.as_deref(), Some("203.0.113.12:41641"));
        assert_eq!(s.peer("c").unwrap().last_handshake_secs, None);
        assert!(Status::parse("not json").is_err());
    }
}
