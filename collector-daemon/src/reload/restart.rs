//! Which sections of a changed configuration a reload cannot apply: they
//! are said once per reload, and a restart applies them.

use collector_core::CollectorConfig;

/// The sections of `new` that differ from `old` and need a restart.
pub(super) fn restart_needed(old: &CollectorConfig, new: &CollectorConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |same: bool, name: &'static str| {
        if !same {
            out.push(name);
        }
    };
    check(old.collector == new.collector, "collector");
    check(
        old.schedule.phase_slots == new.schedule.phase_slots,
        "schedule.phase_slots",
    );
    check(old.workers == new.workers, "workers");
    check(old.breaker == new.breaker, "breaker");
    check(old.batch == new.batch, "batch");
    check(old.kafka == new.kafka, "kafka");
    check(old.spill == new.spill, "spill");
    check(old.dead_letters == new.dead_letters, "dead_letters");
    check(old.http == new.http, "http");
    check(old.protocol == new.protocol, "security/session");
    check(old.registry == new.registry, "registry");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_slots_need_a_restart_and_the_interval_does_not() {
        let old = CollectorConfig::default();
        let mut new = old.clone();
        new.schedule.interval = old.schedule.interval * 2;
        assert!(restart_needed(&old, &new).is_empty());
        new.schedule.phase_slots = Some(1000);
        assert_eq!(restart_needed(&old, &new), vec!["schedule.phase_slots"]);
    }
}
