//! The documentation: what README, guides and API docs say is what the crate does.
//!
//! One test binary per area: each file below is a module of it.

// Helpers shared by the modules below, compiled once for the whole binary.

mod doc_review13;
mod doc_review14;
mod doc_review15;
mod doc_review3;
mod doc_review4;
mod doc_review5;
