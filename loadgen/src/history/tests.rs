//! Unit tests of the history entries, the request's time domain and paging.

use super::*;

const T0: i64 = 1_767_225_600_123; // 2026-01-01T00:00:00.123Z

fn dt(ms: i64) -> DateTime {
    datetime_ms(ms).unwrap()
}

fn details(start: Option<i64>, end: Option<i64>, count: u32) -> ReadRawModifiedDetails {
    ReadRawModifiedDetails {
        is_read_modified: false,
        start_time: start.map_or_else(DateTime::null, dt),
        end_time: end.map_or_else(DateTime::null, dt),
        num_values_per_node: count,
        return_bounds: false,
    }
}

#[test]
fn grid_without_change_rate() {
    let h = history_between(3, 2, T0, T0 + 5_000, None);
    let starts: Vec<i64> = h.iter().map(|(at, _)| *at).collect();
    let s0 = (T0 / 1000 + 1) * 1000;
    assert_eq!(starts, (0..5).map(|k| s0 + k * 1000).collect::<Vec<_>>());
    for (at, v) in &h {
        assert_eq!(*v, model::value_at(3, 2, *at));
    }
    // Start inclusive, end exclusive.
    let h = history_between(3, 2, s0, s0 + 2_000, None);
    assert_eq!(
        h.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        [s0, s0 + 1000]
    );
    assert!(history_between(3, 2, s0 + 1, s0 + 1000, None).is_empty());
    assert!(history_between(3, 2, s0, s0, None).is_empty());
    assert_eq!(history_between(0, 5, -1500, 0, None)[0].0, -1000);
}

#[test]
fn steps_with_change_rate_are_every_step_start() {
    for (rate, tag) in [(2.0, 0), (3.0, 5), (0.5, 2), (100.0, 4)] {
        let p = steps::period_ms(rate);
        let (from, to) = (T0, T0 + 4_000);
        let mut expected = Vec::new();
        for ms in from..to {
            let (start, value) = steps::step_at(4, tag, ms, p);
            if start == ms {
                expected.push((start, value));
            }
        }
        assert!(!expected.is_empty());
        assert_eq!(history_between(4, tag, from, to, Some(rate)), expected);
    }
}

#[test]
fn ceil_to_milliseconds() {
    assert_eq!(ceil_ms(&dt(T0)), (T0, true));
    let sub = DateTime::from(chrono::DateTime::from_timestamp_nanos(T0 * 1_000_000 + 100));
    assert_eq!(ceil_ms(&sub), (T0 + 1, false));
    assert_eq!(ceil_ms(&dt(0)), (0, true));
}

#[test]
fn time_domains() {
    let d = |s, e, n| domain(&details(s, e, n));
    assert_eq!(
        d(Some(T0), Some(T0 + 10), 0),
        Ok(Domain {
            from_ms: T0,
            to_ms: Some(T0 + 10),
            total: None
        })
    );
    assert_eq!(d(Some(T0), Some(T0), 0).unwrap().to_ms, Some(T0 + 1));
    assert_eq!(
        d(Some(T0), None, 5),
        Ok(Domain {
            from_ms: T0,
            to_ms: None,
            total: Some(5)
        })
    );
    assert_eq!(
        d(Some(T0 + 10), Some(T0), 0),
        Err(StatusCode::BadInvalidArgument)
    );
    assert_eq!(d(None, Some(T0), 5), Err(StatusCode::BadInvalidArgument));
    for (s, e) in [(None, None), (Some(T0), None), (None, Some(T0))] {
        assert_eq!(d(s, e, 0), Err(StatusCode::BadInvalidTimestampArgument));
    }
    assert_eq!(
        d(None, None, 5),
        Err(StatusCode::BadInvalidTimestampArgument)
    );
    let mut modified = details(Some(T0), Some(T0 + 10), 0);
    modified.is_read_modified = true;
    assert_eq!(
        domain(&modified),
        Err(StatusCode::BadHistoryOperationUnsupported)
    );
}

fn settings(max: u32, retention_s: u64) -> HistorySettings {
    HistorySettings {
        max_values_per_call: max,
        retention: Duration::from_secs(retention_s),
        ..Default::default()
    }
}

/// Every page of a read, following the continuation points.
fn all_pages(
    domain: Domain,
    count: u32,
    s: &HistorySettings,
    period: Option<i64>,
    now: i64,
) -> Vec<Vec<(i64, ModelValue)>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let w = window(domain, cursor, count, s, now);
        let (entries, next) = page(1, 2, period, &w);
        pages.push(entries);
        match next {
            Some(c) => cursor = Some(c),
            None => return pages,
        }
    }
}

#[test]
fn pages_add_up_to_one_big_read() {
    let now = T0 + 60_000;
    let dom = domain(&details(Some(T0), Some(T0 + 30_000), 0)).unwrap();
    for period in [None, Some(500)] {
        let s = settings(1000, 3600);
        let whole = all_pages(dom, 0, &s, period, now);
        assert_eq!(whole.len(), 1);
        let rate = period.map(|p| 1000.0 / p as f64);
        assert_eq!(whole[0], history_between(1, 2, T0, T0 + 30_000, rate));
        let pages = all_pages(dom, 7, &s, period, now);
        assert!(pages.iter().all(|p| p.len() <= 7));
        assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 7));
        assert_eq!(pages.concat(), whole[0]);
        // The server's cap pages a read without a count too.
        let pages = all_pages(dom, 0, &settings(8, 3600), period, now);
        assert!(pages.iter().all(|p| p.len() <= 8));
        assert_eq!(pages.concat(), whole[0]);
    }
}

#[test]
fn start_and_count_only_returns_count_values() {
    let dom = domain(&details(Some(T0), None, 10)).unwrap();
    let pages = all_pages(dom, 10, &settings(4, 3600), None, T0 + 60_000);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [4, 4, 2],
        "10 values in pages of 4"
    );
    assert_eq!(pages.concat(), history_between(1, 2, T0, T0 + 10_000, None));
}

#[test]
fn retention_and_the_present_bound_the_window() {
    let now = T0 + 100_000;
    let dom = domain(&details(Some(T0), Some(T0 + 200_000), 0)).unwrap();
    let pages = all_pages(dom, 0, &settings(1000, 30), None, now);
    assert_eq!(
        pages.concat(),
        history_between(1, 2, now - 30_000, now + 1, None)
    );
    // Entirely past retention or in the future: nothing.
    let old = domain(&details(Some(T0), Some(T0 + 10_000), 0)).unwrap();
    assert!(all_pages(old, 0, &settings(1000, 30), None, now)[0].is_empty());
    let future = domain(&details(Some(now + 1), Some(now + 10_000), 0)).unwrap();
    assert!(all_pages(future, 0, &settings(1000, 3600), None, now)[0].is_empty());
}

#[test]
fn data_values_carry_the_entry() {
    let at = T0 - T0 % 1000;
    let v = model::value_at(1, 15, at);
    let dv = data_value(
        15,
        at,
        v.clone(),
        &NumericRange::None,
        TimestampsToReturn::Both,
    )
    .unwrap();
    assert_eq!(dv.value, Some(model_to_variant(v.clone())));
    assert_eq!(dv.status, Some(StatusCode::Good));
    assert_eq!(dv.source_timestamp, Some(dt(at)));
    assert_eq!(dv.server_timestamp, Some(dt(at)));
    let dv = data_value(
        15,
        at,
        v.clone(),
        &NumericRange::None,
        TimestampsToReturn::Source,
    )
    .unwrap();
    assert_eq!(
        (dv.source_timestamp, dv.server_timestamp),
        (Some(dt(at)), None)
    );
    let dv = data_value(
        15,
        at,
        v.clone(),
        &NumericRange::None,
        TimestampsToReturn::Server,
    )
    .unwrap();
    assert_eq!(
        (dv.source_timestamp, dv.server_timestamp),
        (None, Some(dt(at)))
    );
    let range: NumericRange = "1".parse().unwrap();
    let dv = data_value(15, at, v.clone(), &range, TimestampsToReturn::Both).unwrap();
    let ModelValue::DoubleArray(a) = v else {
        panic!("{v:?}")
    };
    assert_eq!(dv.value, Some(vec![a[1]].into()));
    let bad = data_value(
        7,
        at,
        model::value_at(1, 7, at),
        &NumericRange::None,
        TimestampsToReturn::Both,
    )
    .unwrap();
    assert_eq!(bad.value, None);
    assert_eq!(
        bad.status,
        Some(StatusCode::from(model::BAD_SENSOR_FAILURE))
    );
    assert_eq!(bad.source_timestamp, Some(dt(at)));
}

#[test]
fn access_levels() {
    assert_eq!(HistorySettings::default().tag_access_level(), 0x05);
    let off = HistorySettings {
        enabled: false,
        ..Default::default()
    };
    assert_eq!(off.tag_access_level(), 0x01);
}
