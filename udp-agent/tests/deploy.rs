//! The deployment files in `deploy/`: the systemd unit, its EnvironmentFile,
//! the sysusers snippet, the CloudFormation template and the IAM policy.
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

/// The installed path the unit runs (and the CloudFormation UserData
/// installs to).
const INSTALLED_AGENT: &str = "/usr/local/bin/udp-agent";

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

/// The unit's lines that systemd reads: no comments, no blank lines.
fn unit_directives(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The unit, copied to a fresh directory with ExecStart pointing at the
/// agent this test built: `systemd-analyze verify` refuses a unit whose
/// binary does not exist, and /usr/local/bin/udp-agent is not installed here.
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

#[test]
fn cloudformation_passes_cfn_lint() {
    let python = match cfn_python() {
        Ok(p) => p,
        Err(reason) => return skip("cloudformation_passes_cfn_lint", &reason),
    };
    let template = deploy_dir().join("cloudformation.yaml");
    let out = run(Command::new(&python)
        .args([
            "-c",
            "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; sys.exit(main())",
        ])
        .arg("--")
        .arg(&template))
    .expect("python");
    let version = run(Command::new(&python).args([
        "-c",
        "import importlib.metadata as m; print(m.version('cfn-lint'))",
    ]))
    .map(|o| text(&o.stdout).trim().to_string())
    .unwrap_or_default();
    println!(
        "cfn-lint {version} {}: {} {}{}",
        template.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cfn-lint found problems ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The template as JSON, intrinsic functions as `{"Fn::…": …}` / `{"Ref": …}`
/// objects (cfn-lint's own YAML reader understands the short `!Sub` forms).
fn template_json(python: &Path) -> Value {
    let script = "import json, sys\n\
                  from cfnlint.decode import decode\n\
                  tpl, errors = decode(sys.argv[1])\n\
                  if errors:\n    sys.exit('\\n'.join(str(e) for e in errors))\n\
                  print(json.dumps(tpl))\n";
    let out = run(Command::new(python)
        .args(["-c", script])
        .arg(deploy_dir().join("cloudformation.yaml")))
    .expect("python");
    assert!(
        out.status.success(),
        "decoding the template failed: {}",
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

#[test]
fn cloudformation_matches_the_article_and_least_privilege() {
    let python = match cfn_python() {
        Ok(p) => p,
        Err(reason) => {
            return skip(
                "cloudformation_matches_the_article_and_least_privilege",
                &reason,
            );
        }
    };
    let tpl = template_json(&python);
    let res = &tpl["Resources"];
    let of_type = |t: &str| -> Vec<(&String, &Value)> {
        res.as_object()
            .expect("Resources")
            .iter()
            .filter(|(_, r)| r["Type"] == t)
            .collect()
    };

    // An event bus, and the article's rule on it, into the log group.
    let [(bus, _)] = of_type("AWS::Events::EventBus")[..] else {
        panic!("exactly one event bus")
    };
    let [(_, rule)] = of_type("AWS::Events::Rule")[..] else {
        panic!("exactly one rule")
    };
    let rule = &rule["Properties"];
    assert_eq!(rule["EventPattern"], article_rule());
    assert_eq!(rule["EventBusName"], json!({"Ref": bus}));
    let [(log_group, _)] = of_type("AWS::Logs::LogGroup")[..] else {
        panic!("exactly one log group")
    };
    let targets = rule["Targets"].as_array().expect("Targets");
    assert_eq!(targets.len(), 1);
    assert!(
        targets[0]["Arn"].to_string().contains(log_group.as_str()),
        "the rule's target is the log group: {}",
        targets[0]
    );
    let [(_, logs_policy)] = of_type("AWS::Logs::ResourcePolicy")[..] else {
        panic!("a resource policy lets EventBridge write to the log group")
    };
    let doc = logs_policy["Properties"]["PolicyDocument"].to_string();
    assert!(
        doc.contains("events.amazonaws.com")
            && doc.contains("logs:PutLogEvents")
            && doc.contains(log_group.as_str()),
        "log group resource policy: {doc}"
    );

    // The instance role: the policy of deploy/iam-policy.json, on the bus.
    let [(_, role)] = of_type("AWS::IAM::Role")[..] else {
        panic!("exactly one role")
    };
    let role = &role["Properties"];
    assert!(
        role.get("ManagedPolicyArns").is_none(),
        "no managed policies on the role"
    );
    let policies = role["Policies"].as_array().expect("Policies");
    assert_eq!(policies.len(), 1);
    let resources = assert_put_events_only(&policies[0]["PolicyDocument"], "the instance role");
    assert_eq!(resources, vec![json!({"Fn::GetAtt": [bus, "Arn"]})]);
    assert_eq!(
        role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
        "ec2.amazonaws.com"
    );

    // UDP 514 in from the parameter, nothing else in.
    let [(sg, group)] = of_type("AWS::EC2::SecurityGroup")[..] else {
        panic!("exactly one security group")
    };
    assert_eq!(
        group["Properties"]["SecurityGroupIngress"],
        json!([{
            "Description": group["Properties"]["SecurityGroupIngress"][0]["Description"],
            "IpProtocol": "udp", "FromPort": 514, "ToPort": 514,
            "CidrIp": {"Ref": "AllowedCidr"}
        }])
    );

    // The instance: IMDSv2 only, the profile, the group.
    let [(_, instance)] = of_type("AWS::EC2::Instance")[..] else {
        panic!("exactly one instance")
    };
    let props = &instance["Properties"];
    assert_eq!(props["MetadataOptions"]["HttpTokens"], "required");
    assert_eq!(props["MetadataOptions"]["HttpPutResponseHopLimit"], 1);
    assert_eq!(props["SecurityGroupIds"], json!([{"Ref": sg}]));
    assert_eq!(
        tpl["Parameters"]["ImageId"]["Type"],
        "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    );

    // UserData installs exactly deploy/udp-agent.service, and settings the
    // agent reads, with the stack's bus.
    let user_data = props["UserData"]["Fn::Base64"]["Fn::Sub"]
        .as_str()
        .expect("UserData is Fn::Base64 of a Fn::Sub string");
    let unit = heredoc(user_data, "cat > /etc/systemd/system/udp-agent.service");
    let unit: Vec<String> = unit_directives(&unit.join("\n"));
    assert_eq!(
        unit,
        unit_directives(&read_deploy("udp-agent.service")),
        "the unit in UserData differs from deploy/udp-agent.service (comments aside)"
    );
    let env_lines = heredoc(user_data, "cat > /etc/default/udp-agent");
    let env = env_assignments(&env_lines.join("\n"));
    let names: Vec<String> = env.iter().map(|(k, _, _)| k.clone()).collect();
    check_env_names(&names, "the UserData's /etc/default/udp-agent");
    let value = |name: &str| {
        env.iter()
            .find(|(k, _, _)| k == name)
            .map(|(_, v, _)| v.clone())
            .unwrap_or_else(|| panic!("UserData does not set {name}"))
    };
    assert_eq!(value("UDP_AGENT_EVENT_BUS"), format!("${{{bus}}}"));
    assert_eq!(value("UDP_AGENT_PORT"), "514");
    let example = env_assignments(&read_deploy("udp-agent.env"));
    let example_pin = example
        .iter()
        .find(|(k, _, a)| k == "UDP_AGENT_PIN_DIR" && *a)
        .map(|(_, v, _)| v.clone());
    assert_eq!(Some(value("UDP_AGENT_PIN_DIR")), example_pin);

    for output in ["EventBusName", "EventBusArn", "LogGroupName"] {
        assert!(
            tpl["Outputs"].get(output).is_some(),
            "the stack outputs {output}"
        );
    }
}
