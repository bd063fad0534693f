//! The connection to the registry: the connection string from where the
//! configuration says (the password never logged), TLS when the string
//! asks for it, and each query bounded by `registry.timeout`.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use collector_core::config::{RegistrySection, RegistryUrl};
use openssl::ssl::{SslConnector, SslMethod};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::Client;

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The connection settings are wrong (a configuration error).
    #[error("registry connection settings: {0}")]
    Settings(String),
    /// Connecting failed.
    #[error("cannot connect to the registry: {0}")]
    Connect(#[source] tokio_postgres::Error),
    /// A query failed (or the connection was lost).
    #[error("registry query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// Connecting or a query took longer than `registry.timeout`.
    #[error("the registry did not answer within {0:?}")]
    Timeout(Duration),
    /// The database has no registry schema (or an unknown version).
    #[error("{0}")]
    Schema(String),
}

impl RegistryError {
    /// A short cause for logs and `/status`, with the database's own
    /// message when it sent one.
    pub(crate) fn cause(&self) -> String {
        use std::error::Error as _;
        let mut s = self.to_string();
        let mut source = self.source();
        while let Some(e) = source {
            let m = e.to_string();
            if !s.contains(&m) {
                s.push_str(": ");
                s.push_str(&m);
            }
            source = e.source();
        }
        s
    }
}

/// The connection settings, checked and with their secrets read.
#[derive(Clone)]
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    tls: MakeTlsConnector,
    timeout: Duration,
}

impl Connector {
    /// Reads the connection string (and password) and builds the TLS
    /// connector. Errors name the setting, never a secret's value.
    pub(crate) fn new(section: &RegistrySection) -> Result<Self, RegistryError> {
        let (text, password) = match section
            .connection()
            .map_err(|(_, m)| RegistryError::Settings(m))?
        {
            RegistryUrl::Inline(url, password) => (url, password),
            RegistryUrl::Secret(source) => (
                source
                    .read()
                    .map_err(RegistryError::Settings)?
                    .expose()
                    .to_string(),
                None,
            ),
        };
        let mut config = tokio_postgres::Config::from_str(text.trim()).map_err(|e| {
            RegistryError::Settings(format!("the connection string does not parse: {e}"))
        })?;
        if let Some(p) = password {
            let p = p.read().map_err(RegistryError::Settings)?;
            config.password(p.expose());
        }
        if config.get_application_name().is_none() {
            config.application_name("opc-collector");
        }
        config.connect_timeout(section.timeout);
        let mut builder = SslConnector::builder(SslMethod::tls())
            .map_err(|e| RegistryError::Settings(format!("TLS: {e}")))?;
        if let Some(ca) = &section.ca_file {
            builder.set_ca_file(ca).map_err(|e| {
                RegistryError::Settings(format!("registry.ca_file {}: {e}", ca.display()))
            })?;
        }
        Ok(Self {
            config,
            tls: MakeTlsConnector::new(builder.build()),
            timeout: section.timeout,
        })
    }

    /// Connects; the connection is driven by a task of its own until the
    /// client is dropped or the server goes away (`Client::is_closed`).
    pub(crate) async fn connect(&self) -> Result<Client, RegistryError> {
        let (client, connection) = self
            .bounded(async {
                self.config
                    .connect(self.tls.clone())
                    .await
                    .map_err(RegistryError::Connect)
            })
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "registry connection ended");
            }
        });
        Ok(client)
    }

    /// `work`, or a timeout error after `registry.timeout`.
    pub(crate) async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| RegistryError::Timeout(self.timeout))?
    }
}

/// Checks that the registry's schema is there and of a version this
/// daemon reads.
pub(crate) async fn check_schema(client: &Client) -> Result<(), RegistryError> {
    let row = client
        .query_opt(
            "SELECT max(version) FROM opc_collector.schema_version",
            &[],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                RegistryError::Schema(
                    "the database has no device registry (schema opc_collector): run `opc-collector registry init`".into(),
                )
            } else {
                RegistryError::Query(e)
            }
        })?;
    let version: Option<i32> = row.and_then(|r| r.get(0));
    match version {
        Some(SCHEMA_VERSION) => Ok(()),
        other => Err(RegistryError::Schema(format!(
            "the registry's schema version is {other:?}; this opc-collector reads version {SCHEMA_VERSION}: run `opc-collector registry init`"
        ))),
    }
}

/// The schema version `schema.sql` creates.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The schema, applied by `registry init` (idempotent).
pub(crate) const SCHEMA_SQL: &str = include_str!("schema.sql");
