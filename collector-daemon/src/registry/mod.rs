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
mod rows;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use collector_core::config::{Device, LoadLimits, RegistrySection};
use collector_core::metrics::names;
use collector_core::shard::Shard;
use collector_core::CollectorConfig;
use tokio_postgres::{Client, IsolationLevel};

pub(crate) use client::{Connector, RegistryError};
use rows::{shard_cells, Row, COLUMNS};

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

/// This replica's view of the registry: its shard's rows as last read.
pub(crate) struct Registry {
    connector: Connector,
    client: Option<Client>,
    limits: LoadLimits,
    poll_interval: Duration,
    /// The shard the rows are of, once loaded.
    loaded: Option<Shard>,
    /// The snapshot xmin of the last query: every row written by a
    /// transaction not visible then has an xid at or above it.
    since: Option<String>,
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
        let full = full || self.loaded != Some(shard) || self.since.is_none();
        match self.query(shard, full).await {
            Ok((since, rows, gone)) => {
                self.failures = 0;
                self.since = Some(since);
                self.loaded = Some(shard);
                let changed = self.apply(rows, gone, full, base);
                self.record_ok();
                Ok(changed)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.since = None;
                if self.client.as_ref().is_some_and(Client::is_closed) {
                    self.client = None;
                }
                self.record_failure(&e);
                Err(e)
            }
        }
    }

    /// One consistent read: the snapshot's xmin, the rows, and the ids
    /// deleted since the last read (none for a full read).
    async fn query(
        &mut self,
        shard: Shard,
        full: bool,
    ) -> Result<(String, Vec<Row>, Vec<String>), RegistryError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = self.connector.connect().await?;
            self.connector
                .bounded(async { client::check_schema(&client).await })
                .await?;
            self.client = Some(client);
        }
        let cells = shard_cells(shard);
        let since = if full { None } else { self.since.clone() };
        let connector = self.connector.clone();
        let Some(client) = self.client.as_mut() else {
            return Err(RegistryError::Schema("no registry connection".into()));
        };
        let read = async {
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let xmin: String = tx
                .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
                .await?
                .try_get(0)?;
            let (rows, gone) = match &since {
                None => {
                    let q = format!(
                        "SELECT {COLUMNS} FROM opc_collector.devices WHERE shard_cells && $1::int4[]"
                    );
                    (tx.query(&q, &[&cells]).await?, Vec::new())
                }
                Some(since) => {
                    let q = format!(
                        "SELECT {COLUMNS} FROM opc_collector.devices \
                         WHERE written_by >= $1::text::xid8 AND shard_cells && $2::int4[]"
                    );
                    let rows = tx.query(&q, &[since, &cells]).await?;
                    let gone = tx
                        .query(
                            "SELECT DISTINCT t.id FROM opc_collector.tombstones t \
                             WHERE t.written_by >= $1::text::xid8 AND t.shard_cells && $2::int4[] \
                             AND NOT EXISTS (SELECT 1 FROM opc_collector.devices d WHERE d.id = t.id)",
                            &[since, &cells],
                        )
                        .await?;
                    (rows, gone)
                }
            };
            tx.commit().await?;
            let rows = rows
                .iter()
                .map(Row::from_pg)
                .collect::<Result<Vec<_>, _>>()?;
            let gone = gone
                .iter()
                .map(|r| r.try_get::<_, String>(0))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((xmin, rows, gone))
        };
        connector.bounded(read).await
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
        for row in rows {
            let id: Arc<str> = Arc::from(row.id.as_str());
            let before = if full {
                old.remove(&id)
            } else {
                next.remove(&id)
            };
            let same_version = before.as_ref().is_some_and(|h| h.version == row.version);
            // A delta read sees the rows of transactions that were still
            // open at the last read again: unchanged, nothing to check.
            if same_version && !full {
                if let Some(h) = before {
                    next.insert(id, h);
                }
                continue;
            }
            let device = row.device(base, self.limits);
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
