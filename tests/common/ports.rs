//! Ports for servers a test starts later in another process (redis-server, node).

use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, TcpListener};

/// A port on 127.0.0.1 free now, for a server the test starts on it later (and may restart on
/// it). Picked below the kernel's range of ephemeral ports where it can: a port picked by binding
/// port 0 comes from that range, and an outgoing connection of another test (or of the server's
/// own clients) can take it before the server binds it, or while a restarted server is down.
pub(crate) fn server_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    const FROM: u16 = 10_000;
    if low > FROM + 1_000 {
        let span = u64::from(low - FROM);
        let start = RandomState::new().hash_one(std::process::id());
        for i in 0..1_000 {
            let port = FROM + (start.wrapping_add(i) % span) as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
