//! The sled backend, kept selectable behind [`super::SpillStore`] because
//! the design card asked for sled. It is not the default: it keeps its
//! disk space after a queue is drained (see `docs/spill.md`), and sled
//! 0.34.7 (2021) is the last stable release.
//!
//! Layout in sled's default tree: `b"d" ++ id (u64 BE)` holds the batch's
//! frame (the format of [`super::frame`], CRC included, so rot is detected
//! the same way as in the segment log); `b"m"` holds the next id (u64 BE),
//! written in the same atomic batch as every append, so ids never go back
//! even after the tree was drained.
//!
//! Durability: sled only syncs on `flush()` (or every `flush_every_ms`),
//! so an append waits for a `Db::flush` shared between concurrent
//! appenders ([`super::commit::GroupCommit`]); deletes flush before they
//! return. The size cap counts the stored (compressed) bytes of the
//! batches, not the files: sled's files do not shrink when data is
//! removed, so capping on them would evict everything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, MutexGuard};

use super::commit::GroupCommit;
use super::frame;
use super::{
    from_unix_ms, publish, report_dropped, unix_ms, Compression, DropCount, Dropped, NewBatch,
    SpillBackend, SpillConfig, SpillError, SpillId, SpillStats, SpillStore, SpilledBatch,
    StoreRole,
};

const DATA: &[u8] = b"d";
const NEXT_ID: &[u8] = b"m";

fn key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = DATA[0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Records and stored bytes of a frame (no CRC check).
fn weight(v: &[u8]) -> (u32, u64) {
    let records = v
        .get(frame::FRAME_HEADER..)
        .and_then(frame::meta)
        .map_or(0, |m| m.records);
    (records, v.len() as u64)
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    batches: u64,
    records: u64,
    stored_bytes: u64,
    written: u64,
    expired: DropCount,
    evicted: DropCount,
    corrupt: u64,
}

impl State {
    fn forget(&mut self, records: u32, bytes: u64) {
        self.batches = self.batches.saturating_sub(1);
        self.records = self.records.saturating_sub(u64::from(records));
        self.stored_bytes = self.stored_bytes.saturating_sub(bytes);
    }
}

/// The sled backend (see the module documentation).
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    max_bytes: u64,
    ttl_ms: u64,
    compression: Compression,
    /// Spill or dead letters: which metrics this store publishes.
    role: StoreRole,
    state: Mutex<State>,
    /// The newest id inserted (for the group-commit leader).
    last_inserted: AtomicU64,
    commit: GroupCommit,
}

/// How long an open waits for a lock that a store of this process just
/// closed: sled 0.34 releases the directory's lock when the last holder of
/// its lock file drops it, which can be a background job or an
/// epoch-deferred drop finishing after the handle is gone
/// (spacejam/sled#1234, #1289).
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_db(cfg: &SpillConfig) -> Result<sled::Db, SpillError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(&cfg.dir)
            .cache_capacity(64 << 20)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled reports the failed try-lock as an `Other` I/O error with
            // the OS error in its message.
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::Other
                    && e.to_string().contains("could not acquire lock") =>
            {
                if Instant::now() >= deadline {
                    return Err(SpillError::Locked(cfg.dir.clone()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl SledStore {
    /// Opens (and recovers) the sled database in `cfg.dir`.
    pub fn open(cfg: &SpillConfig) -> Result<Self, SpillError> {
        let db = open_db(cfg)?;
        let mut st = State {
            next_id: 1,
            ..State::default()
        };
        if let Some(v) = db.get(NEXT_ID)? {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_ref()) {
                st.next_id = u64::from_be_bytes(b).max(1);
            }
        }
        let mut corrupt = Vec::new();
        for kv in db.scan_prefix(DATA) {
            let (k, v) = kv?;
            let Some(id) = id_of(&k) else { continue };
            st.next_id = st.next_id.max(id + 1);
            if frame::decode(&v).is_err() {
                corrupt.push(k);
                continue;
            }
            let (records, bytes) = weight(&v);
            st.batches += 1;
            st.records += u64::from(records);
            st.stored_bytes += bytes;
        }
        for k in &corrupt {
            tracing::error!(dir = %cfg.dir.display(), id = id_of(k), "corrupt spilled batch dropped (sled)");
            db.remove(k)?;
        }
        if !corrupt.is_empty() {
            metrics::counter!(cfg.role.names().corrupt).increment(corrupt.len() as u64);
            st.corrupt += corrupt.len() as u64;
            db.flush()?;
        }
        let durable = st.next_id - 1;
        let store = SledStore {
            db,
            dir: cfg.dir.clone(),
            max_bytes: cfg.max_bytes,
            ttl_ms: u64::try_from(cfg.ttl.as_millis()).unwrap_or(u64::MAX),
            compression: cfg.compression,
            role: cfg.role,
            state: Mutex::new(st),
            last_inserted: AtomicU64::new(durable),
            commit: GroupCommit::new(durable),
        };
        let stats = store.stats();
        tracing::info!(
            dir = %store.dir.display(),
            batches = stats.batches,
            disk_bytes = stats.disk_bytes,
            "spill opened (sled)"
        );
        publish(store.role, &stats);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn wait_durable(&self, id: u64) -> Result<(), SpillError> {
        self.commit.wait_durable(
            id,
            || Ok((self.last_inserted.load(Ordering::Acquire), ())),
            |()| self.db.flush().map(drop).map_err(SpillError::from),
        )
    }

    /// Removes ids; returns the removed frames' weights.
    fn remove_ids(
        &self,
        st: &mut State,
        ids: impl IntoIterator<Item = u64>,
        mut on_removed: impl FnMut(u32, u64),
    ) -> Result<(), SpillError> {
        for id in ids {
            if let Some(v) = self.db.remove(key(id))? {
                let (records, bytes) = weight(&v);
                st.forget(records, bytes);
                on_removed(records, bytes);
            }
        }
        Ok(())
    }

    /// Evicts the oldest batches while the stored bytes exceed the cap.
    fn evict_over_cap(&self, st: &mut State) -> Result<DropCount, SpillError> {
        let mut dropped = DropCount::default();
        while st.stored_bytes > self.max_bytes {
            let Some((k, _)) = self.db.scan_prefix(DATA).next().transpose()? else {
                break;
            };
            let Some(id) = id_of(&k) else { break };
            self.remove_ids(st, [id], |r, b| dropped.add(r, b))?;
        }
        st.evicted.merge(dropped);
        Ok(dropped)
    }
}

impl SpillStore for SledStore {
    fn backend(&self) -> SpillBackend {
        SpillBackend::Sled
    }

    fn append_many(&self, batches: &[NewBatch<'_>]) -> Result<Vec<SpillId>, SpillError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        if self.commit.failed() {
            return Err(SpillError::Poisoned);
        }
        let packed = batches
            .iter()
            .map(|b| frame::pack(b.payload, self.compression))
            .collect::<Result<Vec<_>, _>>()?;
        let now_ms = unix_ms(SystemTime::now());
        let mut st = self.lock();
        let mut batch = sled::Batch::default();
        let mut ids = Vec::with_capacity(batches.len());
        let mut added = (0u64, 0u64);
        let mut id = st.next_id;
        for (b, p) in batches.iter().zip(&packed) {
            let mut buf = Vec::with_capacity(p.frame_len());
            let len = frame::encode_packed(&mut buf, id, now_ms, b.records, p);
            batch.insert(&key(id)[..], buf);
            ids.push(SpillId(id));
            added.0 += u64::from(b.records);
            added.1 += len as u64;
            id += 1;
        }
        batch.insert(NEXT_ID, &id.to_be_bytes()[..]);
        self.db.apply_batch(batch)?;
        st.next_id = id;
        st.batches += ids.len() as u64;
        st.records += added.0;
        st.stored_bytes += added.1;
        st.written += ids.len() as u64;
        self.last_inserted.store(id - 1, Ordering::Release);
        let evicted = self.evict_over_cap(&mut st)?;
        drop(st);
        report_dropped(
            self.role,
            SpillBackend::Sled,
            &Dropped {
                evicted,
                ..Dropped::default()
            },
        );
        self.wait_durable(id - 1)?;
        metrics::counter!(self.role.names().written).increment(ids.len() as u64);
        publish(self.role, &self.stats());
        Ok(ids)
    }

    fn oldest_after(
        &self,
        after: Option<SpillId>,
        max: usize,
    ) -> Result<Vec<SpilledBatch>, SpillError> {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for kv in self.db.range(key(start)..) {
            if out.len() >= max {
                break;
            }
            let (k, v) = kv?;
            if !k.starts_with(DATA) {
                break;
            }
            let Some(id) = id_of(&k) else { continue };
            match frame::decode(&v) {
                Ok((meta, payload)) if meta.id == id => out.push(SpilledBatch {
                    id: SpillId(id),
                    written_at: from_unix_ms(meta.written_ms),
                    records: meta.records,
                    payload,
                }),
                _ => corrupt.push(id),
            }
        }
        if !corrupt.is_empty() {
            tracing::error!(ids = ?corrupt, "corrupt spilled batches dropped (sled)");
            metrics::counter!(self.role.names().corrupt).increment(corrupt.len() as u64);
            let mut st = self.lock();
            st.corrupt += corrupt.len() as u64;
            self.remove_ids(&mut st, corrupt, |_, _| {})?;
            drop(st);
            self.db.flush()?;
        }
        Ok(out)
    }

    fn delete(&self, ids: &[SpillId]) -> Result<(), SpillError> {
        let mut st = self.lock();
        self.remove_ids(&mut st, ids.iter().map(|i| i.0), |_, _| {})?;
        drop(st);
        self.db.flush()?;
        publish(self.role, &self.stats());
        Ok(())
    }

    fn enforce_limits(&self, now: SystemTime) -> Result<Dropped, SpillError> {
        let cutoff = unix_ms(now).saturating_sub(self.ttl_ms);
        let mut dropped = Dropped::default();
        let mut st = self.lock();
        let mut expired = Vec::new();
        for kv in self.db.scan_prefix(DATA) {
            let (k, v) = kv?;
            let written = v
                .get(frame::FRAME_HEADER..)
                .and_then(frame::meta)
                .map_or(0, |m| m.written_ms);
            if written >= cutoff {
                break;
            }
            if let Some(id) = id_of(&k) {
                expired.push(id);
            }
        }
        self.remove_ids(&mut st, expired, |r, b| dropped.expired.add(r, b))?;
        st.expired.merge(dropped.expired);
        dropped.evicted = self.evict_over_cap(&mut st)?;
        drop(st);
        if dropped != Dropped::default() {
            self.db.flush()?;
        }
        report_dropped(self.role, SpillBackend::Sled, &dropped);
        publish(self.role, &self.stats());
        Ok(dropped)
    }

    fn stats(&self) -> SpillStats {
        let oldest = self
            .db
            .scan_prefix(DATA)
            .next()
            .and_then(Result::ok)
            .and_then(|(_, v)| {
                v.get(frame::FRAME_HEADER..)
                    .and_then(frame::meta)
                    .map(|m| from_unix_ms(m.written_ms))
            });
        let disk_bytes = self.db.size_on_disk().unwrap_or(0);
        let st = self.lock();
        SpillStats {
            disk_bytes,
            batches: st.batches,
            records: st.records,
            stored_bytes: st.stored_bytes,
            oldest,
            written: st.written,
            expired: st.expired,
            evicted: st.evicted,
            corrupt: st.corrupt,
            torn_bytes: 0,
        }
    }

    fn flush(&self) -> Result<(), SpillError> {
        self.db.flush()?;
        Ok(())
    }
}
