//! Where batches of entries go: `stdout` (the dry run) or `eventbridge`.
//!
//! How `--sink` and `--event-bus` combine ([`select`]) is decided in one
//! place so that nobody is surprised:
//!
//! | `--sink`          | `--event-bus` given         | not given                      |
//! |-------------------|-----------------------------|--------------------------------|
//! | `auto` (default)  | EventBridge, to that bus    | stdout dry run, bus `default`  |
//! | `stdout`          | dry run printing that bus   | dry run, bus `default`         |
//! | `eventbridge`     | EventBridge, to that bus    | EventBridge, bus `default`     |
//!
//! So a run with no bus configured stays the dry run unless
//! `--sink eventbridge` asks for the account's `default` bus explicitly, and
//! the entries printed by a dry run are exactly the ones the same command
//! line with `--sink eventbridge` would send.

pub mod eventbridge;
pub mod stdout;

use crate::encode::DEFAULT_EVENT_BUS;

/// `--sink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// EventBridge if `--event-bus` is given, stdout otherwise.
    Auto,
    /// One PutEvents request entry per line on stdout (logs go to stderr).
    Stdout,
    /// PutEvents to `--event-bus` (or the `default` bus).
    #[value(name = "eventbridge")]
    EventBridge,
}

/// The sink a run uses, once `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selected {
    Stdout,
    EventBridge,
}

/// Resolves `--sink` against `--event-bus` (see the table above).
pub fn select(kind: SinkKind, event_bus: Option<&str>) -> Selected {
    match (kind, event_bus) {
        (SinkKind::Stdout, _) => Selected::Stdout,
        (SinkKind::EventBridge, _) => Selected::EventBridge,
        (SinkKind::Auto, Some(_)) => Selected::EventBridge,
        (SinkKind::Auto, None) => Selected::Stdout,
    }
}

/// The `EventBusName` every entry carries, whichever sink prints or sends it.
pub fn event_bus_name(event_bus: Option<&str>) -> &str {
    event_bus.unwrap_or(DEFAULT_EVENT_BUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_selection_table() {
        use Selected::*;
        use SinkKind as K;
        let bus = Some("orders");
        assert_eq!(select(K::Auto, bus), EventBridge);
        assert_eq!(select(K::Auto, None), Stdout);
        assert_eq!(select(K::Stdout, bus), Stdout);
        assert_eq!(select(K::Stdout, None), Stdout);
        assert_eq!(select(K::EventBridge, bus), EventBridge);
        assert_eq!(select(K::EventBridge, None), EventBridge);
    }

    #[test]
    fn bus_name_defaults_to_default() {
        assert_eq!(event_bus_name(None), "default");
        assert_eq!(
            event_bus_name(Some(
                "arn:aws:events:us-east-1:123456789012:event-bus/orders"
            )),
            "arn:aws:events:us-east-1:123456789012:event-bus/orders"
        );
    }

    #[test]
    fn sink_names_on_the_command_line() {
        use clap::ValueEnum;
        let names: Vec<String> = SinkKind::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(names, ["auto", "stdout", "eventbridge"]);
    }
}
