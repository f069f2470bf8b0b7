//! Synthetic jobs on devices: start, preempt (keeping or releasing device
//! memory), resume, migrate, resize, share, memory pressure and device
//! faults, each checked against the CPU reference of the kernel's
//! arithmetic (a job's state must come out bit for bit as if it had never
//! been stopped or moved).
//!
//! Every scenario runs twice: on CPU devices (always; they do the same
//! arithmetic and model memory limits and sticky faults), and on the
//! machine's NVIDIA GPUs (`#[ignore]`d: run them with
//! `cargo test --release --test devices -- --ignored`, or through
//! `scripts/gpu-check.sh`). With one physical GPU, the CUDA scenarios that
//! need two GPUs use two cluster GPUs on the same device: the job's state
//! still goes through host memory and onto a new allocation and stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsched::backend::Backend;
use wsched::backend::device::{CpuDevice, Device, Kernel, initial_word, reference_rounds};
use wsched::backend::synthetic::{SAMPLE_WORDS, SuspendMemory, SyntheticBackend, Workload};
use wsched::backend::{Ending, cuda, worker};
use wsched::cluster::{Cluster, GpuSpec, JobSpec};
use wsched::wit::{Action, GpuId, JobId, Placement, SharedPlacement};

/// Where the scenarios run.
#[derive(Clone)]
struct Kit {
    /// `n` devices for `n` cluster GPUs.
    devices: fn(u32) -> Vec<Arc<dyn Device>>,
    /// Work per iteration: small on the CPU, a few milliseconds on a GPU.
    flops: f64,
}

fn cpu_devices(n: u32) -> Vec<Arc<dyn Device>> {
    (0..n)
        .map(|i| Arc::new(CpuDevice::new(i, 64 << 20, 2)) as Arc<dyn Device>)
        .collect()
}

fn cuda_devices(n: u32) -> Vec<Arc<dyn Device>> {
    let found = cuda::discover().expect("these tests need an NVIDIA GPU");
    round_robin(found.into_iter().map(|d| d as Arc<dyn Device>).collect(), n)
}

/// Fewer physical devices than cluster GPUs: cluster GPUs share them.
fn round_robin(found: Vec<Arc<dyn Device>>, n: u32) -> Vec<Arc<dyn Device>> {
    (0..n as usize).map(|i| found[i % found.len()].clone()).collect()
}

/// The `wsched` program that runs device workers (`WSCHED_BIN` where the
/// tests run from a bundle, on a machine where cargo's path is not valid).
fn wsched_bin() -> std::path::PathBuf {
    std::env::var_os("WSCHED_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_wsched").into())
}

fn cpu_workers(n: u32) -> Vec<Arc<dyn Device>> {
    let found = worker::cpu_workers(&wsched_bin(), n, 64 << 20).expect("start CPU device workers");
    found.into_iter().map(|d| d as Arc<dyn Device>).collect()
}

fn cuda_workers(n: u32) -> Vec<Arc<dyn Device>> {
    let found = worker::discover_cuda(&wsched_bin()).expect("these tests need an NVIDIA GPU");
    round_robin(found.into_iter().map(|d| d as Arc<dyn Device>).collect(), n)
}

const CPU: Kit = Kit {
    devices: cpu_devices,
    flops: 1.0e6,
};
const CUDA: Kit = Kit {
    devices: cuda_devices,
    flops: 2.0e10,
};
const CPU_WORKERS: Kit = Kit {
    devices: cpu_workers,
    flops: 1.0e6,
};
const CUDA_WORKERS: Kit = Kit {
    devices: cuda_workers,
    flops: 2.0e10,
};

/// A cluster model and the backend that carries out its actions.
struct Rig {
    cluster: Cluster,
    backend: SyntheticBackend,
    kit: Kit,
    endings: HashMap<JobId, Ending>,
}

impl Rig {
    fn new(kit: &Kit, gpus: u32) -> Rig {
        Rig::with(kit, gpus, SuspendMemory::Keep)
    }

    fn with(kit: &Kit, gpus: u32, suspend: SuspendMemory) -> Rig {
        Rig::limited(kit, gpus, suspend, u64::MAX)
    }

    /// Jobs may hold at most `memory` on each GPU.
    fn limited(kit: &Kit, gpus: u32, suspend: SuspendMemory, memory: u64) -> Rig {
        let devices = (kit.devices)(gpus);
        let backend = SyntheticBackend::new(devices.clone())
            .with_suspend_memory(suspend)
            .with_memory_limit(memory);
        let specs = devices
            .iter()
            .map(|d| GpuSpec {
                node: 0,
                kind: d.info().name.clone(),
                memory_total: backend.memory_capacity(d.as_ref()),
            })
            .collect();
        Rig {
            cluster: Cluster::new(specs),
            backend,
            kit: kit.clone(),
            endings: HashMap::new(),
        }
    }

    fn workload(&self, iterations: u64) -> Workload {
        Workload {
            iterations: Some(iterations),
            flops_per_iteration: self.kit.flops,
            ..Workload::seconds(0.0)
        }
    }

    fn submit(&mut self, gpus: u32, workload: Workload) -> JobId {
        let spec = JobSpec {
            memory_per_gpu: workload.memory_bytes,
            iterations_total: workload.iterations,
            share_requested: (workload.share < 1.0).then_some(workload.share),
            work: None,
            ..JobSpec::new("t", gpus, 0.0)
        };
        let id = self.cluster.submit(spec).expect("submit");
        self.backend.register(id, workload);
        id
    }

    fn act(&mut self, action: Action) {
        self.cluster.apply(&action).expect("valid action");
        self.backend
            .reconcile(&self.cluster, action.job())
            .expect("carried out");
    }

    fn start(&mut self, id: JobId, gpus: &[GpuId]) {
        self.act(Action::Start(Placement {
            job: id,
            gpus: gpus.to_vec(),
        }));
    }

    /// What the runtime does each step: progress first (a job's last
    /// report lands while it is live), then the endings.
    fn collect(&mut self) {
        let ended = self.backend.ended(&self.cluster);
        for (id, iterations, time) in self.backend.progress() {
            self.cluster.report_progress(id, iterations, time);
        }
        for (id, ending) in ended {
            match &ending {
                Ok(()) => self.cluster.finish(id),
                Err(why) => self.cluster.fail(id, why.clone()),
            };
            self.endings.insert(id, ending);
        }
    }

    fn wait_iterations(&mut self, id: JobId, at_least: u64) {
        let until = Instant::now() + Duration::from_secs(60);
        while self.backend.iterations(id).unwrap_or(0) < at_least {
            assert!(
                Instant::now() < until,
                "job {id} stuck at {:?}",
                self.backend.iterations(id)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_end(&mut self, id: JobId) -> Ending {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            self.collect();
            if let Some(ending) = self.endings.get(&id) {
                return ending.clone();
            }
            assert!(Instant::now() < until, "job {id} did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The job's final state matches the CPU reference for `iterations`.
    fn assert_exact(&self, id: JobId, iterations: u64, share: f64) {
        let sample = self.backend.final_sample(id).expect("a finished job's state sample");
        assert_eq!(sample.len(), SAMPLE_WORDS);
        let device = &self.backend.devices()[0];
        let kernel = Kernel::sized(device.info().multiprocessors, share, self.kit.flops);
        for (i, &word) in sample.iter().enumerate() {
            let expected = reference_rounds(initial_word(i as u64), iterations * u64::from(kernel.rounds));
            assert_eq!(word, expected, "job {id} word {i} after {iterations} iterations");
        }
    }
}

fn runs_to_the_end_exactly(kit: &Kit) {
    let mut rig = Rig::new(kit, 1);
    let id = rig.submit(1, rig.workload(20));
    rig.start(id, &[0]);
    assert_eq!(rig.wait_end(id), Ok(()));
    rig.assert_exact(id, 20, 1.0);
    let job = rig.cluster.job(id).unwrap();
    assert_eq!(job.iterations_done, Some(20), "the model heard every iteration");
    assert!(job.iteration_time.is_some_and(|t| t > 0.0));
}

fn preempt_keeps_memory_and_resumes_in_place(kit: &Kit) {
    let mut rig = Rig::new(kit, 1);
    let id = rig.submit(1, rig.workload(30));
    rig.start(id, &[0]);
    rig.wait_iterations(id, 5);
    rig.act(Action::Preempt(id));
    // The preempt returns once the worker is parked at an iteration
    // boundary, where it runs nothing until told to go on.
    assert!(rig.backend.is_parked(id), "parked when the preempt returns");
    assert!(!rig.backend.held(id).is_empty(), "state kept on the device");
    rig.act(Action::Resume(Placement { job: id, gpus: vec![0] }));
    assert_eq!(rig.wait_end(id), Ok(()));
    rig.assert_exact(id, 30, 1.0);
}

fn release_on_suspend_goes_through_host_memory(kit: &Kit) {
    let mut rig = Rig::with(kit, 1, SuspendMemory::Release);
    let id = rig.submit(1, rig.workload(30));
    rig.start(id, &[0]);
    rig.wait_iterations(id, 5);
    rig.act(Action::Preempt(id));
    assert!(rig.backend.held(id).is_empty(), "device memory released");
    rig.act(Action::Resume(Placement { job: id, gpus: vec![0] }));
    assert_eq!(rig.wait_end(id), Ok(()));
    rig.assert_exact(id, 30, 1.0);
}

fn migrates_and_resizes_without_losing_work(kit: &Kit) {
    let mut rig = Rig::new(kit, 2);
    let id = rig.submit(1, rig.workload(40));
    rig.start(id, &[0]);
    rig.wait_iterations(id, 5);
    rig.act(Action::Migrate(Placement { job: id, gpus: vec![1] }));
    assert_eq!(rig.backend.held(id).iter().map(|h| h.0).collect::<Vec<_>>(), vec![1]);
    rig.wait_iterations(id, 15);
    rig.act(Action::Resize(Placement {
        job: id,
        gpus: vec![0, 1],
    }));
    assert_eq!(rig.backend.held(id).iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(rig.wait_end(id), Ok(()));
    rig.assert_exact(id, 40, 1.0);
    assert_eq!(rig.cluster.job(id).unwrap().migrations, 1);
}

fn shared_jobs_run_side_by_side(kit: &Kit) {
    let mut rig = Rig::new(kit, 1);
    let small = Workload {
        share: 0.4,
        ..rig.workload(40)
    };
    let a = rig.submit(1, small.clone());
    let b = rig.submit(1, small);
    for id in [a, b] {
        rig.act(Action::Share(SharedPlacement {
            job: id,
            gpus: vec![0],
            fraction: 0.5,
        }));
    }
    rig.wait_iterations(a, 3);
    rig.wait_iterations(b, 3);
    assert_eq!(rig.wait_end(a), Ok(()));
    assert_eq!(rig.wait_end(b), Ok(()));
    rig.assert_exact(a, 40, 0.4);
    rig.assert_exact(b, 40, 0.4);
}

fn memory_pressure_releases_parked_jobs(kit: &Kit) {
    // Jobs may hold 4 GiB on the GPU, and each takes 60% of that: both
    // cannot keep their memory at once.
    let mut rig = Rig::limited(kit, 1, SuspendMemory::Keep, 4 << 30);
    let memory = rig.cluster.gpus()[0].spec.memory_total / 10 * 6;
    let big = Workload {
        memory_bytes: memory,
        ..rig.workload(20)
    };
    let first = rig.submit(1, big.clone());
    let second = rig.submit(1, big);
    rig.start(first, &[0]);
    rig.wait_iterations(first, 3);
    rig.act(Action::Preempt(first));
    assert!(!rig.backend.held(first).is_empty(), "kept while nobody needs it");
    rig.start(second, &[0]);
    assert!(rig.backend.held(first).is_empty(), "released for the second job");
    assert_eq!(rig.wait_end(second), Ok(()));
    rig.act(Action::Resume(Placement {
        job: first,
        gpus: vec![0],
    }));
    assert_eq!(rig.wait_end(first), Ok(()));
    rig.assert_exact(first, 20, 1.0);
    rig.assert_exact(second, 20, 1.0);
}

fn a_device_fault_fails_its_jobs_and_the_gpu_comes_back(kit: &Kit) {
    // A fault takes a device's whole context down; a job on another device
    // must not notice. With one physical GPU there is no other device.
    let probe = (kit.devices)(2);
    let separate = !Arc::ptr_eq(&probe[0], &probe[1]) && probe[0].info().uuid != probe[1].info().uuid;
    drop(probe);
    let mut rig = Rig::new(kit, if separate { 2 } else { 1 });
    let faulty = Workload {
        fault_at_iteration: Some(4),
        ..rig.workload(1_000_000)
    };
    let neighbour = rig.submit(1, rig.workload(1_000_000));
    rig.act(Action::Share(SharedPlacement {
        job: neighbour,
        gpus: vec![0],
        fraction: 0.5,
    }));
    let elsewhere = separate.then(|| {
        let id = rig.submit(1, rig.workload(30));
        rig.start(id, &[1]);
        id
    });
    rig.wait_iterations(neighbour, 2);
    let id = rig.submit(1, faulty);
    rig.act(Action::Share(SharedPlacement {
        job: id,
        gpus: vec![0],
        fraction: 0.5,
    }));
    let Err(why) = rig.wait_end(id) else {
        panic!("the faulting job must fail")
    };
    // Its neighbour on the same GPU lost its state with the context.
    let Err(lost) = rig.wait_end(neighbour) else {
        panic!("a job on the faulted GPU cannot go on")
    };
    // A fault is sticky to the whole context, so whichever job touches the
    // device first after it reports the device error (as on a real GPU),
    // perhaps both; one that did not is told it lost its state. Both name
    // the GPU, and the error is reported.
    assert!(why.contains("GPU 0") && lost.contains("GPU 0"), "{why} / {lost}");
    let reported = [&why, &lost]
        .into_iter()
        .filter(|m| m.starts_with("GPU 0 (") && (m.contains("illegal") || m.contains("ILLEGAL")))
        .count();
    assert!(reported >= 1, "no job reports the device error: {why} / {lost}");
    // The GPU was checked, reset and returned to the pool: a new job runs there.
    assert!(rig.backend.take_broken().is_empty(), "the GPU came back");
    let after = rig.submit(1, rig.workload(10));
    rig.start(after, &[0]);
    assert_eq!(rig.wait_end(after), Ok(()));
    rig.assert_exact(after, 10, 1.0);
    // A job on another GPU was never touched.
    if let Some(elsewhere) = elsewhere {
        assert_eq!(rig.wait_end(elsewhere), Ok(()));
        rig.assert_exact(elsewhere, 30, 1.0);
    }
}

fn the_gpu_measures_itself(kit: &Kit) {
    let mut rig = Rig::new(kit, 1);
    let id = rig.submit(
        1,
        Workload {
            memory_bytes: 64 << 20,
            ..rig.workload(1_000_000)
        },
    );
    rig.start(id, &[0]);
    rig.wait_iterations(id, 2);
    let device = rig.backend.devices()[0].clone();
    device.measure().expect("a measurement"); // the start of a sample period
    // A period of whole iterations, however long they take here.
    let from = rig.backend.iterations(id).unwrap_or(0);
    rig.wait_iterations(id, from + 5);
    let busy = device.measure().expect("a measurement");
    assert!(busy.utilisation > 0.2 && busy.utilisation <= 1.0, "{busy:?}");
    assert!(busy.memory_used >= 48 << 20, "the job's memory is counted: {busy:?}");
    // The backend passes samples on to the model (at most once a second).
    let samples = rig.backend.measure();
    assert_eq!(samples.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0]);
    assert!(rig.backend.measure().is_empty(), "not sampled again within the second");
    rig.cluster.fail(id, "cancelled");
    rig.backend.reconcile(&rig.cluster, id).unwrap();
}

fn cancelling_stops_the_work(kit: &Kit) {
    let mut rig = Rig::new(kit, 1);
    let id = rig.submit(1, rig.workload(1_000_000));
    rig.start(id, &[0]);
    rig.wait_iterations(id, 2);
    rig.cluster.fail(id, "cancelled");
    rig.backend.reconcile(&rig.cluster, id).unwrap();
    assert!(!rig.backend.has_work(), "the worker is gone");
    rig.collect();
    assert!(!rig.endings.contains_key(&id), "a cancelled job is not reported again");
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod on_cpu {
            $(#[test] fn $name() { super::$name(&super::CPU); })*
        }
        mod on_cpu_workers {
            $(#[test] fn $name() { super::$name(&super::CPU_WORKERS); })*
        }
        mod on_cuda {
            $(#[test] #[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh"] fn $name() { super::$name(&super::CUDA); })*
        }
        mod on_cuda_workers {
            $(#[test] #[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh"] fn $name() { super::$name(&super::CUDA_WORKERS); })*
        }
    };
}

scenarios!(
    runs_to_the_end_exactly,
    preempt_keeps_memory_and_resumes_in_place,
    release_on_suspend_goes_through_host_memory,
    migrates_and_resizes_without_losing_work,
    shared_jobs_run_side_by_side,
    memory_pressure_releases_parked_jobs,
    the_gpu_measures_itself,
    cancelling_stops_the_work,
);

// A sticky device fault can only be cleared by a new process, so on a GPU
// this runs with worker processes (as the service does).
mod faults {
    #[test]
    fn on_cpu() {
        super::a_device_fault_fails_its_jobs_and_the_gpu_comes_back(&super::CPU);
    }

    #[test]
    fn on_cpu_workers() {
        super::a_device_fault_fails_its_jobs_and_the_gpu_comes_back(&super::CPU_WORKERS);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh"]
    fn on_cuda_workers() {
        super::a_device_fault_fails_its_jobs_and_the_gpu_comes_back(&super::CUDA_WORKERS);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh"]
    fn in_process_cuda_cannot_recover_and_says_so() {
        let devices = super::cuda_devices(1);
        let err = devices[0].reset().unwrap_err();
        assert!(err.message.contains("worker process"), "{}", err.message);
    }
}

#[test]
fn without_a_driver_discovery_says_so() {
    if !cuda::driver_present() {
        let err = cuda::discover().unwrap_err().to_string();
        assert!(err.contains("no NVIDIA driver"), "{err}");
    }
}
