//! The slice of STUN (RFC 8489, formerly 5389) that lanmesh needs: Binding requests and their
//! success responses carrying XOR-MAPPED-ADDRESS.
//!
//! The coordinator answers any well-formed Binding request, but only when the answer is no
//! larger than the request (a bare 20-byte request would earn a 32-byte answer, so those go
//! unanswered: STUN must not be an amplifier). lanmesh's own requests carry a SOFTWARE
//! attribute that makes them large enough for IPv4 and IPv6 answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const HEADER: usize = 20;
/// Our requests: header + SOFTWARE (4 + 24) = 48 bytes, room for an IPv6 answer (44).
pub const REQUEST_LEN: usize = 48;
const SOFTWARE: &[u8; 24] = b"lanmesh node            ";

pub type TransactionId = [u8; 12];

/// A parsed, well-formed STUN message of a kind we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    BindingRequest(TransactionId),
    BindingSuccess {
        transaction: TransactionId,
        mapped: SocketAddr,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a STUN Binding request or success response. Anything malformed, any other method,
/// and any message with a comprehension-required attribute we do not know gives `None`.
pub fn parse(datagram: &[u8]) -> Option<Message> {
    if datagram.len() < HEADER || datagram[0] & 0xC0 != 0 {
        return None;
    }
    let kind = u16_at(datagram, 0);
    let length = u16_at(datagram, 2) as usize;
    if !length.is_multiple_of(4)
        || HEADER + length != datagram.len()
        || u32_at(datagram, 4) != MAGIC_COOKIE
    {
        return None;
    }
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(&datagram[8..20]);
    let mut mapped = None;
    let mut xor_mapped = None;
    let mut at = HEADER;
    while at < datagram.len() {
        if at + 4 > datagram.len() {
            return None;
        }
        let attr = u16_at(datagram, at);
        let len = u16_at(datagram, at + 2) as usize;
        let value_end = at + 4 + len;
        let next = at + 4 + len.div_ceil(4) * 4;
        if next > datagram.len() {
            return None;
        }
        let value = &datagram[at + 4..value_end];
        match attr {
            ATTR_XOR_MAPPED_ADDRESS => xor_mapped = Some(read_address(value, &transaction, true)?),
            ATTR_MAPPED_ADDRESS => mapped = Some(read_address(value, &transaction, false)?),
            ATTR_FINGERPRINT => {
                // Must be last, and right.
                if next != datagram.len() || len != 4 {
                    return None;
                }
                // The CRC covers everything before it (the length field, as sent, already
                // counts the fingerprint).
                if crc32fast::hash(&datagram[..at]) ^ FINGERPRINT_XOR != u32_at(value, 0) {
                    return None;
                }
            }
            a if a < 0x8000 && a != ATTR_MAPPED_ADDRESS && a != ATTR_XOR_MAPPED_ADDRESS => {
                // Comprehension-required and unknown (e.g. MESSAGE-INTEGRITY): not for us.
                return None;
            }
            _ => {}
        }
        at = next;
    }
    match kind {
        BINDING_REQUEST => Some(Message::BindingRequest(transaction)),
        BINDING_SUCCESS => Some(Message::BindingSuccess {
            transaction,
            mapped: xor_mapped.or(mapped)?,
        }),
        _ => None,
    }
}

fn read_address(value: &[u8], transaction: &TransactionId, xor: bool) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16_at(value, 2);
    if xor {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (value[1], value.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            o.copy_from_slice(&value[4..8]);
            if xor {
                for (b, k) in o.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&value[4..20]);
            if xor {
                let key = cookie.iter().chain(transaction.iter());
                for (b, k) in o.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Writes a Binding request (with our SOFTWARE attribute) into `out`; returns its length.
pub fn write_request(transaction: &TransactionId, out: &mut [u8; REQUEST_LEN]) -> usize {
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[2..4].copy_from_slice(&((REQUEST_LEN - HEADER) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(transaction);
    out[20..22].copy_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    out[22..24].copy_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
    out[24..48].copy_from_slice(SOFTWARE);
    REQUEST_LEN
}

/// The answer a STUN server gives `request` from `src`, written into `out` (64 bytes are
/// enough): only for a well-formed Binding request, and only when the answer is no larger than
/// the request. Returns the answer's length.
pub fn answer(src: SocketAddr, request: &[u8], out: &mut [u8]) -> Option<usize> {
    let Message::BindingRequest(tx) = parse(request)? else {
        return None;
    };
    write_success(&tx, src, request.len(), out)
}

/// The success response telling `transaction`'s sender it came from `mapped`, written into
/// `out`, if it fits in `max_len` bytes (the request's length). Returns its length.
pub fn write_success(
    transaction: &TransactionId,
    mapped: SocketAddr,
    max_len: usize,
    out: &mut [u8],
) -> Option<usize> {
    let addr_len = if mapped.is_ipv4() { 8 } else { 20 };
    let total = HEADER + 4 + addr_len;
    if total > max_len || total > out.len() {
        return None;
    }
    out[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out[2..4].copy_from_slice(&((4 + addr_len) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(transaction);
    out[20..22].copy_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    out[24] = 0;
    let port = mapped.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[26..28].copy_from_slice(&port.to_be_bytes());
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match mapped.ip() {
        IpAddr::V4(ip) => {
            out[25] = 0x01;
            for (i, (b, k)) in ip.octets().iter().zip(cookie).enumerate() {
                out[28 + i] = b ^ k;
            }
        }
        IpAddr::V6(ip) => {
            out[25] = 0x02;
            let key = cookie.iter().chain(transaction.iter());
            for (i, (b, k)) in ip.octets().iter().zip(key).enumerate() {
                out[28 + i] = b ^ k;
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn request_and_response_round_trip() {
        let mut req = [0u8; REQUEST_LEN];
        let n = write_request(&TX, &mut req);
        assert_eq!(parse(&req[..n]), Some(Message::BindingRequest(TX)));
        for mapped in ["203.0.113.5:41641", "[2001:db8::7]:9"] {
            let mapped: SocketAddr = mapped.parse().unwrap();
            let mut out = [0u8; 64];
            let m = write_success(&TX, mapped, n, &mut out).unwrap();
            assert!(m <= n);
            assert_eq!(
                parse(&out[..m]),
                Some(Message::BindingSuccess {
                    transaction: TX,
                    mapped
                })
            );
        }
    }

    #[test]
    fn a_bare_request_is_too_small_to_answer() {
        let mut req = [0u8; 20];
        req[1] = 1;
        req[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert_eq!(parse(&req), Some(Message::BindingRequest([0; 12])));
        let mut out = [0u8; 64];
        assert_eq!(
            write_success(&[0; 12], "203.0.113.5:1".parse().unwrap(), 20, &mut out),
            None
        );
    }

    /// RFC 5769 section 2.2: a sample IPv4 response (with SOFTWARE, XOR-MAPPED-ADDRESS,
    /// MESSAGE-INTEGRITY and FINGERPRINT). MESSAGE-INTEGRITY is comprehension-required and we
    /// do not do it, so we refuse the message; without it, we read the address.
    #[test]
    fn rfc5769_sample_response_address() {
        let tx = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let mut msg = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        msg.extend_from_slice(&tx);
        msg.extend_from_slice(&[
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
        ]);
        assert_eq!(
            parse(&msg),
            Some(Message::BindingSuccess {
                transaction: tx,
                mapped: "192.0.2.1:32853".parse().unwrap()
            })
        );
    }

    #[test]
    fn fingerprints_are_checked() {
        let mut req = [0u8; REQUEST_LEN];
        write_request(&TX, &mut req);
        let mut msg = req.to_vec();
        let new_len = (REQUEST_LEN - HEADER + 8) as u16;
        msg[2..4].copy_from_slice(&new_len.to_be_bytes());
        let crc = crc32fast::hash(&msg) ^ FINGERPRINT_XOR;
        msg.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        msg.extend_from_slice(&4u16.to_be_bytes());
        msg.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(parse(&msg), Some(Message::BindingRequest(TX)));
        let last = msg.len() - 1;
        msg[last] ^= 1;
        assert_eq!(parse(&msg), None);
    }

    #[test]
    fn malformed_input_is_refused_without_panicking() {
        let mut req = [0u8; REQUEST_LEN];
        write_request(&TX, &mut req);
        assert_eq!(parse(&req[..HEADER + 4]), None); // length field disagrees
        let mut bad = req;
        bad[4] ^= 1; // cookie
        assert_eq!(parse(&bad), None);
        let mut bad = req;
        bad[23] = 200; // attribute runs past the end
        assert_eq!(parse(&bad), None);
        let mut bad = req;
        bad[20..22].copy_from_slice(&0x0006u16.to_be_bytes()); // USERNAME: required, unknown
        assert_eq!(parse(&bad), None);
        for len in 0..REQUEST_LEN {
            for i in 0..len {
                let mut d = req[..len].to_vec();
                d[i] ^= 0xff;
                let _ = parse(&d);
            }
        }
    }
}
