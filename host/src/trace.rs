//! Reading cluster traces: the jobs a simulation replays.
//!
//! Formats sit behind [`TraceFormat`] so that new ones (Alibaba, Helios,
//! synthetic generators) add a type, not a branch in the simulator. Every
//! error names the file and line, because a researcher's first run is often
//! on a trace they just converted by hand.

use crate::bounds::{self, shown};
use anyhow::{Context, anyhow, bail};
use std::path::Path;

/// One job of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceJob {
    /// Line in the file (1-based, header included), for error messages and ties.
    pub line: usize,
    /// Submission time in seconds (any origin; the simulator shifts it to 0).
    pub submit: f64,
    /// Seconds the job runs on its full gang.
    pub duration: f64,
    /// Gang size.
    pub gpus: u32,
    /// User or virtual cluster.
    pub tenant: String,
}

/// A trace file format.
pub trait TraceFormat {
    /// Parse a whole file's text; `name` is used in error messages.
    fn parse(&self, name: &str, text: &str) -> anyhow::Result<Vec<TraceJob>>;
}

/// Read a trace file, choosing the format from its content (only the
/// Philly CSV form exists today).
pub fn read(path: &Path) -> anyhow::Result<Vec<TraceJob>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read trace {}", path.display()))?;
    PhillyCsv.parse(&path.display().to_string(), &text)
}

/// The per-job CSV form of Microsoft's Philly trace (as derived by the
/// AdaptDL/Pollux artifact): a header naming at least `timestamp`,
/// `duration` and `num_gpus`; optional `cluster` or `user` for the tenant.
/// `timestamp` is `YYYY-MM-DD HH:MM:SS` (UTC) or plain seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct PhillyCsv;

impl TraceFormat for PhillyCsv {
    fn parse(&self, name: &str, text: &str) -> anyhow::Result<Vec<TraceJob>> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines
            .next()
            .ok_or_else(|| anyhow!("{name}: empty file, expected a CSV header"))?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let find = |col: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(col));
        let need = |col: &str| {
            find(col).ok_or_else(|| {
                anyhow!(
                    "{name}:1: the header has no `{col}` column (it has: {})",
                    columns.join(", ")
                )
            })
        };
        let (ts, dur, gpus) = (need("timestamp")?, need("duration")?, need("num_gpus")?);
        let tenant = find("user").or_else(|| find("cluster"));
        let mut jobs = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != columns.len() {
                bail!("{name}:{n}: {} fields, the header has {}", fields.len(), columns.len());
            }
            let submit = parse_time(fields[ts]).map_err(|e| anyhow!("{name}:{n}: column `timestamp`: {e}"))?;
            let duration: f64 = fields[dur]
                .parse()
                .map_err(|_| anyhow!("{name}:{n}: column `duration`: {} is not a number", shown(fields[dur])))?;
            if let Err(why) = bounds::check_job_seconds(duration) {
                bail!("{name}:{n}: column `duration`: not a duration: {why}");
            }
            let gpu_count: u32 = parse_gpus(fields[gpus]).ok_or_else(|| {
                anyhow!(
                    "{name}:{n}: column `num_gpus`: {} is not a whole number from 1 to {}",
                    shown(fields[gpus]),
                    bounds::MAX_GPUS_PER_JOB
                )
            })?;
            jobs.push(TraceJob {
                line: n,
                submit,
                duration,
                gpus: gpu_count,
                tenant: tenant.map(|t| fields[t].to_string()).unwrap_or_default(),
            });
        }
        if jobs.is_empty() {
            bail!("{name}: no jobs after the header");
        }
        Ok(jobs)
    }
}

fn parse_gpus(s: &str) -> Option<u32> {
    // Some exports write counts as floats ("4.0").
    let v: f64 = s.parse().ok()?;
    (v.fract() == 0.0 && v >= 1.0 && v <= f64::from(bounds::MAX_GPUS_PER_JOB)).then_some(v as u32)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) or plain seconds, to seconds since the epoch.
pub fn parse_time(s: &str) -> Result<f64, String> {
    if let Ok(v) = s.parse::<f64>() {
        return if v.is_finite() && v.abs() <= bounds::MAX_TIME {
            Ok(v)
        } else {
            Err(format!(
                "{} is not a time (seconds within {:e} of 0)",
                shown(s),
                bounds::MAX_TIME
            ))
        };
    }
    let bad = || format!("{} is neither `YYYY-MM-DD HH:MM:SS` nor seconds", shown(s));
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (&[y, mo, da], &[h, mi, se]) = (&d[..], &t[..]) else {
        return Err(bad());
    };
    if !(1..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..=60).contains(&se)
    {
        return Err(bad());
    }
    Ok((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se) as f64)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC), the form
/// [`parse_time`] reads: for writing traces (tiled or shifted copies).
pub fn format_time(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the
/// inverse of [`days_from_civil`], Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_they_are_read() {
        assert_eq!(format_time(1_507_532_515), "2017-10-09 07:01:55");
        for t in [0, 59, 86_399, 951_782_400, 1_507_532_515, 4_102_444_800, -86_400] {
            assert_eq!(parse_time(&format_time(t)), Ok(t as f64), "{t}");
        }
    }

    #[test]
    fn parses_philly_rows() {
        let text =
            "timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,66.0,1,66.0,11cb48\n1000,5,4.0,20,x\n";
        let jobs = PhillyCsv.parse("t.csv", text).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].submit, 1_507_532_515.0);
        assert_eq!(
            (jobs[0].duration, jobs[0].gpus, jobs[0].tenant.as_str(), jobs[0].line),
            (66.0, 1, "11cb48", 2)
        );
        assert_eq!((jobs[1].submit, jobs[1].gpus), (1000.0, 4));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = |text: &str| PhillyCsv.parse("t.csv", text).unwrap_err().to_string();
        let h = "timestamp,duration,num_gpus\n";
        assert_eq!(
            err(&format!("{h}1,2,1\n1,abc,1\n")),
            "t.csv:3: column `duration`: \"abc\" is not a number"
        );
        assert!(err(&format!("{h}2017-13-01 00:00:00,1,1\n")).starts_with("t.csv:2: column `timestamp`"));
        assert!(err(&format!("{h}1,1,0\n")).starts_with("t.csv:2: column `num_gpus`"));
        assert!(err(&format!("{h}1,1\n")).starts_with("t.csv:2: 2 fields"));
        assert!(err("timestamp,num_gpus\n1,1\n").contains("no `duration` column"));
        assert!(err("").contains("empty file"));
        assert!(err(&format!("{h}1,-5,1\n")).contains("not a duration"));
        // Hostile values: refused with the line named, never echoed whole.
        for bad in ["1e20", "NaN", "inf", "1e300", "-0.5"] {
            assert!(
                err(&format!("{h}1,{bad},1\n")).starts_with("t.csv:2: column `duration`"),
                "{bad}"
            );
        }
        for bad in ["1e300", "inf", "9999999999999-01-01 00:00:00", "-1e13"] {
            assert!(
                err(&format!("{h}{bad},1,1\n")).starts_with("t.csv:2: column `timestamp`"),
                "{bad}"
            );
        }
        assert!(err(&format!("{h}1,1,70000\n")).starts_with("t.csv:2: column `num_gpus`"));
        let huge = "9".repeat(10 << 20);
        assert!(err(&format!("{h}1,x{huge},1\n")).len() < 200);
    }
}
