//! The tunnel bootstrapper, against real tunnel servers and clients on loopback.
//!
//! One test binary per area: each file below is a module of it.

// Helpers shared by the modules below, compiled once for the whole binary.
#[path = "../common/bore_frames.rs"]
mod bore_frames;
#[path = "../common/child.rs"]
mod child;
#[path = "../common/gated.rs"]
mod gated;
#[path = "../common/logs.rs"]
mod logs;
#[path = "../common/lt_fake.rs"]
mod lt_fake;
#[path = "../common/lt_scripted.rs"]
mod lt_scripted;
#[path = "../tunnel/support.rs"]
mod support;

mod tun_review10;
mod tun_review12;
mod tun_review14;
mod tun_review15;
mod tun_review16;
mod tun_review3;
mod tun_review4;
mod tun_review5;
mod tun_review6;
mod tun_review7;
mod tunnel_bore;
mod tunnel_chain;
mod tunnel_edges;
mod tunnel_lifecycle;
mod tunnel_localtunnel;
mod tunnel_tls;
