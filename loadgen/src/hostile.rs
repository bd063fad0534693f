//! Hostile devices: the device's front passes the OPC UA handshake through
//! (Hello, secure channel, GetEndpoints, sessions) and replaces every Read
//! response on the wire with what a broken or malicious server might send.
//! Raw OPC UA binary (security None chunks), written here byte by byte, so
//! a client's decoder meets exactly these bytes: nothing of the client is
//! mocked, and the server behind is the ordinary simulated device.

use std::{fmt, str::FromStr, time::Duration};

use opcua::types::ObjectId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::sniff::{message_type, SessionEvent};

/// What a hostile device sends instead of each Read response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hostile {
    /// 4 KiB of random bytes where the response should be (no valid chunk
    /// header), then the connection carries on as if nothing happened.
    Garbage,
    /// A well-formed response whose first value claims an array of
    /// 2^31 - 1 Doubles, followed by 16 bytes.
    HugeArray,
    /// A response whose first value is a Variant array holding a Variant
    /// array, 100,000 levels deep (500 KB).
    DeepNesting,
    /// A response carrying one 100 MB String, streamed in 8 KiB chunks.
    HugeString,
    /// One chunk whose header announces 100 MB, its bytes then streamed
    /// (past any receive buffer a client negotiated).
    HugeChunk,
    /// The genuine response, one byte per second.
    Trickle,
}

impl Hostile {
    /// Every kind, in CLI order.
    pub const ALL: [Hostile; 6] = [
        Hostile::Garbage,
        Hostile::HugeArray,
        Hostile::DeepNesting,
        Hostile::HugeString,
        Hostile::HugeChunk,
        Hostile::Trickle,
    ];

    /// The kind's name in the CLI syntax (`garbage`, `huge-array`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Hostile::Garbage => "garbage",
            Hostile::HugeArray => "huge-array",
            Hostile::DeepNesting => "deep-nesting",
            Hostile::HugeString => "huge-string",
            Hostile::HugeChunk => "huge-chunk",
            Hostile::Trickle => "trickle",
        }
    }
}

impl fmt::Display for Hostile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Hostile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Hostile::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Hostile::ALL.iter().map(|h| h.name()).collect();
                format!("unknown hostile kind `{s}` (one of {})", names.join(", "))
            })
    }
}

/// Largest chunk read from the device's server (its own limit is 64 KiB).
const MAX_CHUNK: usize = 1 << 20;
/// Body bytes per chunk the hostile device writes (below any client's
/// receive buffer).
const PART: usize = 8 * 1024;
/// Chunk header (8), channel id, token id, sequence number, request id.
pub(crate) const CHUNK_HEAD: usize = 24;
/// Nesting levels of [`Hostile::DeepNesting`].
const DEPTH: usize = 100_000;
/// Length of [`Hostile::HugeString`]'s string.
const HUGE_STRING: usize = 100_000_000;

/// One chunk from `r` (header included), `None` at the end of the stream.
pub(crate) async fn read_chunk<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if !(8..=MAX_CHUNK).contains(&size) {
        return Err(std::io::Error::other(format!("chunk of {size} bytes")));
    }
    let mut chunk = vec![0u8; size];
    chunk[..8].copy_from_slice(&head);
    r.read_exact(&mut chunk[8..]).await?;
    Ok(Some(chunk))
}

/// Relays the server-to-client direction of one connection, replacing each
/// Read response as `kind` says; `on_event` sees the session responses (for
/// the device's session counters).
pub(crate) async fn relay<R, W>(
    kind: Hostile,
    server: &mut R,
    client: &mut W,
    mut on_event: impl FnMut(SessionEvent),
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let read_response = ObjectId::ReadResponse_Encoding_DefaultBinary as u32;
    // Chunks of a multi-chunk message after its first.
    let mut in_message = false;
    let mut garbage_seed = 0x5EED_u64;
    while let Some(chunk) = read_chunk(server).await? {
        let starts = chunk.starts_with(b"MSG") && !in_message;
        if chunk.starts_with(b"MSG") {
            in_message = chunk[3] == b'C';
        }
        let kind_of = if starts { message_type(&chunk) } else { None };
        if let Some(event) = kind_of.and_then(|(_, event)| event) {
            on_event(event);
        }
        if kind_of.map(|(t, _)| t) != Some(read_response) {
            client.write_all(&chunk).await?;
            continue;
        }
        // The rest of a multi-chunk response is not sent either.
        let mut last = chunk[3];
        while last == b'C' {
            match read_chunk(server).await? {
                Some(c) => last = c[3],
                None => return Ok(()),
            }
        }
        in_message = false;
        match kind {
            Hostile::Garbage => {
                let mut bytes = vec![0u8; 4096];
                for b in bytes.iter_mut() {
                    garbage_seed = garbage_seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    *b = (garbage_seed >> 33) as u8;
                }
                // Not a chunk type a client could take for one.
                bytes[..3].copy_from_slice(b"\xfe\xfe\xfe");
                client.write_all(&bytes).await?;
            }
            Hostile::Trickle => {
                for b in &chunk {
                    client.write_all(std::slice::from_ref(b)).await?;
                    client.flush().await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Hostile::HugeArray => {
                // Double (11) | array flag, length 2^31 - 1, then 16 bytes.
                let mut value = vec![0x8B];
                value.extend_from_slice(&i32::MAX.to_le_bytes());
                value.extend_from_slice(&[0x11; 16]);
                let body = response_body(&chunk, &value);
                write_message(client, &chunk, &mut Body::whole(&body)).await?;
            }
            Hostile::DeepNesting => {
                // Variant (24) | array flag, one element, DEPTH times; a
                // null Variant at the bottom.
                let mut value = Vec::with_capacity(DEPTH * 5 + 1);
                for _ in 0..DEPTH {
                    value.push(0x98);
                    value.extend_from_slice(&1i32.to_le_bytes());
                }
                value.push(0x00);
                let body = response_body(&chunk, &value);
                write_message(client, &chunk, &mut Body::whole(&body)).await?;
            }
            Hostile::HugeChunk => {
                let mut head = Vec::with_capacity(CHUNK_HEAD);
                head.extend_from_slice(b"MSGF");
                head.extend_from_slice(&((CHUNK_HEAD + HUGE_STRING) as u32).to_le_bytes());
                head.extend_from_slice(chunk.get(8..24).unwrap_or(&[0; 16]));
                client.write_all(&head).await?;
                let filler = vec![b'x'; PART];
                for _ in 0..HUGE_STRING / PART {
                    client.write_all(&filler).await?;
                }
            }
            Hostile::HugeString => {
                // String (12), length, then the characters, never held whole.
                let mut value = vec![0x0C];
                value.extend_from_slice(&(HUGE_STRING as i32).to_le_bytes());
                let head = response_body(&chunk, &value);
                // `response_body` ends with the (empty) diagnostics after the
                // value: the characters go between.
                let (prefix, suffix) = head.split_at(head.len() - 4);
                let mut body = Body {
                    prefix: prefix.to_vec(),
                    filler: HUGE_STRING,
                    suffix: suffix.to_vec(),
                    pos: 0,
                };
                write_message(client, &chunk, &mut body).await?;
            }
        }
        client.flush().await?;
    }
    Ok(())
}

/// A ReadResponse body (type id onwards) answering the request of
/// `original` (its request handle) with one result whose DataValue holds
/// `value` (an encoded Variant), no diagnostics.
fn response_body(original: &[u8], value: &[u8]) -> Vec<u8> {
    let handle = request_handle(original);
    let mut b = Vec::with_capacity(value.len() + 48);
    // Type id: four-byte NodeId, namespace 0.
    b.extend_from_slice(&[0x01, 0x00]);
    b.extend_from_slice(&(ObjectId::ReadResponse_Encoding_DefaultBinary as u16).to_le_bytes());
    // ResponseHeader: timestamp, request handle, Good, no diagnostics, no
    // string table, no additional header.
    b.extend_from_slice(&0i64.to_le_bytes());
    b.extend_from_slice(&handle);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.push(0x00);
    b.extend_from_slice(&(-1i32).to_le_bytes());
    b.extend_from_slice(&[0x00, 0x00, 0x00]);
    // Results: one DataValue with a value.
    b.extend_from_slice(&1i32.to_le_bytes());
    b.push(0x01);
    b.extend_from_slice(value);
    // DiagnosticInfos: none.
    b.extend_from_slice(&(-1i32).to_le_bytes());
    b
}

/// The request handle in a response chunk's ResponseHeader (zero if the
/// type id is not in a form this module writes).
pub(crate) fn request_handle(chunk: &[u8]) -> [u8; 4] {
    let body = match chunk.get(CHUNK_HEAD) {
        Some(0x00) => CHUNK_HEAD + 2,
        Some(0x01) => CHUNK_HEAD + 4,
        Some(0x02) => CHUNK_HEAD + 7,
        _ => return [0; 4],
    };
    chunk
        .get(body + 8..body + 12)
        .and_then(|h| h.try_into().ok())
        .unwrap_or([0; 4])
}

/// A message body: `prefix`, `filler` bytes of `x`, `suffix`.
pub(crate) struct Body {
    prefix: Vec<u8>,
    filler: usize,
    suffix: Vec<u8>,
    pos: usize,
}

impl Body {
    /// A body of these bytes.
    pub(crate) fn whole(bytes: &[u8]) -> Body {
        Body {
            prefix: bytes.to_vec(),
            filler: 0,
            suffix: Vec::new(),
            pos: 0,
        }
    }

    fn len(&self) -> usize {
        self.prefix.len() + self.filler + self.suffix.len()
    }

    /// The next up to `n` bytes.
    fn next_part(&mut self, n: usize) -> Vec<u8> {
        let end = (self.pos + n).min(self.len());
        let mut out = Vec::with_capacity(end - self.pos);
        let (p, f) = (self.prefix.len(), self.prefix.len() + self.filler);
        if self.pos < p {
            out.extend_from_slice(&self.prefix[self.pos..end.min(p)]);
        }
        let (from, to) = (self.pos.max(p), end.min(f));
        if from < to {
            out.resize(out.len() + (to - from), b'x');
        }
        let from = self.pos.max(f);
        if from < end {
            out.extend_from_slice(&self.suffix[from - f..end - f]);
        }
        self.pos = end;
        out
    }
}

/// Writes `body` as a message in chunks of [`PART`] bytes, with the
/// channel, token and request ids of `original` and consecutive sequence
/// numbers from its own.
pub(crate) async fn write_message<W: AsyncWrite + Unpin>(
    client: &mut W,
    original: &[u8],
    body: &mut Body,
) -> std::io::Result<()> {
    let ids: [u8; 8] = original[8..16].try_into().unwrap_or([0; 8]);
    let request_id: [u8; 4] = original[20..24].try_into().unwrap_or([0; 4]);
    let mut seq = u32::from_le_bytes(original[16..20].try_into().unwrap_or([0; 4]));
    while body.pos < body.len() {
        let part = body.next_part(PART);
        let last = body.pos == body.len();
        let mut chunk = Vec::with_capacity(CHUNK_HEAD + part.len());
        chunk.extend_from_slice(if last { b"MSGF" } else { b"MSGC" });
        chunk.extend_from_slice(&((CHUNK_HEAD + part.len()) as u32).to_le_bytes());
        chunk.extend_from_slice(&ids);
        chunk.extend_from_slice(&seq.to_le_bytes());
        chunk.extend_from_slice(&request_id);
        chunk.extend_from_slice(&part);
        client.write_all(&chunk).await?;
        seq = seq.wrapping_add(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for h in Hostile::ALL {
            assert_eq!(h.name().parse::<Hostile>(), Ok(h));
        }
        assert!("nasty".parse::<Hostile>().unwrap_err().contains("garbage"));
    }

    #[test]
    fn a_streamed_body_is_its_parts_in_order() {
        let mut b = Body {
            prefix: vec![1, 2, 3],
            filler: 5,
            suffix: vec![9],
            pos: 0,
        };
        let mut all = Vec::new();
        while b.pos < b.len() {
            all.extend(b.next_part(4));
        }
        assert_eq!(all, [1, 2, 3, b'x', b'x', b'x', b'x', b'x', 9]);
    }
}
