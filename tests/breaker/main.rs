//! The circuit breaker: its state machine, its HTTP and gRPC classification, keyed breakers.
//!
//! One test binary per area: each file below is a module of it.

// Helpers shared by the modules below, compiled once for the whole binary.
#[path = "../common/child.rs"]
mod child;
#[path = "../common/client.rs"]
mod client;
#[path = "../../examples/common/echo.rs"]
#[allow(dead_code)]
mod echo;
#[path = "../common/hyper_one.rs"]
mod hyper_one;
#[path = "../common/incoming.rs"]
mod incoming;
#[path = "../common/logs.rs"]
#[allow(dead_code)]
mod logs;
#[path = "../common/trailer_body.rs"]
mod trailer_body;

mod breaker_bucket_rollover;
mod breaker_calls_never_made;
mod breaker_events_and_snapshot;
mod breaker_grpc_pushback;
mod breaker_grpc_status;
mod breaker_grpc_stream_timing;
mod breaker_half_open_probes;
mod breaker_panics;
mod breaker_reset_events;
mod breaker_stale_retry_after;
mod breaker_status_errors;
mod breaker_upstream_waits;
mod breaker_windows_and_timeouts;
mod circuit_breaker;
mod circuit_breaker_e2e;
mod circuit_breaker_edges;
mod circuit_breaker_generations;
mod circuit_breaker_http;
mod circuit_breaker_model;
