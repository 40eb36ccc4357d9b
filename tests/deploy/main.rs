//! The deploy kit of `deploy/`, tested rather than just written: the
//! systemd unit passes `systemd-analyze verify` and its ExecStart and
//! ExecReload work; the container image's ENTRYPOINT/CMD and HEALTHCHECK
//! run against a real proxy with the image's config; the Kubernetes
//! manifests agree with each other and with the config they mount, and the
//! pod's arguments start a fleet proxy that passes its probes; the alert
//! rules pass `promtool`; and every metric the dashboard and the rules use
//! is one a running proxy exports.
//!
//! No image is built here (no container runtime): what can drift, the
//! flags, paths, ports and names, is what these tests check.

#[path = "../common/mod.rs"]
mod common;
mod monitoring;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{KillOnDrop, RedisServer, TempDir, free_port, wait_for_port, write_map};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
/// Where the image and the unit install the binary and the config.
const INSTALLED_BIN: &str = "/usr/local/bin/shardgate";
const INSTALLED_CONFIG: &str = "/etc/shardgate/shardgate.toml";
const ADMIN_PASSWORD: &str = "deploy-test-admin-pw";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One GET; the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Polls `path` until it answers 200 (30 s at most; a fleet proxy joins
/// etcd first).
fn wait_ok(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(port, path);
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on port {port}: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The port of `host:port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// SET and GET through the proxy on `port`.
fn set_get(port: u16) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    for i in 0..10 {
        let _: () = redis::cmd("SET")
            .arg(format!("deploy:{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
        let v: i64 = redis::cmd("GET")
            .arg(format!("deploy:{i}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(v, i);
    }
}

/// A proxy started from `deploy/shardgate.toml` (the config of the image
/// and of the unit) with the given command line, as installed: the
/// installed paths point into a temporary directory, and the config's
/// addresses become free loopback ports. Everything else is the file as
/// shipped.
struct DeployedProxy {
    child: KillOnDrop,
    port: u16,
    metrics: u16,
    admin: u16,
    dir: TempDir,
    _shard: RedisServer,
}

impl DeployedProxy {
    fn start(label: &str, argv: &[String]) -> DeployedProxy {
        let shard = RedisServer::start();
        let dir = TempDir::new(label);
        write_map(&dir, &[&shard]); // dir/map.yaml, the config's /etc/shardgate/map.yaml
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let (port, metrics, admin) = (free_port(), free_port(), free_port());
        let mut config = read("deploy/shardgate.toml");
        for (from, to) in [
            ("/etc/shardgate/", format!("{}/", dir.path().display())),
            (
                "/var/lib/shardgate",
                format!("{}/state", dir.path().display()),
            ),
            ("0.0.0.0:6380", format!("127.0.0.1:{port}")),
            ("0.0.0.0:9121", format!("127.0.0.1:{metrics}")),
            ("127.0.0.1:6390", format!("127.0.0.1:{admin}")),
        ] {
            assert!(config.contains(from), "deploy/shardgate.toml has no {from}");
            config = config.replace(from, &to);
        }
        let config_path = dir.path().join("shardgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let args: Vec<String> = argv
            .iter()
            .map(|a| a.replace(INSTALLED_CONFIG, &config_path.display().to_string()))
            .collect();
        assert_eq!(args[0], INSTALLED_BIN, "{argv:?}");
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = KillOnDrop(
            Command::new(BIN)
                .args(&args[1..])
                .env("SHARDGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let proxy = DeployedProxy {
            child,
            port,
            metrics,
            admin,
            dir,
            _shard: shard,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the proxy never listened: {}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointing at
/// the binary under test, which verify requires to exist), its exposure
/// score is low, and it has the settings an operator relies on.
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/systemd/shardgate.service");
    let dir = TempDir::new("unit");
    let path = dir.path().join("shardgate.service");
    std::fs::write(&path, unit.replace(INSTALLED_BIN, BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed:\n{stderr}");
    assert!(
        !stderr.contains("shardgate.service"),
        "verify warns about the unit:\n{stderr}"
    );
    // The exposure score (0 safest, 10 unsafe): 1.2 when written.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("shardgate.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score}:\n{text}");

    let settings: BTreeMap<&str, Vec<&str>> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            m.entry(k).or_default().push(v);
            m
        });
    let one = |k: &str| settings.get(k).map(|v| v[0]).unwrap_or_default();
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert!(one("LimitNOFILE").parse::<u64>().unwrap() >= 65536);
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    // The stop timeout outlasts the proxy's own drain.
    let config: toml::Table = toml::from_str(&read("deploy/shardgate.toml")).unwrap();
    let grace = config["shutdown_grace_secs"].as_integer().unwrap();
    let stop: i64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > grace, "TimeoutStopSec {stop} <= grace {grace}");
    // The state directory the config names is the unit's StateDirectory.
    assert_eq!(
        config["state_dir"].as_str(),
        Some(format!("/var/lib/{}", one("StateDirectory")).as_str())
    );
}

/// The unit's ExecStart, run as written (installed paths into a temporary
/// directory), serves clients with the shipped config; its ExecReload
/// reloads the map; the logs are JSON; the admin listener answers.
#[test]
fn systemd_exec_start_serves_and_exec_reload_reloads() {
    let unit = read("deploy/systemd/shardgate.service");
    let exec = |key: &str| -> Vec<String> {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let proxy = DeployedProxy::start("systemd", &exec("ExecStart="));
    wait_ok(proxy.metrics, "/readyz");
    set_get(proxy.port);

    // ExecReload: `/bin/kill -HUP $MAINPID`.
    let reload: Vec<String> = exec("ExecReload=")
        .into_iter()
        .map(|a| a.replace("$MAINPID", &proxy.child.id().to_string()))
        .collect();
    let status = Command::new(&reload[0])
        .args(&reload[1..])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(proxy.metrics, "/metrics")
        .1
        .contains("shardgate_map_reloads_total{outcome=\"ok\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // log_format = "json": one object per line.
    let log = proxy.log();
    let first = log.lines().next().unwrap_or_default();
    let line: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {log}"));
    assert!(line.get("level").is_some(), "{first}");
    // The admin listener of the config, with the password from the
    // environment variable it names.
    let out = Command::new(BIN)
        .args(["admin", "status", "--admin"])
        .arg(format!("127.0.0.1:{}", proxy.admin))
        .env("SHARDGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("map_epoch:2"),
        "{text}"
    );
}

/// A Dockerfile instruction and its arguments, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn json_array(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not an exec-form JSON array: {s}: {e}"))
}

/// The image: multi-stage, a non-root numeric user, the config where CMD
/// looks for it, the ports it exposes are the config's; ENTRYPOINT + CMD
/// start a proxy with the image's config, and the HEALTHCHECK command
/// passes against it.
#[test]
fn container_entrypoint_cmd_and_healthcheck_work() {
    let steps = dockerfile();
    let all = |op: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(all("FROM").len() >= 2, "not a multi-stage build");
    let user = all("USER").last().copied().unwrap_or_default();
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0, "runs as root");
    // The Kubernetes pod runs as the image's user.
    let pod = &yaml("deploy/k8s/deployment.yaml")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], uid);
    // The config file CMD names is the one the image installs.
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains(&format!("deploy/shardgate.toml /out{INSTALLED_CONFIG}"))),
        "the image does not install deploy/shardgate.toml"
    );
    let config: toml::Table = toml::from_str(&read("deploy/shardgate.toml")).unwrap();
    let listen = port_of(config["listen"].as_str().unwrap());
    let metrics = port_of(config["metrics_listen"].as_str().unwrap());
    let exposed: BTreeSet<u16> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, BTreeSet::from([listen, metrics]));

    let mut argv = json_array(all("ENTRYPOINT")[0]);
    argv.extend(json_array(all("CMD")[0]));
    let proxy = DeployedProxy::start("image", &argv);
    wait_ok(proxy.metrics, "/readyz");
    set_get(proxy.port);

    // HEALTHCHECK [options] CMD ["...", ...]: run it, with the metrics
    // port the test gave the proxy.
    let check = all("HEALTHCHECK")[0];
    let (_, cmd) = check.split_once("CMD ").expect("HEALTHCHECK CMD");
    let cmd = json_array(cmd.trim());
    assert_eq!(cmd[0], INSTALLED_BIN);
    let addr = format!("127.0.0.1:{metrics}");
    assert!(
        cmd.contains(&addr),
        "HEALTHCHECK does not ask {addr}: {cmd:?}"
    );
    let health = |port: u16| {
        Command::new(BIN)
            .args(
                cmd[1..]
                    .iter()
                    .map(|a| a.replace(&addr, &format!("127.0.0.1:{port}"))),
            )
            .output()
            .unwrap()
    };
    let out = health(proxy.metrics);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "HEALTHCHECK failed: {text}");
    assert!(text.starts_with("HTTP/1.1 200 OK: ok"), "{text}");
    // ... and fails once the proxy is gone.
    let port = proxy.metrics;
    drop(proxy);
    let out = health(port);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A container port by name or number, resolved to its number.
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("port name or number");
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

/// `matchLabels` are all labels of the pod template.
fn selects(selector: &Value, labels: &Value) {
    let selector = selector.as_object().expect("selector labels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "selector {k}={v} does not match the pods");
    }
}

/// The manifests agree: probes on the metrics port at the paths the proxy
/// serves, the Service, the PDB and the Deployment select the pods, the
/// config and the map come from the ConfigMap at the paths the args and
/// the config name. Then the pod's args (with the ConfigMap's files) start
/// a fleet proxy on a real etcd that passes its probes and serves.
#[test]
fn kubernetes_manifests_agree_and_the_pod_args_start_a_fleet_proxy() {
    let deployment = yaml("deploy/k8s/deployment.yaml");
    let configmap = yaml("deploy/k8s/configmap.yaml");
    let service = yaml("deploy/k8s/service.yaml");
    let pdb = yaml("deploy/k8s/pdb.yaml");
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(configmap["kind"], "ConfigMap");
    assert_eq!(service["kind"], "Service");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    let resources: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        BTreeSet::from([
            "configmap.yaml",
            "deployment.yaml",
            "service.yaml",
            "pdb.yaml"
        ])
    );

    let template = &deployment["spec"]["template"];
    let labels = &template["metadata"]["labels"];
    selects(&deployment["spec"]["selector"]["matchLabels"], labels);
    selects(&service["spec"]["selector"], labels);
    selects(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);
    let pod = &template["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // The config the pod reads: --config names a file of the ConfigMap's
    // volume.
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args[0], "serve");
    let config_arg = args.iter().position(|a| a == "--config").unwrap() + 1;
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| args[config_arg].starts_with(m["mountPath"].as_str().unwrap()))
        .expect("--config is not on a mounted volume");
    let mount_path = mount["mountPath"].as_str().unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let data = &configmap["data"];
    let config_key = args[config_arg][mount_path.len()..].trim_start_matches('/');
    let config_text = data[config_key]
        .as_str()
        .expect("config key in the ConfigMap");
    let config: toml::Table = toml::from_str(config_text).unwrap();
    let map_key = config["map"].as_str().unwrap();
    let map_text = data[map_key]
        .as_str()
        .unwrap_or_else(|| panic!("map `{map_key}` (relative to the config) not in the ConfigMap"));

    // Ports: container ports are the config's; probes ask the metrics port.
    let listen = port_of(config["listen"].as_str().unwrap());
    let metrics = port_of(config["metrics_listen"].as_str().unwrap());
    assert_eq!(container_port(container, &"redis".into()), listen);
    assert_eq!(container_port(container, &"metrics".into()), metrics);
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(container_port(container, &get["port"]), metrics, "{probe}");
    }
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = container_port(container, &port["targetPort"]);
        assert!([listen, metrics].contains(&target), "{port}");
    }
    // Scrape annotations name the metrics port.
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], metrics.to_string());
    // The pod is killed only after the proxy's own drain.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    let drain = config["shutdown_grace_secs"].as_integer().unwrap();
    assert!(grace > pre_stop + drain, "{grace} <= {pre_stop} + {drain}");
    // Every $(VAR) of the args is an env entry of the container.
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let pod_name = "shardgate-5d4f8c7b9-x2x7q";
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if let Some(var) = a.strip_prefix("$(").and_then(|v| v.strip_suffix(')')) {
                assert!(env.contains_key(var), "$({var}) not in env");
                assert_eq!(var, "POD_NAME");
                pod_name.to_owned()
            } else {
                a.replace(mount_path, "MOUNT")
            }
        })
        .collect();
    let password_env = config["admin_password_env"].as_str().unwrap();
    assert!(env.contains_key(password_env), "{password_env} not in env");

    // The ConfigMap's map is a valid map.
    let dir = TempDir::new("k8s");
    std::fs::write(dir.path().join("configmap-map.yaml"), map_text).unwrap();
    let out = Command::new(BIN)
        .arg("check-map")
        .arg(dir.path().join("configmap-map.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Run the pod: the ConfigMap's config as mounted, a map of test shards
    // in place of its map (whose hosts exist only in the cluster), and
    // the addresses of this machine as command-line overrides.
    let etcd = Etcd::start();
    let (a, b) = (RedisServer::start(), RedisServer::start());
    std::fs::write(dir.path().join(config_key), config_text).unwrap();
    let test_map = write_map(&dir, &[&a, &b]);
    std::fs::rename(&test_map, dir.path().join(map_key)).unwrap();
    let (port, mport, aport) = (free_port(), free_port(), free_port());
    let mount_dir = dir.path().display().to_string();
    let etcd_url = format!("http://127.0.0.1:{}", etcd.client_port);
    let _child = KillOnDrop(
        Command::new(BIN)
            .args(args.iter().map(|a| a.replace("MOUNT", &mount_dir)))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{mport}")])
            .args(["--admin-listen", &format!("127.0.0.1:{aport}")])
            .args(["--etcd", &etcd_url])
            .env(password_env, ADMIN_PASSWORD)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        wait_ok(mport, container[probe]["httpGet"]["path"].as_str().unwrap());
    }
    set_get(port);
    // It joined the fleet the config names, under the pod's name.
    let cluster = config["cluster"].as_str().unwrap();
    let out = Command::new(BIN)
        .args(["admin", "fleet", "--etcd", &etcd_url, "--cluster", cluster])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(pod_name), "{text}");
}
