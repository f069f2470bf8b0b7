//! Decision cost of the Tiresias plugin in Wasm against the very same Rust
//! code compiled natively, and the wall time of whole-trace replays.
//!
//! Run with `cargo bench -p wsched --bench decision` after
//! `scripts/build-plugins.sh`. Prints one table; ratios matter more than
//! absolute numbers on a shared machine.
//!
//! Setup for the per-decision figures: 1,024 GPUs (8 per node), all busy
//! with 1,024 one-GPU jobs, and N one-GPU jobs waiting. Each measured
//! decision is a real decision point at steady state: the oldest running
//! job finishes and a new job arrives, and the policy starts the head of
//! its queue on the freed GPU. Both sides go through the same host path
//! (events in, `cluster-view` reads, validation out); only the policy's
//! call is timed.

use std::path::PathBuf;

use wsched::cluster::{Cluster, JobSpec};
use wsched::engine::{Engine, Limits};
use wsched::native::NativePolicy;
use wsched::scheduler::PolicyHost;
use wsched::sim::{self, PolicyChoice, SimConfig};
use wsched::wit as host;
use wsched_sdk as sdk;
use wsched_sdk::Policy as _;

const GPUS: u32 = 1024;
const MEASURED: usize = 2000;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = std::env::var_os("WSCHED_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/plugins"));
    let tiresias_path = plugins.join("tiresias.wasm");
    anyhow::ensure!(
        tiresias_path.exists(),
        "{} is missing: run scripts/build-plugins.sh",
        tiresias_path.display()
    );
    let engine = Engine::new(Limits::default())?;
    let plugin = engine.load_file(&tiresias_path).map_err(|e| anyhow::anyhow!("{e}"))?;

    println!("Tiresias, one decision (job finishes + job arrives) on {GPUS} busy GPUs; {MEASURED} decisions per row");
    println!(
        "{:>8} | {:>12} {:>12} | {:>14} {:>14} | {:>11}",
        "pending", "wasm p50", "wasm p99", "native p50", "native p99", "wasm/native"
    );
    println!("{}", "-".repeat(86));
    for pending in [100usize, 1_000, 10_000] {
        let instance = engine
            .instantiate(&plugin, "", 0.0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let wasm = PolicyHost::with_plugin(
            engine.clone(),
            Cluster::homogeneous(GPUS, 8, "H100", 80 << 30),
            instance,
        );
        let (policy, _) = wsched_tiresias::Tiresias::init("").map_err(|e| anyhow::anyhow!(e))?;
        let native = PolicyHost::with_native(
            engine.clone(),
            Cluster::homogeneous(GPUS, 8, "H100", 80 << 30),
            Box::new(SdkNative(policy)),
        );
        let (wasm, native) = steady_state(wasm, native, pending);
        let (w50, w99) = percentiles(&wasm);
        let (n50, n99) = percentiles(&native);
        println!(
            "{pending:>8} | {:>9.1} µs {:>9.1} µs | {:>11.1} µs {:>11.1} µs | {:>10.2}x",
            w50,
            w99,
            n50,
            n99,
            w50 / n50
        );
    }

    println!();
    println!("Tiresias, first decision after taking over (hot swap or start-up): learns every job, starts {GPUS}");
    println!(
        "{:>8} | {:>12} {:>12} | {:>11}",
        "pending", "wasm p50", "native p50", "wasm/native"
    );
    println!("{}", "-".repeat(54));
    for pending in [100usize, 1_000, 10_000] {
        let wasm = takeover(pending, || {
            let instance = engine.instantiate(&plugin, "", 0.0).expect("instantiate");
            PolicyHost::with_plugin(
                engine.clone(),
                Cluster::homogeneous(GPUS, 8, "H100", 80 << 30),
                instance,
            )
        });
        let native = takeover(pending, || {
            let (policy, _) = wsched_tiresias::Tiresias::init("").expect("init");
            PolicyHost::with_native(
                engine.clone(),
                Cluster::homogeneous(GPUS, 8, "H100", 80 << 30),
                Box::new(SdkNative(policy)),
            )
        });
        let (w50, _) = percentiles(&wasm);
        let (n50, _) = percentiles(&native);
        println!("{pending:>8} | {:>9.1} µs {:>9.1} µs | {:>10.2}x", w50, n50, w50 / n50);
    }

    println!();
    let trace = wsched::trace::read(&root.join("examples/traces/philly-11cb48.csv"))?;
    println!("Replay of the bundled Philly trace ({} jobs) on 64 GPUs", trace.len());
    println!(
        "{:>14} | {:>10} | {:>12} | {:>12}",
        "policy", "wall", "calls", "p50 per call"
    );
    println!("{}", "-".repeat(58));
    let config = SimConfig::with_gpus(64, 8)?;
    let mut rows: Vec<(String, Option<PolicyChoice>)> = vec![("builtin-fifo".into(), None)];
    for name in ["fifo", "tiresias", "gavel", "gandiva"] {
        let plugin = engine
            .load_file(&plugins.join(format!("{name}.wasm")))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        rows.push((
            format!("{name}.wasm"),
            Some(PolicyChoice {
                plugin,
                config: String::new(),
            }),
        ));
    }
    for (name, policy) in rows {
        let best = (0..3)
            .map(|_| sim::simulate(&engine, policy.as_ref(), &[], &trace, &config))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .min_by(|a, b| a.timing.wall_seconds.total_cmp(&b.timing.wall_seconds))
            .ok_or_else(|| anyhow::anyhow!("no run"))?;
        println!(
            "{name:>14} | {:>8.3} s | {:>12} | {:>9.1} µs",
            best.timing.wall_seconds, best.timing.calls, best.timing.call_p50_us
        );
    }
    Ok(())
}

/// Fill each cluster, queue `pending` jobs, then time `MEASURED`
/// steady-state decisions (one finish + one arrival each) on both hosts,
/// alternating between them so that drift on a shared machine hits both
/// alike. Returns per-call nanoseconds for each.
fn steady_state(mut wasm: PolicyHost, mut native: PolicyHost, pending: usize) -> (Vec<u64>, Vec<u64>) {
    for host in [&mut wasm, &mut native] {
        for _ in 0..GPUS as usize + pending {
            host.submit(JobSpec::new("bench", 1, 1e9)).expect("submit");
        }
        host.decide(); // takeover: the policy learns all jobs and fills the cluster
        assert_eq!(host.cluster().running_ids().len(), GPUS as usize);
    }
    let mut timings = (Vec::with_capacity(MEASURED), Vec::with_capacity(MEASURED));
    for i in 0..MEASURED + 50 {
        for (host, out) in [(&mut wasm, &mut timings.0), (&mut native, &mut timings.1)] {
            let oldest = *host.cluster().running_ids().iter().next().expect("running job");
            host.finish(oldest);
            host.submit(JobSpec::new("bench", 1, 1e9)).expect("submit");
            let outcome = host.decide();
            assert_eq!(outcome.applied.len(), 1, "one start per decision");
            if i >= 50 {
                out.extend(host.stats().call_times.last()); // after warm-up
            }
        }
    }
    for host in [&wasm, &native] {
        assert_eq!(host.cluster().stats().pending as usize, pending);
    }
    timings
}

/// Time the takeover decision (every live job arrives at once; the
/// policy fills the cluster), over fresh hosts from `make`.
fn takeover(pending: usize, make: impl Fn() -> PolicyHost) -> Vec<u64> {
    (0..15)
        .map(|_| {
            let mut host = make();
            for _ in 0..GPUS as usize + pending {
                host.submit(JobSpec::new("bench", 1, 1e9)).expect("submit");
            }
            host.decide();
            assert_eq!(host.cluster().running_ids().len(), GPUS as usize);
            host.stats().call_times.last().expect("one call")
        })
        .skip(3)
        .collect()
}

fn percentiles(nanos: &[u64]) -> (f64, f64) {
    let mut v = nanos.to_vec();
    v.sort_unstable();
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

/// Runs an SDK policy natively inside the host: the bench's "same logic,
/// compiled natively" side. Converts between the host's and the SDK's
/// generated types (both come from the one WIT file, so fields match).
struct SdkNative<P>(P);

impl<P: sdk::Policy + Send> NativePolicy for SdkNative<P> {
    fn name(&self) -> &str {
        "native"
    }

    fn decide(&mut self, cluster: &Cluster, events: &[host::Event]) -> host::Decision {
        let events = events.iter().map(event).collect();
        let d = self.0.decide(&ClusterView(cluster), events);
        host::Decision {
            actions: d.actions.into_iter().map(action).collect(),
            wakeup: d.wakeup,
        }
    }
}

struct ClusterView<'a>(&'a Cluster);

impl sdk::View for ClusterView<'_> {
    fn now(&self) -> f64 {
        self.0.now()
    }
    fn stats(&self) -> sdk::ClusterStats {
        let s = self.0.stats();
        sdk::ClusterStats {
            gpus: s.gpus,
            free_gpus: s.free_gpus,
            pending: s.pending,
            running: s.running,
            suspended: s.suspended,
        }
    }
    fn job(&self, id: u64) -> Option<sdk::JobInfo> {
        self.0.job_info(id).map(job_info)
    }
    fn jobs(&self, state: sdk::JobState) -> Vec<u64> {
        self.0.ids_in(match state {
            sdk::JobState::Pending => host::JobState::Pending,
            sdk::JobState::Running => host::JobState::Running,
            sdk::JobState::Suspended => host::JobState::Suspended,
            sdk::JobState::Finished => host::JobState::Finished,
            sdk::JobState::Failed => host::JobState::Failed,
        })
    }
    fn running(&self) -> Vec<sdk::RunningJob> {
        self.0
            .running_jobs()
            .into_iter()
            .map(|r| sdk::RunningJob {
                id: r.id,
                gpus: r.gpus,
                fraction: r.fraction,
                attained_gpu_seconds: r.attained_gpu_seconds,
                submit_time: r.submit_time,
                since: r.since,
                priority: r.priority,
            })
            .collect()
    }
    fn gpus(&self) -> Vec<sdk::GpuInfo> {
        (0..self.0.gpu_count()).filter_map(|g| self.gpu(g)).collect()
    }
    fn gpu(&self, id: u32) -> Option<sdk::GpuInfo> {
        self.0.gpu_info(id).map(|g| sdk::GpuInfo {
            id: g.id,
            node: g.node,
            kind: g.kind,
            memory_total: g.memory_total,
            memory_used: g.memory_used,
            online: g.online,
            residents: g
                .residents
                .into_iter()
                .map(|r| sdk::Resident {
                    job: r.job,
                    fraction: r.fraction,
                })
                .collect(),
        })
    }
    fn free_gpus(&self) -> Vec<u32> {
        self.0.free_gpu_ids()
    }
}

fn state(s: host::JobState) -> sdk::JobState {
    match s {
        host::JobState::Pending => sdk::JobState::Pending,
        host::JobState::Running => sdk::JobState::Running,
        host::JobState::Suspended => sdk::JobState::Suspended,
        host::JobState::Finished => sdk::JobState::Finished,
        host::JobState::Failed => sdk::JobState::Failed,
    }
}

fn job_info(j: host::JobInfo) -> sdk::JobInfo {
    sdk::JobInfo {
        id: j.id,
        tenant: j.tenant,
        submit_time: j.submit_time,
        gpus_requested: j.gpus_requested,
        state: state(j.state),
        placement: j.placement,
        fraction: j.fraction,
        attained_gpu_seconds: j.attained_gpu_seconds,
        attained_seconds: j.attained_seconds,
        iterations_done: j.iterations_done,
        iterations_total: j.iterations_total,
        iteration_time: j.iteration_time,
        expected_duration: j.expected_duration,
        memory_per_gpu: j.memory_per_gpu,
        share_requested: j.share_requested,
        priority: j.priority,
        preemptions: j.preemptions,
    }
}

fn event(e: &host::Event) -> sdk::Event {
    match e {
        host::Event::JobArrived(j) => sdk::Event::JobArrived(job_info(j.clone())),
        host::Event::JobFinished(id) => sdk::Event::JobFinished(*id),
        host::Event::JobFailed((id, why)) => sdk::Event::JobFailed((*id, why.clone())),
        host::Event::Tick => sdk::Event::Tick,
        host::Event::JobPreempted(id) => sdk::Event::JobPreempted(*id),
        host::Event::GpuChanged(g) => sdk::Event::GpuChanged(*g),
        host::Event::ActionRejected(r) => sdk::Event::ActionRejected(sdk::Rejection {
            index: r.index,
            job: r.job,
            reason: r.reason.clone(),
        }),
    }
}

fn action(a: sdk::Action) -> host::Action {
    let placement = |p: sdk::Placement| host::Placement {
        job: p.job,
        gpus: p.gpus,
    };
    match a {
        sdk::Action::Start(p) => host::Action::Start(placement(p)),
        sdk::Action::Preempt(id) => host::Action::Preempt(id),
        sdk::Action::Resume(p) => host::Action::Resume(placement(p)),
        sdk::Action::Migrate(p) => host::Action::Migrate(placement(p)),
        sdk::Action::Resize(p) => host::Action::Resize(placement(p)),
        sdk::Action::Share(s) => host::Action::Share(host::SharedPlacement {
            job: s.job,
            gpus: s.gpus,
            fraction: s.fraction,
        }),
        sdk::Action::SetPriority(p) => host::Action::SetPriority(p),
    }
}
