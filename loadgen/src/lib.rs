//! opc-loadgen: a simulator of many OPC UA devices with deterministic values, for the
//! collector's tests, demos and benchmarks.
//!
//! Every device is a separate, lightweight async-opcua server on its own TCP port,
//! serving a handful of namespace 0 variables and `tags` computed-on-read variables in
//! namespace 2 (see [`model`] for the value model and [`Simulator`] for the fleet).

#![warn(missing_docs)]

mod device_file;
mod device_server;
mod duration;
mod error;
mod fault;
mod front;
pub mod history;
mod hostile;
pub mod model;
mod monitor;
mod mute;
mod node_manager;
pub mod nodes;
mod sim;
mod sniff;
mod stats;
pub mod steps;

pub use error::SimError;
pub use fault::{Fault, FaultParseError, FaultSpec, Selection};
pub use hostile::Hostile;
pub use sim::{SimConfig, SimDevice, SimSecurity, SimStats, Simulator};
pub use stats::DeviceStats;
