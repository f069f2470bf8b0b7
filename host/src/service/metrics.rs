//! Prometheus metrics, named after kube-scheduler's under our prefix so
//! that existing dashboards and alerts translate: `scheduler_schedule_attempts_total`
//! becomes `wsched_schedule_attempts_total`, and so on.
//!
//! `/metrics` speaks both exposition formats a scraper may ask for: the
//! registry encodes OpenMetrics, and the classic Prometheus text format
//! (0.0.4), which every other scraper and parser reads, is converted from
//! it ([`openmetrics_to_classic`]) rather than encoded twice, so the two
//! can never disagree on a value. Which one a scrape gets is chosen from
//! its `Accept` header ([`Format::negotiate`]).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cluster::Job;
use crate::wit::JobState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    decision_point: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    // 1 µs to about 8 s.
    Histogram::new(exponential_buckets(1e-6, 2.0, 24))
}

/// The service's metrics; cheap to clone (every field shares its value).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    attempts: Family<ResultLabel, Counter>,
    calls: HistogramFamily<CallLabels>,
    plugin_strikes: Family<PluginLabel, Counter>,
    plugin_log_dropped: Family<PluginLabel, Counter>,
    /// Hot swaps done.
    pub policy_swaps: Counter,
    /// Plugins ejected in favour of the built-in policy.
    pub ejections: Counter,
    /// Jobs preempted by a policy.
    pub preemptions: Counter,
    /// Jobs moved to other GPUs.
    pub migrations: Counter,
    /// Jobs accepted.
    pub jobs_submitted: Counter,
    /// Ended jobs forgotten after the retention time (`--finished-ttl`).
    pub jobs_expired: Counter,
    /// Checkpoints of running jobs' progress taken by the scheduler loop.
    pub checkpoints_taken: Counter,
    /// Checkpoints on disk: behind `checkpoints_taken` while the database
    /// writer is busy, and for good if it stopped.
    pub checkpoints_stored: Counter,
    ended: Family<ResultLabel, Counter>,
    pending: Gauge,
    running: Gauge,
    suspended: Gauge,
    utilisation: Gauge<f64, std::sync::atomic::AtomicU64>,
    completion: Histogram,
    queueing: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wsched");
        let m = Metrics {
            registry: Arc::default(),
            attempts: Family::default(),
            calls: Family::new_with_constructor(call_histogram),
            plugin_strikes: Family::default(),
            plugin_log_dropped: Family::default(),
            policy_swaps: Counter::default(),
            ejections: Counter::default(),
            preemptions: Counter::default(),
            migrations: Counter::default(),
            jobs_submitted: Counter::default(),
            jobs_expired: Counter::default(),
            checkpoints_taken: Counter::default(),
            checkpoints_stored: Counter::default(),
            ended: Family::default(),
            pending: Gauge::default(),
            running: Gauge::default(),
            suspended: Gauge::default(),
            utilisation: Gauge::default(),
            // 1 s to about 97 days.
            completion: Histogram::new(exponential_buckets(1.0, 2.0, 24)),
            queueing: Histogram::new(exponential_buckets(0.01, 2.0, 30)),
        };
        registry.register(
            "schedule_attempts",
            "Actions the policy proposed, by result: scheduled (applied), error (rejected by validation), and decisions that placed nothing while jobs waited (unschedulable)",
            m.attempts.clone(),
        );
        registry.register(
            "plugin_execution_duration_seconds",
            "Wall time of each policy call, by plugin and decision point",
            m.calls.clone(),
        );
        registry.register(
            "plugin_strikes",
            "Faults counted against plugins",
            m.plugin_strikes.clone(),
        );
        registry.register(
            "plugin_log_lines_dropped",
            "Plugin log lines dropped over the plugin's log budget",
            m.plugin_log_dropped.clone(),
        );
        registry.register("policy_swaps", "Hot swaps of the active policy", m.policy_swaps.clone());
        registry.register(
            "store_checkpoints_taken",
            "Checkpoints of running jobs' progress taken by the scheduler loop (--checkpoint-every)",
            m.checkpoints_taken.clone(),
        );
        registry.register(
            "store_checkpoints_stored",
            "Checkpoints of running jobs' progress committed to disk",
            m.checkpoints_stored.clone(),
        );
        registry.register(
            "plugin_ejections",
            "Plugins ejected for repeated faults",
            m.ejections.clone(),
        );
        registry.register("preemptions", "Jobs preempted", m.preemptions.clone());
        registry.register("migrations", "Jobs moved to other GPUs", m.migrations.clone());
        registry.register("jobs_submitted", "Jobs accepted", m.jobs_submitted.clone());
        registry.register(
            "jobs_expired",
            "Ended jobs deleted after their retention time (--finished-ttl)",
            m.jobs_expired.clone(),
        );
        registry.register(
            "jobs_ended",
            "Jobs ended, by result (finished, failed)",
            m.ended.clone(),
        );
        registry.register("pending_jobs", "Jobs waiting that never started", m.pending.clone());
        registry.register("running_jobs", "Jobs holding GPUs", m.running.clone());
        registry.register(
            "suspended_jobs",
            "Jobs preempted and waiting to resume",
            m.suspended.clone(),
        );
        registry.register(
            "gpu_utilisation_ratio",
            "Share of the GPUs allocated now",
            m.utilisation.clone(),
        );
        registry.register(
            "job_completion_seconds",
            "Job completion time: submission to end",
            m.completion.clone(),
        );
        registry.register(
            "job_queueing_seconds",
            "Queueing delay: submission to first start",
            m.queueing.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }

    /// The metrics in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Classic => openmetrics_to_classic(&self.encode()),
        }
    }

    /// The OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }

    /// Count a decision's actions.
    pub fn schedule_attempts(&self, applied: usize, rejected: usize, jobs_waiting: bool) {
        self.attempts
            .get_or_create(&ResultLabel { result: "scheduled" })
            .inc_by(applied as u64);
        self.attempts
            .get_or_create(&ResultLabel { result: "error" })
            .inc_by(rejected as u64);
        if applied == 0 && rejected == 0 && jobs_waiting {
            self.attempts
                .get_or_create(&ResultLabel {
                    result: "unschedulable",
                })
                .inc();
        }
    }

    /// One policy call.
    pub fn observe_call(&self, plugin: &str, decision_point: &'static str, nanos: u64) {
        self.calls
            .get_or_create(&CallLabels {
                plugin: plugin.to_string(),
                decision_point,
            })
            .observe(nanos as f64 / 1e9);
    }

    /// Make `plugin`'s series exist (at zero) from the moment it is active,
    /// so that dashboards and rate() see it before its first fault.
    pub fn policy_active(&self, plugin: &str) {
        let _ = self.plugin_strikes.get_or_create(&PluginLabel {
            plugin: plugin.to_string(),
        });
    }

    /// Faults counted against `plugin`.
    pub fn strikes(&self, plugin: &str, count: u64) {
        self.plugin_strikes
            .get_or_create(&PluginLabel {
                plugin: plugin.to_string(),
            })
            .inc_by(count);
    }

    /// Log lines `plugin` wrote over its budget.
    pub fn log_lines_dropped(&self, plugin: &str, count: u64) {
        self.plugin_log_dropped
            .get_or_create(&PluginLabel {
                plugin: plugin.to_string(),
            })
            .inc_by(count);
    }

    /// A job started for the first time just now.
    pub fn observe_start(&self, job: &Job) {
        if let Some(start) = job.first_start {
            self.queueing.observe((start - job.submit_time).max(0.0));
        }
    }

    /// A job ended (or did not, if `job` is still live).
    pub fn observe_end(&self, job: Option<&Job>) {
        let Some(job) = job else { return };
        let Some(end) = job.end_time else { return };
        let result = if job.state == JobState::Finished {
            "finished"
        } else {
            "failed"
        };
        self.ended.get_or_create(&ResultLabel { result }).inc();
        if job.state == JobState::Finished {
            self.completion.observe((end - job.submit_time).max(0.0));
        }
    }

    /// The queue and cluster gauges.
    pub fn set_gauges(&self, pending: usize, running: usize, suspended: usize, utilisation: f64) {
        self.pending.set(pending as i64);
        self.running.set(running as i64);
        self.suspended.set(suspended as i64);
        self.utilisation.set(utilisation);
    }
}

/// Serve `/metrics` (and `/healthz`) over HTTP on `listener` until the process ends.
pub async fn serve_on(listener: tokio::net::TcpListener, metrics: Metrics) -> anyhow::Result<()> {
    use axum::http::{HeaderMap, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let metrics = metrics.clone();
                async move {
                    let accept = headers
                        .get_all(header::ACCEPT)
                        .into_iter()
                        .filter_map(|v| v.to_str().ok());
                    let format = Format::negotiate(accept);
                    (
                        [(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")],
                        metrics.encode_as(format),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).await?;
    Ok(())
}

/// The exposition formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    Classic,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

/// How closely a media range in `Accept` names a format: the most specific
/// range that matches decides its quality (RFC 9110, section 12.5.1).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Ranked {
    /// 0 for `*/*`, 1 for `type/*`, 2 for the type, 3 for the type with
    /// its version.
    specificity: u8,
    q: f64,
}

impl Format {
    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The media type, subtype and version this format matches in `Accept`.
    fn media(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Format::Classic => ("text", "plain", "0.0.4"),
            Format::OpenMetrics => ("application", "openmetrics-text", "1.0.0"),
        }
    }

    /// The format for a scrape sending these `Accept` header values.
    ///
    /// OpenMetrics when the scraper names it (`application/openmetrics-text`,
    /// of version 1.0.0 or none) with a quality above 0 and at least that
    /// of the classic text; the classic text otherwise, including when
    /// there is no `Accept` or it has only wildcards (as curl sends): it is
    /// the one every scraper and parser reads, and Prometheus's own client
    /// libraries choose the same way.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
        let mut open_metrics: Option<Ranked> = None;
        let mut classic: Option<Ranked> = None;
        for value in accept {
            for range in split_outside_quotes(value, ',') {
                for (format, best) in [
                    (Format::OpenMetrics, &mut open_metrics),
                    (Format::Classic, &mut classic),
                ] {
                    if let Some(ranked) = rank(range, format.media())
                        && best.is_none_or(|b| (ranked.specificity, ranked.q) > (b.specificity, b.q))
                    {
                        *best = Some(ranked);
                    }
                }
            }
        }
        match open_metrics {
            Some(om) if om.specificity >= 2 && om.q > 0.0 && om.q >= classic.map_or(0.0, |c| c.q) => {
                Format::OpenMetrics
            }
            _ => Format::Classic,
        }
    }
}

/// How the media range `range` (one element of `Accept`) names `media`,
/// if it does; `None` also for a range that does not parse.
fn rank(range: &str, (kind, subtype, version): (&str, &str, &str)) -> Option<Ranked> {
    let mut parts = split_outside_quotes(range, ';').into_iter();
    let (range_kind, range_subtype) = parts.next()?.trim().split_once('/')?;
    let (range_kind, range_subtype) = (range_kind.trim(), range_subtype.trim());
    let mut q = 1.0;
    let mut range_version = None;
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "q" => {
                q = value.parse::<f64>().ok().filter(|q| (0.0..=1.0).contains(q))?;
            }
            "version" => range_version = Some(value),
            _ => {}
        }
    }
    let specificity = match (range_kind, range_subtype) {
        ("*", "*") => 0,
        (k, "*") if k.eq_ignore_ascii_case(kind) => 1,
        (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => match range_version {
            None => 2,
            Some(v) if v == version => 3,
            Some(_) => return None,
        },
        _ => return None,
    };
    Some(Ranked { specificity, q })
}

/// `text` split at every `separator` outside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text.
///
/// The differences that matter: a counter's family is named with the
/// `_total` its samples carry; `# UNIT` and `# EOF` do not exist, nor
/// `_created` samples or exemplars; info and stateset families become
/// gauges (info's named with its `_info` suffix), `unknown` is `untyped`;
/// timestamps are integer milliseconds instead of seconds; HELP text
/// escapes only `\\` and `\n`.
pub fn openmetrics_to_classic(text: &str) -> String {
    let types: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut family: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = types.get(name).copied().unwrap_or("unknown");
            out.push_str("# HELP ");
            push_classic_name(&mut out, name, kind);
            out.push(' ');
            push_classic_help(&mut out, help);
            out.push('\n');
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = Some((name, kind));
            out.push_str("# TYPE ");
            push_classic_name(&mut out, name, kind);
            out.push(' ');
            out.push_str(classic_type(kind));
            out.push('\n');
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT`, `# EOF`: no such lines in the classic format.
        } else if let Some((series, value, timestamp)) = split_sample(line) {
            let created = family.is_some_and(|(name, kind)| {
                matches!(kind, "counter" | "histogram" | "summary" | "gaugehistogram")
                    && series.strip_prefix(name).is_some_and(|rest| {
                        rest.strip_prefix("_created")
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                    })
            });
            if created {
                continue;
            }
            out.push_str(series);
            out.push(' ');
            out.push_str(value);
            if let Some(millis) = timestamp.and_then(classic_timestamp) {
                out.push(' ');
                out.push_str(&millis.to_string());
            }
            out.push('\n');
        }
    }
    out
}

fn push_classic_name(out: &mut String, name: &str, kind: &str) {
    out.push_str(name);
    match kind {
        "counter" if !name.ends_with("_total") => out.push_str("_total"),
        "info" if !name.ends_with("_info") => out.push_str("_info"),
        _ => {}
    }
}

fn classic_type(kind: &str) -> &'static str {
    match kind {
        "counter" => "counter",
        "gauge" | "info" | "stateset" => "gauge",
        "histogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// OpenMetrics HELP text (escapes `\\`, `\n`, `\"`) as classic HELP text
/// (escapes `\\` and `\n` only; any other backslash is literal).
fn push_classic_help(out: &mut String, help: &str) {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str("\\n"),
            Some('\\') => out.push_str("\\\\"),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push_str("\\\\");
                out.push(other);
            }
            None => out.push_str("\\\\"),
        }
    }
}

/// A sample line's series (name and labels), value and timestamp, without
/// its exemplar; `None` when it has no value.
fn split_sample(line: &str) -> Option<(&str, &str, Option<&str>)> {
    // The series ends at the first space outside the label set, whose
    // quoted values may hold spaces, braces and `#`.
    let mut end = line.len();
    let (mut quoted, mut escaped, mut in_labels) = (false, false, false);
    for (at, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if in_labels => quoted = !quoted,
            '{' if !quoted => in_labels = true,
            '}' if !quoted => in_labels = false,
            ' ' if !quoted && !in_labels => {
                end = at;
                break;
            }
            _ => {}
        }
    }
    let series = &line[..end];
    let rest = line[end..].split(" # ").next().unwrap_or_default();
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    Some((series, value, fields.next()))
}

/// An OpenMetrics timestamp (seconds) in milliseconds, if it is one.
fn classic_timestamp(seconds: &str) -> Option<i64> {
    let millis = (seconds.parse::<f64>().ok()? * 1000.0).round();
    // Within i64's range, the cast is exact; NaN and infinities fail the test.
    (millis.abs() < 9.0e18).then_some(millis as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_accept_plain_text_and_wildcards_get_the_classic_text() {
        for accept in [
            vec![],
            vec![""],
            vec!["text/plain"],
            vec!["text/plain;version=0.0.4"],
            vec!["*/*"],
            vec!["application/*"],
            vec!["application/json"],
            vec!["garbage;;;,,="],
            vec!["application/openmetrics-text;q=0"],
            vec!["application/openmetrics-text;q=0.5, text/plain"],
            vec!["text/plain;q=0.9,application/openmetrics-text;q=0.8"],
            // A version this server does not write.
            vec!["application/openmetrics-text;version=0.0.1"],
            // An explicit refusal beats a wildcard's acceptance.
            vec!["*/*, application/openmetrics-text;q=0"],
            // A malformed quality makes its range void.
            vec!["application/openmetrics-text;q=high"],
            vec!["application/openmetrics-text;q=NaN"],
            vec!["application/openmetrics-text;q=2"],
        ] {
            assert_eq!(Format::negotiate(accept.clone()), Format::Classic, "{accept:?}");
        }
    }

    #[test]
    fn openmetrics_when_asked_for_and_ranked_at_least_as_high() {
        for accept in [
            vec!["application/openmetrics-text"],
            vec!["application/openmetrics-text; version=1.0.0; charset=utf-8"],
            vec!["APPLICATION/OpenMetrics-Text;Version=\"1.0.0\""],
            vec!["text/plain;q=0.5", "application/openmetrics-text"],
            vec!["text/plain, application/openmetrics-text"],
            // What Prometheus 2 sends by default.
            vec![
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ],
            // And Prometheus 3.
            vec![
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            ],
            // The most specific range decides: version 1.0.0 at 0.9 beats
            // the general range at 0.1.
            vec![
                "application/openmetrics-text;q=0.1, application/openmetrics-text;version=1.0.0;q=0.9, text/plain;q=0.5",
            ],
            // A quoted comma does not split the range.
            vec!["application/openmetrics-text;x=\"a,b\";q=1, text/plain;q=0.5"],
        ] {
            assert_eq!(Format::negotiate(accept.clone()), Format::OpenMetrics, "{accept:?}");
        }
        // Prometheus configured for the classic text only.
        assert_eq!(
            Format::negotiate(["text/plain;version=0.0.4;q=1,*/*;q=0.1"]),
            Format::Classic
        );
    }

    #[test]
    fn the_registry_output_converts_to_classic_text() {
        let metrics = Metrics::new();
        metrics.schedule_attempts(2, 1, true);
        metrics.observe_call("fifo", "tick", 1500);
        metrics.policy_active("fifo");
        metrics.set_gauges(3, 1, 0, 0.25);
        let open_metrics = metrics.encode();
        assert!(open_metrics.ends_with("# EOF\n"));
        let classic = metrics.encode_as(Format::Classic);
        for line in [
            "# HELP wsched_schedule_attempts_total Actions the policy proposed",
            "# TYPE wsched_schedule_attempts_total counter\n",
            "wsched_schedule_attempts_total{result=\"scheduled\"} 2\n",
            "# TYPE wsched_plugin_execution_duration_seconds histogram\n",
            "wsched_plugin_execution_duration_seconds_bucket{le=\"+Inf\",plugin=\"fifo\",decision_point=\"tick\"} 1\n",
            "# TYPE wsched_pending_jobs gauge\nwsched_pending_jobs 3\n",
            "# TYPE wsched_gpu_utilisation_ratio gauge\nwsched_gpu_utilisation_ratio 0.25\n",
            "# TYPE wsched_plugin_strikes_total counter\nwsched_plugin_strikes_total{plugin=\"fifo\"} 0\n",
        ] {
            assert!(classic.contains(line), "{line:?} missing from:\n{classic}");
        }
        assert!(!classic.contains("# EOF"), "{classic}");
        // Every sample is kept as it was.
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&classic), samples(&open_metrics));
    }

    #[test]
    fn every_openmetrics_feature_converts() {
        let open_metrics = concat!(
            "# HELP build Build \\\"facts\\\", a \\\\ and\\na line.\n",
            "# TYPE build info\n",
            "build_info{version=\"1.0 # not an exemplar\"} 1\n",
            "# HELP requests Requests.\n",
            "# TYPE requests counter\n",
            "# UNIT requests requests\n",
            "requests_total{path=\"/{a}\"} 7 # {trace_id=\"abc\"} 1.0 1700000000.5\n",
            "requests_created{path=\"/{a}\"} 1700000000.25\n",
            "# TYPE latency_seconds histogram\n",
            "# UNIT latency_seconds seconds\n",
            "latency_seconds_bucket{le=\"+Inf\"} 3 1700000000.123\n",
            "latency_seconds_sum 1.5\n",
            "latency_seconds_count 3\n",
            "latency_seconds_created 1700000000\n",
            "# TYPE state stateset\n",
            "state{state=\"up\"} 1\n",
            "# TYPE mystery unknown\n",
            "mystery NaN\n",
            "# EOF\n",
        );
        let expected = concat!(
            "# HELP build_info Build \"facts\", a \\\\ and\\na line.\n",
            "# TYPE build_info gauge\n",
            "build_info{version=\"1.0 # not an exemplar\"} 1\n",
            "# HELP requests_total Requests.\n",
            "# TYPE requests_total counter\n",
            "requests_total{path=\"/{a}\"} 7\n",
            "# TYPE latency_seconds histogram\n",
            "latency_seconds_bucket{le=\"+Inf\"} 3 1700000000123\n",
            "latency_seconds_sum 1.5\n",
            "latency_seconds_count 3\n",
            "# TYPE state gauge\n",
            "state{state=\"up\"} 1\n",
            "# TYPE mystery untyped\n",
            "mystery NaN\n",
        );
        assert_eq!(openmetrics_to_classic(open_metrics), expected);
    }

    #[test]
    fn odd_timestamps_are_dropped_not_cast() {
        assert_eq!(classic_timestamp("1.5"), Some(1500));
        assert_eq!(classic_timestamp("-2"), Some(-2000));
        for odd in ["NaN", "inf", "-inf", "1e300", "x", ""] {
            assert_eq!(classic_timestamp(odd), None, "{odd}");
        }
        assert_eq!(classic_timestamp("5e-324"), Some(0));
    }
}
