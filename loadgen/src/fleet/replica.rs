//! One `opc-collector` replica of a fleet run, started as a StatefulSet
//! starts a pod: the fleet's one configuration file, the shard index from
//! the environment (`OPC_COLLECTOR_SHARD_INDEX`, as the ordinal), its own
//! collector id and state directory (a pod's volume), kept across a
//! restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::bench::collector::{self, Collector, StoppedLine};

/// The variable the fleet's configuration names as `collector.id`.
pub const ID_VAR: &str = "OPC_FLEET_REPLICA";
/// The variable the fleet's configuration names as `collector.state_dir`.
pub const STATE_VAR: &str = "OPC_FLEET_STATE_DIR";

/// A replica: its process (none while stopped) and the totals of every
/// run that ended.
pub struct Replica {
    /// Its shard index (the ordinal).
    pub index: u32,
    bin: PathBuf,
    config: PathBuf,
    /// The run's work directory (logs).
    root: PathBuf,
    /// This replica's (its state directory).
    dir: PathBuf,
    http: SocketAddr,
    proc: Option<Collector>,
    runs: u32,
    /// The `collector stopped` totals of each ended run.
    pub stopped: Vec<StoppedLine>,
}

impl Replica {
    /// Its collector id.
    pub fn id(index: u32) -> String {
        format!("fleet-{index}")
    }

    /// Starts replica `index`, its state in `root/replica-<index>`, its
    /// log `root/replica-<index>.run<n>.log`.
    pub fn start(bin: &Path, config: &Path, index: u32, root: &Path) -> anyhow::Result<Replica> {
        let dir = root.join(format!("replica-{index}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut r = Replica {
            index,
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            root: root.to_path_buf(),
            dir,
            http: collector::free_local_addr()?,
            proc: None,
            runs: 0,
            stopped: Vec::new(),
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let log = self
            .root
            .join(format!("replica-{}.run{}.log", self.index, self.runs));
        let env = [
            ("OPC_COLLECTOR_SHARD_INDEX", self.index.to_string()),
            (ID_VAR, Self::id(self.index)),
            (STATE_VAR, self.dir.join("state").display().to_string()),
        ];
        self.proc = Some(Collector::spawn_with(
            &self.bin,
            &self.config,
            self.http,
            log,
            &env,
        )?);
        Ok(())
    }

    fn running(&mut self) -> anyhow::Result<&mut Collector> {
        let index = self.index;
        self.proc
            .as_mut()
            .with_context(|| format!("replica {index} is not running"))
    }

    /// Fails with its log's tail if it exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let index = self.index;
        self.running()?
            .ensure_running()
            .with_context(|| format!("replica {index}"))
    }

    /// Waits until it answers `/readyz` with 200 (blocking: the runtime's
    /// other tasks, the simulator's devices, move to another worker).
    pub fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let index = self.index;
        let proc = self.running()?;
        tokio::task::block_in_place(|| proc.wait_http_ok("/readyz", limit))
            .with_context(|| format!("replica {index}"))
    }

    /// Its `/status`.
    pub fn status(&self) -> anyhow::Result<Value> {
        self.get_json("/status")
    }

    /// Ids of the devices of its shard that have been read at least once,
    /// and how many it schedules.
    pub fn devices_read(&self) -> anyhow::Result<(Vec<String>, usize)> {
        let list = self.devices("handover=false")?;
        let read = list
            .iter()
            .filter(|d| d["reads_ok"].as_u64().unwrap_or(0) > 0)
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect();
        Ok((read, list.len()))
    }

    /// The entries of `/devices` of the devices it hands over.
    pub fn handing_over(&self) -> anyhow::Result<Vec<Value>> {
        self.devices("handover=true")
    }

    /// Every entry of `/devices?<filter>`, a page at a time.
    fn devices(&self, filter: &str) -> anyhow::Result<Vec<Value>> {
        const PAGE: usize = 1000;
        let mut all = Vec::new();
        loop {
            let page = self.get_json(&format!(
                "/devices?{filter}&limit={PAGE}&offset={}",
                all.len()
            ))?;
            let entries = page["devices"].as_array().cloned().unwrap_or_default();
            let total = page["total"].as_u64().unwrap_or(0) as usize;
            let last = entries.len() < PAGE;
            all.extend(entries);
            if last || all.len() >= total {
                return Ok(all);
            }
        }
    }

    fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        match collector::http_get(self.http, path)? {
            (200, body) => serde_json::from_str(&body)
                .with_context(|| format!("replica {}: {path} is not JSON", self.index)),
            (code, _) => bail!("replica {}: {path} answered {code}", self.index),
        }
    }

    /// Stops it with SIGTERM; it must exit 0 within `limit`. Returns how
    /// long it took.
    pub fn stop(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let index = self.index;
        let Some(mut proc) = self.proc.take() else {
            return Ok(Duration::ZERO);
        };
        let t = Instant::now();
        // Blocking: the simulator's devices move to another worker.
        let status = tokio::task::block_in_place(|| proc.terminate(limit))?;
        let took = t.elapsed();
        if !status.success() {
            bail!(
                "replica {index} exited with {status} after SIGTERM; last log lines:\n{}",
                collector::log_tail(&proc.log, 15)
            );
        }
        self.stopped.push(collector::stopped_line(&proc.log)?);
        Ok(took)
    }

    /// Starts it again (same index, id and state directory), as a rolling
    /// update restarts a pod.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("replica {} is still running", self.index);
        }
        self.spawn()
    }

    /// The last lines of its current log.
    pub fn log_tail(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| collector::log_tail(&p.log, 10))
            .unwrap_or_default()
    }
}
