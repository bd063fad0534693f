//! Helpers shared by the end-to-end tests that run the daemon as a child
//! process. Each test binary compiles this module (`mod support;`) and uses
//! part of it, through the re-exports below:
//!
//! - [`proc`]: child processes that die with the test, log tails on
//!   failure, free ports, polling;
//! - [`broker`]: the `tansu` broker, creating and reading the topic;
//! - [`loadgen`]: the `opc-loadgen` simulator;
//! - [`daemon`]: the `opc-collector` child process and its final totals;
//! - [`scrape`]: its HTTP surface and `/metrics` values;
//! - [`records`]: the topic read back as per-device sequence numbers.
//! - [`stacks`]: the independent OPC UA servers of the interop tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// test code: a panic is a failed test

// Each test binary uses only part of the helpers and of the re-exports.
#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod daemon;
pub mod loadgen;
pub mod proc;
pub mod records;
pub mod scrape;
pub mod stacks;

pub use broker::{
    create_topic, create_topic_with, find_tansu, read_topic, start_broker, tansu_version,
};
pub use daemon::{collector_bin, final_log_line, wait_spill_drained, Daemon, Stopped};
pub use loadgen::{device_ids, loadgen_bin, start_loadgen, start_loadgen_from, start_loadgen_with};
pub use proc::{free_port, log_file, poll_until, port_below_ephemeral, LogsOnFailure, Proc};
pub use records::{
    all_records, assert_devices, first_run_base, partition_problems, print_device_records,
    records_by_device, Seen, SeqSet,
};
pub use scrape::{http_get, metric, metric_labelled, metric_sum};
