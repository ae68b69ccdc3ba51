//! The datapath against HTB: slices are charged exactly what the root qdisc accepted (what
//! leaves), split into general and exempt, steered into their classes, over IPv4 and IPv6.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use bwmon_agent::datapath::slots::QUIET;
use bwmon_agent::{
    class::PerClass,
    datapath::{Datapath, Snapshot},
    htb::Minor,
};
use bwmon_common::{ClassIds, Counter, HTB_MAJOR, XidCounters, names, tc_handle};
use bwmon_tests::{Lab, older::OlderLayout, send_tcp_as, send_udp_as};
use ipnet::IpNet;

fn open(lab: &Lab, classes: &[(u32, u16, u16)]) -> Datapath {
    let mut dp = Datapath::open(&lab.datapath_options()).expect("open the datapath");
    let map: HashMap<u32, ClassIds> = classes
        .iter()
        .map(|(xid, g, e)| {
            (
                *xid,
                ClassIds {
                    general: tc_handle(HTB_MAJOR, u32::from(*g)),
                    exempt: tc_handle(HTB_MAJOR, u32::from(*e)),
                },
            )
        })
        .collect();
    dp.set_classes(&map).unwrap();
    let exempt: Vec<IpNet> = vec![
        lab.exempt_net_v4.parse().unwrap(),
        lab.exempt_net_v6.parse().unwrap(),
    ];
    dp.set_exempt(&exempt).unwrap();
    dp
}

/// Bytes charged to `xid` in its class with `minor` (its general or exempt leaf).
fn charged(s: &Snapshot, xid: u32, general: u16, exempt: u16, minor: u16) -> u64 {
    let leaves = PerClass {
        general: Some(Minor(general)),
        exempt: Some(Minor(exempt)),
    };
    // The production formula, with the leaves' drops counted from zero (fresh minors).
    let c = s.charged_bytes(xid, leaves, PerClass::default());
    if minor == general {
        c.general
    } else {
        c.exempt
    }
}

/// `ours` is within 0.5 % of `htb`.
fn assert_close(what: &str, ours: u64, htb: u64) {
    let diff = ours.abs_diff(htb) as f64;
    eprintln!(
        "{what}: charged {ours}, HTB {htb}, ratio {:.6}",
        ours as f64 / htb.max(1) as f64
    );
    assert!(
        htb > 0 && diff <= htb as f64 * 0.005,
        "{what}: charged {ours} bytes, HTB sent {htb} (off by {:.3} %)",
        diff * 100.0 / htb.max(1) as f64
    );
}

#[test]
fn tcp_charges_match_htb_per_class_for_ipv4_and_ipv6() {
    let lab = Lab::new();
    const V4: u32 = 4201;
    const V6: u32 = 4202;
    lab.htb_fixture(&[
        (0x100, "10gbit"),
        (0x101, "10gbit"),
        (0x102, "10gbit"),
        (0x103, "10gbit"),
    ]);
    let dp = open(&lab, &[(V4, 0x100, 0x101), (V6, 0x102, 0x103)]);

    let sinks = [
        (V4, SocketAddr::new(lab.general_v4.into(), 5301), 8u64 << 20),
        (V4, SocketAddr::new(lab.exempt_v4.into(), 5302), 3 << 20),
        (V6, SocketAddr::new(lab.general_v6.into(), 5303), 6 << 20),
        (V6, SocketAddr::new(lab.exempt_v6.into(), 5304), 2 << 20),
    ];
    for (uid, addr, bytes) in sinks {
        let sink = lab.tcp_sink(addr, 1);
        send_tcp_as(uid, addr, bytes);
        assert_eq!(sink.join().unwrap(), bytes);
    }
    lab.wait_for_empty_queues();
    let snap = dp.snapshot().unwrap();
    let classes = lab.tc_classes();
    let of = |minor: u16| match minor {
        0x100 | 0x101 => charged(&snap, V4, 0x100, 0x101, minor),
        _ => charged(&snap, V6, 0x102, 0x103, minor),
    };
    for minor in [0x100u16, 0x101, 0x102, 0x103] {
        let htb = classes[&(1, u32::from(minor))].bytes;
        assert_close(&format!("class 1:{minor:x}"), of(minor), htb);
    }
    // The split follows the destination: each class got its payload plus headers (up to 8 % for
    // IPv6 with timestamps), not the others'.
    for (minor, payload) in [
        (0x100u16, 8u64 << 20),
        (0x101, 3 << 20),
        (0x102, 6 << 20),
        (0x103, 2 << 20),
    ] {
        let got = of(minor);
        assert!(
            (payload..payload * 108 / 100).contains(&got),
            "class 1:{minor:x} charged {got} for a {payload}-byte payload"
        );
    }
    // Offered per xid tells general from exempt the same way.
    let v4 = snap.offered[&V4];
    assert!(
        v4.general.bytes >= 8 << 20 && v4.exempt.bytes >= 3 << 20,
        "{v4:?}"
    );
    assert!(v4.exempt.bytes < (3 << 20) * 106 / 100, "{v4:?}");
    // Nothing of these uids fell into the default class: only neighbour discovery and ARP.
    let default_bytes = classes[&(1, 2)].bytes;
    assert!(default_bytes < 10_000, "default class sent {default_bytes}");
}

#[test]
fn udp_flood_into_a_1mbit_class_is_charged_only_what_leaves() {
    let lab = Lab::new();
    const V4: u32 = 4211;
    const V6: u32 = 4212;
    lab.htb_fixture(&[
        (0x110, "1mbit"),
        (0x111, "1mbit"),
        (0x112, "1mbit"),
        (0x113, "1mbit"),
    ]);
    let dp = open(&lab, &[(V4, 0x110, 0x111), (V6, 0x112, 0x113)]);

    let wire4 = send_udp_as(V4, SocketAddr::new(lab.general_v4.into(), 9), 3000, 1200);
    let wire6 = send_udp_as(V6, SocketAddr::new(lab.general_v6.into(), 9), 3000, 1200);
    lab.wait_for_empty_queues();
    let snap = dp.snapshot().unwrap();
    let classes = lab.tc_classes();
    for (minor, xid, wire) in [(0x110u16, V4, wire4), (0x112, V6, wire6)] {
        let htb = classes[&(1, u32::from(minor))];
        assert!(
            htb.drops > 1000,
            "class 1:{minor:x} should have dropped most: {htb:?}"
        );
        let ours = charged(&snap, xid, minor, minor + 1, minor);
        assert_eq!(
            snap.dropped[&Minor(minor)].packets,
            htb.drops,
            "drops seen vs HTB's"
        );
        assert_close(&format!("class 1:{minor:x}"), ours, htb.bytes);
        // Offered is everything the uid sent; charged is a small part of it.
        let offered = snap.offered[&xid].general;
        assert_eq!(offered.bytes, 3000 * wire, "offered by xid {xid}");
        assert!(
            ours * 5 < offered.bytes,
            "charged {ours} of {} offered",
            offered.bytes
        );
    }
}

#[test]
fn exempt_traffic_stays_exempt_when_a_new_load_finds_the_tries_without_a_filter() {
    // A datapath from before the exempt filter: its pins hold the tries and no filter.
    let lab = Lab::new();
    drop(open(&lab, &[]));
    let filter = lab
        .pin_root
        .join(&lab.host_if)
        .join(bwmon_common::names::EXEMPT_FILTER);
    std::fs::remove_file(&filter).unwrap();
    // The new load attaches without writing the prefixes again: the tries alone must do.
    let dp = Datapath::open(&lab.datapath_options()).expect("open the datapath");
    let uid = 4741;
    send_udp_as(uid, SocketAddr::new(lab.exempt_v4.into(), 9), 20, 100);
    send_udp_as(uid, SocketAddr::new(lab.exempt_v6.into(), 9), 20, 100);
    send_udp_as(uid, SocketAddr::new(lab.general_v4.into(), 9), 10, 100);
    let s = dp.snapshot().unwrap();
    let c = s.offered[&uid];
    assert_eq!(c.exempt.packets, 40, "{c:?}");
    assert_eq!(c.general.packets, 10, "{c:?}");
    assert!(filter.exists(), "the filter is pinned now");
}

#[test]
fn classes_an_older_layout_kept_steer_before_the_first_sync() {
    // The layout before counter slots kept every xid's class ids in its own maps.
    let lab = Lab::new();
    let pins = lab.pin_root.join(&lab.host_if);
    let older = OlderLayout::pin(&pins, false);
    let uid = 4761;
    let ids = ClassIds {
        general: tc_handle(HTB_MAJOR, 0x240),
        exempt: tc_handle(HTB_MAJOR, 0x241),
    };
    older.steer(uid, ids);

    // The new load steers by it before anything is written again.
    let mut opts = lab.datapath_options();
    opts.xid_source = bwmon_common::XidSource::Mark;
    let mut dp = Datapath::open(&opts).expect("open the datapath");
    let frame = bwmon_tests::frames::udp_v4("10.0.0.1".parse().unwrap(), lab.general_v4, 10);
    assert_eq!(
        dp.test_run_classifier(&frame, uid).unwrap().priority,
        ids.general
    );
    // The new xid maps hold it for good: the older class map is gone.
    assert!(
        !pins.join(bwmon_common::legacy::XID_CLASS).exists(),
        "the older class hash is still pinned"
    );
    dp.set_classes(&HashMap::from([(uid, ids)])).unwrap();
    assert_eq!(
        dp.test_run_classifier(&frame, uid).unwrap().priority,
        ids.general
    );
}

/// A tun device (removed on drop): bare IP packets, no link-layer header.
struct Tun(String);

impl Drop for Tun {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

/// Makes `name` a tun device with an IPv4 and an IPv6 subnet of lab `n`, up.
fn tun(name: &str, n: u32) -> Tun {
    bwmon_tests::cmd("ip", &["tuntap", "add", "mode", "tun", "name", name]);
    let tun = Tun(name.to_owned());
    bwmon_tests::cmd(
        "ip",
        &["addr", "add", &format!("10.213.{n}.1/24"), "dev", name],
    );
    let v6 = format!("fd00:213:{n}::1/64");
    bwmon_tests::cmd("ip", &["-6", "addr", "add", &v6, "dev", name, "nodad"]);
    bwmon_tests::cmd("ip", &["link", "set", name, "up"]);
    assert_eq!(bwmon_agent::interface::link_header_len(name).unwrap(), 0);
    tun
}

/// Sends general and exempt datagrams as `uid` through the tun of lab `n` (exempt: the
/// upper half of its subnets) and checks what `dp` counted: bare IP, no Ethernet header.
/// Nobody reads the tun: the packets are dropped after the egress hook, where they are
/// counted.
fn check_tun_counts(dp: &mut Datapath, n: u32, uid: u32) {
    dp.set_exempt(&[
        format!("10.213.{n}.128/25").parse().unwrap(),
        format!("fd00:213:{n}::100/120").parse().unwrap(),
    ])
    .unwrap();
    let offered = |dp: &Datapath| {
        let s = dp.snapshot().unwrap();
        s.offered.get(&uid).copied().unwrap_or_default()
    };
    let before = offered(dp);
    let to = |addr: String| SocketAddr::new(addr.parse().unwrap(), 9);
    send_udp_as(uid, to(format!("10.213.{n}.2")), 7, 100);
    send_udp_as(uid, to(format!("10.213.{n}.130")), 5, 100);
    send_udp_as(uid, to(format!("fd00:213:{n}::2")), 3, 100);
    send_udp_as(uid, to(format!("fd00:213:{n}::1ff")), 2, 100);
    let after = offered(dp);
    let general = after.general.saturating_sub(before.general);
    let exempt = after.exempt.saturating_sub(before.exempt);
    assert_eq!(
        (general.packets, exempt.packets),
        (7 + 3, 5 + 2),
        "{after:?}"
    );
    let v4 = 100 + 8 + 20;
    let v6 = 100 + 8 + 40;
    assert_eq!(general.bytes, 7 * v4 + 3 * v6, "{after:?}");
    assert_eq!(exempt.bytes, 5 * v4 + 2 * v6, "{after:?}");
}

#[test]
fn a_device_without_link_header_is_read_where_its_ip_header_starts() {
    let lab = Lab::new();
    let name = format!("{}u", &lab.host_if[..lab.host_if.len() - 1]);
    let _tun = tun(&name, lab.lab_no);
    let mut opts = lab.datapath_options();
    opts.interface = name;
    let mut dp = Datapath::open(&opts).expect("open the datapath on a tun device");
    check_tun_counts(&mut dp, lab.lab_no, 4771);
}

#[test]
fn an_interface_re_created_as_another_kind_of_device_is_loaded_for_it() {
    let lab = Lab::new();
    let mut dp = open(&lab, &[]);
    assert_eq!(dp.link_header(), bwmon_common::ETH_HLEN);
    let uid = 4781;
    send_udp_as(uid, SocketAddr::new(lab.general_v4.into(), 9), 4, 100);
    // The veth goes; a tun of the same name comes.
    bwmon_tests::cmd("ip", &["link", "del", &lab.host_if]);
    let _tun = tun(&lab.host_if, lab.lab_no);
    assert!(
        dp.ensure_attached().unwrap(),
        "the new device was not noticed"
    );
    check_tun_counts(&mut dp, lab.lab_no, uid);
    // What was counted on the veth is still there.
    let c = dp.snapshot().unwrap().offered[&uid];
    assert_eq!(c.general.packets, 4 + 7 + 3, "{c:?}");
}

fn counted(bytes: u64, packets: u64) -> XidCounters {
    XidCounters {
        general: Counter { bytes, packets },
        ..XidCounters::default()
    }
}

/// A new load over the pinned maps of the layout before counter slots (`with_array`: the last
/// release's; else the one before it): the older counts go on under the older epoch, new
/// packets add to them, and once the new classifier has been in place a while they are folded
/// into the carried maps and the older maps unpinned, with the counters and the epoch as
/// they were; a restart after that finds the same.
fn takes_over_from_an_older_layout(with_array: bool) {
    let lab = Lab::new();
    let pins = lab.pin_root.join(&lab.host_if);
    let older = OlderLayout::pin(&pins, with_array);
    let (uid, high) = (4791, 70_001);
    older.count_in_hash(uid, counted(1000, 10));
    older.count_in_hash(high, counted(4000, 4));
    if with_array {
        older.count_in_array(uid, counted(500, 5));
    }
    older.count_dropped(
        0x150,
        Counter {
            bytes: 300,
            packets: 3,
        },
    );
    let old_epochs = older.epochs();
    let before = if with_array { 1500 } else { 1000 };

    let mut dp = Datapath::open(&lab.datapath_options()).expect("open the datapath");
    let s = dp.snapshot().unwrap();
    for e in &old_epochs {
        assert!(
            s.continues(*e),
            "a state saved under an older epoch goes on"
        );
    }
    assert_eq!(s.offered[&uid].general.bytes, before);
    assert_eq!(s.offered[&high].general.bytes, 4000);
    assert_eq!(s.dropped[&Minor(0x150)].bytes, 300);
    // New packets land in the new maps; the xid's total is both.
    let wire = send_udp_as(uid, SocketAddr::new(lab.general_v4.into(), 9), 2, 100);
    let s = dp.snapshot().unwrap();
    let c = s.offered[&uid].general;
    assert_eq!(c.bytes, before + 2 * wire);

    std::thread::sleep(QUIET + Duration::from_millis(200));
    let kept = HashSet::from([uid]);
    dp.tend_counters(&s, &kept).unwrap();
    assert!(
        !older.any_pinned(),
        "the older maps are unpinned once folded"
    );
    for name in [names::CARRIED, names::CARRIED_DROPS, names::LINEAGE] {
        assert!(pins.join(name).exists(), "{name} is pinned");
    }
    // (Only the test's xids: the kernel's own packets, root's, may come and go meanwhile.)
    let ours = |s: &Snapshot| [uid, high].map(|x| s.offered[&x]);
    let folded = dp.snapshot().unwrap();
    assert_eq!(
        ours(&folded),
        ours(&s),
        "nothing lost or doubled by the fold"
    );
    assert_eq!(folded.dropped, s.dropped);
    assert_eq!(folded.epoch, s.epoch, "the same counters");
    assert!(old_epochs.iter().all(|e| folded.continues(*e)));
    drop(dp);

    let dp = Datapath::open(&lab.datapath_options()).expect("open the datapath again");
    let again = dp.snapshot().unwrap();
    assert_eq!(ours(&again), ours(&folded));
    assert_eq!(again.dropped, folded.dropped);
    assert_eq!(again.epoch, folded.epoch);
    assert!(old_epochs.iter().all(|e| again.continues(*e)));
}

#[test]
fn counters_of_the_last_release_are_taken_over_and_folded() {
    takes_over_from_an_older_layout(true);
}

#[test]
fn counters_an_older_bwmon_kept_in_the_hash_go_on_under_its_epoch() {
    takes_over_from_an_older_layout(false);
}

#[test]
fn a_fold_cut_short_anywhere_loses_and_doubles_nothing() {
    let lab = Lab::new();
    let pins = lab.pin_root.join(&lab.host_if);
    let uid = 4793;
    let older = OlderLayout::pin(&pins, true);
    older.count_in_array(uid, counted(700, 7));
    older.count_dropped(
        0x160,
        Counter {
            bytes: 70,
            packets: 1,
        },
    );
    // Cut short before the offered map was pinned: the other carried maps are there, with
    // what a crash may leave (here: garbage), and count for nothing.
    let junk = aya::maps::HashMap::<aya::maps::MapData, u32, Counter>::create(4, 0).unwrap();
    junk.pin(pins.join(names::CARRIED_DROPS)).unwrap();
    let mut dp = Datapath::open(&lab.datapath_options()).expect("open the datapath");
    let s = dp.snapshot().unwrap();
    assert_eq!(s.offered[&uid].general.bytes, 700);
    assert_eq!(s.dropped[&Minor(0x160)].bytes, 70);
    std::thread::sleep(QUIET + Duration::from_millis(200));
    dp.tend_counters(&s, &HashSet::new()).unwrap();
    assert_eq!(dp.snapshot().unwrap().dropped, s.dropped);
    drop(dp);

    // Cut short after the carried maps were pinned, before the older ones were unpinned: the
    // carried counts are read, not both.
    let older = OlderLayout::pin(&pins, true);
    older.count_in_array(uid, counted(700, 7));
    let dp = Datapath::open(&lab.datapath_options()).expect("open the datapath");
    let again = dp.snapshot().unwrap();
    assert_eq!(again.offered[&uid], s.offered[&uid], "counted once");
    assert_eq!(again.dropped, s.dropped);
    assert_eq!(again.epoch, s.epoch);
    assert!(!older.any_pinned(), "the leftovers are unpinned");
}

#[test]
fn counters_whose_seen_map_was_lost_are_read_whole_and_nothing_is_forgotten() {
    let lab = Lab::new();
    lab.htb_fixture(&[(0x120, "1mbit"), (0x121, "1mbit")]);
    let uid = 4795;
    let dp = open(&lab, &[(uid, 0x120, 0x121)]);
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    send_udp_as(uid, dst, 500, 1200);
    lab.wait_for_empty_queues();
    let before = dp.snapshot().unwrap();
    let dropped = before.dropped[&Minor(0x120)];
    assert!(dropped.packets > 100, "{dropped:?}");
    assert_eq!(before.offered[&uid].general.packets, 500);
    drop(dp);
    let pins = lab.pin_root.join(&lab.host_if);
    std::fs::remove_file(pins.join(names::DROPS_SEEN)).unwrap();

    // The new seen map cannot know what was counted before it: the drop array is read whole,
    // at every snapshot, and nothing drops out of it.
    let dp = Datapath::open(&lab.datapath_options()).expect("open the datapath");
    for _ in 0..2 {
        let s = dp.snapshot().unwrap();
        assert_eq!(s.offered[&uid].general.packets, 500);
        assert_eq!(s.dropped[&Minor(0x120)], dropped);
    }
    send_udp_as(uid, dst, 1, 100);
    assert_eq!(dp.snapshot().unwrap().offered[&uid].general.packets, 501);
    // Still so after a restart that finds the seen maps pinned.
    drop(dp);
    let dp = Datapath::open(&lab.datapath_options()).expect("open the datapath");
    let s = dp.snapshot().unwrap();
    assert_eq!(s.dropped[&Minor(0x120)], dropped);
    assert_eq!(s.offered[&uid].general.packets, 501);
}

#[test]
fn only_slots_marked_seen_are_read_and_they_are_all_there() {
    let lab = Lab::new();
    let dp = open(&lab, &[]);
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    // Spread over the array: a run, a lone xid, the first and last chunk.
    let uids = [4801, 4802, 4803, 4900, 61_000, 65_535];
    for uid in uids {
        send_udp_as(uid, dst, 2, 100);
    }
    let s = dp.snapshot().unwrap();
    for uid in uids {
        assert_eq!(s.offered[&uid].general.packets, 2, "uid {uid}");
    }
    assert!(
        !s.offered.contains_key(&4804),
        "untouched slots are left out"
    );
}
