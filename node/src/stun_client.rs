//! Asking STUN servers where our socket's packets appear to come from, as a sans-IO state
//! machine. Comparing the answers of two or more destinations (the coordinator counts as one)
//! tells whether our NAT's mapping varies by destination: a symmetric NAT, which cannot be
//! hole-punched against a port-restricted or symmetric peer.

use lanmesh_proto::outbox::{Outbox, Transmit};
use lanmesh_proto::stun::{self, Message, TransactionId, REQUEST_LEN};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often to ask again (mappings change when NATs reboot or networks change).
const INTERVAL: Duration = Duration::from_secs(30);
/// Retry an unanswered request after this long, a few times.
const RETRY: Duration = Duration::from_millis(500);
const TRIES: u32 = 3;

struct Pending {
    tx: TransactionId,
    tries: u32,
    sent_at: Instant,
}

pub struct StunClient {
    servers: Vec<SocketAddr>,
    pending: HashMap<SocketAddr, Pending>,
    mapped: HashMap<SocketAddr, SocketAddr>,
    next_round: Instant,
    seed: [u8; 8],
    counter: u32,
    out: Outbox,
}

impl StunClient {
    pub fn new(servers: Vec<SocketAddr>, now: Instant, seed: [u8; 8]) -> StunClient {
        StunClient {
            servers,
            pending: HashMap::new(),
            mapped: HashMap::new(),
            next_round: now,
            seed,
            counter: 0,
            out: Outbox::default(),
        }
    }

    /// Replaces the servers (answers from servers that stay are kept).
    pub fn set_servers(&mut self, servers: Vec<SocketAddr>) {
        self.mapped.retain(|s, _| servers.contains(s));
        self.pending.retain(|s, _| servers.contains(s));
        self.servers = servers;
    }

    /// Asks every server again now.
    pub fn refresh(&mut self, now: Instant) {
        self.next_round = now;
    }

    /// Where each server saw us.
    pub fn mapped(&self) -> impl Iterator<Item = (&SocketAddr, &SocketAddr)> {
        self.mapped.iter()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.servers.is_empty() {
            return None;
        }
        let retry = self.pending.values().map(|p| p.sent_at + RETRY).min();
        Some(retry.map_or(self.next_round, |r| r.min(self.next_round)))
    }

    /// Queues due requests (see [`StunClient::poll_transmit`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_round {
            self.next_round = now + INTERVAL;
            for i in 0..self.servers.len() {
                let server = self.servers[i];
                let tx = self.fresh_tx();
                self.pending.insert(
                    server,
                    Pending {
                        tx,
                        tries: 0,
                        sent_at: now,
                    },
                );
            }
        }
        self.pending.retain(|_, p| p.tries < TRIES);
        for (server, p) in self.pending.iter_mut() {
            if p.tries == 0 || now >= p.sent_at + RETRY {
                p.tries += 1;
                p.sent_at = now;
                let mut buf = [0u8; REQUEST_LEN];
                let n = stun::write_request(&p.tx, &mut buf);
                self.out.send_udp(*server, &buf[..n]);
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit()
    }

    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.out.recycle(buffer)
    }

    fn fresh_tx(&mut self) -> TransactionId {
        self.counter = self.counter.wrapping_add(1);
        let mut tx = [0u8; 12];
        tx[..8].copy_from_slice(&self.seed);
        tx[8..].copy_from_slice(&self.counter.to_le_bytes());
        tx
    }

    /// A STUN datagram from `src`; answers to our own requests are recorded.
    pub fn handle_datagram(&mut self, src: SocketAddr, datagram: &[u8]) {
        let Some(Message::BindingSuccess {
            transaction,
            mapped,
        }) = stun::parse(datagram)
        else {
            return;
        };
        if self.pending.get(&src).is_some_and(|p| p.tx == transaction) {
            self.pending.remove(&src);
            self.mapped.insert(src, mapped);
        }
    }

    /// Whether different destinations saw us at different public endpoints; `None` until at
    /// least two (the coordinator's view included) have answered.
    pub fn mapping_varies(&self, coordinator_view: Option<SocketAddr>) -> Option<bool> {
        let mut seen: Vec<SocketAddr> = self.mapped.values().copied().collect();
        seen.extend(coordinator_view);
        if seen.len() < 2 {
            return None;
        }
        Some(seen.iter().any(|a| *a != seen[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(c: &mut StunClient) -> Vec<(SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| c.poll_transmit())
            .map(|t| (t.dst, t.payload))
            .collect()
    }

    fn answer(req: &[u8], mapped: &str) -> Vec<u8> {
        let Some(Message::BindingRequest(tx)) = stun::parse(req) else {
            panic!("not a request")
        };
        let mut out = [0u8; 64];
        let n = stun::write_success(&tx, mapped.parse().unwrap(), req.len(), &mut out).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn detects_a_mapping_that_varies_by_destination() {
        let s1: SocketAddr = "203.0.113.10:3478".parse().unwrap();
        let s2: SocketAddr = "203.0.113.20:3478".parse().unwrap();
        let t0 = Instant::now();
        let mut c = StunClient::new(vec![s1, s2], t0, [1; 8]);
        c.handle_timeout(t0);
        let sent = sent(&mut c);
        assert_eq!(sent.len(), 2);
        let to = |server| &sent.iter().find(|(dst, _)| *dst == server).unwrap().1;
        assert_eq!(c.mapping_varies(None), None);
        c.handle_datagram(s1, &answer(to(s1), "198.51.100.1:1000"));
        // An answer from the wrong server, or to nothing we asked, is ignored.
        c.handle_datagram(s1, &answer(to(s2), "198.51.100.1:9999"));
        assert_eq!(c.mapping_varies(None), None);
        c.handle_datagram(s2, &answer(to(s2), "198.51.100.1:2000"));
        assert_eq!(c.mapping_varies(None), Some(true));
        assert_eq!(
            c.mapping_varies(Some("198.51.100.1:1000".parse().unwrap())),
            Some(true)
        );
    }

    #[test]
    fn one_server_and_the_coordinator_agreeing_means_no_variation() {
        let s1: SocketAddr = "203.0.113.10:3478".parse().unwrap();
        let t0 = Instant::now();
        let mut c = StunClient::new(vec![s1], t0, [1; 8]);
        c.handle_timeout(t0);
        let sent = sent(&mut c);
        c.handle_datagram(s1, &answer(&sent[0].1, "198.51.100.1:1000"));
        assert_eq!(
            c.mapping_varies(Some("198.51.100.1:1000".parse().unwrap())),
            Some(false)
        );
    }

    #[test]
    fn unanswered_requests_are_retried_then_dropped_until_the_next_round() {
        let s1: SocketAddr = "203.0.113.10:3478".parse().unwrap();
        let t0 = Instant::now();
        let mut c = StunClient::new(vec![s1], t0, [1; 8]);
        let mut n = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(29) {
            c.handle_timeout(now);
            n += sent(&mut c).len() as u32;
            now = c.poll_timeout().unwrap();
        }
        assert_eq!(n, TRIES);
        c.handle_timeout(t0 + INTERVAL);
        n += sent(&mut c).len() as u32;
        assert_eq!(n, TRIES + 1);
    }
}
