//! `docs/metrics.md` and the metric table agree: every metric the
//! collector declares is documented with its kind, and every documented
//! metric is declared. (That the daemon exports nothing outside the table
//! is checked by the daemon's HTTP test against a real scrape.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;

use collector_core::metrics::ALL;

/// `name -> kind` from the doc's tables: rows like
/// ``| `collector_x_total` | counter | labels | description |``.
fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            name.starts_with("collector_")
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect()
}

#[test]
fn every_declared_metric_is_documented_and_every_documented_one_declared() {
    let doc = documented();
    let mut problems = Vec::new();
    for m in ALL {
        match doc.get(m.name) {
            None => problems.push(format!("{} is exported but not in docs/metrics.md", m.name)),
            Some(kind) if kind != m.kind.label() => problems.push(format!(
                "{}: docs/metrics.md says {kind}, the code declares a {}",
                m.name,
                m.kind.label()
            )),
            Some(_) => {}
        }
    }
    for name in doc.keys() {
        if !ALL.iter().any(|m| m.name == name) {
            problems.push(format!("{name} is documented but not declared"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(doc.len() >= 40, "parsed only {} rows", doc.len());
}
