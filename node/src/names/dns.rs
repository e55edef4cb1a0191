//! The DNS responder's answers (with systemd-resolved, which asks it for the mesh's domain):
//! authoritative A records for the mesh's names, NXDOMAIN for other names in the domain,
//! REFUSED for names outside it. Pure: query bytes in, answer bytes out (hickory-proto is the
//! codec). The driver only passes on queries from this machine.

use super::{NameTable, TTL_SECS};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};

/// Queries larger than this are dropped (a question for one name is far smaller).
pub const MAX_QUERY_LEN: usize = 512;

/// The answer to the DNS message `query`, or None if it is not a standard query with one
/// question (dropped).
pub fn answer(table: &NameTable, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() > MAX_QUERY_LEN {
        return None;
    }
    let request = Message::from_vec(query).ok()?;
    let meta = &request.metadata;
    if meta.message_type != MessageType::Query || meta.op_code != OpCode::Query {
        return None;
    }
    let [question] = request.queries.as_slice() else {
        return None;
    };
    let mut response = Message::response(meta.id, OpCode::Query);
    response.metadata.recursion_desired = meta.recursion_desired;
    response.metadata.authoritative = true;
    response.add_query(question.clone());
    if request.edns.is_some() {
        response.set_edns(Edns::new());
    }
    let name = question.name().to_ascii();
    match table.lookup(&name) {
        None => response.metadata.response_code = ResponseCode::Refused,
        Some(None) => response.metadata.response_code = ResponseCode::NXDomain,
        Some(Some(ip)) => {
            if matches!(question.query_type(), RecordType::A | RecordType::ANY) {
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    TTL_SECS,
                    RData::A(A(ip)),
                ));
            }
            // Other types (AAAA, …) of an existing name: no data, no error.
        }
    }
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::net::Ipv4Addr;

    fn table() -> NameTable {
        NameTable::new("party", [("alice", Ipv4Addr::new(100, 64, 0, 1))])
    }

    fn ask(name: &str, kind: RecordType, edns: bool) -> Message {
        let mut q = Message::new(0x1234, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if edns {
            q.set_edns(Edns::new());
        }
        let bytes = answer(&table(), &q.to_vec().unwrap()).expect("answered");
        Message::from_vec(&bytes).unwrap()
    }

    #[test]
    fn answers_a_records_for_the_mesh_names() {
        let r = ask("Alice.party.", RecordType::A, true);
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.queries.len(), 1);
        assert!(r.edns.is_some(), "EDNS in, EDNS out");
        let [rec] = r.answers.as_slice() else {
            panic!("{r:?}")
        };
        assert_eq!(rec.ttl, TTL_SECS);
        assert_eq!(rec.data, RData::A(A(Ipv4Addr::new(100, 64, 0, 1))));
    }

    #[test]
    fn other_names_and_types() {
        let r = ask("alice.party.", RecordType::AAAA, false);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty() && r.edns.is_none());
        let r = ask("bob.party.", RecordType::A, false);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = ask("example.com.", RecordType::A, false);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn junk_and_non_queries_get_nothing() {
        assert!(answer(&table(), &[]).is_none());
        assert!(answer(&table(), &[0u8; 11]).is_none());
        assert!(answer(&table(), &[0xffu8; 600]).is_none());
        let mut r = Message::response(7, OpCode::Query);
        r.add_query(Query::query(
            Name::from_ascii("alice.party.").unwrap(),
            RecordType::A,
        ));
        assert!(
            answer(&table(), &r.to_vec().unwrap()).is_none(),
            "a response"
        );
        let two = {
            let mut q = Message::new(7, MessageType::Query, OpCode::Query);
            let name = Name::from_ascii("alice.party.").unwrap();
            q.add_query(Query::query(name.clone(), RecordType::A));
            q.add_query(Query::query(name, RecordType::A));
            q.to_vec().unwrap()
        };
        assert!(answer(&table(), &two).is_none(), "two questions");
        // Random bytes never panic.
        let mut x = 0x9e37_79b9_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = answer(&table(), &bytes);
        }
    }
}
