//! The dead letters: records the sink refused for good (too large for the
//! topic, not authorised, invalid), kept on disk until an operator fixes
//! the cause and requeues them. Retrying them would block the replay
//! behind one poisoned batch; dropping them would be a silent loss.
//!
//! The store is the spill's engine ([`SpillStore`], same frames and
//! checksums) in its own directory with its own size cap and TTL
//! ([`StoreRole::DeadLetters`]: its own metrics). Each stored batch holds
//! messages refused for one cause:
//!
//! ```text
//! batch := version u8 (1) | cause_len u8 | cause (label) | detail_len u32 | detail | entries
//! ```
//!
//! where `entries` is the spill's message encoding ([`crate::spill`]).
//! [`requeue`] and [`inventory`] are the offline tools behind
//! `opc-collector deadletter requeue` and `spill|deadletter stats`.
//!
//! [`StoreRole::DeadLetters`]: crate::spill::StoreRole::DeadLetters

use std::collections::BTreeMap;
use std::time::SystemTime;

use std::sync::Arc;

use crate::internal_events::delivery::RecordsDeadLettered;
use crate::metrics::Stats;
use crate::sink::{Message, RejectCause};
use crate::spill::{payload, NewBatch, SpillError, SpillId, SpillStore, SpilledBatch, StoreRole};

const VERSION: u8 = 1;

/// Batches read per visit to a store by the offline tools.
const PAGE: usize = 64;

/// A message refused for good, on its way to the dead letters.
pub(crate) struct Refused {
    pub(crate) message: Message,
    pub(crate) cause: RejectCause,
    pub(crate) detail: String,
}

/// Stores refused messages durably, one batch per cause (keeping the first
/// detail of each), and records the event (counter, metric, error log).
/// On `Err` nothing was stored: the caller keeps or counts the messages.
pub(crate) async fn store(
    store: &Arc<dyn SpillStore>,
    stats: &Stats,
    refused: Vec<Refused>,
) -> Result<(), String> {
    if refused.is_empty() {
        return Ok(());
    }
    let mut by_cause: BTreeMap<RejectCause, (String, Vec<Message>)> = BTreeMap::new();
    for r in refused {
        by_cause
            .entry(r.cause)
            .or_insert_with(|| (r.detail, Vec::new()))
            .1
            .push(r.message);
    }
    let groups: Vec<(RejectCause, String, Vec<Message>)> = by_cause
        .into_iter()
        .map(|(cause, (detail, messages))| (cause, detail, messages))
        .collect();
    let (s, groups) = tokio::task::spawn_blocking({
        let s = store.clone();
        move || {
            let encoded: Vec<(Vec<u8>, u32)> = groups
                .iter()
                .map(|(cause, detail, ms)| (encode(*cause, detail, ms), ms.len() as u32))
                .collect();
            let batches: Vec<NewBatch<'_>> = encoded
                .iter()
                .map(|(payload, records)| NewBatch {
                    payload,
                    records: *records,
                })
                .collect();
            (s.append_many(&batches).map(|_| ()), groups)
        }
    })
    .await
    .map_err(|e| format!("dead-letter task failed: {e}"))?;
    s.map_err(|e| format!("dead-letter append failed: {e}"))?;
    for (cause, detail, messages) in &groups {
        RecordsDeadLettered {
            stats,
            count: messages.len(),
            cause: *cause,
            device: messages.first().map(|m| m.key.as_str()),
            devices: messages
                .iter()
                .map(|m| m.key.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            detail,
        }
        .emit();
    }
    Ok(())
}

/// Encodes messages refused for `cause` as one dead-letter batch.
pub fn encode(cause: RejectCause, detail: &str, messages: &[Message]) -> Vec<u8> {
    let label = cause.label().as_bytes();
    let mut out = Vec::with_capacity(
        6 + label.len()
            + detail.len()
            + messages
                .iter()
                .map(|m| m.key.len() + m.payload.len() + 16)
                .sum::<usize>(),
    );
    out.push(VERSION);
    out.push(label.len() as u8);
    out.extend_from_slice(label);
    out.extend_from_slice(&(detail.len() as u32).to_le_bytes());
    out.extend_from_slice(detail.as_bytes());
    payload::encode(messages, &mut out);
    out
}

/// One decoded dead-letter batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterBatch {
    /// Why the sink refused these messages.
    pub cause: RejectCause,
    /// What it said.
    pub detail: String,
    /// The messages, as they would be sent.
    pub messages: Vec<Message>,
}

/// Decodes a batch written by [`encode`].
pub fn decode(data: &[u8]) -> Result<DeadLetterBatch, String> {
    let (&version, rest) = data.split_first().ok_or("empty dead-letter batch")?;
    if version != VERSION {
        return Err(format!("unknown dead-letter batch version {version}"));
    }
    let (&label_len, rest) = rest.split_first().ok_or("truncated cause")?;
    let (label, rest) = split(rest, usize::from(label_len), "cause")?;
    let label = std::str::from_utf8(label).map_err(|e| format!("cause is not UTF-8: {e}"))?;
    let cause = RejectCause::from_label(label).ok_or_else(|| format!("unknown cause `{label}`"))?;
    let (len, rest) = split(rest, 4, "detail length")?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let (detail, rest) = split(rest, len, "detail")?;
    let detail = String::from_utf8_lossy(detail).into_owned();
    let messages = payload::decode(rest)?;
    Ok(DeadLetterBatch {
        cause,
        detail,
        messages,
    })
}

fn split<'a>(data: &'a [u8], n: usize, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    if data.len() < n {
        return Err(format!("truncated {what}"));
    }
    Ok(data.split_at(n))
}

/// What a spill or dead-letter store holds (`opc-collector spill stats`,
/// `deadletter stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Batches stored.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// When the oldest batch was written.
    pub oldest: Option<SystemTime>,
    /// When the newest batch was written.
    pub newest: Option<SystemTime>,
    /// Records per device id (the message key).
    pub devices: BTreeMap<String, u64>,
    /// Records per refusal cause (dead letters only), with the first
    /// detail seen for it.
    pub causes: BTreeMap<RejectCause, (u64, String)>,
    /// Batches whose payload does not decode (counted, not fatal).
    pub undecodable: u64,
}

/// The messages of one stored batch, with its refusal when it is a dead
/// letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// The messages, as they would be sent.
    pub messages: Vec<Message>,
    /// Why the sink refused them (dead letters only) and what it said.
    pub refusal: Option<(RejectCause, String)>,
}

/// Decodes one batch of a store of `kind`.
pub fn batch_messages(kind: StoreRole, batch: &SpilledBatch) -> Result<StoredBatch, String> {
    match kind {
        StoreRole::Spill => payload::decode(&batch.payload).map(|messages| StoredBatch {
            messages,
            refusal: None,
        }),
        StoreRole::DeadLetters => decode(&batch.payload).map(|b| StoredBatch {
            messages: b.messages,
            refusal: Some((b.cause, b.detail)),
        }),
    }
}

/// Calls `each` with every batch of `store`, oldest first.
pub fn for_each_batch(
    store: &dyn SpillStore,
    mut each: impl FnMut(&SpilledBatch),
) -> Result<(), SpillError> {
    let mut after: Option<SpillId> = None;
    loop {
        let page = store.oldest_after(after, PAGE)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.id);
        for b in &page {
            each(b);
        }
    }
}

/// Counts what `store` holds, by device and (for dead letters) cause.
pub fn inventory(store: &dyn SpillStore, kind: StoreRole) -> Result<Inventory, SpillError> {
    let mut inv = Inventory::default();
    for_each_batch(store, |b| {
        inv.batches += 1;
        inv.records += u64::from(b.records);
        inv.oldest = Some(inv.oldest.map_or(b.written_at, |t| t.min(b.written_at)));
        inv.newest = Some(inv.newest.map_or(b.written_at, |t| t.max(b.written_at)));
        match batch_messages(kind, b) {
            Ok(StoredBatch { messages, refusal }) => {
                for m in &messages {
                    *inv.devices.entry(m.key.clone()).or_default() += 1;
                }
                if let Some((cause, detail)) = refusal {
                    let e = inv.causes.entry(cause).or_insert((0, detail));
                    e.0 += messages.len() as u64;
                }
            }
            Err(_) => inv.undecodable += 1,
        }
    })?;
    Ok(inv)
}

/// What [`requeue`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Dead-letter batches moved.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Batches left in the dead letters because they do not decode.
    pub undecodable: u64,
}

/// Moves every dead letter back into the spill, where the next collector
/// run replays it (the operator has fixed the cause: raised the topic's
/// size limit, granted the ACL). Each batch is appended to the spill
/// (durably) before it is deleted from the dead letters, so a crash in
/// between repeats a batch, never loses one. A part still larger than
/// the sink accepts comes back to the dead letters on replay.
pub fn requeue(
    dead_letters: &dyn SpillStore,
    spill: &dyn SpillStore,
) -> Result<Requeued, SpillError> {
    let mut done = Requeued::default();
    let mut after: Option<SpillId> = None;
    loop {
        let page = dead_letters.oldest_after(after, PAGE)?;
        let Some(last) = page.last() else {
            return Ok(done);
        };
        after = Some(last.id);
        for b in page {
            let messages = match decode(&b.payload) {
                Ok(d) => d.messages,
                Err(e) => {
                    tracing::error!(id = %b.id, error = %e, "dead-letter batch does not decode; left in place");
                    done.undecodable += 1;
                    continue;
                }
            };
            let mut buf = Vec::new();
            payload::encode(&messages, &mut buf);
            spill.append(&buf, messages.len() as u32)?;
            dead_letters.delete(&[b.id])?;
            done.batches += 1;
            done.records += messages.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::{self, SpillConfig, StoreRole};

    fn message(key: &str, n: u8) -> Message {
        Message {
            key: key.into(),
            payload: vec![b'{', n, b'}'],
            read_time_us: i64::from(n),
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let ms = vec![message("a", 1), message("b", 2)];
        let data = encode(RejectCause::NotAuthorized, "TopicAuthorizationFailed", &ms);
        let back = decode(&data).unwrap();
        assert_eq!(back.cause, RejectCause::NotAuthorized);
        assert_eq!(back.detail, "TopicAuthorizationFailed");
        assert_eq!(back.messages, ms);
        assert!(decode(&data[..data.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
        let mut wrong = data.clone();
        wrong[0] = 9;
        assert!(decode(&wrong).is_err());
    }

    #[test]
    fn requeue_moves_every_dead_letter_into_the_spill() {
        let dir = tempfile::tempdir().unwrap();
        let dead = spill::open(&SpillConfig {
            role: StoreRole::DeadLetters,
            ..SpillConfig::new(dir.path().join("dead-letters"))
        })
        .unwrap();
        let spill = spill::open(&SpillConfig::new(dir.path().join("spill"))).unwrap();
        for i in 0..3u8 {
            let data = encode(
                RejectCause::TooLarge,
                "too big",
                &[message("dev-1", i), message("dev-2", i)],
            );
            dead.append(&data, 2).unwrap();
        }
        let inv = inventory(&*dead, StoreRole::DeadLetters).unwrap();
        assert_eq!((inv.batches, inv.records), (3, 6));
        assert_eq!(inv.devices.get("dev-1"), Some(&3));
        assert_eq!(inv.causes.get(&RejectCause::TooLarge).map(|c| c.0), Some(6));

        let moved = requeue(&*dead, &*spill).unwrap();
        assert_eq!((moved.batches, moved.records), (3, 6));
        assert_eq!(dead.stats().batches, 0);
        let inv = inventory(&*spill, StoreRole::Spill).unwrap();
        assert_eq!((inv.batches, inv.records), (3, 6));
        let first = spill.oldest(1).unwrap();
        let messages = payload::decode(&first[0].payload).unwrap();
        assert_eq!(messages, vec![message("dev-1", 0), message("dev-2", 0)]);
    }
}
