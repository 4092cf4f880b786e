use super::*;

#[test]
fn globs_match_whole_names_with_wildcards() {
    let glob = |p: &str| Glob(p.to_owned());
    assert!(glob("*").matches("anything"));
    assert!(glob("*").matches(""));
    assert!(glob("orders").matches("orders"));
    assert!(!glob("orders").matches("orders2"));
    assert!(glob("team-a-*").matches("team-a-orders"));
    assert!(!glob("team-a-*").matches("team-b-orders"));
    assert!(glob("*-audit").matches("x-audit"));
    assert!(glob("a*b*c").matches("aXXbYYc"));
    assert!(!glob("a*b*c").matches("aXXbYY"));
    // Stars alone cover every name, however many.
    assert!(glob("*").is_any() && glob("**").is_any());
    assert!(!glob("a*").is_any());
    let all = Pattern::parse("**/*").expect("pattern");
    assert!(all.matches(&Target::All));
    assert!(
        !Pattern::parse("orders/*")
            .expect("pattern")
            .matches(&Target::All)
    );
}

#[test]
fn patterns_cover_streams_and_topics() {
    let grant = |text: &str| Grant::parse(text).expect("grant");
    let orders = grant("read:orders/*");
    assert!(
        orders
            .pattern
            .matches(&Target::Topic("orders".into(), "created".into()))
    );
    assert!(
        !orders
            .pattern
            .matches(&Target::Topic("payments".into(), "created".into()))
    );
    assert!(orders.pattern.matches(&Target::Stream("orders".into())));
    let audit = grant("read:*/audit");
    assert!(
        audit
            .pattern
            .matches(&Target::Topic("payments".into(), "audit".into()))
    );
    assert!(
        !audit
            .pattern
            .matches(&Target::Topic("payments".into(), "settled".into()))
    );
    // Looking into a stream needs its name matched; changing the whole stream needs all topics.
    assert!(
        audit
            .pattern
            .matches(&Target::StreamView("payments".into()))
    );
    assert!(!audit.pattern.matches(&Target::Stream("payments".into())));
    assert_eq!(
        grant("write").pattern,
        Pattern::parse("*/*").expect("pattern")
    );
    assert_eq!(
        grant("admin:orders").pattern,
        Pattern::parse("orders/*").expect("pattern")
    );
    assert!(Grant::parse("delete:orders").is_err());
    assert!(Grant::parse("read:a/b/c").is_err());
    assert!(Grant::parse("read:/x").is_err());
}

#[test]
fn named_identities_hold_only_their_grants() {
    let id = Identity::named(
        "ci",
        [1; 32],
        vec![
            Grant::parse("read:orders/*").expect("grant"),
            Grant::parse("write:orders/created").expect("grant"),
        ],
        None,
        None,
        None,
    );
    let topic = |s: &str, t: &str| Target::Topic(s.into(), t.into());
    assert!(id.allows(Scope::Read, &topic("orders", "x")));
    assert!(id.allows(Scope::Write, &topic("orders", "created")));
    assert!(!id.allows(Scope::Write, &topic("orders", "x")));
    assert!(!id.allows(Scope::Admin, &topic("orders", "created")));
    assert!(!id.allows(Scope::Read, &topic("payments", "x")));
    assert!(id.allows(Scope::Read, &Target::Any));
    assert!(!id.allows(Scope::Admin, &Target::Any));
    assert!(Identity::static_key().allows(Scope::Admin, &topic("payments", "x")));
    assert!(Identity::anonymous().allows(Scope::Admin, &Target::Any));
}

#[test]
fn hash_key_is_hex_sha256() {
    assert_eq!(
        hash_key("test"),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

const FILE: &str = r#"
[[keys]]
name = "orders-team"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
scopes = ["read:orders/*", "write:orders/*"]
expires_at = 2030-01-01T00:00:00Z

[keys.quota]
produce_requests_per_second = 5
consume_bytes_per_second = 1000
subscriptions = 3

[[keys]]
name = "auditor"
sha256 = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
scopes = ["read:*/audit"]
"#;

#[test]
fn a_keys_file_parses_in_toml_and_yaml() {
    let entries = parse_key_file(FILE, false).expect("parses");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].name, "orders-team");
    assert_eq!(entries[0].grants.len(), 2);
    assert!(entries[0].expires_at.is_some());
    let quota = entries[0].quota.expect("quota");
    assert_eq!(quota.produce_requests_per_second.map(|n| n.get()), Some(5));
    assert_eq!(quota.consume_bytes_per_second, Some(1000));
    assert_eq!(quota.produce_bytes_per_second, None);
    assert_eq!(quota.subscriptions.map(|n| n.get()), Some(3));
    assert_eq!(entries[0].consumers, None, "any consumer unless told");
    let yaml = r#"
keys:
  - name: auditor
    sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
    scopes: ["read:*/audit"]
    expires_at: "2030-01-01T00:00:00Z"
"#;
    let entries = parse_key_file(yaml, true).expect("yaml parses");
    assert_eq!(entries[0].name, "auditor");
    assert!(entries[0].expires_at.is_some());
}

#[test]
fn a_bad_keys_file_is_refused_naming_the_entry_and_field() {
    let bad = |text: &str| parse_key_file(text, false).expect_err("refused");
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\nscopes = [\"remove:x\"]\n"
    ));
    assert!(why.contains("keys[0] (a): scopes"), "{why}");
    let why = bad("[[keys]]\nname = \"a\"\nsha256 = \"abc\"\n");
    assert!(why.contains("sha256"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\n[[keys]]\nname = \"a\"\nsha256 = \"{}\"\n",
        "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
    ));
    assert!(why.contains("used twice"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"a b\"\nsha256 = \"{digest}\"\n"
    ));
    assert!(why.contains("name"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"api-key\"\nsha256 = \"{digest}\"\n"
    ));
    assert!(why.contains("reserved"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\nexpires_at = \"soon\"\n"
    ));
    assert!(why.contains("expires_at"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\nscope = [\"read\"]\n"
    ));
    assert!(why.contains("scope"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\n[keys.quota]\nproduce_bytes_per_second = 0\n"
    ));
    assert!(why.contains("quota.produce_bytes_per_second"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\nconsumers = [\"\"]\n"
    ));
    assert!(why.contains("consumers"), "{why}");
    // A pattern could be searched for a name whose hash (Iggy's key for it) is another's.
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\nconsumers = [\"billing-*\"]\n"
    ));
    assert!(why.contains("exact"), "{why}");
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{digest}\"\n[keys.quota]\nsubscriptions = 0\n"
    ));
    assert!(why.contains("quota.subscriptions"), "{why}");
    // The digest of an empty key (an unset variable hashed) would let in an empty header.
    let why = bad(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{}\"\n",
        hash_key("").to_uppercase()
    ));
    assert!(
        why.contains("keys[0] (a): sha256: is the digest of an empty key"),
        "{why}"
    );
}

#[test]
fn the_ring_tells_static_named_expired_and_invalid_keys_apart() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("keys.toml");
    // "test" is orders-team's key; "expired" has expired.
    let file = format!(
        "{FILE}\n[[keys]]\nname = \"old\"\nsha256 = \"{}\"\nscopes = [\"read\"]\nexpires_at = \"2001-01-01T00:00:00Z\"\n",
        hash_key("expired")
    );
    std::fs::write(&path, file).expect("write");
    let ring = KeyRing::load(&["static".to_owned()], Some(path.clone())).expect("loads");
    assert!(
        matches!(ring.authenticate("static"), Authenticated::Valid(id) if id.kind() == Kind::Static)
    );
    assert!(
        matches!(ring.authenticate("test"), Authenticated::Valid(id) if id.name() == "orders-team")
    );
    assert!(
        matches!(ring.authenticate("expired"), Authenticated::Expired(id) if id.name() == "old")
    );
    assert!(matches!(ring.authenticate("nope"), Authenticated::Invalid));

    // A bad file keeps the keys in force; a good one replaces them.
    std::fs::write(&path, "[[keys]]\nname = 1\n").expect("write");
    ring.reload(false);
    assert!(matches!(ring.authenticate("test"), Authenticated::Valid(_)));
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nname = \"new\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
            hash_key("fresh")
        ),
    )
    .expect("write");
    ring.reload(false);
    assert!(matches!(ring.authenticate("test"), Authenticated::Invalid));
    assert!(matches!(ring.authenticate("fresh"), Authenticated::Valid(id) if id.name() == "new"));
    assert!(matches!(
        ring.authenticate("static"),
        Authenticated::Valid(_)
    ));
}

#[test]
fn a_byte_budget_is_overdrawn_then_refills() {
    let bucket = ByteBucket::new(1000);
    let now = std::time::Instant::now();
    assert_eq!(bucket.overdrawn(now), None);
    bucket.charge(3000, now);
    let wait = bucket.overdrawn(now).expect("overdrawn");
    assert!(
        wait > Duration::from_millis(1900) && wait <= Duration::from_millis(2000),
        "{wait:?}"
    );
    assert_eq!(bucket.overdrawn(now + Duration::from_millis(2100)), None);
}

#[test]
fn a_byte_budget_is_taken_only_while_not_overdrawn_and_refunded() {
    let bucket = ByteBucket::new(1000);
    let now = std::time::Instant::now();
    bucket.take(3000, now).expect("taken: not overdrawn yet");
    let wait = bucket.take(10, now).expect_err("overdrawn");
    assert!(wait > Duration::from_millis(1900), "{wait:?}");
    bucket.refund(3000, now);
    assert_eq!(bucket.overdrawn(now), None);
    bucket.take(10, now).expect("taken again");
}

#[test]
fn a_request_quota_admits_its_rate_per_identity() {
    let quota = QuotaState::new(QuotaSettings {
        produce_requests_per_second: std::num::NonZeroU32::new(2),
        ..QuotaSettings::default()
    });
    assert!(quota.admit(Class::Produce).is_ok());
    assert!(quota.admit(Class::Produce).is_ok());
    let throttle = quota.admit(Class::Produce).expect_err("third refused");
    assert_eq!(throttle.unit, "requests");
    assert_eq!(throttle.limit, 2);
    // Consuming is not limited.
    for _ in 0..10 {
        assert!(quota.admit(Class::Consume).is_ok());
    }
}

#[test]
fn an_audit_line_quotes_a_target_so_a_name_cannot_forge_its_fields() {
    let identity = Arc::new(Identity::named(
        "team",
        [0; 32],
        vec![Grant::parse("admin:*").expect("grant")],
        None,
        None,
        None,
    ));
    let rpc = Arc::new(Rpc {
        path: "/iggy.gateway.v1.StreamService/CreateStream".into(),
        name: "StreamService.CreateStream".into(),
        scope: Scope::Admin,
    });
    let ring = Arc::new(KeyRing::load(&[], None).expect("no keys"));
    let access = Access::new(
        identity,
        rpc,
        Arc::from("r-1"),
        ring,
        Arc::new(crate::metrics::Metrics::new()),
    );
    let forged = "x result=OK identity=platform request_id=r-0";
    assert!(access.check(&[Target::Stream(forged.into())]).is_ok());
    let line = crate::testing::text_log(|| audit_admin(&access, "OK"));
    assert!(
        line.contains(&format!("target=\"{forged}\"")),
        "the target is one quoted field: {line}"
    );
    assert_eq!(line.matches("identity=").count(), 2, "{line}");
    assert!(line.contains("identity=\"team\""), "{line}");
}

#[test]
fn the_ceiling_holds_each_keys_file_identity_and_no_other_caller() {
    let named = |name: &str| Identity::named(name, [2; 32], Vec::new(), None, None, None);
    let rate = std::num::NonZeroU32::new(1).expect("non-zero");
    let burst = std::num::NonZeroU32::new(2).expect("non-zero");
    let ring = KeyRing::load(&[], None)
        .expect("no keys")
        .with_ceiling(Some((rate, burst)));
    let (ci, other) = (named("ci"), named("other"));
    assert!(ring.admit_uncounted(&ci).is_ok());
    assert!(ring.admit_uncounted(&ci).is_ok());
    let held = ring.admit_uncounted(&ci).expect_err("over its burst");
    assert_eq!((held.per_second, held.burst), (1, 2));
    assert!(held.wait > Duration::ZERO && held.wait <= Duration::from_secs(1));
    // Another name has its own budget; anonymous callers and API_KEY's key have none here
    // (the per-client rate limit holds them).
    assert!(ring.admit_uncounted(&other).is_ok());
    for _ in 0..10 {
        assert!(ring.admit_uncounted(&Identity::anonymous()).is_ok());
        assert!(ring.admit_uncounted(&Identity::static_key()).is_ok());
    }
    // With the rate limit off, nothing is held.
    let open = KeyRing::load(&[], None)
        .expect("no keys")
        .with_ceiling(None);
    for _ in 0..10 {
        assert!(open.admit_uncounted(&ci).is_ok());
    }
}

#[test]
fn a_key_with_consumers_uses_only_those_it_names() {
    let entries = parse_key_file(
        "[[keys]]\nname = \"billing\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nconsumers = [\"billing-eu\", \"007\"]\n",
        false,
    )
    .expect("parses");
    let entry = entries.into_iter().next().expect("one");
    let identity = Identity::named(
        &entry.name,
        entry.digest,
        entry.grants,
        None,
        entry.consumers,
        None,
    );
    assert!(identity.may_use_consumer("billing-eu"));
    assert!(identity.may_use_consumer("7"), "ids as numbers");
    assert!(!identity.may_use_consumer("billing-eu2"), "names are exact");
    assert!(!identity.may_use_consumer("analytics"));
    assert!(!identity.may_use_consumer("1"));
    assert!(Identity::anonymous().may_use_consumer("analytics"));
}
