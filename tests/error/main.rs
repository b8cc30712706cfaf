//! WebhookErrorLayer: every error and panic becomes a correct HTTP or gRPC answer.
//!
//! One test binary per area: each file below is a module of it.

// Helpers shared by the modules below, compiled once for the whole binary.
#[path = "../common/axum_serve.rs"]
mod axum_serve;
#[path = "../common/client.rs"]
mod client;
#[path = "../../examples/common/echo.rs"]
#[allow(dead_code)]
mod echo;
#[path = "../common/failing_body.rs"]
mod failing_body;
#[path = "../common/github_hook.rs"]
mod github_hook;
#[path = "../common/hyper_one.rs"]
mod hyper_one;
#[path = "../common/incoming.rs"]
mod incoming;
#[path = "../common/logs.rs"]
mod logs;
#[path = "../common/unopened.rs"]
#[allow(dead_code)] // `unopened_address`
mod unopened;

mod err_body;
mod err_body_cut_short;
mod err_cyclic_chains;
mod err_io_errors_and_408;
mod err_panics_outside_handler;
mod err_passed_through_statuses;
mod err_request_id_metadata;
mod err_tonic_status;
mod err_url_credentials;
mod err_url_path_tokens;
mod err_www_authenticate;
mod error_layer;
mod tower_http_0_7;
