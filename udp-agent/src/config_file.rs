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

use std::{
    ffi::OsString,
    fmt, io,
    path::{Path, PathBuf},
};

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, parser::ValueSource};
use thiserror::Error;

use crate::cli::Cli;

/// The `run` argument that names the file (not a key of the file).
const CONFIG_ID: &str = "config";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
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
        for v in values {
            out.push(match v {
                None => OsString::from(format!("--{}", key.long)),
                Some(v) => OsString::from(format!("--{}={v}", key.long)),
            });
        }
    }
    Ok(out)
}

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
