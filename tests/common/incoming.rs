//! A listener on a loopback port, as the stream of connections tonic's `serve_with_incoming`
//! takes: for tests that run a real tonic server.

use std::net::SocketAddr;

use futures_core::Stream;
use tokio::net::{TcpListener, TcpStream};

/// Binds a loopback port: its address, and its connections as they are accepted.
pub(crate) async fn loopback() -> (SocketAddr, impl Stream<Item = std::io::Result<TcpStream>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(s, _)| s);
        Some((conn, listener))
    });
    (addr, incoming)
}
