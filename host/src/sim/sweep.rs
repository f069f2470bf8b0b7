//! Sweeps: one trace replayed under several policies, cluster sizes and
//! loads, the runs spread over every core, and the results drawn as the
//! papers draw them (mean and p99 JCT against cluster size or load, one
//! line per policy).
//!
//! Why here and not in a script: a sweep is the everyday experiment of a
//! scheduling paper, and each replay is independent and deterministic, so
//! running them side by side on all cores gives the same numbers as one
//! after another, only sooner.

use super::metrics::SimResult;
use super::report::{COLORS, H, PAD_B, PAD_L, PAD_R, PAD_T, W, labels, panel, polyline, write_aligned, write_outputs};
use crate::trace::TraceJob;
use anyhow::Context;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` over `items` on up to `workers` threads; results in `items`' order.
pub fn parallel_map<I: Sync, O: Send>(items: &[I], workers: usize, f: impl Fn(&I) -> O + Sync) -> Vec<O> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<O>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let out = f(item);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                }
            });
        }
    });
    slots
        .into_iter()
        .filter_map(|slot| slot.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// The worker threads a sweep uses: one per core.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Lowest and highest load scale accepted.
pub const LOAD_SCALE_RANGE: (f64, f64) = (1e-3, 1e3);

/// `trace` with its inter-arrival times divided by `scale` (2 = twice the
/// load: the same jobs arriving twice as fast), measured from the first
/// submission. Durations and sizes are unchanged.
pub fn scale_load(trace: &[TraceJob], scale: f64) -> anyhow::Result<Vec<TraceJob>> {
    let (low, high) = LOAD_SCALE_RANGE;
    anyhow::ensure!(
        scale.is_finite() && (low..=high).contains(&scale),
        "--load-scale must be a number from {low} to {high}, got {scale}"
    );
    let origin = trace.iter().map(|j| j.submit).fold(f64::INFINITY, f64::min);
    Ok(trace
        .iter()
        .map(|j| TraceJob {
            submit: if scale == 1.0 {
                j.submit
            } else {
                origin + (j.submit - origin) / scale
            },
            ..j.clone()
        })
        .collect())
}

/// One replay of a sweep.
#[derive(Debug)]
pub struct SweepRun {
    /// Cluster size.
    pub gpus: u32,
    /// Load scale (1 = the trace as it is).
    pub load: f64,
    /// What it gave.
    pub result: SimResult,
}

/// Every run of a sweep, one row each.
pub struct SweepTable<'a>(pub &'a [SweepRun]);

impl std::fmt::Display for SweepTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let results: Vec<&SimResult> = self.0.iter().map(|r| &r.result).collect();
        let names = policy_names(&results);
        let mut rows = vec![vec![
            "policy".to_string(),
            "GPUs".into(),
            "load".into(),
            "completed".into(),
            "JCT mean (s)".into(),
            "JCT p99 (s)".into(),
            "queueing mean (s)".into(),
            "utilisation".into(),
            "makespan (s)".into(),
            "call p50 (µs)".into(),
        ]];
        for (run, name) in self.0.iter().zip(&names) {
            let s = &run.result.summary;
            rows.push(vec![
                name.clone(),
                run.gpus.to_string(),
                format!("{}x", run.load),
                s.completed.to_string(),
                format!("{:.1}", s.jct.mean),
                format!("{:.1}", s.jct.p99),
                format!("{:.1}", s.queueing_delay.mean),
                format!("{:.1} %", s.utilisation * 100.0),
                format!("{:.0}", s.makespan),
                format!("{:.1}", run.result.timing.call_p50_us),
            ]);
        }
        write_aligned(f, &rows)
    }
}

/// The policy of each run: its name, numbered when two different
/// policies (not the same one at other sizes) share it.
fn policy_names(results: &[&SimResult]) -> Vec<String> {
    // Runs come policy-major, so the first run of each policy is where
    // its sizes and loads start; number duplicates among those.
    let mut firsts: Vec<&SimResult> = Vec::new();
    let mut index = Vec::new();
    let mut last: Option<String> = None;
    for r in results {
        if last.as_deref() != Some(r.summary.policy.as_str()) || index.is_empty() {
            firsts.push(r);
        }
        index.push(firsts.len() - 1);
        last = Some(r.summary.policy.clone());
    }
    let names = labels(&firsts);
    index.into_iter().map(|i| names[i].clone()).collect()
}

/// Write each run's outputs into `dir/POLICY-gGPUS-xLOAD/`, plus
/// `sweep.csv` (one row per run) and `sweep.svg` (mean and p99 JCT against
/// cluster size, or against load when the size is fixed).
pub fn write_sweep(dir: &Path, runs: &[SweepRun]) -> anyhow::Result<()> {
    let results: Vec<&SimResult> = runs.iter().map(|r| &r.result).collect();
    let names = policy_names(&results);
    let mut csv = String::from(
        "policy,gpus,load_scale,jobs,completed,jct_mean,jct_median,jct_p95,jct_p99,queueing_mean,utilisation,makespan,preemptions,migrations,jain_index,call_p50_us\n",
    );
    for (run, name) in runs.iter().zip(&names) {
        write_outputs(&dir.join(format!("{name}-g{}-x{}", run.gpus, run.load)), &run.result)?;
        let s = &run.result.summary;
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            name.replace(',', " "),
            run.gpus,
            run.load,
            s.jobs,
            s.completed,
            s.jct.mean,
            s.jct.median,
            s.jct.p95,
            s.jct.p99,
            s.queueing_delay.mean,
            s.utilisation,
            s.makespan,
            s.preemptions,
            s.migrations,
            s.fairness.jain_index,
            run.result.timing.call_p50_us
        );
    }
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("sweep.csv", &csv)?;
    write("sweep.svg", &sweep_svg(runs, &names))
}

/// Two panels, mean and p99 JCT (log scale), against cluster size (log 2
/// scale) or, when every run has the same size, against load: one line per
/// policy (and per load or size held fixed when both vary).
fn sweep_svg(runs: &[SweepRun], names: &[String]) -> String {
    let by_size = runs.iter().any(|r| r.gpus != runs[0].gpus);
    let x_of = |r: &SweepRun| {
        if by_size {
            f64::from(r.gpus).log2()
        } else {
            r.load.log2()
        }
    };
    let xs: Vec<f64> = runs.iter().map(x_of).collect();
    let (x_lo, x_hi) = span(&xs);
    let mut series: Vec<(String, Vec<&SweepRun>)> = Vec::new();
    for (run, name) in runs.iter().zip(names) {
        let label = if by_size && runs.iter().any(|r| r.load != runs[0].load) {
            format!("{name} @ {}x load", run.load)
        } else if !by_size && runs.iter().any(|r| r.gpus != runs[0].gpus) {
            format!("{name} @ {} GPUs", run.gpus)
        } else {
            name.clone()
        };
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(run),
            None => series.push((label, vec![run])),
        }
    }
    let xlabel = if by_size {
        "GPUs (log scale)"
    } else {
        "load scale (log scale)"
    };
    let tick_values: Vec<f64> = {
        let mut v: Vec<f64> = xs.clone();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let fx = |x: f64| if x_hi > x_lo { (x - x_lo) / (x_hi - x_lo) } else { 0.5 };
    let xticks: Vec<(f64, String)> = tick_values
        .iter()
        .map(|&x| {
            let v = x.exp2();
            (fx(x), if by_size { format!("{v:.0}") } else { format!("{v}x") })
        })
        .collect();
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"##,
        2.0 * W,
        H + 24.0 + 16.0 * series.len() as f64
    );
    type Metric = (&'static str, fn(&SweepRun) -> f64);
    let metrics: [Metric; 2] = [
        ("mean JCT", |r| r.result.summary.jct.mean),
        ("p99 JCT", |r| r.result.summary.jct.p99),
    ];
    for (i, (title, metric)) in metrics.iter().enumerate() {
        let ys: Vec<f64> = runs.iter().map(|r| metric(r).max(1.0).log10()).collect();
        let (y_lo, y_hi) = span(&ys);
        let (y_lo, y_hi) = (y_lo.floor(), y_hi.ceil().max(y_lo.floor() + 1.0));
        let fy = |y: f64| (y - y_lo) / (y_hi - y_lo);
        let yticks: Vec<(f64, String)> = (y_lo as i32..=y_hi as i32)
            .map(|e| (fy(f64::from(e)), format!("1e{e} s")))
            .collect();
        panel(
            &mut svg,
            i as f64 * W,
            title,
            xlabel,
            "seconds (log scale)",
            &xticks,
            &yticks,
        );
        for (k, (_, points)) in series.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = points
                .iter()
                .map(|r| (fx(x_of(r)), fy(metric(r).max(1.0).log10())))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            polyline(&mut svg, &pts, COLORS[k % COLORS.len()]);
            let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
            for (x, y) in &pts {
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"##,
                    PAD_L + x * pw,
                    PAD_T + ph - y * ph,
                    COLORS[k % COLORS.len()]
                );
            }
        }
        svg.push_str("</g>");
    }
    for (k, (label, _)) in series.iter().enumerate() {
        let y = H + 8.0 + 16.0 * k as f64;
        let _ = write!(
            svg,
            r##"<rect x="{PAD_L}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{}" y="{:.1}" font-size="12">{}</text>"##,
            y - 4.0,
            COLORS[k % COLORS.len()],
            PAD_L + 20.0,
            y + 1.0,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn span(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order() {
        let items: Vec<u64> = (0..100).collect();
        assert_eq!(
            parallel_map(&items, 4, |x| x * 2),
            (0..100).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(parallel_map(&[] as &[u64], 4, |x| *x).is_empty());
    }

    #[test]
    fn load_scaling_compresses_inter_arrival_times() {
        let job = |submit| TraceJob {
            line: 2,
            submit,
            duration: 10.0,
            gpus: 1,
            tenant: "t".into(),
            share: None,
            job_type: None,
        };
        let trace = vec![job(100.0), job(110.0), job(130.0)];
        let twice = scale_load(&trace, 2.0).unwrap();
        assert_eq!(
            twice.iter().map(|j| j.submit).collect::<Vec<_>>(),
            vec![100.0, 105.0, 115.0]
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 5e-324] {
            assert!(scale_load(&trace, bad).is_err(), "{bad}");
        }
    }
}
