//! Logs, traces and metrics. Logs go through `tracing` to stderr (human or JSON), each line
//! carrying the trace and span ids when tracing is on. Traces and metrics are exported over
//! OTLP/gRPC when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
//! `telemetry.otlp_endpoint`); without one nothing is exported and nothing is paid.
//!
//! Export never slows a migration: spans go to a bounded queue drained by the SDK's own thread
//! (full queue: spans are dropped, not waited for), and flush at shutdown runs off the async
//! runtime with a deadline. The exporter's own h2/hyper/tonic/tower spans are never exported.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use serde::{Deserialize, Serialize};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// `[telemetry]`: the standard `OTEL_*` environment variables win over these.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. "http://127.0.0.1:4317". Empty: no export.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Spans buffered for export; beyond this they are dropped, never waited for.
    pub max_queue_size: usize,
    /// One export attempt's deadline (a blackholed collector costs at most this, off-thread).
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Export a span per SQL statement (operation name only, never the text or values).
    pub statement_spans: bool,
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "fleetmig".into(),
            max_queue_size: 8192,
            export_timeout: Duration::from_secs(5),
            statement_spans: true,
            metrics_interval: Duration::from_secs(15),
        }
    }
}

impl TelemetryConfig {
    /// The collector endpoint: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT,
    /// then the config file.
    pub fn endpoint(&self) -> Option<String> {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .or_else(|| (!self.otlp_endpoint.is_empty()).then(|| self.otlp_endpoint.clone()))
    }
}

/// Owns the exporters; shut it down to flush.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    pub endpoint: Option<String>,
    counts: SpanCounts,
}

/// Spans ended and spans exported: their difference after the final flush is what was dropped.
#[derive(Debug, Clone, Default)]
struct SpanCounts {
    ended: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
}

impl SpanCounts {
    fn unexported(&self) -> u64 {
        self.ended
            .load(Ordering::Relaxed)
            .saturating_sub(self.exported.load(Ordering::Relaxed))
    }
}

/// Counts what the exporter delivered.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    exported: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if result.is_ok() {
            self.exported.fetch_add(n, Ordering::Relaxed);
        }
        result
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Counts the spans handed to the (bounded) batch processor.
#[derive(Debug)]
struct CountingProcessor<P> {
    inner: P,
    ended: Arc<AtomicU64>,
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx)
    }
    fn on_end(&self, span: SpanData) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Targets whose spans are never exported: the exporter's own transport.
fn is_transport(target: &str) -> bool {
    ["h2", "hyper", "tonic", "tower", "opentelemetry", "reqwest"]
        .iter()
        .any(|t| target.starts_with(t))
}

/// Logs only (CLI commands): human or JSON lines on stderr, filtered by FLEETMIG_LOG.
pub fn init_logs(json: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("FLEETMIG_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = log_layer(json).with_filter(filter);
    let _ = tracing_subscriber::registry().with(fmt).try_init();
}

fn log_layer<S>(json: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        Box::new(layer.event_format(WithTraceIds {
            inner: tracing_subscriber::fmt::format().json().flatten_event(true),
            json: true,
        }))
    } else {
        Box::new(layer.event_format(WithTraceIds {
            inner: tracing_subscriber::fmt::format(),
            json: false,
        }))
    }
}

impl Telemetry {
    /// Logs, and traces + metrics when an endpoint is configured. Must run inside the tokio
    /// runtime (the gRPC exporter's channel lives there).
    pub fn init(config: &TelemetryConfig, json: bool) -> anyhow::Result<Telemetry> {
        let filter =
            EnvFilter::try_from_env("FLEETMIG_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let Some(endpoint) = config.endpoint() else {
            let _ = tracing_subscriber::registry()
                .with(log_layer(json).with_filter(filter))
                .try_init();
            return Ok(Telemetry {
                tracer: None,
                meter: None,
                endpoint: None,
                counts: SpanCounts::default(),
            });
        };
        let mut resource = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(config.service_name.clone());
        }
        let resource = resource
            .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
            .build();

        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(config.export_timeout)
            .build()?;
        let mut batch = BatchConfigBuilder::default();
        if std::env::var("OTEL_BSP_MAX_QUEUE_SIZE").is_err() {
            batch = batch.with_max_queue_size(config.max_queue_size);
        }
        let counts = SpanCounts::default();
        let exporter = CountingExporter {
            inner: exporter,
            exported: counts.exported.clone(),
        };
        let processor = CountingProcessor {
            inner: BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch.build())
                .build(),
            ended: counts.ended.clone(),
        };
        // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (SDK default: parent-based always-on).
        let tracer = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.clone())
            .build();

        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(config.export_timeout)
            .build()?;
        let meter = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(metric_exporter)
                    .with_interval(config.metrics_interval)
                    .build(),
            )
            .with_resource(resource)
            .build();
        global::set_meter_provider(meter.clone());
        {
            let counts = counts.clone();
            let _gauge = global::meter("fleetmig")
                .u64_observable_gauge("fleetmig.telemetry.spans_unexported")
                .with_description("Spans ended but not (yet) exported: queued, dropped by a full queue, or failed")
                .with_callback(move |o| o.observe(counts.unexported(), &[]))
                .build();
        }
        global::set_text_map_propagator(TraceContextPropagator::new());

        let statement_spans = config.statement_spans;
        let otel_filter = FilterFn::new(move |meta| {
            !is_transport(meta.target())
                && (*meta.level() <= tracing::Level::INFO
                    || (statement_spans && meta.target() == crate::engine::STATEMENT_TARGET))
        });
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer.tracer("fleetmig"))
            .with_filter(otel_filter);
        let _ = tracing_subscriber::registry()
            .with(otel)
            .with(log_layer(json).with_filter(filter))
            .try_init();
        tracing::info!(%endpoint, "exporting traces and metrics over OTLP/gRPC");
        Ok(Telemetry {
            tracer: Some(tracer),
            meter: Some(meter),
            endpoint: Some(endpoint),
            counts,
        })
    }

    /// Flush and stop the exporters, off the async runtime (the SDK's calls block), within `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let (tracer, meter, counts) = (self.tracer, self.meter, self.counts);
        if tracer.is_none() && meter.is_none() {
            return;
        }
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(t) = tracer {
                let _ = t.force_flush();
                let _ = t.shutdown();
            }
            if let Some(m) = meter {
                let _ = m.shutdown();
            }
        });
        if tokio::time::timeout(deadline, flush).await.is_err() {
            tracing::warn!(
                ?deadline,
                "telemetry flush did not finish in time; unexported spans are dropped"
            );
        }
        let dropped = counts.unexported();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "spans were not exported (queue full, collector unreachable or too slow)"
            );
        }
    }
}

/// Adopt the caller's W3C trace context (`traceparent`) from request headers as the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(cx);
    }
}

/// Prefixes each log line with the current trace and span ids (JSON: adds two fields).
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = {
            let cx = tracing::Span::current().context();
            let sc = cx.span().span_context().clone();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        };
        match (ids, self.json) {
            (None, _) => self.inner.format_event(ctx, writer, event),
            (Some((trace, span)), false) => {
                write!(writer, "trace_id={trace} span_id={span} ")?;
                self.inner.format_event(ctx, writer, event)
            }
            (Some((trace, span)), true) => {
                let mut line = String::new();
                self.inner
                    .format_event(ctx, Writer::new(&mut line), event)?;
                match line.strip_prefix('{') {
                    Some(rest) => write!(
                        writer,
                        "{{\"trace_id\":\"{trace}\",\"span_id\":\"{span}\",{rest}"
                    ),
                    None => writer.write_str(&line),
                }
            }
        }
    }
}
