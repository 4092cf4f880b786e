use tonic::Code;

use super::Validate;
use crate::proto;

/// The field a refusal names, from its BadRequest detail.
fn refused_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

#[test]
fn a_stream_name_follows_the_rules_its_proto_declares() {
    let named = |name: &str| proto::CreateStreamRequest { name: name.into() }.validate();
    assert!(named("orders").is_ok());
    assert!(named("2024-orders").is_ok());
    assert!(named(&"é".repeat(127)).is_ok(), "254 bytes");
    for bad in ["", "123", ".", "..", "tab\there", &"é".repeat(128)] {
        let err = named(bad).expect_err(bad);
        assert_eq!(refused_field(&err), "name", "{bad:?}");
    }
    assert_eq!(
        named("").expect_err("empty").message(),
        "name: must not be empty"
    );
    assert_eq!(
        named(&"é".repeat(128)).expect_err("long").message(),
        "name: must be at most 255 bytes, got 256"
    );
}

#[test]
fn an_identifier_is_a_name_or_an_id_that_fits_32_bits() {
    let at = |stream: &str| {
        proto::GetStreamRequest {
            stream: stream.into(),
        }
        .validate()
    };
    for good in ["0", "4294967295", "0004294967295", "orders", "1a", "."] {
        assert!(at(good).is_ok(), "{good:?}");
    }
    for bad in ["", "4294967296", "99999999999"] {
        assert_eq!(refused_field(&at(bad).expect_err(bad)), "stream", "{bad:?}");
    }
}

#[test]
fn an_empty_value_skips_the_rules_of_a_field_that_ignores_it() {
    // An empty consumer means "none"; a given one must be a valid identifier.
    let poll = |consumer: &str| proto::PollMessagesRequest {
        stream: "s".into(),
        topic: "t".into(),
        consumer: consumer.into(),
        count: 1,
        ..Default::default()
    };
    assert!(poll("").validate().is_ok());
    assert!(poll("reader").validate().is_ok());
    assert_eq!(
        refused_field(&poll("4294967296").validate().expect_err("id out of range")),
        "consumer"
    );
}

#[test]
fn counts_and_required_fields_are_checked() {
    let poll = proto::PollMessagesRequest {
        stream: "s".into(),
        topic: "t".into(),
        count: 0,
        ..Default::default()
    };
    assert_eq!(
        poll.validate().expect_err("count 0").message(),
        "count: must be at least 1, got 0"
    );
    let store = proto::StoreConsumerOffsetRequest {
        stream: "s".into(),
        topic: "t".into(),
        consumer: "c".into(),
        partition_id: 0,
        offset: None,
    };
    assert_eq!(
        store.validate().expect_err("no offset").message(),
        "offset: is required"
    );
    let partitions = |count: u32| proto::CreatePartitionsRequest {
        stream: "s".into(),
        topic: "t".into(),
        partitions_count: count,
    };
    assert!(partitions(1000).validate().is_ok());
    assert_eq!(
        refused_field(&partitions(1001).validate().expect_err("1001")),
        "partitions_count"
    );
}

#[test]
fn nested_messages_are_checked_under_their_path() {
    let send = |ids: [&str; 2]| proto::SendMessagesRequest {
        stream: "s".into(),
        topic: "t".into(),
        partitioning: None,
        messages: ids
            .iter()
            .map(|id| proto::Message {
                id: (*id).into(),
                headers: Default::default(),
                body: Some(proto::message::Body::Text("x".into())),
            })
            .collect(),
    };
    assert!(
        send(["", "0190f7c4-1f2e-7a3b-8c4d-5e6f708192a3"])
            .validate()
            .is_ok()
    );
    let err = send(["", "not-a-uuid"]).validate().expect_err("bad id");
    assert_eq!(refused_field(&err), "messages[1].id");
    let empty = proto::SendMessagesRequest {
        stream: "s".into(),
        topic: "t".into(),
        ..Default::default()
    };
    assert_eq!(
        refused_field(&empty.validate().expect_err("no messages")),
        "messages"
    );
    let keyed = proto::SendMessagesRequest {
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionKey(
            String::new(),
        )),
        ..send([""; 2])
    };
    assert_eq!(
        refused_field(&keyed.validate().expect_err("empty key")),
        "partition_key"
    );
}

#[test]
fn a_path_is_written_as_the_client_wrote_the_request() {
    use super::At;
    let root = At::Root;
    let item = At::Item(&root, "messages", 2);
    assert_eq!(At::Field(&root, "stream").to_string(), "stream");
    assert_eq!(At::Field(&item, "id").to_string(), "messages[2].id");
    let entry = At::Entry(&item, "headers", "trace");
    assert_eq!(
        At::Field(&entry, "kind").to_string(),
        "messages[2].headers[trace].kind"
    );
    assert_eq!(
        At::Item(&At::Field(&root, "a"), "b", 0).to_string(),
        "a.b[0]"
    );
}

/// Of several bad entries of a map, the least key's is named, whatever order the map holds
/// them in: a `HashMap` orders its entries anew each time it is built (and REST's decode and
/// gRPC's build it apart), and one request must be refused one way.
#[test]
fn of_several_bad_map_entries_the_least_key_is_named() {
    let refused = |entries: &[(&str, &str)]| {
        let headers = entries
            .iter()
            .map(|(key, value)| {
                let value = proto::HeaderValue {
                    kind: Some(proto::header_value::Kind::StringValue((*value).into())),
                };
                ((*key).to_owned(), value)
            })
            .collect();
        let send = proto::SendMessagesRequest {
            stream: "s".into(),
            topic: "t".into(),
            partitioning: None,
            messages: vec![proto::Message {
                id: String::new(),
                headers,
                body: Some(proto::message::Body::Text("x".into())),
            }],
        };
        refused_field(&send.validate().expect_err("a bad header"))
    };
    // Each map is built anew, with a hasher of its own: 32 orders, one answer.
    for _ in 0..32 {
        let values = [("w8mpa", ""), ("iijd2siil", ""), ("ok", "v"), ("b", "")];
        assert_eq!(refused(&values), "messages[0].headers[b].string_value");
        let keys = [("gateway-body", "v"), ("", "v"), ("ok", "v")];
        assert_eq!(refused(&keys), "messages[0].headers[]");
    }
}
