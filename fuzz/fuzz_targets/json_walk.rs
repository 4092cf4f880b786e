//! `rest::shape::inspect` (the walk every JSON body takes before it is parsed) against
//! serde_json's own reading of the same bytes.
#![no_main]

use iggy_gateway::rest::shape::{Expect, count_values, inspect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(walked) = inspect(data, &Expect::Any, None, &mut |_| true) else {
        // A key given twice: a finding, before any point where the two could disagree.
        return;
    };
    // The walk ends where serde_json's reading ends: whole on what it takes, short on what it
    // refuses, and counts the values it counts.
    let counted = count_values(data);
    assert_eq!(
        walked.finished,
        counted.is_ok(),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    if let Ok(values) = counted {
        assert_eq!(walked.values, values);
    }
});
