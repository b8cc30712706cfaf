//! SignatureLayer: a Gitea form delivery whatever the case of its media type, and a secret of only
//! whitespace.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use sha2::Sha256;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{SignatureLayer, VerifiedWebhook};

fn hex256(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// What the handler got: the body and the verified delivery.
type Seen = Arc<Mutex<Vec<(Bytes, VerifiedWebhook)>>>;

/// Sends `req` through `layer` to a handler that records what it got and answers 200.
async fn send(layer: &SignatureLayer, req: Request<Full<Bytes>>) -> (StatusCode, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |req: Request<Full<Bytes>>| {
                let record = record.clone();
                async move {
                    let hook = req.extensions().get::<VerifiedWebhook>().cloned().unwrap();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    record.lock().unwrap().push((body, hook));
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
                }
            });
    let status = svc.oneshot(req).await.unwrap().status();
    (status, seen)
}

/// Media types are case-insensitive (RFC 9110 §8.3.1): a Gitea or Forgejo form delivery whose
/// `Content-Type` is written in capitals, or with parameters, is still a form delivery, whose
/// signature covers the decoded `payload` field.
#[tokio::test]
async fn a_gitea_form_delivery_is_recognised_whatever_the_case_of_its_media_type() {
    const SECRET: &str = "gitea-secret";
    let payload = r#"{"ref":"refs/heads/main","message":"a b&c"}"#;
    let form = format!(
        "payload={}",
        payload
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace(':', "%3A")
            .replace('/', "%2F")
            .replace(',', "%2C")
            .replace('&', "%26")
            .replace(' ', "+")
    );
    let sig = hex256(SECRET.as_bytes(), &[payload.as_bytes()]);
    for (layer, header) in [
        (SignatureLayer::gitea(SECRET).unwrap(), "x-gitea-signature"),
        (
            SignatureLayer::forgejo(SECRET).unwrap(),
            "x-forgejo-signature",
        ),
    ] {
        for content_type in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded",
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8",
            "application/x-www-form-urlencoded ; charset=utf-8",
        ] {
            let req = Request::post("/hook")
                .header("content-type", content_type)
                .header(header, &sig)
                .body(Full::new(Bytes::from(form.clone())))
                .unwrap();
            let (status, seen) = send(&layer, req).await;
            assert_eq!(status, StatusCode::OK, "{header}, {content_type}");
            assert_eq!(
                seen.lock().unwrap()[0].0,
                form.as_bytes(),
                "{header}, {content_type}"
            );
        }
        // A media type that only starts like the form one is read as a form, as axum's `Form`
        // reads it: the form's payload is what is signed. The JSON itself, signed the same,
        // sent raw under that type is refused: a `Form` handler would read it as a form, whose
        // fields (a `payload=` in a comment's text) nobody signed.
        let req = Request::post("/hook")
            .header("content-type", "application/x-www-form-urlencodedx")
            .header(header, &sig)
            .body(Full::new(Bytes::from(form.clone())))
            .unwrap();
        let (status, _) = send(&layer, req).await;
        assert_eq!(status, StatusCode::OK, "{header}");
        let req = Request::post("/hook")
            .header("content-type", "application/x-www-form-urlencodedx")
            .header(header, &sig)
            .body(Full::new(Bytes::from(payload)))
            .unwrap();
        let (status, seen) = send(&layer, req).await;
        assert!(status.is_client_error(), "{header}: {status}");
        assert!(seen.lock().unwrap().is_empty());
    }
}

/// A secret of nothing but whitespace is what an unset secret often becomes on its way in (a
/// variable set to a space, a secret file holding a lone newline): any sender can sign with
/// it. It is refused when the layer is built, like an empty one, instead of failing open.
#[tokio::test]
async fn a_secret_of_only_whitespace_is_refused_like_an_empty_one() {
    use tower_webhook::signature::{CustomScheme, Provider, SignatureConfigError, SignatureLayer};

    // What a forger signs with, knowing nothing.
    let forged = format!("sha256={}", hex256(b"\n", &[b"{}"]));
    if let Ok(layer) = SignatureLayer::github("\n") {
        let req = Request::post("/hook")
            .header("x-hub-signature-256", &forged)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let (status, seen) = send(&layer, req).await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "a forged delivery got through: {status}"
        );
    }

    let empty = |r: Result<SignatureLayer, SignatureConfigError>| {
        matches!(r, Err(SignatureConfigError::EmptySecret))
    };
    for blank in [" ", "\n", "\r\n", "\t \t"] {
        assert!(empty(SignatureLayer::github(blank)), "{blank:?}");
        assert!(empty(SignatureLayer::gitlab(blank)), "{blank:?}");
        assert!(empty(SignatureLayer::stripe(blank)), "{blank:?}");
        assert!(empty(SignatureLayer::slack(blank)), "{blank:?}");
        assert!(
            empty(SignatureLayer::custom(
                CustomScheme::new("x-signature"),
                blank
            )),
            "{blank:?}"
        );
        assert!(
            empty(SignatureLayer::with_secrets(
                Provider::Shopify,
                ["good-secret", blank]
            )),
            "{blank:?}"
        );
        assert!(
            empty(SignatureLayer::github("good-secret").unwrap().secret(blank)),
            "{blank:?}"
        );
        assert!(
            empty(SignatureLayer::azure_devops("hooks", blank)),
            "{blank:?}"
        );
        assert!(
            empty(SignatureLayer::with_secrets(
                Provider::AzureDevOps,
                [format!("hooks:{blank}")]
            )),
            "{blank:?}"
        );
    }
    // Whitespace around a real secret is the secret's own business: kept as given.
    assert!(SignatureLayer::github(" secret ").is_ok());
    assert!(SignatureLayer::azure_devops("hooks", " p4ss ").is_ok());
}
