//! A deadline on a new connection's first bytes, for the example servers: hyper waits for them
//! without one (to tell HTTP/2 from HTTP/1, or for the HTTP/2 preface), so a client that
//! connects and sends nothing would hold its connection forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The HTTP/2 client preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted connection that must show which protocol it speaks before `deadline` completes:
/// send the whole HTTP/2 preface, or a first byte that is not part of it (an HTTP/1 request,
/// whose head hyper's own `header_read_timeout` then bounds). A read still waiting for that
/// when the deadline comes fails with `TimedOut`, which ends the connection.
pub(crate) struct PrefaceDeadline {
    pub(crate) io: TcpStream,
    /// Bytes of the preface seen so far.
    seen: usize,
    /// `None` once the protocol is known.
    deadline: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl PrefaceDeadline {
    /// `io`, to show its protocol before `deadline` completes.
    pub(crate) fn new(io: TcpStream, deadline: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            io,
            seen: 0,
            deadline: Some(Box::pin(deadline)),
        }
    }
}

impl AsyncRead for PrefaceDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = &mut this.deadline else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                let expected = &PREFACE[this.seen..];
                let n = read.len().min(expected.len());
                this.seen += n;
                if read[..n] != expected[..n] || this.seen == PREFACE.len() {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent no request before its deadline",
                )))
            }
            polled => polled,
        }
    }
}

impl AsyncWrite for PrefaceDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
