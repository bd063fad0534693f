//! `opc-collector registry init | import | export`: the registry's schema,
//! and device files in and out of it. Import checks every entry of every
//! file first (the daemon's own checks, `file:line`), and writes nothing
//! unless all are valid; it is an idempotent upsert in one transaction.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use collector_core::config::LoadLimits;
use futures::TryStreamExt as _;

use super::client::{check_schema, Connector, RegistryError, SCHEMA_SQL};
use super::rows::{rows_of_file, Row, COLUMNS};
use crate::cli::RegistryAction;
use crate::Failure;

/// Rows per upsert statement.
const BATCH: usize = 2000;

/// Runs `action` against the registry of the configuration at `config`.
pub(crate) async fn run(
    config: Option<&Path>,
    limits: LoadLimits,
    action: RegistryAction,
) -> Result<(), Failure> {
    let Some(config) = config else {
        eprintln!("error: --config <CONFIG> is required (its `registry:` section says where the registry is)");
        return Err(Failure::Config);
    };
    let cfg = crate::run::load(config, limits)?;
    let connector = Connector::new(&cfg.registry).map_err(|e| {
        eprintln!("error: {}: {}", config.display(), e.cause());
        Failure::Config
    })?;
    match action {
        RegistryAction::Init => {
            let client = connector.connect().await.map_err(runtime)?;
            // The schema's "already exists, skipping" notices are noise.
            client
                .batch_execute("SET client_min_messages = warning")
                .await
                .map_err(|e| runtime(RegistryError::Query(e)))?;
            client
                .batch_execute(&format!("BEGIN;\n{SCHEMA_SQL}\nCOMMIT;"))
                .await
                .map_err(|e| runtime(RegistryError::Query(e)))?;
            check_schema(&client).await.map_err(runtime)?;
            println!(
                "registry schema opc_collector is at version {}",
                super::client::SCHEMA_VERSION
            );
            Ok(())
        }
        RegistryAction::Import { files } => {
            let rows = read_files(&cfg, &files, limits)?;
            let mut client = connector.connect().await.map_err(runtime)?;
            check_schema(&client).await.map_err(runtime)?;
            let counts = upsert(&mut client, &rows).await.map_err(runtime)?;
            println!(
                "imported {} devices from {} file(s): {} inserted, {} updated, {} unchanged",
                rows.len(),
                files.len(),
                counts.inserted,
                counts.updated,
                rows.len() - counts.inserted - counts.updated
            );
            Ok(())
        }
        RegistryAction::Shard {
            index,
            count,
            polls,
            json,
        } => {
            let shard = collector_core::shard::Shard { index, count };
            if count == 0 || index >= count || count > collector_core::config::REGISTRY_MAX_SHARDS {
                eprintln!(
                    "error: --index must be below --count, and --count 1 to {}",
                    collector_core::config::REGISTRY_MAX_SHARDS
                );
                return Err(Failure::Config);
            }
            let report = super::probe::probe(&cfg, limits, shard, polls)
                .await
                .map_err(runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(anyhow::Error::from)?
                );
            } else {
                report.print();
            }
            Ok(())
        }
        RegistryAction::Export { output } => {
            let client = connector.connect().await.map_err(runtime)?;
            check_schema(&client).await.map_err(runtime)?;
            export(&client, output.as_deref())
                .await
                .map_err(Failure::Runtime)
        }
    }
}

fn runtime(e: RegistryError) -> Failure {
    Failure::Runtime(anyhow::anyhow!(e.cause()))
}

/// Every file's rows, or every problem (printed) and a config failure.
fn read_files(
    cfg: &collector_core::CollectorConfig,
    files: &[PathBuf],
    limits: LoadLimits,
) -> Result<Vec<Row>, Failure> {
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    let mut first: HashMap<String, PathBuf> = HashMap::new();
    for f in files {
        match rows_of_file(cfg, f, limits) {
            Ok(r) => {
                for row in r {
                    if let Some(other) = first.get(&row.id) {
                        problems.push(format!(
                            "{}: device id `{}` is also in {}",
                            f.display(),
                            row.id,
                            other.display()
                        ));
                        continue;
                    }
                    first.insert(row.id.clone(), f.clone());
                    rows.push(row);
                }
            }
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        return Ok(rows);
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    eprintln!("{} problem(s); nothing imported", problems.len());
    Err(Failure::Config)
}

struct Counts {
    inserted: usize,
    updated: usize,
}

/// Inserts or updates `rows` in one transaction; a row equal to the stored
/// one is left alone (its version stays, no replica reloads it).
async fn upsert(
    client: &mut tokio_postgres::Client,
    rows: &[Row],
) -> Result<Counts, RegistryError> {
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare(
            r#"INSERT INTO opc_collector.devices AS d (id, endpoint, "interval", settings, enabled)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::bool[])
               ON CONFLICT (id) DO UPDATE SET endpoint = EXCLUDED.endpoint,
                   "interval" = EXCLUDED."interval", settings = EXCLUDED.settings,
                   enabled = EXCLUDED.enabled
               WHERE (d.endpoint, d."interval", d.settings, d.enabled)
                     IS DISTINCT FROM (EXCLUDED.endpoint, EXCLUDED."interval", EXCLUDED.settings, EXCLUDED.enabled)
               RETURNING (xmax = 0)"#,
        )
        .await?;
    let mut counts = Counts {
        inserted: 0,
        updated: 0,
    };
    for chunk in rows.chunks(BATCH) {
        let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
        let endpoints: Vec<&str> = chunk.iter().map(|r| r.endpoint.as_str()).collect();
        let intervals: Vec<Option<&str>> = chunk.iter().map(|r| r.interval.as_deref()).collect();
        let settings: Vec<&serde_json::Value> = chunk.iter().map(|r| &r.settings).collect();
        let enabled: Vec<bool> = chunk.iter().map(|r| r.enabled).collect();
        for r in tx
            .query(&stmt, &[&ids, &endpoints, &intervals, &settings, &enabled])
            .await?
        {
            if r.try_get::<_, bool>(0)? {
                counts.inserted += 1;
            } else {
                counts.updated += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(counts)
}

/// Writes the enabled rows as a device file (one JSON entry a line, which
/// is YAML), ordered by id.
async fn export(client: &tokio_postgres::Client, output: Option<&Path>) -> anyhow::Result<()> {
    let mut out: Box<dyn std::io::Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let q = format!("SELECT {COLUMNS} FROM opc_collector.devices ORDER BY id");
    let stream = client
        .query_raw(&q, std::iter::empty::<i32>())
        .await
        .context("registry query")?;
    futures::pin_mut!(stream);
    writeln!(out, "# opc-collector registry export\ndevices:")?;
    let (mut written, mut disabled, mut invalid) = (0usize, 0usize, 0usize);
    while let Some(r) = stream.try_next().await.context("registry query")? {
        let row = Row::from_pg(&r).context("registry row")?;
        if !row.enabled {
            disabled += 1;
            continue;
        }
        match row.entry() {
            Ok(entry) => {
                writeln!(out, "  - {entry}")?;
                written += 1;
            }
            Err(reason) => {
                eprintln!("warning: device `{}` not exported: {reason}", row.id);
                invalid += 1;
            }
        }
    }
    out.flush()?;
    eprintln!(
        "exported {written} devices ({disabled} disabled and {invalid} malformed rows left out)"
    );
    Ok(())
}
