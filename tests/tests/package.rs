//! The Debian package as an operator meets it (`cargo xtask deb`, then `apt install
//! ./bwmon_….deb`): lintian clean, and in a throwaway Debian 12 root installed (unit enabled,
//! skipped until configured, verified by `systemd-analyze`), upgraded over itself with an
//! edited conffile (kept), removed (datapath torn down, state kept) and purged (state gone).

use std::{path::PathBuf, process::Command, sync::OnceLock};

use bwmon_tests::DebianRoot;

/// The package `cargo xtask deb` builds, once for the tests of this file.
fn package() -> &'static PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        bwmon_tests::require_root();
        let workspace = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let out = Command::new(env!("CARGO"))
            .current_dir(&workspace)
            // Packaged from the debug build the other tests run: the same package, without an
            // optimised compile (minutes in CI); `cargo xtask deb` alone packages the release.
            .args(["xtask", "deb", "--debug"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        let deb = log
            .lines()
            .filter_map(|l| l.strip_prefix("xtask: built "))
            .filter_map(|rest| rest.split(" (").next())
            .map(PathBuf::from)
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .unwrap_or_else(|| panic!("no package named in\n{log}"));
        assert!(
            deb.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(concat!("bwmon_", env!("CARGO_PKG_VERSION"), "-1_")),
            "{}",
            deb.display()
        );
        deb
    })
}

#[test]
fn the_package_is_lintian_clean() {
    let out = Command::new("lintian")
        .args(["--display-info", "--pedantic"])
        .arg(package())
        .output()
        .expect("lintian (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    // Every tag bwmon keeps is overridden with its reason (bwmon-agent/debian/lintian-overrides);
    // anything else is a finding: error, warning, info or pedantic.
    let tags: Vec<&str> = text
        .lines()
        .filter(|l| ["E:", "W:", "I:", "P:"].iter().any(|t| l.starts_with(t)))
        .collect();
    assert!(
        out.status.success() && tags.is_empty(),
        "lintian: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped `bwmon.toml` names no interface; the operator's edit sets one (that does not
/// exist: the root has a network namespace of its own).
const UNSET: &str = "# interface = \"eth0\"";
const SET: &str = "interface = \"bwtest0\"";

#[test]
fn the_package_installs_upgrades_removes_and_purges_in_a_debian_12_root() {
    let deb = package();
    let root = DebianRoot::new();
    let name = deb.file_name().unwrap().to_str().unwrap();
    std::fs::copy(deb, root.path("/tmp").join(name)).unwrap();
    let inside = format!("/tmp/{name}");

    // Installed the way the README says, with nothing downloaded.
    root.ok("apt-get", &["install", "-y", &inside]);
    for file in [
        "/usr/bin/bwmon",
        "/lib/systemd/system/bwmon.service",
        "/etc/bwmon/bwmon.toml",
        "/etc/bwmon/slices.toml",
        "/usr/share/man/man1/bwmon.1.gz",
        "/usr/share/bash-completion/completions/bwmon",
        "/usr/share/zsh/vendor-completions/_bwmon",
        "/usr/share/fish/vendor_completions.d/bwmon.fish",
        "/usr/share/bwmon/grafana-dashboard.json",
        "/usr/share/bwmon/grafana-fleet-dashboard.json",
        "/usr/share/bwmon/alerts.yml",
        "/usr/share/bwmon/recording-rules.yml",
        "/usr/share/doc/bwmon/copyright",
        "/usr/share/doc/bwmon/changelog.Debian.gz",
    ] {
        assert!(root.path(file).is_file(), "{file} missing");
    }
    assert!(
        root.ok("bwmon", &["--version"])
            .contains(env!("CARGO_PKG_VERSION")),
        "the binary runs on Debian 12's libc"
    );
    let conffiles = root.ok("dpkg-query", &["-W", "-f=${Conffiles}", "bwmon"]);
    for file in ["/etc/bwmon/bwmon.toml", "/etc/bwmon/slices.toml"] {
        assert!(
            conffiles.contains(file),
            "{file} not a conffile: {conffiles}"
        );
    }
    // Enabled (systemd is not running here: the postinst's symlink is what enabling is).
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/bwmon.service");
    assert!(wants.is_symlink(), "the unit is not enabled");
    // The unit verifies here, its binary, its /bin/kill and its man page found.
    root.ok(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/bwmon.service"],
    );

    // Not configured: the unit's start condition says no, so it is skipped, not failed.
    let unit = std::fs::read_to_string(root.path("/lib/systemd/system/bwmon.service")).unwrap();
    let condition: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecCondition="))
        .expect("an ExecCondition")
        .split_whitespace()
        .collect();
    let skipped = root.run(condition[0], &condition[1..]);
    assert_eq!(skipped.status.code(), Some(1), "{skipped:?}");
    let config = root.path("/etc/bwmon/bwmon.toml");
    let shipped = std::fs::read_to_string(&config).unwrap();
    assert!(shipped.contains(UNSET), "{shipped}");
    let edited = shipped.replace(UNSET, SET);
    std::fs::write(&config, &edited).unwrap();
    let started = root.run(condition[0], &condition[1..]);
    assert!(started.status.success(), "{started:?}");

    // Upgraded over itself: the edited conffile kept, nothing set beside it.
    let state = root.path("/var/lib/bwmon/state");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, "the state of a running bwmon").unwrap();
    root.ok("dpkg", &["-i", &inside]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    let beside: Vec<String> = std::fs::read_dir(root.path("/etc/bwmon"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(beside.iter().all(|f| !f.contains(".dpkg-")), "{beside:?}");
    assert!(wants.is_symlink(), "still enabled");

    // Removed: the prerm ran `bwmon teardown`, which found nothing installed and said so
    // without failing; the state and the configuration are kept.
    let removal = root.ok("dpkg", &["-r", "bwmon"]);
    assert!(removal.contains("bwmon teardown"), "{removal}");
    assert!(
        removal.contains("no datapath pins to remove")
            && removal.contains("interface bwtest0")
            && removal.contains("no HTB tree or filter to remove"),
        "{removal}"
    );
    assert!(!root.path("/usr/bin/bwmon").exists());
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "the state of a running bwmon"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    // Purged: state, configuration and enablement gone.
    root.ok("dpkg", &["-P", "bwmon"]);
    assert!(!root.path("/var/lib/bwmon").exists(), "state left");
    assert!(!root.path("/etc/bwmon").exists(), "configuration left");
    assert!(!wants.is_symlink(), "enablement left");

    // Installed and purged without ever being configured: nothing to tear down, and no
    // teardown tried.
    root.ok("dpkg", &["-i", &inside]);
    let purge = root.ok("dpkg", &["-P", "bwmon"]);
    assert!(!purge.contains("bwmon teardown"), "{purge}");
    assert!(!root.path("/etc/bwmon").exists());
}
