//! `udp-agent run --config FILE`: the flags of `run` in a TOML file.
//!
//! Keys are the long flag names without their dashes (`iface`, `port`,
//! `event-bus`, `max-events-per-hour`…): the file is the command line
//! written down, so `udp-agent run --help` documents both. A list flag takes
//! a TOML array (`port = ["514", "6000-6010"]`), a switch a boolean
//! (`wait-for-iface = true`), everything else a string or a number.
//!
//! Precedence: command line > `UDP_AGENT_*` environment > file > defaults.
//! clap cannot read files, so the merge works on clap's own terms: the
//! command line is parsed once; every file key whose flag got no value from
//! the command line or the environment (clap's `value_source`) becomes a
//! `--flag=value` argument appended to it; the result is parsed again, so
//! file values go through exactly the parsing and validation of flags. A
//! list given on the command line or in the environment replaces the file's
//! list rather than adding to it.
//!
//! A key that is not a flag of `run` is an error naming it: a typo must not
//! silently fall back to a default (say, an unlimited rate).
//!
//! Memory. A file larger than [`MAX_FILE_BYTES`] is refused before it is
//! parsed. Its lists are condensed before clap sees them: repeated values
//! are dropped, `port` becomes merged ranges (every port listed one by one
//! is `1-65535`), and a list goes to clap as one argument.

use std::{
    collections::HashSet,
    ffi::OsString,
    fmt,
    io::{self, Read},
    path::{Path, PathBuf},
};

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, parser::ValueSource};
use thiserror::Error;

use crate::{
    config::Cli,
    ports::{PortRange, compact},
};

/// The `run` argument that names the file (not a key of the file).
const CONFIG_ID: &str = "config";

/// Largest config file read. Settings take a few hundred bytes, and every
/// port listed one by one about 0.5 MB. The TOML parser holds some 160
/// bytes per array element at its peak (measured: a 9.4 MB file of 1.2 M
/// ports took 195 MB), and a file of one-digit elements has one every two
/// bytes: this bounds that to about 80 MB. Source lists longer than fit
/// are loaded with `udp-agent sources allow|deny` once the agent runs.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "config file {path} is larger than {limit} bytes: it holds settings, not data; list port ranges (`6000-6010`) rather than every port, and load long source lists with `udp-agent sources allow|deny` once the agent runs"
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("unknown key `{key}` in {path}{hint} (known keys: {known})")]
    UnknownKey {
        key: String,
        path: PathBuf,
        hint: String,
        known: String,
    },
    #[error("`{key}` in {path}: {message}")]
    Value {
        key: String,
        path: PathBuf,
        message: String,
    },
    #[error("in {path}: {message}")]
    Rejected { path: PathBuf, message: String },
}

/// Why the command line (with its config file) was not accepted.
#[derive(Debug)]
pub enum CliError {
    /// clap's own: usage errors, and `--help`/`--version` (which are not
    /// failures); [`clap::Error::exit`] prints and exits correctly.
    Clap(clap::Error),
    Config(ConfigError),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Clap(e) => e.fmt(f),
            CliError::Config(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CliError {}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Config(e)
    }
}

/// Parses the process's command line, merging `run --config FILE`.
pub fn parse() -> Result<Cli, CliError> {
    parse_from(std::env::args_os())
}

/// Parses `argv` (program name first), merging `run --config FILE`.
pub fn parse_from<I, T>(argv: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Cli::command()
        .try_get_matches_from(argv.clone())
        .map_err(CliError::Clap)?;
    let file_args = match matches.subcommand() {
        Some(("run", run)) => match run.get_one::<PathBuf>(CONFIG_ID) {
            Some(path) => Some((path.clone(), args_from_file(path, run)?)),
            None => None,
        },
        _ => None,
    };
    let Some((path, extra)) = file_args.filter(|(_, extra)| !extra.is_empty()) else {
        return Cli::from_arg_matches(&matches).map_err(CliError::Clap);
    };
    argv.extend(extra);
    // The command line alone parsed, so an error now comes from the file.
    let matches = Cli::command()
        .try_get_matches_from(argv)
        .map_err(|e| ConfigError::Rejected {
            path: path.clone(),
            message: clap_message(&e),
        })?;
    Cli::from_arg_matches(&matches).map_err(|e| {
        CliError::Config(ConfigError::Rejected {
            path,
            message: clap_message(&e),
        })
    })
}

/// A flag of `run` as the file knows it.
#[derive(Debug)]
struct Key {
    /// The long name: the file's key.
    long: String,
    /// clap's id, for `value_source`.
    id: String,
    /// A list (`--iface a --iface b`).
    list: bool,
    /// A switch: takes no value.
    switch: bool,
    /// Splits one value into several at this character.
    delimiter: Option<char>,
}

/// The keys a config file may use: every long flag of `run` but --config.
fn keys() -> Vec<Key> {
    let cli = Cli::command();
    let run = cli
        .find_subcommand("run")
        .expect("the CLI has a `run` subcommand");
    run.get_arguments()
        .filter(|a| a.get_id() != CONFIG_ID)
        .filter_map(|a| {
            let long = a.get_long()?;
            if matches!(long, "help" | "version") {
                return None;
            }
            Some(Key {
                long: long.to_owned(),
                id: a.get_id().as_str().to_owned(),
                list: matches!(a.get_action(), ArgAction::Append),
                switch: !a.get_action().takes_values(),
                delimiter: a.get_value_delimiter(),
            })
        })
        .collect()
}

/// The keys a config file may use, sorted (for documentation and tests).
pub fn known_keys() -> Vec<String> {
    let mut k: Vec<String> = keys().into_iter().map(|k| k.long).collect();
    k.sort();
    k
}

/// Reads `path` and turns the keys that the command line and environment
/// left unset into `--flag=value` arguments.
fn args_from_file(path: &Path, run: &ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let text = read_bounded(path)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let keys = keys();
    let mut out = Vec::new();
    for (name, value) in &table {
        let Some(key) = keys.iter().find(|k| k.long == *name) else {
            return Err(unknown_key(name, path, &keys));
        };
        let from_outside = matches!(
            run.value_source(&key.id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let value_err = |message: String| ConfigError::Value {
            key: name.clone(),
            path: path.to_path_buf(),
            message,
        };
        // Checked even when overridden: a broken file is broken.
        let values = flag_values(key, value).map_err(value_err)?;
        if from_outside {
            continue;
        }
        let values = if key.list {
            condense(key, values)
        } else {
            values
        };
        // A list as one `--flag=a,b,c` where the flag splits at commas:
        // clap keeps a few hundred bytes per occurrence, so a long list is
        // one occurrence rather than thousands.
        let joinable = key.delimiter == Some(',')
            && values.len() > 1
            && values
                .iter()
                .all(|v| v.as_deref().is_some_and(|v| !v.contains(',')));
        if joinable {
            let joined: Vec<&str> = values.iter().filter_map(Option::as_deref).collect();
            out.push(OsString::from(format!(
                "--{}={}",
                key.long,
                joined.join(",")
            )));
            continue;
        }
        for v in values {
            out.push(match v {
                None => OsString::from(format!("--{}", key.long)),
                Some(v) => OsString::from(format!("--{}={v}", key.long)),
            });
        }
    }
    Ok(out)
}

/// The file's text, refusing more than [`MAX_FILE_BYTES`] (checked on what
/// is read, too: a pipe or a special file has no size).
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_large = || ConfigError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_FILE_BYTES,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

/// A list's values without repeats, in first-seen order; `port`'s as
/// merged ranges. A value that is not a port is left for clap to report.
fn condense(key: &Key, values: Vec<Option<String>>) -> Vec<Option<String>> {
    if key.long == PORT_KEY {
        let ranges: Result<Vec<PortRange>, _> = values
            .iter()
            .map(|v| v.as_deref().unwrap_or_default().parse::<PortRange>())
            .collect();
        if let Ok(ranges) = ranges {
            let mut enabled = vec![false; 1 << 16];
            for port in ranges.iter().flat_map(PortRange::iter) {
                enabled[usize::from(port)] = true;
            }
            let ports = (1..=u16::MAX).filter(|p| enabled[usize::from(*p)]);
            return compact(ports).iter().map(|r| Some(r.to_string())).collect();
        }
    }
    let mut seen = HashSet::with_capacity(values.len());
    let first: Vec<bool> = values.iter().map(|v| seen.insert(v)).collect();
    drop(seen);
    values
        .into_iter()
        .zip(first)
        .filter_map(|(v, first)| first.then_some(v))
        .collect()
}

/// The file key of `--port`.
const PORT_KEY: &str = "port";

/// The flag's values for one file value: `Some(text)` per value, `None` for
/// a switch that is on.
fn flag_values(key: &Key, value: &toml::Value) -> Result<Vec<Option<String>>, String> {
    if key.switch {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![None]),
            toml::Value::Boolean(false) => Ok(vec![]),
            other => Err(format!("must be true or false, not {}", other.type_str())),
        };
    }
    match value {
        toml::Value::Array(items) if key.list => items
            .iter()
            .map(|v| scalar(v).map(Some))
            .collect::<Result<_, _>>(),
        toml::Value::Array(_) => Err("takes one value, not a list".to_owned()),
        v => Ok(vec![Some(scalar(v)?)]),
    }
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "must be a string or a number, not {}",
            other.type_str()
        )),
    }
}

fn unknown_key(name: &str, path: &Path, keys: &[Key]) -> ConfigError {
    let dashed = name.replace('_', "-");
    let hint = if name == CONFIG_ID {
        " (a config file cannot name another one)".to_owned()
    } else if dashed != name && keys.iter().any(|k| k.long == dashed) {
        format!(" (did you mean `{dashed}`? keys are spelt like the flags)")
    } else {
        String::new()
    };
    ConfigError::UnknownKey {
        key: name.to_owned(),
        path: path.to_path_buf(),
        hint,
        known: known_keys().join(", "),
    }
}

/// clap's message without its "error: " prefix and usage tips.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or(&text).trim();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_of_run_is_a_key() {
        let keys = known_keys();
        for k in [
            "iface",
            "port",
            "event-bus",
            "rate",
            "allow",
            "deny",
            "pin-dir",
            "metrics-addr",
            "log-format",
            "wait-for-iface",
            "max-events-per-hour",
            "dead-letter",
            "format",
            "pack",
            "pack-max-bytes",
            "max-entry-bytes",
        ] {
            assert!(keys.iter().any(|x| x == k), "`{k}` missing from {keys:?}");
        }
        assert!(!keys.iter().any(|x| x == "config" || x == "help"));
    }

    #[test]
    fn lists_and_switches_are_recognised() {
        let keys = keys();
        let key = |n: &str| keys.iter().find(|k| k.long == n).unwrap();
        assert!(key("iface").list && key("port").list && key("allow").list);
        assert!(!key("rate").list && !key("rate").switch);
        assert!(key("wait-for-iface").switch);
        assert!(key("pack").switch && !key("format").list);
    }
}
