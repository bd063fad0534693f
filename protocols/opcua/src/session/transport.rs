//! A connection's request and response path, as the session's event loop
//! drives it. async-opcua's stream transport keeps, for every connection
//! and whether it is busy or idle, a zeroed send buffer of one chunk plus
//! 1 KiB (9.2 KiB at the standard's smallest chunk) and a queue sized for
//! the most chunks a message may have (~4 KiB): at 2,000 sessions ~26 MB
//! of a ~158 MiB daemon (heap profile, BENCHMARKS.md). This transport
//! encodes a request when the session sends it, hands it to the socket at
//! once (a Read of a few hundred nodes goes out in one `write`), and holds
//! the encoded bytes only until the socket has taken them. Between
//! responses it holds no receive buffer either: it waits until the socket
//! is readable, then reads into a buffer the size of the last chunk.
//! Requests in flight and responses (chunk reassembly, security, request
//! deadlines, decoding) are [`super::responses`], fed through the chunk
//! guard of [`super::wire`].
//!
//! Encoding and securing chunks is async-opcua's ([`Chunker`],
//! `SecureChannel::apply_security`); what this module decides is only
//! when buffers exist. It keeps the library's transport contract: `poll`
//! finishes at most one await, so a `select!` that drops it loses nothing.

use std::sync::Arc;

use futures::StreamExt;
use opcua::client::transport::{
    Connector, OutgoingMessage, SecureChannelState, Transport, TransportConfiguration,
    TransportPollResult,
};
use opcua::client::ConnectionSource;
use opcua::core::comms::buffer::SendBuffer;
use opcua::core::comms::chunker::Chunker;
use opcua::core::comms::sequence_number::SequenceNumberHandle;
use opcua::core::comms::tcp_codec::Message;
use opcua::core::comms::tcp_types::{AcknowledgeMessage, HelloMessage, MIN_CHUNK_SIZE};
use opcua::core::{Message as _, RequestMessage};
use opcua::types::{
    EndpointDescription, Error, MessageSecurityMode, SimpleBinaryEncodable, StatusCode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use super::responses::{signed, Requests};
use super::wire::{connect_tcp, Reader, INITIAL_RECEIVE_BUFFER};

/// Room a chunk may gain when it is signed or encrypted, over the chunk
/// size: async-opcua's send buffer keeps the same slack.
const SECURITY_SLACK: usize = 1024;

/// Connections through this module's transport, for the session builder.
pub(crate) struct WireSource;

impl ConnectionSource for WireSource {
    type Builder = WireConnector;

    fn get_connector(&self, endpoint: &EndpointDescription) -> Result<WireConnector, Error> {
        Ok(WireConnector {
            url: endpoint.endpoint_url.as_ref().to_string(),
            plaintext: endpoint.security_mode == MessageSecurityMode::None,
        })
    }
}

/// Connects to one endpoint URL.
pub(crate) struct WireConnector {
    url: String,
    /// Security mode None: message chunks in the clear.
    plaintext: bool,
}

impl Connector for WireConnector {
    type Transport = WireTransport;

    async fn connect(
        &self,
        channel: Arc<SecureChannelState>,
        outgoing_recv: tokio::sync::mpsc::Receiver<OutgoingMessage>,
        config: TransportConfiguration,
    ) -> Result<WireTransport, Error> {
        let (decoding, policy) = {
            let secure = channel.secure_channel().read();
            (secure.decoding_options(), secure.security_policy())
        };
        let (mut read, mut write) = connect_tcp(&self.url, decoding, self.plaintext).await?;
        let ack = hello(&mut read, &mut write, &self.url, &config).await?;
        let limits = Limits::agreed(&config, &ack);
        let state = Requests::new(channel, outgoing_recv, config.max_chunk_count);
        Ok(WireTransport {
            state,
            read,
            write,
            // Only its request ids are used: no chunk room, no chunk queue.
            ids: SendBuffer::new(0, 0, 0, policy.legacy_sequence_numbers()),
            sequence: SequenceNumberHandle::new(policy.legacy_sequence_numbers()),
            limits,
            out: Vec::new(),
            written: 0,
            receive_size: INITIAL_RECEIVE_BUFFER,
            closing: false,
            closed: Closed::Open,
            url: self.url.clone(),
        })
    }

    fn default_endpoint(&self) -> EndpointDescription {
        EndpointDescription::from(self.url.as_str())
    }
}

/// Sizes both sides agreed in Hello / Acknowledge (Part 6, 7.1.2.3-4):
/// the smaller of each, where 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    /// Largest chunk the server takes.
    chunk: usize,
    /// Largest message the server takes (0: no limit).
    message: usize,
    /// Most chunks in a message the server takes (0: no limit).
    chunks: usize,
}

impl Limits {
    fn agreed(ours: &TransportConfiguration, ack: &AcknowledgeMessage) -> Self {
        let smaller = |ours: usize, theirs: u32| match (ours, theirs as usize) {
            (0, theirs) => theirs,
            (ours, 0) => ours,
            (ours, theirs) => ours.min(theirs),
        };
        Self {
            chunk: ours.send_buffer_size.min(ack.receive_buffer_size as usize),
            message: smaller(ours.max_message_size, ack.max_message_size),
            chunks: smaller(ours.max_chunk_count, ack.max_chunk_count),
        }
    }
}

/// Sends Hello and waits for the server's Acknowledge.
async fn hello(
    read: &mut Reader,
    write: &mut OwnedWriteHalf,
    url: &str,
    config: &TransportConfiguration,
) -> Result<AcknowledgeMessage, Error> {
    let hello = HelloMessage::new(
        url,
        config.send_buffer_size,
        config.recv_buffer_size,
        config.max_message_size,
        config.max_chunk_count,
    );
    let lost = |e: std::io::Error| {
        Error::new(
            StatusCode::BadCommunicationError,
            format!("{url}: cannot send Hello: {e}"),
        )
    };
    write
        .write_all(&hello.encode_to_vec())
        .await
        .map_err(lost)?;
    let ack = match read.next().await {
        Some(Ok(Message::Acknowledge(ack))) => ack,
        Some(Ok(Message::Error(e))) => {
            return Err(Error::new(
                e.error,
                format!("{url}: the server refused Hello: {}", e.reason),
            ))
        }
        Some(Ok(_)) => {
            return Err(Error::new(
                StatusCode::BadConnectionClosed,
                format!("{url}: the server answered Hello with something else than Acknowledge"),
            ))
        }
        Some(Err(e)) => {
            return Err(Error::new(
                StatusCode::BadConnectionClosed,
                format!("{url}: no Acknowledge: {e}"),
            ))
        }
        None => {
            return Err(Error::new(
                StatusCode::BadConnectionClosed,
                format!("{url}: the server closed the connection after Hello"),
            ))
        }
    };
    if ack.protocol_version > hello.protocol_version {
        return Err(Error::new(
            StatusCode::BadProtocolVersionUnsupported,
            format!(
                "{url}: the server speaks protocol version {}, above ours ({})",
                ack.protocol_version, hello.protocol_version
            ),
        ));
    }
    let min = MIN_CHUNK_SIZE as u32;
    if ack.send_buffer_size < min || ack.receive_buffer_size < min {
        return Err(Error::new(
            StatusCode::BadTcpInternalError,
            format!(
                "{url}: the server's buffers (send {}, receive {}) are below the smallest chunk ({min})",
                ack.send_buffer_size, ack.receive_buffer_size
            ),
        ));
    }
    Ok(ack)
}

/// Where closing stands; closing may take more than one poll.
#[derive(Debug, Clone, Copy)]
enum Closed {
    Open,
    Closing(StatusCode),
    Done(StatusCode),
}

/// One connection's transport; see the module doc.
pub(crate) struct WireTransport {
    state: Requests,
    read: Reader,
    write: OwnedWriteHalf,
    /// Hands out request ids, as async-opcua's send buffer does for its
    /// own transport. Built with no chunk room, it holds 1 KiB.
    ids: SendBuffer,
    /// The next chunk's sequence number.
    sequence: SequenceNumberHandle,
    limits: Limits,
    /// The encoded chunks of the request being sent; empty and without an
    /// allocation between requests.
    out: Vec<u8>,
    /// Bytes of `out` the socket has taken.
    written: usize,
    /// The receive buffer to take when the socket has data: the last
    /// chunk's size, at least [`INITIAL_RECEIVE_BUFFER`].
    receive_size: usize,
    /// A CloseSecureChannel request was encoded: the transport ends once
    /// it is sent.
    closing: bool,
    closed: Closed,
    url: String,
}

impl WireTransport {
    /// Encodes and secures `message` into `out`. A message the chunker
    /// refuses (too large, too many chunks) fails that request alone.
    fn encode(&mut self, request_id: u32, message: RequestMessage) -> TransportPollResult {
        let handle = message.request_handle();
        let channel = self.state.channel.secure_channel().read();
        let mut storage = bytes::BytesMut::new();
        let mut chunks = Vec::new();
        let count = Chunker::encode_into(
            self.sequence.clone(),
            request_id,
            self.limits.message,
            self.limits.chunk,
            &channel,
            &message,
            &mut storage,
            &mut chunks,
        )
        .map_err(|e| e.with_context(Some(request_id), Some(handle)))
        .and_then(|count| {
            if self.limits.chunks > 0 && count > self.limits.chunks {
                Err(Error::new(
                    StatusCode::BadCommunicationError,
                    format!(
                        "the request needs {count} chunks; the server takes {}",
                        self.limits.chunks
                    ),
                )
                .with_context(Some(request_id), Some(handle)))
            } else {
                Ok(count)
            }
        });
        let count = match count {
            Ok(count) => count,
            Err(e) => {
                drop(channel);
                let status = e.status();
                tracing::debug!(url = %self.url, error = %e, "request not sent");
                self.state.send_failed(request_id, e);
                return TransportPollResult::RecoverableError(status);
            }
        };
        self.sequence.increment(count as u32);
        // A signed or encrypted chunk may grow (padding, signature) up to
        // the agreed chunk size and the library's slack; a plaintext one is
        // copied as it is, so it gets only its own size (not a zeroed
        // 64 KiB per request).
        let secured = signed(&channel);
        let room = |len: usize| {
            if secured {
                len.max(self.limits.chunk) + SECURITY_SLACK
            } else {
                len
            }
        };
        let mut out = Vec::with_capacity(room(storage.len()));
        for chunk in &chunks {
            let start = out.len();
            out.resize(start + room(chunk.data.len()), 0);
            match channel.apply_security(chunk, &mut out[start..]) {
                Ok(size) => out.truncate(start + size),
                Err(status) => {
                    tracing::error!(url = %self.url, %status, "cannot secure a chunk; closing the connection");
                    return TransportPollResult::Closed(status);
                }
            }
        }
        self.out = out;
        self.written = 0;
        TransportPollResult::OutgoingMessage
    }

    /// Writes what the socket takes now, without waiting.
    fn write_now(&mut self) -> Result<(), StatusCode> {
        while self.written < self.out.len() {
            match self.write.try_write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    tracing::debug!(url = %self.url, error = %e, "writing a request failed");
                    return Err(StatusCode::BadCommunicationError);
                }
            }
        }
        self.sent();
        Ok(())
    }

    /// The request is on the wire: its bytes are no longer held.
    fn sent(&mut self) {
        self.out = Vec::new();
        self.written = 0;
    }

    fn incoming(
        &mut self,
        incoming: Option<Result<Message, std::io::Error>>,
    ) -> TransportPollResult {
        match incoming {
            None => {
                tracing::debug!(url = %self.url, "the server closed the connection");
                TransportPollResult::Closed(StatusCode::BadCommunicationError)
            }
            Some(Err(e)) => {
                tracing::debug!(url = %self.url, error = %e, "reading from the server failed");
                TransportPollResult::Closed(StatusCode::BadConnectionClosed)
            }
            Some(Ok(Message::Chunk(chunk))) => match self.state.chunk(chunk) {
                Ok(()) => TransportPollResult::IncomingMessage,
                Err(e) => {
                    tracing::debug!(url = %self.url, error = %e, "closing the connection");
                    TransportPollResult::Closed(e.status())
                }
            },
            // The server's reason is the one place it says why it ends the
            // connection (async-opcua logged it as an error).
            Some(Ok(Message::Error(e))) => {
                tracing::warn!(url = %self.url, status = %e.error, reason = %e.reason, "the server sent Error and ends the connection");
                TransportPollResult::Closed(e.error)
            }
            Some(Ok(other)) => {
                tracing::debug!(url = %self.url, message = ?other, "unexpected message instead of a chunk; closing the connection");
                TransportPollResult::Closed(StatusCode::BadUnexpectedError)
            }
        }
    }

    /// One step: finish sending the current request, or take the next one;
    /// a response may arrive meanwhile. Each branch awaits one cancel-safe
    /// future.
    async fn step(&mut self) -> TransportPollResult {
        if self.written < self.out.len() {
            tokio::select! {
                r = self.write.write(&self.out[self.written..]) => match r {
                    Ok(n) => {
                        self.written += n;
                        if self.written == self.out.len() {
                            self.sent();
                        }
                        TransportPollResult::OutgoingMessageSent
                    }
                    Err(e) => {
                        tracing::debug!(url = %self.url, error = %e, "writing a request failed");
                        TransportPollResult::Closed(StatusCode::BadCommunicationError)
                    }
                },
                incoming = receive(&mut self.read, &mut self.receive_size) => self.incoming(incoming),
            }
        } else {
            if self.closing {
                return TransportPollResult::Closed(StatusCode::Good);
            }
            tokio::select! {
                outgoing = self.state.next_request(&mut self.ids) => {
                    let Some((message, request_id)) = outgoing else {
                        return TransportPollResult::Closed(StatusCode::Good);
                    };
                    self.closing = matches!(message, RequestMessage::CloseSecureChannel(_));
                    let r = self.encode(request_id, message);
                    if matches!(r, TransportPollResult::OutgoingMessage) {
                        if let Err(status) = self.write_now() {
                            return TransportPollResult::Closed(status);
                        }
                    }
                    r
                }
                incoming = receive(&mut self.read, &mut self.receive_size) => self.incoming(incoming),
            }
        }
    }
}

/// The next message from the server. Between messages a connection holds
/// no receive buffer (most of a polled session's life is between
/// messages): it waits until the socket has data, then reads into a buffer
/// the size of the last chunk it received. Cancel-safe: a message that has
/// begun to arrive stays in the buffer.
async fn receive(
    read: &mut Reader,
    receive_size: &mut usize,
) -> Option<Result<Message, std::io::Error>> {
    if read.read_buffer().is_empty() {
        if read.read_buffer().capacity() > 0 {
            *read.read_buffer_mut() = bytes::BytesMut::new();
        }
        if let Err(e) = read.get_ref().get_ref().readable().await {
            return Some(Err(e));
        }
        read.read_buffer_mut().reserve(*receive_size);
    }
    let message = read.next().await;
    if let Some(Ok(Message::Chunk(chunk))) = &message {
        *receive_size = chunk.data.len().max(INITIAL_RECEIVE_BUFFER);
    }
    message
}

impl Transport for WireTransport {
    async fn poll(&mut self) -> TransportPollResult {
        // Closing fails the pending requests; it may be cut short by a
        // dropped poll and is safe to run again, so it is done until it
        // completes once.
        match self.closed {
            Closed::Open => {}
            Closed::Closing(status) => {
                let r = self.state.close(status).await;
                self.closed = Closed::Done(status);
                return TransportPollResult::Closed(r);
            }
            Closed::Done(status) => return TransportPollResult::Closed(status),
        }
        let r = self.step().await;
        if let TransportPollResult::Closed(status) = r {
            self.closed = Closed::Closing(status);
            let r = self.state.close(status).await;
            self.closed = Closed::Done(r);
        }
        r
    }

    fn connected_url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(receive: u32, message: u32, chunks: u32) -> AcknowledgeMessage {
        AcknowledgeMessage::new(0, receive, 65_536, message, chunks)
    }

    fn ours(message: usize, chunks: usize) -> TransportConfiguration {
        TransportConfiguration {
            send_buffer_size: 65_535,
            recv_buffer_size: 65_535,
            max_message_size: message,
            max_chunk_count: chunks,
        }
    }

    #[test]
    fn the_smaller_limit_of_both_sides_holds_and_zero_means_none() {
        assert_eq!(
            Limits::agreed(&ours(1 << 20, 64), &ack(8192, 0, 0)),
            Limits {
                chunk: 8192,
                message: 1 << 20,
                chunks: 64
            }
        );
        assert_eq!(
            Limits::agreed(&ours(0, 0), &ack(100_000, 4096, 2)),
            Limits {
                chunk: 65_535,
                message: 4096,
                chunks: 2
            }
        );
        assert_eq!(
            Limits::agreed(&ours(1 << 20, 64), &ack(16_384, 1 << 24, 1000)),
            Limits {
                chunk: 16_384,
                message: 1 << 20,
                chunks: 64
            }
        );
    }
}
