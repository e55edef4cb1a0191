//! `lanmesh-lan-game`: what LAN games do on the network, for the LAN-party tests and bench.
//!
//! ```text
//! lanmesh-lan-game server --port P --name NAME [--timeout SECS]
//!     a game server: bound to 0.0.0.0:P, answers every `query` datagram with `answer NAME`
//!     by unicast to its sender; prints `query from SRC` for each.
//! lanmesh-lan-game browse --port P --to IP [--to IP]... [--expect N] [--wait-ms MS]
//!     a LAN browser: from a socket bound to 0.0.0.0 (no interface), with SO_BROADCAST, sends
//!     `query` to each IP:P every 250 ms until N distinct servers answered (or MS ms passed,
//!     default 5000); prints `answer NAME from SRC after MS` per new server, then
//!     `found N in MS`.
//! lanmesh-lan-game announce --group G:P --text TEXT [--count N] [--interval-ms MS]
//!     a multicast announcer (Minecraft: 224.0.2.60:4445 every 1500 ms): sends TEXT to the
//!     group from a socket bound to no interface, N times (default 10), MS apart (default 200).
//! lanmesh-lan-game listen --group G:P [--count N] [--timeout SECS]
//!     joins G on the default interface (INADDR_ANY), bound to 0.0.0.0:P; prints
//!     `got TEXT from SRC` per datagram and exits after N (default 1).
//! lanmesh-lan-game flood --to IP:P --pps N --seconds S [--size B]
//!     sends B-byte datagrams (default 64) to IP:P at N a second for S seconds (broadcast
//!     allowed); prints `sent N`.
//! lanmesh-lan-game sink --port P --seconds S
//!     counts datagrams to port P for S seconds; prints `received N`.
//! ```
//!
//! Every command exits with status 2 after its timeout (default 60 s).

use lanmesh_e2e::tool_opts::{fail, Opts};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: lanmesh-lan-game server|browse|announce|listen|flood|sink [--flag value]... (see the source)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        fail(USAGE);
    };
    let opts = Opts::parse(&args[1..], &[], USAGE);
    let timeout = Duration::from_secs(opts.num("--timeout").unwrap_or(60));
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("lanmesh-lan-game: timed out after {} s", timeout.as_secs());
        exit(2);
    });
    let result = match cmd.as_str() {
        "server" => server(&opts),
        "browse" => browse(&opts),
        "announce" => announce(&opts),
        "listen" => listen(&opts),
        "flood" => flood(&opts),
        "sink" => sink(&opts),
        _ => fail(USAGE),
    };
    if let Err(e) = result {
        fail(&format!("lanmesh-lan-game {cmd}: {e}"));
    }
}

fn bind_any(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
}

fn server(opts: &Opts) -> std::io::Result<()> {
    let port: u16 = opts.parsed("--port");
    let name = opts.required("--name");
    let sock = bind_any(port)?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, src) = sock.recv_from(&mut buf)?;
        if &buf[..n] == b"query" {
            println!("query from {src}");
            sock.send_to(format!("answer {name}").as_bytes(), src)?;
        }
    }
}

fn browse(opts: &Opts) -> std::io::Result<()> {
    let port: u16 = opts.parsed("--port");
    let targets: Vec<SocketAddr> = opts
        .all("--to")
        .iter()
        .map(|ip| {
            let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| fail(&format!("--to {ip:?}")));
            SocketAddr::from((ip, port))
        })
        .collect();
    let expect = opts.num("--expect").unwrap_or(u64::MAX) as usize;
    let wait = Duration::from_millis(opts.num("--wait-ms").unwrap_or(5000));
    let sock = bind_any(0)?;
    sock.set_broadcast(true)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let start = Instant::now();
    let mut next_query = start;
    let mut found = BTreeSet::new();
    let mut buf = [0u8; 2048];
    while found.len() < expect && start.elapsed() < wait {
        if Instant::now() >= next_query {
            for t in &targets {
                sock.send_to(b"query", t)?;
            }
            next_query += Duration::from_millis(250);
        }
        if let Ok((n, src)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(name) = text.strip_prefix("answer ") {
                if found.insert(name.to_string()) {
                    println!(
                        "answer {name} from {src} after {:.1}",
                        start.elapsed().as_secs_f64() * 1000.0
                    );
                }
            }
        }
    }
    println!(
        "found {} in {:.1}",
        found.len(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

fn announce(opts: &Opts) -> std::io::Result<()> {
    let group: SocketAddr = opts.parsed("--group");
    let text = opts.required("--text");
    let count = opts.num("--count").unwrap_or(10);
    let interval = Duration::from_millis(opts.num("--interval-ms").unwrap_or(200));
    let sock = bind_any(0)?;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(interval);
        }
        sock.send_to(text.as_bytes(), group)?;
    }
    println!("sent {count}");
    Ok(())
}

fn listen(opts: &Opts) -> std::io::Result<()> {
    let group: SocketAddrV4 = opts.parsed("--group");
    let count = opts.num("--count").unwrap_or(1);
    let sock = bind_any(group.port())?;
    sock.join_multicast_v4(group.ip(), &Ipv4Addr::UNSPECIFIED)?;
    println!("joined {}", group.ip());
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        let (n, src) = sock.recv_from(&mut buf)?;
        println!("got {} from {src}", String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

fn flood(opts: &Opts) -> std::io::Result<()> {
    let to: SocketAddr = opts.parsed("--to");
    let pps = opts.num("--pps").unwrap_or(1000).max(1);
    let seconds = opts.num("--seconds").unwrap_or(1);
    let size = opts.num("--size").unwrap_or(64) as usize;
    let sock = bind_any(0)?;
    sock.set_broadcast(true)?;
    let payload = vec![0x42u8; size];
    let start = Instant::now();
    let total = pps * seconds;
    let mut sent = 0u64;
    while sent < total {
        // Catch up to the schedule in small bursts.
        let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
        if sent >= due.min(total) {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // A full queue (ENOBUFS) drops the datagram, as a busy NIC would.
        let _ = sock.send_to(&payload, to);
        sent += 1;
    }
    println!("sent {sent}");
    Ok(())
}

fn sink(opts: &Opts) -> std::io::Result<()> {
    let port: u16 = opts.parsed("--port");
    let seconds = opts.num("--seconds").unwrap_or(5);
    let sock = bind_any(port)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut received = 0u64;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if sock.recv_from(&mut buf).is_ok() {
            received += 1;
        }
    }
    println!("received {received}");
    Ok(())
}
