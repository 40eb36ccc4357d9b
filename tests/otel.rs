//! Tail-sampled tracing: the proxy exports OpenTelemetry spans over OTLP/gRPC
//! for slow and failed requests only. The receiver here is a real OTLP gRPC
//! server (opentelemetry-proto's generated service on tonic) that keeps
//! what it is sent.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RedisServer, TempDir, free_port, spawn_proxy_env, write_map};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

/// Every span received, with the resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        _ => None,
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|a| Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?)))
        .collect()
}

/// Starts the receiver on its own runtime thread on `port`.
fn start_receiver(received: Received, port: u16) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(received))
                .serve(([127, 0, 0, 1], port).into())
                .await
                .unwrap();
        });
    });
    common::wait_for_port(port);
}

fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A script that keeps its shard busy for about `ms` milliseconds.
const BUSY: &str = "local s = redis.call('TIME') \
    while true do local n = redis.call('TIME') \
    if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > tonumber(ARGV[1]) * 1000 then break end end \
    return 1";

#[test]
fn only_slow_and_failed_requests_are_traced() {
    let received = Received::default();
    let otlp = free_port();
    start_receiver(received.clone(), otlp);
    let redis = RedisServer::start();
    let dir = TempDir::new("otel");
    let map = write_map(&dir, &[&redis]);
    let mport = free_port();
    let (_proxy, port) = spawn_proxy_env(
        BIN,
        &map,
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{otlp}"),
            "--trace-slower-than-us",
            "50000",
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
        ],
        // The batch processor's export delay (5 s by default).
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    // 200 fast commands: none traced.
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut con)
            .unwrap();
    }
    // One failed on the shard, one refused by the proxy, one slow.
    let _: () = redis::cmd("SET")
        .arg("word")
        .arg("abc")
        .query(&mut con)
        .unwrap();
    let err = redis::cmd("INCR")
        .arg("word")
        .query::<i64>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
    let err = redis::cmd("MSET")
        .arg("a")
        .arg(1)
        .arg("b")
        .arg(2)
        .arg("c")
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("wrong number"), "{err}");
    let _: i64 = redis::cmd("EVAL")
        .arg(BUSY)
        .arg(1)
        .arg("busy")
        .arg(120)
        .query(&mut con)
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = received.0.lock().unwrap().clone();
        if spans.len() >= 4 || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    // INCR (server span and its shard round trip), MSET (refused by the
    // proxy: no round trip), EVAL (server + round trip).
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["EVAL", "INCR", "MSET", "backend", "backend"],
        "spans: {names:?}"
    );
    assert!(spans.iter().all(|(service, _)| service == "shardgate"));
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == n)
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    let incr = by_name("INCR");
    let a = attributes(&incr);
    assert_eq!(a["db.system.name"], "redis");
    assert_eq!(a["db.operation.name"], "INCR");
    assert_eq!(a["shardgate.sampled"], "error");
    assert_eq!(a["error.type"], "ERR");
    assert_eq!(a["shardgate.shard"], "s0");
    assert!(a["client.address"].starts_with("127.0.0.1:"), "{a:?}");
    let status = incr.status.clone().unwrap();
    assert_eq!(status.code, 2, "status error");
    assert!(status.message.contains("not an integer"), "{status:?}");
    let mset = attributes(&by_name("MSET"));
    assert_eq!(mset["shardgate.sampled"], "error");
    assert!(!mset.contains_key("shardgate.shard"), "{mset:?}");
    let eval = by_name("EVAL");
    let e = attributes(&eval);
    assert_eq!(e["shardgate.sampled"], "slow");
    assert!(!e.contains_key("error.type"));
    let took = eval.end_time_unix_nano - eval.start_time_unix_nano;
    assert!(took >= 100_000_000, "EVAL span lasted {took} ns");
    // Each round trip is a child of its request's span, inside it.
    for parent in [&incr, &eval] {
        let child = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == "backend" && s.parent_span_id == parent.span_id)
            .unwrap_or_else(|| panic!("no round trip under {}", parent.name));
        assert_eq!(child.trace_id, parent.trace_id);
        assert!(child.start_time_unix_nano >= parent.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= parent.end_time_unix_nano);
        assert_eq!(child.kind, 3, "client kind");
    }
    assert_eq!(incr.kind, 2, "server kind");
    // Arguments are never exported.
    for (_, s) in &spans {
        for v in attributes(s).values() {
            assert!(!v.contains("word") && !v.contains("redis.call"), "{v}");
        }
    }
    let m = metrics(mport);
    assert!(
        m.contains("shardgate_trace_spans_total{reason=\"error\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("shardgate_trace_spans_total{reason=\"slow\"} 1"),
        "{m}"
    );
}

#[test]
fn traces_of_a_stopping_proxy_are_exported_and_a_missing_collector_costs_clients_nothing() {
    // No collector yet on this port: requests are served as usual.
    let otlp = free_port();
    let redis = RedisServer::start();
    let dir = TempDir::new("otel-stop");
    let map = write_map(&dir, &[&redis]);
    let (mut proxy, port) = spawn_proxy_env(
        BIN,
        &map,
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{otlp}"),
            "--trace-errors",
            "false",
        ],
        // Longer than the test: only the shutdown exports.
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    // Errors are not traced with --trace-errors false.
    let _ = redis::cmd("NOSUCHCOMMAND").query::<()>(&mut con);
    let received = Received::default();
    start_receiver(received.clone(), otlp);
    let _: i64 = redis::cmd("EVAL")
        .arg(BUSY)
        .arg(1)
        .arg("busy")
        .arg(30)
        .query(&mut con)
        .unwrap();
    assert!(received.0.lock().unwrap().is_empty());
    // SIGTERM: the queued span is exported before the process exits.
    let pid = proxy.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the proxy did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut names: Vec<String> = received
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["EVAL", "backend"]);
}
