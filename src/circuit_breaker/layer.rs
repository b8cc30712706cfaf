//! `CircuitBreakerLayer`, `CircuitBreaker<S>`, its response future and the handle.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use super::classify::{ClassifyOutcome, DefaultClassifier};
use super::config::{CircuitBreakerConfig, ConfigError};
use super::error::{CircuitOpen, IllegalTransition};
use super::event::{CircuitState, Snapshot};
use super::state::{Admission, Breaker, Core, FailOnUnwind, Recorder, Refusal};
use crate::BoxError;

/// Wraps a service in a circuit breaker.
///
/// All services made by one layer (every clone, every axum route) share one breaker, observed
/// and steered through a [`CircuitBreakerHandle`]. See the [module docs](super).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let config = CircuitBreakerConfig::default().consecutive_failures(2);
/// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
/// let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Full<Bytes>>| async {
///     let mut res = Response::new(Full::<Bytes>::default());
///     *res.status_mut() = StatusCode::BAD_GATEWAY;
///     Ok::<_, BoxError>(res)
/// });
///
/// for _ in 0..2 {
///     let res = svc.ready().await.unwrap().call(Request::new(Full::default())).await.unwrap();
///     assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
/// }
/// assert_eq!(handle.state(), CircuitState::Open);
/// let err = svc.ready().await.unwrap().call(Request::new(Full::default())).await.unwrap_err();
/// assert!(err.is::<CircuitOpen>());
/// # }
/// ```
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    core: Arc<Breaker>,
    classifier: C,
    backpressure: bool,
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            classifier: self.classifier.clone(),
            backpressure: self.backpressure,
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("core", &self.core)
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A breaker with `config` and the [`DefaultClassifier`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default().name("github")).unwrap();
    /// assert_eq!(layer.handle().name(), "github");
    ///
    /// let err = CircuitBreakerLayer::new(CircuitBreakerConfig::default().minimum_calls(0)).unwrap_err();
    /// assert_eq!(err.setting(), "minimum_calls");
    /// ```
    pub fn new(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            core: Breaker::new(config),
            classifier: DefaultClassifier::new(),
            backpressure: false,
        })
    }

    /// A breaker for HTTP or gRPC calls with the default configuration.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = CircuitBreakerLayer::new_for_http();
    /// let handle = layer.handle();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// // The defaults: 5 failures in a row open the breaker.
    /// for _ in 0..5 {
    ///     svc.ready().await.unwrap().call(500).await.unwrap();
    /// }
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn new_for_http() -> Self {
        Self {
            core: Breaker::new(CircuitBreakerConfig::default()),
            classifier: DefaultClassifier::new(),
            backpressure: false,
        }
    }

    /// A breaker configured from `CIRCUIT_BREAKER_FAILURE_THRESHOLD` and
    /// `CIRCUIT_BREAKER_RECOVERY_TIMEOUT` (see [`CircuitBreakerConfig::from_env`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable whose value is wrong.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// match CircuitBreakerLayer::from_env() {
    ///     Ok(layer) => assert_eq!(layer.handle().state(), CircuitState::Closed),
    ///     // The message names the variable to fix.
    ///     Err(err) => assert!(err.setting().starts_with("CIRCUIT_BREAKER_")),
    /// }
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::new(CircuitBreakerConfig::from_env()?)
    }

    /// A layer and the handle to its breaker.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// svc.ready().await.unwrap().call(502).await.unwrap();
    /// svc.ready().await.unwrap().call(200).await.unwrap();
    /// let snapshot = handle.snapshot();
    /// assert_eq!((snapshot.failed_calls, snapshot.successful_calls), (1, 1));
    /// # }
    /// ```
    pub fn pair(config: CircuitBreakerConfig) -> Result<(Self, CircuitBreakerHandle), ConfigError> {
        let layer = Self::new(config)?;
        let handle = layer.handle();
        Ok((layer, handle))
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses `classifier` to decide outcomes: a [`ClassifyOutcome`], or a closure
    /// `Fn(&Result<Res, E>) -> Outcome`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Response, StatusCode};
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // This upstream answers 404 when its database is gone.
    /// let classify = |r: &Result<Response<()>, BoxError>| match r {
    ///     Ok(res) if res.status() == StatusCode::NOT_FOUND || res.status().is_server_error() => Outcome::Failure,
    ///     Ok(_) => Outcome::Success,
    ///     Err(_) => Outcome::Failure,
    /// };
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    /// let svc = ServiceBuilder::new().layer(layer.with_classifier(classify)).service_fn(|_: ()| async {
    ///     Ok::<_, BoxError>(Response::builder().status(404).body(()).unwrap())
    /// });
    /// svc.oneshot(()).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            core: self.core,
            classifier,
            backpressure: self.backpressure,
        }
    }

    /// Backpressure mode: while OPEN, `poll_ready` returns `Pending` until the open duration
    /// has passed, instead of accepting the call and rejecting it. FORCED_OPEN and a HALF_OPEN
    /// breaker without free probe permits still reject in `call`, and so does a breaker that
    /// opened between `poll_ready` and `call`. The wait is a
    /// `tokio::time::Sleep`: it needs a Tokio runtime with the time driver enabled.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// let layer = layer.with_backpressure();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// handle.transition_to_open().unwrap();
    ///
    /// // Not ready while OPEN...
    /// assert!(tokio::time::timeout(Duration::from_secs(29), svc.ready()).await.is_err());
    /// // ...ready once the 30 s have passed, for a probe.
    /// svc.ready().await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::HalfOpen);
    /// # }
    /// ```
    pub fn with_backpressure(mut self) -> Self {
        self.backpressure = true;
        self
    }

    /// The handle to this layer's breaker.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default()).unwrap();
    /// let handle = layer.handle();
    /// let svc = layer.layer(tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    ///
    /// // Every service of the layer shares the handle's breaker.
    /// handle.transition_to_forced_open().unwrap();
    /// assert_eq!(svc.handle().state(), CircuitState::ForcedOpen);
    /// ```
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            core: Arc::clone(&self.core),
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            core: Arc::clone(&self.core),
            classifier: self.classifier.clone(),
            backpressure: self.backpressure,
            decision: Decision::Undecided,
            sleep: None,
            waiter: None,
        }
    }
}

/// What `poll_ready` decided for the next call, kept until `call`.
pub(crate) enum Decision {
    /// Nothing yet, or the last decision was used.
    Undecided,
    /// Admitted (a half-open probe holds its permit here); the inner service is not ready yet.
    Waiting(Admission),
    /// Admitted, and the inner service is ready.
    Ready(Admission),
    /// The inner service is ready for a half-open probe, which takes its permit in `call`: a
    /// service made ready and never called (the services `tower::steer::Steer` readies and does
    /// not pick, a clone kept idle) holds no permit the other callers need.
    ReadyProbe,
    /// Refused: `call` fails without touching the inner service.
    Refused(Refusal),
}

/// A service behind a circuit breaker. Made by [`CircuitBreakerLayer`].
///
/// `poll_ready` decides whether the next call is admitted. It never fails because the breaker
/// is open: a call that will be rejected (OPEN, FORCED_OPEN, HALF_OPEN without a free probe
/// permit) gets `Ready` without the inner service being polled, so no inner capacity (a
/// `Buffer` slot, a `ConcurrencyLimit` permit) is reserved for it, and `call` returns a ready
/// future that fails with [`CircuitOpen`], like `tower::load_shed`. A half-open probe holds its
/// permit while `poll_ready` waits for the inner service, and gives it back once that is ready:
/// `call` takes a permit again, and fails with [`CircuitOpen`] if other calls have taken them
/// all since, so a service made ready and never called (a clone kept idle, the services
/// `tower::steer::Steer` readies and does not pick) cannot hold the breaker in HALF_OPEN. A
/// call admitted in `poll_ready` is decided again in `call` if the breaker has moved on since
/// (it opened, or the half-open period ended), so no call made ready earlier reaches an
/// upstream the breaker has given up on. A call refused in `call` leaves what the inner service
/// reserved when it was polled with this service, for its next call; a clone starts
/// undecided. See the [module docs](super).
///
/// # Example
///
/// ```
/// use tower::{BoxError, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerConfig, Outcome};
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::default())
///     .unwrap()
///     .with_classifier(|r: &Result<u8, BoxError>| if r.is_ok() { Outcome::Success } else { Outcome::Failure });
/// let svc = layer.layer(tower::service_fn(|x: u8| async move { Ok::<_, BoxError>(x + 1) }));
/// assert_eq!(svc.oneshot(1).await.unwrap(), 2);
/// # }
/// ```
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    core: Arc<Breaker>,
    classifier: C,
    backpressure: bool,
    decision: Decision,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Its id among the tasks waiting for OPEN to end (backpressure mode), while it may wait.
    waiter: Option<u64>,
}

impl<S, C> Drop for CircuitBreaker<S, C> {
    fn drop(&mut self) {
        // A caller that gave up waiting (a cancelled request) takes its waker back.
        self.core.unpark(&mut self.waiter);
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: Arc::clone(&self.core),
            classifier: self.classifier.clone(),
            backpressure: self.backpressure,
            decision: Decision::Undecided,
            sleep: None,
            waiter: None,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("core", &self.core)
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// The handle to this service's breaker.
    ///
    /// # Example
    ///
    /// ```
    /// use http::Response;
    /// use tower::{BoxError, ServiceBuilder};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    ///
    /// let svc = ServiceBuilder::new()
    ///     .layer(CircuitBreakerLayer::new_for_http())
    ///     .service_fn(|_: ()| async { Ok::<_, BoxError>(Response::new(())) });
    /// let handle = svc.handle();
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// ```
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            core: Arc::clone(&self.core),
        }
    }

    /// The inner service.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_webhook::circuit_breaker::CircuitBreakerLayer;
    ///
    /// #[derive(Clone)]
    /// struct ApiClient {
    ///     base_url: &'static str,
    /// }
    ///
    /// let svc = CircuitBreakerLayer::new_for_http().layer(ApiClient { base_url: "https://api.github.com" });
    /// assert_eq!(svc.get_ref().base_url, "https://api.github.com");
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Readiness that decides admission first and polls the inner service only for a call that
/// is admitted.
#[inline]
fn poll_ready_with<S, Req>(
    core: &Arc<Core>,
    inner: &mut S,
    decision: &mut Decision,
    backpressure: bool,
    sleep: &mut Option<Pin<Box<Sleep>>>,
    waiter: &mut Option<u64>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), BoxError>>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    match decision {
        Decision::Ready(_) | Decision::ReadyProbe => return Poll::Ready(Ok(())),
        // The common case, CLOSED: one word is decided and kept, and nothing is dropped.
        Decision::Undecided if !backpressure => {
            if let Some(generation) = core.closed_generation() {
                return match inner.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        *decision = Decision::Ready(Admission::Closed(generation));
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(err)) => Poll::Ready(Err(err.into())),
                    Poll::Pending => {
                        *decision = Decision::Waiting(Admission::Closed(generation));
                        Poll::Pending
                    }
                };
            }
        }
        _ => {}
    }
    let admission = match std::mem::replace(decision, Decision::Undecided) {
        // Still admitted in the current generation: keep waiting for the inner service.
        Decision::Waiting(admission)
            if admission.generation() == core.generation_for(&admission) =>
        {
            admission
        }
        // Undecided, refused, or admitted in a generation that has ended: decide again (a
        // stale probe gives its permit back as it is dropped here).
        _ => {
            if backpressure {
                // Parked first: a transition that ends OPEN early (a reset, a manual move)
                // wakes this task instead of leaving it asleep until the old deadline.
                while core.open_until().is_some() {
                    core.park(waiter, cx.waker());
                    let Some(until) = core.open_until() else {
                        break;
                    };
                    let timer =
                        sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                    if timer.deadline() != until {
                        timer.as_mut().reset(until);
                    }
                    ready!(timer.as_mut().poll(cx));
                }
                core.unpark(waiter);
            }
            match core.admit_ahead() {
                Ok(admission) => admission,
                Err(refusal) => {
                    *decision = Decision::Refused(refusal);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    };
    match inner.poll_ready(cx) {
        Poll::Ready(Ok(())) => {
            // A probe holds its permit while it waits for the inner service (this task polls
            // on), not once ready: `call` takes one again. Dropped here, it gives it back.
            *decision = if admission.is_probe() {
                Decision::ReadyProbe
            } else {
                Decision::Ready(admission)
            };
            Poll::Ready(Ok(()))
        }
        // The admission is dropped with the error: a probe gives its permit back.
        Poll::Ready(Err(err)) => Poll::Ready(Err(err.into())),
        Poll::Pending => {
            *decision = Decision::Waiting(admission);
            Poll::Pending
        }
    }
}

/// The response future of a call admitted with `recorder` into a ready inner service.
#[inline]
pub(crate) fn call_admitted<S, C, Req>(
    inner: &mut S,
    classifier: &C,
    recorder: Recorder,
    req: Req,
) -> ResponseFuture<S::Future, C>
where
    S: Service<Req>,
    C: Clone,
{
    // A panic in the inner service's `call` is the call failing. (Caught and resumed rather
    // than guarded by a reference to the recorder, which would keep it out of registers.)
    let future = match catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
        Ok(future) => future,
        Err(payload) => {
            recorder.record(super::Outcome::Failure);
            resume_unwind(payload)
        }
    };
    ResponseFuture {
        kind: Kind::Called {
            future,
            classifier: classifier.clone(),
            recorder,
        },
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: ClassifyOutcome<S::Response, S::Error> + Clone,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        poll_ready_with::<S, Req>(
            &self.core,
            &mut self.inner,
            &mut self.decision,
            self.backpressure,
            &mut self.sleep,
            &mut self.waiter,
            cx,
        )
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Decision::Ready(Admission::Closed(generation)) = self.decision
            && self.core.generation() == generation
        {
            // The common case, read as one word. `Ready(Closed(_))` owns nothing, so it is
            // forgotten rather than passed through the enum's drop glue.
            std::mem::forget(std::mem::replace(&mut self.decision, Decision::Undecided));
            let recorder = self.core.closed_recorder(generation);
            return call_admitted(&mut self.inner, &self.classifier, recorder, req);
        }
        match std::mem::replace(&mut self.decision, Decision::Undecided) {
            Decision::Ready(admission)
                if admission.generation() == self.core.generation_for(&admission) =>
            {
                let recorder = admission.into_recorder(&self.core);
                call_admitted(&mut self.inner, &self.classifier, recorder, req)
            }
            // Admitted in a generation that has ended since `poll_ready` (the breaker opened,
            // or a half-open period ended): decided again now, so no call reaches an upstream
            // the breaker has given up on. A stale probe gives its permit back as it is
            // dropped here. A half-open probe is admitted now. What the inner service
            // reserved stays with this service for its next call when the call is refused.
            stale @ (Decision::Ready(_) | Decision::ReadyProbe) => {
                drop(stale);
                match self.core.admit_ahead() {
                    Ok(admission) => {
                        let recorder = admission.into_recorder(&self.core);
                        call_admitted(&mut self.inner, &self.classifier, recorder, req)
                    }
                    Err(refusal) => ResponseFuture::rejected(self.core.refuse(refusal)),
                }
            }
            Decision::Refused(refusal) => ResponseFuture::rejected(self.core.refuse(refusal)),
            // `call` without a `poll_ready` that returned `Ready`: the inner service is not
            // ready, so the call is not made.
            Decision::Undecided | Decision::Waiting(_) => {
                ResponseFuture::rejected(self.core.reject_unready())
            }
        }
    }
}

/// Response future of [`CircuitBreaker`]: the inner future, classified when it completes, or
/// a ready [`CircuitOpen`] error.
///
/// # Example
///
/// ```
/// # use http::Response;
/// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerLayer, ResponseFuture};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = CircuitBreakerLayer::new_for_http();
/// let handle = layer.handle();
/// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
/// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
/// # });
/// let future: ResponseFuture<_, _> = svc.ready().await.unwrap().call(200);
/// assert_eq!(future.await.unwrap().status(), 200);
///
/// handle.transition_to_forced_open().unwrap();
/// let future = svc.ready().await.unwrap().call(200);
/// assert_eq!(format!("{future:?}"), r#"ResponseFuture { kind: "rejected" }"#);
/// assert!(future.await.is_err());
/// # }
/// ```
#[pin_project]
pub struct ResponseFuture<F, C> {
    #[pin]
    kind: Kind<F, C>,
}

#[pin_project(project = KindProj)]
enum Kind<F, C> {
    Called {
        #[pin]
        future: F,
        classifier: C,
        recorder: Recorder,
    },
    Rejected {
        error: Option<CircuitOpen>,
    },
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: ClassifyOutcome<Res, E>,
{
    type Output = Result<C::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                classifier,
                recorder,
            } => {
                let unwinding = FailOnUnwind(recorder);
                let polled = future.poll(cx);
                std::mem::forget(unwinding);
                let result = ready!(polled);
                let recorder = std::mem::replace(recorder, Recorder::untracked());
                Poll::Ready(classifier.classify(result, recorder).map_err(Into::into))
            }
            KindProj::Rejected { error } => {
                let error = error
                    .take()
                    .expect("circuit breaker ResponseFuture polled after completion");
                Poll::Ready(Err(Box::new(error)))
            }
        }
    }
}

/// Observes and steers a breaker: state, metrics snapshot, manual transitions, reset.
///
/// Cheap to clone; give one to a `/status` endpoint. See the [module docs](super).
///
/// # Example
///
/// ```
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// handle.transition_to_open().unwrap();
/// assert_eq!(handle.state(), CircuitState::Open);
/// assert_eq!(handle.snapshot().retry_after_ms, Some(30_000));
/// handle.reset();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    pub(crate) core: Arc<Breaker>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("core", &self.core)
            .finish()
    }
}

impl CircuitBreakerHandle {
    /// The current state (time-driven transitions that are due are applied first: an OPEN
    /// breaker whose open duration has passed reports HALF_OPEN).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// handle.transition_to_open().unwrap();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// tokio::time::advance(Duration::from_secs(30)).await;
    /// assert_eq!(handle.state(), CircuitState::HalfOpen);
    /// # }
    /// ```
    pub fn state(&self) -> CircuitState {
        self.core.state()
    }

    /// A snapshot of the state and the window's counts and rates.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// for status in [500, 503] {
    ///     svc.ready().await.unwrap().call(status).await.unwrap();
    /// }
    /// let snapshot = handle.snapshot();
    /// assert_eq!(snapshot.failed_calls, 2);
    /// assert_eq!(snapshot.consecutive_failures, 2);
    /// assert_eq!(snapshot.failure_rate, None); // fewer than `minimum_calls` so far
    /// # }
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        self.core.snapshot()
    }

    /// The breaker's name.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default().name("azure-devops")).unwrap();
    /// assert_eq!(handle.name(), "azure-devops");
    /// ```
    pub fn name(&self) -> &str {
        &self.core.config.name
    }

    /// Moves to `to` by hand.
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] for CLOSED to HALF_OPEN and METRICS_ONLY to OPEN or HALF_OPEN.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// // A state chosen at run time, e.g. from an admin endpoint.
    /// let wanted: CircuitState = CircuitState::Disabled;
    /// handle.transition_to(wanted).unwrap();
    /// assert_eq!(handle.state(), CircuitState::Disabled);
    /// ```
    pub fn transition_to(&self, to: CircuitState) -> Result<(), IllegalTransition> {
        self.core.transition_to(to)
    }

    /// Moves to CLOSED with a fresh window.
    ///
    /// # Errors
    ///
    /// Never in practice; kept for symmetry with the other transitions.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// handle.transition_to_open().unwrap();
    /// handle.transition_to_closed().unwrap();
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// assert_eq!(handle.snapshot().retry_after_ms, None);
    /// # }
    /// ```
    pub fn transition_to_closed(&self) -> Result<(), IllegalTransition> {
        self.transition_to(CircuitState::Closed)
    }

    /// Moves to OPEN for one open duration.
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from METRICS_ONLY.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// handle.transition_to_open().unwrap();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// assert_eq!(handle.snapshot().retry_after_ms, Some(30_000));
    /// # }
    /// ```
    pub fn transition_to_open(&self) -> Result<(), IllegalTransition> {
        self.transition_to(CircuitState::Open)
    }

    /// Moves to HALF_OPEN.
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from CLOSED or METRICS_ONLY.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let (_layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// assert!(handle.transition_to_half_open().is_err()); // not from CLOSED
    /// handle.transition_to_open().unwrap();
    /// handle.transition_to_half_open().unwrap(); // probe now instead of in 30 s
    /// assert_eq!(handle.state(), CircuitState::HalfOpen);
    /// # }
    /// ```
    pub fn transition_to_half_open(&self) -> Result<(), IllegalTransition> {
        self.transition_to(CircuitState::HalfOpen)
    }

    /// Moves to FORCED_OPEN: every call is rejected until another manual transition.
    ///
    /// # Errors
    ///
    /// Never in practice.
    ///
    /// # Example
    ///
    /// ```
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    /// # let svc = ServiceBuilder::new()
    /// #     .layer(layer.with_classifier(|_: &Result<(), BoxError>| Outcome::Success))
    /// #     .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
    /// // Maintenance window: call nothing until told otherwise.
    /// handle.transition_to_forced_open().unwrap();
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().state(), CircuitState::ForcedOpen);
    /// assert_eq!(handle.snapshot().not_permitted_calls, 1);
    /// # }
    /// ```
    pub fn transition_to_forced_open(&self) -> Result<(), IllegalTransition> {
        self.transition_to(CircuitState::ForcedOpen)
    }

    /// Moves to DISABLED: every call passes and nothing is recorded.
    ///
    /// # Errors
    ///
    /// Never in practice.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// handle.transition_to_disabled().unwrap();
    /// svc.ready().await.unwrap().call(500).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::Disabled);
    /// assert_eq!(handle.snapshot().failed_calls, 0);
    /// # }
    /// ```
    pub fn transition_to_disabled(&self) -> Result<(), IllegalTransition> {
        self.transition_to(CircuitState::Disabled)
    }

    /// Moves to METRICS_ONLY: every call passes, outcomes are recorded, nothing opens.
    ///
    /// # Errors
    ///
    /// Never in practice.
    ///
    /// # Example
    ///
    /// ```
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// // Try the thresholds in production without rejecting anything.
    /// handle.transition_to_metrics_only().unwrap();
    /// svc.ready().await.unwrap().call(500).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::MetricsOnly);
    /// assert_eq!(handle.snapshot().failed_calls, 1);
    /// # }
    /// ```
    pub fn transition_to_metrics_only(&self) -> Result<(), IllegalTransition> {
        self.transition_to(CircuitState::MetricsOnly)
    }

    /// Back to a fresh CLOSED from any state: window, counters and backoff attempts cleared
    /// (`not_permitted_calls` counts since the breaker was created). The listener is told a
    /// transition to CLOSED unless the breaker was CLOSED already, then
    /// [`CircuitEvent::Reset`](super::CircuitEvent::Reset) in every case.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::sync::{Arc, Mutex};
    /// # use http::Response;
    /// # use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitEvent, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let resets = Arc::new(Mutex::new(0));
    /// let seen = resets.clone();
    /// let config = CircuitBreakerConfig::default().consecutive_failures(1).on_event(move |event| {
    ///     if let CircuitEvent::Reset { .. } = event {
    ///         *seen.lock().unwrap() += 1;
    ///     }
    /// });
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// # let mut svc = ServiceBuilder::new().layer(layer).service_fn(|status: u16| async move {
    /// #     Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
    /// # });
    /// svc.ready().await.unwrap().call(500).await.unwrap();
    /// assert_eq!(handle.state(), CircuitState::Open);
    ///
    /// handle.reset();
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// assert_eq!(handle.snapshot().failed_calls, 0);
    /// assert_eq!(*resets.lock().unwrap(), 1);
    /// # }
    /// ```
    pub fn reset(&self) {
        self.core.reset();
    }
}
