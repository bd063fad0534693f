//! The last reads' files: appends, compaction, torn and garbled lines,
//! a crash between a compaction's steps.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

fn t(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(1_700_000_000_000_000_000 + n)
}

fn journal_lines(dir: &Path) -> usize {
    std::fs::read(dir.join(JOURNAL))
        .map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count())
        .unwrap_or(0)
}

#[test]
fn round_trip_through_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let at = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
    let w = Watermarks::load(Some(dir.path()));
    w.moved(&Arc::from("dev-1"), at);
    w.persist();
    let loaded = Watermarks::load(Some(dir.path()));
    assert_eq!(loaded.last("dev-1"), Some(at));
    assert_eq!(loaded.last("dev-2"), None);
    // Another device reads: the first one's last read stays (a device
    // removed in this run is not forgotten).
    let later = at + chrono::Duration::seconds(1);
    loaded.moved(&Arc::from("dev-2"), later);
    loaded.persist();
    let again = Watermarks::load(Some(dir.path()));
    assert_eq!(again.last("dev-1"), Some(at));
    assert_eq!(again.last("dev-2"), Some(later));
    // Ids that need quoting survive.
    let odd: Arc<str> = Arc::from("plant \"7\"\n line\\2");
    again.moved(&odd, later);
    again.persist();
    again.moved(&Arc::from("dev-3"), later);
    again.persist();
    let odd_loaded = Watermarks::load(Some(dir.path()));
    assert_eq!(odd_loaded.last(&odd), Some(later));
    assert_eq!(odd_loaded.last("dev-3"), Some(later));
    std::fs::write(dir.path().join(SNAPSHOT), b"{not json").unwrap();
    std::fs::remove_file(dir.path().join(JOURNAL)).unwrap();
    assert_eq!(Watermarks::load(Some(dir.path())).last("dev-1"), None);
}

/// Without a state directory nothing is kept: the reports of a
/// daemon that never persists do not pile up.
#[test]
fn without_a_state_dir_no_report_is_kept() {
    let w = Watermarks::load(None);
    w.moved(&Arc::from("dev-1"), t(1));
    assert!(w.moved.lock().is_empty());
    w.persist();
    assert_eq!(w.last("dev-1"), None);
}

/// Successes reported from many schedules while the second's persist
/// runs: none is lost between taking the reports and writing, and a
/// device's later read wins over its earlier one (through appends and
/// compactions both).
#[test]
fn reports_while_persisting_are_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let w = Arc::new(Watermarks::load(Some(dir.path())));
    let stop = Arc::new(AtomicBool::new(false));
    let persister = {
        let (w, stop) = (w.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                w.persist();
            }
        })
    };
    let reporters: Vec<_> = (0..4)
        .map(|r| {
            let w = w.clone();
            std::thread::spawn(move || {
                let id: Arc<str> = Arc::from(format!("dev-{r}"));
                for n in 1..=2_000 {
                    w.moved(&id, t(n));
                }
            })
        })
        .collect();
    for r in reporters {
        r.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    persister.join().unwrap();
    w.persist();
    let loaded = Watermarks::load(Some(dir.path()));
    for r in 0..4 {
        assert_eq!(loaded.last(&format!("dev-{r}")), Some(t(2_000)), "dev-{r}");
    }
}

/// A second that moved a device appends its line; the snapshot is
/// rewritten only at a run's first write and when the journal has
/// grown past the map; a second that moved nothing writes nothing.
#[test]
fn moves_are_appended_and_compacted_when_the_journal_outgrows_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join(SNAPSHOT);
    let id: Arc<str> = Arc::from("dev-1");
    let w = Watermarks::load(Some(dir.path()));
    w.moved(&id, t(1));
    w.persist();
    // The first write of a run is a snapshot, the journal empty.
    assert_eq!(journal_lines(dir.path()), 0);
    assert!(std::fs::read_to_string(&snapshot)
        .unwrap()
        .contains("dev-1"));
    // A marker in the snapshot shows whether it is rewritten.
    std::fs::write(&snapshot, b"{\"marker\":1}").unwrap();
    w.persist();
    w.moved(&id, t(1));
    w.persist();
    assert_eq!(
        journal_lines(dir.path()),
        0,
        "nothing moved: nothing written"
    );
    for n in 2..=MIN_JOURNAL_LINES as i64 + 1 {
        w.moved(&id, t(n));
        w.persist();
    }
    assert_eq!(std::fs::read(&snapshot).unwrap(), b"{\"marker\":1}");
    assert_eq!(journal_lines(dir.path()), MIN_JOURNAL_LINES);
    let loaded = Watermarks::load(Some(dir.path()));
    assert_eq!(loaded.last("dev-1"), Some(t(MIN_JOURNAL_LINES as i64 + 1)));
    assert_eq!(loaded.last("marker").map(|_| ()), Some(()));
    // One more line is past the map's size (and the floor): compacted.
    w.moved(&id, t(5_000));
    w.persist();
    assert_eq!(journal_lines(dir.path()), 0);
    let text = std::fs::read_to_string(&snapshot).unwrap();
    assert!(!text.contains("marker"), "{text}");
    assert_eq!(
        Watermarks::load(Some(dir.path())).last("dev-1"),
        Some(t(5_000))
    );
}

/// A journal cut anywhere in its last line (a crash mid-write) loads
/// every line before it, and that device's earlier read (or its new
/// one, when only the newline was lost); the next run's lines are not
/// swallowed by the torn one.
#[test]
fn a_torn_journal_tail_loses_only_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let w = Watermarks::load(Some(dir.path()));
    for (dev, n) in [("dev-1", 1), ("dev-2", 2)] {
        w.moved(&Arc::from(dev), t(n));
    }
    w.persist(); // the snapshot
    w.moved(&Arc::from("dev-3"), t(3));
    w.persist();
    w.moved(&Arc::from("dev-1"), t(10));
    w.persist();
    let journal = std::fs::read(dir.path().join(JOURNAL)).unwrap();
    let snapshot = std::fs::read(dir.path().join(SNAPSHOT)).unwrap();
    let last_line = journal[..journal.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    for cut in last_line..journal.len() {
        std::fs::write(dir.path().join(SNAPSHOT), &snapshot).unwrap();
        std::fs::write(dir.path().join(JOURNAL), &journal[..cut]).unwrap();
        let loaded = Watermarks::load(Some(dir.path()));
        assert_eq!(loaded.last("dev-2"), Some(t(2)), "cut at {cut}");
        assert_eq!(loaded.last("dev-3"), Some(t(3)), "cut at {cut}");
        let dev1 = loaded.last("dev-1");
        let whole = cut == journal.len() - 1;
        assert_eq!(dev1, Some(if whole { t(10) } else { t(1) }), "cut at {cut}");
        // The next run appends after the torn line, and keeps it all.
        loaded.moved(&Arc::from("dev-4"), t(4));
        loaded.persist();
        loaded.moved(&Arc::from("dev-5"), t(5));
        loaded.persist();
        let next = Watermarks::load(Some(dir.path()));
        for (dev, at) in [
            ("dev-1", dev1),
            ("dev-4", Some(t(4))),
            ("dev-5", Some(t(5))),
        ] {
            assert_eq!(next.last(dev), at, "{dev}, cut at {cut}");
        }
    }
}

/// A garbled line in the middle of the journal is skipped; the lines
/// around it are kept, and the snapshot under them.
#[test]
fn a_garbled_journal_line_is_skipped_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SNAPSHOT), br#"{"dev-0":7}"#).unwrap();
    std::fs::write(
        dir.path().join(JOURNAL),
        b"[\"dev-1\",1]\n[\"dev-2\",2\n\xff\xfe\n[\"dev-3\",3]\n[\"dev-1\",11]\n",
    )
    .unwrap();
    let w = Watermarks::load(Some(dir.path()));
    assert_eq!(w.last("dev-0"), Some(DateTime::from_timestamp_nanos(7)));
    assert_eq!(w.last("dev-1"), Some(DateTime::from_timestamp_nanos(11)));
    assert_eq!(w.last("dev-2"), None);
    assert_eq!(w.last("dev-3"), Some(DateTime::from_timestamp_nanos(3)));
    assert_eq!(w.journal.lock().lines, 5);
}

/// A crash after the new snapshot is in place but before the journal
/// is emptied loads the same map: the journal's last line for each
/// device is the snapshot's.
#[test]
fn a_crash_between_snapshot_and_emptied_journal_loads_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let w = Watermarks::load(Some(dir.path()));
    w.moved(&Arc::from("dev-1"), t(1));
    w.persist(); // the snapshot; the journal is empty
    let snapshot0 = std::fs::read(dir.path().join(SNAPSHOT)).unwrap();
    w.moved(&Arc::from("dev-1"), t(2));
    w.moved(&Arc::from("dev-2"), t(2));
    w.persist(); // appended
                 // A new run's first write compacts, with its own moves.
    let run2 = Watermarks::load(Some(dir.path()));
    run2.moved(&Arc::from("dev-1"), t(3));
    // What the journal holds just before it is emptied: the earlier
    // lines, the separating newline, this second's lines.
    let mut journal = std::fs::read(dir.path().join(JOURNAL)).unwrap();
    journal.extend_from_slice(b"\n[\"dev-1\",");
    journal.extend_from_slice(format!("{}]\n", t(3).timestamp_nanos_opt().unwrap()).as_bytes());
    run2.persist();
    assert_eq!(journal_lines(dir.path()), 0);
    // The crash: new snapshot, journal not yet emptied.
    std::fs::write(dir.path().join(JOURNAL), &journal).unwrap();
    let after = Watermarks::load(Some(dir.path()));
    assert_eq!(after.last("dev-1"), Some(t(3)));
    assert_eq!(after.last("dev-2"), Some(t(2)));
    // The crash before the rename: old snapshot, the same journal.
    std::fs::write(dir.path().join(SNAPSHOT), &snapshot0).unwrap();
    let before = Watermarks::load(Some(dir.path()));
    assert_eq!(before.last("dev-1"), Some(t(3)));
    assert_eq!(before.last("dev-2"), Some(t(2)));
}
