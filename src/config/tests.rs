//! Unit tests of loading: the variable names, every refusal naming its variable in one line,
//! secrets kept out of every output, the test configuration, and the README's table.

use super::*;

#[test]
fn api_keys_never_show_in_debug_output() {
    let mut config = Config::for_tests(":memory:");
    config.auth.api_key = Some("sekrit-1, sekrit-2".parse().expect("keys"));
    let printed = format!("{config:?}");
    assert!(!printed.contains("sekrit"), "{printed}");
    assert!(printed.contains("redacted; 2"));
}

#[test]
fn comma_lists_are_trimmed_and_a_bare_proxy_address_is_its_own_network() {
    let config = Config::try_parse_from([
        "iggy-gateway",
        "--trusted-proxies",
        "10.0.0.0/8, 192.0.2.7 ,2001:db8::1",
        "--auth-bypass-paths",
        "/health, /ready ",
        "--allowed-hosts",
        "a.example, b.example:8080",
        "--cors-allowed-origins",
        "https://a.example , https://b.example",
    ])
    .expect("parses");
    let proxies: Vec<String> = config
        .edge
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::1/128"]);
    assert_eq!(config.auth.auth_bypass_paths, ["/health", "/ready"]);
    let hosts: Vec<String> = config
        .edge
        .allowed_hosts
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(hosts, ["a.example", "b.example:8080"]);
    assert_eq!(
        config.edge.cors_origins(),
        ["https://a.example", "https://b.example"]
    );
    let refused = Config::try_parse_from(["iggy-gateway", "--trusted-proxies", "proxy.local"]);
    assert!(refused.is_err());
}

#[test]
fn the_cursor_secret_and_the_iggy_password_never_show_in_debug_output() {
    let config = Config::try_parse_from([
        "iggy-gateway",
        "--cursor-secret",
        "a-signing-key-of-at-least-32-bytes!",
        "--iggy-connection-string",
        "iggy://user:hunter2-pass@127.0.0.1:8090",
    ])
    .expect("parses");
    let printed = format!("{config:?}");
    assert!(!printed.contains("a-signing-key"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert_eq!(
        config
            .backend
            .iggy_settings()
            .expect("valid")
            .map(|s| s.connection_string),
        Some("iggy://user:hunter2-pass@127.0.0.1:8090".to_owned())
    );
}

#[test]
fn a_rotation_keeps_the_previous_cursor_secret_out_of_every_output_and_needs_the_new_one() {
    let args = [
        "iggy-gateway",
        "--cursor-secret",
        "the-new-signing-key-of-32-bytes-or-more",
        "--cursor-secret-previous",
        "the-old-signing-key-of-32-bytes-or-more",
    ];
    let (config, settings) = Config::load_from(args).expect("loads");
    let printed = format!("{config:?} {settings:?}");
    assert!(!printed.contains("signing-key"), "{printed}");
    assert!(
        settings.contains(&("CURSOR_SECRET_PREVIOUS".into(), "(redacted)".into())),
        "{settings:?}"
    );
    assert!(config.subscriptions.cursor_keys().is_some());
    let refused = |args: &[&str]| match Config::load_from(args.iter().copied()) {
        Err(LoadError::Invalid(line)) => line,
        other => panic!("{args:?} accepted: {other:?}"),
    };
    let line = refused(&[
        "iggy-gateway",
        "--cursor-secret-previous",
        "the-old-signing-key-of-32-bytes-or-more",
    ]);
    assert!(
        line.starts_with("CURSOR_SECRET_PREVIOUS: needs CURSOR_SECRET"),
        "{line}"
    );
    let line = refused(&[
        "iggy-gateway",
        "--cursor-secret",
        "the-new-signing-key-of-32-bytes-or-more",
        "--cursor-secret-previous",
        "old",
    ]);
    assert!(
        line.starts_with("CURSOR_SECRET_PREVIOUS: must be at least 32 bytes"),
        "{line}"
    );
    assert!(!line.contains("old"), "{line}");
}

#[test]
fn the_environment_names_of_the_original_service_are_read() {
    let config = Config::try_parse_from([
        "iggy-gateway",
        "--port",
        "0",
        "--trusted-proxies",
        "10.0.0.0/8,192.168.0.0/16",
        "--cors-allowed-origins",
        "https://a.example,https://b.example",
    ])
    .expect("parses");
    assert_eq!(config.edge.trusted_proxies.len(), 2);
    assert_eq!(config.edge.cors_allowed_origins.len(), 2);
    assert_eq!(config.auth.auth_bypass_paths, ["/health", "/ready"]);
    assert!(Config::try_parse_from(["iggy-gateway", "--trusted-proxies", "not-a-cidr"]).is_err());
    let hosts = Config::try_parse_from([
        "iggy-gateway",
        "--allowed-hosts",
        "gateway.example,localhost:8080,[::1]",
    ])
    .expect("parses");
    let hosts: Vec<String> = hosts
        .edge
        .allowed_hosts
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(hosts, ["gateway.example", "localhost:8080", "[::1]"]);
    let Err(LoadError::Invalid(line)) =
        Config::load_from(["iggy-gateway", "--allowed-hosts", "a b"])
    else {
        panic!("a malformed host is refused");
    };
    assert!(line.starts_with("ALLOWED_HOSTS: "), "{line}");
}

#[test]
fn settings_that_conflict_or_are_too_weak_are_refused_naming_the_variable() {
    let refused = |args: &[&str]| match Config::load_from(args.iter().copied()) {
        Err(LoadError::Invalid(line)) => line,
        other => panic!("{args:?} accepted: {other:?}"),
    };
    let line = refused(&["iggy-gateway", "--cursor-secret", "short"]);
    assert!(
        line.starts_with("CURSOR_SECRET: must be at least 32 bytes"),
        "{line}"
    );
    assert!(
        !line.contains("short"),
        "the secret itself is never printed: {line}"
    );
    let line = refused(&[
        "iggy-gateway",
        "--max-request-body-size",
        "2048",
        "--max-inflight-bytes",
        "1024",
    ]);
    assert!(line.starts_with("MAX_INFLIGHT_BYTES: "), "{line}");
    assert!(Config::load_from(["iggy-gateway", "--cursor-secret", &"k".repeat(32)]).is_ok());
}

#[test]
fn backend_settings_are_checked_at_load_not_at_start_up() {
    let refused = |args: &[&str]| match Config::load_from(args.iter().copied()) {
        Err(LoadError::Invalid(line)) => line,
        other => panic!("{args:?} accepted: {other:?}"),
    };
    assert_eq!(
        refused(&["iggy-gateway", "--iggy-stream", "123"]),
        "IGGY_STREAM=\"123\": must not be made only of digits (that is read as a numeric id)"
    );
    assert_eq!(
        refused(&["iggy-gateway", "--iggy-topic", "999"]),
        "IGGY_TOPIC=\"999\": must not be made only of digits (that is read as a numeric id)"
    );
    assert_eq!(
        refused(&[
            "iggy-gateway",
            "--iggy-connection-string",
            "iggy://user:pass@host:8090",
            "--reconnect-base-delay-ms",
            "5000",
            "--reconnect-max-delay-ms",
            "1000",
        ]),
        "RECONNECT_BASE_DELAY_MS=5000 must not exceed RECONNECT_MAX_DELAY_MS=1000"
    );
    assert_eq!(
        refused(&[
            "iggy-gateway",
            "--iggy-connection-string",
            "http://host:8090"
        ]),
        "IGGY_CONNECTION_STRING must look like iggy://user:password@host:8090"
    );
    // An empty name means no default topic, and the reconnection delays only matter with Iggy.
    assert!(
        Config::load_from(["iggy-gateway", "--iggy-stream", "", "--iggy-topic", "999"]).is_ok()
    );
    assert!(
        Config::load_from([
            "iggy-gateway",
            "--reconnect-base-delay-ms",
            "5000",
            "--reconnect-max-delay-ms",
            "1000",
        ])
        .is_ok()
    );
}

#[test]
fn the_test_configuration_is_the_defaults_with_its_overrides_whatever_the_environment() {
    assert!(
        command_without_environment()
            .get_arguments()
            .all(|arg| arg.get_env().is_none())
    );
    let Ok((mut expected, _)) = Config::load_with(command_without_environment(), ["iggy-gateway"])
    else {
        panic!("defaults load");
    };
    expected.server.port = 0;
    expected.server.data_dir = "/tmp/somewhere".into();
    expected.server.shutdown_timeout = 2;
    expected.telemetry.stats_refresh_interval_ms = 100;
    expected.backend.iggy_pool_size = 2;
    expected.backend.reconnect_base_delay_ms = 100;
    expected.backend.reconnect_max_delay_ms = 1_000;
    expected.backend.operation_timeout_ms = 5_000;
    expected.backend.health_check_interval_ms = 1_000;
    expected.backend.iggy_connect_wait_ms = 500;
    expected.backend.iggy_stream = String::new();
    expected.backend.iggy_topic = String::new();
    expected.limits.rate_limit_rps = 0;
    expected.subscriptions.cursor_secret = Some("test-cursor-secret-of-32-bytes-at-least".into());
    expected.subscriptions.subscribe_idle_poll_ms = 50;
    let config = Config::for_tests("/tmp/somewhere");
    assert_eq!(format!("{config:?}"), format!("{expected:?}"));
    assert!(config.server.host.is_loopback());
    assert_eq!(config.default_topic(), Ok(None));
}

#[test]
fn a_bad_value_is_explained_in_one_line_naming_the_variable() {
    let Err(LoadError::Invalid(line)) =
        Config::load_from(["iggy-gateway", "--batch-max-size", "0"])
    else {
        panic!("0 is refused");
    };
    assert!(line.starts_with("BATCH_MAX_SIZE: "), "{line}");
    assert!(
        line.contains("'0'") && line.contains("1..=100000"),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

#[test]
fn cross_origin_access_is_off_by_default_and_any_origin_needs_a_key() {
    let Ok((config, _)) = Config::load_from(["iggy-gateway"]) else {
        panic!("defaults load");
    };
    assert!(config.layer_settings().cors_origins.is_empty());
    let Err(LoadError::Invalid(line)) =
        Config::load_from(["iggy-gateway", "--cors-allowed-origins", "*"])
    else {
        panic!("* without a key is refused");
    };
    assert!(
        line.starts_with("CORS_ALLOWED_ORIGINS=* needs API_KEY"),
        "{line}"
    );
    assert!(!line.contains('\n'));
    assert!(
        Config::load_from([
            "iggy-gateway",
            "--cors-allowed-origins",
            "*",
            "--api-key",
            "k"
        ])
        .is_ok()
    );
    assert!(
        Config::load_from([
            "iggy-gateway",
            "--cors-allowed-origins",
            "https://a.example"
        ])
        .is_ok()
    );
}

#[test]
fn the_effective_settings_redact_secrets() {
    let Ok((_, settings)) =
        Config::load_from(["iggy-gateway", "--api-key", "sekrit", "--port", "9000"])
    else {
        panic!("loads");
    };
    let get = |name: &str| {
        settings
            .iter()
            .find(|(env, _)| env == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("API_KEY").as_deref(), Some("(redacted)"));
    assert_eq!(get("PORT").as_deref(), Some("9000"));
    assert!(!format!("{settings:?}").contains("sekrit"));

    // An empty value names no key: shown as unset, not as a secret in force.
    let Ok((config, settings)) = Config::load_from(["iggy-gateway", "--api-key", ""]) else {
        panic!("loads");
    };
    assert!(config.auth.is_keyless());
    let shown = settings.iter().find(|(env, _)| env == "API_KEY");
    assert_eq!(shown.map(|(_, v)| v.as_str()), Some("(unset)"));
    // Commas and blanks alone are refused (exit 78), not taken for no key.
    assert!(Config::load_from(["iggy-gateway", "--api-key", " , "]).is_err());
}

#[test]
fn the_readme_documents_every_setting() {
    let readme = include_str!("../../README.md");
    let command = <Config as clap::CommandFactory>::command();
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            let name = format!("`{}`", env.to_string_lossy());
            assert!(
                readme.contains(&name),
                "README.md's configuration table lacks {name}"
            );
        }
    }
}

#[test]
fn send_coalescing_follows_its_settings_and_the_batch_limits_of_one_call() {
    let Err(LoadError::Invalid(line)) =
        Config::load_from(["iggy-gateway", "--send-linger-us", "1000001"])
    else {
        panic!("a linger over 1 s is refused");
    };
    assert!(line.starts_with("SEND_LINGER_US: "), "{line}");
    let settings = |args: &[&str]| {
        let base = [
            "iggy-gateway",
            "--iggy-connection-string",
            "iggy://u:p@h:8090",
        ];
        Config::load_from(base.iter().chain(args).copied())
            .expect("valid")
            .0
            .iggy_settings()
            .expect("valid")
            .expect("Iggy is set")
            .send_batching
    };
    let defaults = settings(&[]);
    assert!(defaults.enabled);
    assert_eq!(defaults.linger, Duration::ZERO);
    assert_eq!(defaults.max_messages, 1000);
    assert_eq!(defaults.max_bytes, 16 * 1024 * 1024);
    let set = settings(&[
        "--send-coalesce",
        "false",
        "--send-linger-us",
        "250",
        "--batch-max-size",
        "50",
        "--max-request-body-size",
        "65536",
    ]);
    assert!(!set.enabled);
    assert_eq!(set.linger, Duration::from_micros(250));
    assert_eq!((set.max_messages, set.max_bytes), (50, 65536));
}

#[test]
fn an_empty_data_dir_is_refused_rather_than_read_as_the_current_directory() {
    for empty in ["", "  "] {
        let Err(LoadError::Invalid(line)) =
            Config::load_from(["iggy-gateway", "--data-dir", empty])
        else {
            panic!("an empty DATA_DIR is refused");
        };
        assert!(line.starts_with("DATA_DIR: "), "{line}");
        assert!(line.contains("is empty: name a directory"), "{line}");
    }
    let (config, _) = Config::load_from(["iggy-gateway", "--data-dir", ":memory:"]).expect("loads");
    assert_eq!(config.server.data_dir, ":memory:");
}

#[test]
fn a_message_size_no_poll_could_answer_is_refused() {
    let Err(LoadError::Invalid(line)) =
        Config::load_from(["iggy-gateway", "--max-message-size", "4194304"])
    else {
        panic!("a message as large as a poll's answer is refused");
    };
    assert!(
        line.starts_with("POLL_MAX_BYTES: 4194304 is less than"),
        "{line}"
    );
    let (config, _) = Config::load_from([
        "iggy-gateway",
        "--max-message-size",
        "4194304",
        "--poll-max-bytes",
        "8388608",
    ])
    .expect("a larger poll takes it");
    assert_eq!(config.limits.max_message_size, 4_194_304);
}
