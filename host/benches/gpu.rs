//! What the CUDA backend's mechanisms cost on a real GPU: time-slicing,
//! packing, suspend and resume, migration, and the host's own work per
//! decision. Prints a table with the targets beside the figures.
//!
//! `cargo bench -p wsched --bench gpu` (or `scripts/gpu-check.sh`).
//! `WSCHED_GPU_BENCH_DEVICE=cpu` runs the same program on CPU devices, to
//! check the harness on a machine with no GPU (the figures then mean
//! nothing). `WSCHED_GPU_BENCH_SECONDS` sets each throughput window
//! (default 2). Devices run in worker processes, as in the service;
//! `WSCHED_GPU_BENCH_IN_PROCESS=1` opens them in the bench's own process.
//!
//! Suspend and resume figures are medians of five rounds; "first" is the
//! first round, which also pins the host buffer that later rounds reuse.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wsched::backend::Backend;
use wsched::backend::device::{CpuDevice, Device, Kernel};
use wsched::backend::synthetic::{SuspendMemory, SyntheticBackend, Workload};
use wsched::backend::{cuda, worker};
use wsched::cluster::{Cluster, GpuSpec, JobSpec};
use wsched::wit::{Action, GpuId, JobId, Placement, SharedPlacement};

/// A cluster model and the backend that carries out actions on it.
struct Bench {
    cluster: Cluster,
    backend: SyntheticBackend,
}

impl Bench {
    /// Two cluster GPUs over `devices` (round-robin: one physical GPU
    /// serves both, so migrations still copy through host memory).
    fn new(devices: &[Arc<dyn Device>], suspend: SuspendMemory) -> Bench {
        let devices: Vec<Arc<dyn Device>> = (0..2).map(|i| devices[i % devices.len()].clone()).collect();
        let specs = devices
            .iter()
            .map(|d| GpuSpec {
                node: 0,
                kind: d.info().name.clone(),
                memory_total: d.info().memory_total,
            })
            .collect();
        Bench {
            cluster: Cluster::new(specs),
            backend: SyntheticBackend::new(devices).with_suspend_memory(suspend),
        }
    }

    fn submit(&mut self, workload: Workload) -> JobId {
        let spec = JobSpec {
            memory_per_gpu: workload.memory_bytes,
            share_requested: (workload.share < 1.0).then_some(workload.share),
            work: None,
            ..JobSpec::new("bench", 1, 0.0)
        };
        let id = self.cluster.submit(spec).expect("submit");
        self.backend.register(id, workload);
        id
    }

    /// Apply and carry out an action; the time the backend took.
    fn act(&mut self, action: Action) -> Duration {
        self.cluster.apply(&action).expect("valid action");
        let started = Instant::now();
        self.backend
            .reconcile(&self.cluster, action.job())
            .expect("carried out");
        started.elapsed()
    }

    fn start(&mut self, id: JobId, gpu: GpuId) -> Duration {
        self.act(Action::Start(Placement {
            job: id,
            gpus: vec![gpu],
        }))
    }

    fn share(&mut self, id: JobId, gpu: GpuId) -> Duration {
        self.act(Action::Share(SharedPlacement {
            job: id,
            gpus: vec![gpu],
            fraction: 0.5,
        }))
    }

    fn preempt(&mut self, id: JobId) -> Duration {
        self.act(Action::Preempt(id))
    }

    fn resume(&mut self, id: JobId, gpu: GpuId) -> Duration {
        self.act(Action::Resume(Placement {
            job: id,
            gpus: vec![gpu],
        }))
    }

    fn iterations(&self, id: JobId) -> u64 {
        self.backend.iterations(id).unwrap_or(0)
    }

    fn cancel(&mut self, id: JobId) {
        self.cluster.fail(id, "done measuring");
        self.backend.reconcile(&self.cluster, id).expect("stop");
    }
}

fn wait_for(bench: &Bench, id: JobId, iterations: u64) {
    let until = Instant::now() + Duration::from_secs(60);
    while bench.iterations(id) < iterations {
        assert!(Instant::now() < until, "job {id} makes no progress");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Iterations per second of `ids` together over `window`, after warm-up.
fn rate(bench: &Bench, ids: &[JobId], window: Duration) -> f64 {
    for &id in ids {
        wait_for(bench, id, bench.iterations(id) + 3);
    }
    let before: u64 = ids.iter().map(|&id| bench.iterations(id)).sum();
    let started = Instant::now();
    std::thread::sleep(window);
    let after: u64 = ids.iter().map(|&id| bench.iterations(id)).sum();
    (after - before) as f64 / started.elapsed().as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Row {
    what: String,
    value: String,
    target: String,
}

fn row(what: impl Into<String>, value: impl Into<String>, target: impl Into<String>) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target: target.into(),
    }
}

fn main() {
    let on_cpu = std::env::var("WSCHED_GPU_BENCH_DEVICE").is_ok_and(|v| v == "cpu");
    let window = Duration::from_secs_f64(
        std::env::var("WSCHED_GPU_BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0),
    );
    // Devices in worker processes, as the service runs them
    // (`WSCHED_BIN` names the wsched program where cargo's path is stale).
    let program: std::path::PathBuf = std::env::var_os("WSCHED_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_wsched").into());
    let in_process = std::env::var("WSCHED_GPU_BENCH_IN_PROCESS").is_ok_and(|v| v == "1");
    let found: anyhow::Result<Vec<Arc<dyn Device>>> = match (on_cpu, in_process) {
        (true, true) => Ok((0..2)
            .map(|i| Arc::new(CpuDevice::new(i, 4 << 30, 2)) as Arc<dyn Device>)
            .collect()),
        (true, false) => worker::cpu_workers(&program, 2, 4 << 30).map(|d| d.into_iter().map(|d| d as _).collect()),
        (false, true) => cuda::discover().map(|d| d.into_iter().map(|d| d as _).collect()),
        (false, false) => worker::discover_cuda(&program).map(|d| d.into_iter().map(|d| d as _).collect()),
    };
    let devices = match found {
        Ok(devices) => devices,
        Err(e) => {
            eprintln!("gpu bench: {e:#}");
            std::process::exit(2);
        }
    };
    let flops = if on_cpu { 2e7 } else { 2e11 };
    println!(
        "devices {}",
        if in_process {
            "in this process"
        } else {
            "in worker processes (as the service runs them)"
        }
    );
    let info = devices[0].info().clone();
    let full = Kernel::sized(info.multiprocessors, 1.0, flops);
    println!(
        "device: {} ({}, compute capability {}.{}, {} multiprocessors, {:.1} GiB); {} physical device(s)",
        info.name,
        info.uuid,
        info.compute_capability.0,
        info.compute_capability.1,
        info.multiprocessors,
        info.memory_total as f64 / (1u64 << 30) as f64,
        devices.len()
    );
    println!(
        "synthetic iteration: {:.0} GFLOP fp32 in {} blocks x {} rounds; window {:.1} s per throughput figure",
        full.flops() / 1e9,
        full.blocks,
        full.rounds,
        window.as_secs_f64()
    );
    let job = |share: f64, memory: u64, flops: f64| Workload {
        iterations: None,
        seconds: f64::INFINITY,
        flops_per_iteration: flops,
        share,
        memory_bytes: memory,
        fault_at_iteration: None,
        done_before: 0,
    };
    let mut rows = Vec::new();

    // 1. Exclusive vs time-sliced between two jobs.
    let mut bench = Bench::new(&devices, SuspendMemory::Keep);
    let a = bench.submit(job(1.0, 0, flops));
    bench.start(a, 0);
    let exclusive = rate(&bench, &[a], window);
    let b = bench.submit(job(1.0, 0, flops));
    let quantum = Duration::from_millis(200);
    bench.start(b, 1);
    bench.preempt(b);
    let (mut running, mut parked) = (a, b);
    let before = bench.iterations(a) + bench.iterations(b);
    let started = Instant::now();
    let mut switches = Vec::new();
    while started.elapsed() < window {
        std::thread::sleep(quantum);
        let t = Instant::now();
        bench.preempt(running);
        bench.resume(parked, 0);
        switches.push(ms(t.elapsed()));
        std::mem::swap(&mut running, &mut parked);
    }
    let sliced = (bench.iterations(a) + bench.iterations(b) - before) as f64 / started.elapsed().as_secs_f64();
    bench.cancel(a);
    bench.cancel(b);
    let iteration_ms = 1e3 / exclusive;
    rows.push(row(
        "exclusive: one job on the whole GPU",
        format!("{exclusive:.1} it/s ({iteration_ms:.2} ms/it)"),
        "",
    ));
    rows.push(row(
        format!("time-sliced: two jobs, {} ms quantum, memory kept", quantum.as_millis()),
        format!(
            "{sliced:.1} it/s, loss {:.2}% (switch {:.2} ms median)",
            (1.0 - sliced / exclusive) * 100.0,
            median(switches)
        ),
        "loss < 3%",
    ));

    // 2. Two small jobs packed on one GPU vs one after the other.
    let small = 0.4;
    let mut bench = Bench::new(&devices, SuspendMemory::Keep);
    let a = bench.submit(job(small, 0, flops * small));
    bench.share(a, 0);
    let alone = rate(&bench, &[a], window);
    let b = bench.submit(job(small, 0, flops * small));
    bench.share(b, 0);
    let packed = rate(&bench, &[a, b], window);
    bench.cancel(a);
    bench.cancel(b);
    rows.push(row(
        format!("small jobs ({:.0}% of the SMs) one after the other", small * 100.0),
        format!("{alone:.1} it/s"),
        "",
    ));
    rows.push(row(
        "two small jobs packed on one GPU (two streams)",
        format!("{packed:.1} it/s, {:.2}x", packed / alone),
        ">= 1.3x",
    ));

    // 3. Suspend and resume a job holding 1 GiB, three ways.
    let gib = 1u64 << 30;
    let light = flops / 10.0; // short iterations: the boundary wait stays small
    for (label, suspend, target_gpu) in [
        ("memory kept, resumed in place", SuspendMemory::Keep, 0),
        ("memory released to host, resumed in place", SuspendMemory::Release, 0),
        (
            "memory kept, resumed on the other GPU (migration)",
            SuspendMemory::Keep,
            1,
        ),
    ] {
        let mut bench = Bench::new(&devices, suspend);
        let id = bench.submit(job(1.0, gib, light));
        let start = bench.start(id, 0);
        let (mut downs, mut ups) = (Vec::new(), Vec::new());
        let mut gpu = 0;
        for _ in 0..5 {
            wait_for(&bench, id, bench.iterations(id) + 2);
            downs.push(ms(bench.preempt(id)));
            gpu = if target_gpu == 0 { 0 } else { 1 - gpu };
            ups.push(ms(bench.resume(id, gpu)));
        }
        bench.cancel(id);
        let first = downs[0] + ups[0];
        let (down, up) = (median(downs), median(ups));
        rows.push(row(
            format!("suspend -> resume, 1 GiB, {label}"),
            format!(
                "{:.2} ms (suspend {down:.2} + resume {up:.2}; first {first:.1}; start {:.1})",
                down + up,
                ms(start)
            ),
            "< 50 ms",
        ));
    }

    // 4. The host's own work per decision: a start (thread, allocation,
    // first launch acknowledged), a preempt and an in-place resume of a
    // job with a small state and tiny iterations.
    let mut bench = Bench::new(&devices, SuspendMemory::Keep);
    let (mut starts, mut downs, mut ups) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..20 {
        let id = bench.submit(job(1.0, 0, 1e6));
        starts.push(ms(bench.start(id, 0)));
        wait_for(&bench, id, 1);
        downs.push(ms(bench.preempt(id)));
        ups.push(ms(bench.resume(id, 0)));
        bench.cancel(id);
    }
    rows.push(row(
        "host overhead per decision (median of 20)",
        format!(
            "start {:.3} ms, preempt {:.3} ms, resume {:.3} ms",
            median(starts),
            median(downs),
            median(ups)
        ),
        "",
    ));

    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    println!();
    println!("| {:width$} | {:value_width$} | target |", "measurement", "result");
    println!("|{}|{}|--------|", "-".repeat(width + 2), "-".repeat(value_width + 2));
    for r in rows {
        println!("| {:width$} | {:value_width$} | {} |", r.what, r.value, r.target);
    }
}
