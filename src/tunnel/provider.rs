//! The provider trait and the session a provider opens.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Upstream;
use crate::BoxError;

/// A boxed, sendable future, the return type of [`Provider::open`].
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::BoxFuture;
///
/// fn public_port(port: u16) -> BoxFuture<'static, String> {
///     Box::pin(async move { format!("http://bore.example.com:{port}") })
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(public_port(41001).await, "http://bore.example.com:41001");
/// # }
/// ```
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way to get a public URL: localtunnel, bore, ngrok, cloudflared, or your own.
///
/// [`open`](Provider::open) does the startup work (register, authenticate, spawn) and returns
/// a running [`Session`] once the public URL is known. The chain in
/// [`TunnelBuilder`](super::TunnelBuilder) bounds it with [`startup_timeout`](Provider::startup_timeout)
/// and drops it when the time is up, so everything it started must stop on drop. A panic in
/// `open` (a bug) fails that attempt as an error does, with the panic's message as its reason:
/// the chain moves on, and a tunnel being re-opened is retried.
///
/// # Example
///
/// A provider for a URL that is already public, such as a port opened on a router:
///
/// ```
/// use tower_webhook::tunnel::{BoxFuture, Provider, Session, Tunnel, Upstream};
/// use tower_webhook::BoxError;
///
/// #[derive(Debug)]
/// struct Static(&'static str);
///
/// impl Provider for Static {
///     fn name(&self) -> &str {
///         "static"
///     }
///
///     fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
///         let url = self.0;
///         Box::pin(async move {
///             Ok(Session::spawn(url, |mut stop| async move {
///                 stop.stopped().await;
///                 Ok(())
///             }))
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // The router forwards to this machine already: no round trip to prove it here.
/// let handle = Tunnel::builder()
///     .probe(false)
///     .provider(Static("https://hooks.example.org"))
///     .start(Upstream::address("127.0.0.1:3000".parse().unwrap()))
///     .await
///     .unwrap();
/// assert_eq!(handle.url(), "https://hooks.example.org");
/// handle.close().await;
/// # }
/// ```
pub trait Provider: fmt::Debug + Send + Sync + 'static {
    /// A short name for logs and errors, such as `bore`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Bore, LocalTunnel, Provider};
    ///
    /// assert_eq!(Provider::name(&Bore::new()), "bore");
    /// assert_eq!(Provider::name(&LocalTunnel::new()), "localtunnel");
    /// ```
    fn name(&self) -> &str;

    /// The hard limit for [`open`](Provider::open) plus the round-trip probe. Default 15 s.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Bore, BoxFuture, Provider, Session, Upstream};
    /// use tower_webhook::BoxError;
    ///
    /// #[derive(Debug)]
    /// struct Static;
    ///
    /// impl Provider for Static {
    ///     fn name(&self) -> &str {
    ///         "static"
    ///     }
    ///     fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
    ///         Box::pin(async { Err("not needed here".into()) })
    ///     }
    /// }
    ///
    /// assert_eq!(Static.startup_timeout(), Duration::from_secs(15)); // the default
    /// let bore = Bore::new().startup_timeout(Duration::from_secs(20));
    /// assert_eq!(Provider::startup_timeout(&bore), Duration::from_secs(20));
    /// ```
    fn startup_timeout(&self) -> Duration {
        Duration::from_secs(15)
    }

    /// How long the round-trip probe of a tunnel this provider opened may take, when that is
    /// longer than the builder's [`probe_timeout`](super::TunnelBuilder::probe_timeout): for a
    /// public URL that takes a while to become reachable (a cloudflared quick tunnel's new
    /// hostname). The probe still ends with the provider's startup timeout; a provider without
    /// one (a startup timeout too long for a deadline, such as `Duration::MAX`) gets the
    /// builder's. Default `None`: the builder's.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::tunnel::{Bore, Cloudflared, Provider};
    ///
    /// assert_eq!(Provider::probe_timeout(&Bore::new()), None);
    /// // A quick tunnel's hostname may take the rest of the startup timeout to resolve.
    /// let cloudflared = Cloudflared::new().startup_timeout(Duration::from_secs(40));
    /// assert_eq!(Provider::probe_timeout(&cloudflared), Some(Duration::from_secs(40)));
    /// ```
    fn probe_timeout(&self) -> Option<Duration> {
        None
    }

    /// What the user can do when this provider fails, such as "set TUNNEL_AUTH_TOKEN".
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{Bore, Provider};
    ///
    /// let hint = Provider::hint(&Bore::new().server("bore.example.com")).unwrap();
    /// assert!(hint.contains("bore.example.com:7835"), "{hint}");
    /// ```
    fn hint(&self) -> Option<String> {
        None
    }

    /// Opens a tunnel whose connections are served by `upstream`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tower_webhook::tunnel::{BoxFuture, Provider, Session, Upstream};
    /// use tower_webhook::BoxError;
    ///
    /// /// A URL that is already public, such as a port opened on a router.
    /// #[derive(Debug)]
    /// struct Static(&'static str);
    ///
    /// impl Provider for Static {
    ///     fn name(&self) -> &str {
    ///         "static"
    ///     }
    ///     fn open(&self, _upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>> {
    ///         let url = self.0;
    ///         Box::pin(async move {
    ///             Ok(Session::spawn(url, |mut stop| async move {
    ///                 stop.stopped().await;
    ///                 Ok(())
    ///             }))
    ///         })
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let upstream = Upstream::address(SocketAddr::from(([127, 0, 0, 1], 3000)));
    /// let session = Static("https://bot.example.com").open(upstream).await.unwrap();
    /// assert_eq!(session.url(), "https://bot.example.com");
    /// # }
    /// ```
    fn open(&self, upstream: Upstream) -> BoxFuture<'_, Result<Session, BoxError>>;
}

/// A running tunnel of one provider: its public URL and the task that keeps it open.
///
/// The task's future ends with `Ok(())` after a requested stop (or when the remote side ended the
/// tunnel) and with `Err(reason)` when the tunnel was lost. Dropping the session asks the task to
/// stop and gives it [`SESSION_STOP_GRACE`] (10 s) to tear the tunnel down, as closing the tunnel
/// does, then aborts it: a teardown that hangs (an SDK's close that waits on its service without
/// a timeout, say) does not keep the task and what it holds forever.
/// [`TunnelHandle`](super::TunnelHandle) watches the task and re-opens the tunnel when it ends
/// without being asked to.
///
/// A URL may carry credentials (`https://user:password@host`, a token in its query) for the
/// webhook sender: [`url`](Self::url) gives it whole, while `Debug` output and the tunnel's logs
/// leave them out.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower_webhook::tunnel::Session;
///
/// let session = Session::spawn("http://127.0.0.1:9", |mut stop| async move {
///     stop.stopped().await;
///     Ok(())
/// });
/// assert_eq!(session.url(), "http://127.0.0.1:9");
///
/// let session = Session::spawn("https://hook:s3cret@hooks.example.com", |mut stop| async move {
///     stop.stopped().await;
///     Ok(())
/// });
/// assert!(session.url().contains("s3cret"));
/// assert!(!format!("{session:?}").contains("s3cret"));
/// # }
/// ```
pub struct Session {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    /// `None` once closed.
    task: Option<JoinHandle<Result<(), BoxError>>>,
    /// The runtime of the task, where a dropped session's task is aborted after the grace.
    runtime: tokio::runtime::Handle,
}

/// How long the task of a dropped [`Session`] may take to tear its tunnel down before it is
/// aborted: as long as closing a tunnel waits for it.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::tunnel::{SESSION_STOP_GRACE, Session};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // `held` stands for what the task holds: it is dropped when the task ends or is aborted.
/// let (held, mut released) = tokio::sync::oneshot::channel::<()>();
/// let session = Session::spawn("http://127.0.0.1:9", |mut stop| async move {
///     let _held = held;
///     stop.stopped().await;
///     std::future::pending::<()>().await; // a teardown that never ends
///     Ok(())
/// });
/// drop(session);
/// let second = Duration::from_secs(1);
/// assert!(tokio::time::timeout(SESSION_STOP_GRACE - second, &mut released).await.is_err());
/// let ended = tokio::time::timeout(2 * second, released).await;
/// assert!(matches!(ended, Ok(Err(_))), "aborted after the grace");
/// # }
/// ```
pub const SESSION_STOP_GRACE: Duration = Duration::from_secs(10);

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("url", &super::http::shown_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Spawns `run` on the tokio runtime; `run` gets the [`StopSignal`] it must obey.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Session;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (done, finished) = tokio::sync::oneshot::channel();
    /// let session = Session::spawn("https://hooks.example.com", |mut stop| async move {
    ///     stop.stopped().await;
    ///     // Tear the tunnel down here (close connections, kill a process).
    ///     let _ = done.send("torn down");
    ///     Ok(())
    /// });
    /// drop(session); // asks the task to stop
    /// assert_eq!(finished.await.unwrap(), "torn down");
    /// # }
    /// ```
    pub fn spawn<F, Fut>(url: impl Into<String>, run: F) -> Self
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let (stop, signal) = oneshot::channel();
        let task = tokio::spawn(run(StopSignal {
            rx: signal,
            stopped: false,
        }));
        Self {
            url: url.into(),
            stop: Some(stop),
            task: Some(task),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The public URL.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Session;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let port = 41001;
    /// let session = Session::spawn(format!("http://bore.example.com:{port}"), |mut stop| async move {
    ///     stop.stopped().await;
    ///     Ok(())
    /// });
    /// assert_eq!(session.url(), "http://bore.example.com:41001");
    /// # }
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Waits until the session ends on its own; returns why.
    pub(crate) async fn ended(&mut self) -> String {
        let Some(task) = &mut self.task else {
            return "the tunnel was closed".to_owned();
        };
        let ended = task.await;
        // Done: nothing is left to stop or wait for (a finished task is not polled again).
        self.task = None;
        match ended {
            Ok(Ok(())) => "the tunnel was closed by the remote side".to_owned(),
            Ok(Err(err)) => super::error::chain(&*err),
            // With its message, as a panic in `open` is reported: it is what says which bug.
            // Redacted as errors are: it may name a URL with its credentials.
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                let reason = match crate::panic::message(&*payload) {
                    Some(message) => {
                        crate::redact::redacted(format!("the tunnel task panicked: {message}"))
                    }
                    None => "the tunnel task panicked".to_owned(),
                };
                crate::panic::dispose(payload);
                reason
            }
            Err(_) => "the tunnel task was cancelled".to_owned(),
        }
    }

    /// Asks the session to stop and waits for it up to `grace`, then aborts it.
    pub(crate) async fn close(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            // Waited for too: it is gone (what it held dropped) once this returns.
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && !task.is_finished()
        {
            // Spawning on a runtime that is shut down drops this at once, and the task with it.
            self.runtime.spawn(async move {
                if tokio::time::timeout(SESSION_STOP_GRACE, &mut task)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "a tunnel session did not stop within {} s of being dropped; aborted",
                        SESSION_STOP_GRACE.as_secs()
                    );
                    task.abort();
                }
            });
        }
    }
}

/// Tells a [`Session`]'s task to stop. See [`Session::spawn`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::tunnel::{Session, StopSignal};
///
/// async fn keep_alive(mut stop: StopSignal) -> Result<(), tower_webhook::BoxError> {
///     let mut ticks = tokio::time::interval(Duration::from_secs(5));
///     loop {
///         tokio::select! {
///             _ = stop.stopped() => return Ok(()),
///             _ = ticks.tick() => { /* send a heartbeat to the tunnel server */ }
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let session = Session::spawn("http://127.0.0.1:9", keep_alive);
/// assert_eq!(session.url(), "http://127.0.0.1:9");
/// # }
/// ```
#[derive(Debug)]
pub struct StopSignal {
    rx: oneshot::Receiver<()>,
    stopped: bool,
}

impl StopSignal {
    /// Resolves once the session is closed or dropped (at once if it already was).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::Session;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (report, reported) = tokio::sync::oneshot::channel();
    /// let session = Session::spawn("http://127.0.0.1:9", |mut stop| async move {
    ///     stop.stopped().await;
    ///     stop.stopped().await; // at once: it already resolved
    ///     let _ = report.send(());
    ///     Ok(())
    /// });
    /// drop(session);
    /// assert!(reported.await.is_ok());
    /// # }
    /// ```
    pub async fn stopped(&mut self) {
        if !self.stopped {
            let _ = (&mut self.rx).await;
            self.stopped = true;
        }
    }
}
