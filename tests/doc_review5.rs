//! Documentation review: the defaults and limits the docs state (docs/signature.md,
//! docs/circuit-breaker.md, docs/tunnel.md, README), checked through the public API.

use std::time::Duration;

/// docs/signature.md, "Configuration": `max_body_size` 25 MiB, `timestamp_tolerance` 300 s,
/// `max_signatures` 8, a replay store on, `replay_ttl` 24 h, `claim_ttl` 5 min,
/// `record_delivery` `AfterSuccess`, `on_replay` `Reject`, `request_id_header` `x-request-id`.
#[test]
fn signature_layer_defaults_are_the_documented_ones() {
    use tower_webhook::signature::SignatureLayer;

    let shown = format!("{:?}", SignatureLayer::github("secret").unwrap());
    for part in [
        "max_body: 26214400",
        "tolerance: 300s",
        "max_signatures: 8",
        "replay_store: true",
        "replay_ttl: 86400s",
        "claim_ttl: 300s",
        "request_id_header: \"x-request-id\"",
        "record: AfterSuccess",
        "on_replay: Reject",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
    let off = format!(
        "{:?}",
        SignatureLayer::github("secret")
            .unwrap()
            .without_replay_store()
    );
    assert!(off.contains("replay_store: false"), "{off}");
}

/// docs/signature.md: `max_signatures(n)` takes 1 to 8; values outside are brought into that
/// range rather than turning the check off (0) or raising the documented maximum.
#[test]
fn max_signatures_stays_within_one_to_eight() {
    use tower_webhook::signature::SignatureLayer;

    let at = |n: usize| format!("{:?}", SignatureLayer::github("s").unwrap().max_signatures(n));
    assert!(at(0).contains("max_signatures: 1,"), "{}", at(0));
    assert!(at(3).contains("max_signatures: 3,"), "{}", at(3));
    assert!(at(1000).contains("max_signatures: 8,"), "{}", at(1000));
}

/// docs/signature.md: `replay_ttl` and `claim_ttl` under 1 ms panic; 1 ms is accepted.
#[test]
fn replay_and_claim_ttl_under_a_millisecond_panic() {
    use tower_webhook::signature::SignatureLayer;

    let layer = || SignatureLayer::github("s").unwrap();
    let _ = layer().replay_ttl(Duration::from_millis(1));
    let _ = layer().claim_ttl(Duration::from_millis(1));
    for set in [
        (|l: SignatureLayer| l.replay_ttl(Duration::from_micros(999))) as fn(_) -> _,
        |l: SignatureLayer| l.claim_ttl(Duration::from_micros(999)),
    ] {
        let l = layer();
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || set(l))).is_err());
    }
}

/// docs/signature.md: `MemoryReplayStore` holds 100 000 ids by default.
#[test]
fn memory_replay_store_holds_a_hundred_thousand_ids_by_default() {
    use tower_webhook::signature::MemoryReplayStore;

    let shown = format!("{:?}", MemoryReplayStore::default());
    assert!(shown.contains("capacity: 100000"), "{shown}");
}

/// docs/circuit-breaker.md: a failure rate of 50 % over at least 100 calls, 5 consecutive
/// failures and 30 s open by default, the last two from the environment variables when set.
#[test]
fn circuit_breaker_defaults_are_the_documented_ones() {
    use tower_webhook::circuit_breaker::{CircuitBreakerConfig, OpenDuration};

    let shown = format!("{:?}", CircuitBreakerConfig::default());
    for part in [
        "failure_rate: Some(50.0)",
        "minimum_calls: 100",
        "consecutive_failures: 5",
        "half_open_probes: 1",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
    let open = format!("{:?}", OpenDuration::Fixed(Duration::from_secs(30)));
    assert!(shown.contains(&open), "{open} not in {shown}");

    let from_env = CircuitBreakerConfig::from_env_with(|_| None).unwrap();
    assert_eq!(
        format!("{from_env:?}"),
        shown,
        "unset variables give the defaults"
    );
}

/// docs/circuit-breaker.md, "Retries": up to 3 retries, backoff from 100 ms doubling up to 10 s,
/// `Retry-After` up to 60 s, a retry budget.
#[test]
fn retry_policy_defaults_are_the_documented_ones() {
    use tower_webhook::retry::RetryPolicy;

    let policy = RetryPolicy::new();
    let shown = format!("{policy:?}");
    for part in [
        "max_retries: 3",
        "base: 100ms",
        "cap: 10s",
        "max_retry_after: 60s",
        "budget: true",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
    assert_eq!(policy.max_delay(0), Duration::from_millis(100));
    assert_eq!(policy.max_delay(1), Duration::from_millis(200));
    assert_eq!(policy.max_delay(20), Duration::from_secs(10));
}

/// docs/circuit-breaker.md, "Status endpoint": the snapshot's JSON has exactly the fields the
/// documented example shows, and a fresh breaker is CLOSED in generation 0.
#[test]
fn snapshot_json_has_the_documented_fields() {
    use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};

    let (_layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().name("github-api")).unwrap();
    let json = serde_json::to_value(handle.snapshot()).unwrap();
    let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut documented = vec![
        "name",
        "state",
        "failure_rate",
        "slow_call_rate",
        "buffered_calls",
        "failed_calls",
        "successful_calls",
        "slow_calls",
        "consecutive_failures",
        "not_permitted_calls",
        "half_open_permits_taken",
        "retry_after_ms",
        "generation",
    ];
    documented.sort_unstable();
    assert_eq!(keys, documented);
    assert_eq!(json["name"], "github-api");
    assert_eq!(json["state"], "CLOSED");
    assert_eq!(json["generation"], 0);
    assert!(json["retry_after_ms"].is_null());
}

/// docs/tunnel.md: startup timeouts bore 10 s, localtunnel 10 s, cloudflared 30 s; the probe
/// is bounded by 5 s; reconnects back off from 250 ms to 30 s.
#[test]
fn tunnel_defaults_are_the_documented_ones() {
    use tower_webhook::tunnel::{Bore, Cloudflared, LocalTunnel, Provider, Tunnel};

    assert_eq!(
        Provider::startup_timeout(&Bore::new()),
        Duration::from_secs(10)
    );
    assert_eq!(
        Provider::startup_timeout(&LocalTunnel::new()),
        Duration::from_secs(10)
    );
    assert_eq!(
        Provider::startup_timeout(&Cloudflared::new()),
        Duration::from_secs(30)
    );
    let shown = format!("{:?}", Tunnel::builder());
    for part in [
        "probe: true",
        "probe_timeout: 5s",
        "reconnect: true",
        "backoff_min: 250ms",
        "backoff_max: 30s",
    ] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
}
