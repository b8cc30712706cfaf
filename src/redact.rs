//! Credentials in URLs, and tokens and keys outside them, left out of what the layer logs.
//!
//! An error's `Display` often names the URL it failed on (reqwest's `... for url (...)`, a
//! panic's `unwrap()` of such an error), and that URL may carry credentials: a user and a
//! password (`https://user:secret@host/`, `redis://:secret@host`), a token in its query
//! (`?access_token=...`), or a token in its path (a Slack, Discord, Teams or Telegram hook).
//! An error that prints its request's headers prints their credentials too (`Authorization`,
//! `X-Gitlab-Token`). The error layer logs error chains and panic messages through
//! [`redact`], and the tunnel the errors of the services it serves and what cloudflared prints.

use std::borrow::Cow;

/// [`redact`] of an owned `text`, which it returns as it is when there is nothing to redact.
pub(crate) fn redacted(text: String) -> String {
    match redact(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(redacted) => redacted,
    }
}

/// What stands in place of a credential.
const REDACTED: &str = "<redacted>";

/// Parts of query parameter names that say their values are secrets (compared lower-cased):
/// also `jwt` (Atlassian Connect's `?jwt=`), `code` (an OAuth authorization code), `hmac`
/// (Shopify's), `session` and `sid`.
const SECRET_PARAMS: [&str; 13] = [
    "token",
    "secret",
    "key",
    "pass",
    "pwd",
    "sig",
    "auth",
    "credential",
    "jwt",
    "code",
    "hmac",
    "session",
    "sid",
];

/// How many URLs of one text are read one by one. Reading one costs the length of the text
/// after it (a URL in another's query is read too), so each URL past these is left out whole,
/// which keeps the cost of a text made of `://` linear in its length.
const MAX_URLS: usize = 64;

/// Prefixes of tokens that say what they are, wherever they stand: GitHub's, GitLab's,
/// Slack's, Stripe's and Standard Webhooks' secrets. What follows one (at least
/// [`MIN_CREDENTIAL`] token characters) is left out; the prefix is kept, to tell which kind
/// of token it was.
const TOKEN_PREFIXES: [&str; 18] = [
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "gldt-",
    "glrt-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xapp-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "whsec_",
];

/// The shortest credential left out after `Bearer`, `Basic` or a token prefix: shorter ones
/// are words.
const MIN_CREDENTIAL: usize = 8;

/// `text` with the credentials of the URLs in it (each `scheme://`) shown as `<redacted>`: the
/// user info of the authority (`user:password@`, all of it: a token is often the user name;
/// also when the password holds an unencoded `/`, `?` or `#`), the values of query parameters
/// (and of a fragment's, `#access_token=...`) whose names say they are secrets (`token`,
/// `secret`, `key`, `pass`, `pwd`, `sig`, `auth`, `credential`, in any case and anywhere in the
/// name), and the path secrets of the hosts in [`PATH_SECRETS`].
/// A URL ends at a space, a double quote or an angle bracket, as text and `Debug` output write
/// it, and one that follows an opening parenthesis, a single quote or a backtick ends at the
/// closing one (looked for after the URL's user info, which may hold such a character). Past
/// [`MAX_URLS`] URLs, each is left out whole.
///
/// Outside URLs too: the credential after `Bearer` or `Basic` (in any case; one that reads as a
/// short word, without a digit or a `+/=._-~`, is kept, unless it is a `Basic` one that decodes
/// to `user:password`), the value of a header whose name says it is a credential
/// (`Authorization`, `Cookie`, `X-Gitlab-Token`, `X-Hub-Signature-256`..., see
/// [`header_values`]), what follows a token prefix of [`TOKEN_PREFIXES`] (`ghp_`, `glpat-`,
/// `xoxb-`, `whsec_`...), a JSON Web Token (`eyJ...`), and the body of a PEM private key.
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    // The byte ranges to leave out, as found; a URL inside another's query or path
    // (`?redirect=https://...`) is looked at too, so they may overlap.
    let mut secrets: Vec<(usize, usize)> = Vec::new();
    url_secrets(text, &mut secrets);
    credentials(text, &mut secrets);
    if secrets.is_empty() {
        return Cow::Borrowed(text);
    }
    secrets.sort_unstable();
    let mut out = String::with_capacity(text.len());
    // `text[..copied]` is in `out` already, with its secrets left out; `out` ends with
    // `<redacted>`, which stands for a range that overlaps or touches it as well.
    let mut copied = 0;
    for (i, (start, end)) in secrets.into_iter().enumerate() {
        // The first range, even at the very start of the text, or one past what was left out.
        if i == 0 || start > copied {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
        }
        copied = copied.max(end);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The credentials of the URLs in `text`, as byte ranges into `secrets`. See [`redact`].
fn url_secrets(text: &str, secrets: &mut Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let mut from = 0;
    let mut urls = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let mut url_end = start
            + bytes[start..]
                .iter()
                .position(|&b| ends_url(b))
                .unwrap_or(bytes.len() - start);
        urls += 1;
        if urls > MAX_URLS {
            secrets.push((start, url_end));
            from = url_end;
            continue;
        }
        // A URL in parentheses (reqwest's `for url (...)`), single quotes or backticks does not
        // take the closing one. The `url` crate leaves `(`, `)` and `'` unencoded in a password:
        // the closing one is looked for after the user info, where the URL has one.
        let scheme_start = bytes[..from + found]
            .iter()
            .rposition(|&b| !(b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
            .map_or(0, |before| before + 1);
        if let Some(opener) = scheme_start.checked_sub(1).map(|before| bytes[before])
            && matches!(opener, b'(' | b'\'' | b'`')
        {
            let after = user_info_end(bytes, start, url_end).map_or(start, |at| at + 1);
            if let Some(end) = closing(bytes, opener, after, url_end) {
                url_end = end;
            }
        }
        let authority_end = start
            + bytes[start..url_end]
                .iter()
                .position(|&b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(url_end - start);
        let path_end = authority_end
            + bytes[authority_end..url_end]
                .iter()
                .position(|&b| matches!(b, b'?' | b'#'))
                .unwrap_or(url_end - authority_end);
        let mut host_start = start;
        if let Some(at) = user_info_end(bytes, start, url_end) {
            secrets.push((start, at));
            // Past the authority as first read: a password with an unencoded `/`, `?` or `#`.
            if at < authority_end {
                host_start = at + 1;
            }
        }
        if let Some(range) = path_secret(
            &text[host_start..authority_end],
            authority_end,
            &text[authority_end..path_end],
        ) {
            secrets.push(range);
        }
        let query = bytes[authority_end..url_end]
            .iter()
            .position(|&b| b == b'?')
            .map(|q| authority_end + q + 1);
        let fragment = bytes[authority_end..url_end]
            .iter()
            .position(|&b| b == b'#')
            .map(|f| authority_end + f + 1);
        if let Some(query) = query.filter(|&q| fragment.is_none_or(|f| q < f)) {
            secret_params(text, query, fragment.map_or(url_end, |f| f - 1), secrets);
        }
        // An OAuth implicit grant's `#access_token=...`: a fragment written as parameters.
        if let Some(fragment) = fragment {
            secret_params(text, fragment, url_end, secrets);
        }
        from = start;
    }
}

/// The credentials outside URLs in `text`, as byte ranges into `secrets`. See [`redact`].
///
/// Each scan skips the matches inside what it already read, so that a text made of one pattern
/// over and over (`ghp_ghp_...`, `eyJ-eyJ-...`, `-----BEGIN ` with no end line) costs time
/// linear in its length.
fn credentials(text: &str, secrets: &mut Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    // `Bearer` and `Basic` credentials, as an `Authorization` header's value writes them.
    for scheme in ["bearer ", "basic "] {
        let mut read = 0;
        for (at, _) in lower.match_indices(scheme) {
            if at < read || !starts_word(bytes, at) {
                continue;
            }
            let start = at
                + scheme.len()
                + bytes[at + scheme.len()..]
                    .iter()
                    .take_while(|&&b| b == b' ')
                    .count();
            let end = start + token_len(&bytes[start..], is_token68);
            read = end;
            let credential = &bytes[start..end];
            if credential.len() >= MIN_CREDENTIAL
                && (credential
                    .iter()
                    .any(|b| b.is_ascii_digit() || b"+/=._-~".contains(b))
                    || credential.len() >= MIN_WORDLIKE_CREDENTIAL
                    || (scheme == "basic " && decodes_to_user_and_password(credential)))
            {
                secrets.push((start, end));
            }
        }
    }
    header_values(text, &lower, secrets);
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b"_-".contains(&b);
    for prefix in TOKEN_PREFIXES {
        let mut read = 0;
        for (at, _) in lower.match_indices(prefix) {
            if at < read || !starts_word(bytes, at) {
                continue;
            }
            let start = at + prefix.len();
            let len = token_len(&bytes[start..], base64url);
            read = start + len;
            if len >= MIN_CREDENTIAL {
                secrets.push((start, start + len));
            }
        }
    }
    // A JSON Web Token: three base64url parts, the first two not empty, joined by dots. A
    // match inside a part already read ends where that part does, and is no more a token.
    let mut read = 0;
    for (at, _) in text.match_indices("eyJ") {
        if at < read || !starts_word(bytes, at) {
            continue;
        }
        let mut end = at;
        let mut parts = 0;
        loop {
            let len = token_len(&bytes[end..], base64url);
            parts += 1;
            end += len;
            if parts == 3 || (len == 0 && parts < 3) || bytes.get(end) != Some(&b'.') {
                break;
            }
            end += 1;
        }
        read = end;
        if parts == 3 && end > at {
            secrets.push((at, end));
        }
    }
    // The body of a PEM private key, up to its end line (or the end of the text). The next end
    // line is looked for once for all the keys before it.
    let mut read = 0;
    let mut next_end: Option<(usize, Option<usize>)> = None;
    for (at, _) in text.match_indices("-----BEGIN ") {
        if at < read {
            continue;
        }
        let Some(label_end) = text[at + 11..].find("-----").map(|end| at + 11 + end + 5) else {
            break;
        };
        read = label_end;
        if !text[at..label_end].contains("PRIVATE KEY") {
            continue;
        }
        let end_line = match next_end {
            Some((from, found)) if from <= label_end && found.is_none_or(|e| e >= label_end) => {
                found
            }
            _ => {
                let found = text[label_end..]
                    .find("-----END")
                    .map(|end| label_end + end);
                next_end = Some((label_end, found));
                found
            }
        };
        let end = end_line.unwrap_or(text.len());
        read = end;
        if end > label_end {
            secrets.push((label_end, end));
        }
    }
}

/// The shortest credential after `Bearer` or `Basic` left out even though it reads as a word
/// (letters only): no word of prose is that long.
const MIN_WORDLIKE_CREDENTIAL: usize = 20;

/// Whether a `Basic` credential made of letters only is base64 for `user:password`: padded
/// base64 (a multiple of 4 characters) of a text that holds a `:`.
fn decodes_to_user_and_password(credential: &[u8]) -> bool {
    if !credential.len().is_multiple_of(4) {
        return false;
    }
    let data = credential
        .strip_suffix(b"==")
        .or_else(|| credential.strip_suffix(b"="))
        .unwrap_or(credential);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in data {
        let sextet = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return false,
        };
        acc = ((acc << 6) | u32::from(sextet)) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if (acc >> bits) & 0xFF == u32::from(b':') {
                return true;
            }
        }
    }
    false
}

/// Parts of header names (and of JSON members' or form fields' names written as `name: value`)
/// that say their values are credentials, compared lower-cased: a name made of two or more
/// parts joined by `-` or `_` (`X-Gitlab-Token`, `PRIVATE-TOKEN`, `X-Hub-Signature-256`,
/// `X-Shopify-Hmac-Sha256`, `client_secret`) with one of these parts.
const SECRET_NAME_PARTS: [&str; 11] = [
    "token",
    "secret",
    "signature",
    "hmac",
    "password",
    "passwd",
    "apikey",
    "auth",
    "authorization",
    "credential",
    "cookie",
];

/// Authentication schemes that start an `Authorization` value; kept in front of what is left
/// out, to tell which kind of credential it was.
const AUTH_SCHEMES: [&str; 7] = [
    "bearer ",
    "basic ",
    "token ",
    "digest ",
    "bot ",
    "negotiate ",
    "ntlm ",
];

/// The values of headers whose names say they are credentials (`Authorization`, `Cookie`,
/// `X-Gitlab-Token`, `PRIVATE-TOKEN`, `X-Hub-Signature-256`... see [`SECRET_NAME_PARTS`]), as
/// `name: value` writes them (a header line, a header map's `Debug`, JSON with quoted names and
/// values), as byte ranges into `secrets`: a quoted value up to its closing quote; any other
/// value up to the end of its line, or, where the name is one field of several (quoted, or
/// after a `{`, `(`, `[` or `,`), up to the white space, `,` or closing bracket that ends the
/// field. An authentication scheme in front ([`AUTH_SCHEMES`]) is kept, and a value that is
/// only a scheme is no credential.
fn header_values(text: &str, lower: &str, secrets: &mut Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let name_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    // Past the value last left out: its colons are the value's.
    let mut read = 0;
    for (colon, _) in text.match_indices(':') {
        if colon < read {
            continue;
        }
        let quote = colon
            .checked_sub(1)
            .map(|before| bytes[before])
            .filter(|b| matches!(b, b'"' | b'\''));
        let name_end = colon - usize::from(quote.is_some());
        let name_start = bytes[..name_end]
            .iter()
            .rposition(|&b| !name_byte(b))
            .map_or(0, |before| before + 1);
        if let Some(quote) = quote
            && name_start.checked_sub(1).map(|before| bytes[before]) != Some(quote)
        {
            continue;
        }
        if !secret_name(&lower[name_start..name_end]) {
            continue;
        }
        let in_fields = quote.is_some()
            || bytes[..name_start]
                .iter()
                .rev()
                .find(|&&b| b != b' ')
                .is_some_and(|b| matches!(b, b'{' | b'(' | b'[' | b','));
        let mut start = colon
            + 1
            + bytes[colon + 1..]
                .iter()
                .take_while(|&&b| b == b' ')
                .count();
        let value_quote = bytes
            .get(start)
            .copied()
            .filter(|b| matches!(b, b'"' | b'\''));
        start += usize::from(value_quote.is_some());
        // The scheme in front of the credential, kept.
        let scheme = AUTH_SCHEMES
            .iter()
            .find(|scheme| lower[start..].starts_with(**scheme))
            .map_or(0, |scheme| {
                scheme.len()
                    + bytes[start + scheme.len()..]
                        .iter()
                        .take_while(|&&b| b == b' ')
                        .count()
            });
        let credential = start + scheme;
        let end = match value_quote {
            Some(quote) => closing_quote(bytes, start, quote).max(credential),
            None if in_fields => {
                credential
                    + bytes[credential..]
                        .iter()
                        .position(|&b| b.is_ascii_whitespace() || b",})]".contains(&b))
                        .unwrap_or(bytes.len() - credential)
            }
            None => {
                credential
                    + bytes[credential..]
                        .iter()
                        .position(|&b| matches!(b, b'\n' | b'\r'))
                        .unwrap_or(bytes.len() - credential)
            }
        };
        read = end;
        // A scheme alone (`Authorization: Basic`) names no credential.
        let alone = AUTH_SCHEMES
            .iter()
            .any(|scheme| lower[start..end].trim_end() == scheme.trim_end());
        if end > credential && !alone {
            secrets.push((credential, end));
        }
    }
}

/// Whether a header named `name` (lower-cased) carries a credential. See [`header_values`].
fn secret_name(name: &str) -> bool {
    if matches!(name, "authorization" | "cookie") {
        return true;
    }
    let mut parts = name.split(['-', '_']);
    let first = parts.next().unwrap_or_default();
    let mut any = false;
    let mut previous = first;
    let mut secret = SECRET_NAME_PARTS.contains(&first);
    for part in parts {
        any = true;
        secret |= SECRET_NAME_PARTS.contains(&part)
            || (matches!(previous, "api" | "private") && part == "key");
        previous = part;
    }
    any && secret
}

/// Where the value quoted by `quote` that starts at `from` ends: at the first `quote` not
/// escaped by a backslash, or at the end of the line (or of the text) if it is not closed.
fn closing_quote(bytes: &[u8], from: usize, quote: u8) -> usize {
    let mut at = from;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'\n' | b'\r' => return at,
            b if b == quote => return at,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// Whether `at` starts a word of `bytes`: the byte before it is no letter, digit or `_`.
fn starts_word(bytes: &[u8], at: usize) -> bool {
    at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_')
}

/// How many bytes at the start of `bytes` are `token` bytes, up to a PEM line's `-----`
/// (which no credential holds, and which a key's body ends at).
fn token_len(bytes: &[u8], token: impl Fn(u8) -> bool) -> usize {
    bytes
        .iter()
        .enumerate()
        .take_while(|&(at, &b)| token(b) && !(b == b'-' && bytes[at..].starts_with(b"-----")))
        .count()
}

/// A byte of an HTTP `token68` credential (RFC 9110): letters, digits, `-._~+/`, and the `=`
/// that pads it.
fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)
}

/// The values in `text[from..end]`, read as `&`-separated (or `;`-separated) `name=value`
/// parameters, whose names say they are secrets, as byte ranges into `secrets`. A secret's
/// value runs to the next `&`: a `;` in it may be the value's own.
fn secret_params(text: &str, from: usize, end: usize, secrets: &mut Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let mut param = from;
    while param < end {
        let param_end = param
            + bytes[param..end]
                .iter()
                .position(|&b| b == b'&' || b == b';')
                .unwrap_or(end - param);
        if let Some(eq) = bytes[param..param_end].iter().position(|&b| b == b'=') {
            let value = param + eq + 1;
            if value < param_end && is_secret(&text[param..param + eq]) {
                let value_end = value
                    + bytes[value..end]
                        .iter()
                        .position(|&b| b == b'&')
                        .unwrap_or(end - value);
                secrets.push((value, value_end));
                param = value_end + 1;
                continue;
            }
        }
        param = param_end + 1;
    }
}

/// Where the `@` is that ends the user info of a URL whose password holds an unencoded `/`, `?`
/// or `#` (`https://user:pa/ss@host/x`, `redis://:pa?ss@host`), if the URL has that shape: the
/// authority as first read (`start..authority_end`, up to that character) has a colon followed
/// by something other than a port (digits), and an `@` comes later (before `url_end`). The
/// user info ends at the last `@` before the `/` that follows the first one, as the authority's
/// at its last `@`: an `@` further on is the path's or the query's.
fn delimiter_in_password(
    bytes: &[u8],
    start: usize,
    authority_end: usize,
    url_end: usize,
) -> Option<usize> {
    let authority = &bytes[start..authority_end];
    // An IPv6 host's colons are inside its brackets.
    let after_host = authority
        .iter()
        .rposition(|&b| b == b']')
        .map_or(0, |b| b + 1);
    let colon = after_host + authority[after_host..].iter().position(|&b| b == b':')?;
    let port = &authority[colon + 1..];
    if port.is_empty() || port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let rest = &bytes[authority_end..url_end];
    let first = rest.iter().position(|&b| b == b'@')?;
    let host_end = rest[first..]
        .iter()
        .position(|&b| b == b'/')
        .map_or(rest.len(), |slash| first + slash);
    let at = rest[..host_end].iter().rposition(|&b| b == b'@')?;
    Some(authority_end + at)
}

/// Hosts whose URLs carry a secret in their path, as hooks to post messages to do: the path
/// after the prefix given is the secret (up to the next `/` when the flag is set), for paths
/// that start with that prefix. `v*/` in a prefix stands for an API version segment (`v10/`),
/// or none. Hosts are compared lower-cased; one that starts with `.` is a suffix.
const PATH_SECRETS: [(&str, &str, bool); 8] = [
    // https://hooks.slack.com/services/T000/B000/XXXX (also /workflows/, /triggers/)
    ("hooks.slack.com", "/", false),
    // https://discord.com/api/webhooks/{id}/{token}, or /api/v10/webhooks/ (its clients' form)
    ("discord.com", "/api/v*/webhooks/", false),
    ("discordapp.com", "/api/v*/webhooks/", false),
    ("ptb.discord.com", "/api/v*/webhooks/", false),
    ("canary.discord.com", "/api/v*/webhooks/", false),
    // https://api.telegram.org/bot{token}/sendMessage, and its files: /file/bot{token}/{path}
    ("api.telegram.org", "/bot", true),
    ("api.telegram.org", "/file/bot", true),
    // https://xxx.webhook.office.com/webhookb2/{ids}/IncomingWebhook/{ids}
    (".webhook.office.com", "/", false),
];

/// The byte range of the secret in the path of a URL to `host` (with its port, if any), whose
/// path (`path`, up to the query) starts at `path_start`. See [`PATH_SECRETS`].
fn path_secret(host: &str, path_start: usize, path: &str) -> Option<(usize, usize)> {
    let host = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let host = host.strip_suffix('.').unwrap_or(host);
    PATH_SECRETS.iter().find_map(|&(known, prefix, segment)| {
        let matches = match known.strip_prefix('.') {
            Some(suffix) => ends_with_ignore_case(host, known) || host.eq_ignore_ascii_case(suffix),
            None => host.eq_ignore_ascii_case(known),
        };
        if !matches {
            return None;
        }
        let start = prefix_len(path, prefix)?;
        let rest = &path[start..];
        let len = if segment {
            rest.find('/').unwrap_or(rest.len())
        } else {
            rest.len()
        };
        (len > 0).then(|| (path_start + start, path_start + start + len))
    })
}

/// The length of the start of `path` that `prefix` (a [`PATH_SECRETS`] prefix) matches, in
/// any case.
fn prefix_len(path: &str, prefix: &str) -> Option<usize> {
    let starts = |at: usize, text: &str| {
        path.get(at..at + text.len())
            .is_some_and(|part| part.eq_ignore_ascii_case(text))
    };
    let Some((head, tail)) = prefix.split_once("v*/") else {
        return starts(0, prefix).then_some(prefix.len());
    };
    if !starts(0, head) {
        return None;
    }
    let mut at = head.len();
    let rest = &path.as_bytes()[at..];
    if matches!(rest.first(), Some(b'v' | b'V')) {
        let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest.get(1 + digits) == Some(&b'/') {
            at += digits + 2;
        }
    }
    starts(at, tail).then_some(at + tail.len())
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.is_char_boundary(text.len() - suffix.len())
        && text[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// A byte no URL has as it is, that ends one in text: white space, a double quote, an angle
/// bracket. (A `'`, a `)` or a backtick may be in a password or a query, left unencoded by the
/// `url` crate: a URL opened by one ends at the closing one, see [`redact`].)
fn ends_url(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'"' | b'<' | b'>')
}

/// Where the `@` is that ends the user info of the URL in `bytes[start..end]`, if it has one:
/// the authority's last `@`, or, for a password with an unencoded `/`, `?` or `#`
/// (`https://user:pa/ss@host`, `redis://:pa?ss@host`), the one [`delimiter_in_password`] finds.
fn user_info_end(bytes: &[u8], start: usize, end: usize) -> Option<usize> {
    let authority_end = start
        + bytes[start..end]
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(end - start);
    bytes[start..authority_end]
        .iter()
        .rposition(|&b| b == b'@')
        .map(|at| start + at)
        .or_else(|| delimiter_in_password(bytes, start, authority_end, end))
}

/// Where the URL opened by `opener` (`(`, `'` or a backtick) closes in `bytes[from..end]`: the
/// first `'` or backtick, or the first `)` that closes no `(` of the URL's own.
fn closing(bytes: &[u8], opener: u8, from: usize, end: usize) -> Option<usize> {
    if opener != b'(' {
        return bytes[from..end]
            .iter()
            .position(|&b| b == opener)
            .map(|at| from + at);
    }
    let mut depth = 0usize;
    for (at, &b) in bytes[from..end].iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' if depth == 0 => return Some(from + at),
            b')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Whether a query parameter of this name carries a secret.
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn user_info_and_secret_query_values_are_redacted() {
        let cases = [
            ("no url here", "no url here"),
            ("https://host/path?page=2", "https://host/path?page=2"),
            (
                "error sending request for url (https://user:hunter2@api.example/v1)",
                "error sending request for url (https://<redacted>@api.example/v1)",
            ),
            (
                "error sending request for url (https://h/v1?access_token=abc): refused",
                "error sending request for url (https://h/v1?access_token=<redacted>): refused",
            ),
            (
                "(https://h/?q=(a)&key=k)",
                "(https://h/?q=(a)&key=<redacted>)",
            ),
            // The `url` crate leaves `(`, `)` and `'` unencoded in a password.
            (
                "error sending request for url (https://bot:pa)ss@api.example/v1)",
                "error sending request for url (https://<redacted>@api.example/v1)",
            ),
            (
                "(https://bot:pa)ss@h/ refused)",
                "(https://<redacted>@h/ refused)",
            ),
            ("(https://bot:pa)ss@h/", "(https://<redacted>@h/"),
            (
                "https://bot:it's@api.example/v1",
                "https://<redacted>@api.example/v1",
            ),
            (
                "connecting to 'https://bot:it's@api.example/v1' failed",
                "connecting to 'https://<redacted>@api.example/v1' failed",
            ),
            (
                "'https://bot:it's@h/ is down'",
                "'https://<redacted>@h/ is down'",
            ),
            ("`https://u:p@h/x`", "`https://<redacted>@h/x`"),
            (
                "for url (https://h/x?token=ab`cd)",
                "for url (https://h/x?token=<redacted>)",
            ),
            // Quoted or parenthesized URLs side by side each end at their own closing one.
            (
                "{'url': 'https://h/x?token=abc', 'n': 1}",
                "{'url': 'https://h/x?token=<redacted>', 'n': 1}",
            ),
            (
                "[a](https://h/?token=t1),[b](https://h2/?x=1)",
                "[a](https://h/?token=<redacted>),[b](https://h2/?x=1)",
            ),
            (
                "['https://h/?key=a','https://h2/']",
                "['https://h/?key=<redacted>','https://h2/']",
            ),
            (
                "(https://h/x?mail=a@b.example) and (https://u:p@h2/)",
                "(https://h/x?mail=a@b.example) and (https://<redacted>@h2/)",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379/0",
                "redis://<redacted>@127.0.0.1:6379/0",
            ),
            (
                "https://ghp_TOKEN@github.com/o/r",
                "https://<redacted>@github.com/o/r",
            ),
            ("https://u:p@ss@host/x", "https://<redacted>@host/x"),
            (
                "GET https://h/x?page=2&access_token=abc&Api_Key=k#frag failed",
                "GET https://h/x?page=2&access_token=<redacted>&Api_Key=<redacted>#frag failed",
            ),
            (
                r#"url: "https://h/?sig=s1", other: "http://a:b@c""#,
                r#"url: "https://h/?sig=<redacted>", other: "http://<redacted>@c""#,
            ),
            ("https://host/a@b?token=", "https://host/a@b?token="),
            (
                "two: https://a:b@x and ftp://c:d@y/",
                "two: https://<redacted>@x and ftp://<redacted>@y/",
            ),
            ("://", "://"),
            (
                "GET https://h/fetch?url=https://u:pw@x/&page=1",
                "GET https://h/fetch?url=https://<redacted>@x/&page=1",
            ),
            (
                "https://h/?token=https://u:pw@x/&b=1",
                "https://h/?token=<redacted>&b=1",
            ),
            ("x://@", "x://<redacted>@"),
            ("https://h/?token=é€ end", "https://h/?token=<redacted> end"),
            // A password with an unencoded `/`.
            ("https://u:pa/ss@h/x", "https://<redacted>@h/x"),
            (
                "https://u:pa/ss@h?token=t",
                "https://<redacted>@h?token=<redacted>",
            ),
            ("https://host:8080/users/@me", "https://host:8080/users/@me"),
            ("https://host:/a@b", "https://host:/a@b"),
            ("https://[::1]/a@b", "https://[::1]/a@b"),
            ("https://[::1]:x/a@b", "https://<redacted>@b"),
            ("https://host/a:b/c@d", "https://host/a:b/c@d"),
            ("https://u:pa/ss@h/x?q=@", "https://<redacted>@h/x?q=@"),
            // A password with an unencoded `?` or `#`; an `@` in the path after the host.
            (
                "redis://:pa?ss@cache:6379/0",
                "redis://<redacted>@cache:6379/0",
            ),
            ("redis://:pa#ss@cache", "redis://<redacted>@cache"),
            ("https://u:pa?s@s@h/x@y", "https://<redacted>@h/x@y"),
            ("https://u:pa/ss@h/x@y", "https://<redacted>@h/x@y"),
            ("https://h/?q=a@b#c@d", "https://h/?q=a@b#c@d"),
            // Parameters in a fragment.
            (
                "https://h/cb#access_token=t&state=s",
                "https://h/cb#access_token=<redacted>&state=s",
            ),
            (
                "https://h/?token=a#key=b",
                "https://h/?token=<redacted>#key=<redacted>",
            ),
            ("https://h/#?token=a", "https://h/#?token=<redacted>"),
            // Hosts whose paths hold a secret.
            (
                "error sending request for url (https://hooks.slack.com/services/T0/B0/XYZ)",
                "error sending request for url (https://hooks.slack.com/<redacted>)",
            ),
            (
                "https://Discord.com/api/webhooks/123/tok-en?wait=true",
                "https://Discord.com/api/webhooks/<redacted>?wait=true",
            ),
            (
                "https://api.telegram.org/bot123:ABC/sendMessage",
                "https://api.telegram.org/bot<redacted>/sendMessage",
            ),
            (
                "error sending request for url (https://discord.com/api/v10/webhooks/1/SeCrEt)",
                "error sending request for url (https://discord.com/api/v10/webhooks/<redacted>)",
            ),
            (
                "https://discord.com/API/V9/webhooks/1/tok",
                "https://discord.com/API/V9/webhooks/<redacted>",
            ),
            (
                "https://api.telegram.org/file/bot123:ABC/photos/file_1.jpg",
                "https://api.telegram.org/file/bot<redacted>/photos/file_1.jpg",
            ),
            (
                "https://discord.com/api/v10/users/1",
                "https://discord.com/api/v10/users/1",
            ),
            (
                "https://discord.com/api/vX/webhooks/1/t",
                "https://discord.com/api/vX/webhooks/1/t",
            ),
            (
                "https://discord.com/api/v10/webhooks/",
                "https://discord.com/api/v10/webhooks/",
            ),
            (
                "https://acme.webhook.office.com:443/webhookb2/a@b/IncomingWebhook/c/d",
                "https://acme.webhook.office.com:443/<redacted>",
            ),
            ("https://hooks.slack.com/", "https://hooks.slack.com/"),
            (
                "https://discord.com/api/users/1",
                "https://discord.com/api/users/1",
            ),
            ("https://api.telegram.org/", "https://api.telegram.org/"),
            (
                "https://notwebhook.office.com/x",
                "https://notwebhook.office.com/x",
            ),
            (
                "https://slack.com/api/chat.postMessage",
                "https://slack.com/api/chat.postMessage",
            ),
            (
                "https://u:p@hooks.slack.com./services/x",
                "https://<redacted>@hooks.slack.com./<redacted>",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn credentials_outside_urls_are_redacted() {
        let cases = [
            (
                "upstream said 401 to Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl",
                "upstream said 401 to Authorization: Bearer <redacted>",
            ),
            (
                r#"headers: {"authorization": "bearer gho_16C7e42F292c6912E7710c838347Ae178B4a"}"#,
                r#"headers: {"authorization": "bearer <redacted>"}"#,
            ),
            (
                "Authorization: Basic dXNlcjpodW50ZXIy",
                "Authorization: Basic <redacted>",
            ),
            (
                "Authorization: basic YWxhZGRpbjpvcGVuc2VzYW1l==",
                "Authorization: basic <redacted>",
            ),
            // A `Basic` credential or a long `Bearer` one, letters only.
            ("sent Basic dXNlcjpwYXNz", "sent Basic <redacted>"),
            (
                "sent bearer abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN",
                "sent bearer <redacted>",
            ),
            // A header that carries a credential, in any form: its value is left out, after
            // the scheme of an `Authorization` value.
            (
                "Authorization: Bearer abcdefghij\nAccept: */*",
                "Authorization: Bearer <redacted>\nAccept: */*",
            ),
            (
                "Authorization: token 0123456789abcdef0123456789abcdef01234567",
                "Authorization: token <redacted>",
            ),
            (
                r#"{"x-gitlab-token": "plain words", "x-gitlab-event": "Note Hook"}"#,
                r#"{"x-gitlab-token": "<redacted>", "x-gitlab-event": "Note Hook"}"#,
            ),
            ("PRIVATE-TOKEN: letters", "PRIVATE-TOKEN: <redacted>"),
            (
                "x-hub-signature-256: sha256=0123abcd",
                "x-hub-signature-256: <redacted>",
            ),
            (
                "X-Shopify-Hmac-Sha256: abc=",
                "X-Shopify-Hmac-Sha256: <redacted>",
            ),
            (
                r#"Proxy-Authorization: Digest username="u", response="6629fae4""#,
                "Proxy-Authorization: Digest <redacted>",
            ),
            (
                r#"{'client_secret': 'it\'s', 'x-api-key': 'k'}"#,
                r#"{'client_secret': '<redacted>', 'x-api-key': '<redacted>'}"#,
            ),
            (r#"cookie: "a=b; c=d""#, r#"cookie: "<redacted>""#),
            // A field of several (a struct's or a map's `Debug`, JSON on one line) ends at the
            // next field, quoted or not.
            (
                r#"headers: {"authorization": Sensitive, "x-request-id": "r-1"}"#,
                r#"headers: {"authorization": <redacted>, "x-request-id": "r-1"}"#,
            ),
            (
                "Error { kind: Auth, auth_method: None, status: 401 }",
                "Error { kind: Auth, auth_method: <redacted>, status: 401 }",
            ),
            (
                r#"{"token_count": 5, "status": 500}"#,
                r#"{"token_count": <redacted>, "status": 500}"#,
            ),
            (
                "{authorization: Bearer abc.def, id: 7}",
                "{authorization: Bearer <redacted>, id: 7}",
            ),
            // A scheme alone is no credential.
            ("Authorization: Basic", "Authorization: Basic"),
            (
                "missing: authorization: Bearer",
                "missing: authorization: Bearer",
            ),
            // Names that carry none, and prose.
            (
                "x-github-delivery: 1-2, idempotency-key: k, at 12:30:45",
                "x-github-delivery: 1-2, idempotency-key: k, at 12:30:45",
            ),
            ("invalid token: expected hex", "invalid token: expected hex"),
            // English words after "basic" or "bearer" are kept.
            ("basic authentication failed", "basic authentication failed"),
            ("Basic username", "Basic username"),
            // Letters that decode to a `:`, but are no padded base64.
            ("basic Overloaded", "basic Overloaded"),
            ("the bearer token expired", "the bearer token expired"),
            ("Bearer", "Bearer"),
            // Tokens known by their prefix, wherever they are.
            (
                "token ghp_16C7e42F292c6912E7710c838347Ae178B4a refused",
                "token ghp_<redacted> refused",
            ),
            (
                "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123456789",
                "github_pat_<redacted>",
            ),
            (
                "PRIVATE-TOKEN glpat-xxxxxxxxxxxxxxxxxxxx",
                "PRIVATE-TOKEN glpat-<redacted>",
            ),
            ("xoxb-1234-5678-abcdefgh", "xoxb-<redacted>"),
            (
                "secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "secret whsec_<redacted>",
            ),
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_<redacted>"),
            ("a ghp_ prefix alone", "a ghp_ prefix alone"),
            ("highp_value", "highp_value"),
            // A JSON Web Token (Atlassian Connect's `?jwt=`, an App's JWT), also in JSON.
            (
                r#"{"jwt":"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIxIn0.sig-nature_x"}"#,
                r#"{"jwt":"<redacted>"}"#,
            ),
            ("eyJ alone", "eyJ alone"),
            // At the very start of the text, the secret is marked all the same.
            ("eyJhbGciOi.eyJzdWIi.c2ln failed", "<redacted> failed"),
            // A private key.
            (
                "bad key: -----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- end",
                "bad key: -----BEGIN RSA PRIVATE KEY-----<redacted>-----END RSA PRIVATE KEY----- end",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nMIIE cut short",
                "-----BEGIN PRIVATE KEY-----<redacted>",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            ),
            // Query parameters named for tokens beyond the words above.
            (
                "https://h/rest/api?jwt=abc&x=1",
                "https://h/rest/api?jwt=<redacted>&x=1",
            ),
            (
                "https://h/cb?code=abc&state=s",
                "https://h/cb?code=<redacted>&state=s",
            ),
            (
                "https://shop/x?hmac=ab&shop=s",
                "https://shop/x?hmac=<redacted>&shop=s",
            ),
            (
                "https://h/?session=s1&sid=s2",
                "https://h/?session=<redacted>&sid=<redacted>",
            ),
            // Parameters separated by `;`; a secret's value runs to the next `&`, as a `;` in
            // it may be its own.
            (
                "https://h/x?a=1;token=abc;b=2",
                "https://h/x?a=1;token=<redacted>",
            ),
            (
                "https://h/x?password=p;ss&a=1",
                "https://h/x?password=<redacted>&a=1",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    /// A text with more URLs than are read one by one: each past them is left out whole.
    #[test]
    fn urls_past_the_cap_are_left_out_whole() {
        let mut text = "https://h/?page=1 ".repeat(super::MAX_URLS);
        text.push_str("https://u:p@h/x?page=2 and https://h2/ end");
        let expected = format!(
            "{}https://<redacted> and https://<redacted> end",
            "https://h/?page=1 ".repeat(super::MAX_URLS)
        );
        assert_eq!(redact(&text), expected);
        // Long runs of one pattern are read in time linear in their length.
        for (piece, kept) in [
            ("ghp_", "ghp_"),
            ("xoxb-", "xoxb-"),
            ("eyJ-", "eyJ-"),
            ("bearer ", "bearer "),
            ("-----BEGIN PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----"),
        ] {
            let text = piece.repeat(200_000 / piece.len());
            let out = redact(&text);
            assert!(out.starts_with(kept), "{piece}");
            assert!(out.len() <= text.len() + 16, "{piece}");
        }
        // One long run of `://` is read in time linear in its length, and all left out.
        let run = "://".repeat(100_000);
        let out = redact(&run);
        assert!(out.len() < 2_000, "{}", out.len());
        assert!(out.ends_with("://<redacted>"), "{out}");
    }

    /// Any text, URL-like or not (a small alphabet of the bytes the scan looks at, and a
    /// character past ASCII, and the starts of the credentials looked for outside URLs), is
    /// redacted without a panic; a text with neither a URL nor such a start is kept as it is,
    /// and redacting the result again changes nothing more.
    #[test]
    fn any_text_is_redacted_without_a_panic() {
        // No PEM end line: a key's body then runs to the end of the text, which another
        // credential that took in its end line (a URL's user info) would make it do on a
        // second pass, and no more.
        const PIECES: [&str; 30] = [
            "://",
            "x-gitlab-token",
            "'",
            "\n",
            "Bearer ",
            "basic ",
            "ghp_",
            "eyJ",
            ".",
            "-----BEGIN PRIVATE KEY-----",
            "'",
            "`",
            "hooks.slack.com",
            "api.telegram.org/bot",
            "]",
            "(",
            ")",
            "@",
            "/",
            "?",
            "&",
            "=",
            "#",
            " ",
            "\"",
            "token",
            "x",
            "é",
            ":",
            "<redacted>",
        ];
        // A small linear congruential generator: the same texts on every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut text = String::new();
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let len = (state >> 59) as usize;
            for _ in 0..len {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                text.push_str(PIECES[(state >> 33) as usize % PIECES.len()]);
            }
            let out = redact(&text);
            let credential = [
                "Bearer",
                "basic",
                "ghp_",
                "eyJ",
                "-----BEGIN",
                "x-gitlab-token",
            ];
            if !text.contains("://") && !credential.iter().any(|c| text.contains(c)) {
                assert_eq!(out, text);
            }
            // Redacting again changes nothing more.
            assert_eq!(redact(&out), out, "{text}");
        }
    }
}
