//! SignatureLayer: a GitLab delivery signed with a signing token is verified as Standard Webhooks,
//! signed by the Python `standardwebhooks` peer.

use std::process::Command;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tower_webhook::signature::{Clock, Provider, SignatureLayer};

use crate::deliver;
use crate::peers;
use deliver::deliver as send;
use peers::{python, run};

const TS: u64 = 1_700_000_000;

/// GitLab's signing token (`whsec_` + the base64 of a 32-byte key, padded) signs in the
/// Standard Webhooks format, with `webhook-id` equal to `Idempotency-Key`: the docs send such
/// deliveries to `standard_webhooks(signing_token)`. Signed here by the Python
/// `standardwebhooks` peer, as GitLab's own test server checks them.
#[tokio::test]
async fn a_gitlab_signing_token_delivery_is_verified_as_standard_webhooks() {
    let Some(python) = python() else { return };
    const TOKEN: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const ID: &str = "3b9c1b0e-6a43-4c1e-9d55-8a1f1f3b2c7d";
    let body = r#"{"object_kind":"push","event_name":"push","ref":"refs/heads/main"}"#;
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(
        "import json, sys\n\
         from datetime import datetime, timezone\n\
         import standardwebhooks\n\
         r = json.load(sys.stdin)\n\
         wh = standardwebhooks.Webhook(r['token'])\n\
         when = datetime.fromtimestamp(r['ts'], tz=timezone.utc)\n\
         json.dump(wh.sign(r['id'], when, r['body']), sys.stdout)\n",
    );
    let sig = run(
        cmd,
        &serde_json::json!({"token": TOKEN, "ts": TS, "id": ID, "body": body}),
    );
    let layer = SignatureLayer::standard_webhooks(TOKEN)
        .unwrap()
        .clock(Clock::fixed(
            SystemTime::UNIX_EPOCH + Duration::from_secs(TS + 3),
        ))
        .without_replay_store();
    let headers = [
        ("x-gitlab-event", "Push Hook".to_owned()),
        ("idempotency-key", ID.to_owned()),
        ("webhook-id", ID.to_owned()),
        ("webhook-timestamp", TS.to_string()),
        ("webhook-signature", sig.as_str().unwrap().to_owned()),
    ];
    let (status, hook) = send(&layer, &headers, body).await;
    assert_eq!(status, StatusCode::OK);
    let hook = hook.unwrap();
    assert_eq!(hook.provider(), Provider::StandardWebhooks);
    assert_eq!(hook.delivery_id(), Some(ID));
    // One byte changed: refused.
    let (status, _) = send(&layer, &headers, &body.replace("main", "mains")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
