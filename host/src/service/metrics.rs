//! Prometheus metrics, named after kube-scheduler's under our prefix so
//! that existing dashboards and alerts translate: `scheduler_schedule_attempts_total`
//! becomes `wsched_schedule_attempts_total`, and so on.

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
            policy_swaps: Counter::default(),
            ejections: Counter::default(),
            preemptions: Counter::default(),
            migrations: Counter::default(),
            jobs_submitted: Counter::default(),
            jobs_expired: Counter::default(),
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
        registry.register("policy_swaps", "Hot swaps of the active policy", m.policy_swaps.clone());
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

    /// The text exposition format.
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
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).await?;
    Ok(())
}
