//! The signature layer: the Redis replay store's operation timeout.

use crate::redis_server;

use std::time::Duration;

use tower_webhook::signature::RedisReplayStore;

/// `RedisReplayStore::timeout(Duration::ZERO)` was taken, and then every operation timed out
/// at once: every delivery was refused with 503. A timeout under a millisecond is refused where
/// it is set now, as the layer refuses a replay TTL under a millisecond, with a message saying
/// why; a millisecond is taken.
#[tokio::test]
async fn a_redis_timeout_under_a_millisecond_is_refused_where_it_is_set() {
    let Some(redis) = redis_server::start().await else {
        return;
    };
    for short in [Duration::ZERO, Duration::from_micros(999)] {
        let store = RedisReplayStore::connect(&redis.url()).await.unwrap();
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || store.timeout(short)))
                .expect_err("a timeout under 1 ms was taken");
        let message = panicked
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("at least a millisecond"), "{message}");
    }
    let store = RedisReplayStore::connect(&redis.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(1));
    assert!(format!("{store:?}").contains("1ms"), "{store:?}");
}
