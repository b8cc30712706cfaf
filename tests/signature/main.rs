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
#[path = "../common/client.rs"]
mod client;
#[path = "../common/deliver.rs"]
mod deliver;
#[path = "../../examples/common/echo.rs"]
#[allow(dead_code)]
mod echo;
#[path = "../common/github_hook.rs"]
mod github_hook;
#[path = "../common/hyper_one.rs"]
mod hyper_one;
#[path = "../common/incoming.rs"]
mod incoming;
#[path = "../common/later_store.rs"]
mod later_store;
#[path = "../common/logs.rs"]
mod logs;
#[path = "../interop/peers.rs"]
mod peers;
#[path = "../common/ports.rs"]
mod ports;
#[path = "../common/redis_server.rs"]
mod redis_server;
#[path = "../common/grpc_watch.rs"]
mod watch;

mod sig_fast_paths;
mod sig_gitea_form_and_blank_secret;
mod sig_gitlab_signing_token;
mod sig_grpc_trailers;
mod sig_grpc_web_trailers;
mod sig_inner_service;
mod sig_logged_request_ids;
mod sig_memory_store_sweeps;
mod sig_memory_store_ttls;
mod sig_operator_logs;
mod sig_provider_test_buttons;
mod sig_redis_connect;
mod sig_redis_timeout;
mod sig_refused_deliveries;
mod sig_replay_claims_and_ttls;
mod sig_replay_store_failures;
mod sig_replays_without_ids;
mod sig_request_path;
mod signature;
mod signature_fuzz;
mod signature_http;
mod signature_interop;
mod signature_redis;
mod signature_regressions;
