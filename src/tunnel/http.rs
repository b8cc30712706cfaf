//! A small HTTP/1.1 client for registration, metrics and probe requests.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::TlsRoots;
use crate::BoxError;

/// Largest body read from a registration, metrics or probe answer.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// `url` without the user info of its authority (`user:password@`), which no tunnel server
/// takes: a password in it would otherwise reach errors, hints and `Debug` output.
///
/// A password with an unencoded `/`, `?` or `#` (`https://user:pa/ss@host`) makes the URL
/// invalid, and its authority, as RFC 3986 reads it, ends before the `@`: the user info is then
/// taken to end at the last `@` before the query and fragment (no tunnel server uses a path, so an
/// `@` there is no part of one), or at the last `@` of the URL when what would be its authority
/// is no `host[:port]` (`https://user:pa?ss@host`). A part of the password never stays in it.
pub(crate) fn without_user_info(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let at = rest[..path_end].rfind('@').or_else(|| {
        (!is_host_and_port(&rest[..authority_end]))
            .then(|| rest.rfind('@'))
            .flatten()
    });
    match at {
        Some(at) => format!("{}{}", &url[..start], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Whether `authority` (no user info) is a `host[:port]` a URL may have: a host of no `:`
/// (or an IPv6 literal in brackets), with a port of digits if any.
fn is_host_and_port(authority: &str) -> bool {
    let port = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((_, "")) => return true,
            Some((_, tail)) => match tail.strip_prefix(':') {
                Some(port) => port,
                None => return false,
            },
            None => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((_, port)) => port,
            None => return true,
        }
    };
    port.bytes().all(|byte| byte.is_ascii_digit())
}

/// `url` as it may be shown (errors, hints, log lines, `Debug` output): without its user info,
/// and with the value of each query parameter and the fragment shown as `<redacted>`. No tunnel
/// server takes a query or a fragment (they are never sent), but a URL copied from elsewhere may
/// carry a token there; the names of the parameters stay, so the URL is still recognisable.
pub(crate) fn shown_url(url: &str) -> String {
    const REDACTED: &str = "<redacted>";
    let url = without_user_info(url);
    let (rest, fragment) = match url.split_once('#') {
        Some((rest, _)) => (rest, true),
        None => (url.as_str(), false),
    };
    let mut shown = match rest.split_once('?') {
        None => rest.to_owned(),
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) => format!("{name}={REDACTED}"),
                    None if param.is_empty() => String::new(),
                    None => REDACTED.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
    };
    if fragment {
        shown.push('#');
        shown.push_str(REDACTED);
    }
    shown
}

/// A parsed `http://` or `https://` base address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl BaseUrl {
    /// Parses `http://host[:port]`, `https://host[:port]` or a bare `host[:port]` (then
    /// `default_scheme` applies). A path, if any, is ignored.
    pub(crate) fn parse(input: &str, default_https: bool) -> Result<Self, String> {
        let input = input.trim().trim_end_matches('/');
        if input.is_empty() {
            return Err("the address is empty".into());
        }
        // The address as the errors below show it: no secret of its query or user info.
        let shown = shown_url(input);
        let with_scheme = if input.contains("://") {
            input.to_owned()
        } else if default_https {
            format!("https://{input}")
        } else {
            format!("http://{input}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|err| format!("`{shown}` is not a valid address: {err}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => {
                return Err(format!(
                    "`{shown}` has scheme {}, expected http or https",
                    other.unwrap_or("(none)")
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("`{shown}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self { https, host, port })
    }

    /// `host:port` as it goes into a `Host` header, with IPv6 brackets.
    pub(crate) fn authority(&self) -> String {
        let host = host_for_url(&self.host);
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The base as a URL string, without a trailing slash.
    pub(crate) fn to_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }
}

/// Puts brackets around an IPv6 literal.
pub(crate) fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Resolves `host:port`; `localhost` and `*.localhost` are loopback (RFC 6761), so a tunnel
/// server's `{id}.localhost` URLs work without DNS.
pub(crate) async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    Ok(tokio::net::lookup_host((host, port)).await?.collect())
}

/// How long a connection attempt to one address runs alone before the next address is tried
/// beside it (RFC 8305's "Connection Attempt Delay").
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to `host:port` within `timeout`, trying each resolved address, with `TCP_NODELAY`.
pub(crate) async fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let addrs = resolve(host, port).await?;
        let stream = connect_any(host, addrs).await?;
        stream.set_nodelay(true)?;
        Ok::<_, io::Error>(stream)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(io::Error::new(
            err.kind(),
            format!("could not connect to {}:{port}: {err}", host_for_url(host)),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "could not connect to {}:{port} within {} ms",
                host_for_url(host),
                timeout.as_millis()
            ),
        )),
    }
}

/// Connects to the first of `addrs` that answers, as RFC 8305 ("Happy Eyeballs") does: the
/// families alternate, starting with the resolver's first; each attempt runs alone for
/// [`ATTEMPT_DELAY`] (or until it fails) before the next one starts beside it. An address that
/// drops connection attempts silently (an IPv6 route that goes nowhere) thus costs 250 ms, not
/// the whole timeout. The attempts still running when one succeeds are dropped.
async fn connect_any(host: &str, addrs: Vec<SocketAddr>) -> io::Result<TcpStream> {
    let mut queue = alternate_families(addrs).into_iter().peekable();
    let mut attempts = tokio::task::JoinSet::new();
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    loop {
        if let Some(addr) = queue.next() {
            attempts.spawn(TcpStream::connect(addr));
        }
        if attempts.is_empty() {
            return Err(last);
        }
        // Until an attempt ends, or the delay says to start the next address beside them.
        tokio::select! {
            biased;
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(err))) => last = err,
                Some(Err(err)) => last = io::Error::other(err),
                None => {}
            },
            () = tokio::time::sleep(ATTEMPT_DELAY), if queue.peek().is_some() => {}
        }
    }
}

/// `addrs` with their families alternating, the first family first (RFC 8305, section 4).
fn alternate_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (first, second): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(first.len() + second.len());
    let (mut first, mut second) = (first.into_iter(), second.into_iter());
    loop {
        match (first.next(), second.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Sends `GET path` to `base` with extra headers and reads the answer (body capped at
/// [`MAX_BODY`]), all within `timeout`. An `https://` base is reached over TLS, trusting `tls`.
pub(crate) async fn get(
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    tls: Option<&TlsRoots>,
) -> Result<(StatusCode, Bytes), BoxError> {
    let work = async {
        let stream = connect(&base.host, base.port, timeout).await?;
        if base.https {
            let Some(roots) = tls else {
                return Err(
                    format!("{} uses https, which is not expected here", base.to_url()).into(),
                );
            };
            let stream = roots.connect(&base.host, stream).await?;
            exchange(TokioIo::new(stream), base, path, headers).await
        } else {
            exchange(TokioIo::new(stream), base, path, headers).await
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "GET {}{path} got no answer within {} ms",
            base.to_url(),
            timeout.as_millis()
        )
        .into()),
    }
}

/// One HTTP/1.1 request and its answer over an open connection.
async fn exchange<T>(
    io: T,
    base: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Bytes), BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::get(path)
        .header(http::header::HOST, base.authority())
        .header(http::header::CONNECTION, "close")
        .header(http::header::USER_AGENT, "tower-webhook");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Empty::new())?).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_alternate_from_the_first() {
        let a: Vec<SocketAddr> = [
            "[::1]:1",
            "[::2]:1",
            "127.0.0.1:1",
            "[::3]:1",
            "127.0.0.2:1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let order: Vec<String> = super::alternate_families(a)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            order,
            [
                "[::1]:1",
                "127.0.0.1:1",
                "[::2]:1",
                "127.0.0.2:1",
                "[::3]:1"
            ]
        );
    }

    /// An address that drops connection attempts (here: a listener whose accept queue is full,
    /// so the kernel drops new SYNs, as a route to nowhere does) does not use up the timeout:
    /// the next address is tried beside it after the attempt delay, and answers.
    #[tokio::test]
    async fn a_silent_address_does_not_keep_the_next_one_from_answering() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let silent = socket.listen(1).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        // Fill the accept queue; past it, connection attempts get no answer.
        let mut held = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(silent_addr))
                .await
            {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(err)) => panic!("{err}"),
                Err(_) => break,
            }
            assert!(held.len() < 64, "the accept queue never filled");
        }
        let answering = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let answering_addr = answering.local_addr().unwrap();
        let stream = tokio::time::timeout(
            Duration::from_secs(3),
            super::connect_any("test", vec![silent_addr, answering_addr]),
        )
        .await
        .expect("connected before the timeout")
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), answering_addr);
        drop(held);
    }

    #[test]
    fn user_info_is_dropped_from_the_authority_only() {
        for (given, kept) in [
            ("https://u:p@lt.example.com", "https://lt.example.com"),
            ("http://u:p@w@127.0.0.1:3000/x", "http://127.0.0.1:3000/x"),
            ("u:p@[::1]:8080", "[::1]:8080"),
            // No tunnel server uses a path: an `@` there ends an unencoded password's `/`.
            ("https://user:pa/ss@host/x", "https://host/x"),
            ("https://user:12/ss@host", "https://host"),
            ("http://h/path@x?q=a@b", "http://x?q=a@b"),
            // A valid authority keeps the `@` of a query or fragment in its place...
            ("http://h:1/?mail=a@b", "http://h:1/?mail=a@b"),
            ("http://[::1]:1#a@b", "http://[::1]:1#a@b"),
            // ...one that is no `host[:port]` loses everything up to the last `@`.
            ("https://user:pa?ss@host", "https://host"),
            ("https://user:pa#s?s@host:1", "https://host:1"),
            ("user:p#w@[::1]:8080", "[::1]:8080"),
            ("http://h:1", "http://h:1"),
        ] {
            assert_eq!(super::without_user_info(given), kept, "{given}");
        }
    }

    #[test]
    fn shown_urls_hide_query_values_fragments_and_user_info() {
        for (given, shown) in [
            (
                "http://u:p@h:1/x?token=abc&region=eu",
                "http://h:1/x?token=<redacted>&region=<redacted>",
            ),
            ("https://h/?abc#frag", "https://h/?<redacted>#<redacted>"),
            ("h:1?a=&&b", "h:1?a=<redacted>&&<redacted>"),
            ("https://lt.example.com", "https://lt.example.com"),
        ] {
            assert_eq!(super::shown_url(given), shown, "{given}");
        }
        let err = BaseUrl::parse("http://h/?token=s3cret x", false).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn parses_bases() {
        let base = BaseUrl::parse("127.0.0.1:3000", false).unwrap();
        assert_eq!(base.to_url(), "http://127.0.0.1:3000");
        let base = BaseUrl::parse("https://localtunnel.me/", false).unwrap();
        assert!(base.https);
        assert_eq!(base.port, 443);
        assert_eq!(base.to_url(), "https://localtunnel.me");
        let base = BaseUrl::parse("http://[::1]:8080", true).unwrap();
        assert_eq!(base.host, "::1");
        assert_eq!(base.authority(), "[::1]:8080");
        assert!(BaseUrl::parse("ftp://x", false).is_err());
        assert!(BaseUrl::parse("", false).is_err());
    }
}
