//! How replay cost grows with the cluster and the queue: host cost per
//! event and whole-replay CPU time for 64 to 8,192 GPUs and queues up to
//! the whole trace deep, against two floors measured in the same run: a
//! bare strict-FIFO event loop in Rust (no policy engine, no model) and
//! `benches/ref_fifo.py`, an independent strict-FIFO replay in Python
//! (also the correctness reference: its mean JCT must equal the built-in
//! FIFO's).
//!
//! Run with `cargo bench -p wsched --bench scale` after
//! `scripts/build-plugins.sh`. `WSCHED_SCALE=quick` skips the 50x trace;
//! `WSCHED_BIN` and `WSCHED_PLUGIN_DIR` point it at another build (to
//! record before-and-after figures).
//!
//! Traces are the bundled Philly trace tiled: copy `i` of `k` is shifted
//! by `i` minutes, so a 5x tile is five times the load (80k jobs; at 64
//! GPUs the queue grows to tens of thousands) and a 50x tile 800k jobs.
//! Each replay runs the real CLI (`wsched sim`) in its own process, so
//! CPU time and peak memory are the process's own (from `wait4`); the
//! policy's share comes from the replay's `timing.json`.
//!
//! Host cost per event = (replay wall time - time inside policy calls) /
//! (2 x jobs): every job is one arrival and one completion.

use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One child process's resource use.
struct Usage {
    cpu_seconds: f64,
    max_rss_bytes: u64,
}

/// Run `cmd`, returning its stdout and its resource use.
fn measured(cmd: &mut Command) -> anyhow::Result<(String, Usage)> {
    let child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    anyhow::ensure!(rc == pid, "wait4 failed");
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    let out = reader.join().map_err(|_| anyhow::anyhow!("reader"))??;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        out,
        Usage {
            cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
            max_rss_bytes: usage.ru_maxrss as u64 * 1024,
        },
    ))
}

/// The bundled trace tiled `k` times, copy `i` shifted by `i` minutes, in
/// the bundled trace's own format (so both replays read the same file).
fn tile(bundled: &Path, k: usize, out: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(bundled)?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let rows: Vec<(i64, &str)> = lines
        .filter_map(|l| {
            let (stamp, rest) = l.split_once(',')?;
            Some((wsched::trace::parse_time(stamp).ok()? as i64, rest))
        })
        .collect();
    let mut csv = String::with_capacity(text.len() * k + 64);
    csv.push_str(header);
    csv.push('\n');
    for i in 0..k as i64 {
        for (t, rest) in &rows {
            csv.push_str(&wsched::trace::format_time(t + 60 * i));
            csv.push(',');
            csv.push_str(rest);
            csv.push('\n');
        }
    }
    std::fs::write(out, csv)?;
    Ok(rows.len() * k)
}

/// A bare strict-FIFO replay: a queue, a heap of finish times, a counter
/// of free GPUs. What an event loop costs with no policy engine and no
/// model. Returns the mean JCT.
fn bare_fifo(jobs: &[(f64, u32, f64)], gpus: u32) -> f64 {
    #[derive(PartialEq)]
    struct Ends(f64, u32);
    impl Eq for Ends {}
    impl PartialOrd for Ends {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Ends {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            o.0.total_cmp(&self.0)
        }
    }
    let mut running: BinaryHeap<Ends> = BinaryHeap::new();
    let mut queue = std::collections::VecDeque::new();
    let (mut free, mut next, mut total_jct, mut done) = (gpus, 0, 0.0, 0usize);
    while next < jobs.len() || !running.is_empty() || !queue.is_empty() {
        let arrival = jobs.get(next).map_or(f64::INFINITY, |j| j.0);
        let end = running.peek().map_or(f64::INFINITY, |e| e.0);
        let now = arrival.min(end);
        while running.peek().is_some_and(|e| e.0 == now) {
            if let Some(e) = running.pop() {
                free += e.1;
            }
        }
        while jobs.get(next).is_some_and(|j| j.0 == now) {
            if jobs[next].1 <= gpus {
                queue.push_back(next);
            }
            next += 1;
        }
        while let Some(&i) = queue.front() {
            let (submit, need, duration) = jobs[i];
            if need > free {
                break;
            }
            queue.pop_front();
            free -= need;
            running.push(Ends(now + duration, need));
            total_jct += now + duration - submit;
            done += 1;
        }
    }
    total_jct / done.max(1) as f64
}

/// The deepest the queue got in a replay, from its jobs.csv.
fn max_queue(jobs_csv: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(jobs_csv)?;
    let mut events: Vec<(f64, i32)> = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(submit), Some(start)) = (f.get(4), f.get(6)) else {
            continue;
        };
        let submit: f64 = submit.parse().unwrap_or(0.0);
        events.push((submit, 1));
        if let Ok(start) = start.parse::<f64>() {
            events.push((start, -1));
        }
    }
    // Starts before arrivals at one instant: a job that starts at once never queued.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut depth, mut most) = (0i64, 0i64);
    for (_, d) in events {
        depth += i64::from(d);
        most = most.max(depth);
    }
    Ok(most as usize)
}

fn json(path: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // WSCHED_BIN compares another build (an older commit's) in the same run.
    let wsched = std::env::var_os("WSCHED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wsched")));
    let plugins = std::env::var_os("WSCHED_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/plugins"));
    let work = root.join("target/scale");
    std::fs::create_dir_all(&work)?;
    let quick = std::env::var("WSCHED_SCALE").is_ok_and(|v| v == "quick");
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());

    let bundled = root.join("examples/traces/philly-11cb48.csv");
    let mut tiles = vec![1usize, 5];
    if !quick {
        tiles.push(50);
    }
    // Every shipped policy on the bundled trace; the three that matter for
    // scale (the fallback, the simplest plugin, the paper policy the
    // targets name) on the tiled ones.
    let all = ["builtin-fifo", "fifo", "tiresias", "sjf", "las", "gavel", "gandiva"];
    let core = ["builtin-fifo", "fifo", "tiresias"];
    println!(
        "Replays of the bundled Philly trace tiled k times (copy i shifted by i minutes); CPU and memory per process"
    );
    println!(
        "{:>4} {:>7} {:>6} | {:>12} | {:>9} {:>9} {:>9} {:>8} | {:>8} {:>8} | {:>9} {:>9}",
        "k",
        "jobs",
        "GPUs",
        "policy",
        "replay s",
        "CPU s",
        "host/evt",
        "B/job",
        "bare s",
        "py CPU",
        "CPU/py",
        "max queue"
    );
    println!("{}", "-".repeat(126));
    for &k in &tiles {
        let trace_path = work.join(format!("philly-x{k}.csv"));
        let jobs = tile(&bundled, k, &trace_path)?;
        let parsed = wsched::trace::read(&trace_path)?;
        let mut order: Vec<(f64, u32, f64)> = parsed.iter().map(|j| (j.submit, j.gpus, j.duration)).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let origin = order.first().map_or(0.0, |j| j.0);
        for j in &mut order {
            j.0 -= origin;
        }
        let sizes: &[u32] = if k >= 50 { &[8192] } else { &[64, 1024, 8192] };
        for &gpus in sizes {
            let started = Instant::now();
            let bare_jct = bare_fifo(&order, gpus);
            let bare = started.elapsed().as_secs_f64();
            let (py_cpu, py_jct) = if python {
                let (out, usage) = measured(
                    Command::new("python3")
                        .arg(root.join("benches/ref_fifo.py"))
                        .arg(&trace_path)
                        .arg(gpus.to_string()),
                )?;
                let v: serde_json::Value = serde_json::from_str(&out)?;
                (Some(usage.cpu_seconds), v["mean_jct_s"].as_f64())
            } else {
                (None, None)
            };
            let policies: &[&str] = match k {
                1 if gpus <= 1024 => &all,
                _ if k >= 50 => &["builtin-fifo", "tiresias"],
                _ => &core,
            };
            for &policy in policies {
                let spec = if policy == "builtin-fifo" {
                    policy.to_string()
                } else {
                    plugins.join(format!("{policy}.wasm")).display().to_string()
                };
                let out = work.join(format!("x{k}-{gpus}-{policy}"));
                let (_, usage) = measured(
                    Command::new(&wsched)
                        .args(["sim", "-q", "--gpus", &gpus.to_string(), "--policy", &spec, "--trace"])
                        .arg(&trace_path)
                        .arg("--out")
                        .arg(&out),
                )?;
                let timing = json(&out.join("timing.json"))?;
                let summary = json(&out.join("summary.json"))?;
                let wall = timing["wall_seconds"].as_f64().unwrap_or(0.0);
                let in_policy =
                    timing["calls"].as_f64().unwrap_or(0.0) * timing["call_mean_us"].as_f64().unwrap_or(0.0) / 1e6;
                let per_event_us = (wall - in_policy).max(0.0) / (2.0 * jobs as f64) * 1e6;
                let jct = summary["jct"]["mean"].as_f64();
                if policy == "builtin-fifo" {
                    let matches = |x: Option<f64>| {
                        x.is_none_or(|x| jct.is_some_and(|j| (j - x).abs() <= 1e-6 * x.abs().max(1.0)))
                    };
                    anyhow::ensure!(
                        matches(py_jct) && matches(Some(bare_jct)),
                        "x{k} at {gpus} GPUs: built-in FIFO mean JCT {jct:?} differs from ref_fifo.py {py_jct:?} or the bare loop {bare_jct}"
                    );
                }
                let queue = max_queue(&out.join("jobs.csv"))?;
                println!(
                    "{k:>4} {jobs:>7} {gpus:>6} | {policy:>12} | {wall:>9.2} {:>9.2} {per_event_us:>6.2} µs {:>8} | {bare:>8.3} {} | {} {queue:>9}",
                    usage.cpu_seconds,
                    usage.max_rss_bytes / jobs as u64,
                    py_cpu.map_or("       -".to_string(), |c| format!("{c:>8.2}")),
                    py_cpu.map_or("        -".to_string(), |c| format!("{:>8.2}x", usage.cpu_seconds / c)),
                );
            }
        }
    }
    println!();
    println!(
        "replay s: the replay's own wall time (timing.json); CPU s: the whole process (start-up, trace parsing, plugin load"
    );
    println!(
        "from the compile cache, reports). host/evt: replay time outside policy calls per arrival or completion. B/job:"
    );
    println!(
        "peak RSS over jobs. bare s: a strict-FIFO heap loop in Rust, no engine. py CPU: benches/ref_fifo.py, whole process."
    );
    println!("The built-in FIFO's mean JCT is checked against both floors on every row.");
    Ok(())
}
