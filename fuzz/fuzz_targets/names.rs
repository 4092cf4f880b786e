//! `broker::Name::parse`, `broker::Identifier::parse` and `broker::partition_for_key`.
#![no_main]

use iggy_gateway::broker::{Identifier, MAX_NAME_LEN, Name, partition_for_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&count, key)) = data.split_first() {
        let count = u32::from(count) * 7;
        let partition = partition_for_key(key, count);
        assert!(partition < count.max(1), "partition {partition} of {count}");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Name::parse(text) {
        Ok(name) => {
            assert_eq!(name.as_str(), text);
            assert_eq!(name.to_string(), text);
            assert!(!text.is_empty() && text.len() <= MAX_NAME_LEN);
            assert_eq!(Name::parse(name.as_str()), Ok(name.clone()), "re-parse");
            // Every valid name addresses the stream by name.
            assert_eq!(
                Identifier::parse(text),
                Ok(Identifier::Name(text.to_owned())),
                "a valid Name must read as Identifier::Name"
            );
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
    match Identifier::parse(text) {
        Ok(id) => {
            let shown = id.to_string();
            assert_eq!(
                Identifier::parse(&shown),
                Ok(id.clone()),
                "Display re-parses"
            );
            match &id {
                Identifier::Id(n) => assert_eq!(text.parse::<u32>().ok(), Some(*n)),
                Identifier::Name(name) => {
                    assert_eq!(name, text);
                    assert!(!text.bytes().all(|b| b.is_ascii_digit()));
                    assert!(text.len() <= MAX_NAME_LEN);
                }
            }
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
