//! Secrets read from the environment, and the Redis replay store as replicas meet it: a server
//! that needs a password, one that is down or silent when a replica starts.

use crate::child;
use crate::logs;

use crate::redis_server;

use crate::github_hook;
use github_hook::{GH_BODY, GH_SECRET, GH_SIG, github};

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use logs::Logs;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{
    ClaimToken, MemoryReplayStore, RedisReplayStore, ReplayFuture, ReplayStore, Secrets,
    SignatureConfigError, SignatureLayer,
};

/// Set in the child process the environment test runs itself as.
const CHILD: &str = "TOWER_WEBHOOK_SIG16_CHILD";

/// A rotation that removed a secret may leave a comma behind (`new-secret,`): that was refused
/// with "webhook secret is empty or blank", which named neither the variable nor the comma, so
/// with several variables the operator could only guess which one. The error names the variable
/// now, and says what to remove; it never shows the secrets. Spaces around items are trimmed,
/// and the secrets are tried in their order. The test runs itself again as a child process with
/// such values, since a test may not change its own environment.
#[test]
fn an_empty_item_in_a_secrets_variable_is_named() {
    if std::env::var_os(CHILD).is_some() {
        for name in ["SIG16_TRAILING", "SIG16_DOUBLE", "SIG16_LEADING"] {
            let err = Secrets::from_env_list(name).unwrap_err();
            assert!(
                matches!(&err, SignatureConfigError::EmptyEnvItem(n) if n == name),
                "{name}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&format!("`{name}`")), "{text}");
            assert!(text.contains("comma"), "{text}");
            assert!(!text.contains("new-secret") && !text.contains("old-secret"));
        }
        let err = Secrets::from_env_list("SIG16_SPLIT").unwrap_err();
        assert!(
            matches!(&err, SignatureConfigError::ShortListItem(s) if s == "environment variable `SIG16_SPLIT`"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("vP2"), "{err}");
        // Unset and blank variables are still named as such.
        let err = Secrets::from_env_list("SIG16_UNSET").unwrap_err();
        assert!(matches!(&err, SignatureConfigError::MissingEnv(n) if n == "SIG16_UNSET"));
        let err = Secrets::from_env_list("SIG16_BLANK").unwrap_err();
        assert!(matches!(&err, SignatureConfigError::MissingEnv(n) if n == "SIG16_BLANK"));
        // A well-formed list: trimmed, in order; the old secret still verifies, as the second.
        let secrets = Secrets::from_env_list("SIG16_ROTATING").unwrap();
        assert_eq!(secrets.len(), 2);
        assert!(!format!("{secrets:?}").contains("Secret to"));
        let layer = SignatureLayer::github_with_secrets(secrets).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-hub-signature-256", GH_SIG.parse().unwrap());
        let hook = layer.verify(&headers, GH_BODY).unwrap();
        assert_eq!(hook.secret_index(), Some(1));
        return;
    }
    child::run_one(
        child::alone(
            module_path!(),
            "an_empty_item_in_a_secrets_variable_is_named",
            CHILD,
            "1",
        )
        .env("SIG16_TRAILING", "new-secret,")
        .env("SIG16_DOUBLE", "new-secret,,old-secret")
        .env("SIG16_LEADING", " , new-secret")
        .env_remove("SIG16_UNSET")
        .env("SIG16_BLANK", " \n")
        .env("SIG16_SPLIT", "Zq8!vP2#mR,7")
        .env("SIG16_ROTATING", format!(" new-secret ,\t{GH_SECRET}\n")),
    );
}

/// `delivery` through `layer` to a handler answering 200: the answer's status and whether it
/// carries `Retry-After`.
async fn deliver(layer: &SignatureLayer, delivery: &str) -> (StatusCode, bool) {
    let svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            });
    let res = tokio::time::timeout(Duration::from_secs(20), svc.oneshot(github(delivery)))
        .await
        .expect("no hang")
        .unwrap();
    (res.status(), res.headers().contains_key("retry-after"))
}

/// Replicas reach a managed Redis with a password in its URL. While that Redis is away the
/// deliveries are refused with 503 and `Retry-After`, the store reconnects on its own once it
/// is back (with its password), and neither the log lines of the outage nor the store's `Debug`
/// show the password; nor does the error of a connection with a wrong one.
#[tokio::test]
async fn a_password_in_the_redis_url_stays_out_of_logs() {
    // Skips as the other Redis tests do where there is no `redis-server`.
    let password = "hunter2-redis-pw";
    let Some(mut redis) = redis_server::start_with(&["--requirepass", password]).await else {
        return;
    };
    let port = redis.port;
    let (logs, _guard) = Logs::capture();
    let url = format!("redis://:{password}@127.0.0.1:{port}/");
    let store = RedisReplayStore::connect(&url)
        .await
        .unwrap()
        .timeout(Duration::from_millis(500));
    assert!(!format!("{store:?}").contains(password));
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(store);
    assert_eq!(deliver(&layer, "before").await, (StatusCode::OK, false));

    redis.kill();
    for id in ["down-1", "down-2", "down-3"] {
        assert_eq!(
            deliver(&layer, id).await,
            (StatusCode::SERVICE_UNAVAILABLE, true),
            "{id}"
        );
    }
    redis.restart().await;
    let back = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (status, _) = deliver(&layer, &format!("back-{attempt}")).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "still {status} {:?} after Redis came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let wrong = format!("redis://:not-{password}@127.0.0.1:{port}/");
    let err = RedisReplayStore::connect(&wrong).await.unwrap_err();
    assert!(!err.to_string().contains(password), "{err}");
    assert!(!format!("{err:?}").contains(password), "{err:?}");

    let text = logs.text();
    assert!(text.contains("replay store unavailable"), "{text}");
    assert!(!text.contains(password), "{text}");
    drop(redis);
}

/// A replica that starts while Redis is down, or while something accepts connections on its
/// port and never answers (a stopped server, a proxy whose backend is gone), gets an error
/// from `connect` after its retries, as the docs say: it does not wait forever.
#[tokio::test]
async fn connect_gives_up_when_redis_is_down_or_silent() {
    if redis_server::start().await.is_none() {
        return;
    }
    // Nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let err = tokio::time::timeout(Duration::from_secs(60), RedisReplayStore::connect(&url))
        .await
        .expect("connect gives up")
        .unwrap_err();
    assert!(err.is_connection_refusal(), "{err}");

    // Something accepts the connections and never answers. Bounded: `connect` makes a handful.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 16 {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            held.push(stream);
        }
        std::future::pending::<()>().await;
    });
    let err = tokio::time::timeout(Duration::from_secs(90), RedisReplayStore::connect(&url))
        .await
        .expect("connect gives up")
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    silent.abort();
}

/// A store of the application's own, whose errors name its server's URL with a password, as
/// client libraries' errors may: claims fail while `claims_fail` is set, and marking a delivery
/// handled fails always.
struct TalkativeStore {
    memory: MemoryReplayStore,
    claims_fail: bool,
}

/// What the store's errors say.
const STORE_ERROR: &str = "connection to redis://replay:s3cret-pw@db.internal:6379/0 refused";

impl ReplayStore for TalkativeStore {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.memory.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.memory.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        if self.claims_fail {
            return ReplayFuture::ready(Err(STORE_ERROR.into()));
        }
        self.memory.claim(key, token, ttl)
    }
    fn complete(&self, _key: &str, _token: ClaimToken, _ttl: Duration) -> ReplayFuture {
        ReplayFuture::ready(Err(STORE_ERROR.into()))
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        self.memory.release(key, token)
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        self.memory.completed(key)
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}

/// The signature layer logs a replay store's errors with the credentials of the URLs in them
/// left out: a refused claim (503) and a delivery that could not be marked handled.
#[tokio::test]
async fn a_replay_store_error_is_logged_without_the_credentials_of_its_url() {
    let (logs, _guard) = Logs::capture();
    for claims_fail in [true, false] {
        let layer = SignatureLayer::github(GH_SECRET)
            .unwrap()
            .replay_store(TalkativeStore {
                memory: MemoryReplayStore::new(),
                claims_fail,
            });
        let expected = if claims_fail {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        assert_eq!(deliver(&layer, "talkative").await.0, expected);
    }
    let text = logs.text();
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert_eq!(
        text.matches("redis://<redacted>@db.internal:6379/0")
            .count(),
        2,
        "{text}"
    );
}
