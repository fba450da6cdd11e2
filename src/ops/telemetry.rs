//! Logs and traces: the `tracing` subscriber, its runtime-adjustable level, and the
//! optional OTLP export that joins each Check's span to the request's W3C trace.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};

/// The log filter's reload handle and its current text, once `init` ran.
static LOG_FILTER: OnceLock<(reload::Handle<EnvFilter, Registry>, Mutex<String>)> = OnceLock::new();
/// Whether spans are exported, so Checks only parse `traceparent` when it matters.
static EXPORTING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter `{0}`: {1}")]
    Filter(String, String),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installed logging and tracing; `shutdown` flushes spans not yet exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("cedargate: flushing traces at shutdown failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber: logs to stderr (text or JSON) at the configured
/// level (`RUST_LOG` wins), and, when `tracing.otlp_endpoint` is set, spans to OTLP.
/// Call inside the Tokio runtime: the OTLP exporter is a tonic client.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let text = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| config.log.level.clone());
    let filter = EnvFilter::try_new(&text).map_err(|e| TelemetryError::Filter(text.clone(), e.to_string()))?;
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only for a person at a terminal, never into files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match config.log.format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);

    let (provider, spans) = if config.tracing.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.tracing.otlp_endpoint.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let resource =
            opentelemetry_sdk::Resource::builder().with_service_name(config.tracing.service_name.clone()).build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // A sampled (or unsampled) `traceparent` is followed; new traces by ratio.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.tracing.sample_ratio))))
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("cedargate"))
            // The Check span and its stage spans, whatever the log level.
            .with_filter(Targets::new().with_target("cedargate", tracing::Level::DEBUG));
        EXPORTING.store(true, Ordering::Release);
        (Some(provider), Some(layer))
    };
    tracing_subscriber::registry().with(logs).with(spans).try_init().map_err(|_| TelemetryError::AlreadyInstalled)?;
    let _ = LOG_FILTER.set((handle, Mutex::new(text)));
    Ok(Telemetry { provider })
}

/// The current log filter.
pub fn log_filter() -> String {
    LOG_FILTER.get().and_then(|(_, text)| text.lock().ok().map(|t| t.clone())).unwrap_or_default()
}

/// Why the log filter was not changed.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error("logging is not managed by this process")]
    NotManaged,
    #[error("`{text}` is not a log filter: {message}")]
    Invalid { text: String, message: String },
    #[error("cannot replace the log filter: {0}")]
    Reload(String),
}

/// Replaces the log filter at runtime (`info`, `cedargate=debug,info`, ...).
pub fn set_log_filter(text: &str) -> Result<(), LogFilterError> {
    let (handle, current) = LOG_FILTER.get().ok_or(LogFilterError::NotManaged)?;
    let filter = EnvFilter::try_new(text)
        .map_err(|e| LogFilterError::Invalid { text: text.to_owned(), message: e.to_string() })?;
    handle.reload(filter).map_err(|e| LogFilterError::Reload(e.to_string()))?;
    if let Ok(mut current) = current.lock() {
        text.clone_into(&mut current);
    }
    Ok(())
}

struct Headers<'a>(&'a [(String, String)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Whether spans go anywhere: an OTLP exporter is installed. Without one, a Check's
/// span would only be built, formatted and dropped, on every Check.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// Makes `span` a child of the W3C trace context (`traceparent`, `tracestate`) in
/// the request's headers, so cedargate's span joins the request's trace.
pub fn join_trace(span: &tracing::Span, headers: &[(String, String)]) {
    if !exporting() {
        return;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only when no OpenTelemetry layer is installed, which EXPORTING rules out.
    let _ = span.set_parent(context);
}
