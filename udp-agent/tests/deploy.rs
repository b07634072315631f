//! The deployment files in `deploy/`: the systemd unit, its EnvironmentFile,
//! the sysusers snippet, the package's metadata and maintainer script, the
//! CloudFormation templates (one host, and the fleet behind a load
//! balancer) and the IAM policy.
//!
//! What a user relies on is checked against the tools that will read the
//! files (`systemd-analyze`, `systemd-sysusers`, `cfn-lint`) and against the
//! agent itself (every `UDP_AGENT_*` variable the files set must be one the
//! agent reads). A missing tool makes its test print `SKIPPED: reason`;
//! `cargo xtask test` on Debian 12 has them all (cfn-lint comes from
//! `xtask/requirements.txt` through `UDP_AGENT_TEST_PYTHON`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_udp-agent");

/// The installed path the unit runs (where the package puts the binary).
const INSTALLED_AGENT: &str = "/usr/bin/udp-agent";

/// The capabilities `udp-agent run` needs as a non-root user; see
/// tests/privilege.rs for the proof that each one is necessary.
const MINIMAL_CAPS: [&str; 3] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];

/// The article's rule.
fn article_rule() -> Value {
    json!({"source": ["udp.raw"], "detail": {"Destination": {"Port": [514]}}})
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read_deploy(name: &str) -> String {
    let path = deploy_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn skip(test: &str, reason: &str) {
    println!("SKIPPED: {reason} ({test})");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd`, or `None` if its program is not installed.
fn run(cmd: &mut Command) -> Option<Output> {
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running {cmd:?}: {e}"),
    }
}

fn have(program: &str) -> bool {
    run(Command::new(program).arg("--version")).is_some_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------
// The unit file
// ---------------------------------------------------------------------------

/// `key -> values` of one `[section]`, in file order (a key may repeat).
type Section = BTreeMap<String, Vec<String>>;

/// A systemd unit file as sections of `key -> values`.
fn parse_unit(text: &str) -> BTreeMap<String, Section> {
    let mut out: BTreeMap<String, Section> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line without `=`: {line}"));
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn one<'a>(section: &'a Section, key: &str) -> &'a str {
    match section.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("expected exactly one {key}=, found {other:?}"),
    }
}

/// The unit, copied to a fresh directory with ExecStart pointing at the
/// agent this test built: `systemd-analyze verify` refuses a unit whose
/// binary does not exist, and the package is not installed here (CI
/// verifies the installed unit after `dpkg -i`).
fn unit_with_built_agent() -> (tempfile::TempDir, PathBuf) {
    let unit = read_deploy("udp-agent.service");
    let from = format!("ExecStart={INSTALLED_AGENT} ");
    assert!(
        unit.contains(&from),
        "deploy/udp-agent.service must run {INSTALLED_AGENT}"
    );
    let rewritten = unit.replace(&from, &format!("ExecStart={AGENT} "));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("udp-agent.service");
    fs::write(&path, rewritten).expect("write unit copy");
    (dir, path)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return skip(
            "unit_passes_systemd_analyze_verify",
            "systemd-analyze is not installed (Debian: apt-get install systemd)",
        );
    }
    let (_dir, path) = unit_with_built_agent();
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path))
    .expect("systemd-analyze");
    let stderr = text(&out.stderr);
    println!(
        "systemd-analyze verify {}: {} {}",
        path.display(),
        out.status,
        stderr.trim()
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}): {stderr}",
        out.status
    );
    // Warnings about our unit (unknown keys, bad values) do not fail verify.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("udp-agent.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze warns about the unit: {ours:#?}"
    );
}

#[test]
fn unit_exposure_is_low() {
    const THRESHOLD: f64 = 2.0;
    if !have("systemd-analyze") {
        return skip(
            "unit_exposure_is_low",
            "systemd-analyze is not installed (Debian: apt-get install systemd)",
        );
    }
    let (_dir, path) = unit_with_built_agent();
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path))
    .expect("systemd-analyze");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    if stderr.contains("--offline") && !out.status.success() {
        return skip(
            "unit_exposure_is_low",
            &format!("this systemd-analyze has no --offline (needs systemd >= 250): {stderr}"),
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {stdout}{stderr}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from `{line}`"));
    println!(
        "systemd-analyze security exposure of udp-agent.service: {score} (threshold {THRESHOLD})"
    );
    for l in stdout.lines().filter(|l| l.starts_with('✗')) {
        println!("  {}", l.trim_end());
    }
    assert!(
        score < THRESHOLD,
        "exposure {score} is not below {THRESHOLD}: {line}"
    );
}

#[test]
fn unit_runs_unprivileged_with_the_minimal_capabilities() {
    let unit = parse_unit(&read_deploy("udp-agent.service"));
    let service = unit.get("Service").expect("[Service]");

    assert_eq!(one(service, "ExecStart"), format!("{INSTALLED_AGENT} run"));
    assert_eq!(one(service, "EnvironmentFile"), "/etc/default/udp-agent");

    let user = one(service, "User");
    assert!(
        !["root", "0", ""].contains(&user),
        "the agent must not run as root, User={user}"
    );
    assert_ne!(service.get("DynamicUser"), Some(&vec!["yes".to_string()]));
    let sysusers = read_deploy("udp-agent.sysusers");
    let declared = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a `u` line in deploy/udp-agent.sysusers");
    assert_eq!(
        declared, user,
        "the sysusers snippet creates the unit's user"
    );

    let caps = |key: &str| -> BTreeSet<String> {
        one(service, key)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let minimal: BTreeSet<String> = MINIMAL_CAPS.iter().map(|c| c.to_string()).collect();
    assert_eq!(caps("CapabilityBoundingSet"), minimal);
    assert_eq!(caps("AmbientCapabilities"), minimal);

    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(service, key), value, "{key}=");
    }
    assert!(service.contains_key("RestartSec"), "RestartSec= is set");

    // The agent's instance lock lives in /run/udp-agent (control::LOCK_DIR):
    // RuntimeDirectory= creates it, owned by the service's user.
    assert_eq!(
        Path::new("/run").join(one(service, "RuntimeDirectory")),
        Path::new(udp_agent::control::LOCK_DIR)
    );

    // The pin directory of the example settings is inside the one path
    // under /sys/fs/bpf the sandbox leaves writable, and inside the
    // directory ExecStartPre= gives to the service's user.
    let env = env_assignments(&read_deploy("udp-agent.env"));
    let pin_dir = Path::new(
        env.iter()
            .find(|(k, _, active)| k == "UDP_AGENT_PIN_DIR" && *active)
            .map(|(_, v, _)| v.as_str())
            .expect("udp-agent.env sets UDP_AGENT_PIN_DIR"),
    );
    // "-": the path may be missing when the ExecStartPre=+ lines run (they
    // create it; systemd applies ReadWritePaths= to them too).
    let writable = one(service, "ReadWritePaths").trim_start_matches('-');
    assert!(
        pin_dir.starts_with(writable) && pin_dir != Path::new(writable),
        "UDP_AGENT_PIN_DIR={} must be a subdirectory of ReadWritePaths={writable} (the agent removes and re-creates the pin directory itself)",
        pin_dir.display()
    );
    let pre = service.get("ExecStartPre").expect("ExecStartPre=");
    assert!(
        pre.iter().any(|c| c.starts_with('+')
            && c.contains(&format!("-o {user}"))
            && c.ends_with(writable)),
        "an ExecStartPre=+ creates {writable} owned by {user}: {pre:?}"
    );
    assert!(
        pre.iter()
            .any(|c| c.starts_with('+') && c.contains("o+x") && c.ends_with("/sys/fs/bpf")),
        "an ExecStartPre=+ lets {user} traverse /sys/fs/bpf (systemd mounts it 0700): {pre:?}"
    );
}

#[test]
fn sysusers_snippet_creates_the_user() {
    if !have("systemd-sysusers") {
        return skip(
            "sysusers_snippet_creates_the_user",
            "systemd-sysusers is not installed",
        );
    }
    // An empty --root: nothing on this machine is read or written.
    let root = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg("--dry-run")
        .arg(
            deploy_dir()
                .join("udp-agent.sysusers")
                .canonicalize()
                .unwrap(),
        ))
    .expect("systemd-sysusers");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!("{}", all.trim());
    assert!(out.status.success(), "systemd-sysusers failed: {all}");
    assert!(
        all.contains("Creating user 'udp-agent'"),
        "the snippet does not create udp-agent: {all}"
    );
}

// ---------------------------------------------------------------------------
// The EnvironmentFile
// ---------------------------------------------------------------------------

/// `(name, value, active)` of every `NAME=value` line, including commented
/// examples (`#NAME=value`, active = false).
fn env_assignments(text: &str) -> Vec<(String, String, bool)> {
    text.lines()
        .filter_map(|l| {
            let (active, l) = match l.strip_prefix('#') {
                Some(rest) => (false, rest),
                None => (true, l),
            };
            let (k, v) = l.split_once('=')?;
            let valid = !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            valid.then(|| (k.to_string(), v.to_string(), active))
        })
        .collect()
}

/// The `UDP_AGENT_*` variables `udp-agent run` reads, from its help.
fn agent_env_names() -> BTreeSet<String> {
    let out = Command::new(AGENT)
        .args(["run", "--help"])
        .output()
        .expect("udp-agent run --help");
    assert!(out.status.success(), "udp-agent run --help failed");
    let help = text(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_string)
        .collect()
}

/// Names the deployment files set: the example env file and the one the
/// CloudFormation UserData writes.
fn check_env_names(names: &[String], source: &str) {
    let known = agent_env_names();
    for name in names {
        if name == "RUST_LOG" {
            continue;
        }
        assert!(
            known.contains(name),
            "{source} sets {name}, which `udp-agent run` does not read (it reads: {known:?})"
        );
    }
}

#[test]
fn env_file_sets_only_variables_the_agent_reads() {
    let env = env_assignments(&read_deploy("udp-agent.env"));
    assert!(!env.is_empty());
    let names: Vec<String> = env.iter().map(|(k, _, _)| k.clone()).collect();
    check_env_names(&names, "deploy/udp-agent.env");
    for required in ["UDP_AGENT_IFACE", "UDP_AGENT_PORT", "UDP_AGENT_EVENT_BUS"] {
        assert!(
            env.iter().any(|(k, _, active)| k == required && *active),
            "deploy/udp-agent.env must set {required}"
        );
    }
    // systemd's EnvironmentFile= takes values literally; quotes would become
    // part of the value.
    for (k, v, _) in &env {
        assert!(
            !v.contains('"') && !v.contains('\'') && v.trim() == v,
            "{k}={v}: no quotes or surrounding spaces in an EnvironmentFile"
        );
    }
}

/// The example settings are values the agent accepts: it gets past
/// argument parsing (it then stops, because it runs without privileges and
/// on an interface that does not exist).
#[test]
fn env_file_values_parse() {
    let env = env_assignments(&read_deploy("udp-agent.env"));
    let mut cmd = Command::new(AGENT);
    cmd.arg("run")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        // Never reach for instance metadata or the network.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "example")
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null());
    for (k, v, _) in &env {
        cmd.env(k, v);
    }
    // Commented examples too: they are what users uncomment.
    cmd.env("UDP_AGENT_IFACE", "uagt-noexist0")
        .env("UDP_AGENT_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("UDP_AGENT_PIN_DIR", "/nonexistent/udp-agent-deploy-test");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // As root the agent would get as far as the kernel; as nobody
        // without capabilities it stops at its privilege check.
        if !have("setpriv") {
            return skip("env_file_values_parse", "running as root without setpriv");
        }
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(program)
        .args(args)
        .env_clear()
        .envs(envs)
        .stdin(Stdio::null());
    }
    let out = output_within(&mut cmd, Duration::from_secs(30));
    let stderr = text(&out.stderr);
    println!(
        "agent with deploy/udp-agent.env: {}: {}",
        out.status,
        stderr.trim()
    );
    assert!(
        !stderr.contains("invalid value") && !stderr.contains("unexpected argument"),
        "the agent refused a value of deploy/udp-agent.env: {stderr}"
    );
    assert!(
        !out.status.success(),
        "expected the agent to stop (no privileges, no such interface)"
    );
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("wait_with_output")
}

// ---------------------------------------------------------------------------
// IAM policy
// ---------------------------------------------------------------------------

/// Statements as a list, whether the document has one or an array.
fn statements(policy: &Value) -> Vec<Value> {
    match &policy["Statement"] {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![policy["Statement"].clone()],
        other => panic!("Statement is neither an object nor an array: {other}"),
    }
}

/// A string-or-list policy field as a list.
fn strings(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        v => vec![v.clone()],
    }
}

/// Asserts `policy` allows `events:PutEvents` and nothing else, and returns
/// its resources.
fn assert_put_events_only(policy: &Value, what: &str) -> Vec<Value> {
    assert_eq!(policy["Version"], "2012-10-17", "{what}: Version");
    let stmts = statements(policy);
    assert_eq!(stmts.len(), 1, "{what}: exactly one statement: {stmts:#?}");
    let s = &stmts[0];
    assert_eq!(s["Effect"], "Allow", "{what}: Effect");
    for forbidden in ["NotAction", "NotResource", "NotPrincipal", "Principal"] {
        assert!(s.get(forbidden).is_none(), "{what}: has {forbidden}");
    }
    assert_eq!(
        strings(&s["Action"]),
        vec![json!("events:PutEvents")],
        "{what}: Action"
    );
    let resources = strings(&s["Resource"]);
    assert_eq!(resources.len(), 1, "{what}: one Resource: {resources:?}");
    resources
}

#[test]
fn iam_policy_grants_exactly_put_events_on_one_bus() {
    let policy: Value =
        serde_json::from_str(&read_deploy("iam-policy.json")).expect("iam-policy.json is JSON");
    let resources = assert_put_events_only(&policy, "deploy/iam-policy.json");
    let arn = resources[0].as_str().expect("Resource is a string");
    let parts: Vec<&str> = arn.split(':').collect();
    assert_eq!(
        parts.len(),
        6,
        "arn:aws:events:REGION:ACCOUNT:event-bus/NAME, got {arn}"
    );
    assert_eq!(&parts[..3], ["arn", "aws", "events"], "{arn}");
    assert!(
        parts[5].starts_with("event-bus/") && parts[5].len() > "event-bus/".len(),
        "the resource is one event bus: {arn}"
    );
    assert!(!arn.contains('*'), "no wildcard in {arn}");
}

// ---------------------------------------------------------------------------
// The Debian package
// ---------------------------------------------------------------------------

/// `[package.metadata.deb]` of udp-agent/Cargo.toml, which cargo-deb reads.
fn deb_metadata() -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let manifest: toml::Table = fs::read_to_string(&path)
        .expect("udp-agent/Cargo.toml")
        .parse()
        .expect("Cargo.toml is TOML");
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]")
        .clone()
}

/// The package installs the binary where the unit runs it, the example
/// settings as /etc/default/udp-agent (the unit's EnvironmentFile), the
/// unit and the sysusers file from deploy/ (cargo-deb finds them there by
/// the package's name), the generated manual pages and completions; it
/// neither enables nor starts the unit (the settings need editing first);
/// and a purge removes what the unit makes at run time and the user.
#[test]
fn the_package_installs_the_deploy_files() {
    let deb = deb_metadata();
    let assets: Vec<(String, String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a: Vec<&str> = a
                .as_array()
                .expect("[source, dest, mode]")
                .iter()
                .map(|v| v.as_str().expect("a string"))
                .collect();
            (a[0].to_string(), a[1].to_string(), a[2].to_string())
        })
        .collect();
    let dest_of = |source: &str| -> (String, String) {
        assets
            .iter()
            .find(|(s, _, _)| s == source)
            .map(|(_, d, m)| (d.clone(), m.clone()))
            .unwrap_or_else(|| panic!("no asset {source}: {assets:?}"))
    };
    let unit = parse_unit(&read_deploy("udp-agent.service"));
    let service = &unit["Service"];

    let (bin_dest, mode) = dest_of("target/release/udp-agent");
    assert_eq!(mode, "755");
    assert_eq!(
        format!("/{bin_dest}udp-agent run"),
        one(service, "ExecStart"),
        "the unit runs the packaged binary"
    );
    let (env_dest, _) = dest_of("../deploy/udp-agent.env");
    assert_eq!(format!("/{env_dest}"), one(service, "EnvironmentFile"));
    for (source, dest) in [
        ("../target/package/man/*.1", "usr/share/man/man1/"),
        (
            "../target/package/completions/udp-agent.bash",
            "usr/share/bash-completion/completions/udp-agent",
        ),
        (
            "../target/package/completions/_udp-agent",
            "usr/share/zsh/vendor-completions/_udp-agent",
        ),
        (
            "../target/package/completions/udp-agent.fish",
            "usr/share/fish/vendor_completions.d/udp-agent.fish",
        ),
    ] {
        assert_eq!(dest_of(source).0, dest, "{source}");
    }

    let units = deb["systemd-units"].as_table().expect("systemd-units");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(units["unit-scripts"].as_str().expect("unit-scripts"));
    assert_eq!(
        dir.canonicalize().unwrap(),
        deploy_dir().canonicalize().unwrap()
    );
    // cargo-deb's names for them: <package>.service, <package>.sysusers.
    let package = deb
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("udp-agent");
    for file in [format!("{package}.service"), format!("{package}.sysusers")] {
        assert!(dir.join(&file).is_file(), "deploy/{file}");
    }
    assert_eq!(units["enable"].as_bool(), Some(false));
    assert_eq!(units["start"].as_bool(), Some(false));

    // The purge: debhelper's part, then the state, runtime and pin
    // directories the unit makes, and the user.
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        deb["maintainer-scripts"]
            .as_str()
            .expect("maintainer-scripts"),
    );
    let postrm_path = scripts.join("postrm");
    let postrm = fs::read_to_string(&postrm_path).expect("a postrm");
    assert!(
        postrm.contains("#DEBHELPER#"),
        "cargo-deb inserts its part there"
    );
    let purge = postrm
        .split("if [ \"$1\" = \"purge\" ]; then")
        .nth(1)
        .expect("a purge branch");
    let user = one(service, "User");
    let purge_lines: Vec<&str> = purge.lines().map(str::trim).collect();
    let state = format!("/var/lib/{}", one(service, "StateDirectory"));
    assert!(
        purge_lines.contains(&format!("rm -rf {state}").as_str()),
        "the purge removes {state}"
    );
    // The directory the unit prepares for the pins, only if the service's
    // agent removed its pins (one started by hand may use it).
    let bpffs = one(service, "ReadWritePaths").trim_start_matches('-');
    assert!(
        purge_lines.contains(&format!("rmdir {bpffs} 2>/dev/null || true").as_str()),
        "the purge removes {bpffs} if empty"
    );
    // Locks of agents started by hand live there; systemd cleans it.
    assert!(!purge.contains("/run/"), "the purge leaves /run alone");
    assert!(
        purge.contains(&format!("userdel {user}")),
        "the purge removes {user}"
    );
    assert!(purge.contains(&format!("groupdel {}", one(service, "Group"))));
    if have("sh") || Path::new("/bin/sh").exists() {
        let out = run(Command::new("sh").arg("-n").arg(&postrm_path)).expect("sh");
        assert!(out.status.success(), "postrm: {}", text(&out.stderr));
    }
}

// ---------------------------------------------------------------------------
// CloudFormation
// ---------------------------------------------------------------------------

/// The Python that has cfn-lint, or why there is none.
fn cfn_python() -> Result<PathBuf, String> {
    let python = std::env::var_os("UDP_AGENT_TEST_PYTHON").map(PathBuf::from).ok_or(
        "UDP_AGENT_TEST_PYTHON is not set (`cargo xtask test` sets it to a venv with xtask/requirements.txt)",
    )?;
    let out = run(Command::new(&python).args(["-c", "import cfnlint"]))
        .ok_or_else(|| format!("{} does not run", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "cfn-lint is not installed in {} (it is in xtask/requirements.txt; `cargo xtask test` installs it)",
            python.display()
        ));
    }
    Ok(python)
}

/// Both templates: the single host and the fleet.
const TEMPLATES: [&str; 2] = ["cloudformation.yaml", "fleet.yaml"];

#[test]
fn templates_pass_cfn_lint() {
    let python = match cfn_python() {
        Ok(p) => p,
        Err(reason) => return skip("templates_pass_cfn_lint", &reason),
    };
    let version = run(Command::new(&python).args([
        "-c",
        "import importlib.metadata as m; print(m.version('cfn-lint'))",
    ]))
    .map(|o| text(&o.stdout).trim().to_string())
    .unwrap_or_default();
    for name in TEMPLATES {
        let template = deploy_dir().join(name);
        let out = run(Command::new(&python)
            .args([
                "-c",
                "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; sys.exit(main())",
            ])
            .arg("--")
            .arg(&template))
        .expect("python");
        println!(
            "cfn-lint {version} {}: {} {}{}",
            template.display(),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            out.status.success(),
            "cfn-lint found problems in {name} ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// A template as JSON, intrinsic functions as `{"Fn::…": …}` / `{"Ref": …}`
/// objects (cfn-lint's own YAML reader understands the short `!Sub` forms).
fn template_json(python: &Path, name: &str) -> Value {
    let script = "import json, sys\n\
                  from cfnlint.decode import decode\n\
                  tpl, errors = decode(sys.argv[1])\n\
                  if errors:\n    sys.exit('\\n'.join(str(e) for e in errors))\n\
                  print(json.dumps(tpl))\n";
    let out = run(Command::new(python)
        .args(["-c", script])
        .arg(deploy_dir().join(name)))
    .expect("python");
    assert!(
        out.status.success(),
        "decoding {name} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("decoded template is JSON")
}

/// The lines of `script` between `<<'MARK'` (or `<<MARK`) on a line
/// starting with `start` and the line `MARK`.
fn heredoc(script: &str, start: &str) -> Vec<String> {
    let mut lines = script.lines();
    let opener = lines
        .by_ref()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("UserData has no line starting `{start}`"));
    let mark = opener
        .rsplit("<<")
        .next()
        .expect("heredoc marker")
        .trim()
        .trim_matches('\'')
        .to_string();
    lines
        .take_while(|l| l.trim() != mark)
        .map(str::to_string)
        .collect()
}

/// A decoded template's resources.
struct Resources<'a>(&'a Value);

impl<'a> Resources<'a> {
    fn of_type(&self, t: &str) -> Vec<(&'a str, &'a Value)> {
        self.0["Resources"]
            .as_object()
            .expect("Resources")
            .iter()
            .filter(|(_, r)| r["Type"] == t)
            .map(|(name, r)| (name.as_str(), r))
            .collect()
    }

    /// The one resource of type `t`.
    fn one(&self, t: &str) -> (&'a str, &'a Value) {
        match self.of_type(t)[..] {
            [one] => one,
            ref all => panic!("expected exactly one {t}, found {}", all.len()),
        }
    }

    fn get(&self, name: &str) -> &'a Value {
        let r = &self.0["Resources"][name];
        assert!(!r.is_null(), "no resource {name}");
        r
    }
}

fn reference(name: &str) -> Value {
    json!({ "Ref": name })
}

/// The event bus, the article's rule on it into a log group that lets
/// EventBridge write, and an instance role allowed only PutEvents on that
/// bus. Returns the bus's and the instance profile's logical names.
fn assert_events_and_role(tpl: &Value, name: &str) -> (String, String) {
    let res = Resources(tpl);
    let (bus, _) = res.one("AWS::Events::EventBus");
    let (_, rule) = res.one("AWS::Events::Rule");
    let rule = &rule["Properties"];
    assert_eq!(rule["EventPattern"], article_rule(), "{name}");
    assert_eq!(rule["EventBusName"], reference(bus), "{name}");
    let (log_group, _) = res.one("AWS::Logs::LogGroup");
    let targets = rule["Targets"].as_array().expect("Targets");
    assert_eq!(targets.len(), 1, "{name}");
    assert!(
        targets[0]["Arn"].to_string().contains(log_group),
        "{name}: the rule's target is the log group: {}",
        targets[0]
    );
    let (_, logs_policy) = res.one("AWS::Logs::ResourcePolicy");
    let doc = logs_policy["Properties"]["PolicyDocument"].to_string();
    assert!(
        doc.contains("events.amazonaws.com")
            && doc.contains("logs:PutLogEvents")
            && doc.contains(log_group),
        "{name}: log group resource policy: {doc}"
    );

    // The instance role: the policy of deploy/iam-policy.json, on the bus.
    let (role_name, role) = res.one("AWS::IAM::Role");
    let role = &role["Properties"];
    assert!(
        role.get("ManagedPolicyArns").is_none(),
        "{name}: no managed policies on the role"
    );
    let policies = role["Policies"].as_array().expect("Policies");
    assert_eq!(policies.len(), 1, "{name}");
    let resources = assert_put_events_only(&policies[0]["PolicyDocument"], name);
    assert_eq!(
        resources,
        vec![json!({"Fn::GetAtt": [bus, "Arn"]})],
        "{name}"
    );
    assert_eq!(
        role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
        "ec2.amazonaws.com",
        "{name}"
    );
    let (profile, p) = res.one("AWS::IAM::InstanceProfile");
    assert_eq!(
        p["Properties"]["Roles"],
        json!([reference(role_name)]),
        "{name}"
    );
    assert_eq!(
        tpl["Parameters"]["ImageId"]["Type"], "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
        "{name}"
    );
    (bus.to_string(), profile.to_string())
}

/// IMDSv2 only, and no hop beyond the host.
fn assert_imds_v2_only(metadata_options: &Value, name: &str) {
    assert_eq!(metadata_options["HttpTokens"], "required", "{name}");
    assert_eq!(metadata_options["HttpPutResponseHopLimit"], 1, "{name}");
}

/// The UserData script of `Fn::Base64: !Sub "…"`.
fn user_data(v: &Value, name: &str) -> String {
    v["Fn::Base64"]["Fn::Sub"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: UserData is Fn::Base64 of a Fn::Sub string"))
        .to_string()
}

/// UserData fetches the package from the PackageUrl parameter, refuses it
/// unless it has the PackageSha256 parameter's hash, installs it (the
/// unit, the user and the binary come from it, not from the script), and
/// enables and starts the unit. Returns the settings it writes, which must
/// be variables the agent reads.
fn assert_installs_the_package(tpl: &Value, script: &str, name: &str) -> Vec<(String, String)> {
    for p in ["PackageUrl", "PackageSha256"] {
        assert_eq!(
            tpl["Parameters"][p]["Type"], "String",
            "{name}: parameter {p}"
        );
        assert!(
            tpl["Parameters"][p].get("Default").is_none(),
            "{name}: {p} has no default: it must be given"
        );
    }
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    let line = |what: &str, pred: &dyn Fn(&str) -> bool| -> usize {
        lines
            .iter()
            .position(|l| !l.starts_with('#') && pred(l))
            .unwrap_or_else(|| panic!("{name}: UserData does not {what}:\n{script}"))
    };
    let fetch = line("fetch ${PackageUrl}", &|l| {
        l.starts_with("curl ") && l.contains("-f") && l.contains("'${PackageUrl}'")
    });
    let verify = line("check ${PackageSha256}", &|l| {
        l.contains("${PackageSha256}") && l.contains("sha256sum -c")
    });
    let install = line("install the package", &|l| {
        l.starts_with("apt-get install -y") || l.starts_with("dpkg -i")
    });
    let start = line("enable and start the unit", &|l| {
        l == "systemctl enable --now udp-agent.service"
    });
    let settings = line("write /etc/default/udp-agent", &|l| {
        l.starts_with("cat > /etc/default/udp-agent")
    });
    assert!(
        fetch < verify && verify < install && install < settings && settings < start,
        "{name}: UserData must fetch, verify, install, configure, start, in that order:\n{script}"
    );
    assert!(
        lines.contains(&"set -euxo pipefail"),
        "{name}: a failed step stops the script"
    );
    assert!(
        !script.contains("/etc/systemd/system/") && !script.contains("sysusers"),
        "{name}: the unit and the user come from the package:\n{script}"
    );
    let env = env_assignments(&heredoc(script, "cat > /etc/default/udp-agent").join("\n"));
    let names: Vec<String> = env.iter().map(|(k, _, _)| k.clone()).collect();
    check_env_names(&names, &format!("{name}'s /etc/default/udp-agent"));
    let example = env_assignments(&read_deploy("udp-agent.env"));
    let example_pin = example
        .iter()
        .find(|(k, _, a)| k == "UDP_AGENT_PIN_DIR" && *a)
        .map(|(_, v, _)| v.clone());
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v, _)| (k, v)).collect();
    assert_eq!(
        env.iter()
            .find(|(k, _)| k == "UDP_AGENT_PIN_DIR")
            .map(|(_, v)| v.clone()),
        example_pin,
        "{name}: the pin directory the unit prepares"
    );
    env
}

fn setting<'a>(env: &'a [(String, String)], key: &str, name: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{name}: UserData does not set {key}"))
}

#[test]
fn cloudformation_matches_the_article_and_least_privilege() {
    let name = "cloudformation.yaml";
    let python = match cfn_python() {
        Ok(p) => p,
        Err(reason) => {
            return skip(
                "cloudformation_matches_the_article_and_least_privilege",
                &reason,
            );
        }
    };
    let tpl = template_json(&python, name);
    let res = Resources(&tpl);
    let (bus, profile) = assert_events_and_role(&tpl, name);

    // UDP 514 in from the parameter, nothing else in.
    let (sg, group) = res.one("AWS::EC2::SecurityGroup");
    assert_eq!(
        group["Properties"]["SecurityGroupIngress"],
        json!([{
            "Description": group["Properties"]["SecurityGroupIngress"][0]["Description"],
            "IpProtocol": "udp", "FromPort": 514, "ToPort": 514,
            "CidrIp": {"Ref": "AllowedCidr"}
        }])
    );

    // The instance: IMDSv2 only, the profile, the group.
    let (_, instance) = res.one("AWS::EC2::Instance");
    let props = &instance["Properties"];
    assert_imds_v2_only(&props["MetadataOptions"], name);
    assert_eq!(props["SecurityGroupIds"], json!([reference(sg)]));
    assert_eq!(props["IamInstanceProfile"], reference(&profile));

    // UserData installs the package, with settings for the stack's bus.
    let env = assert_installs_the_package(&tpl, &user_data(&props["UserData"], name), name);
    assert_eq!(
        setting(&env, "UDP_AGENT_EVENT_BUS", name),
        format!("${{{bus}}}")
    );
    assert_eq!(setting(&env, "UDP_AGENT_PORT", name), "514");

    for output in ["EventBusName", "EventBusArn", "LogGroupName"] {
        assert!(
            tpl["Outputs"].get(output).is_some(),
            "the stack outputs {output}"
        );
    }
}

/// `Fn::If: [condition, value, AWS::NoValue]` as `(Some(condition),
/// value)`; anything else as `(None, itself)`.
fn unless_no_value(v: &Value) -> (Option<&str>, &Value) {
    match v.get("Fn::If").and_then(Value::as_array).map(Vec::as_slice) {
        Some([cond, value, no]) if *no == reference("AWS::NoValue") => {
            (Some(cond.as_str().expect("a condition name")), value)
        }
        _ => (None, v),
    }
}

/// The fleet template against issue 21's list: the events part and the
/// role as in the single-host template; a launch template (IMDSv2 only,
/// the role, UserData that installs the package and starts the unit with
/// the health check on); an Auto Scaling group in two subnets (which the
/// load balancer requires to be in two zones), scaling on CPU; a network
/// load balancer with one UDP listener and instance target group per port
/// parameter, health-checked over HTTP on /healthz; a security group that
/// lets UDP in on those ports from the client parameters only and the
/// health port from the VPC only.
#[test]
fn fleet_template_has_the_load_balanced_group() {
    let name = "fleet.yaml";
    let python = match cfn_python() {
        Ok(p) => p,
        Err(reason) => return skip("fleet_template_has_the_load_balanced_group", &reason),
    };
    let tpl = template_json(&python, name);
    let res = Resources(&tpl);
    let params = &tpl["Parameters"];
    let conditions = &tpl["Conditions"];
    let (bus, profile) = assert_events_and_role(&tpl, name);

    // The ports: Port1 always, the others unless 0, each with its own
    // condition.
    let ports = ["Port1", "Port2", "Port3", "Port4"];
    let port_condition = |i: usize| (i > 0).then(|| format!("HasPort{}", i + 1));
    for (i, p) in ports.iter().enumerate() {
        assert_eq!(params[p]["Type"], "Number", "{p}");
        assert_eq!(params[p]["MaxValue"], 65535, "{p}");
        match port_condition(i) {
            None => assert_eq!(params[p]["MinValue"], 1, "{p} is required"),
            Some(c) => assert_eq!(
                conditions[&c],
                json!({"Fn::Not": [{"Fn::Equals": [reference(p), 0]}]}),
                "{c}"
            ),
        }
    }

    // The load balancer: network, in both subnets, one UDP listener per
    // port forwarding to a UDP target group of instances on the same port,
    // health-checked on the agent's /healthz.
    let (lb, balancer) = res.one("AWS::ElasticLoadBalancingV2::LoadBalancer");
    let subnets = json!([reference("SubnetA"), reference("SubnetB")]);
    assert_eq!(balancer["Properties"]["Type"], "network");
    assert_eq!(balancer["Properties"]["Subnets"], subnets);
    let listeners = res.of_type("AWS::ElasticLoadBalancingV2::Listener");
    let groups = res.of_type("AWS::ElasticLoadBalancingV2::TargetGroup");
    assert_eq!(listeners.len(), ports.len(), "one listener per port");
    assert_eq!(groups.len(), ports.len(), "one target group per port");
    let mut group_of_port = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        let (l_name, l) = *listeners
            .iter()
            .find(|(_, l)| l["Properties"]["Port"] == reference(p))
            .unwrap_or_else(|| panic!("no listener on {p}"));
        let lp = &l["Properties"];
        assert_eq!(lp["Protocol"], "UDP", "{l_name}");
        assert_eq!(lp["LoadBalancerArn"], reference(lb), "{l_name}");
        assert_eq!(
            l.get("Condition").and_then(Value::as_str),
            port_condition(i).as_deref(),
            "{l_name}"
        );
        let actions = lp["DefaultActions"].as_array().expect("DefaultActions");
        assert_eq!(actions.len(), 1, "{l_name}");
        assert_eq!(actions[0]["Type"], "forward", "{l_name}");
        let tg = actions[0]["TargetGroupArn"]["Ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{l_name} forwards to a target group of this stack"));
        let g = res.get(tg);
        let gp = &g["Properties"];
        assert_eq!(
            g["Type"], "AWS::ElasticLoadBalancingV2::TargetGroup",
            "{tg}"
        );
        assert_eq!(
            g.get("Condition").and_then(Value::as_str),
            port_condition(i).as_deref(),
            "{tg}"
        );
        for (key, want) in [
            ("Protocol", json!("UDP")),
            ("Port", reference(p)),
            ("TargetType", json!("instance")),
            ("VpcId", reference("VpcId")),
            ("HealthCheckProtocol", json!("HTTP")),
            ("HealthCheckPort", reference("HealthPort")),
            ("HealthCheckPath", json!("/healthz")),
            ("Matcher", json!({"HttpCode": "200"})),
        ] {
            assert_eq!(gp[key], want, "{tg}.{key}");
        }
        group_of_port.insert(tg.to_string(), port_condition(i));
    }

    // The group: both subnets, the launch template, every target group
    // (each under its port's condition), at least two instances.
    let (asg_name, asg) = res.one("AWS::AutoScaling::AutoScalingGroup");
    let ap = &asg["Properties"];
    assert_eq!(ap["VPCZoneIdentifier"], subnets);
    assert_eq!(ap["MinSize"], reference("MinSize"));
    assert!(
        params["MinSize"]["MinValue"].as_u64() >= Some(2),
        "at least one instance per zone"
    );
    let (lt_name, lt) = res.one("AWS::EC2::LaunchTemplate");
    assert_eq!(ap["LaunchTemplate"]["LaunchTemplateId"], reference(lt_name));
    let attached: BTreeMap<String, Option<String>> = ap["TargetGroupARNs"]
        .as_array()
        .expect("TargetGroupARNs")
        .iter()
        .map(|v| {
            let (cond, v) = unless_no_value(v);
            let tg = v["Ref"].as_str().expect("a target group Ref").to_string();
            (tg, cond.map(str::to_string))
        })
        .collect();
    assert_eq!(
        attached, group_of_port,
        "the group registers with every target group"
    );

    // Scaling: target tracking on the group's average CPU.
    let (_, policy) = res.one("AWS::AutoScaling::ScalingPolicy");
    let pp = &policy["Properties"];
    assert_eq!(pp["AutoScalingGroupName"], reference(asg_name));
    assert_eq!(pp["PolicyType"], "TargetTrackingScaling");
    let metric = &pp["TargetTrackingConfiguration"];
    let on_cpu = metric["PredefinedMetricSpecification"]["PredefinedMetricType"]
        == "ASGAverageCPUUtilization";
    let on_packets = metric["CustomizedMetricSpecification"]["MetricName"] == "NetworkPacketsIn";
    assert!(
        on_cpu || on_packets,
        "scales on CPU or NetworkPacketsIn: {metric}"
    );

    // The launch template: IMDSv2 only, the profile, the group, and
    // UserData that installs the package, serves the health check on the
    // port the load balancer checks, and sends to the stack's bus.
    let data = &lt["Properties"]["LaunchTemplateData"];
    assert_imds_v2_only(&data["MetadataOptions"], name);
    assert_eq!(
        data["IamInstanceProfile"]["Arn"],
        json!({"Fn::GetAtt": [profile, "Arn"]})
    );
    let (sg, group) = res.one("AWS::EC2::SecurityGroup");
    assert_eq!(data["SecurityGroupIds"], json!([reference(sg)]));
    let script = user_data(&data["UserData"], name);
    let env = assert_installs_the_package(&tpl, &script, name);
    assert_eq!(
        setting(&env, "UDP_AGENT_EVENT_BUS", name),
        format!("${{{bus}}}")
    );
    assert_eq!(
        setting(&env, "UDP_AGENT_HEALTH_ADDR", name),
        "0.0.0.0:${HealthPort}"
    );
    // The ports the agent captures are the stack's ports.
    assert_eq!(setting(&env, "UDP_AGENT_PORT", name), "$ports");
    assert!(
        script.contains("ports=${Port1}\n")
            && script.contains("for p in ${Port2} ${Port3} ${Port4}; do"),
        "{name}: UDP_AGENT_PORT is built from Port1..Port4:\n{script}"
    );
    if let Some((_, metrics)) = env.iter().find(|(k, _)| k == "UDP_AGENT_METRICS_ADDR") {
        assert!(
            metrics.starts_with("127.0.0.1:"),
            "metrics stay on loopback: {metrics}"
        );
    }

    // The security group: the health port from the VPC, each UDP port from
    // the client CIDR (and the optional prefix list), nothing else.
    let ingress = group["Properties"]["SecurityGroupIngress"]
        .as_array()
        .expect("SecurityGroupIngress");
    let mut udp_from_cidr = BTreeSet::new();
    let mut health = 0;
    for rule in ingress {
        let (cond, r) = unless_no_value(rule);
        let mut keys: Vec<&str> = r
            .as_object()
            .expect("a rule")
            .keys()
            .map(String::as_str)
            .collect();
        keys.retain(|k| *k != "Description");
        keys.sort();
        match r["IpProtocol"].as_str() {
            Some("tcp") => {
                assert_eq!(cond, None, "{r}");
                assert_eq!(keys, ["CidrIp", "FromPort", "IpProtocol", "ToPort"], "{r}");
                assert_eq!(
                    (&r["FromPort"], &r["ToPort"]),
                    (&reference("HealthPort"), &reference("HealthPort")),
                    "{r}"
                );
                assert_eq!(
                    r["CidrIp"],
                    reference("VpcCidr"),
                    "the health port only from the VPC: {r}"
                );
                health += 1;
            }
            Some("udp") => {
                let port = r["FromPort"]["Ref"].as_str().expect("a port parameter");
                assert_eq!(r["ToPort"], r["FromPort"], "one port per rule: {r}");
                let i = ports
                    .iter()
                    .position(|p| *p == port)
                    .unwrap_or_else(|| panic!("{port} is not a port parameter"));
                if r.get("CidrIp").is_some() {
                    assert_eq!(keys, ["CidrIp", "FromPort", "IpProtocol", "ToPort"], "{r}");
                    assert_eq!(r["CidrIp"], reference("ClientCidr"), "{r}");
                    assert_eq!(cond.map(str::to_string), port_condition(i), "{r}");
                    udp_from_cidr.insert(port);
                } else {
                    assert_eq!(
                        keys,
                        ["FromPort", "IpProtocol", "SourcePrefixListId", "ToPort"],
                        "{r}"
                    );
                    assert_eq!(
                        r["SourcePrefixListId"],
                        reference("ClientPrefixListId"),
                        "{r}"
                    );
                    let c = cond.expect("the prefix list is optional");
                    let want: Vec<Value> = port_condition(i)
                        .into_iter()
                        .map(|p| json!({"Condition": p}))
                        .chain([json!({"Condition": "HasPrefixList"})])
                        .collect();
                    let got = &conditions[c];
                    assert!(
                        c == "HasPrefixList" && i == 0 || got["Fn::And"] == json!(want),
                        "{c} = {got}, wanted the port's and the prefix list's"
                    );
                }
            }
            other => panic!("an ingress rule for {other:?}: {r}"),
        }
    }
    assert_eq!(health, 1, "one rule for the health port");
    assert_eq!(
        udp_from_cidr,
        BTreeSet::from(ports),
        "every port from ClientCidr"
    );
    assert_eq!(
        conditions["HasPrefixList"],
        json!({"Fn::Not": [{"Fn::Equals": [reference("ClientPrefixListId"), ""]}]})
    );

    for output in [
        "LoadBalancerDnsName",
        "EventBusName",
        "AutoScalingGroupName",
    ] {
        assert!(
            tpl["Outputs"].get(output).is_some(),
            "the stack outputs {output}"
        );
    }
}
