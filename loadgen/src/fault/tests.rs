//! Unit tests of the fault syntax and of the assignment of faults to devices.

use super::*;

fn p(s: &str) -> FaultSpec {
    s.parse().unwrap()
}

#[test]
fn parses_the_cli_syntax() {
    assert_eq!(
        p("dead=0.1"),
        FaultSpec {
            fault: Fault::Dead,
            select: Selection::Fraction(0.1)
        }
    );
    assert_eq!(
        p("dead=dev-00003,dev-00007").select,
        Selection::Devices(vec![3, 7])
    );
    assert_eq!(p("dead=3,7").select, Selection::Devices(vec![3, 7]));
    assert_eq!(p("dead=all").select, Selection::All);
    assert_eq!(p("dead=1").select, Selection::Devices(vec![1]));
    assert_eq!(p("dead=1.0").select, Selection::Fraction(1.0));
    assert_eq!(
        p("slow=0.1:3s"),
        FaultSpec {
            fault: Fault::Slow(Duration::from_secs(3)),
            select: Selection::Fraction(0.1)
        }
    );
    assert_eq!(
        p("slow=300ms").fault,
        Fault::Slow(Duration::from_millis(300))
    );
    assert_eq!(p("slow=300ms").select, Selection::All);
    assert_eq!(
        p("flap=0.1:5s/1.5s").fault,
        Fault::Flap {
            up: Duration::from_secs(5),
            down: Duration::from_millis(1500)
        }
    );
    assert_eq!(p("bad-status=0.05").fault, Fault::BadStatus);
    assert_eq!(
        p("no-history=1,2"),
        FaultSpec {
            fault: Fault::NoHistory,
            select: Selection::Devices(vec![1, 2])
        }
    );
    assert_eq!(
        p("max-sessions=1"),
        FaultSpec {
            fault: Fault::MaxSessions(1),
            select: Selection::All
        }
    );
    assert_eq!(p("max-sessions=0.1:2").select, Selection::Fraction(0.1));
    assert_eq!(
        p("max-sessions=4,5:2").select,
        Selection::Devices(vec![4, 5])
    );
    assert_eq!(
        p("mute=3:10s/5s"),
        FaultSpec {
            fault: Fault::Mute {
                after: Duration::from_secs(10),
                duration: Duration::from_secs(5)
            },
            select: Selection::Devices(vec![3])
        }
    );
    assert_eq!(p("mute=0s/1500ms").select, Selection::All);
    assert_eq!(p("mute=0.5:0s/2s").select, Selection::Fraction(0.5));
}

#[test]
fn display_round_trips() {
    for s in [
        "dead=0.1",
        "dead=3,7",
        "dead=all",
        "dead=1.0",
        "slow=0.25:300ms",
        "flap=2:5s/1500ms",
        "bad-status=0.05",
        "no-history=all",
        "no-history=0.5",
        "max-sessions=all:1",
        "mute=3:10s/5s",
        "mute=all:0s/1500ms",
    ] {
        assert_eq!(p(s).to_string(), s);
        assert_eq!(p(&p(s).to_string()), p(s));
    }
}

#[test]
fn rejects_bad_specs_clearly() {
    for (s, needle) in [
        ("dead", "expected KIND=SELECTION"),
        ("zombie=0.1", "unknown fault kind `zombie`"),
        ("dead=0.1:3s", "dead takes no parameter"),
        ("no-history=1:x", "no-history takes no parameter"),
        ("dead=1.5", "not between 0 and 1"),
        ("dead=x", "neither a fraction"),
        ("dead=dev-3", "neither a fraction"),
        ("slow=0.1", "has no unit"),
        ("slow=0.1:3h", "unknown unit `h`"),
        ("flap=0.1:5s", "UP/DOWN"),
        ("flap=0.1:0s/1s", "positive"),
        ("max-sessions=0.1:x", "session count"),
        ("max-sessions=0", "at least 1"),
        ("mute=3:10s", "AFTER/FOR"),
        ("mute=3:1s/0s", "must be positive"),
        ("mute=3:x/1s", "mute start (AFTER)"),
    ] {
        let e = s.parse::<FaultSpec>().unwrap_err();
        assert!(e.to_string().contains(needle), "{s}: {e}");
        assert!(
            e.to_string().starts_with(&format!("invalid fault `{s}`")),
            "{e}"
        );
    }
}

#[test]
fn fractions_take_disjoint_deterministic_blocks() {
    let specs = [p("dead=0.1"), p("slow=0.1:3s"), p("flap=0.1:5s/5s")];
    let a = assign(&specs, 0, 100);
    assert_eq!(a, assign(&specs, 0, 100), "deterministic");
    let faulty = a.iter().filter(|f| !f.is_empty()).count();
    assert_eq!(faulty, 30);
    assert!(a.iter().all(|f| f.len() <= 1), "disjoint");
    for kind in ["dead", "slow", "flap"] {
        let n = a
            .iter()
            .filter(|f| f.iter().any(|x| x.kind() == kind))
            .count();
        assert_eq!(n, 10, "{kind}");
    }
    // Spread over the index range, not the first 30 devices.
    assert!(a[..30].iter().any(|f| f.is_empty()));
}

#[test]
fn lists_all_and_small_fractions() {
    let a = assign(&[p("dead=3,7,99"), p("max-sessions=1")], 2, 8);
    assert_eq!(a[1], vec![Fault::Dead, Fault::MaxSessions(1)]);
    assert_eq!(a[5], vec![Fault::Dead, Fault::MaxSessions(1)]);
    assert_eq!(a[0], vec![Fault::MaxSessions(1)]);
    let a = assign(&[p("bad-status=0.05")], 0, 3);
    assert_eq!(
        a.iter().filter(|f| !f.is_empty()).count(),
        1,
        "at least one"
    );
    let a = assign(&[p("dead=0.0")], 0, 3);
    assert!(a.iter().all(|f| f.is_empty()));
}
