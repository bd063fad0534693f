//! The requests in flight on one connection, and their responses decoded.
//! This is async-opcua's `TransportState`, taken over by the transport for
//! one reason: the library decodes each `DataValue` timestamp by calendar
//! arithmetic through chrono (the 1601 epoch built from year, month and
//! day, a duration added, the client offset subtracted, the nanoseconds
//! rounded twice). A 50-value Read with both timestamps has 100 of them,
//! ~11 % of the collector's CPU at the reference workload (profile,
//! BENCHMARKS.md). Read responses are decoded here ([`read_response`]),
//! each timestamp straight from its ticks; every other response, and
//! every Read response this decoder does not recognise, is the library's
//! `Chunker::decode`. Security, sequence numbers, the chunk limit, request
//! deadlines and the secure channel's token renewal follow the library's
//! code step by step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::Either;
use opcua::client::transport::{OutgoingMessage, SecureChannelState};
use opcua::core::comms::buffer::SendBuffer;
use opcua::core::comms::chunker::Chunker;
use opcua::core::comms::message_chunk::{MessageChunk, MessageFinalError, MessageIsFinalType};
use opcua::core::comms::secure_channel::SecureChannel;
use opcua::core::comms::sequence_number::SequenceNumberHandle;
use opcua::core::{RequestMessage, ResponseMessage};
use opcua::crypto::SecurityPolicy;
use opcua::types::{Error, MessageSecurityMode, OpenSecureChannelResponse, StatusCode, UAString};
use tokio::sync::{mpsc, oneshot};

mod read_response;

/// Where a request's answer goes.
type Callback = oneshot::Sender<Result<ResponseMessage, Error>>;

/// A request sent and not yet answered.
struct Pending {
    callback: Callback,
    /// Its response's chunks so far, with their sequence numbers.
    chunks: Vec<(u32, MessageChunk)>,
    deadline: Instant,
}

/// One connection's requests in flight; see the module doc.
pub(super) struct Requests {
    outgoing: mpsc::Receiver<OutgoingMessage>,
    pending: HashMap<u32, Pending>,
    pub(super) channel: Arc<SecureChannelState>,
    /// Most chunks a response may have (0: no limit).
    max_chunk_count: usize,
    sequence_numbers: SequenceNumberHandle,
}

impl Requests {
    pub(super) fn new(
        channel: Arc<SecureChannelState>,
        outgoing: mpsc::Receiver<OutgoingMessage>,
        max_chunk_count: usize,
    ) -> Self {
        let legacy = channel
            .secure_channel()
            .read()
            .security_policy()
            .legacy_sequence_numbers();
        Self {
            outgoing,
            pending: HashMap::new(),
            channel,
            max_chunk_count,
            sequence_numbers: SequenceNumberHandle::new(legacy),
        }
    }

    /// The next request to send, with the request id `ids` gives it; fails
    /// the requests whose deadline passed meanwhile. `None`: the session
    /// is gone. Cancel-safe.
    pub(super) async fn next_request(
        &mut self,
        ids: &mut SendBuffer,
    ) -> Option<(RequestMessage, u32)> {
        loop {
            let timeout = match self.expire() {
                Some(t) => Either::Left(tokio::time::sleep_until(t.into())),
                None => Either::Right(futures::future::pending::<()>()),
            };
            tokio::select! {
                _ = timeout => continue,
                outgoing = self.outgoing.recv() => {
                    let outgoing = outgoing?;
                    let request_id = ids.next_request_id();
                    if let Some(callback) = outgoing.callback {
                        self.pending.insert(request_id, Pending {
                            callback,
                            chunks: Vec::new(),
                            deadline: outgoing.deadline,
                        });
                    }
                    return Some((outgoing.request, request_id));
                }
            }
        }
    }

    /// Fails the requests past their deadline; the next deadline.
    fn expire(&mut self) -> Option<Instant> {
        let now = Instant::now();
        for (id, p) in self.pending.extract_if(|_, p| p.deadline <= now) {
            tracing::debug!(request_id = id, "request timed out");
            let timed_out = Error::new(StatusCode::BadTimeout, "Message timed out");
            // A closed receiver is a caller that stopped waiting.
            let _ = p.callback.send(Err(timed_out.with_request_id(id)));
        }
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Sending `request_id` failed: its caller learns it now.
    pub(super) fn send_failed(&mut self, request_id: u32, err: Error) {
        if let Some(p) = self.pending.remove(&request_id) {
            let _ = p.callback.send(Err(err));
        }
    }

    /// One chunk from the server. An error ends the connection.
    pub(super) fn chunk(&mut self, chunk: MessageChunk) -> Result<(), Error> {
        let (chunk, info, options) = {
            let channel = self.channel.secure_channel().read();
            let chunk = channel.verify_and_remove_security(chunk.data)?;
            let info = chunk.chunk_info(&channel)?;
            (chunk, info, channel.decoding_options())
        };
        let request_id = info.sequence_header.request_id;
        let sequence = info.sequence_header.sequence_number;
        self.sequence_numbers.validate_and_increment(sequence)?;
        // A chunk of no request in flight (timed out, or never ours).
        let Some(pending) = self.pending.get_mut(&request_id) else {
            return Ok(());
        };
        match info.message_header.is_final {
            MessageIsFinalType::Intermediate => {
                pending.chunks.push((sequence, chunk));
                if self.max_chunk_count > 0 && pending.chunks.len() > self.max_chunk_count {
                    if let Some(p) = self.pending.remove(&request_id) {
                        tracing::error!(
                            request_id,
                            max = self.max_chunk_count,
                            "response has more chunks than agreed"
                        );
                        let _ = p.callback.send(Err(Error::new(
                            StatusCode::BadEncodingLimitsExceeded,
                            "Message exceeded max chunk count",
                        )
                        .with_request_id(request_id)));
                    }
                }
                Ok(())
            }
            MessageIsFinalType::FinalError => {
                let err = chunk
                    .final_error_body(&info, &options)
                    .unwrap_or(MessageFinalError {
                        status: StatusCode::BadCommunicationError,
                        reason: UAString::null(),
                    });
                if let Some(p) = self.pending.remove(&request_id) {
                    tracing::warn!(request_id, status = %err.status, reason = %err.reason, "response aborted by the server");
                    let _ = p.callback.send(Err(Error::new(
                        err.status,
                        format!("Message marked final error: {}", err.reason),
                    )
                    .with_request_id(request_id)));
                }
                Ok(())
            }
            MessageIsFinalType::Final => {
                let Some(mut p) = self.pending.remove(&request_id) else {
                    return Ok(());
                };
                p.chunks.push((sequence, chunk));
                let chunks = in_order(p.chunks);
                let message = self.decode(&chunks).inspect_err(|e| {
                    tracing::error!(request_id, error = %e, "cannot decode a response");
                })?;
                // New keys take effect before the next chunk is read, which
                // may already use them.
                if let ResponseMessage::OpenSecureChannel(opened) = &message {
                    self.channel_opened(opened)?;
                }
                let _ = p.callback.send(Ok(message));
                Ok(())
            }
        }
    }

    /// A whole response's chunks into its message.
    fn decode(&self, chunks: &[MessageChunk]) -> Result<ResponseMessage, Error> {
        let channel = self.channel.secure_channel().read();
        Chunker::validate_chunks(&channel, chunks)?;
        match read_response::decode(chunks, &channel)? {
            Some(read) => Ok(read),
            None => Chunker::decode(chunks, &channel, None),
        }
    }

    /// An OpenSecureChannel response (the first, or a token renewal): the
    /// new token and, on a signed channel, the keys derived from the
    /// server's nonce. The library's `end_issue_or_renew_secure_channel`,
    /// less its clock-skew offset: this crate never turns
    /// `ignore_clock_skew` on (`security::clients`).
    fn channel_opened(&self, response: &OpenSecureChannelResponse) -> Result<(), Error> {
        let result = response.response_header.service_result;
        if !result.is_good() {
            return Err(Error::new(
                result,
                "OpenSecureChannel received service fault from server",
            ));
        }
        let token = response.security_token.clone();
        let mut channel = self.channel.secure_channel().write();
        let existing = channel.secure_channel_id();
        if existing != 0 && existing != token.channel_id {
            return Err(Error::new(
                StatusCode::BadSecureChannelIdInvalid,
                format!(
                    "OpenSecureChannel response changed channel_id from {existing} to {}",
                    token.channel_id
                ),
            ));
        }
        channel.set_security_token(token);
        if signed(&channel) {
            channel.validate_secure_channel_nonce_length(&response.server_nonce)?;
            channel.set_remote_nonce_from_byte_string(&response.server_nonce)?;
            channel.derive_keys();
        }
        Ok(())
    }

    /// Fails every request in flight or queued: with `status`, or with
    /// BadConnectionClosed when `status` is good (they did not succeed).
    pub(super) async fn close(&mut self, status: StatusCode) -> StatusCode {
        let failed = if status.is_good() {
            StatusCode::BadConnectionClosed
        } else {
            status
        };
        for (_, p) in self.pending.drain() {
            let _ = p
                .callback
                .send(Err(Error::new(failed, "Transport is closing")));
        }
        self.outgoing.close();
        while let Some(queued) = self.outgoing.recv().await {
            if let Some(callback) = queued.callback {
                let _ = callback.send(Err(Error::new(failed, "Transport is closing")));
            }
        }
        status
    }
}

/// Whether the channel's chunks are signed (and maybe encrypted).
pub(super) fn signed(channel: &SecureChannel) -> bool {
    channel.security_policy() != SecurityPolicy::None
        && matches!(
            channel.security_mode(),
            MessageSecurityMode::Sign | MessageSecurityMode::SignAndEncrypt
        )
}

/// A response's chunks in sequence-number order, from the first one's
/// number on; a chunk out of that run (a duplicate) is left out, as the
/// library does.
fn in_order(mut chunks: Vec<(u32, MessageChunk)>) -> Vec<MessageChunk> {
    if chunks.len() > 1 {
        chunks.sort_by_key(|(sequence, _)| *sequence);
    }
    let mut expect = chunks.first().map_or(0, |(sequence, _)| *sequence);
    let mut out = Vec::with_capacity(chunks.len());
    for (sequence, chunk) in chunks {
        if sequence != expect {
            tracing::warn!(
                expected = expect,
                got = sequence,
                "response chunk out of sequence"
            );
            continue;
        }
        expect = expect.wrapping_add(1);
        out.push(chunk);
    }
    out
}
