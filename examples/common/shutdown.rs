//! The stop signal of the example servers: Ctrl-C, or `SIGTERM` (what `docker stop` and
//! Kubernetes send) on Unix.

use std::future::Future;

/// Completes on Ctrl-C, or on Unix on `SIGTERM` too. Both are listened for before this returns,
/// so a signal sent once the server has announced itself shuts it down gracefully instead of
/// killing the process on the spot (the default action).
pub(crate) fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
