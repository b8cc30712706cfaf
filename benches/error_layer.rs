//! Cost of WebhookErrorLayer on the success path, against the bare service in the same run, and
//! for scale against tower's identity `MapResponse` and a layer whose future only forwards.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::util::MapResponseLayer;
use tower::{Layer, Service, service_fn};
use tower_webhook::error::WebhookErrorLayer;

/// Polls a future that is ready at once, without a runtime, so only the service is measured.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the benchmarked service is always ready"),
    }
}

fn request() -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from_static(b"{\"action\":\"opened\"}")));
    // Pre-parsed names: only the services should be measured, not header-name parsing.
    static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    req.headers_mut()
        .insert(&X_REQUEST_ID, http::HeaderValue::from_static("bench-1"));
    req
}

async fn handler(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn error_layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("error_layer");
    let mut bare = service_fn(handler);
    group.bench_function("bare", |b| {
        b.iter(|| {
            ready(bare.ready_now()).unwrap();
            black_box(ready(bare.call(black_box(request())))).unwrap()
        })
    });
    let mut layered = WebhookErrorLayer::new().layer(service_fn(handler));
    group.bench_function("layer", |b| {
        b.iter(|| {
            ready(layered.ready_now()).unwrap();
            black_box(ready(layered.call(black_box(request())))).unwrap()
        })
    });
    // tower's identity `MapResponse`, for scale.
    let mut identity =
        MapResponseLayer::new(|res: Response<Full<Bytes>>| res).layer(service_fn(handler));
    group.bench_function("tower_map_response", |b| {
        b.iter(|| {
            ready(identity.ready_now()).unwrap();
            black_box(ready(identity.call(black_box(request())))).unwrap()
        })
    });
    // A layer whose future only forwards `poll`, for the floor: what wrapping a future costs by
    // itself. Whatever `layer` adds over it is the price of what the layer does.
    let mut forwarding = Forwarding(service_fn(handler));
    group.bench_function("forwarding", |b| {
        b.iter(|| {
            ready(forwarding.ready_now()).unwrap();
            black_box(ready(forwarding.call(black_box(request())))).unwrap()
        })
    });
    group.finish();
}

/// A service that hands the request on and returns the inner future inside its own.
struct Forwarding<S>(S);

impl<S: Service<R>, R> Service<R> for Forwarding<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = ForwardingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        ForwardingFuture {
            inner: self.0.call(req),
        }
    }
}

#[pin_project::pin_project]
struct ForwardingFuture<F> {
    #[pin]
    inner: F,
}

impl<F: Future> Future for ForwardingFuture<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

/// `poll_ready` as a future, like `ServiceExt::ready`, without borrowing helpers.
trait ReadyNow<R>: Service<R> {
    fn ready_now(&mut self) -> impl Future<Output = Result<(), Self::Error>> {
        std::future::poll_fn(move |cx| self.poll_ready(cx))
    }
}
impl<S: Service<R>, R> ReadyNow<R> for S {}

criterion_group!(benches, error_layer);
criterion_main!(benches);
