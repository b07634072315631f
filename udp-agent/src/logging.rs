//! Logs: `tracing` events on stderr, as text or as one JSON object a line
//! (`--log-format json`, for journald/CloudWatch pipelines that parse
//! fields), filtered like `RUST_LOG`.
//!
//! The agent never logs per packet: drops and failures are counted, and
//! warned about at a doubling interval ([`crate::stats::count_drop`]).

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// The filter when neither --log-level nor `RUST_LOG` says otherwise.
pub const DEFAULT_FILTER: &str = "info";

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields at the top level.
    Json,
}

/// Logging flags of `run`.
#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Metrics and logs")]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, env = "UDP_AGENT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Which logs to keep, in `RUST_LOG` syntax: a level (`error`, `warn`,
    /// `info`, `debug`, `trace`) or directives such as
    /// `info,udp_agent=debug`. Without it, `RUST_LOG` applies, else `info`.
    #[arg(long, env = "UDP_AGENT_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The filter: --log-level, else `RUST_LOG`, else [`DEFAULT_FILTER`]. An
/// invalid --log-level is an error; an invalid `RUST_LOG` falls back to the
/// default (and says so once logging is up).
fn filter(level: Option<&str>) -> Result<(EnvFilter, Option<String>), String> {
    if let Some(level) = level {
        return EnvFilter::try_new(level)
            .map(|f| (f, None))
            .map_err(|e| format!("--log-level {level:?} is not a log filter: {e}"));
    }
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => Ok((f, None)),
            Err(e) => Ok((
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!(
                    "RUST_LOG={v:?} is not a log filter ({e}); using {DEFAULT_FILTER:?}"
                )),
            )),
        },
        _ => Ok((EnvFilter::new(DEFAULT_FILTER), None)),
    }
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let (filter, warning) = filter(args.log_level.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let installed = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| format!("installing the logger: {e}"))?;
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// An error and its sources on one line: `a: b: c` (without the Debug dump
/// that the AWS SDK's `DisplayErrorContext` appends).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_level_must_parse() {
        assert!(filter(Some("debug")).is_ok());
        assert!(filter(Some("info,udp_agent=trace")).is_ok());
        let err = filter(Some("udp_agent=loud")).unwrap_err();
        assert!(err.contains("--log-level \"udp_agent=loud\""), "{err}");
    }

    #[test]
    fn format_names_on_the_command_line() {
        let names: Vec<String> = LogFormat::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(names, ["text", "json"]);
    }
}
