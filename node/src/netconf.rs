//! Putting the mesh on this machine: the TUN interface with the node's mesh IP, and policy
//! routing that sends the mesh network into it without ever capturing the node's own underlay
//! traffic (real CGNAT uses 100.64.0.0/10 too):
//!
//! - the node's UDP socket marks its packets with [`FWMARK`]; rule 5250 sends marked packets to
//!   the main table only, so WireGuard and control traffic never loops into the TUN;
//! - rule 5260 lets the main table win with any route more specific than a default route, so an
//!   underlay subnet inside the mesh range stays on its interface;
//! - rule 5270 looks up table [`TABLE`], which holds only the mesh network via the TUN.

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::process::Command;
use tracing::debug;

pub const FWMARK: u32 = 0x4c4d;
pub const TABLE: u32 = 5252;
const RULES: [(u32, &str); 3] = [
    (5250, "fwmark 0x4c4d lookup main"),
    (5260, "lookup main suppress_prefixlength 0"),
    (5270, "lookup 5252"),
];
/// Room on a 1500-byte path (PPPoE's 1492 too) for WireGuard's 32 bytes, a relay frame's 64
/// and IPv4/UDP's 28: relayed packets must not fragment.
pub const MTU: u16 = 1360;

fn ip(args: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("the `ip` command is missing: install iproute2")
            }
            _ => anyhow::anyhow!("cannot run `ip {args}`: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "`ip {args}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates the TUN interface `name` with `mesh_ip`/32.
pub fn create_tun(name: &str, mesh_ip: Ipv4Addr) -> anyhow::Result<tun_rs::AsyncDevice> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: load the tun module (sudo modprobe tun)");
    }
    tun_rs::DeviceBuilder::new()
        .name(name)
        .ipv4(mesh_ip, 32, None)
        .mtu(MTU)
        .build_async()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "not allowed to create interface {name}: run with sudo (needs CAP_NET_ADMIN)"
            ),
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("no TUN support: load the tun module (sudo modprobe tun)")
            }
            _ => anyhow::anyhow!("cannot create interface {name}: {e}"),
        })
}

/// Routes `network` into the interface, with the policy rules described above.
pub fn install_routes(iface: &str, mesh_ip: Ipv4Addr, network: Ipv4Net) -> anyhow::Result<()> {
    remove_rules();
    ip(&format!(
        "route replace {network} dev {iface} src {mesh_ip} table {TABLE}"
    ))
    .context("cannot route the mesh network into the interface")?;
    for (prio, rule) in RULES {
        ip(&format!("-4 rule add priority {prio} {rule}"))
            .context("cannot add the mesh routing rules")?;
    }
    Ok(())
}

/// Changes the interface's address (the coordinator handed out a different one).
pub fn readdress(
    iface: &str,
    old: Ipv4Addr,
    new: Ipv4Addr,
    network: Ipv4Net,
) -> anyhow::Result<()> {
    ip(&format!("addr del {old}/32 dev {iface}"))?;
    ip(&format!("addr add {new}/32 dev {iface}"))?;
    install_routes(iface, new, network)
}

/// Removes our rules (also stale ones left by a crashed daemon). Routes go with the interface.
pub fn remove_rules() {
    for (prio, _) in RULES {
        // A rule may have been added more than once by a crashed predecessor.
        for _ in 0..8 {
            if ip(&format!("-4 rule del priority {prio}")).is_err() {
                break;
            }
        }
    }
    let _ = ip(&format!("route flush table {TABLE}"));
    debug!("mesh routing rules removed");
}

/// Whether this process may configure the network (root or CAP_NET_ADMIN).
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return lanmesh_common::is_root();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}
