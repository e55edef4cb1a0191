//! A network-namespace lab for lanmesh's end-to-end tests.
//!
//! A [`Lab`] is a small private network built out of Linux network namespaces:
//!
//! ```text
//!                 switch namespace (bridge br0) = "the internet", 203.0.113.0/24
//!        ┌──────────────┬──────────────┬───────────────┬─────────────────────────┐
//!   coordinator       node a         node b        NAT router                carrier NAT router
//!   203.0.113.10   203.0.113.11   203.0.113.12   (WAN 203.0.113.x)         (WAN 203.0.113.y)
//!                                                    │ LAN 10.N.0.1/24          │ LAN 100.64.M.1/24
//!                                                  host 10.N.0.x            home router 100.64.M.200
//!                                                                             │ LAN 10.K.0.1/24
//!                                                                           host 10.K.0.x
//! ```
//!
//! NAT routers come in the four classic kinds of [`Nat`] (full cone, address-restricted,
//! port-restricted, symmetric), none of them hairpins, and they can be chained (double NAT,
//! [`Lab::add_router_behind`]), changed at runtime ([`Lab::set_nat`]) and made to forget
//! their mappings ([`Lab::conntrack_flush`]). The [`udp`] module probes what a router does;
//! `tests/tests/nat_lab.rs` proves every kind behaves as documented.
//!
//! Every namespace is created by the lab and named `lm-<tag>-<pid>-<counter>-<role>`; all
//! veth pairs are created inside those namespaces, so nothing is ever added to (or connected
//! to) the host's own network namespace. Dropping the lab — also while a test panics — kills
//! every process it started and deletes every namespace. On a panic it prints the tail of
//! every process log, so CI output shows why a test failed.
//!
//! The [`mesh`] module has helpers that drive lanmesh's `coordinator`, `node` and `relay`
//! binaries inside a lab; [`transfer`] moves checksummed bytes over TCP with
//! `lanmesh-testkit`, and [`Transfer`] does it in the background (optionally paced) while a
//! test changes the network under it. [`Lab::count_packets`] counts matching packets
//! arriving in a namespace (nftables), to prove what did or did not get through.

pub mod attack;
pub mod mesh;
pub mod sim;
pub mod tool_opts;
pub mod udp;

mod lab;
mod measure;
mod process;
mod transfer;
pub mod world;

pub use lab::*;
pub use measure::*;
pub use process::*;
pub use transfer::*;
