//! bore's control protocol framing: JSON messages each ended by a NUL byte.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The next message on `stream`, `None` at its end or on bytes that are no JSON.
pub(crate) async fn read_frame(stream: &mut TcpStream) -> Option<serde_json::Value> {
    let mut frame = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        if byte[0] == 0 {
            return serde_json::from_slice(&frame).ok();
        }
        frame.push(byte[0]);
    }
}

/// Writes `value` as one message.
pub(crate) async fn write_frame(
    stream: &mut TcpStream,
    value: serde_json::Value,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(&value).unwrap();
    bytes.push(0);
    stream.write_all(&bytes).await
}
