//! A server-streaming gRPC method, written by hand: `test.Stream/Watch`, for the tests of
//! `RecordDelivery::AfterSuccess` on streamed gRPC answers (`sig_grpc_trailers`,
//! `sig_grpc_web_trailers`). `"ok"` sends `"one"` and `"two"` and ends (`grpc-status: 0`); `"fail"`
//! sends `"one"`, then fails with `Internal` (13); `"hang"` sends `"one"`, then waits forever and
//! says when its stream is dropped. Its test crate has the `echo` module at its root. [`Server`] is
//! what those tests' servers report.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::stream::{self, BoxStream, StreamExt};
use http::{Request, Response};
use tokio::sync::mpsc;
use tonic::Status;

use super::echo::{Echo, codec};

pub(crate) const WATCH: &str = "/test.Stream/Watch";

/// A tonic server on a loopback port, behind the layer under test: how many calls got past the
/// layer (were processed), and a signal for each `"hang"` stream dropped. Aborted on drop.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) processed: Arc<AtomicUsize>,
    pub(crate) dropped: mpsc::UnboundedReceiver<()>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub(crate) fn processed(&self) -> usize {
        self.processed.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub(crate) struct StreamService {
    pub(crate) dropped: mpsc::UnboundedSender<()>,
}

impl tonic::server::NamedService for StreamService {
    const NAME: &'static str = "test.Stream";
}

struct Watch(mpsc::UnboundedSender<()>);

/// Says when it is dropped (with the stream that owns it).
struct OnDrop(mpsc::UnboundedSender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

fn echo(message: &str) -> Result<Echo, Status> {
    Ok(Echo {
        message: message.to_owned(),
    })
}

impl tonic::server::ServerStreamingService<Echo> for Watch {
    type Response = Echo;
    type ResponseStream = BoxStream<'static, Result<Echo, Status>>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Echo>) -> Self::Future {
        // Each message is sent once the stream waits (as a stream on its source does).
        fn waits_once() -> BoxStream<'static, Result<Echo, Status>> {
            let mut waited = false;
            stream::poll_fn(move |cx| {
                if std::mem::replace(&mut waited, true) {
                    return Poll::Ready(None);
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .boxed()
        }
        let stream = match request.into_inner().message.as_str() {
            "ok" => stream::iter([echo("one")])
                .chain(waits_once())
                .chain(stream::iter([echo("two")]))
                .boxed(),
            "fail" => stream::iter([echo("one")])
                .chain(waits_once())
                .chain(stream::iter([Err(Status::internal("the source broke"))]))
                .boxed(),
            _ => {
                let guard = OnDrop(self.0.clone());
                stream::iter([echo("one")])
                    .chain(stream::poll_fn(move |_| {
                        let _ = &guard;
                        Poll::Pending
                    }))
                    .boxed()
            }
        };
        std::future::ready(Ok(tonic::Response::new(stream)))
    }
}

impl tower::Service<Request<tonic::body::Body>> for StreamService {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let watch = Watch(self.dropped.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(codec());
            Ok(grpc.server_streaming(watch, req).await)
        })
    }
}
