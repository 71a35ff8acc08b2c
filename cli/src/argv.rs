//! A command's typed arguments, and back: a job's backups and maintenance
//! steps are the user's commands, built as typed values. Each starts as
//! the parser's own defaults ([`command`]), the job sets the fields it
//! decides, and [`line`] writes the value back as the command line of the
//! child `hoard` that runs it. Flag names come from the parser, field by
//! field, so no job code spells a flag: a field renamed or retyped in a
//! command fails to compile in the job, not at run time.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Display;

use anyhow::{anyhow, Context, Result};
use clap::{ArgAction, CommandFactory, FromArgMatches};
use serde::Serialize;
use serde_json::Value;

/// The arguments of subcommand `name` as the parser makes them from its
/// required arguments alone: every default in place. The required ones
/// hold placeholders, for the caller to set.
pub(crate) fn command<T: FromArgMatches>(name: &str) -> T {
    defaults(name).expect("a command parses from its required arguments")
}

/// The command line (after `hoard`) that parses back into `args`, for
/// subcommand `name`: each field as its flag, values the parser would
/// take anyway (its defaults) left out.
pub(crate) fn line(name: &str, args: &impl Serialize) -> Vec<OsString> {
    argv(name, args).expect("every field of a command is an argument")
}

fn defaults<T: FromArgMatches>(name: &str) -> Result<T> {
    let cli = crate::Cli::command();
    let sub = cli
        .find_subcommand(name)
        .ok_or_else(|| anyhow!("hoard has no command {name}"))?;
    let mut line: Vec<OsString> = vec!["hoard".into(), name.into()];
    for a in sub.get_arguments().filter(|a| a.is_required_set()) {
        match a.get_long() {
            Some(long) => line.extend([format!("--{long}").into(), "-".into()]),
            None => line.push("-".into()),
        }
    }
    let matches = cli.try_get_matches_from(line).context("the parser's defaults")?;
    let (_, sub) = matches.subcommand().ok_or_else(|| anyhow!("no subcommand"))?;
    Ok(T::from_arg_matches(sub)?)
}

fn argv(name: &str, args: &impl Serialize) -> Result<Vec<OsString>> {
    let cli = crate::Cli::command();
    let sub = cli
        .find_subcommand(name)
        .ok_or_else(|| anyhow!("hoard has no command {name}"))?;
    let mut fields = BTreeMap::new();
    flatten(serde_json::to_value(args)?, &mut fields);
    let mut line: Vec<OsString> = vec![name.into()];
    let mut positionals = Vec::new();
    for a in sub.get_arguments() {
        let Some(value) = fields.remove(a.get_id().as_str()) else {
            continue;
        };
        let values: Vec<String> = match value {
            Value::Null => continue,
            Value::Array(items) => items.iter().map(text).collect(),
            v => vec![text(&v)],
        };
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if values == defaults || (values == ["false"] && matches!(a.get_action(), ArgAction::SetTrue)) {
            continue;
        }
        let Some(long) = a.get_long() else {
            positionals.extend(values);
            continue;
        };
        for v in values {
            line.push(format!("--{long}").into());
            if !matches!(a.get_action(), ArgAction::SetTrue) {
                line.push(v.into());
            }
        }
    }
    if let Some(field) = fields.keys().next() {
        return Err(anyhow!("{name}: field {field} has no argument"));
    }
    line.extend(positionals.into_iter().map(OsString::from));
    Ok(line)
}

/// A command's fields by argument id: flattened groups of arguments
/// (`#[command(flatten)]`) are nested objects in the value.
fn flatten(value: Value, into: &mut BTreeMap<String, Value>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            match v {
                Value::Object(_) => flatten(v, into),
                v => {
                    into.insert(k, v);
                }
            }
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Serializes a field as the text its parser reads (`Display`).
pub(crate) fn as_text<T: Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// [`as_text`] of an optional field.
pub(crate) fn as_text_opt<T: Display, S: serde::Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A tree's chunk size as `--tree-chunk-avg` reads it: the average, in bytes.
pub(crate) fn avg_opt<S: serde::Serializer>(
    v: &Option<hoard_engine::CdcParams>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(p) => s.collect_str(&p.avg),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parsed(line: Vec<OsString>) -> crate::Command {
        let argv = std::iter::once(OsString::from("hoard")).chain(line);
        crate::Cli::try_parse_from(argv).unwrap().command
    }

    fn same(a: &impl Serialize, b: &impl Serialize) {
        assert_eq!(serde_json::to_value(a).unwrap(), serde_json::to_value(b).unwrap());
    }

    #[test]
    fn typed_commands_come_back_whole_from_their_command_lines() {
        let mut vm: crate::qemu::BackupVm = command("backup-vm");
        vm.live.qmp = "/run/100.qmp".into();
        vm.live.id = "100".into();
        vm.live.config_files = vec!["/etc/a.conf".into(), "/etc/b.conf".into()];
        vm.live.chunk_size = crate::args::parse_chunk_size("1M").unwrap();
        vm.live.write.compression = "zstd:3".parse().unwrap();
        vm.live.write.threads = 3;
        vm.live.write.bwlimit.bwlimit = Some(1 << 26);
        vm.live.write.json = true;
        vm.mode = crate::qemu::ModeArg::Stop;
        vm.qga = Some("/run/100.qga".into());
        vm.no_fsfreeze = true;
        vm.force_stop = true;
        vm.stop_timeout = 9;
        let crate::Command::BackupVm(back) = parsed(line("backup-vm", &vm)) else {
            panic!("not backup-vm");
        };
        same(&back, &vm);

        let mut plain: crate::backup::Backup = command("backup");
        plain.kind = hoard_engine::Kind::Ct;
        plain.id = "etc".into();
        plain.tree.exclude = vec!["*.bak".into(), "tmp/".into()];
        plain.tree.one_file_system = false;
        plain.tree.tree_chunk_avg = Some(crate::tree::parse_avg("256K").unwrap());
        plain.images = vec!["etc.tree:/etc".into()];
        let crate::Command::Backup(back) = parsed(line("backup", &plain)) else {
            panic!("not backup");
        };
        same(&back, &plain);

        let mut prune: crate::maintenance::Prune = command("prune");
        prune.keep_last = Some(3);
        prune.keep_monthly = Some(12);
        prune.json = true;
        let crate::Command::Prune(back) = parsed(line("prune", &prune)) else {
            panic!("not prune");
        };
        same(&back, &prune);
    }

    #[test]
    fn defaults_are_left_to_the_parser() {
        let ct: crate::ct::BackupCt = command("backup-ct");
        assert_eq!(line("backup-ct", &ct), ["backup-ct", "--name", "-"]);
    }
}
