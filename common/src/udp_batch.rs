//! The daemons' UDP socket, batched: datagrams for one destination leave in one `sendmsg` with
//! UDP GSO (`UDP_SEGMENT`), and datagrams arrive many per call (`recvmmsg`, UDP GRO), through
//! `quinn-udp`. Where the kernel or the egress cannot segment (a GSO send fails with EIO or
//! EINVAL) the socket falls back to one datagram per send, for good, and says so at debug.
//!
//! [`GsoBatch`] is the pure part: which datagrams may share one GSO send.

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::net::UdpSocket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::debug;

/// The most payload one GSO send may carry (an IPv4 datagram's limit, rounded down).
const MAX_GSO_BYTES: usize = 65_000;
/// Receive buffers per `recvmmsg`, each big enough for one GRO train (at most 64 KiB).
const RX_SLOTS: usize = 8;
const RX_SLOT_LEN: usize = 65_536;

/// Datagrams gathered for one GSO send: one destination, equal sizes, only the last one may
/// be shorter.
#[derive(Debug, Default)]
pub struct GsoBatch {
    buf: Vec<u8>,
    dst: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the train.
    closed: bool,
}

impl GsoBatch {
    /// Adds `datagram` for `dst` if it may share this batch (at most `max_segments`); returns
    /// false, leaving the batch unchanged, if it may not.
    pub fn try_add(&mut self, dst: SocketAddr, datagram: &[u8], max_segments: usize) -> bool {
        if datagram.is_empty() {
            return true; // Nothing to send.
        }
        if self.count == 0 {
            self.dst = Some(dst);
            self.segment = datagram.len();
        } else if self.dst != Some(dst)
            || self.closed
            || datagram.len() > self.segment
            || self.count >= max_segments
            || self.buf.len() + datagram.len() > MAX_GSO_BYTES
        {
            return false;
        }
        self.closed = datagram.len() < self.segment;
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The batch as one transmit (`segment_size` set only for more than one datagram).
    pub fn transmit(&self) -> Option<Transmit<'_>> {
        Some(Transmit {
            destination: self.dst?,
            ecn: None,
            contents: &self.buf,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        })
    }

    /// The datagrams one by one.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.buf.chunks(self.segment.max(1))
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.dst = None;
        self.count = 0;
        self.closed = false;
    }
}

/// Splits a received buffer of `len` bytes holding datagrams `stride` bytes apart (GRO; the
/// last may be shorter) into the datagrams.
pub fn gro_segments(buf: &mut [u8], stride: usize) -> impl Iterator<Item = &mut [u8]> {
    let step = if stride == 0 {
        buf.len().max(1)
    } else {
        stride
    };
    buf.chunks_mut(step)
}

/// A UDP socket with batched sends and receives. It is registered for reading only: sends
/// never wait (a full buffer drops, as a NIC queue would), so the kernel's "writable again"
/// after every send wakes nobody.
pub struct BatchSocket {
    io: AsyncFd<UdpSocket>,
    state: UdpSocketState,
    batch: GsoBatch,
    /// Whether GSO is asked for (`--offload=false` says no).
    gso: bool,
    rx: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    pub counters: UdpCounters,
}

/// System calls and the datagrams they moved.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpCounters {
    pub sends: u64,
    pub datagrams_out: u64,
    pub receives: u64,
    pub datagrams_in: u64,
}

impl BatchSocket {
    /// Wraps a bound, non-blocking socket. `offload` false keeps to one datagram per send and
    /// per receive buffer (no GSO, no GRO).
    pub fn new(socket: UdpSocket, offload: bool) -> io::Result<BatchSocket> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        if !offload {
            // quinn-udp turns GRO on where it can: off again, so datagrams arrive one each.
            disable_udp_gro(&socket);
        }
        Ok(BatchSocket {
            // SAFETY: the socket is owned by the AsyncFd, which deregisters it before closing.
            io: unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
                .map_err(io::Error::from)?,
            state,
            batch: GsoBatch::default(),
            gso: offload,
            rx: vec![vec![0; RX_SLOT_LEN]; RX_SLOTS],
            metas: vec![RecvMeta::default(); RX_SLOTS],
            counters: UdpCounters::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Whether sends still use GSO (false after a fallback or with `offload` off).
    pub fn uses_gso(&self) -> bool {
        self.gso && self.state.max_gso_segments() > 1
    }

    fn max_segments(&self) -> usize {
        if self.gso {
            self.state.max_gso_segments()
        } else {
            1
        }
    }

    /// Queues `datagram` for `dst`; it leaves with the next [`BatchSocket::flush`] or as soon
    /// as a datagram that cannot share its batch comes. A full socket buffer drops datagrams,
    /// as a full NIC queue would.
    pub fn send(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let max = self.max_segments();
        if !self.batch.try_add(dst, datagram, max) {
            self.flush();
            self.batch.try_add(dst, datagram, max);
        }
    }

    /// Sends what is queued.
    pub fn flush(&mut self) {
        let Some(transmit) = self.batch.transmit() else {
            return;
        };
        let socket = self.io.get_ref();
        let sent = self.state.send(socket.into(), &transmit);
        self.counters.sends += 1;
        self.counters.datagrams_out += self.batch.len() as u64;
        // quinn-udp stops segmenting for good when a GSO send fails with EIO or EINVAL (no
        // checksum offload on the egress): that batch goes again one datagram at a time.
        // Other errors (no route, a full buffer) drop it, as they would a single datagram.
        if sent.is_err() && self.batch.len() > 1 && self.state.max_gso_segments() == 1 {
            debug!("UDP GSO send failed; sending one datagram per call from now on");
            let dst = transmit.destination;
            for d in self.batch.datagrams() {
                let _ = socket.send_to(d, dst);
                self.counters.sends += 1;
            }
        }
        self.batch.clear();
    }

    /// Sends one datagram now, after what is queued (for the last words before exit).
    pub fn send_now(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.flush();
        let _ = self.io.get_ref().send_to(datagram, dst);
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await.map(|_| ())
    }

    /// Reads what is waiting (one `recvmmsg`) and hands each datagram to `f` (writable: the
    /// relay rewrites frames in place); returns how many datagrams there were (0 when nothing
    /// was waiting).
    pub fn try_recv(&mut self, mut f: impl FnMut(SocketAddr, &mut [u8])) -> usize {
        let mut slices: [IoSliceMut; RX_SLOTS] = {
            let mut it = self.rx.iter_mut();
            std::array::from_fn(|_| IoSliceMut::new(it.next().expect("RX_SLOTS buffers")))
        };
        let (io, state, metas) = (&self.io, &self.state, &mut self.metas);
        let Ok(n) = io.try_io(Interest::READABLE, |socket| {
            state.recv(socket.into(), &mut slices, metas)
        }) else {
            return 0;
        };
        self.counters.receives += 1;
        let mut count = 0;
        for (meta, slice) in metas.iter().zip(slices.iter_mut()).take(n) {
            for datagram in gro_segments(&mut slice[..meta.len], meta.stride) {
                count += 1;
                f(normalize(meta.addr), datagram);
            }
        }
        self.counters.datagrams_in += count as u64;
        count
    }
}

/// IPv4 peers seen through a dual-stack socket come as IPv4-mapped IPv6 addresses.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

fn disable_udp_gro(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = 0;
    // SAFETY: a live socket, a c_int option of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn equal_datagrams_to_one_destination_share_a_batch_and_a_short_one_ends_it() {
        let mut b = GsoBatch::default();
        assert!(b.try_add(addr(1), &[1; 100], 64));
        assert!(b.try_add(addr(1), &[2; 100], 64));
        assert!(b.try_add(addr(1), &[3; 40], 64), "the last may be shorter");
        assert!(
            !b.try_add(addr(1), &[4; 40], 64),
            "nothing after a shorter one"
        );
        let t = b.transmit().unwrap();
        assert_eq!((t.contents.len(), t.segment_size), (240, Some(100)));
        let parts: Vec<_> = b.datagrams().map(|d| (d[0], d.len())).collect();
        assert_eq!(parts, [(1, 100), (2, 100), (3, 40)]);
    }

    #[test]
    fn another_destination_a_longer_datagram_or_a_full_batch_starts_a_new_one() {
        let mut b = GsoBatch::default();
        assert!(b.try_add(addr(1), &[0; 100], 3));
        assert!(!b.try_add(addr(2), &[0; 100], 3));
        assert!(!b.try_add(addr(1), &[0; 101], 3));
        assert!(b.try_add(addr(1), &[0; 100], 3));
        assert!(b.try_add(addr(1), &[0; 100], 3));
        assert!(!b.try_add(addr(1), &[0; 100], 3), "three segments at most");
        b.clear();
        assert!(b.is_empty());
        assert!(b.try_add(addr(2), &[0; 1400], 64));
        for _ in 1..46 {
            assert!(b.try_add(addr(2), &[0; 1400], 64));
        }
        assert!(!b.try_add(addr(2), &[0; 1400], 64), "64 KiB at most");
    }

    #[test]
    fn a_single_datagram_is_sent_without_segmentation() {
        let mut b = GsoBatch::default();
        assert!(b.transmit().is_none());
        b.try_add(addr(1), &[0; 10], 64);
        assert_eq!(b.transmit().unwrap().segment_size, None);
    }

    #[test]
    fn gro_buffers_split_at_the_stride() {
        let mut buf: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let lens: Vec<_> = gro_segments(&mut buf, 100)
            .map(|d| (d[0], d.len()))
            .collect();
        assert_eq!(lens, [(0, 100), (100, 100), (200, 50)]);
        assert_eq!(gro_segments(&mut buf, 0).count(), 1);
        assert_eq!(normalize("[::ffff:10.0.0.1]:5".parse().unwrap()), addr_v4());
    }

    fn addr_v4() -> SocketAddr {
        "10.0.0.1:5".parse().unwrap()
    }

    /// Two real sockets on loopback: a GSO batch leaves as one call and arrives as the same
    /// datagrams, in order, with or without offload.
    #[tokio::test]
    async fn batches_cross_loopback_intact() {
        for offload in [true, false] {
            let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
            let to = b.local_addr().unwrap();
            let mut a = BatchSocket::new(a, offload).unwrap();
            let mut b = BatchSocket::new(b, offload).unwrap();
            let sent: Vec<Vec<u8>> = (0..20u8)
                .map(|i| vec![i; if i == 19 { 333 } else { 1200 }])
                .collect();
            for d in &sent {
                a.send(to, d);
            }
            a.flush();
            let mut got = Vec::new();
            while got.len() < sent.len() {
                b.readable().await.unwrap();
                b.try_recv(|_, d| got.push(d.to_vec()));
            }
            assert_eq!(got, sent, "offload {offload}");
            assert_eq!(a.uses_gso(), offload, "loopback segments: no fallback");
        }
    }
}
