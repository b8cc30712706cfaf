//! The retry policy: an I/O error on a connection that was open is not taken for one raised
//! before the request was sent, whatever its kind. Linux reports a connection whose host went
//! away while the client waited for the answer as "no route to host" (`EHOSTUNREACH`), the
//! kind a connection attempt to that host fails with; the request had been written, and may
//! have been acted on.
//!
//! The client is hyper-util's real one. Its connections are in memory: a loopback socket cannot
//! be made to fail with `EHOSTUNREACH`, so each connection takes the request and then fails its
//! read with that error, as the kernel would. A connection refused on a real loopback port is
//! still retried.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

use crate::retry_connect_timeouts::post_with_http_connector;

/// A connection that takes what the client writes, then fails every read with `kind`, as a
/// socket whose peer went away does. `written` counts the connections a request was written to.
struct LostAfterWrite {
    io: DuplexStream,
    kind: io::ErrorKind,
    wrote: bool,
    written: Arc<AtomicUsize>,
}

impl AsyncRead for LostAfterWrite {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.wrote {
            Poll::Ready(Err(self.kind.into()))
        } else {
            // Woken by the first write.
            Poll::Pending
        }
    }
}

impl AsyncWrite for LostAfterWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && !self.wrote {
            self.wrote = true;
            self.written.fetch_add(1, Ordering::SeqCst);
            // The read that waits on this connection (the same task) fails now.
            cx.waker().wake_by_ref();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for LostAfterWrite {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Sends a comment `POST` through `svc`, whose connections are lost with `kind` once the
/// request is written: the call fails, with the I/O error of `kind` in its source chain.
async fn post_comment_lost<S>(svc: S, kind: io::ErrorKind)
where
    S: tower::Service<Request<Full<Bytes>>, Error = BoxError>,
    S::Response: std::fmt::Debug,
{
    let req = Request::post("http://upstream.test/repos/o/r/issues/1/comments")
        .body(Full::from("{\"body\":\"LGTM\"}"))
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the call ends")
        .expect_err("no connection answers");
    let found = std::iter::successors(Some(&*err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == kind)
    });
    assert!(found, "{err:?}");
}

/// A `POST` through the policy and hyper-util's client, whose connections fail their reads with
/// `kind` once the request is written: how many connections the request was written to.
async fn post_over_lost_connections(kind: io::ErrorKind) -> usize {
    let written = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&written);
    // Each connection's other end is kept until the call is over, so writes succeed.
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = Arc::clone(&peers);
    let connector = tower::service_fn(move |_: Uri| {
        let (io, peer) = tokio::io::duplex(64 * 1024);
        kept.lock().unwrap().push(peer);
        let conn = LostAfterWrite {
            io,
            kind,
            wrote: false,
            written: Arc::clone(&count),
        };
        // hyper-util wants connect futures it can move.
        Box::pin(async move { Ok::<_, io::Error>(TokioIo::new(conn)) })
    });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let svc = ServiceBuilder::new()
        .layer(
            RetryPolicy::new()
                .backoff(Duration::from_millis(1), Duration::from_millis(5))
                .into_layer(),
        )
        .map_err(BoxError::from)
        .service(client);
    post_comment_lost(svc, kind).await;
    written.load(Ordering::SeqCst)
}

/// A `POST` whose connection fails with "no route to host" or "network unreachable" after the
/// request was written is not sent again: the upstream may have acted on it (a comment posted
/// twice). The policy used to read those kinds anywhere in the chain as a connection that never
/// opened, and sent the `POST` four times.
#[tokio::test]
async fn a_post_whose_open_connection_became_unreachable_is_not_sent_again() {
    for kind in [
        io::ErrorKind::HostUnreachable,
        io::ErrorKind::NetworkUnreachable,
        io::ErrorKind::ConnectionRefused,
    ] {
        assert_eq!(post_over_lost_connections(kind).await, 1, "{kind:?}");
    }
}

/// A `POST` whose connection could not be opened (a closed loopback port) is still sent again,
/// through the same client: hyper-util's connect error wraps the refused connection, and hyper's
/// error is not in its chain.
#[tokio::test]
async fn a_post_whose_connection_was_refused_is_still_sent_again() {
    let port = crate::unopened::closed_port();
    let (err, connects) =
        post_with_http_connector(format!("http://127.0.0.1:{port}/comments")).await;
    assert!(err.to_string().contains("client error (Connect)"), "{err}");
    assert_eq!(connects, 3);
}

/// An application's error that is the hyper error it wraps, as thiserror's `transparent` (and
/// anyhow) make one: its `source()` is the hyper error's own, so a walk of the chain never meets
/// the hyper error itself.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct AppError(hyper::Error);

/// A `POST` through the policy and hyper's own HTTP/1 connection client (no pool, no connector:
/// each attempt opens a connection of its own, which takes the request and then fails its read
/// with `kind`), whose error is handed on by `wrap`: how many connections the request was
/// written to.
async fn post_over_hyper_connections(
    kind: io::ErrorKind,
    wrap: fn(hyper::Error) -> BoxError,
) -> usize {
    let written = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&written);
    let svc = ServiceBuilder::new()
        .layer(
            RetryPolicy::new()
                .backoff(Duration::from_millis(1), Duration::from_millis(5))
                .into_layer(),
        )
        .service_fn(move |req: Request<Full<Bytes>>| {
            let count = Arc::clone(&count);
            async move {
                let (io, peer) = tokio::io::duplex(64 * 1024);
                let conn = LostAfterWrite {
                    io,
                    kind,
                    wrote: false,
                    written: count,
                };
                let (mut send, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(conn))
                        .await
                        .map_err(wrap)?;
                tokio::spawn(connection);
                let res = send.send_request(req).await.map_err(wrap);
                drop(peer);
                res
            }
        });
    post_comment_lost(svc, kind).await;
    written.load(Ordering::SeqCst)
}

/// "No route to host" on a connection that was open, under an application error that hides
/// hyper's (its `source()` skips it): the `POST` is not sent again. Outside a connect error, the
/// policy no longer reads those kinds as a connection never opened; it sent the `POST` four
/// times. The same under `io::Error::other`, whose `source()` skips the hyper error too: the
/// policy looks into the `io::Error` and finds it, so even a refused read is not taken for a
/// refused connection.
#[tokio::test]
async fn a_post_whose_hyper_error_is_hidden_by_a_wrapper_is_not_sent_again() {
    let transparent: fn(hyper::Error) -> BoxError = |e| Box::new(AppError(e));
    let other: fn(hyper::Error) -> BoxError = |e| Box::new(io::Error::other(e));
    for (wrap, kind) in [
        (transparent, io::ErrorKind::HostUnreachable),
        (transparent, io::ErrorKind::NetworkUnreachable),
        (other, io::ErrorKind::HostUnreachable),
        (other, io::ErrorKind::ConnectionRefused),
    ] {
        assert_eq!(post_over_hyper_connections(kind, wrap).await, 1, "{kind:?}");
    }
}
