//! An address on 127.0.0.1 where no connection opens: a listener that never accepts, its queue
//! full, so the kernel drops the next connection's SYN, as an API host that drops packets (down,
//! or behind a firewall) does. A client's connect waits until its own timeout ends it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The address, and the listener and the connections that fill its queue: keep them while the
/// address is in use.
pub(crate) async fn unopened_address() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    // Linux queues one more connection than the backlog; a kernel that queues more is filled too.
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(conn) => held.push(conn.unwrap()),
            Err(_) => return (addr, listener, held),
        }
    }
    panic!("the listener's queue never filled");
}
