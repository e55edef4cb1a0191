//! Putting the mesh on this machine: the TUN interface with the node's mesh IP, and policy
//! routing that sends the mesh network into it without ever capturing the node's own underlay
//! traffic (real CGNAT uses 100.64.0.0/10 too):
//!
//! - the node's UDP socket marks its packets with [`FWMARK`]; rule 5250 sends marked packets to
//!   the main table only, so WireGuard and control traffic never loops into the TUN;
//! - rule 5260 lets the main table win with any route more specific than a default route, so an
//!   underlay subnet inside the mesh range stays on its interface;
//! - rule 5270 looks up table [`TABLE`], which holds only the mesh network via the TUN.
//!
//! With LAN traffic on (broadcast and multicast, see `crate::lan`), the interface looks like a
//! LAN to programs that enumerate interfaces: the mesh IP carries the network's prefix and
//! broadcast address (100.64.0.5/10 brd 100.127.255.255, without a prefix route: table
//! [`TABLE`] does the routing), and table [`TABLE`] also routes 255.255.255.255 and
//! 224.0.0.0/4 into the TUN. That catches what games send: a limited broadcast or a multicast
//! from a socket bound to no interface, and a multicast join on the default interface. Sockets
//! bound to an interface (DHCP clients, the physical LAN's services) never consult these
//! routes, and the main table still wins with a 224.0.0.0/4 or 255.255.255.255 route of its
//! own.

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

/// Creates the TUN interface `name` (up, without an address: see [`set_address`]).
pub fn create_tun(name: &str) -> anyhow::Result<tun_rs::AsyncDevice> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: load the tun module (sudo modprobe tun)");
    }
    tun_rs::DeviceBuilder::new()
        .name(name)
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

/// How the mesh sits on the interface: its address and whether LAN traffic is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshPlacement {
    pub mesh_ip: Ipv4Addr,
    pub network: Ipv4Net,
    pub lan: bool,
}

/// Where the broadcast and multicast routes point.
const LAN_DESTINATIONS: [&str; 2] = ["255.255.255.255/32", "224.0.0.0/4"];

/// The `ip addr` arguments for `p`: with LAN traffic, the network's prefix and broadcast
/// address without a prefix route; without, a /32.
pub fn address_args(p: &MeshPlacement) -> String {
    if p.lan {
        format!(
            "{}/{} broadcast {} noprefixroute",
            p.mesh_ip,
            p.network.prefix_len(),
            p.network.broadcast()
        )
    } else {
        format!("{}/32", p.mesh_ip)
    }
}

/// The routes of table [`TABLE`] for `p` (each an `ip route replace` argument list).
pub fn route_args(iface: &str, p: &MeshPlacement) -> Vec<String> {
    let mut routes = vec![format!(
        "{} dev {iface} src {} table {TABLE}",
        p.network, p.mesh_ip
    )];
    if p.lan {
        for dst in LAN_DESTINATIONS {
            routes.push(format!("{dst} dev {iface} src {} table {TABLE}", p.mesh_ip));
        }
    }
    routes
}

/// Puts the mesh IP on the interface (replacing `old`, if it had one).
pub fn set_address(
    iface: &str,
    old: Option<&MeshPlacement>,
    new: &MeshPlacement,
) -> anyhow::Result<()> {
    if let Some(old) = old {
        let _ = ip(&format!("addr del {} dev {iface}", address_args(old)));
    }
    ip(&format!("addr add {} dev {iface}", address_args(new)))
        .context("cannot put the mesh IP on the interface")
}

/// Routes the mesh (and with LAN traffic, broadcast and multicast) into the interface, with
/// the policy rules described above.
pub fn install_routes(iface: &str, p: &MeshPlacement) -> anyhow::Result<()> {
    remove_rules();
    for route in route_args(iface, p) {
        ip(&format!("route replace {route}"))
            .context("cannot route the mesh network into the interface")?;
    }
    for (prio, rule) in RULES {
        ip(&format!("-4 rule add priority {prio} {rule}"))
            .context("cannot add the mesh routing rules")?;
    }
    Ok(())
}

/// Moves the interface from `old` to `new` (another mesh IP, or LAN traffic switched).
pub fn replace(iface: &str, old: &MeshPlacement, new: &MeshPlacement) -> anyhow::Result<()> {
    set_address(iface, Some(old), new)?;
    install_routes(iface, new)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(lan: bool) -> MeshPlacement {
        MeshPlacement {
            mesh_ip: Ipv4Addr::new(100, 64, 0, 5),
            network: "100.64.0.0/10".parse().unwrap(),
            lan,
        }
    }

    #[test]
    fn with_lan_traffic_the_interface_looks_like_a_lan() {
        assert_eq!(
            address_args(&placement(true)),
            "100.64.0.5/10 broadcast 100.127.255.255 noprefixroute"
        );
        assert_eq!(
            route_args("lm0", &placement(true)),
            [
                "100.64.0.0/10 dev lm0 src 100.64.0.5 table 5252",
                "255.255.255.255/32 dev lm0 src 100.64.0.5 table 5252",
                "224.0.0.0/4 dev lm0 src 100.64.0.5 table 5252",
            ]
        );
    }

    #[test]
    fn without_lan_traffic_only_the_mesh_is_routed() {
        assert_eq!(address_args(&placement(false)), "100.64.0.5/32");
        assert_eq!(
            route_args("lm0", &placement(false)),
            ["100.64.0.0/10 dev lm0 src 100.64.0.5 table 5252"]
        );
    }
}
