//! The command line of `coordinator`, `node` and `relay` as a user meets it: `--help` of
//! every (sub)command, and every mistake a user can make answered with one clear
//! `error: ...` line that names the problem and what to do — never a panic or a backtrace.
//!
//! Most tests need no network: they use temp dirs under the system temp dir. Whatever could
//! open a socket or create an interface if the binary misbehaved (`node up`, `serve`) runs
//! inside a lab namespace; the tests that need a running coordinator or node build a small
//! lab (everything on the switch, no NAT):
//!
//! ```text
//!   coordinator 203.0.113.10:3478 (STUN also on :3480)
//!   node        203.0.113.11     relay 203.0.113.30:3479
//! ```
//!
//! The lab tests need root; they skip without it (fail under `CI`).

use lanmesh_e2e::mesh::{coordinator_bin, node_bin, relay_bin, Coordinator, Node, MESH_TIMEOUT};
use lanmesh_e2e::udp;
use lanmesh_e2e::{require_root, run_command, stderr, stdout, wait_for, wait_until, Lab, Proc};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const COORD_IP: &str = "203.0.113.10";
const NODE_IP: &str = "203.0.113.11";
const RELAY_IP: &str = "203.0.113.30";
/// How long a CLI command may take (the error cases answer at once).
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------

/// Runs `program args` (with `prefix` before it, e.g. `ip netns exec NS`), with
/// `RUST_BACKTRACE=1` so that a panic would show, and without `RUST_LOG`, so that only what a
/// user sees by default reaches stderr.
fn run_with(prefix: &[&str], program: impl AsRef<OsStr>, args: &[&str]) -> Output {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program.as_ref());
            c
        }
        None => Command::new(program.as_ref()),
    };
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("LANMESH_AUTH_KEY")
        .env_remove("LANMESH_RELAY_KEY");
    run_command(cmd, CLI_TIMEOUT)
}

/// Runs a binary in the test's own namespace (only for commands that open no sockets).
fn host(program: impl AsRef<OsStr>, args: &[&str]) -> Output {
    run_with(&[], program, args)
}

/// Runs a binary in namespace `ns`.
fn in_ns(ns: &str, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
    run_with(&["ip", "netns", "exec", ns], program, args)
}

/// Runs a binary in namespace `ns` as user `nobody` (no capabilities).
fn as_nobody(ns: &str, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
    run_with(
        &[
            "ip",
            "netns",
            "exec",
            ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        program,
        args,
    )
}

/// Panics unless the output has no sign of a panic or a backtrace.
fn assert_no_panic(what: &str, out: &Output) {
    let err = stderr(out);
    let all = format!("{}{err}", stdout(out));
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "backtrace"] {
        assert!(
            !all.contains(bad),
            "{what}: the output shows a panic/backtrace ({bad:?}):\n{all}"
        );
    }
    assert_ne!(
        out.status.code(),
        Some(101),
        "{what}: exit code 101 is a panic:\n{err}"
    );
    assert!(
        out.status.code().is_some(),
        "{what}: killed by a signal ({}):\n{err}",
        out.status
    );
}

/// Whether `text` contains `needle`, ignoring ASCII case.
fn contains_ci(text: &str, needle: &str) -> bool {
    text.to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// A user's mistake caught by the program itself: non-zero exit, no panic, and stderr is
/// exactly one line `error: ...` that contains every one of `needles` (ignoring case).
/// Returns that line.
fn assert_user_error(what: &str, out: &Output, needles: &[&str]) -> String {
    assert_no_panic(what, out);
    match user_error(what, out, needles) {
        Ok(line) => {
            eprintln!("{what}: {} — {line}", out.status);
            line
        }
        Err(problem) => panic!("{problem}"),
    }
}

/// What [`assert_user_error`] checks (but the panic check), as a result: the error line, or
/// what is wrong.
fn user_error(what: &str, out: &Output, needles: &[&str]) -> Result<String, String> {
    let err = stderr(out);
    if out.status.success() {
        return Err(format!(
            "{what}: succeeded, but it should fail with an error.\nstdout:\n{}\nstderr:\n{err}",
            stdout(out)
        ));
    }
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        return Err(format!(
            "{what}: stderr should be exactly one `error: ...` line, it has {}:\n{err}",
            lines.len()
        ));
    }
    let line = lines[0];
    if !line.starts_with("error: ") {
        return Err(format!(
            "{what}: stderr does not start with `error: `:\n{err}"
        ));
    }
    for n in needles {
        if !contains_ci(line, n) {
            return Err(format!("{what}: the error does not mention {n:?}:\n{line}"));
        }
    }
    Ok(line.to_string())
}

/// A command line the argument parser rejects: non-zero exit, no panic, the first stderr
/// line is `error: ...` and mentions every one of `needles`; the parser's own hints (usage,
/// "For more information, try '--help'") may follow.
fn assert_usage_error(what: &str, out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "{what}: succeeded, but it should fail.\nstdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    assert_no_panic(what, out);
    let first = err
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        first.starts_with("error: "),
        "{what}: stderr does not start with `error: `:\n{err}"
    );
    for n in needles {
        assert!(
            contains_ci(&err, n),
            "{what}: the error does not mention {n:?}:\n{err}"
        );
    }
    eprintln!("{what}: {} — {first}", out.status);
    first.to_string()
}

/// A fresh, empty temp dir under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("lm-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// `<dir>/<name>` as a string (not created).
    fn join(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    /// Writes `<dir>/<name>` and returns its path.
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The join key in the output of `coordinator keys create` (its last line).
fn key_from(out: &Output) -> String {
    assert!(
        out.status.success(),
        "keys create failed ({}): {}",
        out.status,
        stderr(out)
    );
    let text = stdout(out);
    let key = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string();
    assert!(
        key.starts_with("lmk1-"),
        "keys create printed no key: {text}"
    );
    key
}

fn json(what: &str, out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        stderr(out)
    );
    serde_json::from_str(&stdout(out))
        .unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {}", stdout(out)))
}

// ---------------------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------------------

/// `(binary, subcommands, what the help must mention)`.
fn help_table() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (
            "node",
            vec![],
            vec![
                "up",
                "down",
                "ping",
                "netcheck",
                "status",
                "--verbose",
                "--version",
            ],
        ),
        (
            "node",
            vec!["up"],
            vec![
                "--coordinator",
                "--auth-key",
                "--name",
                "--state-dir",
                "--interface",
                "--port",
                "--stun",
                "--keepalive",
                "--config",
                "default",
            ],
        ),
        ("node", vec!["down"], vec!["--state-dir", "default"]),
        (
            "node",
            vec!["ping"],
            vec![
                "<PEER>",
                "--count",
                "-c",
                "--until-direct",
                "--state-dir",
                "default",
            ],
        ),
        ("node", vec!["netcheck"], vec!["--json", "--state-dir"]),
        ("node", vec!["status"], vec!["--json", "--state-dir"]),
        (
            "coordinator",
            vec![],
            vec!["serve", "keys", "nodes", "--verbose", "--version"],
        ),
        (
            "coordinator",
            vec!["serve"],
            vec![
                "--listen",
                "--data-dir",
                "--network",
                "--open",
                "--offline-after",
                "--stun-port",
                "--config",
                "default",
            ],
        ),
        (
            "coordinator",
            vec!["keys"],
            vec!["create", "list", "revoke"],
        ),
        (
            "coordinator",
            vec!["keys", "create"],
            vec![
                "--reusable",
                "--relay",
                "--expires",
                "never",
                "--data-dir",
                "default",
            ],
        ),
        (
            "coordinator",
            vec!["keys", "list"],
            vec!["--json", "--data-dir"],
        ),
        (
            "coordinator",
            vec!["keys", "revoke"],
            vec!["KEY", "ID", "--data-dir"],
        ),
        ("coordinator", vec!["nodes"], vec!["list", "remove"]),
        (
            "coordinator",
            vec!["nodes", "list"],
            vec!["--json", "--offline-after", "--data-dir"],
        ),
        (
            "coordinator",
            vec!["nodes", "remove"],
            vec!["<NAME>", "--data-dir"],
        ),
        (
            "relay",
            vec![],
            vec!["serve", "status", "--verbose", "--version"],
        ),
        (
            "relay",
            vec!["serve"],
            vec![
                "--listen",
                "--coordinator",
                "--auth-key",
                "--name",
                "--state-dir",
                "--rate-limit-mbps",
                "--config",
                "default",
            ],
        ),
        ("relay", vec!["status"], vec!["--json", "--state-dir"]),
    ]
}

fn bin_of(name: &str) -> PathBuf {
    match name {
        "node" => node_bin(),
        "coordinator" => coordinator_bin(),
        "relay" => relay_bin(),
        other => panic!("unknown binary {other}"),
    }
}

/// The help text of `<bin> <sub...> --help`; panics unless it exits 0 with nothing on stderr.
fn help(bin: &str, sub: &[&str]) -> String {
    let mut args = sub.to_vec();
    args.push("--help");
    let what = format!("{bin} {}", args.join(" "));
    let out = host(bin_of(bin), &args);
    assert!(
        out.status.success(),
        "{what} exited with {}: {}",
        out.status,
        stderr(&out)
    );
    assert!(
        stderr(&out).trim().is_empty(),
        "{what} wrote to stderr: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Every (sub)command's `--help` exits 0 and mentions each of its flags.
#[test]
fn help_of_every_command() {
    for (bin, sub, wanted) in help_table() {
        let text = help(bin, &sub);
        let what = format!("{bin} {} --help", sub.join(" "));
        for w in wanted {
            assert!(text.contains(w), "{what} does not mention {w:?}:\n{text}");
        }
        // `help` subcommands work as well as `--help`.
        if sub.is_empty() {
            let out = host(bin_of(bin), &["help"]);
            assert!(out.status.success(), "{bin} help failed: {}", stderr(&out));
        }
    }
}

/// Help texts read cleanly: no option shows its default twice, and every positional
/// argument has a description.
#[test]
fn help_texts_are_clean() {
    let mut problems = Vec::new();
    for (bin, sub, _) in help_table() {
        let text = help(bin, &sub);
        let what = format!("{bin} {} --help", sub.join(" "));
        for line in text.lines() {
            if line.matches("[default:").count() > 1 {
                problems.push(format!("{what}: a default shown twice: {:?}", line.trim()));
            }
        }
        // clap lists positional arguments under "Arguments:" as `  <NAME>  description`.
        let mut in_args = false;
        for line in text.lines() {
            if line.starts_with("Arguments:") {
                in_args = true;
                continue;
            }
            if in_args {
                if line.trim().is_empty() || !line.starts_with(' ') {
                    in_args = false;
                    continue;
                }
                let t = line.trim();
                if t.starts_with('<') && t.ends_with('>') && !t.contains(' ') {
                    problems.push(format!("{what}: argument {t} has no description"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "help text problems:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// No daemon, bad arguments, admin commands (no network)
// ---------------------------------------------------------------------------------------

/// ping/netcheck/status/down without a running daemon say so in one line and name the
/// state dir; `relay status` likewise.
#[test]
fn commands_without_a_daemon() {
    let dir = TempDir::new("nodaemon");
    let sd = dir.path().display().to_string();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["ping", "b"],
        vec!["ping", "b", "--until-direct"],
        vec!["netcheck"],
        vec!["netcheck", "--json"],
        vec!["down"],
    ] {
        let mut all = args.clone();
        all.extend(["--state-dir", &sd]);
        let out = host(node_bin(), &all);
        assert_user_error(
            &format!("node {} without a daemon", args.join(" ")),
            &out,
            &["no node daemon", &sd, "--state-dir"],
        );
    }
    let out = host(relay_bin(), &["status", "--state-dir", &sd]);
    assert_user_error(
        "relay status without a daemon",
        &out,
        &["no relay daemon", &sd],
    );
}

/// Bad values on the command line are refused before anything starts.
#[test]
fn bad_arguments() {
    if !require_root() {
        return;
    }
    // Whatever would start if a value were wrongly accepted starts in this namespace.
    let lab = Lab::new("cliargs");
    let ns = lab.add_namespace("args");
    let dir = TempDir::new("badargs");
    let dd = dir.join("data");
    let out = in_ns(
        &ns,
        coordinator_bin(),
        &["serve", "--listen", "nonsense", "--data-dir", &dd],
    );
    assert_usage_error(
        "coordinator serve --listen nonsense",
        &out,
        &["--listen", "nonsense"],
    );
    let out = in_ns(
        &ns,
        coordinator_bin(),
        &["serve", "--network", "banana", "--data-dir", &dd],
    );
    assert_usage_error(
        "coordinator serve --network banana",
        &out,
        &["--network", "banana"],
    );
    let out = in_ns(
        &ns,
        relay_bin(),
        &[
            "serve",
            "--listen",
            "nonsense",
            "--coordinator",
            "127.0.0.1:1",
        ],
    );
    assert_usage_error(
        "relay serve --listen nonsense",
        &out,
        &["--listen", "nonsense"],
    );
    let sd = dir.join("state");
    let out = in_ns(&ns, node_bin(), &["up", "--port", "70000"]);
    assert_usage_error("node up --port 70000", &out, &["--port", "70000"]);
    let out = in_ns(
        &ns,
        node_bin(),
        &[
            "up",
            "--coordinator",
            "127.0.0.1:1",
            "--keepalive",
            "0",
            "--state-dir",
            &sd,
        ],
    );
    assert_user_error("node up --keepalive 0", &out, &["--keepalive", "120"]);
    let out = in_ns(
        &ns,
        node_bin(),
        &[
            "up",
            "--coordinator",
            "127.0.0.1:1",
            "--interface",
            "a/b",
            "--state-dir",
            &sd,
        ],
    );
    assert_user_error("node up --interface a/b", &out, &["--interface", "a/b"]);
    let out = in_ns(&ns, node_bin(), &["up", "--state-dir", &sd]);
    assert_user_error("node up without a coordinator", &out, &["--coordinator"]);
    let out = host(node_bin(), &["ping"]);
    assert_usage_error("node ping without a peer", &out, &["PEER"]);
    let out = host(node_bin(), &["frobnicate"]);
    assert_usage_error("node frobnicate", &out, &["frobnicate"]);
    let out = host(
        coordinator_bin(),
        &["keys", "create", "--expires", "bogus", "--data-dir", &dd],
    );
    assert_user_error(
        "coordinator keys create --expires bogus",
        &out,
        &["bogus", "24h"],
    );
}

/// `keys create/list/revoke` and `nodes list/remove` on a data dir, without a server:
/// revoking accepts the whole key or its id; unknown ids and names are one-line errors that
/// point at `keys list` / `nodes list`.
#[test]
fn coordinator_admin_commands() {
    let dir = TempDir::new("admin");
    let dd = dir.join("data");
    let c = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", &dd]);
        host(coordinator_bin(), &all)
    };
    let k1 = key_from(&c(&["keys", "create", "--reusable", "--expires", "never"]));
    let k2 = key_from(&c(&["keys", "create", "--relay"]));
    let k3 = key_from(&c(&["keys", "create", "--expires", "30m"]));
    let keys = json("keys list --json", &c(&["keys", "list", "--json"]));
    let keys = keys
        .as_array()
        .expect("keys list --json is an array")
        .clone();
    assert_eq!(keys.len(), 3, "three keys created: {keys:?}");
    let ids: Vec<String> = keys
        .iter()
        .map(|k| k["id"].as_str().expect("key has an id").to_string())
        .collect();
    for (k, reusable, relay) in [(&keys[0], true, false), (&keys[1], false, true)] {
        assert_eq!(k["reusable"], Value::Bool(reusable), "{k}");
        assert_eq!(k["relay"], Value::Bool(relay), "{k}");
        assert_eq!(k["revoked"], Value::Bool(false), "{k}");
    }
    assert!(
        keys[0]["expires_ms"].is_null(),
        "--expires never: {}",
        keys[0]
    );
    assert!(keys[2]["expires_ms"].is_u64(), "--expires 30m: {}", keys[2]);
    for (key, id) in [(&k1, &ids[0]), (&k2, &ids[1]), (&k3, &ids[2])] {
        assert_ne!(key, id, "keys list shows the secret key as its id");
    }
    // The table lists every id.
    let table = stdout(&c(&["keys", "list"]));
    for id in &ids {
        assert!(
            table.contains(id.as_str()),
            "keys list lacks {id}:\n{table}"
        );
    }

    // Revoke by the whole key, and by id.
    let out = c(&["keys", "revoke", &k1]);
    assert!(
        out.status.success(),
        "revoke by key failed: {}",
        stderr(&out)
    );
    let out = c(&["keys", "revoke", &ids[1]]);
    assert!(
        out.status.success(),
        "revoke by id failed: {}",
        stderr(&out)
    );
    let keys = json("keys list --json", &c(&["keys", "list", "--json"]));
    let revoked: Vec<bool> = keys
        .as_array()
        .expect("array")
        .iter()
        .map(|k| k["revoked"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(
        revoked,
        vec![true, true, false],
        "after two revokes: {keys}"
    );
    let table = stdout(&c(&["keys", "list"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains(ids[0].as_str()) && l.contains("revoked")),
        "keys list does not show {} revoked:\n{table}",
        ids[0]
    );

    // Unknown ids: a made-up id, and a well-formed key of another coordinator.
    let out = c(&["keys", "revoke", "0123456789abcdef"]);
    assert_user_error(
        "keys revoke of an unknown id",
        &out,
        &["0123456789abcdef", "keys list"],
    );
    let other = TempDir::new("admin-other");
    let foreign = key_from(&host(
        coordinator_bin(),
        &["keys", "create", "--data-dir", &other.join("data")],
    ));
    let out = c(&["keys", "revoke", &foreign]);
    assert_user_error(
        "keys revoke of another coordinator's key",
        &out,
        &["keys list"],
    );

    // Nodes: none yet.
    let nodes = json("nodes list --json", &c(&["nodes", "list", "--json"]));
    assert_eq!(
        nodes,
        Value::Array(vec![]),
        "a new coordinator has no nodes"
    );
    let out = c(&["nodes", "remove", "ghost"]);
    assert_user_error(
        "nodes remove of an unknown name",
        &out,
        &["ghost", "nodes list"],
    );
}

// ---------------------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------------------

/// A config with a bad value or an unknown key is refused with the file and the line, for
/// every binary; a missing config file is named too.
#[test]
fn config_errors_name_file_and_line() {
    if !require_root() {
        return;
    }
    // Whatever starts (if a config were wrongly accepted) starts in this namespace.
    let lab = Lab::new("clicfg");
    let ns = lab.add_namespace("cfg");
    let dir = TempDir::new("cfg");
    let dd = dir.join("data");
    let sd = dir.join("state");
    struct Case {
        bin: &'static str,
        args: Vec<String>,
        file: &'static str,
        text: &'static str,
        line: u32,
        needles: &'static [&'static str],
    }
    let serve = |extra: &[&str]| {
        let mut a = vec!["serve".to_string()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let coord_args = serve(&["--data-dir", &dd]);
    let node_args: Vec<String> = ["up", "--state-dir", &sd, "--interface", "lmcfg0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let relay_args = serve(&["--state-dir", &sd]);
    let cases = [
        Case {
            bin: "coordinator",
            args: coord_args.clone(),
            file: "coord-network.toml",
            text: "# a comment\n\nnetwork = \"banana\"\nlisten = \"127.0.0.1:0\"\n",
            line: 3,
            needles: &[],
        },
        Case {
            bin: "coordinator",
            args: coord_args.clone(),
            file: "coord-type.toml",
            text: "listen = \"127.0.0.1:0\"\noffline_after_secs = \"sixty\"\n",
            line: 2,
            needles: &[],
        },
        Case {
            bin: "coordinator",
            args: coord_args.clone(),
            file: "coord-listen.toml",
            text: "\n\n\n\nlisten = \"nonsense\"\n",
            line: 5,
            needles: &[],
        },
        Case {
            bin: "coordinator",
            args: coord_args.clone(),
            file: "coord-unknown.toml",
            text: "listen = \"127.0.0.1:0\"\n# typo below\nlisen = \"127.0.0.1:0\"\n",
            line: 3,
            needles: &["lisen"],
        },
        Case {
            bin: "node",
            args: node_args.clone(),
            file: "node-port.toml",
            text: "coordinator = \"127.0.0.1:1\"\n\nport = 99999\n",
            line: 3,
            needles: &[],
        },
        Case {
            bin: "node",
            args: node_args.clone(),
            file: "node-keepalive.toml",
            text: "coordinator = \"127.0.0.1:1\"\nkeepalive_secs = \"often\"\n",
            line: 2,
            needles: &[],
        },
        Case {
            bin: "node",
            args: node_args.clone(),
            file: "node-unknown.toml",
            text: "# node\ncoordinator = \"127.0.0.1:1\"\nlisten = \"0.0.0.0:3479\"\n",
            line: 3,
            needles: &["listen"],
        },
        Case {
            bin: "relay",
            args: relay_args.clone(),
            file: "relay-rate.toml",
            text: "coordinator = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:0\"\nrate_limit_mbps = -5\n",
            line: 3,
            needles: &[],
        },
        Case {
            bin: "relay",
            args: relay_args.clone(),
            file: "relay-unknown.toml",
            text: "coordinator = \"127.0.0.1:1\"\nport = 3479\n",
            line: 2,
            needles: &["port"],
        },
    ];
    for case in &cases {
        let path = dir.write(case.file, case.text);
        let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        args.extend(["--config", &path]);
        let out = in_ns(&ns, bin_of(case.bin), &args);
        let line = format!("line {}", case.line);
        let mut needles = vec![case.file, line.as_str()];
        needles.extend_from_slice(case.needles);
        assert_user_error(
            &format!("{} with config {}", case.bin, case.file),
            &out,
            &needles,
        );
    }
    // A config file that is not there, or is a directory.
    for (bin, args) in [
        ("coordinator", &coord_args),
        ("node", &node_args),
        ("relay", &relay_args),
    ] {
        let missing = dir.join("missing.toml");
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(["--config", &missing]);
        let out = in_ns(&ns, bin_of(bin), &a);
        assert_user_error(
            &format!("{bin} with a missing config file"),
            &out,
            &["missing.toml", "config"],
        );
        let d = dir.path().display().to_string();
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(["--config", &d]);
        let out = in_ns(&ns, bin_of(bin), &a);
        assert_user_error(
            &format!("{bin} with a directory as config file"),
            &out,
            &[&d, "config"],
        );
    }
}

/// A TOML syntax error (an unfinished line) is one `error:` line with the file and line.
#[test]
fn config_syntax_error_is_one_line() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("clisyn");
    let ns = lab.add_namespace("cfg");
    let dir = TempDir::new("syntax");
    let dd = dir.join("data");
    let sd = dir.join("state");
    let mut problems = Vec::new();
    for (bin, args, text) in [
        (
            "coordinator",
            vec!["serve", "--data-dir", &dd],
            "# coordinator\nlisten = \n",
        ),
        (
            "node",
            vec!["up", "--state-dir", &sd, "--interface", "lmcfg0"],
            "coordinator = \"127.0.0.1:1\"\nport = \n",
        ),
        (
            "relay",
            vec!["serve", "--state-dir", &sd],
            "coordinator = \"127.0.0.1:1\"\nname = \"unterminated\n",
        ),
    ] {
        let file = format!("{bin}-syntax.toml");
        let path = dir.write(&file, text);
        let mut a = args.clone();
        a.extend(["--config", &path]);
        let out = in_ns(&ns, bin_of(bin), &a);
        let what = format!("{bin} with a config syntax error");
        assert_no_panic(&what, &out);
        if let Err(p) = user_error(&what, &out, &[&file, "line 2"]) {
            problems.push(p);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Config values apply, and flags win over them, for all three binaries: the coordinator
/// listens on the flag's address and hands out addresses of the flag's network but uses
/// the config's data dir; the node takes its coordinator, key, state dir and interface from
/// the config but its port and name from flags; the relay its name from the flag.
#[test]
fn config_values_apply_and_flags_win() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("cliovr");
    let ch = lab.add_host("coord", COORD_IP);
    let nh = lab.add_host("n", NODE_IP);
    let rh = lab.add_host("relay", RELAY_IP);
    let cfg = lab.subdir("configs");
    let write = |name: &str, text: String| {
        let p = cfg.join(name);
        std::fs::write(&p, text).expect("write config");
        p.display().to_string()
    };

    // Coordinator: listen and network overridden by flags, data dir from the config.
    let data_dir = lab.subdir("coord-cfg-data").display().to_string();
    let coord_cfg = write(
        "coordinator.toml",
        format!(
            "listen = \"{COORD_IP}:4000\"\ndata_dir = \"{data_dir}\"\nnetwork = \
             \"100.100.0.0/16\"\noffline_after_secs = 30\n"
        ),
    );
    let coord_addr = format!("{COORD_IP}:3478");
    let coord = lab.spawn(
        &ch.ns,
        coordinator_bin(),
        [
            "serve",
            "--config",
            &coord_cfg,
            "--listen",
            &coord_addr,
            "--network",
            "100.101.0.0/16",
        ],
        "coordinator",
    );
    wait_running_until(&lab, &coord, "the coordinator to listen on 3478", || {
        lab.listening(&ch.ns, 3478)
    });
    assert!(
        !lab.listening(&ch.ns, 4000),
        "the coordinator listens on the config's port although --listen was given"
    );
    assert!(
        lab.listening(&ch.ns, 3480),
        "the coordinator does not answer STUN on listen port + 2 (3480)"
    );
    let key = key_from(&in_ns(
        &ch.ns,
        coordinator_bin(),
        &["keys", "create", "--reusable", "--data-dir", &data_dir],
    ));
    let relay_key = key_from(&in_ns(
        &ch.ns,
        coordinator_bin(),
        &["keys", "create", "--relay", "--data-dir", &data_dir],
    ));

    // Relay: everything from the config but the name.
    let relay_sd = lab.subdir("relay-cfg").display().to_string();
    let relay_cfg = write(
        "relay.toml",
        format!(
            "listen = \"{RELAY_IP}:3479\"\ncoordinator = \"{coord_addr}\"\nauth_key = \
             \"{relay_key}\"\nname = \"cfgrelay\"\nstate_dir = \"{relay_sd}\"\n\
             rate_limit_mbps = 100\n"
        ),
    );
    let relay = lab.spawn(
        &rh.ns,
        relay_bin(),
        ["serve", "--config", &relay_cfg, "--name", "flagrelay"],
        "relay",
    );
    let rs = wait_running_for(&lab, &relay, "the relay to join the coordinator", || {
        let out = in_ns(
            &rh.ns,
            relay_bin(),
            &["status", "--json", "--state-dir", &relay_sd],
        );
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_str(&stdout(&out)).ok()?;
        (v["coordinator_connected"] == Value::Bool(true)).then_some(v)
    });
    assert_eq!(
        rs["name"], "flagrelay",
        "--name does not win over the config: {rs}"
    );
    assert!(
        lab.listening(&rh.ns, 3479),
        "the relay ignores the config's listen"
    );

    // Node: coordinator, key, state dir, interface from the config; port and name by flag.
    let node = Node::new(&lab, &nh, "flagname", &coord_addr);
    let node_sd = node.state_dir.display().to_string();
    let node_cfg = write(
        "node.toml",
        format!(
            "coordinator = \"{coord_addr}\"\nauth_key = \"{key}\"\nname = \"fromconfig\"\n\
             state_dir = \"{node_sd}\"\ninterface = \"lmcfg\"\nport = 41641\nkeepalive_secs = 10\n"
        ),
    );
    let np = lab.spawn(
        &nh.ns,
        node_bin(),
        [
            "up", "--config", &node_cfg, "--port", "41700", "--name", "flagname",
        ],
        "node",
    );
    let s = wait_running_for(&lab, &np, "the node to join with its config", || {
        node.status(&lab)
            .filter(|s| !s.mesh_ip.is_empty() && !s.relays.is_empty())
    });
    assert_eq!(s.name, "flagname", "--name does not win over the config");
    assert!(
        s.mesh_ip.starts_with("100.101."),
        "the node got {} although the coordinator's --network is 100.101.0.0/16 (config: \
         100.100.0.0/16)",
        s.mesh_ip
    );
    assert_eq!(
        s.relays.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        vec!["flagrelay"],
        "the node lists other relays than the one started: {}",
        s.raw
    );
    assert!(
        lab.has_interface(&nh.ns, "lmcfg"),
        "the node did not create the config's interface lmcfg"
    );
    assert!(
        lab.listening(&nh.ns, 41700),
        "the node does not use --port 41700"
    );
    assert!(
        !lab.listening(&nh.ns, 41641),
        "the node listens on the config's port although --port was given"
    );
    // The coordinator's nodes list (config's data dir) has it.
    let nodes = json(
        "nodes list --json",
        &in_ns(
            &ch.ns,
            coordinator_bin(),
            &["nodes", "list", "--json", "--data-dir", &data_dir],
        ),
    );
    assert!(
        nodes.to_string().contains("\"flagname\""),
        "nodes list of the config's data dir lacks the node: {nodes}"
    );
}

/// Polls `cond` (up to [`MESH_TIMEOUT`]); panics at once if `proc` exits meanwhile.
fn wait_running_until(lab: &Lab, proc: &Proc, what: &str, mut cond: impl FnMut() -> bool) {
    wait_running_for(lab, proc, what, || cond().then_some(()))
}

fn wait_running_for<T>(lab: &Lab, proc: &Proc, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    wait_for(MESH_TIMEOUT, what, || {
        if let Some(status) = lab.wait_exit(proc, Duration::ZERO) {
            panic!(
                "{} exited ({status}) while waiting for {what}:\n{}",
                proc.name(),
                lab.log(proc)
            );
        }
        f()
    })
}

// ---------------------------------------------------------------------------------------
// Errors that need a network namespace or a running daemon
// ---------------------------------------------------------------------------------------

/// A port that is taken: a second coordinator on the same --listen (or on the first one's
/// STUN port), a node on a taken --port, a relay on a taken --listen; an address that is
/// not this machine's.
#[test]
fn port_in_use_and_foreign_address() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("cliport");
    let ch = lab.add_host("coord", COORD_IP);
    let nh = lab.add_host("n", NODE_IP);
    let coord = Coordinator::start(&lab, &ch, &[]);
    let other = lab.subdir("other-data").display().to_string();

    let out = in_ns(
        &ch.ns,
        coordinator_bin(),
        &["serve", "--listen", &coord.addr, "--data-dir", &other],
    );
    assert_user_error(
        "a second coordinator on the same --listen",
        &out,
        &["in use", &coord.addr, "--listen"],
    );
    let out = in_ns(
        &ch.ns,
        coordinator_bin(),
        &[
            "serve",
            "--listen",
            &format!("{COORD_IP}:3500"),
            "--stun-port",
            "3480",
            "--data-dir",
            &other,
        ],
    );
    assert_user_error(
        "a coordinator whose --stun-port is taken",
        &out,
        &["3480", "in use", "--stun-port"],
    );
    let out = in_ns(
        &ch.ns,
        coordinator_bin(),
        &["serve", "--listen", "192.0.2.1:3478", "--data-dir", &other],
    );
    assert_user_error(
        "coordinator serve --listen on a foreign address",
        &out,
        &["192.0.2.1", "--listen"],
    );
    assert!(lab.is_running(coord.proc()), "the first coordinator died");

    // A node and a relay on ports something else holds.
    let _echo = udp::echo(&lab, &nh.ns, &["0.0.0.0:41641", &format!("{NODE_IP}:3479")]);
    let sd = lab.subdir("node-state").display().to_string();
    let out = in_ns(
        &nh.ns,
        node_bin(),
        &[
            "up",
            "--coordinator",
            &coord.addr,
            "--state-dir",
            &sd,
            "--interface",
            "lm0",
            "--port",
            "41641",
        ],
    );
    assert_user_error(
        "node up on a taken --port",
        &out,
        &["41641", "in use", "--port"],
    );
    assert!(
        !lab.has_interface(&nh.ns, "lm0"),
        "the failed node left lm0 behind"
    );
    let rsd = lab.subdir("relay-state").display().to_string();
    let relay_listen = format!("{NODE_IP}:3479");
    let out = in_ns(
        &nh.ns,
        relay_bin(),
        &[
            "serve",
            "--listen",
            &relay_listen,
            "--coordinator",
            &coord.addr,
            "--state-dir",
            &rsd,
        ],
    );
    assert_user_error(
        "relay serve on a taken --listen",
        &out,
        &[&relay_listen, "in use", "--listen"],
    );
    let out = in_ns(
        &nh.ns,
        relay_bin(),
        &[
            "serve",
            "--listen",
            "192.0.2.1:3479",
            "--coordinator",
            &coord.addr,
            "--state-dir",
            &rsd,
        ],
    );
    assert_user_error(
        "relay serve --listen on a foreign address",
        &out,
        &["192.0.2.1", "--listen"],
    );
}

/// Bad join key text is refused at once by `node up` and `relay serve`, with what to do.
#[test]
fn bad_join_key_text() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("clikey");
    let ns = lab.add_namespace("k");
    let dir = TempDir::new("key");
    let sd = dir.join("state");
    let damaged = format!("lmk1-{}", "A".repeat(40));
    for (key, needle) in [
        ("garbage", "lmk1-"),
        ("lmk1-garbage", "copy"),
        (damaged.as_str(), "copy"),
    ] {
        let out = in_ns(
            &ns,
            node_bin(),
            &[
                "up",
                "--coordinator",
                "127.0.0.1:1",
                "--auth-key",
                key,
                "--state-dir",
                &sd,
                "--interface",
                "lmkey0",
            ],
        );
        assert_user_error(
            &format!("node up --auth-key {key}"),
            &out,
            &["--auth-key", needle],
        );
        let out = in_ns(
            &ns,
            relay_bin(),
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--coordinator",
                "127.0.0.1:1",
                "--auth-key",
                key,
                "--state-dir",
                &sd,
            ],
        );
        assert_user_error(
            &format!("relay serve --auth-key {key}"),
            &out,
            &["--auth-key", needle],
        );
    }
    assert!(
        !lab.has_interface(&ns, "lmkey0"),
        "a refused node left its interface"
    );
    // A relay's first start needs a relay key.
    let fresh = dir.join("relay-fresh");
    let out = in_ns(
        &ns,
        relay_bin(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--coordinator",
            "127.0.0.1:1",
            "--state-dir",
            &fresh,
        ],
    );
    assert_user_error(
        "relay serve without a key the first time",
        &out,
        &["--auth-key", "keys create --relay"],
    );
}

/// The example configs in configs/ parse and start each binary (inside a namespace, with
/// flags replacing the paths and hosts they name): the coordinator also takes its STUN port
/// from the config.
#[test]
fn example_configs_start() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("cliexmpl");
    let ns = lab.add_namespace("ex");
    let configs = lanmesh_e2e::workspace_root().join("configs");
    let config = |name: &str| configs.join(name).display().to_string();
    let data = lab.subdir("coord-data").display().to_string();
    let coord = lab.spawn(
        &ns,
        coordinator_bin(),
        [
            "serve",
            "--config",
            &config("coordinator.toml"),
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:3478",
        ],
        "coordinator",
    );
    wait_running_until(
        &lab,
        &coord,
        "the coordinator to listen on 3478 and 3480",
        || lab.listening(&ns, 3478) && lab.listening(&ns, 3480),
    );

    let node_sd = lab.subdir("node-state").display().to_string();
    let node = lab.spawn(
        &ns,
        node_bin(),
        [
            "up",
            "--config",
            &config("node.toml"),
            "--state-dir",
            &node_sd,
            "--coordinator",
            "127.0.0.1:1",
        ],
        "node",
    );
    wait_running_until(&lab, &node, "the node to answer status", || {
        in_ns(
            &ns,
            node_bin(),
            &["status", "--json", "--state-dir", &node_sd],
        )
        .status
        .success()
    });
    assert!(lab.listening(&ns, 41641), "the node ignores port = 41641");

    let relay_key = key_from(&in_ns(
        &ns,
        coordinator_bin(),
        &["keys", "create", "--relay", "--data-dir", &data],
    ));
    let relay_sd = lab.subdir("relay-state").display().to_string();
    let relay = lab.spawn(
        &ns,
        relay_bin(),
        [
            "serve",
            "--config",
            &config("relay.toml"),
            "--state-dir",
            &relay_sd,
            "--coordinator",
            "127.0.0.1:1",
            "--auth-key",
            &relay_key,
        ],
        "relay",
    );
    wait_running_until(&lab, &relay, "the relay to answer status", || {
        in_ns(
            &ns,
            relay_bin(),
            &["status", "--json", "--state-dir", &relay_sd],
        )
        .status
        .success()
    });
    assert!(
        lab.listening(&ns, 3479),
        "the relay ignores listen = 0.0.0.0:3479"
    );
}

/// An unprivileged user can run a coordinator on an ephemeral port (`--listen
/// 127.0.0.1:0`), as tests and trials do: the second STUN port must not become port 2.
#[test]
fn coordinator_on_port_zero_unprivileged() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new("cliport0");
    let ns = lab.add_namespace("p0");
    let data = lab.subdir("open-dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).expect("chmod 777");
    let data_dir = data.join("coord").display().to_string();
    let coord = lab.spawn(
        &ns,
        "setpriv",
        [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &coordinator_bin().display().to_string(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
        ],
        "coordinator",
    );
    // Started: the control socket and the STUN socket are bound.
    wait_running_until(
        &lab,
        &coord,
        "the coordinator to bind its two UDP sockets",
        || {
            let out = in_ns(&ns, "ss", &["-H", "-l", "-n", "-u"]);
            stdout(&out)
                .lines()
                .filter(|l| l.contains("127.0.0.1:"))
                .count()
                >= 2
        },
    );
    let out = in_ns(&ns, "ss", &["-H", "-l", "-n", "-u"]);
    assert!(
        !stdout(&out).contains("127.0.0.1:2 "),
        "the coordinator on port 0 put its STUN port on port 2:\n{}",
        stdout(&out)
    );
}

/// With a coordinator and a node running: unknown peers for `node ping`, a second `node up`
/// on the same state dir, a user without root for `node up` and `node status`, and unknown
/// names and ids for the coordinator's admin commands.
#[test]
fn errors_with_a_running_mesh() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("clirun");
    let ch = lab.add_host("coord", COORD_IP);
    let nh = lab.add_host("n", NODE_IP);
    let coord = Coordinator::start(&lab, &ch, &[]);
    let key = coord.create_key(&lab, &["--reusable"]);
    let mut a = Node::new(&lab, &nh, "a", &coord.addr);
    a.up(&lab, Some(&key), &["--interface", "lm0", "--port", "41641"]);
    let s = a.wait_status(&lab, MESH_TIMEOUT, "joined", |s| !s.mesh_ip.is_empty());
    assert!(s.peers.is_empty(), "a lone node has peers: {}", s.raw);

    let sd = a.state_dir.display().to_string();
    let node_cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--state-dir", &sd]);
        in_ns(&nh.ns, node_bin(), &all)
    };
    let dd = coord.data_dir.display().to_string();
    let coord_cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", &dd]);
        in_ns(&ch.ns, coordinator_bin(), &all)
    };

    // Unknown peers, by name and by mesh IP.
    for peer in ["ghost", "100.127.1.1"] {
        let out = node_cli(&["ping", peer, "-c", "1"]);
        assert_user_error(
            &format!("node ping {peer} (unknown)"),
            &out,
            &[peer, "node status"],
        );
    }
    // The plain status works and names the node.
    let out = node_cli(&["status"]);
    assert!(out.status.success(), "node status failed: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("a {} ", s.mesh_ip)),
        "node status does not start with the name and mesh IP: {}",
        stdout(&out)
    );

    // A second daemon on the same state dir.
    let out = in_ns(
        &nh.ns,
        node_bin(),
        &[
            "up",
            "--coordinator",
            &coord.addr,
            "--state-dir",
            &sd,
            "--interface",
            "lm1",
            "--port",
            "41642",
        ],
    );
    assert_user_error(
        "a second node up on the same state dir",
        &out,
        &["already running", &sd],
    );
    assert!(lab.is_running(a.proc()), "the first node died");

    // Not root.
    let nobody_sd = lab.subdir("nobody").display().to_string();
    let out = as_nobody(
        &nh.ns,
        node_bin(),
        &[
            "up",
            "--coordinator",
            &coord.addr,
            "--auth-key",
            &key,
            "--state-dir",
            &nobody_sd,
            "--interface",
            "lm2",
            "--port",
            "41643",
        ],
    );
    assert_user_error("node up as an unprivileged user", &out, &["sudo"]);
    assert!(!lab.has_interface(&nh.ns, "lm2"));
    for args in [vec!["status"], vec!["ping", "ghost"], vec!["netcheck"]] {
        let mut all = args.clone();
        all.extend(["--state-dir", &sd]);
        let out = as_nobody(&nh.ns, node_bin(), &all);
        assert_user_error(
            &format!("node {} as an unprivileged user", args.join(" ")),
            &out,
            &["sudo"],
        );
    }

    // The coordinator's admin commands while it serves.
    let out = coord_cli(&["nodes", "remove", "ghost"]);
    assert_user_error("nodes remove ghost", &out, &["ghost", "nodes list"]);
    let out = coord_cli(&["keys", "revoke", "ffffffffffffffff"]);
    assert_user_error(
        "keys revoke of an unknown id",
        &out,
        &["ffffffffffffffff", "keys list"],
    );
    let nodes = coord.nodes_json(&lab);
    assert_eq!(
        nodes.as_array().map(Vec::len),
        Some(1),
        "nodes list after the failed commands: {nodes}"
    );
    wait_until(Duration::from_secs(5), "a still answers status", || {
        a.status(&lab).is_some()
    });
}

/// The coordinator's data dir: admin commands never make one (a typo in --data-dir, or a user
/// without the coordinator's dir, gets a one-line error instead of a new coordinator
/// identity), and the files in it are owner-only, also in a dir that existed with a looser
/// mode.
#[test]
fn coordinator_data_dirs_are_never_made_by_accident_and_stay_private() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("datadir");
    let missing = dir.join("typo");
    for args in [
        vec!["keys", "list"],
        vec!["keys", "revoke", "0123456789abcdef"],
        vec!["nodes", "list"],
        vec!["nodes", "remove", "x"],
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", &missing]);
        let out = host(coordinator_bin(), &all);
        assert_user_error(
            &format!("coordinator {} on a missing data dir", args.join(" ")),
            &out,
            &["no coordinator data dir", "typo"],
        );
        assert!(
            !dir.path().join("typo").exists(),
            "coordinator {} created the data dir",
            args.join(" ")
        );
    }
    // Without --data-dir, as a user whose default dir does not exist.
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run_with(
        &[
            "env",
            &format!("HOME={home}"),
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        coordinator_bin(),
        &["keys", "create"],
    );
    assert_user_error(
        "keys create without a data dir, unprivileged",
        &out,
        &["no coordinator data dir", "--data-dir"],
    );
    assert!(
        !Path::new(&home)
            .join(".local/share/lanmesh-coordinator")
            .exists(),
        "keys create made a new coordinator identity"
    );

    // `keys create --data-dir` prepares a new dir; modes are owner-only, and a loose mode of
    // an existing dir is fixed.
    let data = dir.join("data");
    key_from(&host(
        coordinator_bin(),
        &["keys", "create", "--data-dir", &data],
    ));
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = host(coordinator_bin(), &["keys", "list", "--data-dir", &data]);
    assert!(out.status.success(), "keys list: {}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(Path::new(&data)),
        0o700,
        "the data dir's mode was not fixed"
    );
    for f in [
        "coordinator.key",
        "coordinator.db",
        "coordinator.db-wal",
        "coordinator.db-shm",
    ] {
        let p = Path::new(&data).join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f} is not owner-only");
        }
    }
}

/// Listing commands piped into a reader that stops early (`| head -1`) end quietly.
#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    let dir = TempDir::new("pipe");
    let data = dir.join("data");
    key_from(&host(
        coordinator_bin(),
        &["keys", "create", "--data-dir", &data],
    ));
    // More keys than a pipe buffer holds in the listing (so the writer meets the closed
    // pipe), written straight into the database.
    let db = format!("{data}/coordinator.db");
    let fill = format!(
        "import sqlite3\n\
         c = sqlite3.connect({db:?})\n\
         c.executemany('INSERT INTO join_keys (id, secret_hash, reusable, relay, created_ms) \
         VALUES (?, ?, 1, 0, 1)', [(i.to_bytes(8, 'big'), bytes(32)) for i in range(3000)])\n\
         c.commit()\n"
    );
    let out = host("python3", &["-c", &fill]);
    assert!(out.status.success(), "python3: {}", stderr(&out));
    let script = format!(
        "{} keys list --data-dir {data} | head -1; {} keys list --json --data-dir {data} | head -1",
        coordinator_bin().display(),
        coordinator_bin().display()
    );
    let out = host("sh", &["-c", &script]);
    let err = stderr(&out);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "a closed pipe made the listing fail loudly: {err}"
    );
    assert!(out.status.success(), "sh: {}", out.status);
}
