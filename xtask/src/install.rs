//! `cargo xtask install [--prefix DIR] [--root DIR]`: the release binary, the systemd unit, a
//! configuration and an example slices file (never overwriting existing ones), shell
//! completions and the man page.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{
    build::{self, Profile},
    setup::Tools,
    workspace::{self, exec},
};

/// What `bwmon generate` writes, and where each file goes below `<prefix>/share` when
/// installed by hand and in the Debian package (whose zsh reads `vendor-completions`, and
/// whose man pages are gzipped: `.gz` is added there).
pub(crate) struct Generated {
    pub(crate) file: &'static str,
    pub(crate) local: &'static str,
    pub(crate) debian: &'static str,
}

pub(crate) const GENERATED: [Generated; 4] = [
    Generated {
        file: "bwmon.bash",
        local: "bash-completion/completions/bwmon",
        debian: "bash-completion/completions/bwmon",
    },
    Generated {
        file: "_bwmon",
        local: "zsh/site-functions/_bwmon",
        debian: "zsh/vendor-completions/_bwmon",
    },
    Generated {
        file: "bwmon.fish",
        local: "fish/vendor_completions.d/bwmon.fish",
        debian: "fish/vendor_completions.d/bwmon.fish",
    },
    Generated {
        file: "bwmon.1",
        local: "man/man1/bwmon.1",
        debian: "man/man1/bwmon.1",
    },
];

/// The completions and the man page `binary` generates, in a directory beside it.
pub(crate) fn generate(binary: &Path) -> anyhow::Result<PathBuf> {
    let generated = binary.with_file_name("generated");
    exec(
        Command::new(binary)
            .arg("generate")
            .arg("--out")
            .arg(&generated),
    )?;
    Ok(generated)
}

/// The systemd unit with `bin` as the binary it runs.
pub(crate) fn unit(bin: &Path) -> anyhow::Result<String> {
    let path = workspace::root().join("bwmon-agent/systemd/bwmon.service");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.replace("/usr/local/bin/bwmon", &bin.display().to_string()))
}

/// Copies `from` to `to` (creating its directory) with permissions `mode`.
pub(crate) fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    eprintln!("xtask: installed {}", to.display());
    Ok(())
}

fn write_new(to: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    if to.exists() {
        eprintln!("xtask: kept the existing {}", to.display());
        return Ok(());
    }
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, contents).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    eprintln!("xtask: installed {}", to.display());
    Ok(())
}

/// `root` joined with an absolute `path` (as DESTDIR does).
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

pub(crate) fn run(
    tools: &Tools,
    prefix: &Path,
    root: &Path,
    profile: Profile,
) -> anyhow::Result<()> {
    build::all(tools, profile)?;
    let ws = workspace::root();
    let binary = ws.join("target").join(profile.dir()).join("bwmon");
    let bin = prefix.join("bin/bwmon");
    copy(&binary, &under(root, &bin), 0o755)?;

    // The vendor unit directory is ours to overwrite; /etc/systemd/system is the operator's.
    let unit = unit(&bin)?;
    let unit_path = under(root, &prefix.join("lib/systemd/system/bwmon.service"));
    if let Some(dir) = unit_path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&unit_path, &unit)?;
    eprintln!("xtask: installed {}", unit_path.display());
    let local = under(root, Path::new("/etc/systemd/system/bwmon.service"));
    if fs::read_to_string(&local).is_ok_and(|text| text != unit) {
        eprintln!(
            "xtask: {} differs from the installed unit and overrides it; left as it is (compare with {})",
            local.display(),
            unit_path.display()
        );
    }

    let etc = ws.join("bwmon-agent/etc");
    write_new(
        &under(root, Path::new("/etc/bwmon/bwmon.toml")),
        &fs::read_to_string(etc.join("bwmon.toml"))?,
        0o600,
    )?;
    write_new(
        &under(root, Path::new("/etc/bwmon/slices.toml")),
        &fs::read_to_string(etc.join("slices.toml"))?,
        0o644,
    )?;

    let generated = generate(&binary)?;
    let share = prefix.join("share");
    for g in &GENERATED {
        copy(
            &generated.join(g.file),
            &under(root, &share.join(g.local)),
            0o644,
        )?;
    }
    eprintln!(
        "xtask: done. Edit /etc/bwmon/bwmon.toml (interface, budgets), then: systemctl daemon-reload && systemctl enable --now bwmon"
    );
    Ok(())
}
