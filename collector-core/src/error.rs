//! Error types of the library: one enum per boundary, so callers can match
//! on what went wrong without parsing strings.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration, with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (None for configs built in code).
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn at(mut self, file: Option<&std::path::Path>, line: Option<usize>) -> Self {
        if self.file.is_none() {
            self.file = file.map(|p| p.to_path_buf());
        }
        if self.line.is_none() {
            self.line = line;
        }
        self
    }

    /// Adds how to fix it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{}: ", file.display(), line)?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration; validation reports all of them at
/// once rather than stopping at the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// True when no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    pub(crate) fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Why a device read failed. The variants are the classes the scheduler
/// (and, later, the circuit breaker) treats differently.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No session could be established (refused, unreachable, handshake).
    #[error("connect to {endpoint} failed: {reason}")]
    Connect {
        /// The endpoint URL.
        endpoint: String,
        /// What the transport or server said.
        reason: String,
    },
    /// The server answered but refused service for now (too many sessions,
    /// too busy, halted): retrying at once would only load it further.
    #[error("{endpoint} refused the session: {reason}")]
    Refused {
        /// The endpoint URL.
        endpoint: String,
        /// What the server said.
        reason: String,
    },
    /// The session could not be secured: untrusted or unpinned server
    /// certificate, rejected user, no endpoint matching the security
    /// settings. The reason says what to do.
    #[error("security check for {endpoint} failed: {reason}")]
    Security {
        /// The endpoint URL.
        endpoint: String,
        /// What failed, and the fix.
        reason: String,
    },
    /// The connect or read did not finish within its timeout.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// "connect" or "read".
        what: &'static str,
        /// The configured timeout.
        after: std::time::Duration,
    },
    /// The server answered the read with a service-level error.
    #[error("read failed: {0}")]
    Service(String),
    /// The device's configuration cannot be served by this protocol.
    #[error("device configuration rejected: {0}")]
    Config(String),
    /// The session was closed because the collector is shutting down.
    #[error("shutting down")]
    Shutdown,
}

/// What a failed read cost the collector, which is what the circuit
/// breaker judges it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCost {
    /// Answered at once (connection refused or reset): costs almost
    /// nothing, and may succeed a moment later (a flaky link).
    Cheap,
    /// Held a worker or a connection for a timeout, a server that answers
    /// reads with errors or refuses sessions, or needs a fix (security,
    /// configuration): worth backing off from.
    Costly,
}

impl ReadError {
    /// What this failure cost (see [`FailureCost`]).
    pub fn cost(&self) -> FailureCost {
        match self {
            ReadError::Connect { .. } | ReadError::Shutdown => FailureCost::Cheap,
            ReadError::Service(_)
            | ReadError::Refused { .. }
            | ReadError::Timeout { .. }
            | ReadError::Security { .. }
            | ReadError::Config(_) => FailureCost::Costly,
        }
    }

    /// A short, fixed label for metrics (`result` label of the reads counter).
    pub fn label(&self) -> &'static str {
        match self {
            ReadError::Connect { .. } => "connect_error",
            ReadError::Security { .. } => "security_error",
            ReadError::Timeout { .. } => "timeout",
            ReadError::Service(_) => "read_error",
            ReadError::Config(_) => "config_error",
            ReadError::Refused { .. } => "refused",
            ReadError::Shutdown => "shutdown",
        }
    }
}

/// Why a sink could not take or deliver records.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink could not be created from its configuration.
    #[error("sink configuration: {0}")]
    Config(String),
    /// Delivery of one or more records failed.
    #[error("delivery failed: {0}")]
    Delivery(String),
}

/// Why the collector could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The sink failed to start.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Something the pipeline needs at start (state dir, ...) failed.
    #[error("{0}")]
    Startup(String),
}
