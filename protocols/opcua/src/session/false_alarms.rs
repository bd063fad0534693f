//! The OPC UA library's false alarms on security None, kept out of the log.
//!
//! Every secure channel the library opens reads the client's own
//! certificate and logs `Failed to read own certificate` / `private key`
//! at ERROR when there is none, which is the design of the client used for
//! security None (discovery, and sessions without security): a healthy
//! start would log two ERROR lines per device. [`quietly`] runs the
//! channel's creation under a dispatcher that forwards everything to the
//! current one except exactly those events, so real problems (and all the
//! library's other output) still reach the log at their level.

use tracing::dispatcher::{self, Dispatch};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// Where the library logs them.
const TARGET: &str = "opcua_core::comms::secure_channel";
/// How their messages start.
const PREFIX: &str = "Failed to read own ";

/// A dispatcher like the current one, without the false alarms.
pub(crate) fn without_false_alarms() -> Dispatch {
    let inner = dispatcher::get_default(Dispatch::clone);
    Dispatch::new(Filtered { inner })
}

/// Runs `f` (creating a channel for security None) without the false
/// alarms.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> T {
    dispatcher::with_default(&without_false_alarms(), f)
}

struct Filtered {
    inner: Dispatch,
}

fn is_false_alarm(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    if *meta.level() != Level::ERROR || meta.target() != TARGET {
        return false;
    }
    struct Message(bool);
    impl Visit for Message {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.0 = value.starts_with(PREFIX);
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}").starts_with(PREFIX);
            }
        }
    }
    let mut m = Message(false);
    event.record(&mut m);
    m.0
}

impl Subscriber for Filtered {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(meta)
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.inner.enabled(meta)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows)
    }
    fn event_enabled(&self, event: &Event<'_>) -> bool {
        !is_false_alarm(event)
    }
    fn event(&self, event: &Event<'_>) {
        if !is_false_alarm(event) {
            self.inner.event(event)
        }
    }
    fn enter(&self, span: &Id) {
        self.inner.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.inner.exit(span)
    }
    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.inner.current_span()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects the messages of the events it sees.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct M(String);
            impl Visit for M {
                fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "message" {
                        self.0 = format!("{v:?}");
                    }
                }
            }
            let mut m = M(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }

    #[test]
    fn drops_only_the_false_alarms() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            quietly(|| {
                tracing::error!(target: "opcua_core::comms::secure_channel", "Failed to read own certificate: no file");
                tracing::error!(target: "opcua_core::comms::secure_channel", "Remote nonce is invalid");
                tracing::error!(target: "somewhere_else", "Failed to read own certificate: no file");
                tracing::info!(target: "opcua_core::comms::secure_channel", "Failed to read own certificate");
            });
            tracing::error!(target: "opcua_core::comms::secure_channel", "Failed to read own private key: outside");
        });
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "Remote nonce is invalid",
                "Failed to read own certificate: no file",
                "Failed to read own certificate",
                "Failed to read own private key: outside",
            ]
        );
    }
}
