//! Peer names: `alice.mesh` (and `alice` where the resolver allows) for every node of the
//! mesh, this one included. The names are the coordinator's unique names; the domain is the
//! network's (`coordinator serve --domain`, `mesh` by default).
//!
//! Two ways onto the machine, chosen by [`Backend`]:
//! - with systemd-resolved: split DNS for the domain on the mesh interface ([`resolved`]),
//!   answered by a small DNS responder the node runs on its mesh IP ([`dns`]);
//! - without it: a marker-delimited block in /etc/hosts ([`hosts`]), rewritten when names
//!   change and removed on `node down` (and at the next start after a crash).
//!
//! This file holds the pure part: the table of names. The OS is touched only by
//! [`hosts::write`] and [`resolved::serves_this_machine`], which the driver
//! (`crate::name_service`) calls.

pub mod dns;
pub mod hosts;
pub mod resolved;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Names resolve for this long in caches (seconds): peers join and leave.
pub const TTL_SECS: u32 = 5;

/// How names get onto this machine (`node up --dns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// systemd-resolved if it serves this machine, else /etc/hosts.
    Auto,
    Resolved,
    Hosts,
    Off,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "resolved" => Ok(Backend::Resolved),
            "hosts" => Ok(Backend::Hosts),
            "off" => Ok(Backend::Off),
            _ => Err(format!(
                "unknown --dns {s:?}: use auto, resolved, hosts or off"
            )),
        }
    }
}

/// Every name of the mesh and its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    domain: String,
    /// Lowercase name (a DNS label) → mesh IP.
    names: BTreeMap<String, Ipv4Addr>,
}

/// Whether `name` can be a DNS label: letters, digits and inner hyphens, 1 to 63 bytes.
fn is_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl NameTable {
    /// The table of `domain` with `entries` (name, mesh IP). Names that are no DNS label are
    /// left out (the coordinator's names are labels; an older one's might not be).
    pub fn new<'a>(domain: &str, entries: impl IntoIterator<Item = (&'a str, Ipv4Addr)>) -> Self {
        let names = entries
            .into_iter()
            .filter(|(name, _)| is_label(name))
            .map(|(name, ip)| (name.to_ascii_lowercase(), ip))
            .collect();
        NameTable {
            domain: domain.to_ascii_lowercase(),
            names,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `(name, mesh IP)` in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.names.iter().map(|(n, ip)| (n.as_str(), *ip))
    }

    /// The full name of `name`: `alice.mesh`.
    pub fn fqdn(&self, name: &str) -> String {
        format!("{}.{}", name.to_ascii_lowercase(), self.domain)
    }

    /// What a name inside the domain asks for: `Some(Some(ip))` for a name of the mesh,
    /// `Some(None)` for a name inside the domain that nobody has, `None` for a name outside
    /// the domain. Case-insensitive; a trailing dot is allowed.
    pub fn lookup(&self, name: &str) -> Option<Option<Ipv4Addr>> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name == self.domain {
            return Some(None);
        }
        let host = name.strip_suffix(&format!(".{}", self.domain))?;
        Some(self.names.get(host).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> NameTable {
        NameTable::new(
            "mesh",
            [
                ("alice", Ipv4Addr::new(100, 64, 0, 1)),
                ("Bob", Ipv4Addr::new(100, 64, 0, 2)),
                ("not a label", Ipv4Addr::new(100, 64, 0, 3)),
            ],
        )
    }

    #[test]
    fn names_in_the_domain_resolve_case_insensitively() {
        let t = table();
        assert_eq!(
            t.lookup("alice.mesh"),
            Some(Some(Ipv4Addr::new(100, 64, 0, 1)))
        );
        assert_eq!(
            t.lookup("BOB.Mesh."),
            Some(Some(Ipv4Addr::new(100, 64, 0, 2)))
        );
        assert_eq!(
            t.lookup("carol.mesh"),
            Some(None),
            "in the domain, nobody's"
        );
        assert_eq!(t.lookup("mesh"), Some(None));
        assert_eq!(
            t.lookup("alice.mesh.example.com"),
            None,
            "outside the domain"
        );
        assert_eq!(
            t.lookup("alice"),
            None,
            "bare names come from the search domain"
        );
        assert_eq!(
            t.entries().count(),
            2,
            "a name that is no DNS label is left out"
        );
        assert_eq!(t.fqdn("Bob"), "bob.mesh");
    }

    #[test]
    fn backends_parse() {
        assert_eq!("auto".parse(), Ok(Backend::Auto));
        assert_eq!("hosts".parse(), Ok(Backend::Hosts));
        assert!("dnsmasq".parse::<Backend>().is_err());
    }
}
