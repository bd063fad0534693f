//! A ReadResponse decoded as async-opcua decodes it, field by field and
//! with the same limits, except its `DataValue` timestamps: each is made
//! from its ticks with one conversion (seconds and nanoseconds since 1970)
//! instead of the library's calendar arithmetic. The value itself, the
//! header and the diagnostics are the library's decoders.

use std::io::Read;

use opcua::core::comms::message_chunk::{MessageChunk, MessageIsFinalType};
use opcua::core::comms::secure_channel::SecureChannel;
use opcua::core::ResponseMessage;
use opcua::types::{
    BinaryDecodable, Context, DataValue, DateTime, DiagnosticInfo, EncodingResult, Error, NodeId,
    ObjectId, ReadResponse, ResponseHeader, StatusCode, Variant,
};

/// `DataValue` encoding mask bits (Part 6, 5.2.2.17).
const HAS_VALUE: u8 = 0x1;
const HAS_STATUS: u8 = 0x2;
const HAS_SOURCE_TIMESTAMP: u8 = 0x4;
const HAS_SERVER_TIMESTAMP: u8 = 0x8;
const HAS_SOURCE_PICOSECONDS: u8 = 0x10;
const HAS_SERVER_PICOSECONDS: u8 = 0x20;

/// Seconds from 1601-01-01 (OPC UA's epoch) to 1970-01-01.
const SECONDS_1601_TO_1970: i64 = 11_644_473_600;
const TICKS_PER_SECOND: i64 = 10_000_000;
const NANOS_PER_TICK: i64 = 100;

/// The message in `chunks` when it is a ReadResponse; `None` for any
/// other message (the caller decodes it with the library). Only a Read
/// response's chunks are copied together, when it has more than one.
pub(super) fn decode(
    chunks: &[MessageChunk],
    channel: &SecureChannel,
) -> Result<Option<ResponseMessage>, Error> {
    let bodies = bodies(chunks, channel)?;
    let context = channel.context();
    let ctx = context.context();
    let Some(first) = bodies.first() else {
        return Err(Error::decoding("Stream contained no chunks"));
    };
    let mut stream = std::io::Cursor::new(*first);
    // A type id that does not decode from the first body alone (cut, or
    // split over chunks) is the library's to decode or refuse.
    match NodeId::decode(&mut stream, &ctx) {
        Ok(id) if id == ObjectId::ReadResponse_Encoding_DefaultBinary => {}
        _ => return Ok(None),
    }
    let response = if bodies.len() == 1 {
        read_response(&mut stream, &ctx)?
    } else {
        let mut whole = std::io::Cursor::new(bodies.concat());
        whole.set_position(stream.position());
        read_response(&mut whole, &ctx)?
    };
    Ok(Some(ResponseMessage::Read(Box::new(response))))
}

/// The message bodies the chunks carry, checked as the library checks
/// them: every chunk but the last intermediate, the last final.
fn bodies<'a>(chunks: &'a [MessageChunk], channel: &SecureChannel) -> Result<Vec<&'a [u8]>, Error> {
    let mut bodies = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let info = chunk.chunk_info(channel)?;
        let expected = if i + 1 == chunks.len() {
            MessageIsFinalType::Final
        } else {
            MessageIsFinalType::Intermediate
        };
        if info.message_header.is_final != expected {
            return Err(Error::decoding(
                "Last message in sequence is not marked as final",
            ));
        }
        let body = info
            .body_offset
            .checked_add(info.body_length)
            .and_then(|end| chunk.data.get(info.body_offset..end))
            .ok_or_else(|| Error::decoding("Chunk body past the chunk's end"))?;
        bodies.push(body);
    }
    Ok(bodies)
}

fn read_response<S: Read + ?Sized>(
    stream: &mut S,
    ctx: &Context<'_>,
) -> EncodingResult<ReadResponse> {
    let response_header = ResponseHeader::decode(stream, ctx)?;
    let handle = response_header.request_handle;
    let results = array(stream, ctx, data_value).map_err(|e| e.with_request_handle(handle))?;
    let diagnostic_infos = <Option<Vec<DiagnosticInfo>>>::decode(stream, ctx)
        .map_err(|e| e.with_request_handle(handle))?;
    Ok(ReadResponse {
        response_header,
        results,
        diagnostic_infos,
    })
}

/// An array as the library decodes `Option<Vec<T>>`: -1 is none, another
/// negative length or one past the decoding limit is an error.
fn array<S: Read + ?Sized, T>(
    stream: &mut S,
    ctx: &Context<'_>,
    item: fn(&mut S, &Context<'_>) -> EncodingResult<T>,
) -> EncodingResult<Option<Vec<T>>> {
    let len = i32::decode(stream, ctx)?;
    if len == -1 {
        return Ok(None);
    }
    let max = ctx.options().max_array_length;
    let len = usize::try_from(len)
        .map_err(|_| Error::decoding("Array length is negative value and invalid"))?;
    if len > max {
        return Err(Error::decoding(format!(
            "Array length {len} exceeds decoding limit {max}"
        )));
    }
    // A length is only a claim until the items arrive: room for at most
    // 4,096 up front (the library reserves the whole claim).
    let mut items = Vec::with_capacity(len.min(4096));
    for _ in 0..len {
        items.push(item(stream, ctx)?);
    }
    Ok(Some(items))
}

/// A `DataValue` as the library decodes it (picoseconds kept only with
/// their timestamp; the server's timestamp, not the source's, moved by
/// the client offset).
fn data_value<S: Read + ?Sized>(stream: &mut S, ctx: &Context<'_>) -> EncodingResult<DataValue> {
    let mask = u8::decode(stream, ctx)?;
    let has = |bit: u8| mask & bit != 0;
    let value = if has(HAS_VALUE) {
        Some(Variant::decode(stream, ctx)?)
    } else {
        None
    };
    let status = if has(HAS_STATUS) {
        Some(StatusCode::from(u32::decode(stream, ctx)?))
    } else {
        None
    };
    let source_timestamp = if has(HAS_SOURCE_TIMESTAMP) {
        Some(date_time(
            i64::decode(stream, ctx)?,
            chrono::TimeDelta::zero(),
        ))
    } else {
        None
    };
    let source_picoseconds = if has(HAS_SOURCE_PICOSECONDS) {
        Some(u16::decode(stream, ctx)?)
    } else {
        None
    };
    let server_timestamp = if has(HAS_SERVER_TIMESTAMP) {
        Some(date_time(
            i64::decode(stream, ctx)?,
            ctx.options().client_offset,
        ))
    } else {
        None
    };
    let server_picoseconds = if has(HAS_SERVER_PICOSECONDS) {
        Some(u16::decode(stream, ctx)?)
    } else {
        None
    };
    Ok(DataValue {
        value,
        status,
        source_picoseconds: source_picoseconds.filter(|_| source_timestamp.is_some()),
        source_timestamp,
        server_picoseconds: server_picoseconds.filter(|_| server_timestamp.is_some()),
        server_timestamp,
    })
}

/// The instant `ticks` (100 ns since 1601) names, less `offset`: the value
/// async-opcua's `DateTime::decode` gives, made from seconds and
/// nanoseconds since 1970 in one conversion. The end of time (`i64::MAX`),
/// a non-zero offset and ticks outside chrono's range take the library's
/// path.
pub(super) fn date_time(ticks: i64, offset: chrono::TimeDelta) -> DateTime {
    if ticks != i64::MAX && offset.is_zero() {
        let seconds = ticks.div_euclid(TICKS_PER_SECOND) - SECONDS_1601_TO_1970;
        // 0..=9_999_999 ticks: below 10^9 nanoseconds, so it fits.
        let nanos = ticks.rem_euclid(TICKS_PER_SECOND) * NANOS_PER_TICK;
        if let Some(utc) = u32::try_from(nanos)
            .ok()
            .and_then(|nanos| chrono::DateTime::from_timestamp(seconds, nanos))
        {
            return DateTime::from(utc);
        }
    }
    DateTime::from(ticks) - offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{BinaryEncodable, ContextOwned, DiagnosticInfo, UAString};
    use proptest::prelude::*;

    /// Bytes as the library encodes `value`.
    fn encoded(value: &impl BinaryEncodable) -> Vec<u8> {
        let ctx = ContextOwned::default();
        let mut out = Vec::new();
        value.encode(&mut out, &ctx.context()).unwrap();
        out
    }

    fn library_date_time(ticks: i64) -> DateTime {
        let ctx = ContextOwned::default();
        DateTime::decode(
            &mut std::io::Cursor::new(ticks.to_le_bytes()),
            &ctx.context(),
        )
        .unwrap()
    }

    #[test]
    fn timestamps_are_the_librarys_at_the_edges() {
        let now = DateTime::now().checked_ticks();
        for ticks in [
            0,
            1,
            -1,
            99,
            TICKS_PER_SECOND - 1,
            TICKS_PER_SECOND,
            -TICKS_PER_SECOND - 1,
            SECONDS_1601_TO_1970 * TICKS_PER_SECOND,
            now,
            DateTime::endtimes_ticks(),
            DateTime::endtimes_ticks() + 1,
            i64::MAX - 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(
                date_time(ticks, chrono::TimeDelta::zero()),
                library_date_time(ticks),
                "{ticks}"
            );
        }
        // An offset (the library's clock-skew setting) takes its path.
        let offset = chrono::TimeDelta::seconds(3);
        assert_eq!(date_time(now, offset), DateTime::from(now) - offset);
    }

    fn value() -> impl Strategy<Value = Option<Variant>> {
        prop_oneof![
            Just(None),
            // Not NaN: it is unequal to itself.
            (-1e12f64..1e12).prop_map(|v| Some(Variant::Double(v))),
            any::<i32>().prop_map(|v| Some(Variant::Int32(v))),
            any::<bool>().prop_map(|v| Some(Variant::Boolean(v))),
            "[a-zé ]{0,12}".prop_map(|v| Some(Variant::String(UAString::from(v)))),
            (0..=DateTime::endtimes_ticks())
                .prop_map(|t| Some(Variant::DateTime(Box::new(DateTime::from(t))))),
        ]
    }

    /// DataValues in the range the library's encoder keeps as they are
    /// (it clamps timestamps to 1601..=9999).
    fn data_value_strategy() -> impl Strategy<Value = DataValue> {
        let ticks = 0..=DateTime::endtimes_ticks();
        (
            value(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(ticks.clone()),
            proptest::option::of(any::<u16>()),
            proptest::option::of(ticks),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(
                |(value, status, source, source_ps, server, server_ps)| DataValue {
                    value,
                    status: status.map(StatusCode::from),
                    source_timestamp: source.map(DateTime::from),
                    source_picoseconds: source_ps.filter(|_| source.is_some()),
                    server_timestamp: server.map(DateTime::from),
                    server_picoseconds: server_ps.filter(|_| server.is_some()),
                },
            )
    }

    proptest! {
        #[test]
        fn timestamps_are_the_librarys(ticks in any::<i64>()) {
            prop_assert_eq!(date_time(ticks, chrono::TimeDelta::zero()), library_date_time(ticks));
        }

        /// What the library encodes, this decoder reads back as the
        /// library's own decoder does, and as it was.
        #[test]
        fn read_responses_decode_as_the_librarys(
            results in proptest::option::of(proptest::collection::vec(data_value_strategy(), 0..8)),
            handle in any::<u32>(),
            diagnostics in any::<bool>(),
        ) {
            let mut response = ReadResponse::default();
            response.response_header.request_handle = handle;
            response.response_header.timestamp = DateTime::now();
            response.results = results;
            if diagnostics {
                response.diagnostic_infos = Some(vec![DiagnosticInfo::default()]);
            }
            let bytes = encoded(&response);
            let ctx = ContextOwned::default();
            let ours = read_response(&mut std::io::Cursor::new(&bytes), &ctx.context()).unwrap();
            let library = ReadResponse::decode(&mut std::io::Cursor::new(&bytes), &ctx.context()).unwrap();
            prop_assert_eq!(&ours, &library);
            prop_assert_eq!(ours, response);
        }
    }

    #[test]
    fn picoseconds_without_their_timestamp_are_dropped_as_the_library_does() {
        // Mask: value, source and server picoseconds, no timestamps.
        let mut bytes = vec![HAS_VALUE | HAS_SOURCE_PICOSECONDS | HAS_SERVER_PICOSECONDS];
        bytes.extend(encoded(&Variant::Int32(7)));
        bytes.extend(5u16.to_le_bytes());
        bytes.extend(6u16.to_le_bytes());
        let ctx = ContextOwned::default();
        let ours = data_value(&mut std::io::Cursor::new(&bytes), &ctx.context()).unwrap();
        let library = DataValue::decode(&mut std::io::Cursor::new(&bytes), &ctx.context()).unwrap();
        assert_eq!(ours, library);
        assert_eq!(ours.source_picoseconds, None);
        assert_eq!(ours.value, Some(Variant::Int32(7)));
    }

    #[test]
    fn bad_array_lengths_are_refused_as_the_library_refuses_them() {
        let ctx = ContextOwned::default();
        let limit = ctx.options().max_array_length;
        for len in [-2i32, i32::try_from(limit + 1).unwrap_or(i32::MAX)] {
            let bytes = len.to_le_bytes();
            let ours = array(
                &mut std::io::Cursor::new(&bytes[..]),
                &ctx.context(),
                data_value,
            );
            let library = <Option<Vec<DataValue>>>::decode(
                &mut std::io::Cursor::new(&bytes[..]),
                &ctx.context(),
            );
            assert!(ours.is_err() && library.is_err(), "{len}");
        }
        // A cut stream: an error, not a panic.
        let mut cut = 3i32.to_le_bytes().to_vec();
        cut.push(HAS_VALUE);
        assert!(array(&mut std::io::Cursor::new(&cut), &ctx.context(), data_value).is_err());
    }
}
