//! A network-namespace lab for lanmesh's end-to-end tests.
//!
//! A [`Lab`] is a small private network built out of Linux network namespaces:
//!
//! ```text
//!                 switch namespace (bridge br0) = "the internet", 203.0.113.0/24
//!        ┌──────────────┬──────────────┬───────────────┐
//!   coordinator       node a         node b        NAT router (WAN 203.0.113.x)
//!   203.0.113.10   203.0.113.11   203.0.113.12        │ LAN bridge 10.N.0.1/24
//!                                                  host 10.N.0.x
//! ```
//!
//! Every namespace is created by the lab and named `lm-<tag>-<pid>-<counter>-<role>`; all
//! veth pairs are created inside those namespaces, so nothing is ever added to (or connected
//! to) the host's own network namespace. Dropping the lab — also while a test panics — kills
//! every process it started and deletes every namespace. On a panic it prints the tail of
//! every process log, so CI output shows why a test failed.
//!
//! The [`mesh`] module has helpers that drive lanmesh's `coordinator` and `node` binaries
//! inside a lab.

pub mod mesh;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long [`Lab::exec`] lets a command run before it is killed and the test fails.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Lab::kill`] waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// How many log lines per process [`Lab`] prints when a test panics.
const LOG_TAIL_LINES: usize = 60;

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);
static PROC_COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// Privileges, binaries, polling
// ---------------------------------------------------------------------------------------

/// Whether the test may build namespaces. Not root: with `CI` set this panics ("e2e tests
/// need root: run with sudo"); otherwise it prints a skip message and returns false, and the
/// test should return early.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("e2e tests need root: run with sudo (or ./test.sh)");
    }
    eprintln!("skipping: e2e tests need root (network namespaces); run ./test.sh or sudo");
    false
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

fn cargo() -> OsString {
    std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(OsString::from))
        .unwrap_or_else(|| "cargo".into())
}

/// Runs `cargo build --release <args>` in the workspace root, panicking on failure.
fn cargo_build_release(args: &[&str]) {
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["build", "--release"])
        .args(args)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(
        status.success(),
        "cargo build --release {} failed: {status}",
        args.join(" ")
    );
}

/// The directory holding the `coordinator` and `node` binaries: `$LANMESH_BIN_DIR` if set,
/// else `<workspace>/target/release` after one `cargo build --release --bins -p
/// lanmesh-coordinator -p lanmesh-node` per test process.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("LANMESH_BIN_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        cargo_build_release(&["--bins", "-p", "lanmesh-coordinator", "-p", "lanmesh-node"]);
        target_dir().join("release")
    })
    .clone()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| workspace_root().join(d))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The path of one binary in [`bin_dir`]; panics if it is not there.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {} not found (set LANMESH_BIN_DIR or build it)",
        path.display()
    );
    path
}

/// The `lanmesh-testkit` binary (TCP transfer tool). Integration tests of this crate should
/// prefer [`testkit_bin!`], which cargo resolves at compile time. This function tries
/// `$LANMESH_TESTKIT`, then the binary beside the running test executable, then
/// [`bin_dir`], and finally builds it.
pub fn testkit() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("LANMESH_TESTKIT").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        // Test executables live in target/<profile>/deps/, binaries in target/<profile>/.
        if let Ok(exe) = std::env::current_exe() {
            if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
                let p = profile_dir.join("lanmesh-testkit");
                if p.is_file() {
                    return p;
                }
            }
        }
        let p = bin_dir().join("lanmesh-testkit");
        if p.is_file() {
            return p;
        }
        cargo_build_release(&["-p", "lanmesh-e2e", "--bin", "lanmesh-testkit"]);
        target_dir().join("release").join("lanmesh-testkit")
    })
    .clone()
}

/// The `lanmesh-testkit` binary, as cargo built it for this package's integration tests.
#[macro_export]
macro_rules! testkit_bin {
    () => {
        ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_lanmesh-testkit"))
    };
}

/// Polls `cond` every 100 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Polls `f` every 100 ms until it returns `Some`; panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:.1}s waiting for: {what}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command (no namespace) to completion; kills it and panics after `timeout`.
pub fn run<I, S>(program: impl AsRef<OsStr>, args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, timeout)
}

/// Runs `cmd` with piped output to completion; kills it and panics after `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out.join().unwrap_or_default();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "command timed out after {:.1}s: {desc}\nstdout:\n{}\nstderr:\n{}",
                    timeout.as_secs_f64(),
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            Err(e) => panic!("waiting for {desc}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs a command that must succeed; panics with its output otherwise.
fn must<I, S>(program: &str, args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    let desc = format!("{cmd:?}");
    let out = run_command(cmd, EXEC_TIMEOUT);
    assert!(
        out.status.success(),
        "{desc} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `stdout` of an [`Output`] as a string.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `stderr` of an [`Output`] as a string.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------

/// A host namespace attached to the lab's switch or to a NAT router's LAN.
#[derive(Clone, Debug)]
pub struct Host {
    /// The role given to [`Lab::add_host`], e.g. `"coord"` or `"a"`.
    pub role: String,
    /// The namespace name (pass it to [`Lab::spawn`], [`Lab::exec`], [`Lab::ping`]).
    pub ns: String,
    /// The address of its `eth0`.
    pub ip: Ipv4Addr,
    /// The router it sits behind, if any.
    pub router: Option<String>,
}

/// What kind of NAT a [`Router`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// nftables `masquerade`: one mapping per inside socket that keeps the source port when
    /// it can; only replies from where the inside host sent to get in (port-restricted cone).
    PortRestricted,
    /// nftables `masquerade random`: a new random port for every destination (symmetric).
    Symmetric,
}

/// A NAT router: WAN `eth0` on the lab switch, LAN bridge `br0` with `10.N.0.1/24`.
#[derive(Clone, Debug)]
pub struct Router {
    pub role: String,
    pub ns: String,
    /// Its address on the switch ("the internet").
    pub wan_ip: Ipv4Addr,
    /// N in `10.N.0.0/24`.
    pub lan_index: u8,
    /// `10.N.0.1`, the hosts' default gateway.
    pub lan_ip: Ipv4Addr,
    pub nat: Nat,
}

impl Router {
    /// The address `10.N.0.<last>` on this router's LAN.
    pub fn lan_addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.lan_index, 0, last)
    }
}

/// A process started by [`Lab::spawn`]. Cheap to clone; the lab owns the process itself.
#[derive(Clone, Debug)]
pub struct Proc {
    id: usize,
    pid: u32,
    name: String,
    ns: String,
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The log name given to [`Lab::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn ns(&self) -> &str {
        &self.ns
    }
    /// The file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

struct ProcEntry {
    id: usize,
    child: Child,
    name: String,
    log: PathBuf,
    command: String,
    exited: Option<ExitStatus>,
}

impl ProcEntry {
    /// Reaps the child if it has exited. The PID stays reserved until then, so signalling a
    /// running entry by PID can never hit an unrelated process.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    fn signal(&mut self, sig: libc::c_int) {
        if self.poll().is_none() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }
}

#[derive(Default)]
struct State {
    namespaces: Vec<String>,
    hosts: Vec<Host>,
    routers: Vec<Router>,
    procs: Vec<ProcEntry>,
    next_port: u32,
    next_lan: u8,
    log_names: HashSet<String>,
}

/// A private network of namespaces plus the processes running in it. See the crate docs.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    switch: String,
    state: Mutex<State>,
}

impl Lab {
    /// Creates the lab: a temp dir and the switch namespace with its bridge. `tag` (shortened
    /// to 8 letters or digits) goes into every namespace name, to tell labs apart.
    pub fn new(tag: &str) -> Lab {
        cleanup_stale_labs();
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("lm-{}-{}-{n}", short_name(tag, 8), std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let lab = Lab {
            switch: format!("{prefix}-sw"),
            prefix,
            dir,
            state: Mutex::new(State {
                next_lan: 1,
                ..State::default()
            }),
        };
        // From here on Drop undoes whatever was created, even if a step below panics.
        let sw = lab.add_namespace("sw");
        must("ip", ["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        must("ip", ["-n", &sw, "link", "set", "br0", "up"]);
        lab
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lab's temp dir: put data and state dirs here. Removed when the lab is dropped
    /// after a passing test; kept after a failure (or with `LANMESH_KEEP_LAB=1`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh subdirectory of [`Lab::dir`].
    pub fn subdir(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        d
    }

    /// The prefix of all namespace names of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The switch ("internet") namespace.
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// Every namespace this lab created.
    pub fn namespaces(&self) -> Vec<String> {
        self.state().namespaces.clone()
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> Vec<Host> {
        self.state().hosts.clone()
    }

    /// The routers added so far.
    pub fn routers(&self) -> Vec<Router> {
        self.state().routers.clone()
    }

    /// Creates an empty namespace `<prefix>-<role>` with `lo` up and returns its name.
    pub fn add_namespace(&self, role: &str) -> String {
        let role = short_name(role, 10);
        let ns = format!("{}-{role}", self.prefix);
        {
            let mut st = self.state();
            assert!(
                !st.namespaces.contains(&ns),
                "role {role:?} used twice in one lab"
            );
            // Recorded before it exists, so that Drop deletes it even if `ip` half-fails.
            st.namespaces.push(ns.clone());
        }
        must("ip", ["netns", "add", &ns]);
        must("ip", ["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Plugs `eth0` of namespace `ns` into the switch and gives it `ip/24`.
    fn attach_to_switch(&self, ns: &str, ip: Ipv4Addr) {
        let port = {
            let mut st = self.state();
            st.next_port += 1;
            format!("v{}", st.next_port)
        };
        let sw = self.switch.as_str();
        must(
            "ip",
            [
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        must(
            "ip",
            ["-n", sw, "link", "set", &port, "master", "br0", "up"],
        );
        must(
            "ip",
            ["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        must("ip", ["-n", ns, "link", "set", "eth0", "up"]);
    }

    /// Adds a host on the switch ("the internet") with `eth0` = `ip`/24, normally an address
    /// of 203.0.113.0/24 (coordinator .10, nodes .11, .12, ...).
    pub fn add_host(&self, role: &str, ip: &str) -> Host {
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("bad IPv4 {ip:?}"));
        let ns = self.add_namespace(role);
        self.attach_to_switch(&ns, ip);
        let host = Host {
            role: role.to_string(),
            ns,
            ip,
            router: None,
        };
        self.state().hosts.push(host.clone());
        host
    }

    /// Adds a NAT router: WAN `eth0` = `wan_ip`/24 on the switch, LAN bridge `br0` =
    /// `10.N.0.1/24` (N counts up from 1 per lab), forwarding on, and nftables NAT of kind
    /// `nat` for traffic leaving through `eth0`. Unsolicited traffic from the WAN is dropped.
    pub fn add_router(&self, role: &str, wan_ip: &str, nat: Nat) -> Router {
        let wan_ip: Ipv4Addr = wan_ip
            .parse()
            .unwrap_or_else(|_| panic!("bad IPv4 {wan_ip:?}"));
        let ns = self.add_namespace(role);
        self.attach_to_switch(&ns, wan_ip);
        let lan_index = {
            let mut st = self.state();
            let n = st.next_lan;
            st.next_lan = st.next_lan.checked_add(1).expect("too many routers");
            n
        };
        let lan_ip = Ipv4Addr::new(10, lan_index, 0, 1);
        must("ip", ["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        must(
            "ip",
            [
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{lan_ip}/24"),
                "dev",
                "br0",
            ],
        );
        must("ip", ["-n", &ns, "link", "set", "br0", "up"]);
        must(
            "ip",
            [
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ],
        );
        let masquerade = match nat {
            Nat::PortRestricted => "masquerade",
            Nat::Symmetric => "masquerade random",
        };
        let rules = format!(
            "table ip lanmesh_lab {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"eth0\" {masquerade}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"br0\" accept
  }}
}}
"
        );
        let file = self.dir.join(format!("nft-{role}.conf"));
        fs::write(&file, rules).expect("write nft rules");
        must(
            "ip",
            [
                OsStr::new("netns"),
                OsStr::new("exec"),
                OsStr::new(&ns),
                OsStr::new("nft"),
                OsStr::new("-f"),
                file.as_os_str(),
            ],
        );
        let router = Router {
            role: role.to_string(),
            ns,
            wan_ip,
            lan_index,
            lan_ip,
            nat,
        };
        self.state().routers.push(router.clone());
        router
    }

    /// Adds a host on `router`'s LAN with address `10.N.0.<last>`/24 and a default route via
    /// the router.
    pub fn add_host_behind(&self, router: &Router, role: &str, last: u8) -> Host {
        let ip = router.lan_addr(last);
        let ns = self.add_namespace(role);
        let port = {
            let mut st = self.state();
            st.next_port += 1;
            format!("l{}", st.next_port)
        };
        let r = router.ns.as_str();
        must(
            "ip",
            [
                "-n", r, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        must("ip", ["-n", r, "link", "set", &port, "master", "br0", "up"]);
        must(
            "ip",
            ["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        must("ip", ["-n", &ns, "link", "set", "eth0", "up"]);
        must(
            "ip",
            [
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &router.lan_ip.to_string(),
            ],
        );
        let host = Host {
            role: role.to_string(),
            ns,
            ip,
            router: Some(router.ns.clone()),
        };
        self.state().hosts.push(host.clone());
        host
    }

    /// Starts `ip netns exec <ns> <program> <args>` with stdout and stderr going to
    /// `<lab dir>/logs/<log_name>.log` (a numbered name if that one is taken). The lab
    /// tracks the process and ends it when dropped.
    pub fn spawn<I, S>(&self, ns: &str, program: impl AsRef<OsStr>, args: I, log_name: &str) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut st = self.state();
        let base: String = log_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let mut name = base.clone();
        let mut k = 1;
        while st.log_names.contains(&name) {
            k += 1;
            name = format!("{base}.{k}");
        }
        st.log_names.insert(name.clone());
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let file2 = file.try_clone().expect("dup log file");

        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program.as_ref())
            .args(args);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        // Plain log files: no colour escapes.
        cmd.env("NO_COLOR", "1");
        let command = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {command}: {e}"));
        let id = PROC_COUNTER.fetch_add(1, Ordering::SeqCst);
        let proc = Proc {
            id,
            pid: child.id(),
            name: name.clone(),
            ns: ns.to_string(),
            log: log.clone(),
        };
        st.procs.push(ProcEntry {
            id,
            child,
            name,
            log,
            command,
            exited: None,
        });
        proc
    }

    fn with_proc<T>(&self, p: &Proc, f: impl FnOnce(&mut ProcEntry) -> T) -> T {
        let mut st = self.state();
        let entry = st
            .procs
            .iter_mut()
            .find(|e| e.id == p.id)
            .unwrap_or_else(|| panic!("process {} does not belong to this lab", p.name));
        f(entry)
    }

    /// Whether the process is still running.
    pub fn is_running(&self, p: &Proc) -> bool {
        self.with_proc(p, |e| e.poll().is_none())
    }

    /// Sends a signal (e.g. `libc::SIGKILL`) to the process if it still runs.
    pub fn signal(&self, p: &Proc, sig: libc::c_int) {
        self.with_proc(p, |e| e.signal(sig));
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&self, p: &Proc, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.with_proc(p, |e| e.poll()) {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL. Returns the exit status.
    pub fn kill(&self, p: &Proc) -> ExitStatus {
        self.signal(p, libc::SIGTERM);
        if let Some(status) = self.wait_exit(p, TERM_GRACE) {
            return status;
        }
        self.kill_now(p)
    }

    /// SIGKILL right away (a crash). Returns the exit status.
    pub fn kill_now(&self, p: &Proc) -> ExitStatus {
        self.with_proc(p, |e| {
            e.signal(libc::SIGKILL);
            match e.exited {
                Some(status) => status,
                None => {
                    let status = e.child.wait().expect("wait for killed child");
                    e.exited = Some(status);
                    status
                }
            }
        })
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self, p: &Proc) -> String {
        read_lossy(&p.log)
    }

    /// Runs `ip netns exec <ns> <program> <args>` to completion (at most [`EXEC_TIMEOUT`]).
    pub fn exec<I, S>(&self, ns: &str, program: impl AsRef<OsStr>, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_timeout(ns, program, args, EXEC_TIMEOUT)
    }

    /// [`Lab::exec`] with a chosen timeout; panics if the command runs longer.
    pub fn exec_timeout<I, S>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program.as_ref())
            .args(args);
        run_command(cmd, timeout)
    }

    /// Pings `ip` from `ns` `count` times (`ping -c N -W 1 -i 0.2`); true when every probe
    /// was answered.
    pub fn ping(&self, ns: &str, ip: impl Display, count: u32) -> bool {
        self.ping_received(ns, ip, count) == count
    }

    /// How many of `count` pings from `ns` to `ip` were answered.
    pub fn ping_received(&self, ns: &str, ip: impl Display, count: u32) -> u32 {
        let count = count.max(1);
        let n = count.to_string();
        let ip = ip.to_string();
        let timeout = Duration::from_secs(5 + u64::from(count));
        let out = self.exec_timeout(
            ns,
            "ping",
            ["-n", "-q", "-c", &n, "-W", "1", "-i", "0.2", &ip],
            timeout,
        );
        // "3 packets transmitted, 3 received, 0% packet loss, time 404ms"
        stdout(&out)
            .lines()
            .find_map(|l| {
                let rest = l.split("transmitted, ").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// Whether something in `ns` listens on `port` (TCP or UDP), according to `ss`.
    pub fn listening(&self, ns: &str, port: u16) -> bool {
        let filter = format!("sport = :{port}");
        let out = self.exec(ns, "ss", ["-H", "-l", "-n", "-t", "-u", &filter]);
        out.status.success() && !stdout(&out).trim().is_empty()
    }

    /// Whether network interface `ifname` exists in `ns`.
    pub fn has_interface(&self, ns: &str, ifname: &str) -> bool {
        Command::new("ip")
            .args(["-n", ns, "link", "show", "dev", ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Prints the last lines of every process log to stderr.
    pub fn dump_logs(&self) {
        let st = self.state();
        dump_logs(&st.procs);
    }
}

fn dump_logs(procs: &[ProcEntry]) {
    for e in procs {
        let text = read_lossy(&e.log);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        let status = match e.exited {
            Some(s) => s.to_string(),
            None => "running".to_string(),
        };
        eprintln!(
            "----- {} (pid {}, {status}): last {} of {} lines of {}\n      {}",
            e.name,
            e.child.id(),
            lines.len() - from,
            lines.len(),
            e.log.display(),
            e.command
        );
        for l in &lines[from..] {
            eprintln!("  | {l}");
        }
    }
    if !procs.is_empty() {
        eprintln!("----- end of logs");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut st = self.state();

        // 1. End every child: SIGTERM, a grace period, then SIGKILL.
        for e in st.procs.iter_mut() {
            e.signal(libc::SIGTERM);
        }
        let start = Instant::now();
        while st.procs.iter_mut().any(|e| e.poll().is_none()) && start.elapsed() < TERM_GRACE {
            std::thread::sleep(Duration::from_millis(50));
        }
        for e in st.procs.iter_mut() {
            if e.poll().is_none() {
                e.signal(libc::SIGKILL);
                if let Ok(status) = e.child.wait() {
                    e.exited = Some(status);
                }
            }
        }

        // 2. Anything else still running inside our namespaces (started by a child).
        for ns in &st.namespaces {
            kill_pids_in_namespace(ns);
        }

        if panicking {
            eprintln!("===== lab {} failed; process logs:", self.prefix);
            dump_logs(&st.procs);
        }

        // 3. Delete the namespaces (this also removes their veths and bridges).
        for ns in st.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }

        let keep = std::env::var_os("LANMESH_KEEP_LAB").is_some_and(|v| !v.is_empty() && v != "0");
        if panicking || keep {
            eprintln!("lab files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// SIGKILLs the processes `ip netns pids` reports for a namespace this harness created.
fn kill_pids_in_namespace(ns: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
        .filter(|&p| p > 1)
    {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The lowercased letters and digits of `s`, at most `max` of them (never empty).
fn short_name(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(max)
        .collect();
    if out.is_empty() {
        "x".to_string()
    } else {
        out
    }
}

/// Once per process: deletes namespaces left behind by labs of test processes that no longer
/// exist (killed before their Drop ran), and the processes still inside them.
fn cleanup_stale_labs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(pid) = stale_lab_owner(name) {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    eprintln!("removing stale lab namespace {name}");
                    kill_pids_in_namespace(name);
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
    });
}

/// For a namespace named `lm-<tag>-<pid>-<counter>-<role>`, the PID of the process that
/// made it.
fn stale_lab_owner(name: &str) -> Option<u32> {
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() != 5 || parts[0] != "lm" {
        return None;
    }
    parts[3].parse::<u64>().ok()?;
    parts[2].parse().ok()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_are_short_and_parseable() {
        assert_eq!(short_name("three_nodes_mesh", 8), "threenod");
        assert_eq!(short_name("--", 8), "x");
        assert_eq!(stale_lab_owner("lm-smoke-1234-0-sw"), Some(1234));
        assert_eq!(stale_lab_owner("lmdemo-1234-sw"), None);
        assert_eq!(stale_lab_owner("lm-a-b-0-sw"), None);
    }

    #[test]
    fn wait_for_returns_value_and_times_out() {
        let mut n = 0;
        assert_eq!(
            wait_for(Duration::from_secs(5), "n reaches 3", || {
                n += 1;
                (n >= 3).then_some(n)
            }),
            3
        );
        let r =
            std::panic::catch_unwind(|| wait_until(Duration::from_millis(200), "never", || false));
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("never"), "{msg}");
    }

    #[test]
    fn run_times_out() {
        let r = std::panic::catch_unwind(|| run("sleep", ["5"], Duration::from_millis(300)));
        assert!(r.is_err());
        let out = run(
            "sh",
            ["-c", "echo hi; echo err >&2; exit 3"],
            Duration::from_secs(5),
        );
        assert_eq!(stdout(&out), "hi\n");
        assert_eq!(stderr(&out), "err\n");
        assert_eq!(out.status.code(), Some(3));
    }
}
