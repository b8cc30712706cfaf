//! A tiny gRPC service written by hand (no protoc, no build script): `test.Echo/Say` echoes a
//! message. Shared by the tonic examples.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::Status;
use tonic_prost::ProstCodec;

/// The request and reply message.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Echo {
    /// The text to echo.
    #[prost(string, tag = "1")]
    pub(crate) message: String,
}

/// The method's path.
pub(crate) const SAY: &str = "/test.Echo/Say";

/// The codec both sides use.
pub(crate) fn codec() -> ProstCodec<Echo, Echo> {
    ProstCodec::default()
}

/// Sends `request` to `test.Echo/Say` at `addr` over a new channel: the reply, or the status.
pub(crate) async fn say(
    addr: std::net::SocketAddr,
    request: tonic::Request<Echo>,
) -> Result<tonic::Response<Echo>, Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("a loopback URI")
        .connect()
        .await
        .expect("the server accepts the connection");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("the channel is ready");
    client
        .unary(request, http::uri::PathAndQuery::from_static(SAY), codec())
        .await
}

/// The server: echoes, panics on `"panic"`, sleeps on `"slow"`, fails on `"fail"`.
#[derive(Clone, Debug, Default)]
pub(crate) struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "test.Echo";
}

struct Say;

impl tonic::server::UnaryService<Echo> for Say {
    type Response = Echo;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Echo>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<Echo>) -> Self::Future {
        Box::pin(async move {
            let message = request.into_inner().message;
            match message.as_str() {
                "panic" => panic!("the echo handler panicked"),
                "fail" => Err(Status::unavailable("echo backend is down")),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(tonic::Response::new(Echo { message }))
                }
                _ => Ok(tonic::Response::new(Echo { message })),
            }
        })
    }
}

impl tower::Service<Request<tonic::body::Body>> for EchoService {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(codec());
            Ok(grpc.unary(Say, req).await)
        })
    }
}
