//! Group membership on the wire and in the kernel.
//!
//! Nodes tell each peer which multicast groups programs on them joined on the mesh interface
//! with an IGMPv3 membership report (RFC 3376, §4.2) sent inside the WireGuard tunnel: source
//! the node's mesh IP, destination 224.0.0.22, one `MODE_IS_EXCLUDE` record without sources
//! per group ("any source"). Each report states the whole current set; a peer replaces what it
//! knew. An older node that gets one writes it into its TUN, where the kernel ignores it (hosts
//! do not act on reports).
//!
//! What the kernel joined comes from `/proc/net/igmp` ([`parse_proc_igmp`]).

use std::net::Ipv4Addr;

/// Where IGMPv3 reports go.
pub const REPORTS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 22);
/// Groups carried in one report at most (and remembered per peer): a report stays far below
/// the MTU, and a peer cannot make us remember more.
pub const MAX_GROUPS: usize = 64;
/// IPv4 header with the Router Alert option (RFC 2113), as the kernel sends reports.
const IP_HEADER: usize = 24;
const IGMP_HEADER: usize = 8;
const RECORD: usize = 8;
/// The largest report we build.
pub const MAX_REPORT_LEN: usize = IP_HEADER + IGMP_HEADER + MAX_GROUPS * RECORD;

const IGMP_PROTOCOL: u8 = 2;
const V3_REPORT: u8 = 0x22;
const MODE_IS_INCLUDE: u8 = 1;
const MODE_IS_EXCLUDE: u8 = 2;
const CHANGE_TO_INCLUDE: u8 = 3;
const CHANGE_TO_EXCLUDE: u8 = 4;

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes a full-state report of `groups` (at most [`MAX_GROUPS`]) from `src` into `out`
/// (at least [`MAX_REPORT_LEN`] bytes); returns its length.
pub fn write_report(src: Ipv4Addr, groups: &[Ipv4Addr], out: &mut [u8]) -> usize {
    let groups = &groups[..groups.len().min(MAX_GROUPS)];
    let len = IP_HEADER + IGMP_HEADER + groups.len() * RECORD;
    let out = &mut out[..len];
    out.fill(0);
    // IPv4 header: version 4, IHL 6 (with the Router Alert option), TTL 1.
    out[0] = 0x46;
    out[1] = 0xc0; // DSCP CS6, as the kernel marks IGMP
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = 1;
    out[9] = IGMP_PROTOCOL;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&REPORTS_GROUP.octets());
    out[20..24].copy_from_slice(&[0x94, 0x04, 0, 0]);
    let c = checksum(&out[..IP_HEADER]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    let igmp = &mut out[IP_HEADER..];
    igmp[0] = V3_REPORT;
    igmp[6..8].copy_from_slice(&(groups.len() as u16).to_be_bytes());
    for (i, g) in groups.iter().enumerate() {
        let r = &mut igmp[IGMP_HEADER + i * RECORD..][..RECORD];
        r[0] = MODE_IS_EXCLUDE;
        r[4..8].copy_from_slice(&g.octets());
    }
    let c = checksum(igmp);
    igmp[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

/// Whether `packet` is an IGMP packet (of any kind).
pub fn is_igmp(packet: &[u8]) -> bool {
    packet.len() >= 20 && packet[0] >> 4 == 4 && packet[9] == IGMP_PROTOCOL
}

/// The groups an IGMPv3 report says its sender is a member of (for any source), into `out`
/// (cleared first; at most [`MAX_GROUPS`]). None if `packet` is not a well-formed report with
/// a valid checksum.
pub fn read_report(packet: &[u8], out: &mut Vec<Ipv4Addr>) -> Option<()> {
    out.clear();
    if !is_igmp(packet) {
        return None;
    }
    let ihl = (packet[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    if ihl < 20 || total > packet.len() || total < ihl + IGMP_HEADER {
        return None;
    }
    let igmp = &packet[ihl..total];
    if igmp[0] != V3_REPORT || checksum(igmp) != 0 {
        return None;
    }
    let records = u16::from_be_bytes([igmp[6], igmp[7]]) as usize;
    let mut at = IGMP_HEADER;
    for _ in 0..records {
        let r = igmp.get(at..at + RECORD)?;
        let aux = r[1] as usize * 4;
        let sources = u16::from_be_bytes([r[2], r[3]]) as usize;
        let group = Ipv4Addr::new(r[4], r[5], r[6], r[7]);
        at += RECORD + sources * 4 + aux;
        if at > igmp.len() {
            return None;
        }
        // "Exclude nothing" or "exclude some sources": the group is wanted.
        let member = matches!(r[0], MODE_IS_EXCLUDE | CHANGE_TO_EXCLUDE)
            || (matches!(r[0], MODE_IS_INCLUDE | CHANGE_TO_INCLUDE) && sources > 0);
        if member && group.is_multicast() && !out.contains(&group) && out.len() < MAX_GROUPS {
            out.push(group);
        }
    }
    Some(())
}

/// The groups joined on interface `iface`, from the text of `/proc/net/igmp` (sorted).
///
/// ```text
/// (tabs shown as spaces)
/// Idx    Device    : Count Querier    Group    Users Timer    Reporter
/// 5    lanmesh0  :     2      V3
///                 3C0200E0     1 0:00000000        0
/// ```
/// Groups are in hex, in the byte order of the machine (they are stored in network order).
pub fn parse_proc_igmp(text: &str, iface: &str) -> Vec<Ipv4Addr> {
    let mut groups = Vec::new();
    let mut inside = false;
    for line in text.lines().skip(1) {
        if !line.starts_with('\t') {
            // "Idx\tDevice    : ..."
            let device = line.split_whitespace().nth(1).unwrap_or("");
            inside = device.trim_end_matches(':') == iface;
            continue;
        }
        if !inside {
            continue;
        }
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        if let Ok(raw) = u32::from_str_radix(hex, 16) {
            let group = Ipv4Addr::from(raw.to_ne_bytes());
            if group.is_multicast() && groups.len() < MAX_GROUPS {
                groups.push(group);
            }
        }
    }
    groups.sort();
    groups.dedup();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 7);

    #[test]
    fn reports_round_trip_with_valid_checksums() {
        let groups = [
            Ipv4Addr::new(224, 0, 2, 60),
            Ipv4Addr::new(239, 255, 255, 250),
        ];
        let mut buf = [0u8; MAX_REPORT_LEN];
        let n = write_report(SRC, &groups, &mut buf);
        assert_eq!(n, 24 + 8 + 16);
        assert_eq!(checksum(&buf[..24]), 0, "IP header checksum");
        let mut got = Vec::new();
        read_report(&buf[..n], &mut got).unwrap();
        assert_eq!(got, groups);
        // An empty report (left every group) is a report too.
        let n = write_report(SRC, &[], &mut buf);
        read_report(&buf[..n], &mut got).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn damaged_or_foreign_reports_are_refused() {
        let groups = [Ipv4Addr::new(224, 0, 2, 60)];
        let mut buf = [0u8; MAX_REPORT_LEN];
        let n = write_report(SRC, &groups, &mut buf);
        let mut got = Vec::new();
        for i in IP_HEADER..n {
            let mut bad = buf;
            bad[i] ^= 0x10;
            assert!(
                read_report(&bad[..n], &mut got).is_none(),
                "bit flipped at {i}"
            );
        }
        // Truncated, and a record count larger than the packet.
        for len in 0..n {
            assert!(read_report(&buf[..len], &mut got).is_none());
        }
        let mut many = buf;
        many[IP_HEADER + 6..IP_HEADER + 8].copy_from_slice(&500u16.to_be_bytes());
        many[IP_HEADER + 2..IP_HEADER + 4].fill(0);
        let c = checksum(&many[IP_HEADER..n]);
        many[IP_HEADER + 2..IP_HEADER + 4].copy_from_slice(&c.to_be_bytes());
        assert!(read_report(&many[..n], &mut got).is_none());
    }

    #[test]
    fn a_report_never_yields_more_than_max_groups() {
        let groups: Vec<Ipv4Addr> = (0..200u32)
            .map(|i| Ipv4Addr::from(0xe000_0100 + i))
            .collect();
        let mut buf = [0u8; MAX_REPORT_LEN];
        let n = write_report(SRC, &groups, &mut buf);
        assert_eq!(n, MAX_REPORT_LEN);
        let mut got = Vec::new();
        read_report(&buf[..n], &mut got).unwrap();
        assert_eq!(got.len(), MAX_GROUPS);
    }

    #[test]
    fn proc_igmp_is_read_per_interface() {
        let text = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
1\tlo        :     1      V3\n\
\t\t\t\t010000E0     1 0:00000000\t\t0\n\
7\tlanmesh0  :     2      V3\n\
\t\t\t\t3C0200E0     1 0:00000000\t\t0\n\
\t\t\t\t010000E0     1 0:00000000\t\t0\n\
8\teth0      :     1      V3\n\
\t\t\t\tFB0000E0     1 0:00000000\t\t0\n";
        assert_eq!(
            parse_proc_igmp(text, "lanmesh0"),
            vec![Ipv4Addr::new(224, 0, 0, 1), Ipv4Addr::new(224, 0, 2, 60)]
        );
        assert_eq!(
            parse_proc_igmp(text, "eth0"),
            vec![Ipv4Addr::new(224, 0, 0, 251)]
        );
        assert!(parse_proc_igmp(text, "lm1").is_empty());
    }
}
