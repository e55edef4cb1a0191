//! UDP probes that check what a NAT router of the lab does, with `lanmesh-testkit
//! udp-echo`, `udp-probe` and `udp-send` (see `src/bin/testkit.rs`). They need nothing of
//! lanmesh; `tests/tests/nat_lab.rs` uses them to prove that every [`crate::Nat`] kind maps
//! and filters as documented.

use crate::{stderr, stdout, testkit, wait_until, Lab, Proc};
use std::net::SocketAddr;
use std::time::Duration;

/// What one `udp-probe` run saw.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Per `--to` target, in order: the source address the echo server saw (the NAT
    /// mapping towards that target), `None` if it never answered.
    pub mapped: Vec<(SocketAddr, Option<SocketAddr>)>,
    /// Every other datagram: source and text (`alt ...` replies, unsolicited packets).
    pub received: Vec<(SocketAddr, String)>,
    /// Whether the probe finished (printed `done`).
    pub done: bool,
    /// The raw output.
    pub output: String,
}

impl Probe {
    /// Parses the stdout of `udp-probe`.
    pub fn parse(text: &str) -> Probe {
        let mut p = Probe {
            output: text.to_string(),
            ..Probe::default()
        };
        for line in text.lines() {
            let mut it = line.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("mapped"), Some(to), Some(seen)) => {
                    if let Ok(to) = to.parse() {
                        p.mapped.push((to, seen.trim().parse().ok()));
                    }
                }
                (Some("from"), Some(src), text) => {
                    if let Ok(src) = src.parse() {
                        p.received
                            .push((src, text.unwrap_or_default().trim().to_string()));
                    }
                }
                (Some("done"), None, None) => p.done = true,
                _ => {}
            }
        }
        p
    }

    /// The mapping the echo server at `to` saw; panics if `to` was not probed or did not
    /// answer.
    pub fn mapping(&self, to: &str) -> SocketAddr {
        let to: SocketAddr = to.parse().expect("target is IP:PORT");
        self.mapped
            .iter()
            .find(|(t, _)| *t == to)
            .unwrap_or_else(|| panic!("{to} was not probed:\n{}", self.output))
            .1
            .unwrap_or_else(|| panic!("{to} did not answer the probe:\n{}", self.output))
    }

    /// Whether a datagram from `src` (other than a probe answer) arrived.
    pub fn got_from(&self, src: &str) -> bool {
        let src: SocketAddr = src.parse().expect("source is IP:PORT");
        self.received.iter().any(|(s, _)| *s == src)
    }

    /// Whether a datagram with exactly this text (other than a probe answer) arrived.
    pub fn got_text(&self, text: &str) -> bool {
        self.received.iter().any(|(_, t)| t == text)
    }
}

/// Starts `udp-echo` in `ns` on every address of `listen` and waits until it is bound.
pub fn echo(lab: &Lab, ns: &str, listen: &[&str]) -> Proc {
    let mut args = vec!["udp-echo".to_string(), "--timeout".into(), "600".into()];
    for l in listen {
        args.extend(["--listen".to_string(), l.to_string()]);
    }
    let p = lab.spawn(ns, testkit(), &args, "udp-echo");
    for l in listen {
        let port: u16 = l
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("listen address is IP:PORT");
        wait_until(Duration::from_secs(10), "udp-echo to bind", || {
            if !lab.is_running(&p) {
                panic!("udp-echo exited:\n{}", lab.log(&p));
            }
            lab.listening(ns, port)
        });
    }
    p
}

fn probe_args(bind: &str, to: &[&str], alt: bool, linger_ms: u64) -> Vec<String> {
    let mut args = vec![
        "udp-probe".to_string(),
        "--bind".into(),
        bind.into(),
        "--linger-ms".into(),
        linger_ms.to_string(),
        "--timeout".into(),
        "60".into(),
    ];
    for t in to {
        args.extend(["--to".to_string(), t.to_string()]);
    }
    if alt {
        args.push("--alt".into());
    }
    args
}

/// Runs `udp-probe` in `ns` from `bind` to every `to` (with `--alt` if `alt`), listening
/// `linger_ms` after the last answer; panics if the probe fails.
pub fn probe(lab: &Lab, ns: &str, bind: &str, to: &[&str], alt: bool, linger_ms: u64) -> Probe {
    let out = lab.exec(ns, testkit(), probe_args(bind, to, alt, linger_ms));
    assert!(
        out.status.success(),
        "udp-probe from {bind} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    let p = Probe::parse(&stdout(&out));
    assert!(p.done, "udp-probe did not finish:\n{}", p.output);
    p
}

/// Starts `udp-probe` in the background (for a long `linger_ms`, to send it something
/// meanwhile) and waits until every target has been probed; finish with [`probe_finish`].
pub fn probe_spawn(
    lab: &Lab,
    ns: &str,
    bind: &str,
    to: &[&str],
    alt: bool,
    linger_ms: u64,
) -> (Proc, Probe) {
    let p = lab.spawn(
        ns,
        testkit(),
        probe_args(bind, to, alt, linger_ms),
        "udp-probe",
    );
    let mut parsed = Probe::default();
    wait_until(
        Duration::from_secs(20),
        "udp-probe to probe its targets",
        || {
            parsed = Probe::parse(&lab.log(&p));
            if parsed.mapped.len() == to.len() {
                return true;
            }
            if !lab.is_running(&p) {
                panic!("udp-probe exited early:\n{}", lab.log(&p));
            }
            false
        },
    );
    (p, parsed)
}

/// Waits for a probe from [`probe_spawn`] to finish and returns everything it saw.
pub fn probe_finish(lab: &Lab, p: &Proc) -> Probe {
    let status = lab
        .wait_exit(p, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("udp-probe did not finish:\n{}", lab.log(p)));
    let log = lab.log(p);
    assert!(status.success(), "udp-probe failed ({status}):\n{log}");
    let parsed = Probe::parse(&log);
    assert!(parsed.done, "udp-probe did not finish:\n{log}");
    parsed
}

/// Sends `count` datagrams `text` from `ns` (from `bind`, or any address) to `to`.
pub fn send(lab: &Lab, ns: &str, bind: Option<&str>, to: &str, text: &str, count: u32) {
    let mut args = vec![
        "udp-send".to_string(),
        "--to".into(),
        to.into(),
        "--text".into(),
        text.into(),
        "--count".into(),
        count.to_string(),
        "--timeout".into(),
        "20".into(),
    ];
    if let Some(b) = bind {
        args.extend(["--bind".to_string(), b.to_string()]);
    }
    let out = lab.exec(ns, testkit(), &args);
    assert!(
        out.status.success(),
        "udp-send to {to} failed ({}): {}",
        out.status,
        stderr(&out)
    );
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_probe_output() {
        let p = Probe::parse(
            "mapped 203.0.113.20:5000 203.0.113.2:4000\n\
             from 203.0.113.20:5001 alt 203.0.113.2:4000\n\
             mapped 203.0.113.30:5000 none\n\
             from 203.0.113.40:9 hello\n\
             done\n",
        );
        assert!(p.done);
        assert_eq!(
            p.mapping("203.0.113.20:5000"),
            "203.0.113.2:4000".parse().unwrap()
        );
        assert_eq!(p.mapped[1].1, None);
        assert!(p.got_from("203.0.113.20:5001"));
        assert!(!p.got_from("203.0.113.30:5000"));
        assert!(p.got_text("hello"));
        assert!(!Probe::parse("mapped x y\n").done);
    }
}
