//! Public URLs for a local webhook server, through a chain of tunnel providers.
//!
//! A webhook provider (GitHub, GitLab, ...) must reach your server. During development, or on
//! a machine without a public address, a tunnel gives it a public URL. This module opens one
//! through the first provider of a chain that works:
//!
//! - `Ngrok` (feature `ngrok`): the official `ngrok` crate; tried only with an auth token.
//! - [`Cloudflared`]: a Cloudflare quick tunnel, when the `cloudflared` binary is on `PATH`.
//! - [`LocalTunnel`]: a native client of the localtunnel server protocol.
//! - [`Bore`]: a native client of bore's protocol (plain TCP, with optional secret).
//! - your own [`Provider`].
//!
//! Each provider gets a hard startup timeout; when it fails, the chain logs why and moves on;
//! when all fail, [`TunnelError::AllFailed`] lists every reason and what to do about it.
//! After a provider starts, a round-trip probe (a request with a random nonce through the public
//! URL) must come back to this process. Registration and probe requests to `https://` addresses
//! go over TLS (rustls), certificates verified against [`TlsRoots`] (the Mozilla root set, plus
//! any private CA you add). The [`TunnelHandle`] reports the URL and status events
//! ([`TunnelEvent::Up`], [`UrlChanged`](TunnelEvent::UrlChanged), [`Down`](TunnelEvent::Down)),
//! and its supervisor re-opens a dropped tunnel with backoff. [`TunnelHandle::close`] (or
//! dropping the handle) tears everything down.
//!
//! The tunnel leads to an [`Upstream`]: a local address, or a tower `Service` (an axum `Router`,
//! say) served with hyper on each tunnel connection, so no local port is needed at all.
//!
//! [`TunnelConfig::from_env`] reads `TUNNEL_SERVICE`, `TUNNEL_AUTH_TOKEN`, `TUNNEL_REGION`,
//! `TUNNEL_SERVER` and `TUNNEL_SECRET`; [`start`] and [`Server`] bind, tunnel and serve with
//! graceful shutdown.
//!
//! Unlike the signature and circuit-breaker modules, this is not a layer: it sits in front of the
//! whole stack, outside the service it exposes.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower_webhook::tunnel::{Bore, LocalTunnel, Tunnel, Upstream};
//!
//! let app = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("ok")))
//! });
//! let handle = Tunnel::builder()
//!     .provider(LocalTunnel::new().server("http://lt.example.com"))
//!     .fallback(Bore::new())
//!     .start(Upstream::service(app))
//!     .await?;
//! println!("point the webhook at {}", handle.url());
//! handle.close().await;
//! # Ok(()) }
//! ```

mod accept;
mod bore;
mod cloudflared;
mod config;
mod error;
mod handle;
mod http;
mod io;
mod localtunnel;
#[cfg(feature = "ngrok")]
mod ngrok;
mod provider;
mod reclaim;
mod secret;
mod server;
mod time;
mod tls;
mod upstream;

pub use self::bore::{BORE_CONTROL_PORT, BORE_MAX_CONNECTIONS, BORE_PUBLIC_SERVER, Bore};
pub use self::cloudflared::Cloudflared;
pub use self::config::{ProviderKind, TunnelConfig};
pub use self::error::{Attempt, TunnelError};
pub use self::handle::{Tunnel, TunnelBuilder, TunnelEvent, TunnelEvents, TunnelHandle};
pub use self::localtunnel::{LOCALTUNNEL_PUBLIC_SERVER, LocalTunnel};
#[cfg(feature = "ngrok")]
#[cfg_attr(docsrs, doc(cfg(feature = "ngrok")))]
pub use self::ngrok::Ngrok;
pub use self::provider::{BoxFuture, Provider, SESSION_STOP_GRACE, Session, StopSignal};
pub use self::server::{Running, Server, start};
pub use self::tls::TlsRoots;
pub use self::upstream::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, PROBE_HEADER,
    PROBE_PATH, Upstream,
};
