//! `lan_input`: what the LAN-party code reads from others: a peer's IGMPv3 group report
//! (`lan::igmp::read_report`, from inside a tunnel) and a DNS query to the node's responder
//! (`names::dns::answer`). Input: selector byte, then the bytes.
//!
//! Asserts: a report yields at most `MAX_GROUPS` distinct multicast groups, and a report
//! written from them reads back to the same groups; a DNS answer is a response to the same
//! id and question, authoritative, with an A record only for a name of the table.
#![no_main]
use hickory_proto::op::{Message, MessageType};
use lanmesh_node::lan::igmp::{read_report, write_report, MAX_GROUPS, MAX_REPORT_LEN};
use lanmesh_node::names::{dns, NameTable};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        let mut groups = Vec::new();
        if read_report(bytes, &mut groups).is_some() {
            assert!(groups.len() <= MAX_GROUPS);
            assert!(groups.iter().all(|g| g.is_multicast()));
            let mut unique = groups.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                groups.len(),
                "a group listed twice: {groups:?}"
            );
            let mut buf = [0u8; MAX_REPORT_LEN];
            let n = write_report(Ipv4Addr::new(100, 64, 0, 9), &groups, &mut buf);
            let mut again = Vec::new();
            read_report(&buf[..n], &mut again).expect("our own report reads");
            assert_eq!(again, groups);
        }
        return;
    }
    let table = NameTable::new(
        "mesh",
        [
            ("alice", Ipv4Addr::new(100, 64, 0, 1)),
            ("bob", Ipv4Addr::new(100, 64, 0, 2)),
        ],
    );
    let Some(reply) = dns::answer(&table, bytes) else {
        return;
    };
    let query = Message::from_vec(bytes).expect("answered, so it parsed");
    let reply = Message::from_vec(&reply).expect("our answer parses");
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert!(reply.metadata.authoritative);
    assert_eq!(reply.queries, query.queries);
    for record in &reply.answers {
        let name = record.name.to_ascii();
        assert!(
            matches!(table.lookup(&name), Some(Some(_))),
            "an answer for {name}, which is not in the table"
        );
    }
});
