//! Addresses on 127.0.0.1 where no connection opens:
//! - [`unopened_address`]: a listener that never accepts, its queue full, so the kernel drops the
//!   next connection's SYN, as an API host that drops packets (down, or behind a firewall) does.
//!   A client's connect waits until its own timeout ends it.
//! - [`closed_port`]: a port nothing listens on, so a connection is refused at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A port on 127.0.0.1 that nothing listens on, and nothing will: it stays bound, without
/// listening, for the rest of the test run, so a connection to it is refused, and no other
/// test's listener (an [`unopened_address`], say) can take it meanwhile, as it could a port
/// bound and released.
pub(crate) fn closed_port() -> u16 {
    static HELD: Mutex<Vec<TcpSocket>> = Mutex::new(Vec::new());
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    HELD.lock().unwrap().push(socket);
    port
}

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
