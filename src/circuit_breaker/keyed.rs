//! One breaker per key (per host, per repository) behind one layer.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::classify::{ClassifyOutcome, DefaultClassifier};
use super::config::{CircuitBreakerConfig, ConfigError};
use super::error::CircuitOpen;
use super::event::{CircuitState, Snapshot};
use super::layer::{CircuitBreakerHandle, ResponseFuture, call_admitted};
use super::state::{Breaker, Core};
use crate::BoxError;

struct Shared<K> {
    config: CircuitBreakerConfig,
    max_keys: usize,
    map: RwLock<HashMap<K, Arc<Core>>>,
    overflow: Arc<Core>,
    /// Whether the warning that the map is full was logged since a new key last found a slot:
    /// keys come from requests, and a flood of new ones must not flood the log.
    full_told: AtomicBool,
}

/// How readily a keyed breaker is forgotten for a new key of a full map, lower first: 0 CLOSED
/// with no failure (nor slow call) on record, 1 OPEN past its open duration or HALF_OPEN, 2
/// CLOSED counting toward opening; `None` for one in use, or in another state. See
/// `Shared::to_forget`.
fn forget_rank(core: &Arc<Core>) -> Option<u8> {
    if Arc::strong_count(core) != 1 {
        return None;
    }
    match core.stored_state() {
        CircuitState::Closed if !core.has_failures_on_record() => Some(0),
        CircuitState::Open | CircuitState::HalfOpen if core.open_lapsed() => Some(1),
        CircuitState::Closed => Some(2),
        _ => None,
    }
}

impl<K: Hash + Eq + Clone + fmt::Display> Shared<K> {
    /// The breaker `key` has, if any: found, never made.
    fn existing(&self, key: &K) -> Option<Arc<Core>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(Arc::clone)
    }

    /// A breaker of the full `map` to forget for a new key, if one may be, with its
    /// [`forget_rank`].
    ///
    /// One not in use, which protects no caller now. The stored state is read: transitions that
    /// time made due (which never lead to CLOSED) would run the listener under the map's lock.
    /// One CLOSED with no failure on record (nor a slow call, under a slow-call rule) is
    /// forgotten first. Then one whose open duration has passed (OPEN past it, or HALF_OPEN
    /// waiting for a probe): a key that opened and was never called again must not hold its slot
    /// for ever, and forgetting it costs at most the failures that open it again. Last, one
    /// counting toward opening: forgetting it would let a failing or slow key that comes and
    /// goes never open.
    fn to_forget(map: &HashMap<K, Arc<Core>>) -> Option<(&K, u8)> {
        let mut best: Option<(&K, u8)> = None;
        for (key, core) in map.iter() {
            match forget_rank(core) {
                Some(0) => return Some((key, 0)),
                Some(rank) if best.is_none_or(|(_, seen)| rank < seen) => best = Some((key, rank)),
                _ => {}
            }
        }
        best
    }

    /// The overflow breaker, for a new key while every slot is taken by one that may not be
    /// forgotten.
    fn overflow(&self) -> Arc<Core> {
        if !self.full_told.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                breaker = &*self.config.name,
                max_keys = self.max_keys,
                "keyed circuit breaker is full; new keys share the overflow breaker \
                 (told once until a new key finds a slot again)"
            );
        }
        Arc::clone(&self.overflow)
    }

    fn core_for(&self, key: K) -> Arc<Core> {
        let candidate = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(core) = map.get(&key) {
                return Arc::clone(core);
            }
            // Full: the breaker to forget is looked for under the read lock, which other calls
            // share. With nothing to forget, the overflow breaker. The write lock, which every
            // other call waits for, is taken only to change the map.
            if map.len() >= self.max_keys {
                match Self::to_forget(&map) {
                    Some((idle, rank)) => Some((idle.clone(), rank)),
                    None => return self.overflow(),
                }
            } else {
                None
            }
        };
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(core) = map.get(&key) {
            return Arc::clone(core);
        }
        if map.len() >= self.max_keys {
            // The one found, if it is still as ready to be forgotten (the map may have changed
            // since the read lock was let go); else looked for again.
            let idle = match candidate {
                Some((idle, rank)) if map.get(&idle).and_then(forget_rank) == Some(rank) => {
                    Some(idle)
                }
                _ => Self::to_forget(&map).map(|(idle, _)| idle.clone()),
            };
            match idle {
                Some(idle) => {
                    map.remove(&idle);
                }
                None => return self.overflow(),
            }
        }
        self.full_told.store(false, Ordering::Relaxed);
        let name = format!("{}/{}", self.config.name, key);
        let core = Core::new_counted(self.config.clone().name(name));
        map.insert(key, Arc::clone(&core));
        core
    }
}

/// Wraps a service in one circuit breaker per key, with a bound on the number of keys.
///
/// `key` is a closure from the request to the key, for example the URI's host. The key's
/// `Display` is part of its breaker's name, which logs, events and snapshots show: key by
/// something that holds no secret (a host, a repository), never a full URL with its query. When
/// `max_keys` breakers exist, a new key replaces an idle one: first one that is CLOSED with no
/// failure on record (nor a slow call under a slow-call rule), else one whose open duration has
/// passed (OPEN past it, or HALF_OPEN; its key then starts CLOSED again if it comes back), else
/// one that is CLOSED and counting failures; if there is none, new keys share one overflow
/// breaker (and a warning is logged, once until a new key finds a
/// slot again; it is named `<name>:overflow`, the keys' breakers `<name>/<key>`); a new key
/// that finds every slot so taken goes there under the key map's read lock, without taking its
/// write lock. Key by what you call (the upstream's host, a repository you serve), not by what
/// a sender may make up at will: new keys that all fail hold their slots while their breakers
/// are open, and every further new key then shares the overflow breaker, which opens for them
/// all. `poll_ready` always polls the inner service (the key is not known before the request); when `call` then rejects, the
/// readied inner service is swapped for a fresh clone, so the capacity it reserved (a `Buffer`
/// slot, a `ConcurrencyLimit` permit) is released at once rather than held by an idle clone.
/// A `call` without a `poll_ready` that returned `Ready` is refused with [`CircuitOpen`], told
/// by the key's breaker if it has one; it makes no breaker, so it never takes a slot.
/// Backpressure mode does not exist for keyed breakers. Finding a key's breaker takes a read
/// lock on the key map (a write lock the first time a key is seen); each breaker itself is
/// lock-free. A new key in a full map looks among all the keys for the breaker to forget,
/// under the read lock (the `circuit_breaker_keyed_full` bench: 0.14 to 0.23 ms for 10,000
/// keys that all count failures), and holds the write lock only to check that one again and
/// replace it: size `max_keys` for the keys you expect, not far above.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let per_host = |req: &Request<Full<Bytes>>| req.uri().host().unwrap_or("").to_owned();
/// let (layer, handle) =
///     KeyedCircuitBreakerLayer::pair(CircuitBreakerConfig::default(), 64, per_host).unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Full<Bytes>>| async {
///     Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
/// });
/// let req = Request::get("http://api.example.com/x").body(Full::default()).unwrap();
/// svc.oneshot(req).await.unwrap();
/// assert!(handle.get(&"api.example.com".to_owned()).is_some());
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<K, F, C = DefaultClassifier> {
    shared: Arc<Shared<K>>,
    key: F,
    classifier: C,
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.shared.config.name)
            .field("max_keys", &self.shared.max_keys)
            .finish_non_exhaustive()
    }
}

impl<K, F> KeyedCircuitBreakerLayer<K, F> {
    /// One breaker with `config` per key returned by `key`, at most `max_keys` of them.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range (also `max_keys` of 0).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    ///
    /// let per_repo = |path: &String| path.split('/').take(3).collect::<Vec<_>>().join("/");
    /// let layer = KeyedCircuitBreakerLayer::<String, _>::new(CircuitBreakerConfig::default(), 64, per_repo).unwrap();
    /// assert!(format!("{layer:?}").contains("max_keys: 64"));
    ///
    /// let err = KeyedCircuitBreakerLayer::<String, _>::new(CircuitBreakerConfig::default(), 0, per_repo).unwrap_err();
    /// assert_eq!(err.setting(), "max_keys");
    /// ```
    pub fn new(config: CircuitBreakerConfig, max_keys: usize, key: F) -> Result<Self, ConfigError> {
        config.validate()?;
        if max_keys == 0 {
            return Err(ConfigError::max_keys());
        }
        // Not `<name>/overflow`, which is also the name of a key `overflow`'s breaker.
        let overflow = Core::new_counted(config.clone().name(format!("{}:overflow", config.name)));
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                max_keys,
                map: RwLock::new(HashMap::new()),
                overflow,
                full_told: AtomicBool::new(false),
            }),
            key,
            classifier: DefaultClassifier::new(),
        })
    }

    /// A layer and the handle to its breakers.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, KeyedCircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let per_host = |req: &(&'static str, u16)| req.0;
    /// let config = CircuitBreakerConfig::default().consecutive_failures(1);
    /// let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 64, per_host).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|(_host, status): (&'static str, u16)| async move {
    /// #     Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
    /// # });
    /// svc.ready().await.unwrap().call(("api.github.com", 200)).await.unwrap();
    /// svc.ready().await.unwrap().call(("gitlab.example.com", 502)).await.unwrap();
    /// assert_eq!(handle.get(&"api.github.com").unwrap().state(), CircuitState::Closed);
    /// assert_eq!(handle.get(&"gitlab.example.com").unwrap().state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn pair(
        config: CircuitBreakerConfig,
        max_keys: usize,
        key: F,
    ) -> Result<(Self, KeyedCircuitBreakerHandle<K>), ConfigError> {
        let layer = Self::new(config, max_keys, key)?;
        let handle = layer.handle();
        Ok((layer, handle))
    }
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    /// Uses `classifier` to decide outcomes.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitState, KeyedCircuitBreakerLayer, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let per_tenant = |req: &(&'static str, bool)| req.0;
    /// let config = CircuitBreakerConfig::default().consecutive_failures(1);
    /// let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 16, per_tenant).unwrap();
    /// let layer = layer.with_classifier(|r: &Result<(), BoxError>| {
    ///     if r.is_ok() { Outcome::Success } else { Outcome::Failure }
    /// });
    /// let mut svc = ServiceBuilder::new().layer(layer).service_fn(|(_, up): (&str, bool)| async move {
    ///     if up { Ok(()) } else { Err(BoxError::from("tenant backend down")) }
    /// });
    /// svc.ready().await.unwrap().call(("acme", false)).await.unwrap_err();
    /// svc.ready().await.unwrap().call(("globex", true)).await.unwrap();
    /// assert_eq!(handle.get(&"acme").unwrap().state(), CircuitState::Open);
    /// assert_eq!(handle.get(&"globex").unwrap().state(), CircuitState::Closed);
    /// # }
    /// ```
    pub fn with_classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<K, F, C2> {
        KeyedCircuitBreakerLayer {
            shared: self.shared,
            key: self.key,
            classifier,
        }
    }

    /// The handle to this layer's breakers.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let per_host = |req: &(&'static str, u16)| req.0;
    /// let layer = KeyedCircuitBreakerLayer::new(CircuitBreakerConfig::default(), 64, per_host).unwrap();
    /// let handle = layer.handle();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|(_host, status): (&'static str, u16)| async move {
    /// #     Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
    /// # });
    /// assert!(handle.is_empty());
    /// svc.ready().await.unwrap().call(("api.github.com", 200)).await.unwrap();
    /// assert_eq!(handle.len(), 1);
    /// # }
    /// ```
    pub fn handle(&self) -> KeyedCircuitBreakerHandle<K> {
        KeyedCircuitBreakerHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            shared: Arc::clone(&self.shared),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
            inner_ready: false,
        }
    }
}

/// A service behind per-key circuit breakers. Made by [`KeyedCircuitBreakerLayer`].
///
/// # Example
///
/// ```
/// use tower::ServiceExt;
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer, Outcome};
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (layer, handles) =
///     KeyedCircuitBreakerLayer::<String, _>::pair(CircuitBreakerConfig::default(), 16, |r: &String| r.clone())
///         .unwrap();
/// // Not HTTP: any error is a failure.
/// let layer = layer.with_classifier(|result: &Result<String, std::io::Error>| {
///     if result.is_ok() { Outcome::Success } else { Outcome::Failure }
/// });
/// let svc = layer.layer(tower::service_fn(|r: String| async move {
///     if r == "down.example" { Err(std::io::Error::other("refused")) } else { Ok(r) }
/// }));
/// assert_eq!(svc.clone().oneshot("up.example".to_owned()).await.unwrap(), "up.example");
/// svc.oneshot("down.example".to_owned()).await.unwrap_err();
/// // One breaker per key, each with its own count.
/// assert_eq!(handles.get("up.example").unwrap().snapshot().successful_calls, 1);
/// assert_eq!(handles.get("down.example").unwrap().snapshot().failed_calls, 1);
/// # }
/// ```
pub struct KeyedCircuitBreaker<S, K, F, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<K>>,
    key: F,
    classifier: C,
    inner_ready: bool,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
            inner_ready: false,
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + fmt::Display,
    F: Fn(&Req) -> K,
    C: ClassifyOutcome<S::Response, S::Error> + Clone,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.inner_ready = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => {
                self.inner_ready = false;
                Poll::Ready(Err(err.into()))
            }
            Poll::Pending => {
                self.inner_ready = false;
                Poll::Pending
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key)(&req);
        if !std::mem::take(&mut self.inner_ready) {
            // `call` without a `poll_ready` that returned `Ready`: the call is not made. Told
            // by the key's breaker if it has one; a call that is not made makes none, which
            // could take the slot of a breaker counting failures.
            let refusal = match self.shared.existing(&key) {
                Some(core) => core.reject_unready(),
                None => CircuitOpen::not_ready(),
            };
            return ResponseFuture::rejected(refusal);
        }
        let core = self.shared.core_for(key);
        match core.admit() {
            Ok(recorder) => call_admitted(&mut self.inner, &self.classifier, recorder, req),
            Err(refusal) => {
                // Give back what the inner service reserved in `poll_ready`: a clone holds
                // no reservation, and the readied service is dropped.
                self.inner = self.inner.clone();
                ResponseFuture::rejected(core.refuse(refusal))
            }
        }
    }
}

/// Observes and steers the breakers of a [`KeyedCircuitBreakerLayer`].
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
///
/// let (_layer, handle) =
///     KeyedCircuitBreakerLayer::<String, _>::pair(CircuitBreakerConfig::default(), 16, |r: &String| r.clone()).unwrap();
/// assert!(handle.is_empty());
/// assert!(handle.snapshots().is_empty());
/// ```
pub struct KeyedCircuitBreakerHandle<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for KeyedCircuitBreakerHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> fmt::Debug for KeyedCircuitBreakerHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerHandle")
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedCircuitBreakerHandle<K> {
    /// The handle of `key`'s breaker, if it exists. The key may be given in any borrowed form
    /// of `K`, as for a `HashMap`: a `&str` for `String` keys. While the handle is kept, the
    /// breaker counts as in use and is not replaced by a new key: drop it once read.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitState, KeyedCircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // One breaker per host, keyed by an owned `String`.
    /// let per_host = |req: &http::Request<()>| req.uri().host().unwrap_or_default().to_owned();
    /// let (layer, handle) = KeyedCircuitBreakerLayer::pair(CircuitBreakerConfig::default(), 64, per_host).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_: http::Request<()>| async move {
    /// #     Ok::<_, BoxError>(http::Response::new(()))
    /// # });
    /// let call = http::Request::get("https://api.github.com/repos/o/r").body(()).unwrap();
    /// svc.ready().await.unwrap().call(call).await.unwrap();
    ///
    /// let github = handle.get("api.github.com").unwrap();
    /// assert_eq!(github.name(), "default/api.github.com");
    /// assert_eq!(github.state(), CircuitState::Closed);
    /// assert!(handle.get("bitbucket.org").is_none());
    /// // The owned form works too.
    /// assert!(handle.get(&String::from("api.github.com")).is_some());
    /// # }
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<CircuitBreakerHandle>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.shared.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|core| CircuitBreakerHandle {
            core: Breaker::adopt(Arc::clone(core)),
        })
    }

    /// The handle of the breaker shared by keys beyond the bound.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let per_host = |req: &(&'static str, u16)| req.0;
    /// let config = CircuitBreakerConfig::default().consecutive_failures(1);
    /// let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 1, per_host).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|(_host, status): (&'static str, u16)| async move {
    /// #     Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
    /// # });
    /// // The only slot holds an open breaker, which is not forgotten while it is open...
    /// svc.ready().await.unwrap().call(("a.example.com", 500)).await.unwrap();
    /// // ...so a second host shares the overflow breaker.
    /// svc.ready().await.unwrap().call(("b.example.com", 200)).await.unwrap();
    /// assert!(handle.get(&"b.example.com").is_none());
    /// assert_eq!(handle.overflow().name(), "default:overflow");
    /// # }
    /// ```
    pub fn overflow(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            core: Breaker::adopt(Arc::clone(&self.shared.overflow)),
        }
    }

    /// How many keys have a breaker.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let per_host = |req: &(&'static str, u16)| req.0;
    /// let (layer, handle) = KeyedCircuitBreakerLayer::pair(CircuitBreakerConfig::default(), 64, per_host).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|(_host, status): (&'static str, u16)| async move {
    /// #     Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
    /// # });
    /// for host in ["api.github.com", "gitlab.com", "api.github.com"] {
    ///     svc.ready().await.unwrap().call((host, 200)).await.unwrap();
    /// }
    /// assert_eq!(handle.len(), 2);
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.shared
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether no key has a breaker yet.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let per_host = |req: &(&'static str, u16)| req.0;
    /// let (layer, handle) = KeyedCircuitBreakerLayer::pair(CircuitBreakerConfig::default(), 64, per_host).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|(_host, status): (&'static str, u16)| async move {
    /// #     Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
    /// # });
    /// assert!(handle.is_empty());
    /// svc.ready().await.unwrap().call(("gitea.example.com", 200)).await.unwrap();
    /// assert!(!handle.is_empty());
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key with its snapshot.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitState, KeyedCircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let per_host = |req: &(&'static str, u16)| req.0;
    /// let config = CircuitBreakerConfig::default().consecutive_failures(1);
    /// let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 64, per_host).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|(_host, status): (&'static str, u16)| async move {
    /// #     Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
    /// # });
    /// svc.ready().await.unwrap().call(("api.github.com", 200)).await.unwrap();
    /// svc.ready().await.unwrap().call(("gitlab.com", 503)).await.unwrap();
    ///
    /// let mut states: Vec<_> = handle.snapshots().into_iter().map(|(host, s)| (host, s.state)).collect();
    /// states.sort_by_key(|(host, _)| *host);
    /// assert_eq!(states, [("api.github.com", CircuitState::Closed), ("gitlab.com", CircuitState::Open)]);
    /// # }
    /// ```
    pub fn snapshots(&self) -> Vec<(K, Snapshot)> {
        // Held weakly, each upgraded for its own snapshot only: a breaker held counts as in
        // use, and a new key of a full map would find none to replace while they are read.
        let cores: Vec<(K, Weak<Core>)> = {
            let map = self.shared.map.read().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .map(|(k, c)| (k.clone(), Arc::downgrade(c)))
                .collect()
        };
        cores
            .into_iter()
            .filter_map(|(k, c)| Some((k, c.upgrade()?.snapshot())))
            .collect()
    }
}
