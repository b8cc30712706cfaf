//! The retry policy, `Retry-After`, and the reqwest integrations.
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
#[path = "../common/incoming.rs"]
mod incoming;
#[path = "../common/unopened.rs"]
mod unopened;

mod reqwest_0_12;
mod retry;
mod retry_after;
mod retry_after_dates;
mod retry_connect_timeouts;
mod retry_error_layer;
mod retry_open_connections;
mod retry_rate_limits;
mod retry_redirects;
mod retry_refusals;
mod retry_refused_streams;
mod retry_status_errors;
