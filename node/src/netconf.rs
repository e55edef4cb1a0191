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
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::route::{RouteHeader, RouteMessage};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{AddressMessageBuilder, Handle, IpVersion, RouteMessageBuilder};
use std::net::Ipv4Addr;
use tracing::debug;

pub const FWMARK: u32 = 0x4c4d;
pub const TABLE: u32 = 5252;
/// Our policy rules by priority: marked packets (our own socket) to main; main when it has a
/// route more specific than a default route; then table [`TABLE`].
const RULE_MARKED: u32 = 5250;
const RULE_MAIN_SPECIFIC: u32 = 5260;
const RULE_MESH: u32 = 5270;
const RULES: [u32; 3] = [RULE_MARKED, RULE_MAIN_SPECIFIC, RULE_MESH];
/// Room on a 1500-byte path (PPPoE's 1492 too) for WireGuard's 32 bytes, a relay frame's 64
/// and IPv4/UDP's 28: relayed packets must not fragment.
pub const MTU: u16 = 1360;

/// Creates the TUN interface `name` (up, without an address: see [`set_address`]), with a
/// virtio-net header and TCP/UDP segmentation offload when `offload` is set.
pub fn create_tun(name: &str, offload: bool) -> anyhow::Result<tun_rs::AsyncDevice> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: load the tun module (sudo modprobe tun)");
    }
    tun_rs::DeviceBuilder::new()
        .name(name)
        .mtu(MTU)
        .offload(offload)
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
const LAN_DESTINATIONS: [(Ipv4Addr, u8); 2] =
    [(Ipv4Addr::BROADCAST, 32), (Ipv4Addr::new(224, 0, 0, 0), 4)];

/// How the mesh IP sits on the interface for `p`: with LAN traffic, the network's prefix and
/// broadcast address without a prefix route (`100.64.0.5/10 brd 100.127.255.255
/// noprefixroute`); without, a /32. Returns the prefix length and whether it is LAN-like.
pub fn address_prefix(p: &MeshPlacement) -> u8 {
    if p.lan {
        p.network.prefix_len()
    } else {
        32
    }
}

/// The routes of table [`TABLE`] for `p`: the mesh network, and with LAN traffic the
/// broadcast and multicast destinations, all into the interface from the mesh IP.
pub fn routes(p: &MeshPlacement) -> Vec<Ipv4Net> {
    let mut routes = vec![p.network];
    if p.lan {
        routes.extend(
            LAN_DESTINATIONS
                .iter()
                .map(|&(ip, len)| Ipv4Net::new(ip, len).expect("valid prefix")),
        );
    }
    routes
}

/// The node's handle on the kernel's routing (netlink): the interface's address, the routes
/// of table [`TABLE`] and the policy rules.
pub struct Netlink {
    handle: Handle,
}

fn netlink_error(e: rtnetlink::Error) -> anyhow::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code.map(|c| -c.get()) {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                anyhow::anyhow!("the kernel refused (needs CAP_NET_ADMIN): run with sudo")
            }
            _ => anyhow::anyhow!("the kernel refused: {}", m.to_io()),
        },
        e => anyhow::anyhow!("netlink: {e}"),
    }
}

impl Netlink {
    /// Opens the netlink socket (on the running tokio runtime).
    pub fn open() -> anyhow::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .context("cannot open a netlink socket to configure the network")?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    async fn index(&self, iface: &str) -> anyhow::Result<u32> {
        let link = self
            .handle
            .link()
            .get()
            .match_name(iface.to_string())
            .execute()
            .try_next()
            .await
            .map_err(netlink_error)
            .with_context(|| format!("cannot find interface {iface}"))?;
        match link {
            Some(l) => Ok(l.header.index),
            None => bail!("interface {iface} is gone"),
        }
    }

    /// Puts the mesh IP on the interface (replacing `old`, if it had one).
    pub async fn set_address(
        &self,
        iface: &str,
        old: Option<&MeshPlacement>,
        new: &MeshPlacement,
    ) -> anyhow::Result<()> {
        let index = self.index(iface).await?;
        if let Some(old) = old {
            let message = AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(old.mesh_ip, address_prefix(old))
                .build();
            let _ = self.handle.address().del(message).execute().await;
        }
        let mut request = self
            .handle
            .address()
            .add(index, new.mesh_ip.into(), address_prefix(new));
        if new.lan {
            // The builder adds the broadcast address; the network is routed by table TABLE.
            let flags = AddressAttribute::Flags(AddressFlags::Noprefixroute);
            request.message_mut().attributes.push(flags);
        }
        request
            .replace()
            .execute()
            .await
            .map_err(netlink_error)
            .context("cannot put the mesh IP on the interface")
    }

    /// Routes the mesh (and with LAN traffic, broadcast and multicast) into the interface, with
    /// the policy rules described above.
    pub async fn install_routes(&self, iface: &str, p: &MeshPlacement) -> anyhow::Result<()> {
        self.remove_rules().await;
        let index = self.index(iface).await?;
        for dst in routes(p) {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len())
                .output_interface(index)
                .pref_source(p.mesh_ip)
                .table_id(TABLE)
                .build();
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(netlink_error)
                .context("cannot route the mesh network into the interface")?;
        }
        let main = RouteHeader::RT_TABLE_MAIN as u32;
        let rules: [(u32, u32, Option<RuleAttribute>); 3] = [
            (RULE_MARKED, main, Some(RuleAttribute::FwMark(FWMARK))),
            (
                RULE_MAIN_SPECIFIC,
                main,
                Some(RuleAttribute::SuppressPrefixLen(0)),
            ),
            (RULE_MESH, TABLE, None),
        ];
        for (priority, table, extra) in rules {
            let mut request = self
                .handle
                .rule()
                .add()
                .v4()
                .priority(priority)
                .table_id(table)
                .action(RuleAction::ToTable);
            request.message_mut().attributes.extend(extra);
            request
                .execute()
                .await
                .map_err(netlink_error)
                .context("cannot add the mesh routing rules")?;
        }
        Ok(())
    }

    /// Moves the interface from `old` to `new` (another mesh IP, or LAN traffic switched).
    pub async fn replace(
        &self,
        iface: &str,
        old: &MeshPlacement,
        new: &MeshPlacement,
    ) -> anyhow::Result<()> {
        self.set_address(iface, Some(old), new).await?;
        if !new.lan || !old.lan {
            // Broadcast and multicast routes come or go with the LAN switch.
            self.flush_table().await;
        }
        self.install_routes(iface, new).await
    }

    /// Removes our rules (also stale ones left by a crashed daemon) and the routes of table
    /// [`TABLE`] (routes through the interface also go with it).
    pub async fn remove_rules(&self) {
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        for rule in rules {
            let ours = rule
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Priority(p) if RULES.contains(p)));
            if ours {
                let _ = self.handle.rule().del(rule).execute().await;
            }
        }
        self.flush_table().await;
        debug!("mesh routing rules removed");
    }

    async fn flush_table(&self) {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(TABLE)
            .build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        for route in routes.into_iter().filter(|r| route_table(r) == TABLE) {
            let _ = self.handle.route().del(route).execute().await;
        }
    }
}

/// The table a route is in (large ids are in an attribute).
fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            netlink_packet_route::route::RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
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
        assert_eq!(address_prefix(&placement(true)), 10);
        let want: Vec<Ipv4Net> = ["100.64.0.0/10", "255.255.255.255/32", "224.0.0.0/4"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        assert_eq!(routes(&placement(true)), want);
    }

    #[test]
    fn without_lan_traffic_only_the_mesh_is_routed() {
        assert_eq!(address_prefix(&placement(false)), 32);
        assert_eq!(
            routes(&placement(false)),
            ["100.64.0.0/10".parse::<Ipv4Net>().unwrap()]
        );
    }
}
