//! The daemon's HTTP surface as the tests read it: a GET that yields
//! `None` when the daemon does not answer, and single values out of a
//! `/metrics` scrape. Thin wrappers over `collector_testkit`.

use std::net::SocketAddr;

use collector_testkit::Scrape;

/// GETs `path` from the daemon: (status, body), or `None` if it does not
/// answer (not listening yet, gone, or not speaking HTTP).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    collector_testkit::http::get(addr, path).ok()
}

/// The value of an unlabelled Prometheus sample.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    Scrape::parse(text).get(name, &[])
}

/// The sum of a Prometheus metric over all its label sets (0 if absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    Scrape::parse(text).sum(name, &[]) + 0.0 // an empty sum is -0
}

/// The sum of the samples of `name` with one label, given as in the
/// exposition, e.g. `reason="kafka_down"` (0 if absent).
pub fn metric_labelled(text: &str, name: &str, label: &str) -> f64 {
    let (key, value) = label
        .split_once('=')
        .and_then(|(k, v)| Some((k, v.strip_prefix('"')?.strip_suffix('"')?)))
        .unwrap_or_else(|| panic!("label {label:?} is not of the form key=\"value\""));
    Scrape::parse(text).sum(name, &[(key, value)]) + 0.0 // an empty sum is -0
}
