//! The TLS client of the tunnel's own https requests (registration and the round-trip probe).

use std::fmt;
use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, RootCertStore};

use super::TunnelError;

/// The certificate authorities that the tunnel's own https requests trust: localtunnel
/// registration against an `https://` server and the round-trip probe through an `https://`
/// public URL.
///
/// [`TlsRoots::new`] (the default) trusts the Mozilla root set (`webpki-roots`); add the CA of a
/// self-hosted server with [`add_certificate`](Self::add_certificate). Certificates are always
/// verified, and the server name sent (SNI) and checked is the URL's host. TLS is rustls with
/// the `ring` provider.
///
/// # Example
///
/// ```
/// use tower_webhook::tunnel::{LocalTunnel, TlsRoots, Tunnel};
///
/// # fn run(private_ca_der: Vec<u8>) -> Result<(), tower_webhook::tunnel::TunnelError> {
/// let roots = TlsRoots::new().add_certificate(private_ca_der)?;
/// let builder = Tunnel::builder()
///     .tls_roots(roots.clone())
///     .provider(LocalTunnel::new().server("https://lt.internal").tls_roots(roots));
/// # let _ = builder; Ok(()) }
/// // A certificate that is not DER is refused at once.
/// assert!(TlsRoots::new().add_certificate(b"not a certificate".to_vec()).is_err());
/// ```
#[derive(Clone)]
pub struct TlsRoots {
    store: Arc<RootCertStore>,
    added: usize,
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsRoots")
            .field("roots", &self.store.len())
            .field("added", &self.added)
            .finish()
    }
}

impl Default for TlsRoots {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsRoots {
    /// The Mozilla root set, as shipped by `webpki-roots`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TlsRoots;
    ///
    /// let roots = TlsRoots::new();
    /// assert!(roots.len() > 100); // the Mozilla root set
    /// assert!(format!("{roots:?}").contains("added: 0"));
    /// ```
    pub fn new() -> Self {
        let mut store = RootCertStore::empty();
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self {
            store: Arc::new(store),
            added: 0,
        }
    }

    /// No root at all: only the certificates added with
    /// [`add_certificate`](Self::add_certificate) are trusted.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TlsRoots;
    ///
    /// let roots = TlsRoots::empty();
    /// assert!(roots.is_empty());
    /// assert_eq!(roots.len(), 0);
    /// ```
    pub fn empty() -> Self {
        Self {
            store: Arc::new(RootCertStore::empty()),
            added: 0,
        }
    }

    /// Also trusts this CA certificate (DER bytes, e.g. a private CA of a self-hosted server).
    ///
    /// # Errors
    ///
    /// [`TunnelError::Config`] when the bytes are not a DER X.509 certificate usable as a
    /// trust anchor.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{TlsRoots, TunnelError};
    ///
    /// # let private_ca_der = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()]).unwrap().cert.der().to_vec();
    /// let public = TlsRoots::new();
    /// let roots = public.clone().add_certificate(private_ca_der)?;
    /// assert_eq!(roots.len(), public.len() + 1);
    ///
    /// let err = TlsRoots::new().add_certificate(b"-----BEGIN CERTIFICATE-----".to_vec()).unwrap_err();
    /// assert!(err.to_string().contains("not a usable DER certificate"));
    /// # Ok::<(), TunnelError>(())
    /// ```
    pub fn add_certificate(mut self, der: impl Into<Vec<u8>>) -> Result<Self, TunnelError> {
        let der = CertificateDer::from(der.into());
        Arc::make_mut(&mut self.store)
            .add(der)
            .map_err(|err| TunnelError::Config {
                setting: "TLS root certificate",
                message: format!("not a usable DER certificate: {err}"),
            })?;
        self.added += 1;
        Ok(self)
    }

    /// How many certificate authorities are trusted.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::{TlsRoots, TunnelError};
    ///
    /// # let private_ca_der = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()]).unwrap().cert.der().to_vec();
    /// let roots = TlsRoots::empty().add_certificate(private_ca_der)?;
    /// assert_eq!(roots.len(), 1);
    /// # Ok::<(), TunnelError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether no certificate authority is trusted (then every https request fails).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::tunnel::TlsRoots;
    ///
    /// assert!(TlsRoots::empty().is_empty());
    /// assert!(!TlsRoots::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Runs the TLS handshake with `host` over `tcp`, verifying its certificate.
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{host}` is not a valid TLS server name"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| handshake_error(host, &err))?
            .with_root_certificates(Arc::clone(&self.store))
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|err| match tls_cause(&err) {
                Some(cause) => handshake_error(host, cause),
                None => io::Error::new(
                    err.kind(),
                    format!("TLS handshake with {host} failed: {err}"),
                ),
            })
    }
}

fn tls_cause(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

fn handshake_error(host: &str, err: &rustls::Error) -> io::Error {
    let message = match err {
        rustls::Error::InvalidCertificate(reason) => {
            let why = match reason {
                CertificateError::UnknownIssuer => {
                    "it is issued by an unknown certificate authority".to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("it is not valid for the name {host}")
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired".to_owned()
                }
                other => format!("{other:?}"),
            };
            format!(
                "the TLS certificate of {host} is not trusted: {why} (for a server with a \
                 private CA, add the CA with `root_certificate` or `TlsRoots::add_certificate`)"
            )
        }
        other => format!("TLS handshake with {host} failed: {other}"),
    };
    io::Error::new(io::ErrorKind::InvalidData, message)
}
