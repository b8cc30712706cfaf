//! Signatures made by the providers' own libraries are accepted, and rejected once a byte changes.
//!
//! Peers: Python `standardwebhooks`, `svix`, `stripe`, `slack_sdk`, npm `@octokit/webhooks-methods`,
//! installed by `.ci/signature.sh` under `.ci/.deps/`. Without them the tests skip with a message,
//! unless `TOWER_WEBHOOK_REQUIRE_INTEROP=1` (set by `.ci/run`), where they fail.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tower_webhook::signature::{Clock, Provider, SignatureLayer};

use crate::deliver;
use crate::peers;
use deliver::deliver as status;
use peers::{peer, python, root, run};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STRIPE_SECRET: &str = "whsec_interop_stripe_secret";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const TS: u64 = 1_700_000_000;

fn octokit() -> Option<PathBuf> {
    let modules = std::env::var_os("TOWER_WEBHOOK_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".ci/.deps/node/node_modules"));
    peer(
        "npm @octokit/webhooks-methods",
        modules.join("@octokit/webhooks-methods"),
    )
}

/// Payloads: small, Unicode, escapes, and a large one.
fn bodies() -> Vec<String> {
    let big: Vec<String> = (0..2000)
        .map(|i| format!(r#"{{"n":{i},"s":"line {i} ✓"}}"#))
        .collect();
    vec![
        r#"{"id":"evt_1","type":"ping","zen":"Keep it logically awesome."}"#.to_owned(),
        r#"{"id":"evt_2","type":"unicode","text":"héllo wörld ✓ 🎉 \u00e9\n\t\"q\""}"#.to_owned(),
        format!(
            r#"{{"id":"evt_3","type":"big","items":[{}]}}"#,
            big.join(",")
        ),
    ]
}

/// The positions whose byte gets changed: first, middle, last.
fn tampered(body: &str) -> Vec<Vec<u8>> {
    let b = body.as_bytes();
    [0, b.len() / 2, b.len() - 1]
        .into_iter()
        .map(|i| {
            let mut t = b.to_vec();
            t[i] ^= 0x01;
            t
        })
        .collect()
}

/// Accepted as signed, refused with any one byte changed.
async fn accepted_and_tamper_rejected(
    layer: &SignatureLayer,
    headers: &[(&str, String)],
    body: &str,
    provider: Provider,
) {
    let (st, hook) = status(layer, headers, body.as_bytes().to_vec()).await;
    assert_eq!(st, StatusCode::OK, "{provider}: peer signature refused");
    assert_eq!(hook.unwrap().provider(), provider);
    for bad in tampered(body) {
        let (st, _) = status(layer, headers, bad).await;
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "{provider}: tampered body accepted"
        );
    }
}

fn clock() -> Clock {
    Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(TS + 5))
}

#[tokio::test]
async fn python_peers_standardwebhooks_svix_stripe_slack() {
    let Some(python) = python() else { return };
    let bodies = bodies();
    let cases: Vec<serde_json::Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| serde_json::json!({"body": b, "timestamp": TS, "msg_id": format!("msg_interop_{i}")}))
        .collect();
    let input = serde_json::json!({
        "cases": cases,
        "secrets": {"standard_webhooks": SW_SECRET, "stripe": STRIPE_SECRET, "slack": SLACK_SECRET},
    });
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/interop/sign_python.py"));
    let out = run(cmd, &input);
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), bodies.len());

    let sw = SignatureLayer::standard_webhooks(SW_SECRET)
        .unwrap()
        .clock(clock())
        .without_replay_store();
    let stripe = SignatureLayer::stripe(STRIPE_SECRET)
        .unwrap()
        .clock(clock())
        .without_replay_store();
    let slack = SignatureLayer::slack(SLACK_SECRET)
        .unwrap()
        .clock(clock())
        .without_replay_store();
    for (i, (body, sigs)) in bodies.iter().zip(out).enumerate() {
        let id = format!("msg_interop_{i}");
        for lib in ["standardwebhooks", "svix"] {
            let headers = [
                ("webhook-id", id.clone()),
                ("webhook-timestamp", TS.to_string()),
                ("webhook-signature", sigs[lib].as_str().unwrap().to_owned()),
            ];
            accepted_and_tamper_rejected(&sw, &headers, body, Provider::StandardWebhooks).await;
            // The signature is bound to the id.
            let mut other = headers.clone();
            other[0].1.push('x');
            assert_eq!(
                status(&sw, &other, body.as_bytes().to_vec()).await.0,
                401,
                "{lib}"
            );
        }
        let headers = [(
            "stripe-signature",
            sigs["stripe"].as_str().unwrap().to_owned(),
        )];
        accepted_and_tamper_rejected(&stripe, &headers, body, Provider::Stripe).await;
        let headers = [
            (
                "x-slack-signature",
                sigs["slack"].as_str().unwrap().to_owned(),
            ),
            ("x-slack-request-timestamp", TS.to_string()),
        ];
        accepted_and_tamper_rejected(&slack, &headers, body, Provider::Slack).await;
    }
}

#[tokio::test]
async fn npm_octokit_webhooks_methods_sign() {
    let Some(pkg) = octokit() else { return };
    let bodies = bodies();
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/interop/sign_octokit.mjs"))
        .arg(pkg);
    let out = run(
        cmd,
        &serde_json::json!({"secret": GITHUB_SECRET, "bodies": bodies}),
    );
    let layer = SignatureLayer::github(GITHUB_SECRET)
        .unwrap()
        .without_replay_store();
    for (body, sig) in bodies.iter().zip(out.as_array().unwrap()) {
        let headers = [("x-hub-signature-256", sig.as_str().unwrap().to_owned())];
        accepted_and_tamper_rejected(&layer, &headers, body, Provider::GitHub).await;
    }
    // And the GitHub docs vector, signed by octokit.
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/interop/sign_octokit.mjs"))
        .arg(octokit().unwrap());
    let out = run(
        cmd,
        &serde_json::json!({"secret": GITHUB_SECRET, "bodies": ["Hello, World!"]}),
    );
    assert_eq!(
        out[0],
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}
