//! `bwmon generate`: shell completions and the man page, for `cargo xtask install`.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

/// Writes `bwmon.bash`, `_bwmon`, `bwmon.fish` and `bwmon.1` into `out` (created if need be).
///
/// # Errors
/// A file or the directory cannot be written.
pub fn generate(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cmd = Cli::command();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, "bwmon", out)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    page.extend(configuration_section().into_bytes());
    std::fs::write(out.join("bwmon.1"), page).context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}

/// The man page's CONFIGURATION section: every key of the configuration file with its doc,
/// from the one key table the parser reads.
fn configuration_section() -> String {
    // roff: a backslash is written `\e`; a line must not start with a control character.
    let text = |s: &str| s.replace('\\', "\\e").replace('\n', " ");
    let mut out = String::from(
        ".SH CONFIGURATION\nThe file given with \\fB--config\\fR (TOML). Every key but \\fBinterface\\fR is optional; the shipped example documents each.\n",
    );
    for (name, doc) in crate::config::keys::documented() {
        out.push_str(&format!(".TP\n\\fB{}\\fR\n\\&{}\n", text(name), text(doc)));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_man_page_lists_every_configuration_key() {
        let section = super::configuration_section();
        for (name, doc) in crate::config::keys::documented() {
            assert!(section.contains(&format!("\\fB{name}\\fR")), "{name}");
            assert!(!doc.is_empty(), "{name} has a doc");
        }
        assert!(section.starts_with(".SH CONFIGURATION\n"));
    }
}
