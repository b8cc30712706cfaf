//! Tunnels (work in progress on this branch).
