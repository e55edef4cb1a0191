//! The driver's side of the mesh interface, in batches. With offload on (the TUN has a
//! virtio-net header and TSO/USO), one read brings a TCP or UDP train of up to 64 KiB that
//! tun-rs splits into MTU-sized packets with their checksums; packets for the TUN are queued
//! and written with tun-rs's GRO table, which coalesces a flow's consecutive segments into one
//! write. Without offload the same calls move one packet each. Buffers are reused: no
//! allocation per packet.

use std::io;
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Room for one segment after splitting (the MTU is smaller).
const SEGMENT_LEN: usize = 2048;

pub struct TunBatch {
    /// One read: the virtio-net header and up to 64 KiB of packet.
    raw: Vec<u8>,
    rx: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Packets for the TUN, each behind room for the virtio-net header.
    tx: Vec<Vec<u8>>,
    queued: usize,
    gro: GROTable,
    pub counters: TunCounters,
}

/// Reads and the packets they brought; packets written (the writes themselves, after
/// coalescing, are the interface's own `rx_packets`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TunCounters {
    pub reads: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl Default for TunBatch {
    fn default() -> Self {
        TunBatch {
            raw: vec![0; VIRTIO_NET_HDR_LEN + 65_535],
            rx: vec![vec![0; SEGMENT_LEN]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
            // Coalescing grows a flow's first packet in place, and only within its capacity.
            tx: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_535))
                .collect(),
            queued: 0,
            gro: GROTable::new(),
            counters: TunCounters::default(),
        }
    }
}

impl TunBatch {
    /// Waits for the next read and returns how many packets it brought.
    pub async fn recv(&mut self, tun: &AsyncDevice) -> io::Result<usize> {
        let n = tun
            .recv_multiple(&mut self.raw, &mut self.rx, &mut self.sizes, 0)
            .await?;
        Ok(self.count(n))
    }

    /// The next read if one is waiting (`WouldBlock` if not).
    pub fn try_recv(&mut self, tun: &AsyncDevice) -> io::Result<usize> {
        let n = tun.try_recv_multiple(&mut self.raw, &mut self.rx, &mut self.sizes, 0)?;
        Ok(self.count(n))
    }

    fn count(&mut self, packets: usize) -> usize {
        self.counters.reads += 1;
        self.counters.packets_in += packets as u64;
        packets
    }

    /// The `i`th packet of the last read.
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.rx[i][..self.sizes[i]]
    }

    /// Queues a packet for the TUN; returns true when the batch is full and should be written.
    pub fn queue(&mut self, packet: &[u8]) -> bool {
        let b = &mut self.tx[self.queued];
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.queued += 1;
        self.counters.packets_out += 1;
        self.queued == self.tx.len()
    }

    /// Writes what is queued (a full TUN queue drops packets, as a NIC would; without an
    /// interface yet they are dropped).
    pub async fn write(&mut self, tun: Option<&AsyncDevice>) {
        let n = std::mem::take(&mut self.queued);
        if let (Some(tun), true) = (tun, n > 0) {
            let _ = tun
                .send_multiple(&mut self.gro, &mut self.tx[..n], VIRTIO_NET_HDR_LEN)
                .await;
        }
    }
}
