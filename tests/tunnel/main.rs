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
#[path = "../common/ports.rs"]
mod ports;
#[path = "../tunnel/support.rs"]
mod support;
#[path = "../common/unopened.rs"]
mod unopened;

mod bore_reopen;
mod bore_shared_server_url;
mod localtunnel_chosen_subdomain;
mod localtunnel_new_names;
mod localtunnel_registration;
mod localtunnel_url_token;
mod tunnel_bore;
mod tunnel_chain;
mod tunnel_edges;
mod tunnel_failure_reasons;
mod tunnel_lifecycle;
mod tunnel_localtunnel;
mod tunnel_startup_timeouts;
mod tunnel_tls;
mod tunnel_upgrades;
mod tunnel_url_passwords;
