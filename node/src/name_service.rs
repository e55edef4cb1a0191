//! The daemon's side of peer names (see [`crate::names`]): keeping /etc/hosts or
//! systemd-resolved and the DNS responder in line with the peer map.

use crate::names::{dns, hosts, resolved, Backend, NameTable};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

enum Active {
    Off,
    Hosts(PathBuf),
    /// The responder's socket, once the mesh IP is up.
    Resolved(Option<(UdpSocket, Ipv4Addr)>),
}

pub struct NameService {
    active: Active,
    iface: String,
    table: NameTable,
}

fn run(cmd: &[String]) -> Result<(), String> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NameService {
    /// Picks the backend (`Auto`: resolved if it serves this machine, else /etc/hosts) and
    /// clears what a crashed predecessor left in /etc/hosts.
    pub fn start(backend: Backend, iface: &str) -> NameService {
        let active = match backend {
            Backend::Off => Active::Off,
            Backend::Hosts => Active::Hosts(PathBuf::from(hosts::HOSTS)),
            Backend::Resolved => Active::Resolved(None),
            Backend::Auto if resolved::serves_this_machine() => Active::Resolved(None),
            Backend::Auto => Active::Hosts(PathBuf::from(hosts::HOSTS)),
        };
        let service = NameService {
            active,
            iface: iface.to_string(),
            table: NameTable::default(),
        };
        if let Active::Hosts(path) = &service.active {
            if let Err(e) = hosts::write(path, iface, "") {
                warn!("cannot clean up {}: {e}", path.display());
            }
        }
        service
    }

    /// What serves the names, for `node status`.
    pub fn describe(&self) -> &'static str {
        match self.active {
            Active::Off => "off",
            Active::Hosts(_) => "/etc/hosts",
            Active::Resolved(_) => "systemd-resolved",
        }
    }

    /// The mesh IP is on the interface: with resolved, (re)start the responder on it and
    /// point resolved at it.
    pub async fn attach(&mut self, mesh_ip: Ipv4Addr, domain: &str) {
        let Active::Resolved(current) = &mut self.active else {
            return;
        };
        if current.as_ref().is_some_and(|(_, ip)| *ip == mesh_ip) {
            return;
        }
        *current = None;
        match UdpSocket::bind(SocketAddr::from((mesh_ip, 53))).await {
            Ok(socket) => *current = Some((socket, mesh_ip)),
            Err(e) => {
                warn!("cannot run the DNS responder on {mesh_ip}:53: {e}; peer names will not resolve (try --dns hosts)");
                return;
            }
        }
        for cmd in resolved::setup_commands(&self.iface, mesh_ip, domain) {
            if let Err(e) = run(&cmd) {
                warn!("{e}; peer names may not resolve (try --dns hosts)");
                return;
            }
        }
        info!(%domain, "peer names: systemd-resolved asks this node for *.{domain}");
    }

    /// The names now; rewrites /etc/hosts when they changed.
    pub fn update(&mut self, table: NameTable) {
        if table == self.table {
            return;
        }
        self.table = table;
        if let Active::Hosts(path) = &self.active {
            let block = hosts::block(&self.iface, &self.table);
            match hosts::write(path, &self.iface, &block) {
                Ok(()) => debug!(
                    names = self.table.entries().count(),
                    "peer names written to {}",
                    path.display()
                ),
                Err(e) => warn!("cannot write peer names to {}: {e}", path.display()),
            }
        }
    }

    /// The name `name` resolves as here (`alice.mesh`), if names are on and it resolves to
    /// `ip`.
    pub fn dns_name(&self, name: &str, ip: Ipv4Addr) -> Option<String> {
        let fqdn = self.table.fqdn(name);
        let on = !matches!(self.active, Active::Off);
        (on && self.table.lookup(&fqdn) == Some(Some(ip))).then_some(fqdn)
    }

    /// Waits for a DNS query (never returns without the responder).
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match &self.active {
            Active::Resolved(Some((socket, _))) => socket.recv_from(buf).await,
            _ => std::future::pending().await,
        }
    }

    /// Answers a query from `src` (only this machine's own queries: resolved asks from the
    /// mesh IP or loopback; peers have their own responder).
    pub fn answer(&self, src: SocketAddr, query: &[u8]) {
        let Active::Resolved(Some((socket, mesh_ip))) = &self.active else {
            return;
        };
        let local = match src.ip() {
            std::net::IpAddr::V4(ip) => ip == *mesh_ip || ip.is_loopback(),
            std::net::IpAddr::V6(ip) => ip.is_loopback(),
        };
        if !local {
            return;
        }
        if let Some(reply) = dns::answer(&self.table, query) {
            let _ = socket.try_send_to(&reply, src);
        }
    }

    /// Takes the names off the machine (`node down`, or the daemon stopping).
    pub fn stop(&mut self) {
        match &self.active {
            Active::Hosts(path) => {
                if let Err(e) = hosts::write(path, &self.iface, "") {
                    warn!("cannot remove peer names from {}: {e}", path.display());
                }
            }
            Active::Resolved(Some(_)) => {
                for cmd in resolved::revert_commands(&self.iface) {
                    let _ = run(&cmd);
                }
            }
            _ => {}
        }
        self.active = Active::Off;
    }
}
