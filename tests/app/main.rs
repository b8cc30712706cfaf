//! The pr_agent_server example and the other examples, driven as their users run them.
//!
//! One test binary per area: each file below is a module of it.

// The examples each include their own copy of `examples/common/*.rs`.
#![allow(clippy::duplicate_mod)]

// Helpers shared by the modules below, compiled once for the whole binary.
#[path = "../../examples/pr_agent_server/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "../common/child.rs"]
mod child;
#[path = "../common/client.rs"]
mod client;
#[path = "../../examples/common/echo.rs"]
#[allow(dead_code)]
mod echo;
#[path = "../common/pr_agent.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../../examples/hyper_server.rs"]
#[allow(dead_code)]
mod hyper_server;
#[path = "../../examples/load_test.rs"]
#[allow(dead_code)]
mod load_test;
#[path = "../common/logs.rs"]
mod logs;
#[path = "../interop/peers.rs"]
mod peers;
#[path = "../common/ports.rs"]
#[allow(dead_code)] // the tunnel support uses it
mod ports;
#[path = "../tunnel/support.rs"]
mod support;
#[path = "../../examples/tonic_server.rs"]
#[allow(dead_code)]
mod tonic_server;
#[path = "../common/unopened.rs"]
mod unopened;

mod app_any_interface;
mod app_comment_retries;
mod app_documented_payloads;
mod app_late_redelivery;
mod app_load_test_servers;
mod app_loopback_peers;
mod app_own_comments;
mod app_provider_test_deliveries;
mod app_settings_and_logs;
mod app_startup_and_exit;
mod app_tls_refused;
mod env_not_utf8;
mod pr_agent_server;
