//! The monitoring part of the deploy kit: the alert rules pass `promtool`
//! (and every alert has a test), the dashboard's queries parse and its
//! panels fit the grid, and every metric the dashboard and the rules use is
//! one a running proxy exports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::etcd::Etcd;
use super::common::{RedisServer, TempDir, free_port, write_map};
use super::{BIN, http_get, read, repo, set_get, wait_ok, yaml};

/// `promtool check rules` and `promtool test rules` pass on the alert
/// rules; the dashboard's queries parse as PromQL (checked as recording
/// rules, with Grafana's variables filled in).
#[test]
fn alert_rules_pass_promtool_and_dashboard_queries_parse() {
    let promtool = |args: &[&str]| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(repo("deploy/prometheus"))
            .output()
            .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    let text = promtool(&["check", "rules", "alerts.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    // Every alert has a test.
    let rules = read("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts_test.yml");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no test for {alert}"
        );
    }

    let dir = TempDir::new("dashboard-rules");
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        file.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = dir.path().join("dashboard.yml");
    std::fs::write(&path, file).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);
}

/// Waits until `/metrics` on `port` has a line starting with `prefix`.
fn wait_for_metric(port: u16, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(port, "/metrics")
        .1
        .lines()
        .any(|l| l.starts_with(prefix))
    {
        assert!(Instant::now() < deadline, "no {prefix} in /metrics");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The dashboard's panels fit Grafana's 24-column grid without
/// overlapping, and every query goes to the chosen data source.
#[test]
fn dashboard_panels_fit_the_grid_and_use_the_chosen_data_source() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/shardgate.json")).unwrap();
    let mut cells = BTreeMap::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        let g = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    let variables = &dashboard["templating"]["list"];
    assert_eq!(variables[0]["name"], "datasource");
    assert_eq!(variables[0]["query"], "prometheus");
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/shardgate.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    exprs
}

/// Metric selectors in PromQL text: each `shardgate_*` / `process_*` name
/// with the label names its `{...}` matcher uses (if any).
fn selectors(promql: &str) -> Vec<(String, Vec<String>)> {
    let bytes = promql.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' || bytes[i] == b'\'' {
            let quote = bytes[i];
            i += 1;
            while i < bytes.len() && bytes[i] != quote {
                i += 1 + usize::from(bytes[i] == b'\\');
            }
            i += 1;
            continue;
        }
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let name = &promql[start..i];
        if !(name.starts_with("shardgate_") || name.starts_with("process_")) {
            continue;
        }
        let mut labels = Vec::new();
        if promql[i..].starts_with('{') {
            let end = i + promql[i..].find('}').expect("unclosed {");
            for matcher in promql[i + 1..end].split(',') {
                let label: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !label.is_empty() {
                    labels.push(label);
                }
            }
            i = end;
        }
        out.push((name.to_owned(), labels));
    }
    out
}

/// The dashboard, the alert rules and the rules' test series use only
/// metric names (and label names) that a running proxy exports: a fleet
/// proxy on etcd with a shard that died, so that error series exist too.
/// Series that exist only for Sentinel shards are checked against the
/// declared metrics instead (tests/sentinel.rs scrapes them).
#[test]
fn dashboard_and_rules_use_only_exported_metrics() {
    let etcd = Etcd::start();
    let a = RedisServer::start();
    let mut b = RedisServer::start();
    let dir = TempDir::new("drift");
    let map = write_map(&dir, &[&a, &b]);
    let mport = free_port();
    // A TLS listener beside the plain one (its certificate's metrics).
    let tls = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, tls.cert.pem()).unwrap();
    std::fs::write(&key, tls.signing_key.serialize_pem()).unwrap();
    let (_child, port) = super::common::spawn_proxy(
        BIN,
        &map,
        &[
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
            "--etcd",
            &format!("http://127.0.0.1:{}", etcd.client_port),
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    wait_ok(mport, "/readyz");
    set_get(port);
    // A client that hangs up while blocked: its dedicated connection is
    // closed (`shardgate_dedicated_connections_closed_total`).
    {
        let mut ghost = TcpStream::connect(("127.0.0.1", port)).unwrap();
        ghost
            .write_all(b"*3\r\n$5\r\nBLPOP\r\n$5\r\nghost\r\n$1\r\n0\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for_metric(mport, "shardgate_dedicated_connections_closed_total{");
    // A subscriber: the pub/sub hub connects to the shards.
    let mut subscriber = TcpStream::connect(("127.0.0.1", port)).unwrap();
    subscriber
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
        .unwrap();
    wait_for_metric(mport, "shardgate_pubsub_backend_connects_total{");
    // A dead shard: backend errors, an open circuit breaker.
    b.kill();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        for i in 0..20 {
            let _ = redis::cmd("GET")
                .arg(format!("deploy:{i}"))
                .query::<redis::Value>(&mut con);
        }
        let (_, body) = http_get(mport, "/metrics");
        if body.contains("shardgate_backend_errors_total{") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // name -> label names, from the sample lines.
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').map_or("", |(l, _)| l)),
            None => (line.split(' ').next().unwrap_or_default(), ""),
        };
        let set = exported.entry(name.to_owned()).or_default();
        for pair in labels.split("\",") {
            if let Some((label, _)) = pair.split_once('=') {
                set.insert(label.trim_start_matches(',').to_owned());
            }
        }
    }

    let mut used: Vec<(String, String, Vec<String>)> = Vec::new();
    for expr in dashboard_exprs() {
        for (name, labels) in selectors(&expr) {
            used.push(("deploy/grafana/shardgate.json".into(), name, labels));
        }
    }
    let rules: Value = yaml("deploy/prometheus/alerts.yml");
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        for (name, labels) in selectors(rule["expr"].as_str().unwrap()) {
            used.push(("deploy/prometheus/alerts.yml".into(), name, labels));
        }
    }
    let tests: Value = yaml("deploy/prometheus/alerts_test.yml");
    for test in tests["tests"].as_array().unwrap() {
        for series in test["input_series"].as_array().unwrap() {
            for (name, labels) in selectors(series["series"].as_str().unwrap()) {
                used.push(("deploy/prometheus/alerts_test.yml".into(), name, labels));
            }
        }
    }
    assert!(used.len() > 50, "{} uses", used.len());
    let declared: BTreeSet<&str> = shardgate::metrics::DESCRIPTIONS
        .iter()
        .map(|(n, _, _)| *n)
        .collect();
    let mut missing = Vec::new();
    let mut names = BTreeSet::new();
    for (file, name, labels) in &used {
        names.insert(name.as_str());
        // Series that exist only with sentinel-managed or postgres shards
        // (this proxy has neither): declared is what can be checked.
        let base = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if shardgate::metrics::SENTINEL_ONLY.contains(&name.as_str())
            || shardgate::metrics::POSTGRES_ONLY.contains(&base)
        {
            if !declared.contains(base) {
                missing.push(format!("{file}: {name} is not declared"));
            }
            continue;
        }
        let Some(have) = exported.get(name) else {
            missing.push(format!("{file}: {name} is not in /metrics"));
            continue;
        };
        for label in labels {
            // Prometheus adds these at scrape time.
            if label != "job" && label != "instance" && !have.contains(label) {
                missing.push(format!("{file}: {name} has no label `{label}` ({have:?})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\n--- /metrics ---\n{body}",
        missing.join("\n")
    );
    // The kit covers the proxy's main signals.
    for name in [
        "shardgate_command_duration_seconds_bucket",
        "shardgate_backend_errors_total",
        "shardgate_circuit_open",
        "shardgate_endpoint_healthy",
        "shardgate_fleet_fenced",
        "shardgate_map_epoch",
        "shardgate_rebalance_slots",
    ] {
        assert!(names.contains(name), "{name} is used nowhere");
    }
}

#[test]
fn selectors_find_metric_and_label_names() {
    assert_eq!(
        selectors(
            r#"sum by (shard) (rate(shardgate_backend_errors_total{job=~"$job", kind!="x"}[5m])) / shardgate_x_count and up{job="shardgate_y"}"#
        ),
        [
            (
                "shardgate_backend_errors_total".to_owned(),
                vec!["job".to_owned(), "kind".to_owned()]
            ),
            ("shardgate_x_count".to_owned(), vec![]),
        ]
    );
}
