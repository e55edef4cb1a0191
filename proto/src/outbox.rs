//! What a core hands its driver: datagrams to send and packets for the TUN, in queues of
//! pooled buffers (a buffer the driver gives back is reused: no allocation per packet once the
//! pool has grown to the queue's depth). The node's and the relay's cores both output through
//! one.

use std::collections::VecDeque;
use std::net::SocketAddr;

/// Queued items at most per queue; beyond it packets are dropped, as a full NIC queue would.
const MAX_QUEUED: usize = 4096;
/// Buffers kept for reuse at most (a driver's turn moves up to 8 GRO trains of 64 datagrams
/// before it gives them back).
const MAX_POOLED: usize = 1024;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Default)]
pub struct Outbox {
    transmits: VecDeque<Transmit>,
    tun: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
}

impl Outbox {
    fn buffer(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(bytes);
        b
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_tun_write(&mut self) -> Option<Vec<u8>> {
        self.tun.pop_front()
    }

    /// Gives a buffer of a polled item back for reuse.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if self.pool.len() < MAX_POOLED {
            self.pool.push(buffer);
        }
    }
}

impl Outbox {
    /// Queues a datagram for `dst`.
    pub fn send_udp(&mut self, dst: SocketAddr, datagram: &[u8]) {
        if self.transmits.len() >= MAX_QUEUED {
            return;
        }
        let payload = self.buffer(datagram);
        self.transmits.push_back(Transmit { dst, payload });
    }

    /// Queues a packet for the TUN.
    pub fn write_tun(&mut self, packet: &[u8]) {
        if self.tun.len() >= MAX_QUEUED {
            return;
        }
        let b = self.buffer(packet);
        self.tun.push_back(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_queues_are_bounded() {
        let mut o = Outbox::default();
        let dst: SocketAddr = "192.0.2.1:1".parse().unwrap();
        o.send_udp(dst, b"abc");
        let t = o.poll_transmit().unwrap();
        assert_eq!(t.payload, b"abc");
        let ptr = t.payload.as_ptr();
        o.recycle(t.payload);
        o.write_tun(b"xy");
        let p = o.poll_tun_write().unwrap();
        assert_eq!((p.as_slice(), p.as_ptr()), (&b"xy"[..], ptr));
        for _ in 0..MAX_QUEUED + 3 {
            o.send_udp(dst, b"z");
        }
        assert_eq!(std::iter::from_fn(|| o.poll_transmit()).count(), MAX_QUEUED);
    }
}
