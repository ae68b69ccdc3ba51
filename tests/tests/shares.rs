//! Shares divide a contended node cap in proportion, measured at the receiver: a real daemon,
//! a node cap of 40 mbit/s, TCP senders as the slices' uids, meters in the lab's namespace.
//! Each test builds its own lab (namespace, veth, daemon directory).
//!
//! Each figure is the median of several runs; a run starts fresh connections, lets them settle
//! (TCP's start, a sync) and measures what the receiver got over a window. The tolerances are
//! the issue's: a split within ±25 % of its ratio, percentages within ±7 points, a lone sender
//! at ≥ 90 % of the cap (the receiver counts payload: the cap also carries the headers, about
//! 4 % of it), a change re-divided within two intervals.
//!
//! Under emulation (the VM checks under TCG, `BWMON_SLOW=1`) runs are longer and the tolerances
//! the same; only the check that two contending senders fill the cap is left out there (a
//! guest starved of CPU on a busy host cannot always send 40 mbit/s: 7 to 25 mbit/s were seen,
//! split 1 : 2.9 and 24 / 25 / 51 % all the same).

use std::{
    net::{IpAddr, SocketAddr},
    thread::sleep,
    time::Duration,
};

use bwmon_tests::{Daemon, Lab, Meter, median, rates, schema::assert_document, send_as, u};

const CAP: f64 = 40e6;
const CONFIG: &str = "node_cap = \"40mbit\"\nperiod = \"1d\"\ninterval = \"1s\"\n";
/// One sync interval (the config's).
const INTERVAL: Duration = Duration::from_secs(1);

/// How long a run lets its flows settle before measuring, and how long it measures.
fn timing() -> (Duration, Duration) {
    if slow() {
        // A guest's TCP and daemon start slower; its three runs still fit in CI's minutes.
        (Duration::from_millis(2500), Duration::from_secs(3))
    } else {
        (Duration::from_millis(1500), Duration::from_secs(3))
    }
}

/// Under emulation (TCG): everything takes longer.
fn slow() -> bool {
    std::env::var_os("BWMON_SLOW").is_some_and(|v| v == "1")
}

const RUNS: usize = 3;

/// A slices file: `(name, xid, share)`.
fn slices(list: &[(&str, u32, u32)]) -> String {
    list.iter()
        .map(|(name, xid, share)| {
            format!("[[slice]]\nname = \"{name}\"\nxid = {xid}\nnet_share = {share}\n")
        })
        .collect()
}

/// One run: each `(uid, flows)` sends to a meter of its own on `host` (ports from `port`);
/// what each meter received per second over the window, after settling.
fn run(lab: &Lab, host: IpAddr, senders: &[(u32, usize)], port: u16) -> Vec<f64> {
    let meters: Vec<Meter> = senders
        .iter()
        .zip(port..)
        .map(|((_, flows), p)| lab.meter(SocketAddr::new(host, p), *flows))
        .collect();
    let flows: Vec<_> = senders
        .iter()
        .zip(port..)
        .map(|((uid, flows), p)| send_as(*uid, SocketAddr::new(host, p), *flows))
        .collect();
    let (settle, window) = timing();
    sleep(settle);
    let got = rates(&meters.iter().collect::<Vec<_>>(), window);
    drop(flows);
    got
}

/// [`RUNS`] runs to `host`; each run's rates, in mbit/s for the log.
fn runs(lab: &Lab, host: IpAddr, senders: &[(u32, usize)], port: u16) -> Vec<Vec<f64>> {
    (0..RUNS)
        .map(|i| {
            let got = run(lab, host, senders, port + (i as u16) * 16);
            eprintln!(
                "run {i}: {:?} mbit/s",
                got.iter()
                    .map(|r| (r / 1e4).round() / 100.0)
                    .collect::<Vec<_>>()
            );
            got
        })
        .collect()
}

/// What `name` is guaranteed now, from the daemon's status (bit/s).
fn guaranteed(d: &Daemon, name: &str) -> u64 {
    guaranteed_each(d, &[name])[0]
}

/// What each of `names` is guaranteed now, all from one status document (two documents may be
/// a sync apart, and a sync may divide the cap differently).
fn guaranteed_each(d: &Daemon, names: &[&str]) -> Vec<u64> {
    let status = d.status();
    assert_document("status", &status);
    names
        .iter()
        .map(|name| {
            status["slices"]
                .as_array()
                .and_then(|all| all.iter().find(|s| s["name"] == *name))
                .map(|s| u(s, "guaranteed_bps"))
                .unwrap_or_else(|| panic!("no slice {name} in {status}"))
        })
        .collect()
}

/// What `name` is guaranteed once it is `want`, asking again each half interval for one more
/// interval: a neighbour solicitation in an interval makes the default leaf a sender for that
/// interval.
fn guaranteed_once(d: &Daemon, name: &str, want: u64) -> u64 {
    let mut got = guaranteed(d, name);
    for _ in 0..2 {
        if got == want {
            break;
        }
        sleep(INTERVAL / 2);
        got = guaranteed(d, name);
    }
    got
}

/// Runs of two senders with shares 1 and 3: the median ratio within ±25 % of 3, every run
/// clearly in favour of the larger share (not a median that passed by luck), the cap used
/// (on the host).
fn one_to_three(all: &[Vec<f64>], what: &str) {
    let ratios: Vec<f64> = all.iter().map(|r| r[1] / r[0]).collect();
    let ratio = median(&ratios);
    let total = median(&all.iter().map(|r| r[0] + r[1]).collect::<Vec<_>>());
    eprintln!(
        "{what} shares 1 : 3, one flow each: median ratio {ratio:.2}, total {:.1} mbit/s",
        total / 1e6
    );
    assert!(
        (2.25..=3.75).contains(&ratio),
        "{what}: 1 : {ratio:.2}, expected 1 : 3 ± 25 %"
    );
    assert!(
        ratios.iter().all(|r| *r >= 1.5),
        "{what}: a run near 1 : 1: {ratios:.2?}"
    );
    // Saturated, so the split is HTB's. Not under emulation: there a starved guest's CPU,
    // not the cap, bounds the total (the split holds all the same).
    assert!(
        slow() || total >= 0.9 * CAP,
        "{what}: the cap is used: {total:.0} bit/s"
    );
}

#[test]
fn shares_one_to_three_split_a_saturated_cap_one_to_three() {
    const A: u32 = 4831;
    const B: u32 = 4832;
    let lab = Lab::new();
    let d = Daemon::start(&lab, CONFIG, &slices(&[("a", A, 1), ("b", B, 3)]));
    let all = runs(&lab, lab.general_v4.into(), &[(A, 1), (B, 1)], 5801);
    one_to_three(&all, "general");

    // The status says the same while both send.
    let (settle, _) = timing();
    let host: IpAddr = lab.general_v4.into();
    let meters = [
        lab.meter(SocketAddr::new(host, 5901), 1),
        lab.meter(SocketAddr::new(host, 5902), 1),
    ];
    let _flows = [
        send_as(A, SocketAddr::new(host, 5901), 1),
        send_as(B, SocketAddr::new(host, 5902), 1),
    ];
    sleep(settle + 2 * INTERVAL);
    // Both figures from one status document, and `slice show` beside it; asked again for a few
    // intervals while they disagree: an interval in which a third leaf sent (a neighbour
    // solicitation through the default leaf) or a flow paused is divided differently (a guest
    // under TCG read a 10.0 / 13.3 mbit split from two documents a sync apart).
    let split = || {
        let ab = guaranteed_each(&d, &["a", "b"]);
        let show = d.command(&["slice", "show", "b"]);
        (
            ab[0],
            ab[1],
            String::from_utf8_lossy(&show.stdout).into_owned(),
        )
    };
    let settled = |(a, b, show): &(u64, u64, String)| {
        show.contains("guaranteed 30mbit now (75.0 % of the 40mbit cap")
            && b.abs_diff(3 * a) <= a / 10
    };
    let mut now = split();
    for _ in 0..6 {
        if settled(&now) {
            break;
        }
        sleep(INTERVAL / 2);
        now = split();
    }
    let (a, b, show) = now;
    eprintln!("guaranteed now: a {a}, b {b} bit/s; bwmon slice show b:\n{show}");
    drop(meters);
    assert!(
        show.contains("guaranteed 30mbit now (75.0 % of the 40mbit cap"),
        "{show}"
    );
    assert!(a + b <= CAP as u64, "{a} + {b}");
    assert!(
        b.abs_diff(3 * a) <= a / 10 && a >= (CAP * 0.2) as u64,
        "a {a}, b {b}: expected 1 : 3 of the cap"
    );
}

#[test]
fn exempt_shares_one_to_three_split_the_exempt_max_one_to_three() {
    const A: u32 = 4836;
    const B: u32 = 4837;
    let lab = Lab::new();
    let config = format!(
        "node_cap = \"1gbit\"\nexempt_max = \"40mbit\"\nexempt_prefixes = [\"{}\"]\nperiod = \"1d\"\ninterval = \"1s\"\n",
        lab.exempt_net_v4
    );
    let slices = format!(
        "[[slice]]\nname = \"a\"\nxid = {A}\n[[slice]]\nname = \"b\"\nxid = {B}\nnet_i2_share = 3\n"
    );
    let _d = Daemon::start(&lab, &config, &slices);
    let all = runs(&lab, lab.exempt_v4.into(), &[(A, 1), (B, 1)], 5806);
    one_to_three(&all, "exempt");
}

#[test]
fn shares_one_one_two_give_a_quarter_a_quarter_and_a_half() {
    const UIDS: [u32; 3] = [4841, 4842, 4843];
    let lab = Lab::new();
    let _d = Daemon::start(
        &lab,
        CONFIG,
        &slices(&[("a", UIDS[0], 1), ("b", UIDS[1], 1), ("c", UIDS[2], 2)]),
    );
    let all = runs(&lab, lab.general_v4.into(), &UIDS.map(|uid| (uid, 1)), 5811);
    let percent = |i: usize| {
        median(
            &all.iter()
                .map(|r| r[i] * 100.0 / r.iter().sum::<f64>())
                .collect::<Vec<_>>(),
        )
    };
    let got = [percent(0), percent(1), percent(2)];
    eprintln!("shares 1 : 1 : 2: median {got:.1?} % of what arrived");
    for (p, want) in got.iter().zip([25.0, 25.0, 50.0]) {
        assert!(
            (p - want).abs() <= 7.0,
            "{got:.1?} %, expected 25 / 25 / 50 ± 7 points"
        );
    }
}

#[test]
fn eight_flows_take_no_more_than_one_flow_at_equal_shares() {
    const MANY: u32 = 4851;
    const ONE: u32 = 4852;
    let lab = Lab::new();
    let _d = Daemon::start(&lab, CONFIG, &slices(&[("many", MANY, 1), ("one", ONE, 1)]));
    let all = runs(&lab, lab.general_v4.into(), &[(MANY, 8), (ONE, 1)], 5821);
    let ratio = median(&all.iter().map(|r| r[0] / r[1]).collect::<Vec<_>>());
    eprintln!("eight flows against one at equal shares: median ratio {ratio:.2}");
    assert!(
        (0.75..=1.25).contains(&ratio),
        "{ratio:.2} : 1, expected 1 : 1 ± 25 %"
    );
}

#[test]
fn a_lone_sender_gets_the_whole_cap() {
    const A: u32 = 4861;
    let lab = Lab::new();
    // Others are in the slices file, idle; a has the smallest share.
    let d = Daemon::start(
        &lab,
        CONFIG,
        &slices(&[("a", A, 1), ("b", 4862, 3), ("c", 4863, 5)]),
    );
    let all = runs(&lab, lab.general_v4.into(), &[(A, 1)], 5831);
    let got = median(&all.iter().map(|r| r[0]).collect::<Vec<_>>());
    eprintln!("a lone sender: median {:.1} mbit/s", got / 1e6);
    assert!(got >= 0.9 * CAP, "{got:.0} bit/s of {CAP}");
    // Alone, it is guaranteed the cap: the idle ones' min rates are not held for them.
    let host: IpAddr = lab.general_v4.into();
    let _m = lab.meter(SocketAddr::new(host, 5931), 1);
    let _f = send_as(A, SocketAddr::new(host, 5931), 1);
    sleep(timing().0 + 2 * INTERVAL);
    assert_eq!(guaranteed_once(&d, "a", CAP as u64), CAP as u64);
    assert_eq!(guaranteed(&d, "c"), 1000, "idle: its min rate");
}

#[test]
fn a_slice_arriving_or_leaving_re_divides_within_two_intervals() {
    const A: u32 = 4871;
    const B: u32 = 4872;
    let lab = Lab::new();
    let d = Daemon::start(&lab, CONFIG, &slices(&[("a", A, 1), ("b", B, 3)]));
    let host: IpAddr = lab.general_v4.into();
    let (settle, window) = timing();
    let meters = [
        lab.meter(SocketAddr::new(host, 5841), 1),
        lab.meter(SocketAddr::new(host, 5842), 1),
    ];
    let both = || meters.iter().collect::<Vec<_>>();
    let a = send_as(A, SocketAddr::new(host, 5841), 1);
    sleep(settle);
    let alone = rates(&both(), window);
    eprintln!("a alone: {:.1} mbit/s", alone[0] / 1e6);
    assert!(alone[0] >= 0.9 * CAP, "a alone: {alone:?}");

    // b arrives: two intervals later the cap is divided 1 : 3.
    let b = send_as(B, SocketAddr::new(host, 5842), 1);
    sleep(2 * INTERVAL);
    let g = guaranteed_each(&d, &["a", "b"]);
    let (ga, gb) = (g[0], g[1]);
    let shared = rates(&both(), window);
    let ratio = shared[1] / shared[0];
    eprintln!(
        "b arrived: a {:.1}, b {:.1} mbit/s (1 : {ratio:.2}); guaranteed a {ga}, b {gb}",
        shared[0] / 1e6,
        shared[1] / 1e6
    );
    assert!(
        (2.25..=3.75).contains(&ratio),
        "1 : {ratio:.2} after b arrived, expected 1 : 3 ± 25 %"
    );
    assert!(
        gb.abs_diff(3 * ga) <= ga / 10,
        "guaranteed a {ga}, b {gb} two intervals after b arrived"
    );

    // b leaves: two intervals later a has the cap again.
    drop(b);
    sleep(2 * INTERVAL);
    let ga = guaranteed_once(&d, "a", CAP as u64);
    let again = rates(&both(), window);
    eprintln!("b left: a {:.1} mbit/s, guaranteed {ga}", again[0] / 1e6);
    assert!(again[0] >= 0.9 * CAP, "a after b left: {again:?}");
    assert_eq!(ga, CAP as u64, "a is guaranteed the cap again");
    drop(a);
}
