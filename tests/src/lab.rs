//! The lab: namespaces, the switch, NAT routers, hosts and the processes in them.

use crate::*;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How many log lines per process [`Lab`] prints when a test panics.
const LOG_TAIL_LINES: usize = 60;

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);
static PROC_COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------

/// A host namespace attached to the lab's switch or to a NAT router's LAN.
#[derive(Clone, Debug)]
pub struct Host {
    /// The role given to [`Lab::add_host`], e.g. `"coord"` or `"a"`.
    pub role: String,
    /// The namespace name (pass it to [`Lab::spawn`], [`Lab::exec`], [`Lab::ping`]).
    pub ns: String,
    /// The address of its `eth0`.
    pub ip: Ipv4Addr,
    /// The router it sits behind, if any.
    pub router: Option<String>,
}

/// What kind of NAT a [`Router`] does, in the terms of RFC 4787 ("mapping" = which external
/// port an inside socket gets, "filtering" = which inbound packets reach it).
///
/// Every kind is emulated with nftables in the router's namespace (table `ip lanmesh_lab`,
/// see [`nat_ruleset`]) plus the kernel's connection tracking, and every kind shares:
///
/// - outbound UDP leaves the WAN interface `eth0` through `masquerade`, which maps an inside
///   socket to the same port on the WAN address while that port is free;
/// - the forward chain drops everything from the WAN that is not a reply (conntrack state
///   `established`) or explicitly let in by the kind's own rule (`ct status dnat`);
/// - the router's own input chain silently *drops* unsolicited WAN packets. This matters:
///   an accepted (or ICMP-rejected) packet from a peer would leave a confirmed conntrack
///   entry `peer -> wan:P`, and when the inside host then sends to that peer from port P,
///   masquerade would see the tuple taken and pick another port. Real cone NATs keep their
///   mapping when a peer's packet arrives first, which is exactly what hole punching needs;
///   a dropped packet leaves no conntrack entry behind, so the lab behaves like them.
/// - no hairpinning: the kinds' inbound rules match only packets arriving on `eth0`, so a
///   LAN host sending to the router's WAN address just hits the (dropping) input chain.
///
/// The lab tests in `tests/tests/nat_lab.rs` check every kind's mapping and filtering with
/// `lanmesh-testkit udp-echo`/`udp-probe`, independently of lanmesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// Full cone: endpoint-independent mapping *and* filtering. Once an inside socket has
    /// sent anything out, any host on the internet may send to its mapped `wan:P`.
    ///
    /// Emulation: masquerade, plus a dynamic nftables map `fullcone` from mapped port to the
    /// inside `host . port`, filled (and refreshed) by every UDP packet leaving `eth0` in a
    /// filter chain hooked *after* source NAT (so it sees the mapped port; the inside address
    /// and port come from the conntrack entry). A prerouting rule DNATs inbound UDP on `eth0`
    /// whose destination port is in the map to that inside `host . port`. Entries expire
    /// [`Lab::set_udp_timeout`] seconds (default 30) after the last outbound packet.
    FullCone,
    /// Address-restricted cone: endpoint-independent mapping, address-dependent filtering.
    /// Inbound UDP to `wan:P` gets in from *any port* of an IP address the inside socket has
    /// sent to.
    ///
    /// Emulation: as [`Nat::FullCone`], but the map `addrrestricted` is keyed by
    /// `remote IP . mapped port`, so the prerouting DNAT only matches packets from an address
    /// the inside socket has contacted.
    AddressRestricted,
    /// Port-restricted cone: endpoint-independent mapping, address-and-port-dependent
    /// filtering: only packets from exactly the `ip:port` the inside socket sent to get in.
    ///
    /// Emulation: the plain nftables `masquerade` (it keeps the source port while it can);
    /// conntrack lets in only replies to an existing flow.
    PortRestricted,
    /// Symmetric: address-and-port-dependent mapping (a new random external port for every
    /// new destination `ip:port`) and filtering.
    ///
    /// Emulation: `masquerade random,fully-random`: every new conntrack flow gets a random
    /// port; conntrack lets in only replies.
    Symmetric,
}

impl Nat {
    /// Every kind, from the most to the least permissive.
    pub const ALL: [Nat; 4] = [
        Nat::FullCone,
        Nat::AddressRestricted,
        Nat::PortRestricted,
        Nat::Symmetric,
    ];

    /// A short lowercase name: `full`, `addr`, `port`, `sym`.
    pub fn short(self) -> &'static str {
        match self {
            Nat::FullCone => "full",
            Nat::AddressRestricted => "addr",
            Nat::PortRestricted => "port",
            Nat::Symmetric => "sym",
        }
    }

    /// Whether the same inside socket keeps one external port for every destination.
    pub fn endpoint_independent_mapping(self) -> bool {
        self != Nat::Symmetric
    }

    /// Whether two hosts, one behind `a` and one behind `b`, can in principle open a direct
    /// UDP path by hole punching (both learn their mapped address from a STUN server and
    /// send to each other): every pair except a port-restricted or symmetric NAT facing a
    /// symmetric one, where the side that must let the other in cannot guess its new port.
    pub fn punchable(a: Nat, b: Nat) -> bool {
        let hard = |n: Nat| matches!(n, Nat::PortRestricted | Nat::Symmetric);
        !((a == Nat::Symmetric && hard(b)) || (b == Nat::Symmetric && hard(a)))
    }
}

/// The nftables ruleset of a router of kind `nat`: WAN interface `eth0`, LAN interface
/// `br0` with network `lan` (e.g. `10.1.0.0/24`); the full cone and address-restricted
/// mappings expire `map_timeout_secs` after the last outbound packet. It starts with `flush
/// ruleset`, so loading it replaces whatever the router had, atomically.
pub fn nat_ruleset(nat: Nat, lan: &str, map_timeout_secs: u32) -> String {
    let masquerade = match nat {
        Nat::Symmetric => "masquerade random,fully-random",
        _ => "masquerade",
    };
    // For the cone kinds with endpoint-independent filtering: the map, the rule that fills
    // it after source NAT, and the DNAT rule that lets inbound packets in.
    let cone = match nat {
        Nat::FullCone => Some(("fullcone", "inet_service", "udp sport", "udp dport")),
        Nat::AddressRestricted => Some((
            "addrrestricted",
            "ipv4_addr . inet_service",
            "ip daddr . udp sport",
            "ip saddr . udp dport",
        )),
        Nat::PortRestricted | Nat::Symmetric => None,
    };
    let mut map = String::new();
    let mut dnat = String::new();
    let mut record = String::new();
    let mut forward_dnat = "";
    if let Some((name, key_type, out_key, in_key)) = cone {
        map = format!(
            "  map {name} {{
    type {key_type} : ipv4_addr . inet_service
    flags dynamic, timeout
    timeout {map_timeout_secs}s
  }}
"
        );
        dnat = format!("    iifname \"eth0\" meta l4proto udp dnat ip to {in_key} map @{name}\n");
        // After srcnat the packet carries the mapped port; the inside host and port are the
        // source of the flow's original direction (a flow the inside host started) or of its
        // reply direction (a flow let in by the DNAT rule above).
        record = format!(
            "  chain record {{
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname \"eth0\" meta l4proto udp ct direction original ct original ip saddr {lan} update @{name} {{ {out_key} : ct original ip saddr . ct original proto-src }}
    oifname \"eth0\" meta l4proto udp ct direction reply ct reply ip saddr {lan} update @{name} {{ {out_key} : ct reply ip saddr . ct reply proto-src }}
  }}
"
        );
        forward_dnat = "    iifname \"eth0\" ct status dnat accept\n";
    }
    format!(
        "flush ruleset
table ip lanmesh_lab {{
{map}  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{dnat}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"eth0\" {masquerade}
  }}
{record}  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
{forward_dnat}    iifname \"br0\" accept
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
    iifname \"br0\" accept
    icmp type echo-request accept
  }}
}}
"
    )
}

/// A NAT router: WAN `eth0` on the lab switch (or on another router's LAN, see
/// [`Lab::add_router_behind`]), LAN bridge `br0` with `<a>.<b>.N.1/24` — `10.N.0.1/24` for
/// an ordinary router, `100.64.N.1/24` for a carrier router ([`Lab::add_carrier_router`]).
/// N is unique per lab.
#[derive(Clone, Debug)]
pub struct Router {
    pub role: String,
    pub ns: String,
    /// Its WAN address: on the switch ("the internet"), or on the LAN of `upstream`.
    pub wan_ip: Ipv4Addr,
    /// N in the LAN `10.N.0.0/24` (or `100.64.N.0/24`); unique per lab.
    pub lan_index: u8,
    /// `.1` of the LAN, the hosts' default gateway.
    pub lan_ip: Ipv4Addr,
    /// The kind of NAT it was created with ([`Lab::set_nat`] changes it later; see
    /// [`Lab::nat_of`]).
    pub nat: Nat,
    /// The namespace of the router this one sits behind (double NAT), if any.
    pub upstream: Option<String>,
}

impl Router {
    /// The address `<.1 of the LAN with the last byte replaced by last>`, e.g. `10.N.0.<last>`.
    pub fn lan_addr(&self, last: u8) -> Ipv4Addr {
        let o = self.lan_ip.octets();
        Ipv4Addr::new(o[0], o[1], o[2], last)
    }

    /// The LAN network, e.g. `10.3.0.0/24`.
    pub fn lan_net(&self) -> String {
        format!("{}/24", self.lan_addr(0))
    }
}

/// A process started by [`Lab::spawn`]. Cheap to clone; the lab owns the process itself.
#[derive(Clone, Debug)]
pub struct Proc {
    id: usize,
    pid: u32,
    name: String,
    ns: String,
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The log name given to [`Lab::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn ns(&self) -> &str {
        &self.ns
    }
    /// The file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

struct ProcEntry {
    id: usize,
    child: Child,
    name: String,
    log: PathBuf,
    command: String,
    exited: Option<ExitStatus>,
}

impl ProcEntry {
    /// Reaps the child if it has exited. The PID stays reserved until then, so signalling a
    /// running entry by PID can never hit an unrelated process.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    fn signal(&mut self, sig: libc::c_int) {
        if self.poll().is_none() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }
}

#[derive(Default)]
struct State {
    namespaces: Vec<String>,
    hosts: Vec<Host>,
    routers: Vec<Router>,
    procs: Vec<ProcEntry>,
    next_port: u32,
    next_lan: u8,
    log_names: HashSet<String>,
    /// Per router namespace: its current NAT settings.
    router_conf: HashMap<String, RouterConf>,
    /// Per router namespace: the last bytes of the LAN addresses handed out.
    lan_used: HashMap<String, HashSet<u8>>,
}

/// What a router's ruleset is made from (changes at runtime).
#[derive(Clone, Copy, Debug)]
struct RouterConf {
    nat: Nat,
    map_timeout_secs: u32,
}

/// The default lifetime of an idle full cone / address-restricted mapping, as Linux's
/// `nf_conntrack_udp_timeout`.
const DEFAULT_MAP_TIMEOUT_SECS: u32 = 30;

/// A private network of namespaces plus the processes running in it. See the crate docs.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    switch: String,
    state: Mutex<State>,
}

impl Lab {
    /// Creates the lab: a temp dir and the switch namespace with its bridge. `tag` (shortened
    /// to 8 letters or digits) goes into every namespace name, to tell labs apart.
    pub fn new(tag: &str) -> Lab {
        cleanup_stale_labs();
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("lm-{}-{}-{n}", short_name(tag, 8), std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let lab = Lab {
            switch: format!("{prefix}-sw"),
            prefix,
            dir,
            state: Mutex::new(State {
                next_lan: 1,
                ..State::default()
            }),
        };
        // From here on Drop undoes whatever was created, even if a step below panics.
        let sw = lab.add_namespace("sw");
        must("ip", ["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        must("ip", ["-n", &sw, "link", "set", "br0", "up"]);
        lab
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lab's temp dir: put data and state dirs here. Removed when the lab is dropped
    /// after a passing test; kept after a failure (or with `LANMESH_KEEP_LAB=1`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh subdirectory of [`Lab::dir`].
    pub fn subdir(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        d
    }

    /// The prefix of all namespace names of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The switch ("internet") namespace.
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// Every namespace this lab created.
    pub fn namespaces(&self) -> Vec<String> {
        self.state().namespaces.clone()
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> Vec<Host> {
        self.state().hosts.clone()
    }

    /// The routers added so far.
    pub fn routers(&self) -> Vec<Router> {
        self.state().routers.clone()
    }

    /// Creates an empty namespace `<prefix>-<role>` with `lo` up and returns its name.
    pub fn add_namespace(&self, role: &str) -> String {
        let role = short_name(role, 10);
        let ns = format!("{}-{role}", self.prefix);
        {
            let mut st = self.state();
            assert!(
                !st.namespaces.contains(&ns),
                "role {role:?} used twice in one lab"
            );
            // Recorded before it exists, so that Drop deletes it even if `ip` half-fails.
            st.namespaces.push(ns.clone());
        }
        must("ip", ["netns", "add", &ns]);
        must("ip", ["-n", &ns, "link", "set", "lo", "up"]);
        give_own_etc_files(&ns);
        ns
    }

    /// Plugs `eth0` of namespace `ns` into the switch and gives it `ip/24`.
    fn attach_to_switch(&self, ns: &str, ip: Ipv4Addr) {
        let port = {
            let mut st = self.state();
            st.next_port += 1;
            format!("v{}", st.next_port)
        };
        let sw = self.switch.as_str();
        must(
            "ip",
            [
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        must(
            "ip",
            ["-n", sw, "link", "set", &port, "master", "br0", "up"],
        );
        must(
            "ip",
            ["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        must("ip", ["-n", ns, "link", "set", "eth0", "up"]);
    }

    /// Adds a host on the switch ("the internet") with `eth0` = `ip`/24, normally an address
    /// of 203.0.113.0/24 (coordinator .10, nodes .11, .12, ...).
    pub fn add_host(&self, role: &str, ip: &str) -> Host {
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("bad IPv4 {ip:?}"));
        let ns = self.add_namespace(role);
        self.attach_to_switch(&ns, ip);
        let host = Host {
            role: role.to_string(),
            ns,
            ip,
            router: None,
        };
        self.state().hosts.push(host.clone());
        host
    }

    /// Adds a NAT router: WAN `eth0` = `wan_ip`/24 on the switch, LAN bridge `br0` =
    /// `10.N.0.1/24` (N counts up from 1 per lab), forwarding on, and the nftables NAT of kind
    /// `nat` (see [`Nat`]) for traffic leaving through `eth0`. Unsolicited traffic from the
    /// WAN is dropped, and there is no hairpinning.
    pub fn add_router(&self, role: &str, wan_ip: &str, nat: Nat) -> Router {
        let wan_ip: Ipv4Addr = wan_ip
            .parse()
            .unwrap_or_else(|_| panic!("bad IPv4 {wan_ip:?}"));
        self.new_router(role, None, wan_ip, nat, [10, 0])
    }

    /// Adds a carrier-grade NAT router: like [`Lab::add_router`], but its LAN is
    /// `100.64.N.0/24` (inside 100.64.0.0/10, the shared address space of real CGNAT — and
    /// of the mesh). Put hosts ([`Lab::add_host_behind`]) or home routers
    /// ([`Lab::add_router_behind`]) on it.
    pub fn add_carrier_router(&self, role: &str, wan_ip: &str, nat: Nat) -> Router {
        let wan_ip: Ipv4Addr = wan_ip
            .parse()
            .unwrap_or_else(|_| panic!("bad IPv4 {wan_ip:?}"));
        self.new_router(role, None, wan_ip, nat, [100, 64])
    }

    /// Adds a router behind `outer` (double NAT): its WAN `eth0` is on `outer`'s LAN, at
    /// the first free address from `.200` up, with a default route via `outer`; its own LAN
    /// is `10.N.0.0/24` as for [`Lab::add_router`].
    pub fn add_router_behind(&self, outer: &Router, role: &str, nat: Nat) -> Router {
        let last = {
            let st = self.state();
            let used = st.lan_used.get(&outer.ns);
            (200..=254)
                .find(|l| used.is_none_or(|u| !u.contains(l)))
                .expect("no free address on the outer router's LAN")
        };
        let wan_ip = outer.lan_addr(last);
        self.new_router(role, Some(outer), wan_ip, nat, [10, 0])
    }

    /// Creates a router namespace with its WAN on the switch (`upstream` None) or on the
    /// LAN of `upstream`. `lan` `[10, 0]` gives the LAN `10.N.0.0/24`, `[100, 64]` gives
    /// `100.64.N.0/24`.
    fn new_router(
        &self,
        role: &str,
        upstream: Option<&Router>,
        wan_ip: Ipv4Addr,
        nat: Nat,
        lan: [u8; 2],
    ) -> Router {
        let ns = self.add_namespace(role);
        match upstream {
            None => self.attach_to_switch(&ns, wan_ip),
            Some(outer) => self.attach_to_lan(outer, &ns, wan_ip),
        }
        let lan_index = {
            let mut st = self.state();
            let n = st.next_lan;
            st.next_lan = st.next_lan.checked_add(1).expect("too many routers");
            n
        };
        // 10.N.0.1 for a home router, 100.64.N.1 for a carrier router.
        let lan_ip = if lan[1] == 0 {
            Ipv4Addr::new(lan[0], lan_index, 0, 1)
        } else {
            Ipv4Addr::new(lan[0], lan[1], lan_index, 1)
        };
        must("ip", ["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        must(
            "ip",
            [
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{lan_ip}/24"),
                "dev",
                "br0",
            ],
        );
        must("ip", ["-n", &ns, "link", "set", "br0", "up"]);
        must(
            "ip",
            [
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ],
        );
        let router = Router {
            role: role.to_string(),
            ns,
            wan_ip,
            lan_index,
            lan_ip,
            nat,
            upstream: upstream.map(|o| o.ns.clone()),
        };
        {
            let mut st = self.state();
            st.routers.push(router.clone());
            st.router_conf.insert(
                router.ns.clone(),
                RouterConf {
                    nat,
                    map_timeout_secs: DEFAULT_MAP_TIMEOUT_SECS,
                },
            );
        }
        self.load_ruleset(&router);
        router
    }

    /// Writes the router's current ruleset ([`nat_ruleset`]) to the lab dir and loads it.
    fn load_ruleset(&self, router: &Router) {
        let conf = self.router_conf(router);
        let rules = nat_ruleset(conf.nat, &router.lan_net(), conf.map_timeout_secs);
        let n = {
            let mut st = self.state();
            st.next_port += 1;
            st.next_port
        };
        let file = self.dir.join(format!("nft-{}-{n}.conf", router.role));
        fs::write(&file, rules).expect("write nft rules");
        must(
            "ip",
            [
                OsStr::new("netns"),
                OsStr::new("exec"),
                OsStr::new(&router.ns),
                OsStr::new("nft"),
                OsStr::new("-f"),
                file.as_os_str(),
            ],
        );
    }

    fn router_conf(&self, router: &Router) -> RouterConf {
        *self
            .state()
            .router_conf
            .get(&router.ns)
            .unwrap_or_else(|| panic!("router {} does not belong to this lab", router.role))
    }

    /// The kind of NAT `router` does now (it changes with [`Lab::set_nat`]).
    pub fn nat_of(&self, router: &Router) -> Nat {
        self.router_conf(router).nat
    }

    /// Turns `router` into a NAT of kind `nat` at runtime by replacing its nftables ruleset
    /// in one transaction. Flows already in its conntrack table keep their mappings (flush
    /// them with [`Lab::conntrack_flush`] to start over); the full cone / address-restricted
    /// maps start empty.
    pub fn set_nat(&self, router: &Router, nat: Nat) {
        self.state()
            .router_conf
            .get_mut(&router.ns)
            .unwrap_or_else(|| panic!("router {} does not belong to this lab", router.role))
            .nat = nat;
        self.load_ruleset(router);
    }

    /// Lowers (or raises) how long `router` keeps idle UDP mappings: sets the namespace's
    /// `net.netfilter.nf_conntrack_udp_timeout` and `..._udp_timeout_stream` (Linux
    /// defaults: 30 s unreplied, 120 s once seen both ways) to `secs`, and the full cone /
    /// address-restricted map timeout too (reloading the ruleset, which empties those maps:
    /// call this before traffic starts). Applies to flows created afterwards.
    pub fn set_udp_timeout(&self, router: &Router, secs: u32) {
        for key in ["udp_timeout", "udp_timeout_stream"] {
            must(
                "ip",
                [
                    "netns",
                    "exec",
                    &router.ns,
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("net.netfilter.nf_conntrack_{key}={secs}"),
                ],
            );
        }
        self.state()
            .router_conf
            .get_mut(&router.ns)
            .unwrap_or_else(|| panic!("router {} does not belong to this lab", router.role))
            .map_timeout_secs = secs;
        self.load_ruleset(router);
    }

    /// Makes `router` forget every mapping, as a NAT reboot or an expiry would: `conntrack
    /// -F` in its namespace, and for the full cone / address-restricted kinds also an empty
    /// mapping map. The next outbound packet of a flow creates a new mapping (for the cone
    /// kinds usually the same port again, as masquerade keeps a free source port).
    pub fn conntrack_flush(&self, router: &Router) {
        let out = self.exec(&router.ns, "conntrack", ["-F"]);
        assert!(
            out.status.success(),
            "conntrack -F in {} failed ({}): {}{}",
            router.role,
            out.status,
            stdout(&out),
            stderr(&out)
        );
        let map = match self.nat_of(router) {
            Nat::FullCone => "fullcone",
            Nat::AddressRestricted => "addrrestricted",
            Nat::PortRestricted | Nat::Symmetric => return,
        };
        must(
            "ip",
            [
                "netns",
                "exec",
                &router.ns,
                "nft",
                "flush",
                "map",
                "ip",
                "lanmesh_lab",
                map,
            ],
        );
    }

    /// The conntrack entries of `router` (`conntrack -L`, one line each), for assertions
    /// and debugging.
    pub fn conntrack_list(&self, router: &Router) -> Vec<String> {
        let out = self.exec(&router.ns, "conntrack", ["-L"]);
        stdout(&out)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Plugs `eth0` of namespace `ns` into `router`'s LAN bridge and gives it `ip/24` and a
    /// default route via the router.
    fn attach_to_lan(&self, router: &Router, ns: &str, ip: Ipv4Addr) {
        {
            let mut st = self.state();
            let last = ip.octets()[3];
            let used = st.lan_used.entry(router.ns.clone()).or_default();
            assert!(
                last != 0 && last != 1 && last != 255 && used.insert(last),
                "address {ip} on the LAN of router {} is taken or reserved",
                router.role
            );
        }
        let port = {
            let mut st = self.state();
            st.next_port += 1;
            format!("l{}", st.next_port)
        };
        let r = router.ns.as_str();
        must(
            "ip",
            [
                "-n", r, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        must("ip", ["-n", r, "link", "set", &port, "master", "br0", "up"]);
        must(
            "ip",
            ["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        must("ip", ["-n", ns, "link", "set", "eth0", "up"]);
        must(
            "ip",
            [
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &router.lan_ip.to_string(),
            ],
        );
    }

    /// Adds a host on `router`'s LAN with address `10.N.0.<last>`/24 (`100.64.N.<last>` on
    /// a carrier router) and a default route via the router. Panics if the address is taken.
    pub fn add_host_behind(&self, router: &Router, role: &str, last: u8) -> Host {
        let ip = router.lan_addr(last);
        let ns = self.add_namespace(role);
        self.attach_to_lan(router, &ns, ip);
        let host = Host {
            role: role.to_string(),
            ns,
            ip,
            router: Some(router.ns.clone()),
        };
        self.state().hosts.push(host.clone());
        host
    }

    /// Starts `ip netns exec <ns> <program> <args>` with stdout and stderr going to
    /// `<lab dir>/logs/<log_name>.log` (a numbered name if that one is taken). The lab
    /// tracks the process and ends it when dropped.
    pub fn spawn<I, S>(&self, ns: &str, program: impl AsRef<OsStr>, args: I, log_name: &str) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut st = self.state();
        let base: String = log_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let mut name = base.clone();
        let mut k = 1;
        while st.log_names.contains(&name) {
            k += 1;
            name = format!("{base}.{k}");
        }
        st.log_names.insert(name.clone());
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let file2 = file.try_clone().expect("dup log file");

        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program.as_ref())
            .args(args);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        // Plain log files: no colour escapes.
        cmd.env("NO_COLOR", "1");
        let command = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {command}: {e}"));
        let id = PROC_COUNTER.fetch_add(1, Ordering::SeqCst);
        let proc = Proc {
            id,
            pid: child.id(),
            name: name.clone(),
            ns: ns.to_string(),
            log: log.clone(),
        };
        st.procs.push(ProcEntry {
            id,
            child,
            name,
            log,
            command,
            exited: None,
        });
        proc
    }

    fn with_proc<T>(&self, p: &Proc, f: impl FnOnce(&mut ProcEntry) -> T) -> T {
        let mut st = self.state();
        let entry = st
            .procs
            .iter_mut()
            .find(|e| e.id == p.id)
            .unwrap_or_else(|| panic!("process {} does not belong to this lab", p.name));
        f(entry)
    }

    /// Whether the process is still running.
    pub fn is_running(&self, p: &Proc) -> bool {
        self.with_proc(p, |e| e.poll().is_none())
    }

    /// Sends a signal (e.g. `libc::SIGKILL`) to the process if it still runs.
    pub fn signal(&self, p: &Proc, sig: libc::c_int) {
        self.with_proc(p, |e| e.signal(sig));
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&self, p: &Proc, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.with_proc(p, |e| e.poll()) {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL. Returns the exit status.
    pub fn kill(&self, p: &Proc) -> ExitStatus {
        self.signal(p, libc::SIGTERM);
        if let Some(status) = self.wait_exit(p, TERM_GRACE) {
            return status;
        }
        self.kill_now(p)
    }

    /// SIGKILL right away (a crash). Returns the exit status.
    pub fn kill_now(&self, p: &Proc) -> ExitStatus {
        self.with_proc(p, |e| {
            e.signal(libc::SIGKILL);
            match e.exited {
                Some(status) => status,
                None => {
                    let status = e.child.wait().expect("wait for killed child");
                    e.exited = Some(status);
                    status
                }
            }
        })
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self, p: &Proc) -> String {
        read_lossy(&p.log)
    }

    /// Runs `ip netns exec <ns> <program> <args>` to completion (at most [`EXEC_TIMEOUT`]).
    pub fn exec<I, S>(&self, ns: &str, program: impl AsRef<OsStr>, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_timeout(ns, program, args, EXEC_TIMEOUT)
    }

    /// [`Lab::exec`] with a chosen timeout; panics if the command runs longer.
    pub fn exec_timeout<I, S>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program.as_ref())
            .args(args);
        run_command(cmd, timeout)
    }

    /// Pings `ip` from `ns` `count` times (`ping -c N -W 1 -i 0.2`); true when every probe
    /// was answered.
    pub fn ping(&self, ns: &str, ip: impl Display, count: u32) -> bool {
        self.ping_received(ns, ip, count) == count
    }

    /// How many of `count` pings from `ns` to `ip` were answered.
    pub fn ping_received(&self, ns: &str, ip: impl Display, count: u32) -> u32 {
        let count = count.max(1);
        let n = count.to_string();
        let ip = ip.to_string();
        let timeout = Duration::from_secs(5 + u64::from(count));
        let out = self.exec_timeout(
            ns,
            "ping",
            ["-n", "-q", "-c", &n, "-W", "1", "-i", "0.2", &ip],
            timeout,
        );
        // "3 packets transmitted, 3 received, 0% packet loss, time 404ms"
        stdout(&out)
            .lines()
            .find_map(|l| {
                let rest = l.split("transmitted, ").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// Whether something in `ns` listens on `port` (TCP or UDP), according to `ss`.
    pub fn listening(&self, ns: &str, port: u16) -> bool {
        let filter = format!("sport = :{port}");
        let out = self.exec(ns, "ss", ["-H", "-l", "-n", "-t", "-u", &filter]);
        out.status.success() && !stdout(&out).trim().is_empty()
    }

    /// Starts counting the packets that arrive for namespace `ns` itself (nftables input
    /// hook) and match the nftables expression `expr`, e.g. `ip saddr 203.0.113.30 udp length
    /// 1045`, in a counter called `name` (letters, digits, `_`). Meant for hosts: a router's
    /// ruleset is replaced by [`Lab::set_nat`]. Read it with [`Lab::packets_counted`].
    pub fn count_packets(&self, ns: &str, name: &str, expr: &str) {
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "nft"];
            all.extend_from_slice(args);
            must("ip", all);
        };
        nft(&["add", "table", "ip", "lanmesh_count"]);
        nft(&[
            "add",
            "chain",
            "ip",
            "lanmesh_count",
            "input",
            "{ type filter hook input priority -300 ; policy accept ; }",
        ]);
        nft(&["add", "counter", "ip", "lanmesh_count", name]);
        let rule = format!("add rule ip lanmesh_count input {expr} counter name {name}");
        let words: Vec<&str> = rule.split_whitespace().collect();
        nft(&words);
    }

    /// How many packets the counter `name` of [`Lab::count_packets`] has seen in `ns`.
    pub fn packets_counted(&self, ns: &str, name: &str) -> u64 {
        let out = self.exec(ns, "nft", ["list", "counter", "ip", "lanmesh_count", name]);
        assert!(
            out.status.success(),
            "nft list counter {name} in {ns} failed: {}",
            stderr(&out)
        );
        // "counter lanmesh_count NAME { packets 3 bytes 180 }"
        let text = stdout(&out);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == "packets")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or_else(|| panic!("no packet count in: {text}"))
    }

    /// Whether network interface `ifname` exists in `ns`.
    pub fn has_interface(&self, ns: &str, ifname: &str) -> bool {
        Command::new("ip")
            .args(["-n", ns, "link", "show", "dev", ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Prints the last lines of every process log to stderr.
    pub fn dump_logs(&self) {
        let st = self.state();
        dump_logs(&st.procs);
    }
}

fn dump_logs(procs: &[ProcEntry]) {
    for e in procs {
        let text = read_lossy(&e.log);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        let status = match e.exited {
            Some(s) => s.to_string(),
            None => "running".to_string(),
        };
        eprintln!(
            "----- {} (pid {}, {status}): last {} of {} lines of {}\n      {}",
            e.name,
            e.child.id(),
            lines.len() - from,
            lines.len(),
            e.log.display(),
            e.command
        );
        for l in &lines[from..] {
            eprintln!("  | {l}");
        }
    }
    if !procs.is_empty() {
        eprintln!("----- end of logs");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut st = self.state();

        // 1. End every child: SIGTERM, a grace period, then SIGKILL.
        for e in st.procs.iter_mut() {
            e.signal(libc::SIGTERM);
        }
        let start = Instant::now();
        while st.procs.iter_mut().any(|e| e.poll().is_none()) && start.elapsed() < TERM_GRACE {
            std::thread::sleep(Duration::from_millis(50));
        }
        for e in st.procs.iter_mut() {
            if e.poll().is_none() {
                e.signal(libc::SIGKILL);
                if let Ok(status) = e.child.wait() {
                    e.exited = Some(status);
                }
            }
        }

        // 2. Anything else still running inside our namespaces (started by a child).
        for ns in &st.namespaces {
            kill_pids_in_namespace(ns);
        }

        if panicking {
            eprintln!("===== lab {} failed; process logs:", self.prefix);
            dump_logs(&st.procs);
        }

        // 3. Delete the namespaces (this also removes their veths and bridges).
        for ns in st.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            remove_own_etc_files(ns);
        }

        let keep = std::env::var_os("LANMESH_KEEP_LAB").is_some_and(|v| !v.is_empty() && v != "0");
        if panicking || keep {
            eprintln!("lab files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// SIGKILLs the processes `ip netns pids` reports for a namespace this harness created.
fn kill_pids_in_namespace(ns: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
        .filter(|&p| p > 1)
    {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The lowercased letters and digits of `s`, at most `max` of them (never empty).
fn short_name(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(max)
        .collect();
    if out.is_empty() {
        "x".to_string()
    } else {
        out
    }
}

/// Files that `ip netns exec <ns>` mounts over their namesakes in /etc for what runs in the
/// namespace: every lab namespace gets its own /etc/hosts (nodes write peer names there, and
/// must never touch the machine's) and an /etc/resolv.conf without systemd-resolved.
const NETNS_ETC: &str = "/etc/netns";

fn give_own_etc_files(ns: &str) {
    let dir = Path::new(NETNS_ETC).join(ns);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let files = [
        (
            "hosts",
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        ),
        (
            "resolv.conf",
            "# lanmesh lab namespace: no DNS server\nnameserver 192.0.2.53\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

fn remove_own_etc_files(ns: &str) {
    let _ = fs::remove_dir_all(Path::new(NETNS_ETC).join(ns));
}

/// The hosts file of lab namespace `ns` (what /etc/hosts is inside it).
pub fn hosts_file(ns: &str) -> PathBuf {
    Path::new(NETNS_ETC).join(ns).join("hosts")
}

/// Once per process: deletes namespaces left behind by labs of test processes that no longer
/// exist (killed before their Drop ran), and the processes still inside them.
fn cleanup_stale_labs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(pid) = stale_lab_owner(name) {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    eprintln!("removing stale lab namespace {name}");
                    kill_pids_in_namespace(name);
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                    remove_own_etc_files(name);
                }
            }
        }
    });
}

/// For a namespace named `lm-<tag>-<pid>-<counter>-<role>`, the PID of the process that
/// made it.
fn stale_lab_owner(name: &str) -> Option<u32> {
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() != 5 || parts[0] != "lm" {
        return None;
    }
    parts[3].parse::<u64>().ok()?;
    parts[2].parse().ok()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_are_short_and_parseable() {
        assert_eq!(short_name("three_nodes_mesh", 8), "threenod");
        assert_eq!(short_name("--", 8), "x");
        assert_eq!(stale_lab_owner("lm-smoke-1234-0-sw"), Some(1234));
        assert_eq!(stale_lab_owner("lmdemo-1234-sw"), None);
        assert_eq!(stale_lab_owner("lm-a-b-0-sw"), None);
    }
}
