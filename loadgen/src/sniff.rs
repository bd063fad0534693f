//! Watches the server-to-client byte stream of one relayed OPC UA connection for session
//! responses, because async-opcua has no hook on session creation or closing and the
//! simulator must count concurrently open sessions per endpoint.
//!
//! Only works with security policy None (the only one the devices offer): message chunks
//! are plain, so the type of a response is readable at a fixed offset.

use opcua::types::{ObjectId, StatusCode};

/// Bytes of a chunk needed to see a response's type and service result: 8 header,
/// 4 channel id, 4 token id, 8 sequence header, up to 7 type id, 16 response header.
const HEAD: usize = 48;
/// Larger chunks mean the stream is not what we think; stop looking.
const MAX_CHUNK: usize = 1 << 30;

/// A session response seen on the connection (service result Good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// CreateSessionResponse.
    Created,
    /// ActivateSessionResponse.
    Activated,
    /// CloseSessionResponse.
    Closed,
    /// ReadResponse, whatever its result (the collector's data reads, its
    /// keep-alives and what it reads at connect).
    Read,
}

/// Incremental parser of OPC UA TCP chunks (server to client direction).
#[derive(Debug)]
pub struct ChunkScanner {
    head: [u8; HEAD],
    head_len: usize,
    /// Bytes of the current chunk after its head still to skip.
    skip: usize,
    /// Whether the next MSG chunk starts a new message.
    message_start: bool,
    /// Set once the stream did not parse; nothing more is reported.
    lost: bool,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        Self {
            head: [0; HEAD],
            head_len: 0,
            skip: 0,
            message_start: true,
            lost: false,
        }
    }
}

impl ChunkScanner {
    /// Feed the next bytes of the stream; `on_event` is called for every session response.
    pub fn feed(&mut self, mut data: &[u8], mut on_event: impl FnMut(SessionEvent)) {
        while !data.is_empty() && !self.lost {
            if self.skip > 0 {
                let k = self.skip.min(data.len());
                self.skip -= k;
                data = &data[k..];
                continue;
            }
            let want = if self.head_len < 8 {
                8
            } else {
                self.chunk_size().min(HEAD)
            };
            let k = (want - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + k].copy_from_slice(&data[..k]);
            self.head_len += k;
            data = &data[k..];
            if self.head_len < 8 {
                continue;
            }
            let size = self.chunk_size();
            if !(8..=MAX_CHUNK).contains(&size) {
                self.lost = true;
                return;
            }
            let want = size.min(HEAD);
            if self.head_len < want {
                continue;
            }
            if let Some(event) = self.inspect(want) {
                on_event(event);
            }
            self.skip = size - want;
            self.head_len = 0;
        }
    }

    fn chunk_size(&self) -> usize {
        u32::from_le_bytes([self.head[4], self.head[5], self.head[6], self.head[7]]) as usize
    }

    fn inspect(&mut self, len: usize) -> Option<SessionEvent> {
        let h = &self.head[..len];
        if &h[..3] != b"MSG" {
            return None;
        }
        let starts_message = self.message_start;
        // The chunk after a final ('F') or abort ('A') chunk starts a new message.
        self.message_start = h[3] != b'C';
        if !starts_message {
            return None;
        }
        let (_, event) = message_type(h)?;
        event
    }
}

/// The type id of the message starting in chunk `h` (its head suffices),
/// and the session event it is, if any (a session response with service
/// result Good). `None` when the type id does not parse.
pub(crate) fn message_type(h: &[u8]) -> Option<(u32, Option<SessionEvent>)> {
    let u16_at = |i: usize| h.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |i: usize| {
        h.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Body after 8 header + 4 channel id + 4 token id + 4 sequence number + 4 request id.
    let (type_id, body) = match h.get(24)? {
        0x00 => (u32::from(*h.get(25)?), 26),
        0x01 if *h.get(25)? == 0 => (u32::from(u16_at(26)?), 28),
        0x02 if u16_at(25)? == 0 => (u32_at(27)?, 31),
        _ => return None,
    };
    let event = if type_id == ObjectId::CreateSessionResponse_Encoding_DefaultBinary as u32 {
        Some(SessionEvent::Created)
    } else if type_id == ObjectId::ActivateSessionResponse_Encoding_DefaultBinary as u32 {
        Some(SessionEvent::Activated)
    } else if type_id == ObjectId::CloseSessionResponse_Encoding_DefaultBinary as u32 {
        Some(SessionEvent::Closed)
    } else if type_id == ObjectId::ReadResponse_Encoding_DefaultBinary as u32 {
        return Some((type_id, Some(SessionEvent::Read)));
    } else {
        None
    };
    // ResponseHeader: timestamp (8), request handle (4), service result (4).
    let event = match event {
        Some(e) => StatusCode::from(u32_at(body + 12)?).is_good().then_some(e),
        None => None,
    };
    Some((type_id, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(chunk: u8, type_id: u16, result: u32, body_len: usize) -> Vec<u8> {
        let mut m = b"MSG".to_vec();
        m.push(chunk);
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        m.extend_from_slice(&[1, 0]);
        m.extend_from_slice(&type_id.to_le_bytes());
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&result.to_le_bytes());
        m.extend(std::iter::repeat_n(0xAB, body_len));
        let len = m.len() as u32;
        m[4..8].copy_from_slice(&len.to_le_bytes());
        m
    }

    #[test]
    fn finds_session_responses_across_split_reads() {
        let create = ObjectId::CreateSessionResponse_Encoding_DefaultBinary as u16;
        let activate = ObjectId::ActivateSessionResponse_Encoding_DefaultBinary as u16;
        let close = ObjectId::CloseSessionResponse_Encoding_DefaultBinary as u16;
        let mut stream = b"ACKF".to_vec();
        stream.extend_from_slice(&28u32.to_le_bytes());
        stream.extend_from_slice(&[0; 20]);
        stream.extend(msg(b'F', create, 0, 100));
        // A rejected session (BadTooManySessions) does not count.
        stream.extend(msg(b'F', create, 0x80B8_0000, 5));
        stream.extend(msg(b'F', activate, 0, 0));
        // A continuation chunk whose body looks like a response is not a message start.
        stream.extend(msg(b'C', 631, 0, 10));
        stream.extend(msg(b'C', create, 0, 10));
        stream.extend(msg(b'F', create, 0, 10));
        stream.extend(msg(b'F', close, 0, 3));
        // A Read response counts whatever its result.
        let read = ObjectId::ReadResponse_Encoding_DefaultBinary as u16;
        stream.extend(msg(b'F', read, 0x8001_0000, 3));
        for step in [1, 3, 7, 64, stream.len()] {
            let mut scanner = ChunkScanner::default();
            let mut events = Vec::new();
            for part in stream.chunks(step) {
                scanner.feed(part, |e| events.push(e));
            }
            assert_eq!(
                events,
                vec![
                    SessionEvent::Created,
                    SessionEvent::Activated,
                    SessionEvent::Closed,
                    SessionEvent::Read
                ],
                "step {step}"
            );
        }
    }
}
