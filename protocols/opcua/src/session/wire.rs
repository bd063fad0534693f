//! The TCP connection to a device (without Nagle's delay), with every
//! incoming chunk header checked before its body is read. The library's
//! codec waits for the whole chunk a header announces (up to 4 GiB) and
//! never compares it with the receive buffer it told the server in Hello,
//! and it bounds a message only by its number of chunks, so one hostile or
//! broken server could make the collector buffer gigabytes. Here the
//! connection ends as soon as a chunk header is not OPC UA's, announces
//! more than the receive buffer, or takes its message past
//! `session.max_message_size` (chunks of a message are sent one after
//! another, Part 6, so the running sum of a message's chunks is its size). On a plaintext channel (security None) a chunk of
//! another request in the middle of a message is refused too; an encrypted
//! channel hides the request id, so there the bound rests on the server
//! being the trusted one the channel was opened with.

use std::pin::Pin;
use std::task::{Context, Poll};

use opcua::core::comms::tcp_codec::TcpCodec;
use opcua::types::{DecodingOptions, Error, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

/// The receive buffer told to servers in Hello: no chunk may be larger.
pub(crate) const RECEIVE_CHUNK_SIZE: usize = 65_536;

/// The receive buffer a connection takes when data arrives, while the
/// device's chunks fit: a 50-value Read's response (~1.6 KiB) does; a
/// larger chunk grows it (doubling until it fits), and the next message
/// starts from that chunk's size. Between messages the transport holds no
/// buffer ([`super::transport`]). tokio-util's default (8 KiB, held for the
/// connection's life) was ~8 KiB of RSS per session (heap profile,
/// BENCHMARKS.md).
pub(crate) const INITIAL_RECEIVE_BUFFER: usize = 2 * 1024;

/// Message types a server may send (Part 6, 7.1.2).
const TYPES: [&[u8; 3]; 6] = [b"ACK", b"ERR", b"OPN", b"MSG", b"CLO", b"RHE"];

/// Slack over `max_message_size` for the chunks' own headers.
const MESSAGE_SLACK: usize = 64 * 1024;

/// Bytes of a chunk's head this module reads: message header (8), channel
/// id, token id, sequence number, request id.
const HEAD: usize = 24;

/// Checks the chunk headers of a byte stream as it is read.
pub(crate) struct Guarded<R> {
    inner: R,
    max_chunk: usize,
    max_message: usize,
    /// Whether `MSG` chunks are plaintext (security None): their request
    /// id can then be checked too.
    plaintext: bool,
    head: [u8; HEAD],
    head_len: usize,
    /// Bytes of the current chunk still to come after its head.
    remaining: usize,
    /// Bytes of the message being received so far (its chunks before this).
    message: usize,
    /// The request id of the message being received, when known.
    request: Option<u32>,
}

fn refuse(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl<R> Guarded<R> {
    /// The stream it reads.
    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }

    /// `max_message`: 0 for no limit.
    pub(crate) fn new(inner: R, max_chunk: usize, max_message: usize, plaintext: bool) -> Self {
        Self {
            inner,
            max_chunk,
            max_message: if max_message == 0 {
                usize::MAX
            } else {
                max_message.saturating_add(MESSAGE_SLACK)
            },
            plaintext,
            head: [0; HEAD],
            head_len: 0,
            remaining: 0,
            message: 0,
            request: None,
        }
    }

    /// Follows `data` through the chunk framing; an error for a header
    /// that is not OPC UA's, a chunk over the limit, a message over its
    /// limit, or (plaintext) a message interrupted by another's chunk.
    fn scan(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let k = self.remaining.min(data.len());
                self.remaining -= k;
                data = &data[k..];
                continue;
            }
            // The message header first; for plaintext MSG chunks also the
            // sequence header, with the request id.
            let want = if self.head_len >= 8 && self.plaintext && &self.head[..3] == b"MSG" {
                HEAD
            } else {
                8
            };
            let k = (want - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + k].copy_from_slice(&data[..k]);
            self.head_len += k;
            data = &data[k..];
            if self.head_len < want {
                continue;
            }
            let size = u32::from_le_bytes([self.head[4], self.head[5], self.head[6], self.head[7]])
                as usize;
            if self.head_len == 8 {
                let known = TYPES.iter().any(|t| self.head[..3] == t[..])
                    && matches!(self.head[3], b'F' | b'C' | b'A');
                if !known {
                    return Err(refuse(
                        "the server sent bytes that are not an OPC UA chunk".into(),
                    ));
                }
                if !(8..=self.max_chunk).contains(&size) {
                    return Err(refuse(format!(
                        "the server announced a chunk of {size} bytes; the receive buffer is {}",
                        self.max_chunk
                    )));
                }
                if self.plaintext && &self.head[..3] == b"MSG" {
                    if size < HEAD {
                        return Err(refuse(format!("a message chunk of {size} bytes")));
                    }
                    continue;
                }
            }
            self.remaining = size - self.head_len;
            self.head_len = 0;
            if self.plaintext && &self.head[..3] == b"MSG" {
                // Chunks of one message come one after another (Part 6):
                // another request's chunk in the middle is not a server of
                // ours, and would let a message grow past the limit.
                let id = u32::from_le_bytes([
                    self.head[20],
                    self.head[21],
                    self.head[22],
                    self.head[23],
                ]);
                if self.request.is_some_and(|r| r != id) {
                    return Err(refuse(format!(
                        "the server interleaved chunks of two messages (requests {} and {id})",
                        self.request.unwrap_or(0)
                    )));
                }
                self.request = Some(id);
            }
            self.message = self.message.saturating_add(size);
            if self.message > self.max_message {
                return Err(refuse(format!(
                    "the server sent a message of more than {} bytes (session.max_message_size)",
                    self.max_message - MESSAGE_SLACK
                )));
            }
            // A final (or aborted) chunk ends its message.
            if self.head[3] != b'C' {
                self.message = 0;
                self.request = None;
            }
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Guarded<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => Poll::Ready(this.scan(&buf.filled()[before..])),
            other => other,
        }
    }
}

/// A connection's reader: chunks framed by async-opcua's codec, through
/// [`Guarded`].
pub(crate) type Reader = FramedRead<Guarded<OwnedReadHalf>, TcpCodec>;

/// Opens the TCP connection to `url` (`opc.tcp://host:port/...`).
pub(crate) async fn connect_tcp(
    url: &str,
    decoding: DecodingOptions,
    plaintext: bool,
) -> Result<(Reader, OwnedWriteHalf), Error> {
    let bad_url = |what: &str| {
        Error::new(
            StatusCode::BadTcpEndpointUrlInvalid,
            format!("{url}: {what}"),
        )
    };
    let parsed = url::Url::parse(url).map_err(|e| bad_url(&e.to_string()))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| bad_url("no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = parsed.port().unwrap_or(4840);
    let socket = open(&host, port).await?;
    // Owned halves: no lock between reading and writing (`io::split` takes
    // one on every poll).
    let (reader, writer) = socket.into_split();
    let reader = FramedRead::with_capacity(
        Guarded::new(
            reader,
            RECEIVE_CHUNK_SIZE,
            decoding.max_message_size,
            plaintext,
        ),
        TcpCodec::new(decoding),
        INITIAL_RECEIVE_BUFFER,
    );
    Ok((reader, writer))
}

/// A TCP connection to `host:port`, without Nagle's algorithm: a request
/// larger than one chunk is written chunk by chunk, and with Nagle each
/// chunk's last segment waits for the ACK of the one before, which the
/// server delays (40 ms on Linux, 200 ms on Windows) because half a request
/// gives it nothing to answer (1,000-node Reads: read p99 50-100 ms with
/// it, 5 ms without; BENCHMARKS.md).
async fn open(host: &str, port: u16) -> Result<TcpStream, Error> {
    let socket = TcpStream::connect((host, port)).await.map_err(|e| {
        Error::new(
            StatusCode::BadCommunicationError,
            format!("cannot connect to {host}:{port}: {e}"),
        )
    })?;
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%host, port, error = %e, "TCP_NODELAY not set");
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_send_without_nagle_delays() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let socket = open("127.0.0.1", port).await.unwrap();
        assert!(socket.nodelay().unwrap());
        drop(listener);
        let refused = open("127.0.0.1", port).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::BadCommunicationError);
    }

    fn chunk(kind: &[u8; 4], size: u32) -> Vec<u8> {
        request_chunk(kind, size, 7)
    }

    fn request_chunk(kind: &[u8; 4], size: u32, request: u32) -> Vec<u8> {
        let mut c = kind.to_vec();
        c.extend_from_slice(&size.to_le_bytes());
        c.resize(20, 0);
        c.extend_from_slice(&request.to_le_bytes());
        c.resize(size as usize, 0);
        c
    }

    #[test]
    fn passes_framed_chunks_and_stops_at_an_oversized_or_foreign_one() {
        let mut stream = chunk(b"ACKF", 28);
        stream.extend(chunk(b"MSGC", 65_536));
        stream.extend(chunk(b"MSGF", 100));
        for step in [1, 7, 1000, stream.len()] {
            let mut g = Guarded::new((), RECEIVE_CHUNK_SIZE, 1 << 20, true);
            for part in stream.chunks(step) {
                g.scan(part).unwrap();
            }
        }
        let mut g = Guarded::new((), RECEIVE_CHUNK_SIZE, 0, true);
        let mut huge = b"MSGF".to_vec();
        huge.extend_from_slice(&100_000_000u32.to_le_bytes());
        let e = g.scan(&huge).unwrap_err();
        assert!(e.to_string().contains("100000000"), "{e}");
        let mut g = Guarded::new((), RECEIVE_CHUNK_SIZE, 0, true);
        assert!(g.scan(b"\xfe\xfe\xfe\xfe\x10\x00\x00\x00").is_err());
    }

    /// A message is the sum of its chunks: intermediate chunks past the
    /// limit end the connection; a final chunk starts the count again.
    #[test]
    fn a_message_over_the_limit_stops_at_the_chunk_that_crosses_it() {
        let limit = 256 * 1024;
        let mut g = Guarded::new((), RECEIVE_CHUNK_SIZE, limit, true);
        // Many whole messages: fine.
        for _ in 0..20 {
            g.scan(&chunk(b"MSGC", 65_536)).unwrap();
            g.scan(&chunk(b"MSGF", 65_536)).unwrap();
        }
        let mut sent = 0;
        let e = loop {
            match g.scan(&chunk(b"MSGC", 8192)) {
                Ok(()) => sent += 8192,
                Err(e) => break e,
            }
        };
        assert!(sent <= limit + MESSAGE_SLACK, "{sent}");
        assert!(e.to_string().contains("session.max_message_size"), "{e}");
    }

    /// On a plaintext channel, a final chunk of another request cannot
    /// reset the count of a message still being received.
    #[test]
    fn another_requests_chunk_in_the_middle_of_a_message_is_refused() {
        let mut g = Guarded::new((), RECEIVE_CHUNK_SIZE, 1 << 20, true);
        g.scan(&request_chunk(b"MSGC", 65_536, 7)).unwrap();
        let e = g.scan(&request_chunk(b"MSGF", 100, 8)).unwrap_err();
        assert!(e.to_string().contains("interleaved"), "{e}");
        // Encrypted channels cannot be checked that way; the size bound holds.
        let mut g = Guarded::new((), RECEIVE_CHUNK_SIZE, 1 << 20, false);
        g.scan(&request_chunk(b"MSGC", 65_536, 7)).unwrap();
        g.scan(&request_chunk(b"MSGF", 100, 8)).unwrap();
    }
}
