//! Showing a replay's results: a table for the terminal, JSON and CSV for
//! scripts, and an SVG plot for people (JCT CDF and utilisation over time),
//! written by hand so the output is byte-for-byte stable and needs no
//! plotting stack.

use super::metrics::{JobRecord, SimResult};
use anyhow::Context;
use std::fmt::Write as _;
use std::path::Path;

/// A two-column, human-readable summary of a replay.
pub struct Table<'a>(pub &'a SimResult);

impl std::fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.0.summary;
        let t = &self.0.timing;
        let policy = if s.final_policy == s.policy {
            s.policy.clone()
        } else {
            format!("{} (ended as {})", s.policy, s.final_policy)
        };
        let rows: Vec<(&str, String)> = vec![
            ("policy", policy),
            (
                "jobs (completed / refused)",
                format!("{} ({} / {})", s.jobs, s.completed, s.refused_at_submission),
            ),
            ("cluster", s.cluster.clone()),
            ("job speed", s.speed_model.clone()),
            ("JCT mean", secs(s.jct.mean)),
            ("JCT median", secs(s.jct.median)),
            ("JCT p95", secs(s.jct.p95)),
            ("JCT p99", secs(s.jct.p99)),
            ("queueing delay mean", secs(s.queueing_delay.mean)),
            ("makespan", secs(s.makespan)),
            ("GPU utilisation", format!("{:.1} %", s.utilisation * 100.0)),
            (
                "preemptions / migrations",
                format!("{} / {}", s.preemptions, s.migrations),
            ),
            (
                "time lost to restarts",
                format!("{} ({})", secs(s.restart_seconds), s.restart_cost),
            ),
            ("work lost to spread gangs", secs(s.spread_seconds)),
            (
                "work lost to interference",
                format!("{} ({})", secs(s.interference_seconds), s.colocation),
            ),
            ("effective throughput", format!("{:.3}", s.effective_throughput)),
            (
                "fairness rho max / mean",
                format!("{:.2} / {:.2}", s.fairness.rho_max, s.fairness.rho_mean),
            ),
            ("jobs with rho > 2", format!("{:.1} %", s.fairness.rho_over_2 * 100.0)),
            ("Jain's index (1/rho)", format!("{:.3}", s.fairness.jain_index)),
            ("policy calls", s.policy_calls.to_string()),
            (
                "policy time per call p50 / p99",
                format!("{:.1} µs / {:.1} µs", t.call_p50_us, t.call_p99_us),
            ),
            (
                "actions applied / rejected",
                format!("{} / {}", s.actions_applied, s.actions_rejected),
            ),
            (
                "strikes / ejections / swaps",
                format!("{} / {} / {}", s.strikes, s.ejections, s.swaps),
            ),
            ("replay wall time", format!("{:.2} s", t.wall_seconds)),
        ];
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        for (k, v) in rows {
            writeln!(f, "{k:<width$}  {v}")?;
        }
        for fault in &s.faults {
            writeln!(f, "fault: {fault}")?;
        }
        for swap in &s.swap_log {
            writeln!(f, "swap: {swap}")?;
        }
        Ok(())
    }
}

/// Replays of one trace under several policies, side by side, with each
/// policy's mean and p99 JCT relative to the first.
pub struct Comparison<'a>(pub &'a [&'a SimResult]);

impl std::fmt::Display for Comparison<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let results = self.0;
        let Some(first) = results.first() else { return Ok(()) };
        let rel = |v: f64, base: f64| {
            if base > 0.0 {
                format!("{:.2}x", v / base)
            } else {
                "-".to_string()
            }
        };
        type Row = (&'static str, fn(&SimResult) -> String);
        let rows: [Row; 18] = [
            ("jobs completed", |r| r.summary.completed.to_string()),
            ("JCT mean (s)", |r| format!("{:.1}", r.summary.jct.mean)),
            ("JCT median (s)", |r| format!("{:.1}", r.summary.jct.median)),
            ("JCT p95 (s)", |r| format!("{:.1}", r.summary.jct.p95)),
            ("JCT p99 (s)", |r| format!("{:.1}", r.summary.jct.p99)),
            ("queueing mean (s)", |r| format!("{:.1}", r.summary.queueing_delay.mean)),
            ("makespan (s)", |r| format!("{:.0}", r.summary.makespan)),
            ("utilisation", |r| format!("{:.1} %", r.summary.utilisation * 100.0)),
            ("preemptions", |r| r.summary.preemptions.to_string()),
            ("migrations", |r| r.summary.migrations.to_string()),
            ("lost to restarts (s)", |r| format!("{:.0}", r.summary.restart_seconds)),
            ("lost to spread (s)", |r| format!("{:.0}", r.summary.spread_seconds)),
            ("lost to interference (s)", |r| {
                format!("{:.0}", r.summary.interference_seconds)
            }),
            ("effective throughput", |r| {
                format!("{:.3}", r.summary.effective_throughput)
            }),
            ("rho max / mean", |r| {
                format!("{:.1} / {:.2}", r.summary.fairness.rho_max, r.summary.fairness.rho_mean)
            }),
            ("Jain's index", |r| format!("{:.3}", r.summary.fairness.jain_index)),
            ("call p50 / p99 (µs)", |r| {
                format!("{:.1} / {:.1}", r.timing.call_p50_us, r.timing.call_p99_us)
            }),
            ("strikes / ejections", |r| {
                format!("{} / {}", r.summary.strikes, r.summary.ejections)
            }),
        ];
        let mut table: Vec<Vec<String>> = vec![std::iter::once("policy".to_string()).chain(labels(results)).collect()];
        for (name, cell) in rows {
            table.push(
                std::iter::once(name.to_string())
                    .chain(results.iter().map(|r| cell(r)))
                    .collect(),
            );
        }
        table.push(
            std::iter::once(format!("JCT mean vs {}", first.summary.policy))
                .chain(results.iter().map(|r| rel(r.summary.jct.mean, first.summary.jct.mean)))
                .collect(),
        );
        table.push(
            std::iter::once(format!("JCT p99 vs {}", first.summary.policy))
                .chain(results.iter().map(|r| rel(r.summary.jct.p99, first.summary.jct.p99)))
                .collect(),
        );
        write_aligned(f, &table)
    }
}

/// Rows as columns two spaces apart, the first left-aligned (labels) and
/// the rest right-aligned (numbers).
pub(super) fn write_aligned(f: &mut std::fmt::Formatter<'_>, rows: &[Vec<String>]) -> std::fmt::Result {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        writeln!(f, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// Write each replay's outputs into `dir/LABEL/` and the overlaid plot
/// into `dir/compare.svg`.
pub fn write_comparison(dir: &Path, results: &[&SimResult]) -> anyhow::Result<()> {
    for (r, label) in results.iter().zip(labels(results)) {
        write_outputs(&dir.join(label), r)?;
    }
    let path = dir.join("compare.svg");
    std::fs::write(&path, plot_svg(results)).with_context(|| format!("cannot write {}", path.display()))
}

/// Seconds, with hours or days alongside when large.
fn secs(v: f64) -> String {
    if v >= 2.0 * 86_400.0 {
        format!("{v:.1} s ({:.1} d)", v / 86_400.0)
    } else if v >= 2.0 * 3600.0 {
        format!("{v:.1} s ({:.1} h)", v / 3600.0)
    } else {
        format!("{v:.1} s")
    }
}

/// Write `summary.json` (deterministic), `timing.json` (wall clock),
/// `jobs.csv` (one row per trace job) and `plot.svg` into `dir`.
pub fn write_outputs(dir: &Path, result: &SimResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write("summary.json", &serde_json::to_vec_pretty(&result.summary)?)?;
    write("timing.json", &serde_json::to_vec_pretty(&result.timing)?)?;
    write("jobs.csv", jobs_csv(&result.jobs).as_bytes())?;
    write("plot.svg", plot_svg(&[result]).as_bytes())?;
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn jobs_csv(jobs: &[JobRecord]) -> String {
    let mut out = String::from(
        "id,line,tenant,gpus,submit,duration,start,finish,jct,queueing_delay,state,preemptions,migrations\n",
    );
    for j in jobs {
        let jct = j.finish.map(|f| f - j.submit);
        let queued = j.start.map(|s| s - j.submit);
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            j.id.map(|i| i.to_string()).unwrap_or_default(),
            j.line,
            j.tenant.replace([',', '\n'], " "),
            j.gpus,
            j.submit,
            j.duration,
            opt(j.start),
            opt(j.finish),
            opt(jct),
            opt(queued),
            j.state,
            j.preemptions,
            j.migrations
        );
    }
    out
}

pub(super) const W: f64 = 480.0;
pub(super) const H: f64 = 360.0;
pub(super) const PAD_L: f64 = 64.0;
pub(super) const PAD_R: f64 = 20.0;
pub(super) const PAD_T: f64 = 40.0;
pub(super) const PAD_B: f64 = 52.0;

/// One panel's frame, title, axis labels and ticks, opening a group that
/// the caller closes after drawing its series.
pub(super) fn panel(
    svg: &mut String,
    x0: f64,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    xticks: &[(f64, String)],
    yticks: &[(f64, String)],
) {
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let _ = write!(
        svg,
        r##"<g transform="translate({x0},0)"><text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{title}</text><rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##,
        W / 2.0
    );
    for (fx, label) in xticks {
        let x = PAD_L + fx * pw;
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{PAD_T}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle" font-size="11">{label}</text>"##,
            PAD_T + ph,
            PAD_T + ph + 16.0
        );
    }
    for (fy, label) in yticks {
        let y = PAD_T + ph - fy * ph;
        let _ = write!(
            svg,
            r##"<line x1="{PAD_L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11">{label}</text>"##,
            PAD_L + pw,
            PAD_L - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="12">{xlabel}</text><text transform="translate(16,{}) rotate(-90)" text-anchor="middle" font-size="12">{ylabel}</text>"##,
        PAD_L + pw / 2.0,
        H - 12.0,
        PAD_T + ph / 2.0
    );
}

pub(super) fn polyline(svg: &mut String, points: &[(f64, f64)], color: &str) {
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let mut d = String::new();
    for (i, (fx, fy)) in points.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            PAD_L + fx * pw,
            PAD_T + ph - fy * ph
        );
    }
    let _ = write!(
        svg,
        r##"<path d="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-opacity="0.85"/>"##
    );
}

/// Series colours (Tableau 10), one per policy.
pub(super) const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

/// Label of each result: its policy, numbered when two share a name.
pub fn labels(results: &[&SimResult]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for r in results {
        let base = r.summary.policy.clone();
        let n = labels
            .iter()
            .filter(|l| **l == base || l.starts_with(&format!("{base}#")))
            .count();
        labels.push(if n == 0 { base } else { format!("{base}#{}", n + 1) });
    }
    labels
}

/// JCT CDFs and utilisation over time of one or more replays of the same
/// trace, overlaid, with a legend when there are several.
fn plot_svg(results: &[&SimResult]) -> String {
    let labels = labels(results);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"##,
        2.0 * W,
        H + 24.0
    );
    let caption = match results {
        [r] => {
            let s = &r.summary;
            format!(
                "{} on {} GPUs: {} jobs, mean JCT {:.0} s, p99 {:.0} s, utilisation {:.1} %",
                s.policy,
                s.gpus,
                s.completed,
                s.jct.mean,
                s.jct.p99,
                s.utilisation * 100.0
            )
        }
        _ => results
            .iter()
            .zip(&labels)
            .map(|(r, l)| format!("{l}: mean JCT {:.0} s", r.summary.jct.mean))
            .collect::<Vec<_>>()
            .join(" | "),
    };
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="12" fill="#555">{}</text>"##,
        W,
        H + 14.0,
        xml_escape(&caption)
    );

    // JCT CDF on a log axis: JCTs span seconds to months.
    let jcts: Vec<Vec<f64>> = results
        .iter()
        .map(|r| {
            let mut v: Vec<f64> = r
                .jobs
                .iter()
                .filter_map(|j| j.finish.map(|f| (f - j.submit).max(1.0)))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    let all = || jcts.iter().flatten().copied();
    let lo = all().fold(f64::INFINITY, f64::min).clamp(1.0, 1e9).log10().floor();
    let hi = all().fold(10.0, f64::max).log10().ceil().max(lo + 1.0);
    let fx = |v: f64| (v.log10() - lo) / (hi - lo);
    let xticks: Vec<(f64, String)> = (lo as i32..=hi as i32)
        .map(|e| (fx(10f64.powi(e)), format!("1e{e}")))
        .collect();
    let yticks: Vec<(f64, String)> = (0..=4).map(|i| (i as f64 / 4.0, format!("{}%", i * 25))).collect();
    panel(
        &mut svg,
        0.0,
        "Job completion time (CDF)",
        "JCT, seconds (log scale)",
        "jobs",
        &xticks,
        &yticks,
    );
    for (k, v) in jcts.iter().enumerate() {
        let n = v.len().max(1) as f64;
        let step = (v.len() / 800).max(1);
        let mut points: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, &x)| (fx(x), (i + 1) as f64 / n))
            .collect();
        if let Some(&last) = v.last() {
            points.push((fx(last), 1.0));
        }
        polyline(&mut svg, &points, COLORS[k % COLORS.len()]);
    }
    if results.len() > 1 {
        for (k, label) in labels.iter().enumerate() {
            // Bottom right: below the curves, which reach the top early.
            let y = H - PAD_B - 10.0 - 16.0 * (labels.len() - 1 - k) as f64;
            let _ = write!(
                svg,
                r##"<rect x="{}" y="{}" width="12" height="4" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"##,
                W - PAD_R - 150.0,
                y - 4.0,
                COLORS[k % COLORS.len()],
                W - PAD_R - 134.0,
                y,
                xml_escape(label)
            );
        }
    }
    svg.push_str("</g>");

    // Utilisation, time-averaged into buckets so a long trace stays legible.
    let end = results.iter().map(|r| r.summary.makespan).fold(1.0, f64::max);
    let (unit, scale) = if end > 2.0 * 86_400.0 {
        ("days", 86_400.0)
    } else if end > 2.0 * 3600.0 {
        ("hours", 3600.0)
    } else {
        ("seconds", 1.0)
    };
    let xticks: Vec<(f64, String)> = (0..=5)
        .map(|i| (i as f64 / 5.0, format!("{:.0}", end * i as f64 / 5.0 / scale)))
        .collect();
    panel(
        &mut svg,
        W,
        "GPU utilisation over time",
        &format!("time since first submission, {unit}"),
        "allocated GPUs",
        &xticks,
        &yticks,
    );
    for (k, r) in results.iter().enumerate() {
        polyline(&mut svg, &utilisation_points(r, end), COLORS[k % COLORS.len()]);
    }
    svg.push_str("</g></svg>\n");
    svg
}

/// The utilisation series averaged into 400 buckets over `[0, end]`, as
/// (x, y) fractions of the panel.
fn utilisation_points(result: &SimResult, end: f64) -> Vec<(f64, f64)> {
    let buckets = 400usize;
    let width = end / buckets as f64;
    let mut area = vec![0.0; buckets];
    let series = &result.utilisation;
    let stop = result.summary.makespan.min(end);
    for (i, &(t, share)) in series.iter().enumerate() {
        let t_next = series.get(i + 1).map(|p| p.0).unwrap_or(stop).min(stop);
        let mut a = t;
        while a < t_next {
            let b = ((a / width).floor() as usize).min(buckets - 1);
            let b_end = ((b + 1) as f64 * width).min(t_next);
            area[b] += (b_end - a).max(0.0) * share;
            if b_end <= a {
                break;
            }
            a = b_end;
        }
    }
    let gpus = result.summary.gpus.max(1) as f64;
    area.iter()
        .enumerate()
        .map(|(i, a)| ((i as f64 + 0.5) / buckets as f64, (a / width / gpus).clamp(0.0, 1.0)))
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
