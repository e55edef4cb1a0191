//! Privileges, binaries, running commands with timeouts, polling.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Lab::kill`] waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
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

/// The directory holding the `coordinator`, `node` and `relay` binaries: `$LANMESH_BIN_DIR`
/// if set, else `<workspace>/target/release` after one `cargo build --release --bins -p
/// lanmesh-coordinator -p lanmesh-node -p lanmesh-relay` per test process.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("LANMESH_BIN_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        cargo_build_release(&[
            "--bins",
            "-p",
            "lanmesh-coordinator",
            "-p",
            "lanmesh-node",
            "-p",
            "lanmesh-relay",
        ]);
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
pub(crate) fn must<I, S>(program: &str, args: I)
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

#[cfg(test)]
mod unit {
    use super::*;

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
