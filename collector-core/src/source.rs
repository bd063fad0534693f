//! Where the device set comes from. A [`DeviceSource`] yields the desired
//! set of devices at start and every later version of it; the pipeline's
//! reconciler (`reconcile`) turns each version into started, stopped and
//! restarted device schedules while the others run on untouched.
//!
//! The configuration's device list is a [`StaticSource`] (the default); an
//! embedder or a live file, registry or API source sends new versions
//! through a [`DeviceSetSender`] from [`channel`], or implements the trait.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::config::Device;

/// The desired device set, now and as it changes.
#[async_trait]
pub trait DeviceSource: Send + 'static {
    /// The set to start with.
    async fn initial(&mut self) -> Vec<Device>;

    /// Waits for the next version of the whole set. `None`: the set will
    /// not change again (the running devices keep running).
    async fn next(&mut self) -> Option<Vec<Device>>;
}

/// A fixed device list: the configuration's `devices`, or one built in
/// code.
#[derive(Debug, Clone, Default)]
pub struct StaticSource {
    devices: Vec<Device>,
}

impl StaticSource {
    /// A source that yields `devices` and never changes.
    pub fn new(devices: Vec<Device>) -> Self {
        Self { devices }
    }
}

#[async_trait]
impl DeviceSource for StaticSource {
    async fn initial(&mut self) -> Vec<Device> {
        std::mem::take(&mut self.devices)
    }

    async fn next(&mut self) -> Option<Vec<Device>> {
        None
    }
}

/// Sends new versions of the device set to a [`ChannelSource`]. Versions
/// sent faster than the reconciler applies them are coalesced: the latest
/// wins, as a live file or registry would want.
#[derive(Debug, Clone)]
pub struct DeviceSetSender {
    tx: Arc<watch::Sender<Vec<Device>>>,
}

impl DeviceSetSender {
    /// Makes `devices` the desired set. False once the collector stopped.
    pub fn send(&self, devices: Vec<Device>) -> bool {
        self.tx.send(devices).is_ok()
    }
}

/// The receiving end of [`channel`].
#[derive(Debug)]
pub struct ChannelSource {
    rx: watch::Receiver<Vec<Device>>,
}

/// A source whose set is changed from elsewhere in the program, starting
/// with `initial`.
pub fn channel(initial: Vec<Device>) -> (DeviceSetSender, ChannelSource) {
    let (tx, rx) = watch::channel(initial);
    (DeviceSetSender { tx: Arc::new(tx) }, ChannelSource { rx })
}

#[async_trait]
impl DeviceSource for ChannelSource {
    async fn initial(&mut self) -> Vec<Device> {
        self.rx.borrow_and_update().clone()
    }

    async fn next(&mut self) -> Option<Vec<Device>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}
