//! Retry policy (work in progress on this branch).
