//! The `mute` fault: during a time window the device's front replaces every Publish
//! response on the wire with a ServiceFault `BadTimeout`, so that a subscription looks
//! alive (the session and Reads work) but delivers nothing, not even keep-alives.
//!
//! Security None only, like the other wire faults: the chunks are plain, so the front
//! reads the response type at a fixed offset (see [`crate::sniff`]) and writes the
//! replacement with [`crate::hostile`]'s chunk helpers. The ServiceFault is one final
//! (`F`) chunk with the channel, token, sequence number and request id of the replaced
//! chunk and the request handle of its ResponseHeader; the rest of a multi-chunk
//! response is dropped (the client never checks sequence numbers across messages).
//! Every other message passes unchanged, and outside the window everything does.

use opcua::types::{ObjectId, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    time::Instant,
};

use crate::{
    hostile::{read_chunk, request_handle, write_message, Body},
    sniff::{message_type, SessionEvent},
};

/// When a device is muted: `[from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MuteWindow {
    /// The window opens.
    pub from: Instant,
    /// The window closes.
    pub until: Instant,
}

impl MuteWindow {
    /// Whether `at` falls in the window.
    pub fn contains(&self, at: Instant) -> bool {
        self.from <= at && at < self.until
    }
}

/// The body (type id onwards) of a ServiceFault answering the response in chunk
/// `original`: its request handle, service result `BadTimeout`, timestamp 0, no
/// diagnostics, no string table, no additional header.
pub(crate) fn service_fault_body(original: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    // Type id: four-byte NodeId, namespace 0.
    b.extend_from_slice(&[0x01, 0x00]);
    b.extend_from_slice(&(ObjectId::ServiceFault_Encoding_DefaultBinary as u16).to_le_bytes());
    // ResponseHeader: timestamp, request handle, service result, diagnostics (none),
    // string table (null), additional header (null ExtensionObject).
    b.extend_from_slice(&0i64.to_le_bytes());
    b.extend_from_slice(&request_handle(original));
    b.extend_from_slice(&StatusCode::BadTimeout.bits().to_le_bytes());
    b.push(0x00);
    b.extend_from_slice(&(-1i32).to_le_bytes());
    b.extend_from_slice(&[0x00, 0x00, 0x00]);
    b
}

/// Relays the server-to-client direction of one connection, replacing each Publish
/// response during `window`; `on_event` sees the session responses (for the device's
/// session counters).
pub(crate) async fn relay<R, W>(
    window: MuteWindow,
    server: &mut R,
    client: &mut W,
    mut on_event: impl FnMut(SessionEvent),
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let publish_response = ObjectId::PublishResponse_Encoding_DefaultBinary as u32;
    // Chunks of a multi-chunk message after its first.
    let mut in_message = false;
    while let Some(chunk) = read_chunk(server).await? {
        let starts = chunk.starts_with(b"MSG") && !in_message;
        if chunk.starts_with(b"MSG") {
            in_message = chunk[3] == b'C';
        }
        let kind = if starts { message_type(&chunk) } else { None };
        if let Some(event) = kind.and_then(|(_, event)| event) {
            on_event(event);
        }
        if kind.map(|(t, _)| t) != Some(publish_response) || !window.contains(Instant::now()) {
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
        let body = service_fault_body(&chunk);
        write_message(client, &chunk, &mut Body::whole(&body)).await?;
        client.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opcua::types::{BinaryDecodable, ContextOwned, NodeId, ServiceFault};

    use super::*;

    /// A chunk of a Publish response (type id, a ResponseHeader with this request
    /// handle, then some bytes), chunk type `c`.
    fn publish_chunk(c: u8, handle: u32, seq: u32, request_id: u32) -> Vec<u8> {
        let mut m = b"MSG".to_vec();
        m.push(c);
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&7u32.to_le_bytes()); // channel id
        m.extend_from_slice(&9u32.to_le_bytes()); // token id
        m.extend_from_slice(&seq.to_le_bytes());
        m.extend_from_slice(&request_id.to_le_bytes());
        m.extend_from_slice(&[0x01, 0x00]);
        m.extend_from_slice(
            &(ObjectId::PublishResponse_Encoding_DefaultBinary as u16).to_le_bytes(),
        );
        m.extend_from_slice(&1234i64.to_le_bytes());
        m.extend_from_slice(&handle.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend(std::iter::repeat_n(0xAB, 40));
        let len = m.len() as u32;
        m[4..8].copy_from_slice(&len.to_le_bytes());
        m
    }

    fn other_chunk(type_id: ObjectId) -> Vec<u8> {
        let mut m = publish_chunk(b'F', 5, 1, 1);
        m[26..28].copy_from_slice(&(type_id as u16).to_le_bytes());
        m
    }

    async fn run(window: MuteWindow, stream: &[u8]) -> Vec<u8> {
        let mut server = stream;
        let mut out = Vec::new();
        relay(window, &mut server, &mut out, |_| {}).await.unwrap();
        out
    }

    fn open_window() -> MuteWindow {
        let now = Instant::now();
        MuteWindow {
            from: now - Duration::from_secs(1),
            until: now + Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_publish_response_becomes_a_service_fault() {
        let chunk = publish_chunk(b'F', 0xDEAD_BEEF, 41, 17);
        let out = run(open_window(), &chunk).await;
        // One final chunk: header, the replaced chunk's ids and sequence number.
        assert_eq!(&out[..4], b"MSGF");
        assert_eq!(
            u32::from_le_bytes(out[4..8].try_into().unwrap()) as usize,
            out.len()
        );
        assert_eq!(
            out[8..24],
            chunk[8..24],
            "channel, token, sequence, request id"
        );
        let body = &out[24..];
        assert_eq!(body, service_fault_body(&chunk).as_slice());
        let ctx = ContextOwned::default();
        let mut stream = body;
        let type_id = NodeId::decode(&mut stream, &ctx.context()).unwrap();
        assert_eq!(
            type_id,
            NodeId::from(ObjectId::ServiceFault_Encoding_DefaultBinary)
        );
        let fault = ServiceFault::decode(&mut stream, &ctx.context()).unwrap();
        assert!(stream.is_empty(), "bytes left: {stream:?}");
        let h = fault.response_header;
        assert_eq!(h.request_handle, 0xDEAD_BEEF);
        assert_eq!(h.service_result, StatusCode::BadTimeout);
        assert_eq!(h.service_result.bits(), 0x800A_0000);
        assert_eq!(h.timestamp.ticks(), 0);
        assert!(h.string_table.is_none_or(|t| t.is_empty()));
        assert!(h.additional_header.is_null());
    }

    #[tokio::test]
    async fn other_messages_and_times_pass_unchanged() {
        let read = other_chunk(ObjectId::ReadResponse_Encoding_DefaultBinary);
        let fault = other_chunk(ObjectId::ServiceFault_Encoding_DefaultBinary);
        let mut stream = read.clone();
        stream.extend(&fault);
        assert_eq!(run(open_window(), &stream).await, stream);
        // A Publish response outside the window.
        let publish = publish_chunk(b'F', 3, 2, 2);
        let now = Instant::now();
        let later = MuteWindow {
            from: now + Duration::from_secs(60),
            until: now + Duration::from_secs(61),
        };
        assert_eq!(run(later, &publish).await, publish);
        let past = MuteWindow {
            from: now - Duration::from_secs(2),
            until: now - Duration::from_secs(1),
        };
        assert_eq!(run(past, &publish).await, publish);
    }

    #[tokio::test]
    async fn the_rest_of_a_multi_chunk_response_is_dropped() {
        let first = publish_chunk(b'C', 77, 10, 5);
        // A continuation chunk whose body looks like a response is no message start.
        let second = publish_chunk(b'C', 1, 11, 5);
        let last = publish_chunk(b'F', 1, 12, 5);
        let read = other_chunk(ObjectId::ReadResponse_Encoding_DefaultBinary);
        let stream = [first.clone(), second, last, read.clone()].concat();
        let out = run(open_window(), &stream).await;
        let fault_len = 24 + service_fault_body(&first).len();
        assert_eq!(out.len(), fault_len + read.len());
        assert_eq!(out[8..24], first[8..24]);
        assert_eq!(&out[..4], b"MSGF");
        assert_eq!(out[fault_len..], read[..], "the next message passes");
    }
}
