//! The PostgreSQL device registry (`source: postgres`, docs/registry.md).
//! A fleet's device list lives in one table; each replica asks the
//! database for its own shard's rows only (a GIN index over the jump
//! hash's spans of each id, `schema.sql`), then polls for rows written
//! since its last snapshot. Rows are checked as device file entries; a
//! bad row is skipped and reported, its neighbours load. When the
//! database is unreachable the last good set keeps running, and the
//! registry is asked again with backoff.

pub(crate) mod cli;
mod client;
mod probe;
mod rows;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use collector_core::config::{Device, LoadLimits, RegistrySection};
use collector_core::metrics::names;
use collector_core::shard::Shard;
use collector_core::CollectorConfig;
use tokio_postgres::{Client, Statement};

pub(crate) use client::{Connector, RegistryError};
use rows::{cell_range, Row};

/// What `/status` shows of the registry.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct RegistryView {
    /// Whether the last query was answered.
    pub up: bool,
    /// Rows of this shard (valid or not, enabled or not).
    pub rows: usize,
    /// Rows of this shard that are not valid device entries.
    pub rejected: usize,
    /// Some of them (at most 20), with the reason.
    pub rejected_rows: Vec<RejectedRow>,
    /// When the registry last answered (RFC 3339).
    pub last_sync: Option<String>,
    /// Why the last query failed, until one succeeds.
    pub last_error: Option<String>,
}

/// A row skipped because it is not a valid device entry.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RejectedRow {
    pub id: String,
    pub reason: String,
}

/// A row as this replica holds it.
#[derive(Debug)]
struct Held {
    version: i64,
    enabled: bool,
    device: Result<Device, String>,
}

impl Held {
    /// The device it makes this replica read, if any.
    fn effective(&self) -> Option<&Device> {
        self.device.as_ref().ok().filter(|_| self.enabled)
    }
}

/// How often a replica reads its whole shard even when polls find no
/// change: a safety net for writes that bypass the triggers (a restore,
/// replication with triggers off).
const FULL_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// One read's result.
struct Read {
    /// The snapshot's xmin: the next poll asks for rows written by
    /// transactions at or above it.
    xmin: String,
    /// The devices table's oid: a new one is a new table.
    instance: i64,
    rows: Vec<Row>,
    gone: Vec<String>,
    full: bool,
}

/// A replica's reads, prepared once a connection.
struct Statements {
    full: Statement,
    delta: Statement,
}

/// The whole shard: the rows with one of the shard's cells `$1..=$2` (the
/// GIN index), and the snapshot's xmin (on a row of its own when the shard
/// is empty). The cells are listed by the database: given as a constant
/// array, the planner would price a few thousand of them as matching most
/// rows and scan the table (seconds at 1 M rows; measured).
const FULL_READ: &str = r#"
WITH mine AS MATERIALIZED (
    SELECT id, endpoint, "interval", settings, enabled, version
    FROM opc_collector.devices
    WHERE shard_cells && ARRAY(SELECT generate_series($1::int4, $2::int4))
)
SELECT d.id, d.endpoint, d."interval", d.settings::text, d.enabled, d.version, s.xmin, false, s.instance
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
             (SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'opc_collector' AND c.relname = 'devices') AS instance) s
LEFT JOIN mine d ON true"#;

/// The shard's rows written by transactions the last read did not see
/// (their xid is at least its xmin: the written_by index), and its rows
/// deleted since (tombstones of ids not listed again). A written row is
/// the shard's when one of its cells lies in `$2..=$3` (a few cells a
/// row, so a mass update costs each replica a cheap pass, not an array
/// comparison per row).
const DELTA_READ: &str = r#"
SELECT d.id, d.endpoint, d."interval", d.settings::text, d.enabled, d.version, s.xmin, false, s.instance
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin,
             (SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'opc_collector' AND c.relname = 'devices') AS instance) s
LEFT JOIN opc_collector.devices d
  ON d.written_by >= $1::text::xid8
 AND EXISTS (SELECT 1 FROM unnest(d.shard_cells) c WHERE c BETWEEN $2 AND $3)
UNION ALL
SELECT t.id, NULL, NULL, NULL, NULL, NULL, NULL, true, NULL
FROM opc_collector.tombstones t
WHERE t.written_by >= $1::text::xid8
  AND EXISTS (SELECT 1 FROM unnest(t.shard_cells) c WHERE c BETWEEN $2 AND $3)
  AND NOT EXISTS (SELECT 1 FROM opc_collector.devices d WHERE d.id = t.id)"#;

/// This replica's view of the registry: its shard's rows as last read.
pub(crate) struct Registry {
    connector: Connector,
    client: Option<(Client, Statements)>,
    limits: LoadLimits,
    poll_interval: Duration,
    /// The shard the rows are of, once loaded.
    loaded: Option<Shard>,
    /// The snapshot xmin of the last query: every row written by a
    /// transaction not visible then has an xid at or above it.
    since: Option<String>,
    /// The devices table's oid at the last read.
    instance: Option<i64>,
    /// When the whole shard was last read.
    last_full: Option<std::time::Instant>,
    rows: HashMap<Arc<str>, Held>,
    /// Failed queries in a row (backoff).
    failures: u32,
    view: RegistryView,
}

impl Registry {
    /// Reads the connection settings (their secrets included); connects at
    /// the first [`Registry::sync`].
    pub(crate) fn new(
        section: &RegistrySection,
        limits: LoadLimits,
    ) -> Result<Self, RegistryError> {
        Ok(Self {
            connector: Connector::new(section)?,
            client: None,
            limits,
            poll_interval: section.poll_interval,
            loaded: None,
            since: None,
            instance: None,
            last_full: None,
            rows: HashMap::new(),
            failures: 0,
            view: RegistryView::default(),
        })
    }

    /// How long until the next query: the poll interval, or a backoff
    /// (1 s, doubling, at most the poll interval) after failures.
    pub(crate) fn next_in(&self) -> Duration {
        if self.failures == 0 {
            return self.poll_interval;
        }
        Duration::from_secs(1u64 << self.failures.saturating_sub(1).min(10)).min(self.poll_interval)
    }

    /// The id of the database process serving this replica (to measure
    /// what its queries cost the database).
    pub(crate) async fn backend_pid(&mut self) -> Option<i32> {
        let (client, _) = self.client.as_ref()?;
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()?
            .try_get(0)
            .ok()
    }

    /// What `/status` shows.
    pub(crate) fn view(&self) -> RegistryView {
        self.view.clone()
    }

    /// The devices to read for `shard`: the valid, enabled rows held
    /// (those of another shard are dropped: after a resize they are
    /// handed over, and the next sync loads the new shard).
    pub(crate) fn devices(&self, shard: Shard) -> Vec<Device> {
        let mut out: Vec<Device> = self
            .rows
            .iter()
            .filter(|(id, h)| h.enabled && shard.owns(id))
            .filter_map(|(_, h)| h.device.as_ref().ok().cloned())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Brings the rows up to date for `shard`, checked against `base`:
    /// the whole shard when `full`, when the shard changed or after a
    /// failure; else only the rows written since the last query. Whether
    /// anything changed. A failure keeps the rows held.
    pub(crate) async fn sync(
        &mut self,
        shard: Shard,
        base: &CollectorConfig,
        full: bool,
    ) -> Result<bool, RegistryError> {
        let full = full
            || self.loaded != Some(shard)
            || self.since.is_none()
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= FULL_READ_EVERY);
        let mut read = self.query(shard, full).await;
        // A table dropped and created again (a new instance) between two
        // polls: its versions and xids mean nothing here; read it whole.
        if let Ok(r) = &read {
            if !full && self.instance.is_some_and(|i| i != r.instance) {
                read = self.query(shard, true).await;
            }
        }
        match read {
            Ok(r) => {
                self.failures = 0;
                self.since = Some(r.xmin);
                self.instance = Some(r.instance);
                self.loaded = Some(shard);
                let full = r.full;
                if full {
                    self.last_full = Some(std::time::Instant::now());
                }
                let changed = self.apply(r.rows, r.gone, full, base);
                self.record_ok();
                Ok(changed)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.since = None;
                // A fresh connection next time: one that timed out may
                // be half-open (a partition) and never fail by itself.
                self.client = None;
                self.record_failure(&e);
                Err(e)
            }
        }
    }

    /// One consistent read (one statement: one snapshot): the snapshot's
    /// xmin, the rows, and the ids deleted since the last read (none for a
    /// full read). One round trip, statements prepared once a connection.
    async fn query(&mut self, shard: Shard, full: bool) -> Result<Read, RegistryError> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let client = self.connector.connect().await?;
            let statements = self
                .connector
                .bounded(async {
                    client::check_schema(&client).await?;
                    Ok(Statements {
                        full: client.prepare(FULL_READ).await?,
                        delta: client.prepare(DELTA_READ).await?,
                    })
                })
                .await?;
            self.client = Some((client, statements));
        }
        let Some((client, statements)) = self.client.as_ref() else {
            return Err(RegistryError::Schema("no registry connection".into()));
        };
        let (lo, hi) = cell_range(shard);
        let since = if full { None } else { self.since.clone() };
        let read = async {
            let rows = match &since {
                None => client.query(&statements.full, &[&lo, &hi]).await?,
                Some(since) => client.query(&statements.delta, &[since, &lo, &hi]).await?,
            };
            let (mut xmin, mut instance) = (None, 0);
            let (mut out, mut gone) = (Vec::with_capacity(rows.len()), Vec::new());
            for r in &rows {
                if let Some(x) = r.try_get::<_, Option<String>>(6)? {
                    xmin = Some(x);
                    instance = r.try_get::<_, Option<i64>>(8)?.unwrap_or(0);
                }
                let Some(id) = r.try_get::<_, Option<String>>(0)? else {
                    continue; // the snapshot's row of a read that found none
                };
                if r.try_get::<_, bool>(7)? {
                    gone.push(id);
                } else {
                    out.push(Row::from_pg(r)?);
                }
            }
            let xmin =
                xmin.ok_or_else(|| RegistryError::Schema("the read returned no snapshot".into()))?;
            Ok(Read {
                xmin,
                instance,
                rows: out,
                gone,
                full: since.is_none(),
            })
        };
        self.connector.bounded(read).await
    }

    /// Applies a read; whether any device changed.
    fn apply(
        &mut self,
        rows: Vec<Row>,
        gone: Vec<String>,
        full: bool,
        base: &CollectorConfig,
    ) -> bool {
        let mut changed = false;
        let mut next: HashMap<Arc<str>, Held> = if full {
            HashMap::with_capacity(rows.len())
        } else {
            std::mem::take(&mut self.rows)
        };
        let mut old = if full {
            std::mem::take(&mut self.rows)
        } else {
            HashMap::new()
        };
        for id in gone {
            changed |= next
                .remove(id.as_str())
                .is_some_and(|h| h.effective().is_some());
        }
        // A delta read sees the rows of transactions that were still open
        // at the last read again: unchanged, nothing to check.
        let rows: Vec<Row> = rows
            .into_iter()
            .filter(|row| {
                full || next
                    .get(row.id.as_str())
                    .is_none_or(|h| h.version != row.version)
            })
            .collect();
        let devices = rows::devices_of(&rows, base, self.limits);
        for (row, device) in rows.into_iter().zip(devices) {
            let id: Arc<str> = Arc::from(row.id.as_str());
            let before = if full {
                old.remove(&id)
            } else {
                next.remove(&id)
            };
            let same_version = before.as_ref().is_some_and(|h| h.version == row.version);
            if let Err(reason) = &device {
                // Reported once per version of the row.
                if !(same_version && before.as_ref().is_some_and(|h| h.device.is_err())) {
                    metrics::counter!(names::REGISTRY_ROWS_REJECTED).increment(1);
                    tracing::warn!(device = %row.id, version = row.version, reason = %reason, "registry row skipped: not a valid device entry");
                }
            }
            let now = Held {
                version: row.version,
                enabled: row.enabled,
                device,
            };
            changed |= before.as_ref().and_then(Held::effective) != now.effective();
            next.insert(id, now);
        }
        changed |= old.values().any(|h| h.effective().is_some());
        self.rows = next;
        changed
    }

    fn record_ok(&mut self) {
        let now = SystemTime::now();
        let mut rejected: Vec<RejectedRow> = self
            .rows
            .iter()
            .filter_map(|(id, h)| {
                h.device.as_ref().err().map(|reason| RejectedRow {
                    id: format!("{id}@{}", h.version),
                    reason: reason.clone(),
                })
            })
            .collect();
        rejected.sort_by(|a, b| a.id.cmp(&b.id));
        if self.view.last_error.is_some() {
            tracing::info!(rows = self.rows.len(), "device registry reachable again");
        }
        self.view = RegistryView {
            up: true,
            rows: self.rows.len(),
            rejected: rejected.len(),
            rejected_rows: rejected.into_iter().take(20).collect(),
            last_sync: Some(humantime::format_rfc3339_seconds(now).to_string()),
            last_error: None,
        };
        metrics::gauge!(names::REGISTRY_UP).set(1.0);
        metrics::counter!(names::REGISTRY_POLLS, "result" => "ok").increment(1);
        metrics::gauge!(names::REGISTRY_ROWS).set(self.rows.len() as f64);
        metrics::gauge!(names::REGISTRY_LAST_SYNC).set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
    }

    fn record_failure(&mut self, e: &RegistryError) {
        let cause = e.cause();
        tracing::warn!(
            error = %cause,
            failures = self.failures,
            retry_in_s = self.next_in().as_secs(),
            held = self.rows.len(),
            "device registry unreachable: the devices last read keep running"
        );
        self.view.up = false;
        self.view.last_error = Some(cause);
        metrics::gauge!(names::REGISTRY_UP).set(0.0);
        metrics::counter!(names::REGISTRY_POLLS, "result" => "failed").increment(1);
    }
}
