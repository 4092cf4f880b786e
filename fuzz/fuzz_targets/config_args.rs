//! `config::Config::load_from` with a fuzzed argument vector (flags and values), then every
//! derived settings accessor. Errors are fine; panics are not.
//!
//! Input: arguments separated by NUL bytes (the program name is added in front).
//!
//! Invariants: an API key never shows in `Debug` output or in the effective settings; hidden
//! settings (API_KEY, CURSOR_SECRET, IGGY_CONNECTION_STRING) are reported as "(redacted)" or
//! "(unset)".
#![no_main]

use iggy_gateway::config::{Config, LoadError};
use libfuzzer_sys::fuzz_target;

const HIDDEN: [&str; 3] = ["API_KEY", "CURSOR_SECRET", "IGGY_CONNECTION_STRING"];

/// The `Debug` output of the default configuration: its field names and default values.
fn default_debug() -> &'static str {
    static DEBUG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DEBUG.get_or_init(|| match Config::load_from(["iggy-gateway"]) {
        Ok((config, _)) => format!("{config:?}"),
        Err(_) => String::new(),
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 4096 {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<&str> = std::iter::once("iggy-gateway")
        .chain(text.split('\0'))
        .collect();
    let (config, settings) = match Config::load_from(args.iter().copied()) {
        Ok(loaded) => loaded,
        Err(LoadError::Info(text) | LoadError::Invalid(text)) => {
            assert!(!text.is_empty());
            return;
        }
    };
    for (name, value) in &settings {
        if HIDDEN.contains(&name.as_str()) {
            assert!(
                value == "(redacted)" || value == "(unset)",
                "{name} shown as {value:?}"
            );
        }
    }
    let debug = format!("{config:?}");
    let _ = config.location();
    let _ = config.default_topic();
    let _ = config.iggy_settings();
    let _ = config.subscribe_settings();
    let layers = config.layer_settings();
    let _ = config.listener_settings(None);
    let _ = config.listener_settings(Some(1024));
    let _ = config.listener_settings(Some(0));
    let _ = config.is_open_to_the_network();
    let _ = config.limits();
    for key in &layers.auth.keys {
        // A key leaked into `Debug` output would be written as `Debug` writes a string: quotes
        // and control characters escaped. Matching the raw text instead took an ordinary value
        // ending in asterisks, then its closing quote, for a key of asterisks and a quote.
        let quoted = format!("{key:?}");
        let escaped = &quoted[1..quoted.len() - 1];
        // Only keys long enough to be unique, that no other argument repeats, and that are not
        // text the output holds anyway (a key spelled like a setting's name).
        let mentions = args.iter().filter(|a| a.contains(key.as_str())).count();
        if key.len() < 12 || mentions > 1 || default_debug().contains(escaped) {
            continue;
        }
        assert!(!debug.contains(escaped), "API key {key:?} in Debug output");
        for (name, value) in &settings {
            assert!(
                !value.contains(key.as_str()),
                "API key {key:?} shown in {name}"
            );
        }
    }
});
