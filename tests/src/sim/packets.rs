//! The one kind of packet the simulator sends through meshes: IPv4 ICMP echo, with an id in
//! the payload that says who sent it.

use std::net::Ipv4Addr;

pub struct Echo {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u32,
    pub request: bool,
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request (or reply) from `src` to `dst` carrying `id`.
pub fn echo(src: Ipv4Addr, dst: Ipv4Addr, id: u32, request: bool) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 8];
    p[0] = 0x45;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = if request { 8 } else { 0 };
    p[24..28].copy_from_slice(&id.to_be_bytes());
    p[28..32].copy_from_slice(b"lmsm");
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

pub fn parse_echo(p: &[u8]) -> Option<Echo> {
    if p.len() < 32 || p[0] != 0x45 || p[9] != 1 || &p[28..32] != b"lmsm" {
        return None;
    }
    let request = match p[20] {
        8 => true,
        0 => false,
        _ => return None,
    };
    Some(Echo {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        id: u32::from_be_bytes(p[24..28].try_into().ok()?),
        request,
    })
}
