//! The documentation: what README, guides and API docs say is what the crate does.
//!
//! One test binary per area: each file below is a module of it.

// Helpers shared by the modules below, compiled once for the whole binary.
#[path = "../common/client.rs"]
mod client;

mod documented_defaults;
mod documented_statuses;
mod documented_versions;
mod feature_gated_examples;
mod readme_server;
mod refusal_messages;
