//! `bwmon check`: the configuration and slices files validated, whether the slices fit an HTB
//! tree, where notices go, and what the maps will take of the kernel's memory on this host.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{
    config::{Config, slices, slices::SliceSpec},
    htb::minors::Minors,
    policy::Limits,
};

/// Where the cgroup v2 hierarchy is, and which cgroup slices and patterns match nothing now
/// (a warning: a job's cgroup may not exist yet; its slice is there when it does).
fn say_cgroups(parsed: &slices::Parsed, hierarchy: Option<&crate::cgroup::Hierarchy>) {
    let named: Vec<(&str, &crate::cgroup::CgroupPath)> = (parsed.slices.iter())
        .filter_map(|s| Some((s.name.as_str(), s.cgroup.as_ref()?)))
        .collect();
    let Some(h) = hierarchy else {
        let uses = !named.is_empty() || !parsed.patterns.is_empty();
        let then = if uses {
            ": the cgroup slices and [[cgroups]] patterns match nothing"
        } else {
            " (cgroup slices need one)"
        };
        eprintln!("bwmon: warning: no cgroup v2 hierarchy is mounted{then}");
        return;
    };
    println!("{}", h.describe());
    let paths: Vec<&crate::cgroup::CgroupPath> = named.iter().map(|(_, p)| *p).collect();
    let patterns: Vec<&crate::cgroup::Pattern> =
        parsed.patterns.iter().map(|p| &p.pattern).collect();
    let found = crate::cgroup::scan(h, &paths, &patterns);
    for (name, path) in &named {
        if !found.ids.contains_key(*path) {
            eprintln!(
                "bwmon: warning: slice '{name}': cgroup {path} does not exist now; it is charged once it does"
            );
        }
    }
    for (i, p) in patterns.iter().enumerate() {
        let n = found.found.iter().filter(|(at, _)| *at == i).count();
        if n == 0 {
            eprintln!(
                "bwmon: warning: [[cgroups]] pattern {} matches no cgroup now; a cgroup that matches becomes a slice within an interval",
                p.as_str()
            );
        } else {
            println!("[[cgroups]] pattern {}: {n} cgroups match now", p.as_str());
        }
    }
}

/// `bwmon check`'s exit code when the files are usable but some slices are skipped, or the
/// slices file is missing (`bwmon run` starts then, with a warning).
const SOME_SKIPPED: u8 = 2;

/// Validates the configuration at `config` and the slices file it names: every problem is
/// printed; success is 0, usable with skipped slices (or no slices file yet) is 2.
///
/// # Errors
/// A file that does not load, a missing interface, or more leaves needed from the start than
/// an HTB tree holds.
pub fn check(config: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    // The interface must exist where the daemon will run (labs: create it first).
    crate::interface::index(&config.interface)
        .with_context(|| format!("{}: interface", config.path.display()))?;
    // A missing slices file is what `bwmon run` starts with too: a host with no tenants yet
    // (root and default are accounted; the file is read when it appears). Said, exit 2.
    if let Err(e) = std::fs::symlink_metadata(&config.slices)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        eprintln!(
            "bwmon: warning: {}: the slices file does not exist; bwmon run starts without slices (root and default are accounted) and reads it once it appears",
            config.slices.display()
        );
        println!(
            "{}: ok; {}: missing, 0 slices",
            config.path.display(),
            config.slices.display()
        );
        return Ok(ExitCode::from(SOME_SKIPPED));
    }
    let parsed = slices::read(&config.slices)?;
    for w in &parsed.warnings {
        eprintln!("bwmon: warning: {w}");
    }
    // Where notices go; the webhook's secret file is read and its mode checked.
    for line in crate::notify::destinations(&config)? {
        println!("{line}");
    }
    say_cgroups(&parsed, crate::cgroup::Hierarchy::locate().as_ref());
    let skipped = parsed.skipped.map(|s| {
        eprintln!("{s}");
        s.problems.len()
    });
    let leaves = Leaves::needed(&config, &parsed.slices);
    let Leaves {
        from_start,
        capacity,
        ..
    } = leaves;
    if !leaves.fit() {
        anyhow::bail!(
            "{}: {from_start} leaves are needed from the start (slices whose rates or shares differ from the defaults) but an HTB tree holds {capacity}; give fewer slices their own rates",
            config.slices.display()
        );
    }
    if leaves.shared() {
        println!(
            "note: {} slices, {capacity} leaves: only slices that send (or have rates of their own) hold leaves; when all are taken, the others share the default leaves and are still counted",
            parsed.slices.len()
        );
    }
    let load = crate::datapath::memory::Load::of(&parsed.slices, &config);
    if let Some(line) = crate::datapath::memory::for_this_host(&load) {
        println!("{line}");
    }
    if config.metrics.listen.is_some() {
        config
            .metrics
            .access()
            .with_context(|| format!("{}: metrics.token_file", config.path.display()))?;
    }
    if let Some(exposed) = config.metrics.exposure() {
        println!("{exposed}");
    }
    println!(
        "{}: ok; {}: {} slices{}",
        config.path.display(),
        config.slices.display(),
        parsed.slices.len(),
        skipped.map_or(String::new(), |n| format!(
            ", {n} problems: those slices are skipped"
        ))
    );
    Ok(if skipped.is_some() {
        ExitCode::from(SOME_SKIPPED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `bwmon check --configured`'s exit code when the file names no interface.
const NOT_CONFIGURED: u8 = 1;

/// Whether the configuration at `config` names an interface: 0 when it does, 1 (and a note on
/// stderr) when it does not or does not exist. The Debian package ships its `bwmon.toml` with
/// `interface` unset and the unit runs this as its `ExecCondition`, so an installed but
/// unconfigured bwmon is skipped (at boot, on install), not failed. A file that cannot be read
/// or parsed passes: `bwmon run` then says what is wrong, as a failure.
pub fn configured(config: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "bwmon: {} does not exist: bwmon is not configured",
                config.display()
            );
            return ExitCode::from(NOT_CONFIGURED);
        }
        Err(_) => return ExitCode::SUCCESS,
    };
    let names_interface = text
        .parse::<toml::Table>()
        .map_or(true, |t| t.contains_key("interface"));
    if names_interface {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "bwmon: {} names no interface yet: set `interface` (and the budgets), then `systemctl start bwmon`",
        config.display()
    );
    ExitCode::from(NOT_CONFIGURED)
}

/// How a slices file fits an HTB tree's leaves. Classes on demand: only a class whose limits
/// differ from the default leaf's holds a leaf from the start; the others get one when they
/// send, and share the default leaves (still counted) when none is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leaves {
    /// Leaves held from the start.
    pub(crate) from_start: usize,
    /// The slices in the file.
    pub(crate) slices: usize,
    /// The leaves an HTB tree holds.
    pub(crate) capacity: usize,
}

impl Leaves {
    /// What `slices` need under `config`.
    pub(crate) fn needed(config: &Config, slices: &[SliceSpec]) -> Leaves {
        let node = config.node();
        let tree = config.tree_spec();
        let from_start = slices
            .iter()
            .map(|s| {
                let limits = Limits::base(&s.attrs, &config.defaults, &node);
                let differs = crate::sync::plan::differs_from_default(&limits, &tree);
                differs.iter().filter(|(_, d)| **d).count()
            })
            .sum();
        Leaves {
            from_start,
            slices: slices.len(),
            capacity: Minors::default().available(),
        }
    }

    /// Whether the leaves needed from the start fit the tree (else the daemon could not
    /// apply every slice's rates).
    pub(crate) fn fit(&self) -> bool {
        self.from_start <= self.capacity
    }

    /// Whether not every slice can hold both its leaves at once: then only those that send
    /// (or have rates of their own) do.
    pub(crate) fn shared(&self) -> bool {
        self.slices * 2 > self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rspec::Attributes;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("/etc/bwmon/bwmon.toml"), text).unwrap()
    }

    fn slices(n: u32, attrs: Attributes) -> Vec<SliceSpec> {
        (0..n)
            .map(|i| SliceSpec {
                name: format!("s{i}"),
                xid: 1000 + i,
                sources: Vec::new(),
                count: None,
                attrs,
                cgroup: None,
            })
            .collect()
    }

    #[test]
    fn configured_only_when_the_file_names_an_interface() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let code = |path: &Path| configured(path);
        assert_eq!(code(&dir.path().join("absent.toml")), ExitCode::from(1));
        assert_eq!(
            code(&file(
                "example.toml",
                "# interface = \"eth0\"\nperiod = \"1d\"\n"
            )),
            ExitCode::from(1)
        );
        assert_eq!(
            code(&file("set.toml", "interface = \"eth0\"\n")),
            ExitCode::SUCCESS
        );
        // Broken otherwise: passes, so that `bwmon run` fails and says why.
        assert_eq!(
            code(&file("broken.toml", "interface = = 1\n")),
            ExitCode::SUCCESS
        );
        assert_eq!(
            code(&file(
                "bad-key.toml",
                "interface = \"eth0\"\nnode_cap = 1\n"
            )),
            ExitCode::SUCCESS
        );
    }

    #[test]
    fn slices_with_the_default_limits_hold_no_leaf_from_the_start() {
        let leaves = Leaves::needed(
            &config("interface = \"eth0\"\n"),
            &slices(3, Attributes::default()),
        );
        assert_eq!(leaves.from_start, 0);
        assert_eq!(leaves.slices, 3);
        assert!(leaves.fit());
        assert!(!leaves.shared());
    }

    #[test]
    fn each_class_with_limits_of_its_own_holds_a_leaf_from_the_start() {
        let general = Attributes {
            share: Some(2),
            ..Attributes::default()
        };
        let both = Attributes {
            i2_share: Some(3),
            ..general
        };
        let c = config("interface = \"eth0\"\n");
        assert_eq!(Leaves::needed(&c, &slices(5, general)).from_start, 5);
        assert_eq!(Leaves::needed(&c, &slices(5, both)).from_start, 10);
    }

    #[test]
    fn the_defaults_count_as_a_slices_own_limits() {
        let c = config("interface = \"eth0\"\n[defaults]\nnet_share = 4\n");
        assert_eq!(
            Leaves::needed(&c, &slices(7, Attributes::default())).from_start,
            7
        );
    }

    #[test]
    fn more_leaves_from_the_start_than_a_tree_holds_do_not_fit() {
        let c = config("interface = \"eth0\"\n");
        let capacity = Minors::default().available();
        let own = Attributes {
            share: Some(2),
            ..Attributes::default()
        };
        let n = u32::try_from(capacity).unwrap();
        let at = Leaves::needed(&c, &slices(n, own));
        assert!(at.fit(), "{at:?}");
        assert!(at.shared(), "{at:?}");
        assert!(!Leaves::needed(&c, &slices(n + 1, own)).fit());
        // Many slices sharing the default leaves still fit.
        let quiet = Leaves::needed(&c, &slices(n + 1, Attributes::default()));
        assert!(quiet.fit() && quiet.shared(), "{quiet:?}");
    }
}
