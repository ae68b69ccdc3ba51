//! What an operator meets on day one: the systemd unit, the install, the metrics endpoint.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use bwmon_tests::{Daemon, Lab, bwmon_bin, cmd, free_port, send_udp_as};

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(workspace().join("bwmon-agent/systemd/bwmon.service"))
        .unwrap()
        .replace("/usr/local/bin/bwmon", bwmon_bin().to_str().unwrap());
    let path = dir.path().join("bwmon.service");
    std::fs::write(&path, unit).unwrap();
    // `--man=no`: the man page is checked by the install test, not installed here.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for bwmon.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{text}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= 3.0,
        "exposure {exposure} (\"OK\" is at most 3.9; we aim lower)\n{text}"
    );
}

#[test]
fn install_puts_everything_in_place_and_keeps_an_existing_config() {
    let root = tempfile::tempdir().unwrap();
    let install = || {
        let out = Command::new(env!("CARGO"))
            .current_dir(workspace())
            // The debug build the other tests run: the same files, without an optimised compile.
            .args(["xtask", "install", "--debug", "--root"])
            .arg(root.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install();
    let r = |p: &str| root.path().join(p);
    for p in [
        "usr/local/bin/bwmon",
        "usr/local/lib/systemd/system/bwmon.service",
        "etc/bwmon/bwmon.toml",
        "etc/bwmon/slices.toml",
        "usr/local/share/bash-completion/completions/bwmon",
        "usr/local/share/zsh/site-functions/_bwmon",
        "usr/local/share/fish/vendor_completions.d/bwmon.fish",
        "usr/local/share/man/man1/bwmon.1",
    ] {
        assert!(r(p).is_file(), "{p} missing");
    }
    let unit = std::fs::read_to_string(r("usr/local/lib/systemd/system/bwmon.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/bwmon run --config /etc/bwmon/bwmon.toml"));
    // The installed example configuration is valid.
    cmd(
        r("usr/local/bin/bwmon").to_str().unwrap(),
        &[
            "check",
            "--config",
            r("etc/bwmon/bwmon.toml").to_str().unwrap(),
        ],
    );
    // A second install keeps the operator's edits: the config, and a unit edited in /etc.
    std::fs::write(r("etc/bwmon/bwmon.toml"), "interface = \"mine0\"\n").unwrap();
    let edited = unit.replace("WatchdogSec=60s", "WatchdogSec=120s");
    std::fs::create_dir_all(r("etc/systemd/system")).unwrap();
    std::fs::write(r("etc/systemd/system/bwmon.service"), &edited).unwrap();
    install();
    assert_eq!(
        std::fs::read_to_string(r("etc/bwmon/bwmon.toml")).unwrap(),
        "interface = \"mine0\"\n"
    );
    assert_eq!(
        std::fs::read_to_string(r("etc/systemd/system/bwmon.service")).unwrap(),
        edited,
        "the operator's unit is left alone"
    );
    let man = std::fs::read_to_string(r("usr/local/share/man/man1/bwmon.1")).unwrap();
    assert!(
        man.contains(".TH bwmon 1") && man.contains("teardown"),
        "{man}"
    );
}

fn scrape(port: u16) -> String {
    let out = bwmon_tests::http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[test]
fn metrics_agree_with_status_during_traffic() {
    let lab = Lab::new();
    let port = free_port();
    let d = Daemon::start(
        &lab,
        &format!(
            "period = \"300s\"\ninterval = \"1s\"\n[defaults]\nnet_max_kbyte = 100\n[metrics]\nlisten = \"127.0.0.1:{port}\"\npublic = true\n"
        ),
        "[[slice]]\nname = \"alice\"\nxid = 5001\n[[slice]]\nname = \"bob\"\nxid = 5002\nnet_max_kbyte = 100000\n",
    );
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    send_udp_as(5001, dst, 200, 1000);
    send_udp_as(5002, dst, 50, 1000);
    std::thread::sleep(Duration::from_millis(2500));
    // Scrape and status between two syncs: read both, retry if a sync fell in between.
    for _ in 0..5 {
        let before = d.status();
        let text = scrape(port);
        let after = d.status();
        if before["now"] != after["now"] {
            continue;
        }
        for s in after["slices"].as_array().unwrap() {
            let (name, xid) = (s["name"].as_str().unwrap(), s["xid"].as_u64().unwrap());
            let labels = format!("{{slice=\"{name}\",xid=\"{xid}\",class=\"general\"}} ");
            assert_eq!(
                metric(&text, &format!("bwmon_slice_bytes_total{labels}")),
                s["bytes"].as_f64().unwrap(),
                "{name}"
            );
            assert_eq!(
                metric(&text, &format!("bwmon_slice_ceil_bits_per_second{labels}")),
                s["ceil_bps"].as_f64().unwrap()
            );
            let capped = if s["capped"] == true { 1.0 } else { 0.0 };
            assert_eq!(
                metric(&text, &format!("bwmon_slice_capped{labels}")),
                capped
            );
        }
        assert_eq!(
            metric(
                &text,
                "bwmon_slice_capped{slice=\"alice\",xid=\"5001\",class=\"general\"} "
            ),
            1.0
        );
        assert_eq!(
            metric(
                &text,
                "bwmon_slice_capped{slice=\"bob\",xid=\"5002\",class=\"general\"} "
            ),
            0.0
        );
        assert!(metric(&text, "bwmon_sync_duration_seconds ") > 0.0);
        assert_eq!(metric(&text, "bwmon_errors_total{kind=\"htb\"} "), 0.0);
        return;
    }
    panic!("status kept changing under the scrape");
}
