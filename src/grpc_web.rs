//! The status of a gRPC-web call, read from its answer's body as it streams.
//!
//! gRPC-web carries the call's status in a trailer frame at the end of the body rather than in
//! HTTP trailers: a length-prefixed frame like a message's, whose flag byte has its most
//! significant bit set (`0x80`), and whose payload is HTTP/1-style header lines
//! (`grpc-status:0\r\ngrpc-message:...\r\n`, names case-insensitive). A
//! `application/grpc-web-text` body is all base64, each chunk possibly padded on its own
//! (segments concatenated).
//!
//! [`WebStatus`] reads the frames as the body's chunks come, split anywhere: it skips message
//! payloads without keeping them, and keeps no more of the trailer frame than the line it is on
//! and the values of its `grpc-status` and `grpc-retry-pushback-ms` (up to a few bytes each).
//! Anything it cannot read is a status it does not know. The signature layer reads it to settle
//! a delivery's claim, the circuit breaker to classify the call.

#[cfg(feature = "circuit-breaker")]
use http::{HeaderMap, HeaderName, HeaderValue};

/// A trailer frame announced larger than this is not read: the call's status counts as unknown.
/// (gRPC peers limit metadata to a few KiB.)
pub(crate) const TRAILER_FRAME_MAX: u32 = 64 * 1024;

/// How much of a trailer line is kept: enough for the longer of the two names read
/// (`grpc-retry-pushback-ms:`), a few bytes of white space, the longest value kept and the
/// `\r` that ends the line.
const LINE_MAX: usize = PUSHBACK.len() + VALUE_MAX + 8;

const NAME: &[u8] = b"grpc-status:";
const PUSHBACK: &[u8] = b"grpc-retry-pushback-ms:";

/// The longest value kept of a `grpc-status` or `grpc-retry-pushback-ms` line: a status is a
/// few digits, a pushback at most ten.
const VALUE_MAX: usize = 12;

/// How a gRPC-web body ended, once it has.
#[cfg(feature = "circuit-breaker")]
#[derive(Debug, PartialEq)]
pub(crate) enum WebEnd {
    /// The trailer frame was read: its `grpc-status` (when it has one line of it, or several
    /// that agree; a value that cannot be read is kept as `?`) and `grpc-retry-pushback-ms`,
    /// as trailers.
    Trailers(HeaderMap),
    /// The body is not gRPC-web: a flag byte no frame has, bytes after the trailer frame, or,
    /// in text mode, something that is not base64.
    Broken,
    /// The trailer frame is one that is not read: compressed, or larger than
    /// [`TRAILER_FRAME_MAX`]; or the body's data came in more pieces than are looked at.
    Unreadable,
}

/// The reader of a gRPC-web body: the frames, and for `grpc-web-text` the base64 they are in.
#[derive(Debug)]
pub(crate) struct WebStatus {
    base64: Option<Base64>,
    frames: Frames,
}

impl WebStatus {
    /// A reader for a `application/grpc-web[+codec]` body (`text: false`) or a
    /// `application/grpc-web-text[+codec]` one (`text: true`).
    pub(crate) fn new(text: bool) -> Self {
        Self {
            base64: text.then(Base64::default),
            frames: Frames::Header {
                buf: [0; 5],
                len: 0,
            },
        }
    }

    /// Reads the next bytes of the body.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if matches!(self.frames, Frames::Broken) {
            return;
        }
        let Some(base64) = &mut self.base64 else {
            self.frames.feed(data);
            return;
        };
        // Decoded a little at a time, on the stack.
        let mut out = [0u8; 192];
        let mut n = 0;
        for &c in data {
            match base64.push(c) {
                Ok(None) => {}
                Ok(Some((bytes, count))) => {
                    out[n..n + count].copy_from_slice(&bytes[..count]);
                    n += count;
                    if n + 3 > out.len() {
                        self.frames.feed(&out[..n]);
                        n = 0;
                    }
                }
                Err(()) => {
                    self.frames = Frames::Broken;
                    return;
                }
            }
        }
        self.frames.feed(&out[..n]);
    }

    /// Reads the next bytes of the body, as a [`bytes::Buf`] holds them (in pieces, for a
    /// chained buffer). A buffer in more pieces than are looked at (16) makes the status
    /// [`WebEnd::Unreadable`].
    #[cfg(feature = "circuit-breaker")]
    pub(crate) fn feed_buf(&mut self, data: &impl bytes::Buf) {
        let mut pieces = [std::io::IoSlice::new(&[]); 16];
        let n = data.chunks_vectored(&mut pieces);
        if pieces[..n].iter().map(|piece| piece.len()).sum::<usize>() < data.remaining() {
            self.frames = Frames::Unreadable;
            return;
        }
        for piece in &pieces[..n] {
            self.feed(piece);
        }
    }

    /// What the body said so far: `Some(true)` once a whole trailer frame with `grpc-status: 0`
    /// (and no other status) was read, `Some(false)` once a trailer frame with any other status
    /// or none was, or once the body was found broken or unreadable (bytes after the trailer
    /// frame included); `None` while the trailer frame has not come.
    #[cfg(any(feature = "signature", test))]
    pub(crate) fn verdict(&self) -> Option<bool> {
        match &self.frames {
            Frames::Done(trailer) => Some(trailer.status.is_some_and(|v| v.bytes() == b"0")),
            Frames::Broken | Frames::Unreadable => Some(false),
            _ => None,
        }
    }

    /// Whether [`end`](Self::end) has something to say: the trailer frame was read, or the body
    /// found broken or unreadable.
    #[cfg(feature = "circuit-breaker")]
    pub(crate) fn ended(&self) -> bool {
        matches!(
            self.frames,
            Frames::Done(_) | Frames::Broken | Frames::Unreadable
        )
    }

    /// How the body ended, once the trailer frame was read or the body found broken or
    /// unreadable; `None` before (also when the body ends without a trailer frame).
    #[cfg(feature = "circuit-breaker")]
    pub(crate) fn end(&self) -> Option<WebEnd> {
        match &self.frames {
            Frames::Done(trailer) => {
                let mut map = HeaderMap::new();
                let pairs = [
                    (&trailer.status, "grpc-status"),
                    (&trailer.pushback, "grpc-retry-pushback-ms"),
                ];
                for (value, name) in pairs {
                    if let Some(value) = value {
                        let value = HeaderValue::from_bytes(value.bytes())
                            .unwrap_or(HeaderValue::from_static("?"));
                        map.insert(HeaderName::from_static(name), value);
                    }
                }
                Some(WebEnd::Trailers(map))
            }
            Frames::Broken => Some(WebEnd::Broken),
            Frames::Unreadable => Some(WebEnd::Unreadable),
            _ => None,
        }
    }
}

/// The frames of a gRPC-web body.
#[derive(Debug)]
enum Frames {
    /// A frame's header (flag byte, 4-byte big-endian length), `len` bytes of it read.
    Header { buf: [u8; 5], len: u8 },
    /// A message's payload, `left` bytes of it to skip.
    Message { left: u32 },
    /// The trailer frame's payload, `left` bytes of it to read.
    Trailer { left: u32, lines: Lines },
    /// The trailer frame was read.
    Done(Trailer),
    /// Not a gRPC-web body (or bytes after its trailer frame).
    Broken,
    /// A trailer frame that is not read (compressed, too large).
    Unreadable,
}

/// What a trailer frame said.
#[derive(Debug, Default)]
struct Trailer {
    /// Its `grpc-status`: `None` without one; [`Value::UNREADABLE`] for one too long, or
    /// several that differ.
    status: Option<Value>,
    /// Its `grpc-retry-pushback-ms` (the first, if several).
    pushback: Option<Value>,
}

/// A short header value, trimmed.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Value {
    bytes: [u8; VALUE_MAX],
    len: u8,
}

impl Value {
    /// A value that cannot be read (not a number to gRPC either).
    const UNREADABLE: Self = Self {
        bytes: [b'?'; VALUE_MAX],
        len: 1,
    };

    /// `value`, or [`Value::UNREADABLE`] when it is longer than [`VALUE_MAX`].
    fn new(value: &[u8]) -> Self {
        let mut bytes = [0; VALUE_MAX];
        match bytes.get_mut(..value.len()) {
            Some(kept) => {
                kept.copy_from_slice(value);
                Self {
                    bytes,
                    len: value.len() as u8,
                }
            }
            None => Self::UNREADABLE,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Frames {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self {
                Self::Header { buf, len } => {
                    let have = usize::from(*len);
                    let take = (5 - have).min(data.len());
                    buf[have..have + take].copy_from_slice(&data[..take]);
                    data = &data[take..];
                    *len += take as u8;
                    if *len == 5 {
                        let size = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                        *self = match buf[0] {
                            // A message, compressed or not.
                            0 | 1 if size == 0 => Self::Header {
                                buf: [0; 5],
                                len: 0,
                            },
                            0 | 1 => Self::Message { left: size },
                            0x80 if size == 0 => Self::Done(Trailer::default()),
                            0x80 if size <= TRAILER_FRAME_MAX => Self::Trailer {
                                left: size,
                                lines: Lines::default(),
                            },
                            // Too large to read, or compressed trailers.
                            0x80 | 0x81 => Self::Unreadable,
                            // No frame at all.
                            _ => Self::Broken,
                        };
                    }
                }
                Self::Message { left } => {
                    let take = data.len().min(*left as usize);
                    data = &data[take..];
                    *left -= take as u32;
                    if *left == 0 {
                        *self = Self::Header {
                            buf: [0; 5],
                            len: 0,
                        };
                    }
                }
                Self::Trailer { left, lines } => {
                    let take = data.len().min(*left as usize);
                    for &b in &data[..take] {
                        lines.push(b);
                    }
                    data = &data[take..];
                    *left -= take as u32;
                    if *left == 0 {
                        *self = Self::Done(lines.finish());
                    }
                }
                // The trailer frame is the last: anything after it is not gRPC-web.
                Self::Done(_) | Self::Broken => {
                    *self = Self::Broken;
                    return;
                }
                Self::Unreadable => return,
            }
        }
    }
}

/// The header lines of a trailer frame: the line being read (its first [`LINE_MAX`] bytes),
/// and what the lines read said.
#[derive(Debug)]
struct Lines {
    line: [u8; LINE_MAX],
    len: usize,
    /// The line is longer than what was kept.
    long: bool,
    trailer: Trailer,
}

impl Default for Lines {
    fn default() -> Self {
        Self {
            line: [0; LINE_MAX],
            len: 0,
            long: false,
            trailer: Trailer::default(),
        }
    }
}

impl Lines {
    fn push(&mut self, b: u8) {
        if b == b'\n' {
            self.end_line();
        } else if self.len < LINE_MAX {
            self.line[self.len] = b;
            self.len += 1;
        } else {
            self.long = true;
        }
    }

    fn end_line(&mut self) {
        let line = &self.line[..self.len];
        let value = |name: &[u8]| {
            line.get(..name.len())
                .filter(|start| start.eq_ignore_ascii_case(name))
                .map(|_| match self.long {
                    false => Value::new(line[name.len()..].trim_ascii()),
                    true => Value::UNREADABLE,
                })
        };
        if let Some(status) = value(NAME) {
            let trailer = &mut self.trailer;
            trailer.status = Some(match trailer.status {
                Some(seen) if seen != status => Value::UNREADABLE,
                _ => status,
            });
        } else if let Some(pushback) = value(PUSHBACK) {
            self.trailer.pushback.get_or_insert(pushback);
        }
        self.len = 0;
        self.long = false;
    }

    /// The frame ended (its last line may have no line break): what it said.
    fn finish(&mut self) -> Trailer {
        if self.len > 0 || self.long {
            self.end_line();
        }
        std::mem::take(&mut self.trailer)
    }
}

/// A base64 decoder (standard alphabet) that takes one character at a time: padded segments may
/// follow each other, white space is skipped.
#[derive(Debug, Default)]
struct Base64 {
    /// The 6-bit values of the group being read.
    quad: [u8; 4],
    len: u8,
    pad: u8,
}

impl Base64 {
    /// The bytes a completed group of four characters decodes to (and how many), `Err` on a
    /// character that is not base64 where it is.
    fn push(&mut self, c: u8) -> Result<Option<([u8; 3], usize)>, ()> {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b' ' | b'\t' | b'\r' | b'\n' => return Ok(None),
            // Padding ends a group of at least two characters.
            b'=' if self.len >= 2 => {
                self.pad += 1;
                self.len += 1;
                return Ok(self.complete());
            }
            _ => return Err(()),
        };
        if self.pad > 0 {
            return Err(());
        }
        self.quad[usize::from(self.len)] = value;
        self.len += 1;
        Ok(self.complete())
    }

    fn complete(&mut self) -> Option<([u8; 3], usize)> {
        if self.len < 4 {
            return None;
        }
        let [a, b, c, d] = self.quad.map(u32::from);
        let n = (a << 18) | (b << 12) | (c << 6) | d;
        let count = 3 - usize::from(self.pad);
        *self = Self::default();
        Some(([(n >> 16) as u8, (n >> 8) as u8, n as u8], count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A body: two messages (one empty), then a trailer frame with `trailers`.
    fn body(trailers: &[u8]) -> Vec<u8> {
        let mut out = frame(0, b"\x0a\x03one");
        out.extend(frame(0, b""));
        out.extend(frame(0x80, trailers));
        out
    }

    fn read(text: bool, chunks: &[&[u8]]) -> Option<bool> {
        let mut status = WebStatus::new(text);
        for chunk in chunks {
            status.feed(chunk);
        }
        status.verdict()
    }

    /// The verdict after each chunk, for the body split at `at`.
    fn split(text: bool, body: &[u8], at: usize) -> (Option<bool>, Option<bool>) {
        let mut status = WebStatus::new(text);
        status.feed(&body[..at]);
        let first = status.verdict();
        status.feed(&body[at..]);
        (first, status.verdict())
    }

    #[test]
    fn a_trailer_frame_with_status_0_is_a_success_split_at_every_byte() {
        let ok = body(b"grpc-status:0\r\ngrpc-message:\r\n");
        assert_eq!(read(false, &[&ok]), Some(true));
        for at in 0..=ok.len() {
            let (first, last) = split(false, &ok, at);
            assert_eq!(last, Some(true), "split at {at}");
            // Not before the whole trailer frame was read.
            assert_eq!(first, (at == ok.len()).then_some(true), "split at {at}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = ok.chunks(1).collect();
        assert_eq!(read(false, &bytes), Some(true));
    }

    #[test]
    fn another_status_is_a_failure_split_at_every_byte() {
        let failed = body(b"grpc-status:13\r\ngrpc-message:the%20source%20broke\r\n");
        for at in 0..=failed.len() {
            assert_eq!(split(false, &failed, at).1, Some(false), "split at {at}");
        }
        for trailers in [
            &b"grpc-status:1"[..],
            b"grpc-status: 00\r\n",
            b"grpc-status:\r\n",
            b"grpc-status:0\r\ngrpc-status:2\r\n",
            b"grpc-message:ok\r\n",
            b"grpc-status-details-bin:0\r\n",
            b"",
            b"x-grpc-status:0\r\n",
        ] {
            assert_eq!(read(false, &[&body(trailers)]), Some(false), "{trailers:?}");
        }
    }

    /// The trailers the circuit breaker classifies: the status and the pushback as they came,
    /// `?` for a status it cannot tell.
    #[test]
    #[cfg(feature = "circuit-breaker")]
    fn the_end_is_the_trailer_frame_as_trailers() {
        let end = |trailers: &[u8]| {
            let mut status = WebStatus::new(false);
            status.feed(&body(trailers));
            match status.end() {
                Some(WebEnd::Trailers(map)) => {
                    let get = |name| map.get(name).map(|v| v.to_str().unwrap().to_owned());
                    (get("grpc-status"), get("grpc-retry-pushback-ms"))
                }
                other => panic!("{other:?}"),
            }
        };
        let some = |v: &str| Some(v.to_owned());
        assert_eq!(
            end(b"grpc-status: 14\r\ngrpc-retry-pushback-ms: 250\r\n"),
            (some("14"), some("250"))
        );
        // The longest pushback a server sends (`i32::MAX` milliseconds), with white space too.
        assert_eq!(
            end(b"grpc-status:14\r\ngrpc-retry-pushback-ms:2147483647\r\n"),
            (some("14"), some("2147483647"))
        );
        assert_eq!(
            end(b"grpc-status:14\r\ngrpc-retry-pushback-ms: \t 2147483647 \r\n"),
            (some("14"), some("2147483647"))
        );
        assert_eq!(end(b"grpc-message:x\r\n"), (None, None));
        assert_eq!(
            end(b"grpc-status:0\r\ngrpc-status:0\r\n"),
            (some("0"), None)
        );
        assert_eq!(
            end(b"grpc-status:0\r\ngrpc-status:2\r\n"),
            (some("?"), None)
        );
        assert_eq!(end(b"grpc-status:1234567890123\r\n"), (some("?"), None));
        let mut status = WebStatus::new(false);
        assert_eq!(status.end(), None);
        status.feed(&frame(0x81, b"grpc-status:0"));
        assert_eq!(status.end(), Some(WebEnd::Unreadable));
        let mut status = WebStatus::new(false);
        status.feed(b"<html>");
        assert_eq!(status.end(), Some(WebEnd::Broken));
        // A chained buffer is read piece by piece.
        let ok = body(b"grpc-status:0\r\n");
        let (a, b) = ok.split_at(7);
        let mut status = WebStatus::new(false);
        status.feed_buf(&bytes::Buf::chain(a, b));
        assert_eq!(status.verdict(), Some(true));
    }

    #[test]
    fn names_are_case_insensitive_and_values_trimmed() {
        for trailers in [
            &b"Grpc-Status:0\r\n"[..],
            b"GRPC-STATUS: 0 \r\n",
            b"grpc-status:\t0",
            b"grpc-status:0\n",
            b"grpc-message:fine\r\nGrpc-Status:0\r\nx-extra:1\r\n",
        ] {
            assert_eq!(read(false, &[&body(trailers)]), Some(true), "{trailers:?}");
        }
    }

    #[test]
    fn long_lines_are_skipped_and_a_long_status_is_not_a_success() {
        let mut trailers = b"grpc-message:".to_vec();
        trailers.extend(std::iter::repeat_n(b'x', 5000));
        trailers.extend_from_slice(b"\r\ngrpc-status:0\r\n");
        assert_eq!(read(false, &[&body(&trailers)]), Some(true));

        let mut padded = b"grpc-status:".to_vec();
        padded.extend(std::iter::repeat_n(b' ', 100));
        padded.extend_from_slice(b"0\r\n");
        assert_eq!(read(false, &[&body(&padded)]), Some(false));
    }

    #[test]
    fn a_body_without_a_trailer_frame_says_nothing() {
        let mut messages = frame(0, b"\x0a\x03one");
        messages.extend(frame(1, b"compressed"));
        assert_eq!(read(false, &[&messages]), None);
        assert_eq!(read(false, &[]), None);
        // A trailer frame cut short.
        let ok = body(b"grpc-status:0\r\n");
        for end in 0..ok.len() {
            assert_eq!(read(false, &[&ok[..end]]), None, "cut at {end}");
        }
    }

    #[test]
    fn an_oversized_trailer_frame_is_not_read() {
        let mut header = vec![0x80];
        header.extend_from_slice(&(TRAILER_FRAME_MAX + 1).to_be_bytes());
        let mut status = WebStatus::new(false);
        status.feed(&header);
        assert_eq!(status.verdict(), Some(false));
        status.feed(b"grpc-status:0\r\n");
        assert_eq!(status.verdict(), Some(false));
        // At the limit, it is read.
        let mut trailers = b"grpc-status:0\r\n".to_vec();
        trailers.resize(TRAILER_FRAME_MAX as usize, b'x');
        assert_eq!(read(false, &[&body(&trailers)]), Some(true));
        // A message that large is skipped, not kept.
        let mut huge = vec![0];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut status = WebStatus::new(false);
        status.feed(&huge);
        for _ in 0..100 {
            status.feed(&[7; 4096]);
        }
        assert_eq!(status.verdict(), None);
        assert!(std::mem::size_of::<WebStatus>() < 128);
    }

    #[test]
    fn garbage_is_a_failure_and_never_panics() {
        // Bytes after the trailer frame, a flag that is no frame's, compressed trailers.
        let mut after = body(b"grpc-status:0\r\n");
        after.push(0);
        assert_eq!(read(false, &[&after]), Some(false));
        for flag in [2u8, 0x7f, 0x81, 0xff] {
            assert_eq!(read(false, &[&frame(flag, b"grpc-status:0")]), Some(false));
        }
        assert_eq!(read(false, &[b"<html>oops</html>"]), Some(false));
        assert_eq!(read(true, &[b"{\"not\": \"base64\"}"]), Some(false));
        // Pseudo-random bytes, whole and split, binary and text.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for text in [false, true] {
                let at = if len == 0 { 0 } else { (seed as usize) % len };
                let _ = split(text, &bytes, at);
                let _ = read(text, &[&bytes]);
            }
        }
    }

    /// Splits `body` at the (sorted, deduplicated) points `cuts` picks, and reads the pieces.
    fn read_cut(text: bool, body: &[u8], cuts: &[usize]) -> Option<bool> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut status = WebStatus::new(text);
        let mut from = 0;
        for at in points.into_iter().chain([body.len()]) {
            status.feed(&body[from..at]);
            from = at;
        }
        status.verdict()
    }

    proptest::proptest! {
        /// Messages of any size and flags, then a trailer frame: the verdict is its status,
        /// however the body is cut, binary or base64 (each frame a padded segment, as tonic-web
        /// sends it, or the whole body at once).
        #[test]
        fn any_body_cut_anywhere_is_read_as_it_is(
            messages in proptest::collection::vec(
                (0u8..2, proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                0..6,
            ),
            status in 0u8..20,
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
            per_frame in proptest::bool::ANY,
        ) {
            let trailers = format!("grpc-message:x\r\nGrpc-Status:{status}\r\n");
            let frames: Vec<Vec<u8>> = messages
                .iter()
                .map(|(flag, payload)| frame(*flag, payload))
                .chain([frame(0x80, trailers.as_bytes())])
                .collect();
            let binary = frames.concat();
            let text = if per_frame {
                frames.iter().map(|f| STANDARD.encode(f)).collect::<String>()
            } else {
                STANDARD.encode(&binary)
            };
            let expected = Some(status == 0);
            proptest::prop_assert_eq!(read_cut(false, &binary, &cuts), expected);
            proptest::prop_assert_eq!(read_cut(true, text.as_bytes(), &cuts), expected);
        }

        /// Any bytes, cut anywhere, never panic.
        #[test]
        fn any_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
        ) {
            let _ = read_cut(false, &bytes, &cuts);
            let _ = read_cut(true, &bytes, &cuts);
        }
    }

    #[test]
    fn grpc_web_text_is_read_split_at_every_byte() {
        let ok = STANDARD.encode(body(b"grpc-status:0\r\n"));
        let failed = STANDARD.encode(body(b"grpc-status:14\r\n"));
        for (text, expected) in [(&ok, true), (&failed, false)] {
            let text = text.as_bytes();
            for at in 0..=text.len() {
                assert_eq!(split(true, text, at).1, Some(expected), "split at {at}");
            }
        }
        // Binary bytes read as text are not a status.
        assert_eq!(read(true, &[&body(b"grpc-status:0\r\n")]), Some(false));
        // Base64 read as binary is not one either.
        assert_eq!(read(false, &[ok.as_bytes()]), Some(false));
    }

    #[test]
    fn grpc_web_text_segments_are_padded_on_their_own() {
        // As tonic-web sends it: each frame encoded on its own, padding included.
        let messages = frame(0, b"\x0a\x03one");
        let empty = frame(0, b"");
        for trailers in [
            &b"grpc-status:0\r\n"[..],
            b"grpc-status:0",
            b"Grpc-Status: 0\r\nx:y",
        ] {
            let segments = [
                STANDARD.encode(&messages),
                STANDARD.encode(&empty),
                STANDARD.encode(frame(0x80, trailers)),
            ];
            assert!(segments.iter().any(|s| s.ends_with('=')), "{segments:?}");
            let all = segments.concat();
            for at in 0..=all.len() {
                let (first, last) = split(true, all.as_bytes(), at);
                assert_eq!(last, Some(true), "{trailers:?} split at {at}");
                assert_ne!(first, Some(false), "{trailers:?} split at {at}");
            }
            // Segment by segment, with white space between.
            let spaced = segments.join("\r\n");
            assert_eq!(read(true, &[spaced.as_bytes()]), Some(true));
        }
        // Padding where it cannot be.
        for bad in ["=AAA", "A===", "AA=A", "AAAA A=AA"] {
            assert_eq!(read(true, &[bad.as_bytes()]), Some(false), "{bad}");
        }
        // A trailer frame whose last group is cut before its padding is not read yet.
        let trailer = STANDARD.encode(frame(0x80, b"grpc-status:0\r\n"));
        assert!(trailer.ends_with('='), "{trailer}");
        let cut = trailer.trim_end_matches('=');
        assert_eq!(read(true, &[cut.as_bytes()]), None);
    }
}
