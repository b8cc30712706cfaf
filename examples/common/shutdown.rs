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

/// Counts the stop signals (Ctrl-C, or on Unix `SIGTERM` too) received from now on, for a server
/// that stops in steps: the first one starts its graceful shutdown, a second one cuts the rest
/// of it short. Both are listened for before this returns, so a second signal that comes while
/// the first one's work is still going on (open requests answered, a tunnel closed) is counted
/// too. Needs a tokio runtime.
#[allow(dead_code)] // pr_agent_server's; the other servers stop in one step
pub(crate) fn count_stop_signals() -> std::io::Result<tokio::sync::watch::Receiver<u32>> {
    let (count, counted) = tokio::sync::watch::channel(0u32);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    Some(()) = interrupt.recv() => true,
                    Some(()) = terminate.recv() => true,
                    else => false,
                };
                if !received {
                    return;
                }
                count.send_modify(|n| *n = n.saturating_add(1));
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            count.send_modify(|n| *n = n.saturating_add(1));
        }
    });
    Ok(counted)
}
