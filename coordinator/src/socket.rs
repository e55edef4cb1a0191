//! The coordinator's UDP socket, driver side: large buffers (a flood must not overflow them
//! between two wake-ups), receives in batches (recvmmsg and GRO, through quinn-udp), and sends
//! that keep room for what matters — answers to unauthenticated input go out only while the
//! send queue has room to spare (replies to forged on-link sources wait seconds for address
//! resolution that never comes, holding buffer space), while session traffic waits for room
//! instead of being dropped.

use crate::control::Transmit;
use lanmesh_common::net::set_socket_buffer;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Socket buffers asked for (root may exceed the system's limits; others get those).
const BUFFER_BYTES: usize = 16 << 20;
/// Datagrams per receive call.
const BATCH: usize = 32;
/// Bytes per receive slot (GRO may coalesce several datagrams of one flow into it).
const SLOT: usize = 64 * 1024;
/// Session datagrams waiting for room, at most.
const MAX_PENDING: usize = 4096;

pub struct ControlSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    pending: VecDeque<Transmit>,
    /// The send buffer's size (as the kernel counts it).
    sndbuf: usize,
    dropped_best_effort: u64,
}

impl ControlSocket {
    /// Wraps a bound socket.
    pub fn new(socket: UdpSocket) -> io::Result<ControlSocket> {
        let fd = socket.as_raw_fd();
        set_socket_buffer(fd, libc::SO_RCVBUF, BUFFER_BYTES);
        set_socket_buffer(fd, libc::SO_SNDBUF, BUFFER_BYTES);
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let sndbuf = state
            .send_buffer_size(UdpSockRef::from(&socket))
            .unwrap_or(212_992);
        debug!(
            recv_buffer = state
                .recv_buffer_size(UdpSockRef::from(&socket))
                .unwrap_or(0),
            send_buffer = sndbuf,
            "control socket ready"
        );
        Ok(ControlSocket {
            socket,
            state,
            bufs: vec![vec![0u8; SLOT]; BATCH],
            metas: vec![RecvMeta::default(); BATCH],
            pending: VecDeque::new(),
            sndbuf,
            dropped_best_effort: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Whether session datagrams wait for room.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Reads one batch of what is queued and hands every datagram to `f`; returns how many
    /// there were (0: nothing queued).
    pub fn recv_batch(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) -> usize {
        let ControlSocket {
            socket,
            state,
            bufs,
            metas,
            ..
        } = self;
        let mut slices: Vec<IoSliceMut> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match socket.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(&*socket), &mut slices, metas)
        }) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let mut count = 0;
        for (meta, buf) in metas.iter().zip(bufs.iter()).take(n) {
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len].chunks(stride) {
                count += 1;
                f(meta.addr, datagram);
            }
        }
        count
    }

    /// Bytes waiting in the socket's send queue.
    fn queued(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        let r = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if r == 0 {
            n.max(0) as usize
        } else {
            0
        }
    }

    /// Sends `t`: best-effort answers only while the queue is under half full (else they are
    /// dropped, counted); session traffic goes out or waits for room.
    pub fn send(&mut self, t: Transmit) {
        if t.best_effort {
            if self.queued() > self.sndbuf / 2 {
                self.dropped_best_effort += 1;
                return;
            }
            let _ = self.socket.try_send_to(&t.payload, t.dst);
            return;
        }
        if !self.pending.is_empty() {
            return self.wait(t);
        }
        match self.socket.try_send_to(&t.payload, t.dst) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(t),
            Err(e) => debug!(dst = %t.dst, "send failed: {e}"),
            Ok(_) => {}
        }
    }

    fn wait(&mut self, t: Transmit) {
        if self.pending.len() < MAX_PENDING {
            self.pending.push_back(t);
        }
    }

    /// Sends what waited for room, as far as there is room.
    pub fn flush(&mut self) {
        while let Some(t) = self.pending.front() {
            match self.socket.try_send_to(&t.payload, t.dst) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                _ => {
                    self.pending.pop_front();
                }
            }
        }
    }

    /// Best-effort answers dropped for want of room so far.
    pub fn dropped_best_effort(&self) -> u64 {
        self.dropped_best_effort
    }
}
