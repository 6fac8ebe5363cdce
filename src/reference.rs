//! The configuration reference (`docs/configuration.md`), generated from the command line's own
//! definitions (flags, environment variables, defaults, help) and the ranges the commands check,
//! so the document cannot drift from the code: `tests/it/docs.rs` fails when they differ.
//!
//! Regenerate: `cargo run --release --example config_reference > docs/configuration.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::{Arg, ArgAction, Command, CommandFactory};

use crate::cli::Cli;
use crate::config::{CHECKSUM_AUDIT_RATIO_RANGE, RANGES, RULES};

/// The command that regenerates the document, as the document and the test name it.
pub const REGENERATE: &str =
    "cargo run --release --example config_reference > docs/configuration.md";

/// The reference, and what it could not place.
#[derive(Debug)]
pub struct Reference {
    /// The document, as `docs/configuration.md` must hold it.
    pub markdown: String,
    /// Names in the ranges table that no flag or environment variable carries: a range checked
    /// for a setting that does not exist, or under a misspelt name.
    pub unmatched_ranges: Vec<String>,
    /// Every documented flag, as `command --flag` (for the test that each appears once).
    pub flags: Vec<String>,
}

/// The subcommands in the order the document gives them, with the path under `datapack-worker`.
const COMMANDS: &[&[&str]] = &[
    &["run"],
    &["migrate"],
    &["presign"],
    &["dlq", "list"],
    &["dlq", "redrive"],
    &["reconcile"],
];

const HEADER: &str = "\
# Configuration reference

<!-- generated from the command-line definitions (src/cli.rs, src/config.rs) and the ranges \
in src/config.rs; do not edit: regenerate with `REGENERATE`. tests/it/docs.rs fails when this file differs from what the code generates. -->

Every setting is a flag and, where the table names one, an environment variable; the flag wins.
Values are checked before anything starts: a value out of its range (inclusive), or one that
breaks a rule tying it to another setting, is refused with exit code 2 and the setting named.
Units are in the names. A flag listed under a command is documented where it first appears
(`migrate`, `dlq` and `reconcile` read `run`'s settings of the same name).

";

const AWS: &str = "\
## AWS credentials, region and endpoint

Not flags: the AWS SDK's standard chain reads them (`AWS_REGION`, or `AWS_DEFAULT_REGION`;
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`; `AWS_PROFILE`, SSO, web
identity (IRSA), EKS Pod Identity, container and instance roles; `AWS_ENDPOINT_URL`, which
`--aws-endpoint-url` also sets). The seed's `FILESYSTEM_S3_REGION`, `FILESYSTEM_S3_ACCESS_KEY`
and `FILESYSTEM_S3_SECRET_KEY` are used only when the standard variables are absent (the region
when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` is set; the keys when `AWS_ACCESS_KEY_ID` is
unset). S3 is addressed path-style, which works with every endpoint.

Logging reads `RUST_LOG` (filter, default `info,aws_config=warn,aws_smithy_runtime=warn,sqlx=warn`)
and `NO_COLOR` (see the table for every command above).
";

/// Builds the reference from [`Cli`]'s definitions.
pub fn configuration() -> Reference {
    let mut root = Cli::command();
    root.build();
    let mut page = Page {
        out: HEADER.replace("REGENERATE", REGENERATE),
        seen: BTreeMap::new(),
        used_ranges: Vec::new(),
        flags: Vec::new(),
    };
    page.globals(&root);
    for path in COMMANDS {
        if let Some(command) = find(&root, path) {
            page.command(path, command);
        }
    }
    page.out.push('\n');
    page.out.push_str(AWS);

    let unmatched_ranges = RANGES
        .iter()
        .map(|(name, _, _)| *name)
        .chain(RULES.iter().map(|(name, _)| *name))
        .filter(|name| !page.used_ranges.contains(name))
        .map(str::to_owned)
        .collect();
    Reference {
        markdown: page.out,
        unmatched_ranges,
        flags: page.flags,
    }
}

/// The reference while it is written: the text, and what it has documented so far.
struct Page {
    out: String,
    /// Each setting documented, by flag, variable, default and help: where it was first.
    seen: BTreeMap<String, String>,
    used_ranges: Vec<&'static str>,
    /// `datapack-worker [COMMAND] --flag`, one per setting documented.
    flags: Vec<String>,
}

impl Page {
    /// The settings every command reads.
    fn globals(&mut self, root: &Command) {
        self.out.push_str("## Every command\n\n");
        let globals: Vec<&Arg> = documented(root).filter(|a| a.is_global_set()).collect();
        table(&mut self.out, &globals, &mut self.used_ranges);
        for arg in &globals {
            let flag = long(arg);
            self.seen.insert(flag.clone(), "every command".into());
            self.flags.push(format!("datapack-worker {flag}"));
        }
    }

    /// One command's section: its own settings in a table, the ones an earlier section
    /// documented named with a link back.
    fn command(&mut self, path: &[&str], command: &Command) {
        let name = format!("datapack-worker {}", path.join(" "));
        let _ = writeln!(self.out, "\n## `{name}`\n");
        if let Some(about) = command.get_long_about().or(command.get_about()) {
            let _ = writeln!(self.out, "{}\n", one_line(&about.to_string()));
        }
        let mut own = Vec::new();
        let mut shared = Vec::new();
        for arg in documented(command).filter(|a| !a.is_global_set()) {
            let flag = long(arg);
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string);
            let key = format!("{flag}|{:?}|{}|{help:?}", env(arg), defaults(arg));
            match self.seen.get(&key) {
                Some(first) => shared.push(format!("`{flag}` ({first})")),
                None => {
                    self.seen.insert(key, format!("`{}`", path.join(" ")));
                    self.flags.push(format!("{name} {flag}"));
                    own.push(arg);
                }
            }
        }
        if own.is_empty() {
            self.out.push_str("No settings of its own.\n");
        } else {
            table(&mut self.out, &own, &mut self.used_ranges);
        }
        if !shared.is_empty() {
            let _ = writeln!(
                self.out,
                "\nAlso reads, as documented there: {}.",
                shared.join(", ")
            );
        }
    }
}

/// The arguments a user sets: not `--help` and `--version`.
fn documented(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| {
        !matches!(
            a.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
    })
}

fn find<'a>(root: &'a Command, path: &[&str]) -> Option<&'a Command> {
    path.iter().try_fold(root, |command, name| {
        command.get_subcommands().find(|c| c.get_name() == *name)
    })
}

fn long(arg: &Arg) -> String {
    arg.get_long()
        .map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"))
}

fn env(arg: &Arg) -> Option<String> {
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

fn defaults(arg: &Arg) -> String {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    values.join(",")
}

/// One row per argument: flag, environment variable, default, range, meaning.
fn table(out: &mut String, args: &[&Arg], used: &mut Vec<&'static str>) {
    out.push_str("| flag | environment | default | range | meaning |\n|---|---|---|---|---|\n");
    for arg in args {
        let flag = long(arg);
        let env = env(arg);
        let default = match (arg.is_required_set(), defaults(arg)) {
            (true, _) => "required".to_owned(),
            (false, d) if d.is_empty() => "–".to_owned(),
            (false, d) => format!("`{d}`{}", size_note(&flag, &d)),
        };
        let name = env.clone().unwrap_or_else(|| flag.clone());
        let range = range(&name, &flag, used);
        let mut meaning = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| one_line(&h.to_string()))
            .unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
            let _ = write!(meaning, ": one of {}", values.join(", "));
        }
        let env = env.map_or_else(|| "–".to_owned(), |e| format!("`{e}`"));
        let _ = writeln!(
            out,
            "| `{flag}` | {env} | {default} | {range} | {} |",
            cell(&meaning)
        );
    }
}

/// The range and rules of a setting, by environment variable or flag, as the commands check them.
fn range(name: &str, flag: &str, used: &mut Vec<&'static str>) -> String {
    let mut parts = Vec::new();
    for (key, least, most) in RANGES {
        if *key == name || *key == flag {
            used.push(key);
            parts.push(if *most == u64::MAX {
                format!("at least {least}")
            } else {
                format!("{}–{}", size(name, *least), size(name, *most))
            });
        }
    }
    if name == "CHECKSUM_AUDIT_RATIO" {
        let (least, most) = CHECKSUM_AUDIT_RATIO_RANGE;
        parts.push(format!("{least:.1}–{most:.1}"));
    }
    for (key, rule) in RULES {
        if *key == name {
            used.push(key);
            parts.push((*rule).to_owned());
        }
    }
    if parts.is_empty() {
        "–".to_owned()
    } else {
        parts.join("; ")
    }
}

/// A byte count in MiB or GiB when the setting is one and it divides evenly.
fn size(name: &str, value: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if !name.ends_with("_BYTES") || value == 0 {
        value.to_string()
    } else if value.is_multiple_of(GIB) {
        format!("{} GiB", value / GIB)
    } else if value.is_multiple_of(MIB) {
        format!("{} MiB", value / MIB)
    } else {
        value.to_string()
    }
}

fn size_note(flag: &str, default: &str) -> String {
    match default.parse::<u64>() {
        Ok(value) if flag.ends_with("-bytes") && value != 0 => {
            format!(" ({})", size("_BYTES", value))
        }
        _ => String::new(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}
