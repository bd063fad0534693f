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

/// The connection settings, checked. Secrets are read again at every
/// connect, so a rotated Secret needs no restart.
#[derive(Clone)]
pub(crate) struct Connector {
    url: RegistryUrl,
    tls: MakeTlsConnector,
    timeout: Duration,
}

impl Connector {
    /// Checks the connection settings (reading the secrets once) and builds
    /// the TLS connector. Errors name the setting, never a secret's value.
    pub(crate) fn new(section: &RegistrySection) -> Result<Self, RegistryError> {
        let url = section
            .connection()
            .map_err(|(_, m)| RegistryError::Settings(m))?;
        let mut builder = SslConnector::builder(SslMethod::tls())
            .map_err(|e| RegistryError::Settings(format!("TLS: {e}")))?;
        if let Some(ca) = &section.ca_file {
            builder.set_ca_file(ca).map_err(|e| {
                RegistryError::Settings(format!("registry.ca_file {}: {e}", ca.display()))
            })?;
        }
        let connector = Self {
            url,
            tls: MakeTlsConnector::new(builder.build()),
            timeout: section.timeout,
        };
        connector.config()?;
        Ok(connector)
    }

    /// The connection settings, with the secrets as they are now.
    fn config(&self) -> Result<tokio_postgres::Config, RegistryError> {
        let (text, password) = match &self.url {
            RegistryUrl::Inline(url, password) => (url.clone(), password.clone()),
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
        config.connect_timeout(self.timeout);
        Ok(config)
    }

    /// Connects; the connection is driven by a task of its own until the
    /// client is dropped or the server goes away (`Client::is_closed`).
    pub(crate) async fn connect(&self) -> Result<Client, RegistryError> {
        let config = self.config()?;
        let (client, connection) = self
            .bounded(async {
                config
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
            "SELECT max(version), min(min_reader) FROM opc_collector.schema_version",
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
    let (version, min_reader): (Option<i32>, Option<i32>) = match &row {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (None, None),
    };
    match (version, min_reader) {
        (Some(v), Some(m)) if v >= SCHEMA_VERSION && m <= SCHEMA_VERSION => Ok(()),
        (Some(v), Some(m)) if m > SCHEMA_VERSION => Err(RegistryError::Schema(format!(
            "the registry's schema (version {v}) needs an opc-collector that reads version {m} or later; this one reads {SCHEMA_VERSION}"
        ))),
        (v, _) => Err(RegistryError::Schema(format!(
            "the registry's schema version is {v:?}; this opc-collector reads version {SCHEMA_VERSION}: run `opc-collector registry init`"
        ))),
    }
}

/// The schema version `schema.sql` creates.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The schema, applied by `registry init` (idempotent).
pub(crate) const SCHEMA_SQL: &str = include_str!("schema.sql");
