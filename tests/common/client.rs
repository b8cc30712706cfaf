//! The reqwest clients of the tests. reqwest 0.13 is built for them without a crypto provider of
//! its own (`rustls-no-provider`, so that its default one is not compiled): ring's, which the
//! crate's TLS uses too, is installed as the process's before a client is built.
#![allow(dead_code)] // not every test binary uses each

/// Installs the process's TLS provider, once: the calls after the first find it there.
pub(crate) fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest 0.13 client builder, the process's TLS provider installed.
pub(crate) fn builder() -> reqwest::ClientBuilder {
    install_tls();
    reqwest::Client::builder()
}

/// A reqwest 0.13 client with reqwest's defaults.
pub(crate) fn new() -> reqwest::Client {
    builder()
        .build()
        .expect("a client with the defaults builds")
}
