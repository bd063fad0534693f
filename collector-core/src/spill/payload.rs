//! How a group of sink [`Message`]s is laid out inside one spilled batch:
//! the store treats payloads as opaque bytes; this is the collector's
//! encoding of them (little endian):
//!
//! ```text
//! payload := entry*
//! entry   := key_len u32 | key (UTF-8) | read_time_us i64 | value_len u32 | value
//! ```
//!
//! The store checksums and compresses the whole payload, so entries carry
//! no checksum of their own.

use crate::sink::Message;

/// Appends the encoding of `messages` to `out`.
pub(crate) fn encode(messages: &[Message], out: &mut Vec<u8>) {
    for m in messages {
        out.extend_from_slice(&(m.key.len() as u32).to_le_bytes());
        out.extend_from_slice(m.key.as_bytes());
        out.extend_from_slice(&m.read_time_us.to_le_bytes());
        out.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&m.payload);
    }
}

/// Decodes a payload written by [`encode`].
pub(crate) fn decode(mut data: &[u8]) -> Result<Vec<Message>, String> {
    fn take<'a>(data: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
        if data.len() < n {
            return Err(format!(
                "truncated {what}: need {n} bytes, have {}",
                data.len()
            ));
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Ok(head)
    }
    fn u32_at(data: &mut &[u8], what: &str) -> Result<usize, String> {
        let b = take(data, 4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key_len = u32_at(&mut data, "key length")?;
        let key = std::str::from_utf8(take(&mut data, key_len, "key")?)
            .map_err(|e| format!("key is not UTF-8: {e}"))?
            .to_string();
        let t = take(&mut data, 8, "read time")?;
        let mut tb = [0u8; 8];
        tb.copy_from_slice(t);
        let value_len = u32_at(&mut data, "value length")?;
        let payload = take(&mut data, value_len, "value")?.to_vec();
        out.push(Message {
            key,
            payload,
            read_time_us: i64::from_le_bytes(tb),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let msgs = vec![
            Message {
                key: "dev-1".into(),
                payload: b"{\"a\":1}".to_vec(),
                read_time_us: 1_700_000_000_000_000,
            },
            Message {
                key: "d\u{e9}v-2".into(),
                payload: Vec::new(),
                read_time_us: -5,
            },
        ];
        let mut buf = Vec::new();
        encode(&msgs, &mut buf);
        assert_eq!(decode(&buf).unwrap(), msgs);
        assert!(decode(&buf[..buf.len() - 1]).is_err());
        assert_eq!(decode(&[]).unwrap(), Vec::<Message>::new());
    }
}
