//! Shell completions and man pages, generated from the clap definitions so
//! that they never drift from the commands.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "hoard", &mut std::io::stdout());
    Ok(())
}

/// hoard.1 and one page per command, named as git names its pages
/// (hoard-job-run.1).
pub(crate) fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let mut cmd = crate::Cli::command();
    cmd.build();
    write_pages(dir, &cmd, "hoard")
}

fn write_pages(dir: &Path, cmd: &clap::Command, name: &str) -> Result<()> {
    // clap names commands with &'static str; a page name lives as long as
    // this short-lived command anyway.
    let page = cmd.clone().name(&*Box::leak(name.to_string().into_boxed_str()));
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    // Documentation for everyone (hoard's umask keeps what it makes private).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Every argument of every command says what it is for (issue 29,
    /// item 9): `--help`, the man pages and completions are built from it.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !cmd.is_hide_set() {
                missing.push(format!("{path} (the command)"));
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&crate::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help text:\n{}", missing.join("\n"));
    }
}
