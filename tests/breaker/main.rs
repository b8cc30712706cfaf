//! The circuit breaker: its state machine, its HTTP and gRPC classification, keyed breakers.
//!
//! One test binary per area: each file below is a module of it.

// Helpers shared by the modules below, compiled once for the whole binary.
#[path = "../common/child.rs"]
mod child;
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

mod brk_review10;
mod brk_review12;
mod brk_review16;
mod brk_review17;
mod brk_review18;
mod brk_review4;
mod brk_review5;
mod brk_review6;
mod brk_review7;
mod brk_review8;
mod circuit_breaker;
mod circuit_breaker_e2e;
mod circuit_breaker_edges;
mod circuit_breaker_generations;
mod circuit_breaker_http;
mod circuit_breaker_model;
mod resilience_review;
