//! Notices by e-mail, received by a real SMTP server on loopback (aiosmtpd): the cap once per
//! slice and period, each warning level once, never lost across a mail outage or a restart,
//! never blocking the sync loop; none in a dry run.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use bwmon_tests::{Daemon, Lab, SmtpServer, free_port, poll, send_udp_as};

const ALICE: u32 = 4901;

fn config(lab: &Lab, port: u16) -> String {
    format!(
        "period = \"300s\"\ninterval = \"1s\"\nexempt_prefixes = [\"{}\"]\n[defaults]\nnet_max_kbyte = 100\nnet_i2_max_kbyte = 100\n[mail]\ntransport = \"smtp\"\nsmtp = \"127.0.0.1:{port}\"\nfrom = \"bwmon@node.example.org\"\nsupport = \"support@example.org\"\nslice_address = \"{{slice}}@slices.example.org\"\noperator = \"ExampleLab\"\n",
        lab.exempt_net_v4
    )
}

fn slices() -> String {
    format!("[[slice]]\nname = \"alice\"\nxid = {ALICE}\n")
}

/// Sends alice over her general budget (and her exempt one too when `exempt`).
fn trip(lab: &Lab, exempt: bool) {
    send_udp_as(ALICE, SocketAddr::new(lab.general_v4.into(), 9), 200, 1200);
    if exempt {
        send_udp_as(ALICE, SocketAddr::new(lab.exempt_v4.into(), 9), 200, 1200);
    }
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} header in\n{msg}"))
}

#[test]
fn one_notice_with_the_seeds_headers_and_body_when_both_classes_trip() {
    let lab = Lab::new();
    let mut smtp = SmtpServer::new(free_port());
    smtp.start();
    let d = Daemon::start(&lab, &config(&lab, smtp.port), &slices());
    trip(&lab, true);
    let msgs = smtp.wait_for(1, 20);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    std::thread::sleep(Duration::from_secs(3));
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "exactly one notice: {msgs:?}");
    let m = &msgs[0];
    let host = bwmon_agent::notify::hostname();
    assert_eq!(
        header(m, "Subject"),
        format!("ExampleLab capped bandwidth of slice alice on {host}")
    );
    assert_eq!(
        header(m, "From"),
        "\"ExampleLab Support\" <support@example.org>"
    );
    assert_eq!(
        header(m, "To"),
        "support@example.org, alice@slices.example.org"
    );
    let body = m
        .split("\n\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n\n")
        .replace("\r\n", "\n");
    for expect in [
        "The slice alice has transmitted more than",
        "to general destinations",
        "to exempt destinations",
        "of the slice to 100.0 KiB per 5.0 minutes.",
        &format!("{host} bwcap alice"),
    ] {
        assert!(body.contains(expect), "missing {expect:?} in\n{body}");
    }
    assert_eq!(d.slice("alice").unwrap()["emailed"], true);
}

#[test]
fn a_mail_outage_delays_the_notice_and_loses_nothing() {
    let lab = Lab::new();
    let mut smtp = SmtpServer::new(free_port());
    let d = Daemon::start(&lab, &config(&lab, smtp.port), &slices());
    trip(&lab, false);
    std::thread::sleep(Duration::from_secs(4));
    // The sync loop went on while mail failed.
    let s = d.status();
    assert!(s["errors"].to_string().contains("notify"), "{s}");
    assert_eq!(d.slice("alice").unwrap()["capped"], true);
    smtp.start();
    let msgs = smtp.wait_for(1, 40);
    assert_eq!(msgs.len(), 1, "delivered once the server is back");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.messages().len(), 1, "and only once");
}

#[test]
fn a_restart_between_trip_and_delivery_delivers_once() {
    let lab = Lab::new();
    let mut smtp = SmtpServer::new(free_port());
    let mut d = Daemon::start(&lab, &config(&lab, smtp.port), &slices());
    trip(&lab, false);
    std::thread::sleep(Duration::from_secs(3));
    d.stop(libc::SIGKILL);
    smtp.start();
    d.restart();
    let msgs = smtp.wait_for(1, 20);
    assert_eq!(msgs.len(), 1, "the pending notice survived the restart");
    // Another restart neither re-sends nor forgets.
    assert!(d.stop(libc::SIGTERM).success());
    d.restart();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(smtp.messages().len(), 1);
}

/// [`config`] with warnings at 50 % and 90 % and the threshold at 95 KiB of the 100.
fn warning_config(lab: &Lab, port: u16) -> String {
    config(lab, port).replacen(
        "[defaults]\n",
        "warn_at = [\"50%\", \"90%\"]\n[defaults]\nnet_thresh_kbyte = 95\n",
        1,
    )
}

/// Polls `d` until alice's general levels told are `levels` (20 s at most).
fn wait_for_levels(d: &Daemon, levels: serde_json::Value) {
    let told =
        |a: &Option<serde_json::Value>| a.as_ref().is_some_and(|a| a["warned_percent"] == levels);
    let alice = poll(20, || d.slice("alice"), told);
    assert!(
        told(&alice),
        "alice never warned at {levels}: {alice:?}\n{}",
        d.log()
    );
}

#[test]
fn each_warning_level_is_mailed_once_before_and_beside_the_cap() {
    let lab = Lab::new();
    let mut smtp = SmtpServer::new(free_port());
    smtp.start();
    let d = Daemon::start(&lab, &warning_config(&lab, smtp.port), &slices());
    let general = SocketAddr::new(lab.general_v4.into(), 9);
    // 50 packets of 1,242 wire bytes: 61 % of 100 KiB.
    send_udp_as(ALICE, general, 50, 1200);
    wait_for_levels(&d, serde_json::json!([50]));
    let msgs = smtp.wait_for(1, 20);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let host = bwmon_agent::notify::hostname();
    assert_eq!(
        header(&msgs[0], "Subject"),
        format!("ExampleLab bandwidth warning for slice alice on {host}")
    );
    assert!(
        msgs[0].contains("50 % of its budget of 100.0 KiB per 5.0 minutes."),
        "{}",
        msgs[0]
    );
    // 26 more: 92 %, past the second level and below the threshold (95 KiB).
    send_udp_as(ALICE, general, 26, 1200);
    wait_for_levels(&d, serde_json::json!([50, 90]));
    assert_eq!(d.slice("alice").unwrap()["capped"], false);
    // Past the threshold: the cap's notice.
    send_udp_as(ALICE, general, 20, 1200);
    smtp.wait_for(3, 20);
    std::thread::sleep(Duration::from_secs(3));
    let msgs = smtp.messages();
    let subjects: BTreeSet<String> = msgs
        .iter()
        .map(|m| header(m, "Subject").to_owned())
        .collect();
    assert_eq!(
        msgs.len(),
        3,
        "two warnings and the cap, once each: {subjects:?}"
    );
    assert!(subjects.contains(&format!(
        "ExampleLab capped bandwidth of slice alice on {host}"
    )));
    let show = d.command(&["slice", "show", "alice"]);
    assert!(
        String::from_utf8_lossy(&show.stdout)
            .contains("warned at 50 %, 90 % of its budget this period"),
        "{show:?}"
    );
}

#[test]
fn a_dry_run_warns_nobody_and_logs_whom_it_would() {
    let lab = Lab::new();
    let mut smtp = SmtpServer::new(free_port());
    smtp.start();
    let text =
        warning_config(&lab, smtp.port).replacen("[defaults]", "dry_run = true\n[defaults]", 1);
    let d = Daemon::start(&lab, &text, &slices());
    send_udp_as(ALICE, SocketAddr::new(lab.general_v4.into(), 9), 50, 1200);
    wait_for_levels(&d, serde_json::json!([50]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(smtp.messages().is_empty(), "{:?}", smtp.messages());
    let log = d.log();
    assert_eq!(
        log.matches("dry run: would warn").count(),
        1,
        "said once:\n{log}"
    );
}
