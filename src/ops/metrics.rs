//! What SREs watch: every metric cedargate exports, in one place.
//!
//! Counters and histograms are updated on the request path (atomics and a short
//! lock per observation); state that already lives elsewhere (cache sizes, the
//! reloader's counters, JWKS refresh results, the audit queue) is read only when
//! scraped, through `StateSource`s, so nothing is counted twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets (seconds): fine in the microseconds a Check takes, coarse up
/// to the second a stuck JWKS fetch could cost.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];

/// Remaining lifetime buckets (seconds): 1 min to a year, so both "about to expire"
/// and "long-lived" credentials stand out.
const REMAINING_BUCKETS: [f64; 11] = [
    60.0,
    300.0,
    900.0,
    3600.0,
    6.0 * 3600.0,
    86_400.0,
    7.0 * 86_400.0,
    30.0 * 86_400.0,
    90.0 * 86_400.0,
    365.0 * 86_400.0,
    3650.0 * 86_400.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn remaining_histogram() -> Histogram {
    Histogram::new(REMAINING_BUCKETS)
}

fn observe_remaining(histogram: &Histogram, seconds: i64) {
    #[allow(clippy::cast_precision_loss)] // seconds of a lifetime: far below 2^52
    histogram.observe(seconds.max(0) as f64);
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    decision: &'static str,
    cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvaluatorLabels {
    evaluator: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheNameLabels {
    cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    credential: &'static str,
}

/// What one finished Check contributes to the metrics, as plain labels and numbers:
/// this module knows nothing of decisions.
#[derive(Debug, Clone, Copy)]
pub struct CheckRecord {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `allow`, or the deny reason code.
    pub reason: &'static str,
    /// `hit`, `miss` or `bypass`.
    pub cache: &'static str,
    /// The reason is a refused bearer token.
    pub token_failure: bool,
    pub elapsed: Duration,
    /// Seconds until the caller's certificate and token expire.
    pub certificate_remaining: Option<i64>,
    pub token_remaining: Option<i64>,
}

/// A stage of the pipeline, timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Identity,
    Token,
    Cedar,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Identity => "identity",
            Stage::Token => "token",
            Stage::Cedar => "cedar",
        }
    }
}

/// The series every Check updates, taken out of their families once: a metric's
/// clone shares its values, so updating one costs its own atomics or lock, not a
/// family's lock and a hash of its labels on every Check.
#[derive(Debug)]
struct Resolved {
    /// By `CHECK_LABELS`, in order.
    checks: [Histogram; CHECK_LABELS.len()],
    identity: Histogram,
    token: Histogram,
    cedar: Histogram,
    /// (hit, miss) of the decision and token caches.
    decision_lookups: (Counter, Counter),
    token_lookups: (Counter, Counter),
    certificate_remaining: Histogram,
    token_remaining: Histogram,
    /// `decisions{decision="allow",reason="allow"}`: denies keep their family, one
    /// series per reason code.
    allowed: Counter,
}

/// Every (decision, cache) a `CheckRecord` can carry.
const CHECK_LABELS: [(&str, &str); 6] =
    [("allow", "hit"), ("allow", "miss"), ("allow", "bypass"), ("deny", "hit"), ("deny", "miss"), ("deny", "bypass")];

/// The request path's metrics.
#[derive(Debug)]
pub struct Metrics {
    check_duration: Family<CheckLabels, Histogram, fn() -> Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    stage_duration: Family<StageLabels, Histogram, fn() -> Histogram>,
    cache_lookups: Family<CacheLabels, Counter>,
    cache_evictions: Family<CacheNameLabels, Counter>,
    token_failures: Family<ReasonLabels, Counter>,
    remaining_lifetime: Family<CredentialLabels, Histogram, fn() -> Histogram>,
    shadow_disagreements: Counter,
    /// Policy evaluations by evaluator; the two series are kept here, so
    /// counting one costs an atomic add and no label lookup.
    evaluations: Family<EvaluatorLabels, Counter>,
    evaluated_directly: Counter,
    evaluated_by_cedar: Counter,
    resolved: Resolved,
    /// Sources read at scrape time; registered once at startup.
    sources: Mutex<Vec<Arc<dyn StateSource>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let check_duration: Family<CheckLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let decisions: Family<DecisionLabels, Counter> = Family::default();
        let stage_duration: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let cache_lookups: Family<CacheLabels, Counter> = Family::default();
        let cache_evictions: Family<CacheNameLabels, Counter> = Family::default();
        let remaining_lifetime: Family<CredentialLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(remaining_histogram);
        let evaluations: Family<EvaluatorLabels, Counter> = Family::default();
        let evaluator = |evaluator| evaluations.get_or_create(&EvaluatorLabels { evaluator }).clone();
        let stage = |stage: Stage| stage_duration.get_or_create(&StageLabels { stage: stage.label() }).clone();
        let lookups = |cache| {
            let result = |result| cache_lookups.get_or_create(&CacheLabels { cache, result }).clone();
            (result("hit"), result("miss"))
        };
        let remaining = |credential| remaining_lifetime.get_or_create(&CredentialLabels { credential }).clone();
        // Taking a series out of its family creates it: these read as 0 from the
        // start rather than missing, so rates and ratios over them work before the
        // first event.
        let resolved = Resolved {
            checks: CHECK_LABELS
                .map(|(decision, cache)| check_duration.get_or_create(&CheckLabels { decision, cache }).clone()),
            identity: stage(Stage::Identity),
            token: stage(Stage::Token),
            cedar: stage(Stage::Cedar),
            decision_lookups: lookups("decision"),
            token_lookups: lookups("token"),
            certificate_remaining: remaining("certificate"),
            token_remaining: remaining("token"),
            allowed: decisions.get_or_create(&DecisionLabels { decision: "allow", reason: "allow" }).clone(),
        };
        for cache in ["decision", "token"] {
            let _ = cache_evictions.get_or_create(&CacheNameLabels { cache });
        }
        Metrics {
            evaluated_directly: evaluator("direct"),
            evaluated_by_cedar: evaluator("cedar"),
            check_duration,
            decisions,
            stage_duration,
            cache_lookups,
            cache_evictions,
            token_failures: Family::default(),
            remaining_lifetime,
            shadow_disagreements: Counter::default(),
            evaluations,
            resolved,
            sources: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    /// Records a finished Check: its latency by decision (`allow`/`deny`) and cache
    /// use, its reason code, whether it was a token failure, and for the credentials
    /// it carried how many seconds they remain valid.
    pub fn record_check(&self, check: &CheckRecord) {
        let seconds = check.elapsed.as_secs_f64();
        let resolved = CHECK_LABELS
            .iter()
            .position(|&labels| labels == (check.decision, check.cache))
            .and_then(|i| self.resolved.checks.get(i));
        match resolved {
            Some(histogram) => histogram.observe(seconds),
            None => self
                .check_duration
                .get_or_create(&CheckLabels { decision: check.decision, cache: check.cache })
                .observe(seconds),
        }
        match (check.decision, check.reason) {
            ("allow", "allow") => self.resolved.allowed.inc(),
            (decision, reason) => self.decisions.get_or_create(&DecisionLabels { decision, reason }).inc(),
        };
        if check.token_failure {
            self.token_failures.get_or_create(&ReasonLabels { reason: check.reason }).inc();
        }
        if let Some(seconds) = check.certificate_remaining {
            observe_remaining(&self.resolved.certificate_remaining, seconds);
        }
        if let Some(seconds) = check.token_remaining {
            observe_remaining(&self.resolved.token_remaining, seconds);
        }
    }

    pub fn record_stage(&self, stage: Stage, elapsed: Duration) {
        let histogram = match stage {
            Stage::Identity => &self.resolved.identity,
            Stage::Token => &self.resolved.token,
            Stage::Cedar => &self.resolved.cedar,
        };
        histogram.observe(elapsed.as_secs_f64());
    }

    pub fn record_cache_lookup(&self, cache: &'static str, hit: bool) {
        let resolved = match cache {
            "decision" => Some(&self.resolved.decision_lookups),
            "token" => Some(&self.resolved.token_lookups),
            _ => None,
        };
        match resolved {
            Some((hits, _)) if hit => hits.inc(),
            Some((_, misses)) => misses.inc(),
            None => {
                self.cache_lookups.get_or_create(&CacheLabels { cache, result: if hit { "hit" } else { "miss" } }).inc()
            }
        };
    }

    pub fn record_cache_eviction(&self, cache: &'static str) {
        self.cache_evictions.get_or_create(&CacheNameLabels { cache }).inc();
    }

    /// A Check's policies were evaluated: `directly` on its facts
    /// (`policy::direct`), or by Cedar's evaluator on the built request.
    pub fn record_evaluation(&self, directly: bool) {
        if directly { &self.evaluated_directly } else { &self.evaluated_by_cedar }.inc();
    }

    pub fn record_shadow_disagreement(&self) {
        self.shadow_disagreements.inc();
    }

    /// How many Checks the shadow policy set disagreed with.
    pub fn shadow_disagreements(&self) -> u64 {
        self.shadow_disagreements.get()
    }

    /// Adds a source of scrape-time state (caches, reloader, audit queue, JWKS).
    pub fn add_source(&self, source: Arc<dyn StateSource>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(source);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("cedargate");
        registry.register(
            "check_duration_seconds",
            "Check latency, by decision and decision-cache outcome",
            self.check_duration.clone(),
        );
        registry.register("decisions", "Decisions by outcome and reason code", self.decisions.clone());
        registry.register(
            "stage_duration_seconds",
            "Latency of each pipeline stage (identity, token, cedar)",
            self.stage_duration.clone(),
        );
        registry.register("cache_lookups", "Cache lookups by cache and result", self.cache_lookups.clone());
        registry.register("cache_evictions", "Entries evicted for size or expiry", self.cache_evictions.clone());
        registry.register("token_failures", "Refused bearer tokens by reason code", self.token_failures.clone());
        registry.register(
            "credential_remaining_seconds",
            "Remaining lifetime of callers' certificates and tokens, at each Check",
            self.remaining_lifetime.clone(),
        );
        registry.register(
            "shadow_disagreements",
            "Checks on which the shadow policy set decided differently",
            self.shadow_disagreements.clone(),
        );
        registry.register(
            "policy_evaluations",
            "Checks whose policies were evaluated, by evaluator: directly on the request's facts, or by Cedar on the \
             built request (where a policy could raise an error, or is beyond the direct evaluator)",
            self.evaluations.clone(),
        );
        registry.register_collector(Box::new(Sources(self.sources.lock().map(|s| s.clone()).unwrap_or_default())));
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

/// A gauge or counter sampled at scrape time.
#[derive(Debug, Clone)]
pub enum Sample {
    Gauge { name: &'static str, help: &'static str, labels: Vec<(&'static str, String)>, value: i64 },
    Counter { name: &'static str, help: &'static str, labels: Vec<(&'static str, String)>, value: u64 },
}

/// Something whose state is exported when scraped.
pub trait StateSource: Send + Sync + std::fmt::Debug {
    fn samples(&self) -> Vec<Sample>;
}

#[derive(Debug)]
struct Sources(Vec<Arc<dyn StateSource>>);

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct DynLabels(Vec<(&'static str, String)>);

impl EncodeLabelSet for DynLabels {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        for (name, value) in &self.0 {
            (*name, value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Group samples by metric name: a name is described once, then each label set.
        let mut samples: Vec<Sample> = self.0.iter().flat_map(|s| s.samples()).collect();
        samples.sort_by_key(|s| match s {
            Sample::Gauge { name, .. } | Sample::Counter { name, .. } => *name,
        });
        let mut rest = samples.as_slice();
        while let Some(first) = rest.first() {
            let (name, help, is_counter) = match first {
                Sample::Gauge { name, help, .. } => (*name, *help, false),
                Sample::Counter { name, help, .. } => (*name, *help, true),
            };
            let same = rest
                .iter()
                .take_while(
                    |s| matches!(s, Sample::Gauge { name: n, .. } | Sample::Counter { name: n, .. } if *n == name),
                )
                .count();
            let (group, tail) = rest.split_at(same);
            rest = tail;
            let metric_type = if is_counter {
                prometheus_client::metrics::MetricType::Counter
            } else {
                prometheus_client::metrics::MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
            let split = |sample: &Sample| match sample {
                Sample::Gauge { labels, value, .. } => (labels.clone(), Ok(*value)),
                Sample::Counter { labels, value, .. } => (labels.clone(), Err(*value)),
            };
            match group {
                // One sample without labels: `name value`, not `name{} value`.
                [only] if split(only).0.is_empty() => match split(only).1 {
                    Ok(v) => ConstGauge::new(v).encode(metric)?,
                    Err(v) => ConstCounter::new(v).encode(metric)?,
                },
                _ => {
                    for sample in group {
                        let (labels, value) = split(sample);
                        let labels = DynLabels(labels);
                        let family = metric.encode_family(&labels)?;
                        match value {
                            Ok(v) => ConstGauge::new(v).encode(family)?,
                            Err(v) => ConstCounter::new(v).encode(family)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl StateSource for Fixed {
        fn samples(&self) -> Vec<Sample> {
            vec![
                Sample::Gauge { name: "things", help: "Things", labels: vec![("kind", "a".into())], value: 3 },
                Sample::Counter { name: "events", help: "Events", labels: vec![], value: 7 },
                Sample::Gauge { name: "things", help: "Things", labels: vec![("kind", "b".into())], value: 4 },
            ]
        }
    }

    #[test]
    fn state_sources_are_encoded_once_per_name() {
        let metrics = Arc::new(Metrics::default());
        metrics.add_source(Arc::new(Fixed));
        metrics.record_cache_lookup("decision", true);
        let text = metrics.encode();
        assert!(text.contains("cedargate_things{kind=\"a\"} 3"), "{text}");
        assert!(text.contains("cedargate_things{kind=\"b\"} 4"), "{text}");
        assert_eq!(text.matches("# TYPE cedargate_things gauge").count(), 1, "{text}");
        assert!(text.contains("cedargate_events_total 7"), "{text}");
        assert!(text.contains("cedargate_cache_lookups_total{cache=\"decision\",result=\"hit\"} 1"), "{text}");
    }

    /// The series taken out of their families once are the families' own: what is
    /// recorded through them is what a scrape reads, beside series recorded
    /// through the families themselves.
    #[test]
    fn resolved_series_are_the_exported_ones() {
        let metrics = Arc::new(Metrics::default());
        let check = |decision, reason, cache| CheckRecord {
            decision,
            reason,
            cache,
            token_failure: false,
            elapsed: Duration::from_micros(3),
            certificate_remaining: Some(3600),
            token_remaining: None,
        };
        metrics.record_check(&check("allow", "allow", "hit"));
        metrics.record_check(&check("allow", "allow", "hit"));
        metrics.record_check(&check("deny", "policy_denied", "miss"));
        metrics.record_stage(Stage::Cedar, Duration::from_micros(2));
        metrics.record_cache_lookup("token", false);
        metrics.record_cache_lookup("certificate", true);
        let text = metrics.encode();
        for line in [
            "cedargate_check_duration_seconds_count{decision=\"allow\",cache=\"hit\"} 2",
            "cedargate_check_duration_seconds_count{decision=\"deny\",cache=\"miss\"} 1",
            "cedargate_check_duration_seconds_count{decision=\"deny\",cache=\"bypass\"} 0",
            "cedargate_decisions_total{decision=\"allow\",reason=\"allow\"} 2",
            "cedargate_decisions_total{decision=\"deny\",reason=\"policy_denied\"} 1",
            "cedargate_stage_duration_seconds_count{stage=\"cedar\"} 1",
            "cedargate_stage_duration_seconds_count{stage=\"token\"} 0",
            "cedargate_cache_lookups_total{cache=\"token\",result=\"miss\"} 1",
            "cedargate_cache_lookups_total{cache=\"certificate\",result=\"hit\"} 1",
            "cedargate_credential_remaining_seconds_count{credential=\"certificate\"} 3",
            "cedargate_credential_remaining_seconds_count{credential=\"token\"} 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
