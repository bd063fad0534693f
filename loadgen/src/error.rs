//! The error type of the simulator library.

use std::io;

/// Errors starting or running a [`crate::Simulator`].
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot be served (e.g. ports past 65535).
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address that was tried.
        addr: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// async-opcua rejected the server configuration of a device.
    #[error("cannot build the OPC UA server of {device}: {message}")]
    Build {
        /// Device id.
        device: String,
        /// Message from async-opcua.
        message: String,
    },
    /// Some other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A device server stopped or did not come up in time.
    #[error("device server {device} failed to start: {reason}")]
    Startup {
        /// Device id.
        device: String,
        /// What went wrong.
        reason: String,
    },
    /// No device with this index in the simulator.
    #[error("no device with index {0} in this simulator")]
    UnknownDevice(u32),
}
