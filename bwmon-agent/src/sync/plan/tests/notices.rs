use proptest::prelude::*;

use super::*;
use crate::{
    policy::{
        levers::{self, Lever, Levers},
        warnings::Percent,
    },
    state::{Channels, NoticeKind},
};

const KIB: u64 = 1024;
const ALICE: u32 = 1001;

fn levels(ps: &[u8]) -> Levels {
    ps.iter().filter_map(|p| Percent::new(*p)).collect()
}

/// A world warning at `warn` %, with a webhook or not.
fn world(warn: &[u8], webhook: bool) -> World {
    let mut w = World::new(false);
    w.settings.warn_at = levels(warn);
    w.settings.webhook = webhook;
    w
}

/// alice with a budget of 1000 KiB and her threshold at `thresh_kbyte`.
fn alice(thresh_kbyte: u64) -> [LiveSlice; 2] {
    let mut a = slice("alice", ALICE);
    a.limits.general.thresh = Bytes(thresh_kbyte * KIB);
    [root(), a]
}

/// What a plan tells, in order: each notice's kind, its classes' levels and where it goes.
fn told(p: &Plan) -> Vec<(&'static str, Vec<Option<u8>>, Channels)> {
    p.new_notices
        .iter()
        .map(|n| {
            let levels = n
                .classes
                .iter()
                .map(|c| c.level.map(Percent::get))
                .collect();
            (n.kind.name(), levels, n.pending)
        })
        .collect()
}

const MAIL: Channels = Channels {
    mail: true,
    webhook: false,
};
const BOTH: Channels = Channels {
    mail: true,
    webhook: true,
};

/// The operator grants alice `kib` KiB more general budget in her period.
fn grant(w: &mut World, kib: u64) {
    let start = w.state.slices[&ALICE].record.period_start;
    let levers = w.state.levers.get(&ALICE).copied();
    let levers = levers.filter(|l| l.period_start == start);
    let more = Lever::Grant {
        class: TrafficClass::General,
        amount: Bytes(kib * KIB),
    };
    let levers = levers.unwrap_or(Levers::new(start)).pull(more).unwrap();
    w.state.levers.insert(ALICE, levers);
}

/// Sends alice what brings her general use to `kib` KiB at the next sync.
fn use_up_to(w: &mut World, kib: u64) {
    let used = w.state.slices[&ALICE].record.used(TrafficClass::General);
    w.send(ALICE, kib * KIB - used.0);
}

#[test]
fn each_level_is_told_once_below_and_above_the_threshold_and_a_new_period_clears_them() {
    let mut w = world(&[50, 90], false);
    let live = alice(800);
    w.sync(&live, 1000);
    use_up_to(&mut w, 600);
    let p = w.sync(&live, 1010);
    assert_eq!(told(&p), [("warned", vec![Some(50)], MAIL)]);
    assert_eq!(line(&p, "alice").warned_percent, [50]);
    use_up_to(&mut w, 700);
    assert!(told(&w.sync(&live, 1011)).is_empty(), "50 % is told once");
    // Past the threshold: capped, told by the cap's notice (no level crossed with it).
    use_up_to(&mut w, 850);
    let p = w.sync(&live, 1020);
    assert_eq!(told(&p), [("capped", vec![None], MAIL)]);
    // A level above the threshold is told all the same, while capped.
    use_up_to(&mut w, 950);
    let p = w.sync(&live, 1030);
    assert_eq!(told(&p), [("warned", vec![Some(90)], MAIL)]);
    assert_eq!(line(&p, "alice").warned_percent, [50, 90]);
    assert!(p.events.iter().any(|e| matches!(e, Event::Warned(..))));
    // The next period clears them: told again when used again.
    let p = w.sync(&live, 1100);
    assert!(line(&p, "alice").warned_percent.is_empty());
    use_up_to(&mut w, 600);
    assert_eq!(
        told(&w.sync(&live, 1110)),
        [("warned", vec![Some(50)], MAIL)]
    );
}

#[test]
fn a_level_crossed_with_the_cap_is_told_by_the_caps_notice_alone() {
    let mut w = world(&[80], false);
    let live = alice(800);
    w.sync(&live, 1000);
    use_up_to(&mut w, 850);
    let p = w.sync(&live, 1010);
    assert_eq!(told(&p), [("capped", vec![Some(80)], MAIL)]);
    assert_eq!(line(&p, "alice").warned_percent, [80], "said, with the cap");
    use_up_to(&mut w, 900);
    assert!(told(&w.sync(&live, 1011)).is_empty());
}

#[test]
fn several_levels_crossed_at_once_are_told_as_the_highest_and_the_lower_never_after() {
    let mut w = world(&[50, 60, 70], false);
    let live = alice(1000);
    w.sync(&live, 1000);
    use_up_to(&mut w, 750);
    let p = w.sync(&live, 1010);
    assert_eq!(told(&p), [("warned", vec![Some(70)], MAIL)]);
    assert_eq!(line(&p, "alice").warned_percent, [70]);
    use_up_to(&mut w, 800);
    assert!(told(&w.sync(&live, 1020)).is_empty());
}

#[test]
fn a_level_told_before_a_grant_stays_told_and_the_next_counts_on_the_new_budget() {
    let mut w = world(&[80, 95], false);
    let live = alice(1000);
    w.sync(&live, 1000);
    use_up_to(&mut w, 810);
    assert_eq!(
        told(&w.sync(&live, 1010)),
        [("warned", vec![Some(80)], MAIL)]
    );
    // A grant of 1000 KiB: 2000 KiB in this period.
    grant(&mut w, 1000);
    use_up_to(&mut w, 1700);
    assert!(
        told(&w.sync(&live, 1020)).is_empty(),
        "85 % of the new budget"
    );
    use_up_to(&mut w, 1950);
    let p = w.sync(&live, 1030);
    assert_eq!(told(&p), [("warned", vec![Some(95)], MAIL)]);
    assert_eq!(p.new_notices[0].classes[0].budget, Bytes(2000 * KIB));
}

#[test]
fn a_reset_lever_starts_the_levels_afresh() {
    let mut w = world(&[50], false);
    let live = alice(1000);
    w.sync(&live, 1000);
    use_up_to(&mut w, 600);
    assert_eq!(told(&w.sync(&live, 1010)).len(), 1);
    let s = w.state.slices.get_mut(&ALICE).unwrap();
    s.record = levers::reset(&s.record, 1020);
    w.send(ALICE, 600 * KIB);
    assert_eq!(
        told(&w.sync(&live, 1030)),
        [("warned", vec![Some(50)], MAIL)]
    );
}

#[test]
fn dry_run_tells_nobody_and_says_once_whom_it_would_warn() {
    let mut w = world(&[50], true);
    w.settings.dry_run = true;
    let live = alice(800);
    w.sync(&live, 1000);
    use_up_to(&mut w, 600);
    let p = w.sync(&live, 1010);
    assert!(p.new_notices.is_empty() && p.state.notices.is_empty());
    let would = |p: &Plan| {
        p.events
            .iter()
            .filter(|e| matches!(e, Event::WouldWarn(..)))
            .count()
    };
    assert_eq!(would(&p), 1, "{:?}", p.events);
    assert_eq!(line(&p, "alice").warned_percent, [50]);
    use_up_to(&mut w, 700);
    assert_eq!(would(&w.sync(&live, 1011)), 0, "said once");
}

#[test]
fn root_is_never_warned() {
    let mut w = world(&[1], false);
    w.sync(&[root()], 1000);
    w.send(ROOT_XID, 1 << 30);
    assert!(w.sync(&[root()], 1010).new_notices.is_empty());
}

#[test]
fn the_webhook_also_hears_a_cap_lifted_a_cap_again_and_the_new_period() {
    let mut w = world(&[50], true);
    let live = [root(), slice("alice", ALICE), slice("bob", 1002)];
    w.sync(&live, 1000);
    use_up_to(&mut w, 600);
    assert_eq!(
        told(&w.sync(&live, 1010)),
        [("warned", vec![Some(50)], BOTH)]
    );
    use_up_to(&mut w, 850);
    assert_eq!(told(&w.sync(&live, 1020)), [("capped", vec![None], BOTH)]);
    // A grant lifts the cap: the webhook alone hears it.
    grant(&mut w, 1000);
    let p = w.sync(&live, 1030);
    assert_eq!(told(&p), [("uncapped", vec![None], Channels::WEBHOOK)]);
    assert!(!line(&p, "alice").capped);
    // Capped again in the same period (the grant raised the threshold to 1800 KiB): no second
    // mail, the webhook hears it.
    use_up_to(&mut w, 1850);
    let p = w.sync(&live, 1040);
    assert_eq!(told(&p), [("capped", vec![None], Channels::WEBHOOK)]);
    // The period ends: the webhook hears of alice (told this period), not of bob (quiet).
    let p = w.sync(&live, 1100);
    assert_eq!(
        told(&p),
        [("new_period", vec![None, None], Channels::WEBHOOK)]
    );
    let n = &p.new_notices[0];
    assert_eq!(n.slice, "alice");
    assert_eq!(n.period_start, 1100);
    assert_eq!(
        n.classes[0].used,
        Bytes(1850 * KIB),
        "the period that ended"
    );
    // Every notice got its own id, in order: this is the fifth. The others' period is over:
    // undelivered, they are dropped.
    assert_eq!(n.id.0, 4);
    let left: Vec<&NoticeKind> = p.state.notices.iter().map(|n| &n.kind).collect();
    assert_eq!(left, [&NoticeKind::NewPeriod]);
}

/// One step of the property test: what alice sends (KiB), how far the clock moves, and
/// whether the operator grants 500 KiB or resets her period first.
#[derive(Clone, Debug)]
enum Step {
    Send(u64, u64),
    Grant,
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u64..300, 0u64..40).prop_map(|(kib, secs)| Step::Send(kib, secs)),
        1 => Just(Step::Grant),
        1 => Just(Step::Reset),
    ]
}

proptest! {
    #[test]
    fn a_level_is_told_at_most_once_per_period_within_it_and_in_rising_order(
        warn in proptest::collection::vec(1u8..=100, 1..5),
        thresh in 100u64..=1000,
        webhook in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut w = world(&warn, webhook);
        let live = alice(thresh);
        let mut now = 1000;
        w.sync(&live, now);
        // (period start, class) → the levels told, in order.
        let mut said: std::collections::HashMap<(u64, TrafficClass), Vec<u8>> = Default::default();
        for s in steps {
            match s {
                Step::Send(kib, secs) => {
                    w.send(ALICE, kib * KIB);
                    now += secs;
                }
                Step::Grant => grant(&mut w, 500),
                Step::Reset => {
                    let s = w.state.slices.get_mut(&ALICE).unwrap();
                    s.record = levers::reset(&s.record, now);
                    w.state.levers.remove(&ALICE);
                    // A period of its own, even when it starts at an earlier one's instant.
                    for class in TrafficClass::ALL {
                        said.remove(&(now, class));
                    }
                }
            }
            let p = w.sync(&live, now);
            let record = p.state.slices[&ALICE].record;
            for n in &p.new_notices {
                prop_assert!(n.decided_at < n.period_end, "after its period: {n:?}");
                prop_assert_eq!(n.period_start, record.period_start, "another period's");
                prop_assert_eq!(n.pending.webhook, webhook);
                for c in &n.classes {
                    let Some(level) = c.level else { continue };
                    prop_assert!(warn.contains(&level.get()));
                    let told = said.entry((n.period_start, c.class)).or_default();
                    prop_assert!(told.last().is_none_or(|l| *l < level.get()), "{told:?} then {level}");
                    told.push(level.get());
                }
            }
            for (class, levels) in record.warned.iter() {
                let told = said.get(&(record.period_start, class)).cloned().unwrap_or_default();
                prop_assert_eq!(levels.percents(), told, "the record keeps what was told");
            }
        }
    }
}
