//! Segmentation and coalescing as the driver does them (tun-rs's `gso_split` behind
//! `recv_multiple`, its GRO table behind `send_multiple`), and a whole TCP train through two
//! meshes at one injected instant.

use super::*;
use lanmesh_common::udp_batch::GsoBatch;
use tun_rs::{gso_split, GROTable, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;
const SEQ: u32 = 7_000_000;

/// The one's-complement sum of `data` (not yet complemented), from `start`.
fn sum(data: &[u8], start: u32) -> u32 {
    let mut s = start;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        s += u32::from(word);
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn ihl(p: &[u8]) -> usize {
    usize::from(p[0] & 0x0f) * 4
}

fn ip_checksum_ok(p: &[u8]) -> bool {
    fold(sum(&p[..ihl(p)], 0)) == 0xffff
}

fn tcp_checksum_ok(p: &[u8]) -> bool {
    let l4 = &p[ihl(p)..];
    let mut pseudo = sum(&p[12..20], 0);
    pseudo += 6 + l4.len() as u32;
    fold(sum(l4, pseudo)) == 0xffff
}

/// A TCP/IPv4 packet from a to b: `options` 4-byte words of IPv4 options (NOPs), `flags`,
/// `payload` bytes `i as u8` from `first`; both checksums filled in.
fn tcp_packet(options: usize, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let iph = 20 + 4 * options;
    let total = iph + 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x40 | (iph / 4) as u8;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40; // Don't fragment.
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p[20..iph].fill(1); // NOP options.
    let t = iph;
    p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5001u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&1u32.to_be_bytes());
    p[t + 12] = 5 << 4;
    p[t + 13] = flags;
    p[t + 14..t + 16].copy_from_slice(&65535u16.to_be_bytes());
    p[t + 20..].copy_from_slice(payload);
    let ip = !fold(sum(&p[..iph], 0));
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let mut pseudo = sum(&p[12..20], 0);
    pseudo += 6 + (total - iph) as u32;
    let tcp = !fold(sum(&p[iph..], pseudo));
    p[t + 16..t + 18].copy_from_slice(&tcp.to_be_bytes());
    p
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn tcp_flags(p: &[u8]) -> u8 {
    p[ihl(p) + 13]
}

fn tcp_seq(p: &[u8]) -> u32 {
    let t = ihl(p);
    u32::from_be_bytes(p[t + 4..t + 8].try_into().unwrap())
}

fn tcp_payload(p: &[u8]) -> &[u8] {
    let t = ihl(p);
    &p[t + usize::from(p[t + 12] >> 4) * 4..]
}

/// What the kernel hands a TUN with TSO: one super-packet, its TCP checksum field holding
/// only the pseudo-header sum (the NIC — here we — finishes it).
fn split(super_packet: &[u8], mss: u16) -> Vec<Vec<u8>> {
    let mut input = super_packet.to_vec();
    let iph = ihl(&input);
    let hdr = VirtioNetHdr {
        flags: 1, // VIRTIO_NET_HDR_F_NEEDS_CSUM
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: (iph + 20) as u16,
        gso_size: mss,
        csum_start: iph as u16,
        csum_offset: 16,
    };
    let mut pseudo = sum(&input[12..20], 0);
    pseudo += 6 + (input.len() - iph) as u32;
    input[iph + 16..iph + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    let mut out = vec![vec![0u8; 2048]; 128];
    let mut sizes = vec![0usize; 128];
    let n = gso_split(&mut input, hdr, &mut out, &mut sizes, 0, false).expect("split");
    out.truncate(n);
    for (b, len) in out.iter_mut().zip(sizes) {
        b.truncate(len);
    }
    out
}

/// Coalesces `packets` as `TunBatch::write` would; returns what goes to the TUN (each with
/// its virtio-net header decoded).
fn coalesce(packets: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut bufs: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut b = Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_535);
            b.resize(VIRTIO_NET_HDR_LEN, 0);
            b.extend_from_slice(p);
            b
        })
        .collect();
    let lens: Vec<usize> = bufs.iter().map(Vec::len).collect();
    GROTable::new()
        .apply_gro(&mut bufs, VIRTIO_NET_HDR_LEN, false)
        .expect("gro");
    // A packet merged into another keeps its old contents and length; one written is either
    // untouched-but-headed or grown. Written = every buffer not merged: those whose payload
    // does not appear inside an earlier, grown one.
    let mut written: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
    let mut covered_until = 0u32;
    for (b, len) in bufs.iter().zip(lens) {
        let p = &b[VIRTIO_NET_HDR_LEN..];
        let end = tcp_seq(p).wrapping_add(tcp_payload(p).len() as u32);
        if !written.is_empty() && end <= covered_until && b.len() == len {
            continue; // Merged into an earlier packet.
        }
        covered_until = covered_until.max(end);
        let hdr = VirtioNetHdr::decode(&b[..VIRTIO_NET_HDR_LEN]).expect("header");
        written.push((hdr, p.to_vec()));
    }
    written
}

#[test]
fn a_train_splits_into_mss_segments_with_valid_checksums_and_a_shorter_last() {
    for (options, len) in [(0, 5_000), (1, 4_001), (0, 1_347), (0, 1)] {
        let data = payload(len);
        let train = tcp_packet(options, ACK | PSH | FIN, SEQ, &data);
        let segments = split(&train, 1_300);
        assert_eq!(segments.len(), len.div_ceil(1_300), "{options} {len}");
        let mut joined = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            let last = i == segments.len() - 1;
            assert_eq!(ihl(s), 20 + 4 * options, "IPv4 options kept");
            assert_eq!(&s[20..ihl(s)], &train[20..ihl(s)]);
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            assert!(ip_checksum_ok(s), "IP checksum of segment {i}");
            assert!(tcp_checksum_ok(s), "TCP checksum of segment {i}");
            assert_eq!(tcp_seq(s), SEQ + (i * 1_300) as u32);
            let want = if last { len - i * 1_300 } else { 1_300 };
            assert_eq!(tcp_payload(s).len(), want, "segment {i} of {len}");
            // PSH and FIN end the train: only the last segment carries them.
            let flags = if last { ACK | PSH | FIN } else { ACK };
            assert_eq!(tcp_flags(s), flags, "flags of segment {i}");
            joined.extend_from_slice(tcp_payload(s));
        }
        assert_eq!(joined, data);
    }
}

#[test]
fn consecutive_segments_coalesce_back_into_one_write() {
    let data = payload(9_999);
    let segments = split(&tcp_packet(0, ACK | PSH, SEQ, &data), 1_300);
    let written = coalesce(&segments);
    assert_eq!(written.len(), 1, "one write for the whole train");
    let (hdr, p) = &written[0];
    assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(hdr.gso_size, 1_300);
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert!(ip_checksum_ok(p));
    assert_eq!(tcp_seq(p), SEQ);
    assert_eq!(
        tcp_flags(p),
        ACK | PSH,
        "the PSH of the last segment is kept"
    );
    assert_eq!(tcp_payload(p), &data[..]);
}

#[test]
fn a_fin_a_gap_or_ip_options_end_coalescing() {
    // FIN on the last segment: it goes on its own, after the rest coalesced.
    let data = payload(6_000);
    let written = coalesce(&split(&tcp_packet(0, ACK | FIN, SEQ, &data), 1_300));
    assert_eq!(written.len(), 2);
    assert_eq!(tcp_flags(&written[1].1), ACK | FIN);
    let joined: Vec<u8> = written
        .iter()
        .flat_map(|(_, p)| tcp_payload(p).to_vec())
        .collect();
    assert_eq!(joined, data);
    // A lost segment in the middle: two writes, nothing invented.
    let mut segments = split(&tcp_packet(0, ACK, SEQ, &payload(6_500)), 1_300);
    segments.remove(2);
    let written = coalesce(&segments);
    assert_eq!(written.len(), 2);
    assert_eq!(tcp_seq(&written[1].1), SEQ + 3 * 1_300);
    // IPv4 options: every segment is written as it is.
    let segments = split(&tcp_packet(1, ACK, SEQ, &payload(4_000)), 1_300);
    let written = coalesce(&segments);
    assert_eq!(written.len(), segments.len());
    for ((hdr, p), s) in written.iter().zip(&segments) {
        assert_eq!(hdr.gso_type, 0);
        assert_eq!(p, s);
    }
}

/// A 40 KiB TCP train from a's TUN, at one injected instant: a seals it into datagrams for
/// one destination that one GSO send carries; b opens them at another instant and its TUN
/// gets the segments in order, which coalesce back into one write of the same bytes.
#[test]
fn a_train_crosses_two_meshes_as_one_gso_send_and_one_tun_write() {
    let (mut a, mut b) = (host(1), host(2));
    connect(&mut a, &mut b);
    let data = payload(40_000);
    let segments = split(&tcp_packet(0, ACK | PSH, SEQ, &data), 1_300);
    let now = Instant::now() + Duration::from_secs(1);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    for s in &segments {
        a.mesh.handle_tun_packet(now, s, &mut scratch);
    }
    a.collect();
    let sent: Vec<_> = a.io.udp.drain(..).collect();
    assert_eq!(sent.len(), segments.len());
    let mut batch = GsoBatch::default();
    for (dst, d) in &sent {
        assert_eq!(*dst, b.addr);
        assert!(
            batch.try_add(*dst, d, 64),
            "every datagram joins the one GSO batch"
        );
    }
    assert_eq!(batch.len(), segments.len());
    let later = now + Duration::from_millis(1);
    for d in batch.datagrams() {
        b.mesh.handle_datagram(later, a.addr, d, &mut scratch);
    }
    b.collect();
    assert_eq!(
        b.io.tun, segments,
        "b's TUN gets the segments in order, intact"
    );
    let written = coalesce(&b.io.tun);
    assert_eq!(written.len(), 1);
    assert_eq!(tcp_payload(&written[0].1), &data[..]);
    let view = &b.mesh.peers(later)[0];
    assert_eq!(view.path, Path::Direct);
}
