//! The currency list: sorted (it is binary-searched) and made of real codes only.

use super::{CODES, is_iso_4217};

#[test]
fn the_list_is_sorted_and_every_code_is_three_upper_case_letters() {
    assert!(CODES.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(
        CODES
            .iter()
            .all(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()))
    );
}

#[test]
fn real_codes_pass_and_look_alikes_do_not() {
    for code in ["EUR", "USD", "JPY", "CHF", "XAU"] {
        assert!(is_iso_4217(code), "{code}");
    }
    for code in ["eur", "ABC", "XXX", "XTS", "EU", "EURO", ""] {
        assert!(!is_iso_4217(code), "{code}");
    }
}
