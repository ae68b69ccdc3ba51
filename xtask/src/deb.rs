//! `cargo xtask deb`: `target/debian/bwmon_<version>-1_<arch>.deb`, built by `dpkg-deb
//! --build` from a tree staged here. Not cargo-deb: the only tools are Debian's own (dpkg-dev,
//! binutils, gzip), so CI installs no crate, and each file's place, mode and role is written
//! down in one place.
//!
//! What it holds: the release binary with its eBPF object embedded (stripped); the systemd
//! unit, which the postinst enables and whose ExecCondition (`bwmon check --configured`) skips
//! it until `/etc/bwmon/bwmon.toml` names an interface — the package's copy of the example
//! names none, so installing starts nothing on an interface the operator did not choose;
//! `bwmon.toml` and `slices.toml` as conffiles (an operator's edits survive upgrades); the man
//! page and completions; the Grafana dashboards and Prometheus rules under `/usr/share/bwmon`;
//! the DEP-5 copyright and `changelog.Debian.gz`; the maintainer scripts and lintian overrides
//! of `bwmon-agent/debian/`. It depends on the shared libraries dpkg-shlibdeps finds and on
//! procps, whose `/bin/kill` the unit's ExecReload runs.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    build::{self, Profile},
    install::{self, GENERATED},
    setup::Tools,
    workspace::{self, exec},
};

/// The Debian revision of every package built here: one packaging per upstream version.
const REVISION: &str = "1";
/// Who answers for the package, unless `DEBFULLNAME` and `DEBEMAIL` say (as for `dch`).
const MAINTAINER: &str =
    "Seed 62a26c29 maintainers <maintainers@users.noreply.r-seed-62a26c29.example>";

/// Files of `bwmon-agent/etc/` shipped under `/usr/share/bwmon/`.
const SHARED: [&str; 4] = [
    "grafana-dashboard.json",
    "grafana-fleet-dashboard.json",
    "alerts.yml",
    "recording-rules.yml",
];

/// The conffiles: the example configuration (without its interface) and slices file.
const CONFFILES: [&str; 2] = ["/etc/bwmon/bwmon.toml", "/etc/bwmon/slices.toml"];

/// The example's interface line, and what the package ships instead.
const EXAMPLE_INTERFACE: &str = "interface = \"eth0\"\n";
const PACKAGE_INTERFACE: &str = "# Unset in the package: the service is skipped until this names the interface; then\n# `systemctl start bwmon`.\n# interface = \"eth0\"\n";

/// Builds the binary (`profile`: release for operators, debug for the tests) and the package;
/// returns the package's path.
pub(crate) fn run(tools: &Tools, profile: Profile) -> anyhow::Result<PathBuf> {
    build::all(tools, profile)?;
    let ws = workspace::root();
    let binary = ws.join("target").join(profile.dir()).join("bwmon");
    let version = format!("{}-{REVISION}", upstream_version(&binary)?);
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out = ws.join("target/debian");
    // dpkg-shlibdeps wants the tree at debian/<package> below a directory with debian/control.
    let work = out.join("build");
    let stage = work.join("debian/bwmon");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&stage)?;
    fs::write(
        work.join("debian/control"),
        "Source: bwmon\n\nPackage: bwmon\nArchitecture: any\n",
    )?;
    stage_files(&stage, &binary, &version)?;
    let packaging = ws.join("bwmon-agent/debian");
    let control_dir = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        install::copy(&packaging.join(script), &control_dir.join(script), 0o755)?;
    }
    write(
        &control_dir.join("conffiles"),
        &(CONFFILES.join("\n") + "\n"),
        0o644,
    )?;
    write(&control_dir.join("md5sums"), &md5sums(&stage)?, 0o644)?;
    let control = fs::read_to_string(packaging.join("control"))?
        .replace("@VERSION@", &version)
        .replace("@ARCHITECTURE@", &arch)
        .replace("@MAINTAINER@", &maintainer())
        .replace("@INSTALLED_SIZE@", &installed_kib(&stage)?.to_string())
        .replace("@DEPENDS@", &depends(&work)?);
    write(&control_dir.join("control"), &control, 0o644)?;
    directories_readable(&stage)?;
    let deb = out.join(format!("bwmon_{version}_{arch}.deb"));
    exec(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    let size = fs::metadata(&deb)?.len();
    eprintln!(
        "xtask: built {} ({} KiB); install it with `apt install ./{}`",
        deb.display(),
        size / 1024,
        deb.file_name().unwrap_or_default().to_string_lossy()
    );
    Ok(deb)
}

/// The files below `stage`, each in its place with its mode.
fn stage_files(stage: &Path, binary: &Path, version: &str) -> anyhow::Result<()> {
    let ws = workspace::root();
    let etc = ws.join("bwmon-agent/etc");
    let bin = stage.join("usr/bin/bwmon");
    install::copy(binary, &bin, 0o755)?;
    // As dh_strip does: the symbols and notes go, the embedded eBPF object (data) stays.
    exec(
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg(&bin),
    )?;
    write(
        &stage.join("lib/systemd/system/bwmon.service"),
        &install::unit(Path::new("/usr/bin/bwmon"))?,
        0o644,
    )?;
    let example = fs::read_to_string(etc.join("bwmon.toml"))?;
    if !example.contains(EXAMPLE_INTERFACE) {
        bail!(
            "bwmon-agent/etc/bwmon.toml has no line {EXAMPLE_INTERFACE:?} for the package to unset"
        );
    }
    // 0600: the file may hold the SMTP password.
    write(
        &stage.join("etc/bwmon/bwmon.toml"),
        &example.replacen(EXAMPLE_INTERFACE, PACKAGE_INTERFACE, 1),
        0o600,
    )?;
    install::copy(
        &etc.join("slices.toml"),
        &stage.join("etc/bwmon/slices.toml"),
        0o644,
    )?;
    let generated = install::generate(binary)?;
    let share = stage.join("usr/share");
    for g in &GENERATED {
        let to = share.join(g.debian);
        install::copy(&generated.join(g.file), &to, 0o644)?;
        if g.debian.starts_with("man/") {
            gzip(&to)?;
        }
    }
    for file in SHARED {
        install::copy(&etc.join(file), &share.join("bwmon").join(file), 0o644)?;
    }
    let doc = share.join("doc/bwmon");
    let copyright = fs::read_to_string(ws.join("bwmon-agent/debian/copyright"))?
        .replace("@YEARS@", &years()?)
        .replace("@MAINTAINER@", &maintainer())
        .replace("@CRATES@", &linked_crates()?);
    write(&doc.join("copyright"), &copyright, 0o644)?;
    write(&doc.join("changelog.Debian"), &changelog(version)?, 0o644)?;
    gzip(&doc.join("changelog.Debian"))?;
    install::copy(
        &ws.join("bwmon-agent/debian/lintian-overrides"),
        &share.join("lintian/overrides/bwmon"),
        0o644,
    )?;
    Ok(())
}

/// Writes `text` to `to` (creating its directory) with permissions `mode`.
fn write(to: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Compresses `path` in place to `path.gz`, as Debian wants man pages and changelogs: best
/// compression, no name or time stamp (the same input makes the same bytes).
fn gzip(path: &Path) -> anyhow::Result<()> {
    exec(Command::new("gzip").args(["-9", "-n", "-f"]).arg(path))
}

/// A command's standard output, trimmed; failing with the command line.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = workspace::describe(cmd);
    let out = cmd.output().with_context(|| format!("starting `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The version the binary says it is ("bwmon 0.1.0" → "0.1.0").
fn upstream_version(binary: &Path) -> anyhow::Result<String> {
    let said = output(Command::new(binary).arg("--version"))?;
    said.strip_prefix("bwmon ")
        .map(str::to_owned)
        .with_context(|| format!("`bwmon --version` said {said:?}"))
}

fn maintainer() -> String {
    match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(mail)) if !name.is_empty() && !mail.is_empty() => format!("{name} <{mail}>"),
        _ => MAINTAINER.to_owned(),
    }
}

/// The shared libraries the binary needs, as dpkg-shlibdeps finds them
/// ("libc6 (>= 2.35), libgcc-s1 (>= 4.2)").
fn depends(work: &Path) -> anyhow::Result<String> {
    let said = output(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "debian/bwmon/usr/bin/bwmon"])
            .current_dir(work),
    )?;
    said.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .with_context(|| format!("dpkg-shlibdeps said {said:?}"))
}

/// Every regular file below `stage` but `DEBIAN/`, relative to it, sorted.
fn files(stage: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let relative = path.strip_prefix(root)?.to_path_buf();
            if relative == Path::new("DEBIAN") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(relative);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(stage, stage, &mut out)?;
    out.sort();
    Ok(out)
}

/// `DEBIAN/md5sums`: every file but the conffiles (dpkg keeps their sums itself), as
/// dh_md5sums writes it.
fn md5sums(stage: &Path) -> anyhow::Result<String> {
    let listed: Vec<PathBuf> = files(stage)?
        .into_iter()
        .filter(|f| {
            !CONFFILES
                .iter()
                .any(|c| Path::new(c).strip_prefix("/").ok() == Some(f))
        })
        .collect();
    let mut sums = output(Command::new("md5sum").args(&listed).current_dir(stage))?;
    sums.push('\n');
    Ok(sums)
}

/// `Installed-Size`: KiB of every file, each rounded up, plus one per directory (as
/// dpkg-gencontrol counts).
fn installed_kib(stage: &Path) -> anyhow::Result<u64> {
    let mut kib = 0;
    let mut dirs = std::collections::BTreeSet::new();
    for f in files(stage)? {
        kib += fs::metadata(stage.join(&f))?.len().div_ceil(1024);
        dirs.extend(f.ancestors().skip(1).map(Path::to_path_buf));
    }
    Ok(kib + dirs.len() as u64)
}

/// Every directory of the tree 0755, whatever the umask was.
fn directories_readable(dir: &Path) -> anyhow::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            directories_readable(&path)?;
        }
    }
    Ok(())
}

/// `git log` of the workspace with `args`.
fn git_log(args: &[&str]) -> anyhow::Result<String> {
    output(
        Command::new("git")
            .arg("log")
            .args(args)
            .current_dir(workspace::root()),
    )
}

/// The years of the project's history ("2025-2026"); this year outside a git checkout.
fn years() -> anyhow::Result<String> {
    let years = match git_log(&["--format=%ad", "--date=format:%Y"]) {
        Ok(said) => said.lines().map(str::to_owned).collect::<Vec<_>>(),
        Err(_) => vec![output(Command::new("date").args(["-u", "+%Y"]))?],
    };
    let (first, last) = (years.iter().min(), years.iter().max());
    Ok(match (first, last) {
        (Some(first), Some(last)) if first != last => format!("{first}-{last}"),
        (_, Some(last)) => last.clone(),
        _ => bail!("no year in the project's history"),
    })
}

/// One changelog entry for this build, dated by the commit it was built from (the same commit
/// makes the same entry).
fn changelog(version: &str) -> anyhow::Result<String> {
    let git = |format: &str| git_log(&["-1", &format!("--format={format}")]);
    let (commit, date) = match (git("%h"), git("%aD")) {
        (Ok(commit), Ok(date)) => (format!("commit {commit}"), date),
        // Not a git checkout (a source archive): dated now.
        _ => (
            "a source tree".to_owned(),
            output(Command::new("date").args(["-R", "-u"]))?,
        ),
    };
    Ok(format!(
        "bwmon ({version}) unstable; urgency=medium\n\n  * Built by `cargo xtask deb` from {commit}; the project's history says\n    what changed.\n\n -- {}  {date}\n",
        maintainer()
    ))
}

/// The crates the binary links, one per line as a DEP-5 continuation ("  aya 0.14.0:
/// MIT OR Apache-2.0"): the normal dependencies of bwmon-agent, from `cargo metadata`.
fn linked_crates() -> anyhow::Result<String> {
    let out = workspace::cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", "x86_64-unknown-linux-gnu"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"]
        .as_array()
        .context("cargo metadata: packages")?;
    let nodes = meta["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: resolve")?;
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id);
    let root = packages
        .iter()
        .find(|p| p["name"] == "bwmon-agent")
        .and_then(|p| p["id"].as_str())
        .context("cargo metadata: no bwmon-agent")?;
    // Normal dependencies only: build scripts' and tests' crates are not in the binary.
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        for dep in node(&id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
            if let (true, Some(pkg)) = (normal, dep["pkg"].as_str()) {
                todo.push(pkg.to_owned());
            }
        }
    }
    let mut lines: Vec<String> = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| seen.contains(id)))
        .filter(|p| p["source"].is_string())
        .map(|p| {
            format!(
                " {} {}: {}",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or("?"),
                p["license"].as_str().unwrap_or("see the crate")
            )
        })
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}
