//! The examples, sixth review: the pr_agent_server example's router on 127.0.0.1 against a fake
//! provider API on 127.0.0.1, and the other examples' servers, driven by a real HTTP client.

#[path = "../examples/pr_agent_server/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "common/pr_agent.rs"]
mod harness;
#[path = "../examples/hyper_server.rs"]
#[allow(dead_code)]
mod hyper_server;
#[path = "../examples/load_test.rs"]
#[allow(dead_code)]
mod load_test;

use harness::serve;
use http::StatusCode;

// ---------------------------------------------------------------------------------------------

/// `hyper_server` took `GITHUB_WEBHOOK_SECRET` as it was, where the other examples trim it: a
/// secret read from a file (`GITHUB_WEBHOOK_SECRET=$(cat secret)` keeps no line break, but
/// `env_file`s and secrets mounted by an orchestrator often do) ended with a line break GitHub's
/// copy has not, and every delivery was refused. It is trimmed now, and one blank or not UTF-8
/// is an error rather than a secret no delivery matches.
#[test]
fn the_hyper_server_trims_its_secret() {
    assert_eq!(
        hyper_server::webhook_secret(Ok("s3cret\n".into())).unwrap(),
        "s3cret"
    );
    assert_eq!(
        hyper_server::webhook_secret(Ok("  s3cret\r\n".into())).unwrap(),
        "s3cret"
    );
    assert!(hyper_server::webhook_secret(Ok("\n".into())).is_err());
    assert_eq!(
        hyper_server::webhook_secret(Err(std::env::VarError::NotPresent)).unwrap(),
        "development-secret"
    );
    // The load test's servers and generator read the same variable, the same way.
    assert_eq!(load_test::secret_from(Some("s3cret\n".into())), "s3cret");
    assert_eq!(load_test::secret_from(None), "load-test-secret");
}

/// `load_test serve layers` put `SignatureLayer` over the whole route with
/// `Router::route_layer`: a `GET /hook` was answered `401` as a delivery badly signed, where the
/// docs (and the `bare` server) answer `405 Method Not Allowed` with `Allow: POST`. The layer is
/// on the `POST` handler now; a `POST` is still verified.
#[tokio::test]
async fn the_load_test_layers_server_answers_another_method_405() {
    let router = load_test::router("layers", "s3cret").unwrap();
    let base = format!("http://{}", serve(router).await);
    let client = reqwest::Client::new();
    let res = client.get(format!("{base}/hook")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    // A POST without a signature is still refused, one signed with the secret accepted.
    let res = client
        .post(format!("{base}/hook"))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "r6-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let key = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(b"s3cret").unwrap();
    let res = client
        .post(format!("{base}/hook"))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "r6-2")
        .header("x-hub-signature-256", load_test::sign(&key, b"{}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}
