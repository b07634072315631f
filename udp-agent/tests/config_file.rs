//! `udp-agent run --config FILE`: file values apply, flags and environment
//! win over them, and an unknown key is an error that names it.
//!
//! The parsing tests drive the library's parser and need nothing; the
//! environment tests run the binary (whose first step, before any privilege
//! check, validates the merged settings and names the value it rejects);
//! the last test runs an agent configured by a file on a veth pair (root
//! only, otherwise `SKIPPED:`).

use std::{io::Write, path::PathBuf, process::Output, time::Duration};

use tempfile::NamedTempFile;
use test_support::{Agent, VethNs, agent_command, pin_dir, privileged};
use udp_agent::{
    config::file::{CliError, parse_from},
    config::{Command, RunArgs},
};

fn file(text: &str) -> NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("a temporary file");
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// This process's environment must not configure the agent, or it would
/// win over the files below.
fn clean_env() {
    let set: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        // UDP_AGENT_TEST_* configure the test harness, not the agent.
        .filter(|k| k.starts_with("UDP_AGENT_") && !k.starts_with("UDP_AGENT_TEST_"))
        .collect();
    assert!(set.is_empty(), "unset {set:?} to run these tests");
}

fn run_args(f: &NamedTempFile, extra: &[&str]) -> Result<RunArgs, CliError> {
    clean_env();
    let path = f.path().to_str().unwrap();
    let argv = ["udp-agent", "run", "--config", path]
        .into_iter()
        .chain(extra.iter().copied());
    match parse_from(argv)?.command {
        Command::Run(args) => Ok(args),
        other => panic!("parsed as {other:?}"),
    }
}

fn error(f: &NamedTempFile, extra: &[&str]) -> String {
    match run_args(f, extra) {
        Ok(args) => panic!("accepted: {args:?}"),
        Err(e) => e.to_string(),
    }
}

const FILE: &str = r#"
# The flags of `run`, without their dashes.
iface = ["eth0", "eth1"]
port = ["514", "6000-6010"]
event-bus = "udp-events"
rate = 1000
burst = 2000
allow = ["198.18.0.0/15"]
max-events-per-hour = 500000
request-timeout = "3s"
wait-for-iface = true
log-format = "json"
metrics-addr = "127.0.0.1:9102"
"#;

#[test]
fn file_values_apply() {
    let f = file(FILE);
    let a = run_args(&f, &[]).unwrap();
    assert_eq!(a.ifaces, ["eth0", "eth1"]);
    let ports: Vec<String> = a.ports.iter().map(ToString::to_string).collect();
    assert_eq!(ports, ["514", "6000-6010"]);
    assert_eq!(a.event_bus.as_deref(), Some("udp-events"));
    assert_eq!((a.port_limit.rate, a.port_limit.burst), (1000, 2000));
    assert_eq!(a.firewall.allow, ["198.18.0.0/15"]);
    assert_eq!(a.eventbridge.max_events_per_hour, 500_000);
    assert_eq!(a.eventbridge.request_timeout.as_secs(), 3);
    assert!(a.wait_for_iface);
    assert_eq!(a.log.log_format, udp_agent::logging::LogFormat::Json);
    assert_eq!(a.metrics_addr, Some("127.0.0.1:9102".parse().unwrap()));
    assert_eq!(a.config.as_deref(), Some(f.path()));
    // Untouched settings keep their defaults.
    assert_eq!(a.source, "udp.raw");
    assert_eq!(a.eventbridge.max_in_flight, 32);
}

#[test]
fn flags_override_the_file() {
    let f = file(FILE);
    let a = run_args(
        &f,
        &["--rate", "5", "--iface", "ens5", "--event-bus", "other"],
    )
    .unwrap();
    assert_eq!(a.port_limit.rate, 5);
    // A list on the command line replaces the file's list.
    assert_eq!(a.ifaces, ["ens5"]);
    assert_eq!(a.event_bus.as_deref(), Some("other"));
    // The rest still comes from the file.
    assert_eq!(a.port_limit.burst, 2000);
    assert_eq!(a.ports.len(), 2);
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let f = file("iface = [\"eth0\"]\nrates = 5\n");
    let err = error(&f, &[]);
    let path = f.path().display().to_string();
    assert!(err.contains("unknown key `rates`"), "{err}");
    assert!(err.contains(&path), "{err}");
    assert!(
        err.contains("known keys:") && err.contains("rate,"),
        "{err}"
    );

    let f = file("event_bus = \"x\"\n");
    let err = error(&f, &[]);
    assert!(
        err.contains("unknown key `event_bus`") && err.contains("did you mean `event-bus`"),
        "{err}"
    );

    let f = file("config = \"/etc/other.toml\"\n");
    assert!(error(&f, &[]).contains("unknown key `config`"));
}

#[test]
fn bad_values_name_the_key_and_the_file() {
    let path_of = |f: &NamedTempFile| f.path().display().to_string();

    let f = file("rate = \"fast\"\n");
    let err = error(&f, &[]);
    assert!(err.contains("--rate") && err.contains("fast"), "{err}");
    assert!(err.contains(&path_of(&f)), "{err}");

    let f = file("rate = [1, 2]\n");
    let err = error(&f, &[]);
    assert!(
        err.contains("`rate`") && err.contains("not a list"),
        "{err}"
    );

    let f = file("wait-for-iface = \"yes\"\n");
    let err = error(&f, &[]);
    assert!(
        err.contains("`wait-for-iface`") && err.contains("true or false"),
        "{err}"
    );

    let f = file("[eventbridge]\nregion = \"x\"\n");
    let err = error(&f, &[]);
    assert!(err.contains("unknown key `eventbridge`"), "{err}");

    let f = file("rate = \n");
    let err = error(&f, &[]);
    assert!(err.contains("not valid TOML"), "{err}");

    let missing = PathBuf::from("/nonexistent/udp-agent.toml");
    let err = match parse_from([
        "udp-agent",
        "run",
        "--config",
        "/nonexistent/udp-agent.toml",
    ]) {
        Ok(_) => panic!("a missing file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[test]
fn numbers_are_read_as_toml_writes_them() {
    let f = file("iface = [\"eth0\"]\nrate = 1_000\nburst = 0x7d0\nmax-events-per-hour = 5e5\n");
    let a = run_args(&f, &[]).unwrap();
    assert_eq!((a.port_limit.rate, a.port_limit.burst), (1000, 2000));
    assert_eq!(a.eventbridge.max_events_per_hour, 500_000);
    let f = file("rate = 1\nrate = 2\n");
    let err = error(&f, &[]);
    assert!(err.contains("not valid TOML"), "{err}");
}

#[test]
fn snaplen_zero_is_refused() {
    // Every event would carry an empty `Payload` marked `Truncated`.
    let f = file("iface = [\"eth0\"]\nsnaplen = 0\n");
    let err = error(&f, &[]);
    assert!(
        err.contains("--snaplen") && err.contains("1..=65535"),
        "{err}"
    );
    let f = file("iface = [\"eth0\"]\n");
    let err = error(&f, &["--snaplen", "0"]);
    assert!(
        err.contains("--snaplen") && err.contains("1..=65535"),
        "{err}"
    );
    assert_eq!(run_args(&f, &["--snaplen", "1"]).unwrap().snaplen, 1);
}

/// A file listing every port one by one, and some twice: the ports reach
/// the agent as merged ranges, and repeated list values once.
#[test]
fn long_lists_are_condensed() {
    let ports: Vec<String> = (0..100_000u32)
        .map(|i| format!("{}", 1 + i % 65_535))
        .collect();
    let f = file(&format!(
        "iface = [\"eth0\"]\nport = [{}, \"7-9\"]\nallow = [\"198.18.0.0/15\", \"fd00::/8\", \"198.18.0.0/15\"]\n",
        ports.join(",")
    ));
    let a = run_args(&f, &[]).unwrap();
    let ranges: Vec<String> = a.ports.iter().map(ToString::to_string).collect();
    assert_eq!(ranges, ["1-65535"]);
    assert_eq!(a.firewall.allow, ["198.18.0.0/15", "fd00::/8"]);

    // Gaps stay gaps; a bad port is still reported as clap reports it.
    let f = file("iface = [\"eth0\"]\nport = [\"9\", \"1-3\", \"5\", \"4\", \"2\"]\n");
    let ranges: Vec<String> = run_args(&f, &[])
        .unwrap()
        .ports
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["1-5", "9"]);
    let f = file("iface = [\"eth0\"]\nport = [\"514\", \"70000\"]\n");
    let err = error(&f, &[]);
    assert!(err.contains("--port") && err.contains("70000"), "{err}");
}

#[test]
fn an_oversized_file_is_refused_before_it_is_parsed() {
    let limit = udp_agent::config::file::MAX_FILE_BYTES as usize;
    // Valid TOML: a comment line repeated past the limit.
    let line = "# padding padding padding padding padding padding padding padding\n";
    let mut text = "iface = [\"eth0\"]\n".to_owned();
    text.push_str(&line.repeat(limit / line.len() + 1));
    let f = file(&text);
    let err = error(&f, &[]);
    assert!(
        err.contains(&format!("larger than {limit} bytes")) && err.contains("port ranges"),
        "{err}"
    );
    assert!(err.contains(&f.path().display().to_string()), "{err}");
}

/// Runs `udp-agent run --config FILE <extra>` with `env`; it must fail.
fn run_binary(f: &NamedTempFile, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let pins = pin_dir("config-file");
    let out = agent_command()
        .envs(env.iter().copied())
        .arg("run")
        .arg("--config")
        .arg(f.path())
        .args(extra)
        .arg("--pin-dir")
        .arg(&pins)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running udp-agent");
    assert!(!out.status.success(), "started: {out:?}");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_environment_overrides_the_file_and_flags_override_both() {
    // 1000 is not a power of two: the agent refuses it before anything else,
    // naming the value it got, which shows where the value came from.
    let f = file("iface = [\"doesnotexist0\"]\nring-bytes = 1000\n");
    let err = stderr(&run_binary(&f, &[], &[]));
    assert!(
        err.contains("--ring-bytes 1000 must be a power of two"),
        "{err}"
    );

    let err = stderr(&run_binary(&f, &[], &[("UDP_AGENT_RING_BYTES", "3000")]));
    assert!(
        err.contains("--ring-bytes 3000 must"),
        "env over file: {err}"
    );

    let err = stderr(&run_binary(
        &f,
        &["--ring-bytes", "5000"],
        &[("UDP_AGENT_RING_BYTES", "3000")],
    ));
    assert!(
        err.contains("--ring-bytes 5000 must"),
        "flag over env: {err}"
    );

    // A list from the environment replaces the file's, too: with a valid
    // ring size, the next complaint names the interface (as root) or the
    // missing privileges.
    let err = stderr(&run_binary(
        &f,
        &[],
        &[
            ("UDP_AGENT_RING_BYTES", "4096"),
            ("UDP_AGENT_IFACE", "alsomissing0"),
        ],
    ));
    assert!(!err.contains("ring-bytes"), "{err}");
    if test_support::is_root() {
        assert!(
            err.contains("unknown interface `alsomissing0`"),
            "env list over file list: {err}"
        );
    }
}

#[test]
fn an_unknown_key_stops_the_binary_with_exit_code_2() {
    let f = file("iface = [\"lo\"]\nprot = [\"514\"]\n");
    let out = run_binary(&f, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: unknown key `prot`"), "{err}");
}

#[test]
fn an_agent_runs_from_a_config_file() {
    let test = "config-agent";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    let f = file(
        "port = [\"5160\"]\nsource = \"from.file\"\ndetail-type = \"FromFile\"\nsnaplen = 4\n",
    );
    let path = f.path().to_str().unwrap();
    let mut agent = Agent::run(
        &ns.host_if,
        &pins,
        &["--config", path, "--detail-type", "FromFlag"],
    );
    ns.warm_up(&agent, false, 42159, 5160);
    ns.send_udp(false, 42160, 5160, &[b"first".to_vec()]);
    let evs = agent.wait_from(42160, 1);
    assert_eq!(evs[0].source, "from.file");
    assert_eq!(evs[0].detail_type, "FromFlag");
    assert_eq!(evs[0].payload, b"firs", "snaplen 4 from the file");
    assert!(evs[0].truncated);
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// The start-up line names port ranges, and at most 32 of them: a config
/// listing every port once made it 7 MB long.
#[test]
fn the_start_up_line_names_port_ranges() {
    let test = "config-ranges";
    if !privileged(test) {
        return;
    }
    let ns = VethNs::new(test);
    let pins = pin_dir(test);
    // 5160 and 1,000 ports two apart: 1,001 ranges.
    let mut ports: Vec<String> = (0..1000)
        .map(|i| format!("\"{}\"", 20_000 + 2 * i))
        .collect();
    ports.push("\"5160\"".into());
    let f = file(&format!("port = [{}]\n", ports.join(",")));
    let path = f.path().to_str().unwrap();
    let mut agent = Agent::run(&ns.host_if, &pins, &["--config", path]);
    let line = agent
        .stderr_line("capturing", Duration::from_secs(1))
        .expect("a capturing line");
    println!("{} bytes: {line}", line.len());
    assert!(line.len() < 1024, "{} bytes: {line}", line.len());
    assert!(
        line.contains("ports=\"5160,20000,20002,") && line.contains("1001 ranges, 1001 ports"),
        "{line}"
    );
    assert_eq!(test_support::ports_list(&pins).len(), 1001);
    let stopped = agent.terminate();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}
