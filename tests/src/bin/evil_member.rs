//! `lanmesh-evil-member`: a registered member that misbehaves, for the adversary tests. It
//! speaks the real control protocol (so everything it sends is authenticated) and then uses
//! its session to try to aim traffic at a victim or to churn the mesh.
//!
//! ```text
//! lanmesh-evil-member --coordinator IP:PORT --coordinator-key KEY --bind IP:PORT
//!                     [--auth-key lmk1-...] [--seed N] [--seconds S] [--timeout SECS]
//!                     [--local IP:PORT]...           interface endpoints it reports
//!                     [--punch-every-ms MS]          asks for punches with every peer
//!                     [--forge-src IP:PORT] [--forge-rounds N]
//!                                                    authenticated requests from a forged
//!                                                    source (raw socket), unpadded and padded
//!                     [--flap-every-ms MS]           reports new interface endpoints each time
//!                     [--register-many N]            (instead of joining once) registers N
//!                                                    fresh keys as fast as it is let
//! ```
//!
//! Prints `joined MESH_IP peers N` once registered, then at the end
//! `sent N datagrams B bytes` (B counts IP and UDP headers, like an nftables counter) and, for
//! --register-many, `registered A refused R unanswered U`. Exits 2 on a usage error or when
//! --timeout (default 60 s) passes, 1 when it cannot register.

use lanmesh_e2e::attack::RawSender;
use lanmesh_proto::channel::{transport_receiver, HelloForm, Initiator, Session, MAX_DATAGRAM};
use lanmesh_proto::cookie::CookieOpener;
use lanmesh_proto::header::{ControlHeader, ControlKind};
use lanmesh_proto::messages::{
    self, caps, Change, Hello, PeerInfo, Role, ToCoordinator, ToNode, Welcome, HEARTBEAT_LEN,
    MAX_PLAINTEXT, PUNCH_REQUEST_LEN,
};
use lanmesh_proto::{JoinKey, PublicKey};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

struct Args {
    coordinator: SocketAddr,
    coordinator_key: PublicKey,
    bind: SocketAddr,
    auth_key: Option<JoinKey>,
    seed: u64,
    seconds: f64,
    timeout: f64,
    local: Vec<SocketAddr>,
    punch_every_ms: Option<u64>,
    forge_src: Option<SocketAddrV4>,
    forge_rounds: u32,
    flap_every_ms: Option<u64>,
    register_many: Option<u32>,
}

fn usage(why: &str) -> ! {
    eprintln!("lanmesh-evil-member: {why} (see the source's doc comment for the flags)");
    exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        coordinator: "0.0.0.0:0".parse().expect("valid"),
        coordinator_key: PublicKey([0; 32]),
        bind: "0.0.0.0:0".parse().expect("valid"),
        auth_key: None,
        seed: 1,
        seconds: 0.0,
        timeout: 60.0,
        local: Vec::new(),
        punch_every_ms: None,
        forge_src: None,
        forge_rounds: 1,
        flap_every_ms: None,
        register_many: None,
    };
    let mut have = (false, false, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let bad = |v: &str| -> ! { usage(&format!("bad value {v:?} for {flag}")) };
        match flag.as_str() {
            "--coordinator" => {
                let v = value();
                a.coordinator = v.parse().unwrap_or_else(|_| bad(&v));
                have.0 = true;
            }
            "--coordinator-key" => {
                let v = value();
                a.coordinator_key = v.parse().unwrap_or_else(|_| bad(&v));
                have.1 = true;
            }
            "--bind" => {
                let v = value();
                a.bind = v.parse().unwrap_or_else(|_| bad(&v));
                have.2 = true;
            }
            "--auth-key" => {
                let v = value();
                let k: JoinKey = v.parse().unwrap_or_else(|_| bad(&v));
                a.coordinator_key = k.coordinator;
                have.1 = true;
                a.auth_key = Some(k);
            }
            "--seed" => a.seed = num(&value(), &flag),
            "--seconds" => a.seconds = num(&value(), &flag),
            "--timeout" => a.timeout = num(&value(), &flag),
            "--local" => {
                let v = value();
                a.local.push(v.parse().unwrap_or_else(|_| bad(&v)));
            }
            "--punch-every-ms" => a.punch_every_ms = Some(num(&value(), &flag)),
            "--forge-src" => {
                let v = value();
                a.forge_src = Some(v.parse().unwrap_or_else(|_| bad(&v)));
            }
            "--forge-rounds" => a.forge_rounds = num(&value(), &flag),
            "--flap-every-ms" => a.flap_every_ms = Some(num(&value(), &flag)),
            "--register-many" => a.register_many = Some(num(&value(), &flag)),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if !(have.0 && have.1 && have.2) {
        usage("--coordinator, --coordinator-key (or --auth-key) and --bind are required");
    }
    a
}

fn num<T: std::str::FromStr>(v: &str, flag: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| usage(&format!("bad value {v:?} for {flag}")))
}

/// A tiny deterministic generator (keys, nonces, addresses).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn key(&mut self) -> [u8; 32] {
        let mut k = [0u8; 32];
        for c in k.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        k
    }
}

/// Everything sent, as an nftables counter would count it.
#[derive(Default)]
struct Sent {
    datagrams: u64,
    bytes: u64,
}

impl Sent {
    fn add(&mut self, payload: usize) {
        self.datagrams += 1;
        self.bytes += payload as u64 + 28;
    }
}

struct Member {
    socket: UdpSocket,
    coordinator: SocketAddr,
    session: Session,
    my_index: u32,
    peers: Vec<PeerInfo>,
    mesh_ip: String,
    sent: Sent,
}

fn send(socket: &UdpSocket, sent: &mut Sent, to: SocketAddr, d: &[u8]) {
    if socket.send_to(d, to).is_ok() {
        sent.add(d.len());
    }
}

fn recv(socket: &UdpSocket, until: Instant, buf: &mut [u8]) -> Option<usize> {
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match socket.recv_from(buf) {
            Ok((n, _)) => return Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return None,
        }
    }
}

/// The result of one registration attempt.
enum Joined {
    Member(Box<Member>),
    Refused,
    Unanswered,
}

/// Registers `secret` (following a cookie reply, as nodes do); confirms the session.
fn join(a: &Args, socket: UdpSocket, secret: [u8; 32], rng: &mut Rng, sent: Sent) -> Joined {
    let mut sent = sent;
    let index = rng.next() as u32;
    let hello = Hello {
        timestamp: lanmesh_common::unix_ns(),
        session: index,
        name: "evil".into(),
        join: a.auth_key.map(|k| k.secret),
        local_endpoints: a.local.clone(),
        role: Role::Node,
        capabilities: caps::ALL,
    };
    let Ok(mut init) = Initiator::start(&secret, &a.coordinator_key, &hello, HelloForm::Macs)
    else {
        return Joined::Unanswered;
    };
    let mut buf = [0u8; 2048];
    let mut cookie_used = false;
    send(&socket, &mut sent, a.coordinator, init.datagram());
    let wait = if a.register_many.is_some() {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    let until = Instant::now() + wait;
    let welcome = loop {
        let Some(n) = recv(&socket, until, &mut buf) else {
            return Joined::Unanswered;
        };
        let d = &buf[..n];
        match ControlHeader::parse(d).and_then(|h| h.kind) {
            Some(ControlKind::CookieReply) if !cookie_used => {
                let opener = CookieOpener::for_coordinator(&a.coordinator_key);
                if let Some(c) = opener.open(d, index, &init.mac1().expect("macs")) {
                    cookie_used = true;
                    init.apply_cookie(&c);
                    send(&socket, &mut sent, a.coordinator, init.datagram());
                }
            }
            Some(ControlKind::Welcome) if init.answers(d) => break d.to_vec(),
            _ => {}
        }
    };
    let Ok((w, session)) = init.finish(&welcome) else {
        return Joined::Unanswered;
    };
    let (Welcome::Accepted { mesh, .. }, Some(session)) = (w, session) else {
        return Joined::Refused;
    };
    let mut m = Member {
        socket,
        coordinator: a.coordinator,
        session,
        my_index: index,
        peers: Vec::new(),
        mesh_ip: mesh.map(|m| m.ip.to_string()).unwrap_or_default(),
        sent,
    };
    m.heartbeat(&a.local);
    m.pull_map();
    Joined::Member(Box::new(m))
}

impl Member {
    fn seal(&mut self, msg: &ToCoordinator, pad: usize) -> Vec<u8> {
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = messages::encode(msg, &mut plain, pad).expect("fits");
        let mut out = [0u8; MAX_DATAGRAM];
        let m = self.session.seal(&plain[..n], &mut out).expect("seals");
        out[..m].to_vec()
    }

    fn send_msg(&mut self, msg: &ToCoordinator, pad: usize) {
        let d = self.seal(msg, pad);
        send(&self.socket, &mut self.sent, self.coordinator, &d);
    }

    fn heartbeat(&mut self, local: &[SocketAddr]) {
        let msg = ToCoordinator::Heartbeat {
            map_version: 0,
            local_endpoints: local.to_vec(),
            echo: 0,
        };
        self.send_msg(&msg, HEARTBEAT_LEN);
    }

    /// Reads what the coordinator says for a while (answers challenges, notes the map).
    fn read_for(&mut self, d: Duration, local: &[SocketAddr]) {
        let until = Instant::now() + d;
        let mut buf = [0u8; 2048];
        while let Some(n) = recv(&self.socket, until, &mut buf) {
            let data = buf[..n].to_vec();
            if transport_receiver(&data) != Some(self.my_index) {
                continue;
            }
            let mut plain = [0u8; MAX_DATAGRAM];
            let Ok(p) = self.session.open(&data, &mut plain) else {
                continue;
            };
            let Ok(msg) = messages::decode::<ToNode>(p) else {
                continue;
            };
            match msg {
                ToNode::HeartbeatAck { challenge, .. } if challenge != 0 => {
                    let msg = ToCoordinator::Heartbeat {
                        map_version: 0,
                        local_endpoints: local.to_vec(),
                        echo: challenge,
                    };
                    self.send_msg(&msg, HEARTBEAT_LEN);
                }
                ToNode::PeerPage { peers, .. } => self.peers = peers,
                ToNode::Changes { changes, .. } => {
                    for c in changes {
                        if let Change::Peer(p) = c {
                            self.peers.retain(|q| q.public_key != p.public_key);
                            self.peers.push(p);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn pull_map(&mut self) {
        self.send_msg(
            &ToCoordinator::GetPeers {
                map_version: 0,
                offset: 0,
            },
            MAX_PLAINTEXT,
        );
        self.read_for(Duration::from_millis(300), &[]);
    }

    /// Authenticated requests from a forged source: what a reflection attack would send.
    fn forge(&mut self, raw: &mut RawSender, src: SocketAddrV4) {
        let SocketAddr::V4(dst) = self.coordinator else {
            return;
        };
        let peer = self
            .peers
            .first()
            .map(|p| p.public_key)
            .unwrap_or(PublicKey([1; 32]));
        let requests = [
            (
                ToCoordinator::GetPeers {
                    map_version: 0,
                    offset: 0,
                },
                0,
            ),
            (
                ToCoordinator::GetPeers {
                    map_version: 0,
                    offset: 0,
                },
                MAX_PLAINTEXT,
            ),
            (
                ToCoordinator::GetChanges {
                    since: 1,
                    map_version: 0,
                    offset: 0,
                },
                0,
            ),
            (
                ToCoordinator::Heartbeat {
                    map_version: 0,
                    local_endpoints: vec![],
                    echo: 0,
                },
                0,
            ),
            (ToCoordinator::Punch { peer }, 0),
            (ToCoordinator::Punch { peer }, PUNCH_REQUEST_LEN),
        ];
        for (msg, pad) in &requests {
            let d = self.seal(msg, *pad);
            if raw.send(src, dst, &d).is_ok() {
                self.sent.add(d.len());
            }
        }
    }
}

fn main() {
    let a = parse_args();
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout);
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        eprintln!("lanmesh-evil-member: timed out");
        exit(2);
    });
    let mut rng = Rng(a.seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let socket = UdpSocket::bind(a.bind).unwrap_or_else(|e| {
        eprintln!("lanmesh-evil-member: cannot bind {}: {e}", a.bind);
        exit(1)
    });
    if let Some(n) = a.register_many {
        return register_many(&a, socket, n, &mut rng);
    }
    let secret = rng.key();
    let mut m = match join(&a, socket, secret, &mut rng, Sent::default()) {
        Joined::Member(m) => m,
        Joined::Refused => {
            eprintln!("lanmesh-evil-member: the coordinator refused it");
            exit(1)
        }
        Joined::Unanswered => {
            eprintln!("lanmesh-evil-member: no answer from the coordinator");
            exit(1)
        }
    };
    println!("joined {} peers {}", m.mesh_ip, m.peers.len());
    let mut raw = a.forge_src.map(|_| {
        RawSender::new().unwrap_or_else(|e| {
            eprintln!("lanmesh-evil-member: {e}");
            exit(1)
        })
    });
    if let (Some(raw), Some(src)) = (raw.as_mut(), a.forge_src) {
        for _ in 0..a.forge_rounds {
            m.forge(raw, src);
        }
    }
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut local = a.local.clone();
    let mut next_beat = Instant::now();
    let mut next_punch = Instant::now();
    let mut next_flap = Instant::now();
    let mut round = 0usize;
    while Instant::now() < end {
        let now = Instant::now();
        if let Some(ms) = a.flap_every_ms {
            if now >= next_flap {
                next_flap = now + Duration::from_millis(ms);
                let r = rng.next();
                local = vec![SocketAddr::from((
                    [10, (r >> 8) as u8, (r >> 16) as u8, 1 + (r as u8 % 250)],
                    41641,
                ))];
                next_beat = now;
            }
        }
        if now >= next_beat {
            next_beat = now + Duration::from_secs(2);
            m.heartbeat(&local);
        }
        if let Some(ms) = a.punch_every_ms {
            if now >= next_punch {
                next_punch = now + Duration::from_millis(ms);
                // Rotate, so each peer gets asked first in turn.
                let mut peers: Vec<PublicKey> = m.peers.iter().map(|p| p.public_key).collect();
                if !peers.is_empty() {
                    let k = round % peers.len();
                    peers.rotate_left(k);
                }
                round += 1;
                for peer in peers {
                    m.send_msg(&ToCoordinator::Punch { peer }, PUNCH_REQUEST_LEN);
                }
            }
        }
        m.read_for(Duration::from_millis(20), &local);
    }
    println!("sent {} datagrams {} bytes", m.sent.datagrams, m.sent.bytes);
}

/// Registers `n` fresh keys one after the other from one socket (open mode).
fn register_many(a: &Args, socket: UdpSocket, n: u32, rng: &mut Rng) {
    let (mut ok, mut refused, mut unanswered) = (0, 0, 0);
    let mut sent = Sent::default();
    let mut socket = socket;
    for _ in 0..n {
        let secret = rng.key();
        match join(
            a,
            socket.try_clone().expect("clone"),
            secret,
            rng,
            Sent::default(),
        ) {
            Joined::Member(m) => {
                ok += 1;
                sent.datagrams += m.sent.datagrams;
                sent.bytes += m.sent.bytes;
                socket = m.socket;
            }
            Joined::Refused => refused += 1,
            Joined::Unanswered => unanswered += 1,
        }
    }
    println!("registered {ok} refused {refused} unanswered {unanswered}");
    println!("sent {} datagrams {} bytes", sent.datagrams, sent.bytes);
}
