//! SignatureLayer and the providers' verifiers, against real servers and peer libraries.
//!
//! One test binary per area: each file below is a module of it.

// Helpers shared by the modules below, compiled once for the whole binary.
#[path = "../common/axum_serve.rs"]
mod axum_serve;
#[path = "../common/child.rs"]
mod child;
#[path = "../common/chunks.rs"]
mod chunks;
#[path = "../common/deliver.rs"]
mod deliver;
#[path = "../../examples/common/echo.rs"]
#[allow(dead_code)]
mod echo;
#[path = "../common/github_hook.rs"]
mod github_hook;
#[path = "../common/incoming.rs"]
mod incoming;
#[path = "../common/later_store.rs"]
mod later_store;
#[path = "../common/logs.rs"]
mod logs;
#[path = "../interop/peers.rs"]
mod peers;
#[path = "../common/redis_server.rs"]
mod redis_server;
#[path = "../common/grpc_watch.rs"]
mod watch;

mod sg2_review3;
mod sig_logs_review4;
mod sig_perf13;
mod sig_review10;
mod sig_review14;
mod sig_review15;
mod sig_review16;
mod sig_review17;
mod sig_review3;
mod sig_review4;
mod sig_review5;
mod sig_review6;
mod sig_review7;
mod sig_review8;
mod sig_review9;
mod signature;
mod signature_fuzz;
mod signature_http;
mod signature_interop;
mod signature_layer_review;
mod signature_redis;
mod signature_regressions;
mod signature_review2;
