//! Tail-sampled tracing: an OpenTelemetry span for each request that was
//! slow or failed, exported over OTLP/gRPC; nothing for the others.
//!
//! A proxy serving 100k requests per second cannot afford a span per request
//! (allocation, export, the collector's storage), and the spans an operator
//! opens are those of the slow and the failed ones. The decision is taken
//! when the reply is ready, so it costs the fast path one comparison of the
//! elapsed time and one of the outcome (see [`Traces::wants`]); only a
//! sampled request builds a span. Off unless `--otlp-endpoint` is given.
//!
//! Each sampled request is one root span (the Redis protocol carries no
//! trace context) of kind server named after the command (`GET`), from the
//! moment its request was parsed to the moment its reply was ready, with a
//! child span of kind client for the round trip to the shard when there was
//! one. Attributes follow OpenTelemetry's database conventions:
//! `db.system.name`, `db.operation.name`, `client.address`, `error.type`
//! (the error code, e.g. `WRONGTYPE`), plus `shardgate.shard` (the shard it
//! ran on) and `shardgate.sampled` (`slow` or `error`). Arguments are never exported (they hold user data).
//!
//! Spans are queued to the SDK's batch processor (a bounded queue of 2048;
//! beyond it spans are dropped, never memory grown) and exported from its
//! own thread, so a slow or absent collector never delays a client.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// `--otlp-endpoint`, `--trace-slower-than-us` and `--trace-errors`.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The OTLP/gRPC collector (`http://host:4317`); `None`: off.
    pub endpoint: Option<String>,
    /// Requests slower than this are traced; `None`: none for slowness.
    pub slower_than: Option<Duration>,
    /// Requests answered with an error are traced.
    pub errors: bool,
    /// `service.instance.id` of the exported spans (the proxy's id or
    /// address).
    pub instance: String,
}

/// Why a request was sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampled {
    Slow,
    Error,
}

impl Sampled {
    pub fn as_str(self) -> &'static str {
        match self {
            Sampled::Slow => "slow",
            Sampled::Error => "error",
        }
    }
}

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint}: {source}")]
pub struct TraceError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The tracer of a proxy whose tracing is on.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    slower_than: Option<Duration>,
    errors: bool,
}

/// One request that was sampled.
pub struct TracedRequest<'a> {
    /// The command's name (`GET`, `CLIENT`).
    pub command: &'a str,
    /// Parse to reply.
    pub elapsed: Duration,
    /// The shard's round trip (the longest part's when split).
    pub backend: Option<Duration>,
    /// The shard it ran on.
    pub shard: Option<&'a str>,
    /// The client's `ip:port`.
    pub client: &'a str,
    /// The error reply, for a failed request (`-ERR ...`).
    pub error: Option<&'a [u8]>,
    pub why: Sampled,
}

impl Traces {
    /// The tracer for `config`, or `None` when tracing is off. Must run
    /// inside the Tokio runtime that lives as long as the process (the
    /// gRPC channel's connections live there).
    pub fn start(config: &TraceConfig) -> Result<Option<Traces>, TraceError> {
        let Some(endpoint) = &config.endpoint else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| TraceError {
                endpoint: endpoint.clone(),
                source,
            })?;
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "shardgate"),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", config.instance.clone()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("shardgate");
        Ok(Some(Traces {
            provider,
            tracer,
            slower_than: config.slower_than,
            errors: config.errors,
        }))
    }

    /// Whether a request that took `elapsed` and succeeded (`ok`) is
    /// traced, and why.
    #[inline]
    pub fn wants(&self, elapsed: Duration, ok: bool) -> Option<Sampled> {
        if !ok && self.errors {
            Some(Sampled::Error)
        } else if self.slower_than.is_some_and(|t| elapsed > t) {
            Some(Sampled::Slow)
        } else {
            None
        }
    }

    /// Queues the spans of one sampled request for export.
    pub fn record(&self, r: TracedRequest<'_>) {
        let end = SystemTime::now();
        let command = r.command.to_ascii_uppercase();
        let start = end.checked_sub(r.elapsed).unwrap_or(end);
        let mut attributes = vec![
            KeyValue::new("db.system.name", "redis"),
            KeyValue::new("db.operation.name", command.clone()),
            KeyValue::new("client.address", r.client.to_owned()),
            KeyValue::new("shardgate.sampled", r.why.as_str()),
        ];
        if let Some(shard) = r.shard {
            attributes.push(KeyValue::new("shardgate.shard", shard.to_owned()));
        }
        let error = r.error.map(error_text);
        if let Some((code, _)) = &error {
            attributes.push(KeyValue::new("error.type", code.clone()));
        }
        let mut span = self
            .tracer
            .span_builder(command)
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attributes)
            .start(&self.tracer);
        if let Some((_, message)) = &error {
            span.set_status(Status::error(message.clone()));
        }
        if let Some(backend) = r.backend {
            let cx = Context::new().with_remote_span_context(span.span_context().clone());
            let mut attributes = vec![KeyValue::new("db.system.name", "redis")];
            if let Some(shard) = r.shard {
                attributes.push(KeyValue::new("shardgate.shard", shard.to_owned()));
            }
            let mut child = self
                .tracer
                .span_builder("backend")
                .with_kind(SpanKind::Client)
                .with_start_time(end.checked_sub(backend).unwrap_or(start).max(start))
                .with_attributes(attributes)
                .start_with_context(&self.tracer, &cx);
            child.end_with_timestamp(end);
        }
        span.end_with_timestamp(end);
    }

    /// Exports what is queued (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }
}

/// An error reply's code (`WRONGTYPE`) and its text without the `-` and
/// line end, at most 256 bytes.
fn error_text(reply: &[u8]) -> (String, String) {
    let body = match reply.first() {
        Some(b'-') => &reply[1..],
        Some(b'!') => reply
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&reply[..0], |i| &reply[i + 1..]),
        _ => reply,
    };
    let end = body
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(body.len());
    let line = &body[..end.min(256)];
    let text: Cow<'_, str> = String::from_utf8_lossy(line);
    let code = text.split(' ').next().unwrap_or_default().to_owned();
    (code, text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_give_their_code() {
        assert_eq!(
            error_text(b"-WRONGTYPE Operation against a key\r\n"),
            (
                "WRONGTYPE".to_owned(),
                "WRONGTYPE Operation against a key".to_owned()
            )
        );
        assert_eq!(
            error_text(b"!21\r\nSYNTAX invalid syntax\r\n"),
            ("SYNTAX".to_owned(), "SYNTAX invalid syntax".to_owned())
        );
        let long = [b"-ERR ".as_slice(), &[b'x'; 1000], b"\r\n"].concat();
        assert_eq!(error_text(&long).1.len(), 256);
    }
}
