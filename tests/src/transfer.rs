//! Checksummed TCP transfers through the mesh with `lanmesh-testkit`.

use crate::*;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// TCP transfers with lanmesh-testkit
// ---------------------------------------------------------------------------------------

/// The `<bytes> <sha256hex>` line printed by lanmesh-testkit.
pub fn transfer_result(text: &str) -> Option<(u64, String)> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let bytes = it.next()?.parse().ok()?;
        let hash = it.next()?;
        (hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()) && it.next().is_none())
            .then(|| (bytes, hash.to_string()))
    })
}

/// Sends `bytes` from namespace `from_ns` to `to_ip:port` in `to_ns` with lanmesh-testkit
/// and checks that both ends saw the same bytes (panics otherwise). Returns the log of the
/// receiver.
pub fn transfer(
    lab: &Lab,
    from_ns: &str,
    to_ns: &str,
    to_ip: &str,
    port: u16,
    bytes: u64,
) -> String {
    let tk = testkit();
    let addr = format!("{to_ip}:{port}");
    let recv = lab.spawn(to_ns, &tk, ["recv", "--listen", &addr], "testkit-recv");
    wait_until(Duration::from_secs(10), "testkit recv to listen", || {
        lab.listening(to_ns, port)
    });
    let start = Instant::now();
    let send = lab.exec_timeout(
        from_ns,
        &tk,
        [
            "send",
            "--to",
            &addr,
            "--bytes",
            &bytes.to_string(),
            "--seed",
            "42",
        ],
        Duration::from_secs(90),
    );
    assert!(
        send.status.success(),
        "testkit send to {addr} failed ({}): {}",
        send.status,
        stderr(&send)
    );
    let status = lab
        .wait_exit(&recv, Duration::from_secs(30))
        .expect("testkit recv did not finish");
    let recv_log = lab.log(&recv);
    assert!(
        status.success(),
        "testkit recv failed ({status}): {recv_log}"
    );
    let sent = transfer_result(&stdout(&send)).expect("send printed no result");
    let got = transfer_result(&recv_log).expect("recv printed no result");
    assert_eq!(sent.0, bytes, "sender sent a different amount");
    assert_eq!(got, sent, "received bytes differ from the sent bytes");
    eprintln!(
        "transferred {bytes} bytes to {addr} in {:.2}s",
        start.elapsed().as_secs_f64()
    );
    recv_log
}

/// A TCP transfer with lanmesh-testkit running in the background: [`Transfer::start`] it,
/// change the network under it, then [`Transfer::finish`] checks that every byte arrived
/// intact over the one connection.
pub struct Transfer {
    recv: Proc,
    send: Proc,
    addr: String,
    bytes: u64,
    started: Instant,
}

impl Transfer {
    /// Starts `testkit recv` on `to` (`IP:PORT`) in `to_ns`, waits until it listens, then
    /// starts `testkit send` of `bytes` from `from_ns` without waiting for it, paced to
    /// `rate_mbps` megabits per second if given. Both give up after `limit`.
    pub fn start(
        lab: &Lab,
        from_ns: &str,
        to_ns: &str,
        to: &str,
        bytes: u64,
        rate_mbps: Option<u64>,
        limit: Duration,
    ) -> Transfer {
        let tk = testkit();
        let addr = to.to_string();
        let port: u16 = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("transfer target {addr:?} is not IP:PORT"));
        let secs = limit.as_secs().max(1).to_string();
        let recv = lab.spawn(
            to_ns,
            &tk,
            ["recv", "--listen", &addr, "--timeout", &secs],
            "testkit-recv",
        );
        wait_until(Duration::from_secs(10), "testkit recv to listen", || {
            lab.listening(to_ns, port)
        });
        let bytes_s = bytes.to_string();
        let mut args = vec![
            "send",
            "--to",
            &addr,
            "--bytes",
            &bytes_s,
            "--seed",
            "42",
            "--timeout",
            &secs,
        ];
        let rate_s = rate_mbps.map(|r| r.to_string());
        if let Some(r) = &rate_s {
            args.extend(["--rate-mbps", r.as_str()]);
        }
        let started = Instant::now();
        let send = lab.spawn(from_ns, &tk, &args, "testkit-send");
        Transfer {
            recv,
            send,
            addr,
            bytes,
            started,
        }
    }

    /// Whether the sender is still sending (or waiting for the receiver to confirm).
    pub fn is_running(&self, lab: &Lab) -> bool {
        lab.is_running(&self.send)
    }

    /// Time since the sender started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits up to `timeout` for both ends to finish and checks that the receiver got
    /// exactly the bytes sent (count and SHA-256); panics otherwise. Returns how long the
    /// transfer took.
    pub fn finish(self, lab: &Lab, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        let send_status = lab
            .wait_exit(&self.send, timeout)
            .unwrap_or_else(|| panic!("testkit send to {} did not finish", self.addr));
        let took = self.started.elapsed();
        let recv_status = lab
            .wait_exit(
                &self.recv,
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(5)),
            )
            .unwrap_or_else(|| panic!("testkit recv on {} did not finish", self.addr));
        let send_log = lab.log(&self.send);
        let recv_log = lab.log(&self.recv);
        assert!(
            send_status.success(),
            "testkit send to {} failed ({send_status}): {send_log}",
            self.addr
        );
        assert!(
            recv_status.success(),
            "testkit recv on {} failed ({recv_status}): {recv_log}",
            self.addr
        );
        let sent = transfer_result(&send_log).expect("send printed no result");
        let got = transfer_result(&recv_log).expect("recv printed no result");
        assert_eq!(sent.0, self.bytes, "sender sent a different amount");
        assert_eq!(got, sent, "received bytes differ from the sent bytes");
        eprintln!(
            "transferred {} bytes to {} in {:.2}s",
            self.bytes,
            self.addr,
            took.as_secs_f64()
        );
        took
    }
}
