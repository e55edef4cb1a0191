//! The corpus capture's helper (used by scripts/capture-corpus.sh):
//!
//! ```text
//! seedgen keys                     shell assignments: the lab's fixed private keys (base64),
//!                                  join keys and addresses (the same the fuzz targets use)
//! seedgen init-coordinator DIR     a coordinator data dir with the fixed key and join keys
//! seedgen corpus DATAGRAMS OUTDIR  seeds for every fuzz target, from captured UDP datagrams
//!                                  (lines `seconds src dst hex`), into OUTDIR/<target>/<sha1>
//! ```
//!
//! Captured datagrams are split per target by their first bytes, using the project's own
//! classifier, so the split follows format changes. Entry-point targets get them as records
//! (conversations, see `lanmesh_fuzz`); `messages` gets the plaintexts of captured Hellos
//! (opened with the coordinator's fixed key) and of a short in-memory session with the real
//! control server; `relay_frames` gets each frame with the timestamp that keys it.
use lanmesh_coordinator::control::{ControlServer, Settings};
use lanmesh_coordinator::data_dir::DataDir;
use lanmesh_coordinator::inline_work::run_work_inline;
use lanmesh_coordinator::registry::Registry;
use lanmesh_coordinator::store::{KeyKind, SqliteStore};
use lanmesh_coordinator::store_worker::StoreWorker;
use lanmesh_fuzz::{
    addr, addr_index, at, dt_for_ms, public, secret, seed, static_secret, write_record, ADDR_NAMES,
    COORDINATOR, JOIN_NODE, JOIN_RELAY, RELAY, T0_MS,
};
use lanmesh_proto::channel::{HelloForm, IncomingHello, Initiator, Session, MAX_DATAGRAM};
use lanmesh_proto::header::{classify, ControlHeader, ControlKind, PacketClass};
use lanmesh_proto::messages::{
    self, caps, Hello, Role, ToCoordinator, ToNode, HEARTBEAT_LEN, HELLO_PLAINTEXT, MAX_PLAINTEXT,
    PUNCH_REQUEST_LEN,
};
use lanmesh_proto::relay::BindKey;
use lanmesh_proto::{JoinKey, PublicKey};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["keys"] => keys(),
        ["init-coordinator", dir] => init_coordinator(Path::new(dir)),
        ["corpus", datagrams, out] => corpus(Path::new(datagrams), Path::new(out)),
        _ => {
            eprintln!("usage: seedgen keys | init-coordinator DIR | corpus DATAGRAMS OUTDIR");
            std::process::exit(2);
        }
    }
}

fn keys() {
    for (name, s) in [
        ("COORDINATOR", seed::COORDINATOR),
        ("NODE_A", seed::NODE_A),
        ("NODE_B", seed::NODE_B),
        ("NODE_C", seed::NODE_C),
        ("NODE_D", seed::NODE_D),
        ("RELAY", seed::RELAY),
    ] {
        println!("{name}_KEY={}", base64(&secret(s)));
    }
    let coordinator = public(seed::COORDINATOR);
    for (name, join) in [("NODE", JOIN_NODE), ("RELAY", JOIN_RELAY)] {
        let key = JoinKey {
            coordinator,
            secret: join,
        };
        println!("{name}_JOIN_KEY={key}");
    }
    for (name, i) in [
        ("NODE_A", 0),
        ("NODE_B", 1),
        ("NODE_C", 2),
        ("NODE_D", 3),
        ("RELAY", RELAY),
        ("COORDINATOR", COORDINATOR),
    ] {
        println!("{name}_ADDR={}", ADDR_NAMES[i]);
    }
}

fn write_key(path: &Path, key: &[u8; 32]) {
    if path.exists() {
        return;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    writeln!(f, "{}", base64(key)).unwrap();
}

fn init_coordinator(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    write_key(&dir.join("coordinator.key"), &secret(seed::COORDINATOR));
    let dd = DataDir::open(Some(dir), None).expect("open the data dir");
    assert_eq!(
        dd.public,
        public(seed::COORDINATOR),
        "the data dir has another key"
    );
    for (join, relay) in [(JOIN_NODE, false), (JOIN_RELAY, true)] {
        let kind = KeyKind {
            reusable: true,
            relay,
        };
        // Fails (harmlessly) when the key is already there.
        let _ = dd.store.add_key(&join, kind, None, 0);
    }
}

struct Datagram {
    ms: u64,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

fn read_datagrams(path: &Path) -> Vec<Datagram> {
    let text = fs::read_to_string(path).expect("read the datagrams");
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [t, src, dst, hex] = f[..] else {
            continue;
        };
        let payload = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        out.push(Datagram {
            ms: (t.parse::<f64>().unwrap() * 1000.0) as u64,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            payload,
        });
    }
    out
}

/// The seeds of one target, deduplicated, at most `max`.
struct Seeds {
    target: &'static str,
    max: usize,
    files: Vec<Vec<u8>>,
    seen: HashSet<Vec<u8>>,
}

impl Seeds {
    fn new(target: &'static str, max: usize) -> Seeds {
        Seeds {
            target,
            max,
            files: Vec::new(),
            seen: HashSet::new(),
        }
    }
    fn add(&mut self, seed: Vec<u8>) {
        if self.files.len() < self.max && self.seen.insert(seed.clone()) {
            self.files.push(seed);
        }
    }
    fn write(&self, out: &Path) {
        let dir: PathBuf = out.join(self.target);
        fs::create_dir_all(&dir).unwrap();
        for f in &self.files {
            let name = sha1_smol::Sha1::from(f).digest().to_string();
            fs::write(dir.join(name), f).unwrap();
        }
        println!("{:>18}: {} seeds", self.target, self.files.len());
    }
}

/// A short label of what a datagram is: class and control kind.
fn label(d: &[u8]) -> (PacketClass, Option<ControlKind>, u8) {
    let class = classify(d);
    let kind = ControlHeader::parse(d).and_then(|h| h.kind);
    (
        class,
        kind,
        if class == PacketClass::WireGuard {
            d[0]
        } else {
            0
        },
    )
}

/// Picks up to `per_kind` datagrams of each label (and distinct lengths first).
fn sample<'a>(ds: impl Iterator<Item = &'a Datagram>, per_kind: usize) -> Vec<&'a Datagram> {
    let mut by_label: BTreeMap<String, Vec<&Datagram>> = BTreeMap::new();
    for d in ds {
        by_label
            .entry(format!("{:?}", label(&d.payload)))
            .or_default()
            .push(d);
    }
    let mut out = Vec::new();
    for (_, v) in by_label {
        let mut lens = HashSet::new();
        let (first, rest): (Vec<_>, Vec<_>) =
            v.into_iter().partition(|d| lens.insert(d.payload.len()));
        out.extend(first.into_iter().chain(rest).take(per_kind));
    }
    out
}

/// Records of a conversation (`dt` from the capture's timing; `src` the lab address index,
/// unknown addresses as the stranger).
fn conversation(ds: &[&Datagram]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut last = ds.first().map_or(0, |d| d.ms);
    for d in ds {
        let src = addr_index(d.src).unwrap_or(7);
        write_record(
            &mut out,
            dt_for_ms(d.ms.saturating_sub(last)),
            src,
            0,
            &d.payload,
        );
        last = d.ms;
    }
    out
}

/// Seeds for an entry-point target: every datagram alone, and conversations (the first
/// datagrams per source, then windows over everything).
fn entry_seeds(seeds: &mut Seeds, prefix: &[u8], ds: &[&Datagram]) {
    for d in sample(ds.iter().copied(), 4) {
        seeds.add([prefix, &conversation(&[d])].concat());
    }
    let mut by_src: BTreeMap<SocketAddr, Vec<&Datagram>> = BTreeMap::new();
    for d in ds {
        by_src.entry(d.src).or_default().push(d);
    }
    for v in by_src.values() {
        seeds.add([prefix, &conversation(&v[..v.len().min(12)])].concat());
    }
    for w in ds.chunks(40).take(6) {
        seeds.add([prefix, &conversation(w)].concat());
    }
    seeds.add([prefix, &conversation(&ds[..ds.len().min(120)])].concat());
}

fn corpus(datagrams: &Path, out: &Path) {
    let all = read_datagrams(datagrams);
    println!("{} datagrams captured", all.len());
    let coordinator_key = secret(seed::COORDINATOR);
    let to = |a: SocketAddr| all.iter().filter(move |d| d.dst == a).collect::<Vec<_>>();
    let control = |d: &&Datagram| classify(&d.payload) == PacketClass::Control;
    let kind = |d: &Datagram| ControlHeader::parse(&d.payload).and_then(|h| h.kind);

    let mut header = Seeds::new("header", 40);
    for d in sample(all.iter(), 3) {
        header.add(d.payload.clone());
    }

    let mut stun_seeds = Seeds::new("stun", 20);
    for d in sample(
        all.iter()
            .filter(|d| classify(&d.payload) == PacketClass::Stun),
        8,
    ) {
        stun_seeds.add(d.payload.clone());
    }

    let mut probe = Seeds::new("probe", 20);
    for d in sample(
        all.iter().filter(|d| kind(d) == Some(ControlKind::Probe)),
        20,
    ) {
        probe.add(d.payload.clone());
    }

    let mut hello = Seeds::new("channel_hello", 20);
    for d in sample(
        all.iter()
            .filter(|d| matches!(kind(d), Some(ControlKind::Hello | ControlKind::Welcome))),
        8,
    ) {
        hello.add(d.payload.clone());
    }

    let mut transport = Seeds::new("channel_transport", 20);
    for d in sample(
        all.iter()
            .filter(|d| kind(d) == Some(ControlKind::Transport)),
        12,
    ) {
        transport.add(conversation(&[d]));
    }
    // Seal from each side, deliver, replay, change a byte, cut short.
    let mut s = Vec::new();
    for (src, op, data) in [
        (0, 1, &b"\x00\x05\x00"[..]),
        (1, 1, b"\x01\x00"),
        (0, 2, b"\x00"),
        (0, 2, b"\x01"),
        (0, 2, b"\x00"),
        (0, 3, b"\x00\x14\x01"),
        (0, 4, b"\x01\x20"),
    ] {
        write_record(&mut s, 0, src, op, data);
    }
    transport.add(s);

    // Relay frames, each with the timestamp that keys its session.
    let relay = public(seed::RELAY);
    let members: Vec<(PublicKey, BindKey)> = [seed::NODE_A, seed::NODE_B, seed::NODE_C]
        .iter()
        .map(|&s| {
            let k = BindKey::derive(&static_secret(s), &public(s), &relay);
            (public(s), k)
        })
        .collect();
    let mut created: HashMap<u32, u64> = HashMap::new();
    let mut answered: HashSet<(PublicKey, u64)> = HashSet::new();
    let mut first_session = u32::MAX;
    for d in all
        .iter()
        .filter(|d| kind(d) == Some(ControlKind::RelayBound))
    {
        for (m, k) in &members {
            if let Some(b) = k.open_bound(&d.payload) {
                created.insert(b.session, b.created);
                answered.insert((*m, b.timestamp));
                first_session = first_session.min(b.session);
            }
        }
    }
    let mut frames = Seeds::new("relay_frames", 30);
    let relay_kinds = [
        ControlKind::RelayBind,
        ControlKind::RelayBound,
        ControlKind::RelaySend,
        ControlKind::RelayDeliver,
    ];
    for d in sample(
        all.iter()
            .filter(|d| kind(d).is_some_and(|k| relay_kinds.contains(&k))),
        7,
    ) {
        let ts = match kind(d) {
            Some(ControlKind::RelaySend) => {
                let idx = u32::from_le_bytes(d.payload[4..8].try_into().unwrap());
                created.get(&idx).copied().unwrap_or(0)
            }
            Some(ControlKind::RelayBind) => members
                .iter()
                .find_map(|(_, k)| k.open_bind(&d.payload))
                .unwrap_or(0),
            _ => 0,
        };
        frames.add([&ts.to_le_bytes()[..], &d.payload].concat());
    }

    // Messages: captured Hellos, opened with the coordinator's key.
    let mut msgs = Seeds::new("messages", 40);
    for d in all.iter().filter(|d| kind(d) == Some(ControlKind::Hello)) {
        if let Ok(incoming) = IncomingHello::read(&coordinator_key, &d.payload) {
            let mut plain = [0u8; HELLO_PLAINTEXT];
            let n = messages::encode(&incoming.hello, &mut plain, HELLO_PLAINTEXT).unwrap();
            msgs.add([&[0u8][..], &plain[..n]].concat());
        }
    }
    session_messages(&mut msgs);

    // Entry points: what each of them received in the lab.
    let mut coordinator = Seeds::new("coordinator", 40);
    let to_coordinator = to(addr(COORDINATOR));
    entry_seeds(&mut coordinator, &[2], &to_coordinator);

    let mut forwarder = Seeds::new("forwarder", 40);
    // Only the binds the lab relay answered (earlier ones came before it knew its members),
    // so the target's relay opens the same sessions in the same order as the lab's did, and
    // the captured Send frames verify.
    let to_relay: Vec<&Datagram> = to(addr(RELAY))
        .into_iter()
        .filter(|d| {
            kind(d) != Some(ControlKind::RelayBind)
                || members.iter().any(|(m, k)| {
                    k.open_bind(&d.payload)
                        .is_some_and(|ts| answered.contains(&(*m, ts)))
                })
        })
        .collect();
    let fs_prefix = [&[0u8][..], &first_session.wrapping_sub(1).to_le_bytes()].concat();
    entry_seeds(&mut forwarder, &fs_prefix, &to_relay);

    // The client: what node a got from the coordinator, with a session seed that makes its
    // first Hello carry the index the captured Welcome answers.
    let mut client = Seeds::new("control_client", 30);
    let to_a: Vec<&Datagram> = to(addr(0))
        .into_iter()
        .filter(|d| d.src == addr(COORDINATOR))
        .collect();
    let welcome_index = to_a
        .iter()
        .find(|d| kind(d) == Some(ControlKind::Welcome))
        .map(|d| u32::from_le_bytes(d.payload[8..12].try_into().unwrap()))
        .unwrap_or(1);
    let c_prefix = [&[0u8][..], &welcome_index.wrapping_sub(1).to_le_bytes()].concat();
    entry_seeds(&mut client, &c_prefix, &to_a);

    let mut mesh = Seeds::new("node_mesh", 40);
    let to_a_mesh: Vec<&Datagram> = to(addr(0))
        .into_iter()
        .filter(|d| d.src != addr(COORDINATOR))
        .filter(|d| {
            !control(d)
                || kind(d).is_some_and(|k| k == ControlKind::Probe || relay_kinds.contains(&k))
        })
        .collect();
    entry_seeds(&mut mesh, &[7], &to_a_mesh);

    for s in [
        &header,
        &stun_seeds,
        &probe,
        &hello,
        &transport,
        &frames,
        &msgs,
        &coordinator,
        &forwarder,
        &client,
        &mesh,
    ] {
        s.write(out);
    }
    // The replay window needs no capture: counters in order, a gap, a replay, a jump.
    let mut replay = Seeds::new("replay", 4);
    let mut r = Vec::new();
    for (mode, v) in [
        (0u8, 0u64),
        (1, 0),
        (1, 5),
        (3, 0),
        (2, 3),
        (0, 5000),
        (2, 1024),
        (4, 0),
    ] {
        r.push(mode);
        r.extend_from_slice(&v.to_le_bytes());
    }
    replay.add(r);
    replay.write(out);
}

/// Plaintexts of a short session with the real control server (three nodes and a relay:
/// Hellos, Welcomes, heartbeats and their acks, pages of peers and of changes, a punch, a
/// goodbye), its work run inline.
fn session_messages(msgs: &mut Seeds) {
    let store = SqliteStore::in_memory();
    let kind = KeyKind {
        reusable: true,
        relay: false,
    };
    store.add_key(&JOIN_NODE, kind, None, T0_MS).unwrap();
    let relay_kind = KeyKind {
        reusable: true,
        relay: true,
    };
    store.add_key(&JOIN_RELAY, relay_kind, None, T0_MS).unwrap();
    let mut server = ControlServer::new(
        public(seed::COORDINATOR),
        Vec::new(),
        Registry::new("100.64.0.0/10".parse().unwrap(), 60_000),
        Settings {
            open: false,
            heartbeat_secs: 15,
            stun_port: Some(3480),
            open_max_nodes: 64,
            ..Settings::default()
        },
        at(T0_MS),
        T0_MS,
        1,
    );
    let mut worker = StoreWorker::new(store);
    let mut exchange = |server: &mut ControlServer, now: u64, src: SocketAddr, d: &[u8]| {
        server.handle_datagram(at(now), src, d);
        let coordinator = secret(seed::COORDINATOR);
        run_work_inline(server, &mut worker, &coordinator, at(now), now, false);
        std::iter::from_fn(|| server.poll_transmit()).collect::<Vec<_>>()
    };
    let mut plain = [0u8; MAX_DATAGRAM];
    let mut sessions: Vec<(usize, Session)> = Vec::new();
    let ids = [
        (seed::NODE_A, 0usize),
        (seed::NODE_B, 1),
        (seed::NODE_C, 2),
        (seed::RELAY, RELAY),
    ];
    let mut now = T0_MS;
    for (i, &(s, at)) in ids.iter().enumerate() {
        let hello = Hello {
            timestamp: 1,
            session: 100 + i as u32,
            name: format!("n{s}"),
            join: Some(if s == seed::RELAY {
                JOIN_RELAY
            } else {
                JOIN_NODE
            }),
            local_endpoints: vec![format!("10.0.0.{s}:41641").parse().unwrap()],
            role: if s == seed::RELAY {
                Role::Relay
            } else {
                Role::Node
            },
            capabilities: caps::ALL,
        };
        let mut p = [0u8; MAX_PLAINTEXT];
        let m = messages::encode(&hello, &mut p, HELLO_PLAINTEXT).unwrap();
        msgs.add([&[0u8][..], &p[..m]].concat());
        let init = Initiator::start(
            &secret(s),
            &public(seed::COORDINATOR),
            &hello,
            HelloForm::Macs,
        )
        .unwrap();
        for t in exchange(&mut server, now, addr(at), init.datagram()) {
            if t.dst == addr(at) && init.answers(&t.payload) {
                let (welcome, session) = init.finish(&t.payload).unwrap();
                let m = messages::encode(&welcome, &mut p, 0).unwrap();
                msgs.add([&[1u8][..], &p[..m]].concat());
                sessions.push((at, session.unwrap()));
                break;
            }
        }
    }
    let b = public(seed::NODE_B);
    let heartbeat = |echo| ToCoordinator::Heartbeat {
        map_version: 1,
        local_endpoints: vec![
            "10.0.0.1:41641".parse().unwrap(),
            "[fd00::1]:41641".parse().unwrap(),
        ],
        echo,
    };
    let mut challenge = 0;
    for step in 0..7 {
        let msg = match step {
            0 => heartbeat(0),
            1 => heartbeat(challenge),
            2 => ToCoordinator::GetPeers {
                map_version: 5,
                offset: 0,
            },
            3 => ToCoordinator::GetChanges {
                since: 1,
                map_version: 5,
                offset: 0,
            },
            4 => ToCoordinator::Punch { peer: b },
            5 => heartbeat(0),
            _ => ToCoordinator::Goodbye,
        };
        now += 300;
        server.handle_timeout(at(now));
        let pad = match msg {
            ToCoordinator::GetPeers { .. } | ToCoordinator::GetChanges { .. } => MAX_PLAINTEXT,
            ToCoordinator::Punch { .. } => PUNCH_REQUEST_LEN,
            ToCoordinator::Heartbeat { .. } => HEARTBEAT_LEN,
            ToCoordinator::Goodbye => 0,
        };
        let mut p = [0u8; MAX_PLAINTEXT];
        let m = messages::encode(&msg, &mut p, pad).unwrap();
        msgs.add([&[2u8][..], &p[..m]].concat());
        // Every node speaks (each confirms its session), node a sends the message above.
        for (k, (at, session)) in sessions.iter_mut().enumerate() {
            let body = if k == 0 {
                &p[..m]
            } else {
                &p[..m.min(HEARTBEAT_LEN)]
            };
            let mut out = [0u8; MAX_DATAGRAM];
            let n = session.seal(body, &mut out).unwrap();
            let src = addr(*at);
            for t in exchange(&mut server, now, src, &out[..n]) {
                if t.dst == src {
                    if let Ok(p) = session.open(&t.payload, &mut plain) {
                        if let Ok(ToNode::HeartbeatAck { challenge: c, .. }) =
                            messages::decode::<ToNode>(p)
                        {
                            if k == 0 && c != 0 {
                                challenge = c;
                            }
                        }
                        msgs.add([&[3u8][..], p].concat());
                    }
                }
            }
        }
    }
}
