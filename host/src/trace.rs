//! Reading cluster traces: the jobs a simulation replays.
//!
//! Formats sit behind [`TraceFormat`] so that new ones add a type, not a
//! branch in the simulator. Three ship, for the traces researchers have:
//!
//! - [`PhillyCsv`]: Microsoft's Philly trace, per job (`timestamp`,
//!   `duration`, `num_gpus`), as the AdaptDL/Pollux artifact derives it;
//! - [`HeliosCsv`]: SenseTime's Helios and Shanghai AI Lab's Acme job
//!   traces (`submit_time`, `duration`, `gpu_num`, `node_num`, `user`);
//! - [`AlibabaPaiCsv`]: the pod lists of Alibaba's GPU trace v2023
//!   (`creation_time`, `scheduled_time`, `deletion_time`, `num_gpu` and a
//!   fractional `gpu_milli`);
//! - [`GavelTrace`]: the `.trace` files of Gavel's simulator (tab-separated
//!   job type, command, steps, scale factor, arrival time), whose work is
//!   counted in steps of a named job type: [`Parsed::resolve_steps`] turns
//!   steps into seconds through a throughput table.
//!
//! [`read_as`] picks the format from the header when not told. Rows a
//! replay has no use for (CPU-only jobs, pods never scheduled) are skipped
//! and counted; every other row must parse, and an error names the file,
//! the line and the column, because a researcher's first run is often on a
//! trace they just converted by hand.

use crate::bounds::{self, shown};
use crate::files::Csv;
use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// Largest trace file read, in bytes (the 50x tiled Philly trace is 40 MB).
pub const MAX_TRACE_BYTES: usize = 1 << 30;

/// Longest tenant (user, virtual cluster) name kept, in bytes.
pub const MAX_TENANT: usize = 256;

/// One job of a trace.
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// Share of one GPU the job asked for, when less than a whole one
    /// (single-GPU jobs of GPU-sharing traces).
    pub share: Option<f64>,
    /// Its type, when the trace names one: an index into
    /// [`Parsed::job_types`] as read, into the throughput table's types
    /// once [`Parsed::resolve_steps`] has run.
    pub job_type: Option<u16>,
}

/// What a trace file held: its jobs, and the rows skipped, by why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// The jobs, in file order.
    pub jobs: Vec<TraceJob>,
    /// Rows left out on purpose (`"without GPUs"`, `"never scheduled"`), counted.
    pub skipped: BTreeMap<&'static str, usize>,
    /// The job types the trace names (Gavel traces), in order of first use.
    pub job_types: Vec<String>,
    /// Whether the jobs' `duration` counts steps of their type, not
    /// seconds, until [`Parsed::resolve_steps`] converts it.
    pub in_steps: bool,
}

impl Parsed {
    /// Turn a trace's steps into seconds on its reference: each job's
    /// steps over its type's throughput (steps per second) on `reference`
    /// GPUs of its gang, as Gavel's simulator times a job; and its type
    /// into the table's. An error names the line of a job whose type or
    /// gang the table has no figure for. Nothing to do for traces in
    /// seconds.
    pub fn resolve_steps(
        &mut self,
        name: &str,
        table: &crate::speed::ThroughputTable,
        reference: &str,
    ) -> anyhow::Result<()> {
        if !self.in_steps {
            return Ok(());
        }
        let kind = table
            .kind_index(reference)
            .ok_or_else(|| anyhow!("the throughput table has no GPU kind {}", shown(reference)))?;
        let in_table: Vec<Option<u16>> = self
            .job_types
            .iter()
            .map(|t| table.types().iter().position(|n| n == t).map(|i| i as u16))
            .collect();
        for job in &mut self.jobs {
            let Some(named) = job.job_type else { continue };
            let typed = in_table.get(usize::from(named)).copied().flatten().ok_or_else(|| {
                anyhow!(
                    "{name}:{}: column `job_type`: {} is not a type of the throughput table",
                    job.line,
                    shown(&self.job_types[usize::from(named)])
                )
            })?;
            let rate = table.throughput_index(kind, typed, job.gpus).ok_or_else(|| {
                anyhow!(
                    "{name}:{}: the throughput table has no figure for {} on {} {reference} GPUs",
                    job.line,
                    shown(&self.job_types[usize::from(named)]),
                    job.gpus
                )
            })?;
            let seconds = job.duration / rate;
            bounds::check_job_seconds(seconds).map_err(|why| {
                anyhow!(
                    "{name}:{}: column `total_steps`: {} steps at {rate} per second: {why}",
                    job.line,
                    job.duration
                )
            })?;
            job.duration = seconds;
            job.job_type = Some(typed);
        }
        self.in_steps = false;
        Ok(())
    }
}

/// A trace file format.
pub trait TraceFormat {
    /// Parse a whole file's text; `name` is used in error messages.
    fn parse(&self, name: &str, text: &str) -> anyhow::Result<Parsed>;
}

/// The trace formats wsched reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormatName {
    /// [`PhillyCsv`].
    Philly,
    /// [`HeliosCsv`] (Helios and Acme).
    Helios,
    /// [`AlibabaPaiCsv`].
    AlibabaPai,
    /// [`GavelTrace`].
    Gavel,
}

impl TraceFormatName {
    /// The format whose columns a CSV header names, if one does.
    pub fn detect(header: &str) -> Option<TraceFormatName> {
        let columns: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
        let has = |c: &str| columns.iter().any(|x| x == c);
        if has("timestamp") && has("num_gpus") {
            Some(TraceFormatName::Philly)
        } else if has("submit_time") && has("gpu_num") {
            Some(TraceFormatName::Helios)
        } else if has("creation_time") && has("num_gpu") {
            Some(TraceFormatName::AlibabaPai)
        } else if matches!(header.split('\t').count(), GavelTrace::FIELDS | GavelTrace::OLD_FIELDS) {
            // No header: a first row of 7 or 10 tab-separated fields.
            Some(TraceFormatName::Gavel)
        } else {
            None
        }
    }

    /// Its reader.
    pub fn reader(self) -> &'static dyn TraceFormat {
        match self {
            TraceFormatName::Philly => &PhillyCsv,
            TraceFormatName::Helios => &HeliosCsv,
            TraceFormatName::AlibabaPai => &AlibabaPaiCsv,
            TraceFormatName::Gavel => &GavelTrace,
        }
    }
}

/// Read a trace file in the format its header names; the jobs only.
pub fn read(path: &Path) -> anyhow::Result<Vec<TraceJob>> {
    Ok(read_as(path, None)?.jobs)
}

/// Read a trace file (a regular file, at most [`MAX_TRACE_BYTES`]) in
/// `format`, or in the one its header names when `None`.
pub fn read_as(path: &Path, format: Option<TraceFormatName>) -> anyhow::Result<Parsed> {
    let bytes = crate::files::read_regular_file(path, MAX_TRACE_BYTES)
        .map_err(|why| anyhow!("cannot read trace {}: {why}", path.display()))?;
    let text =
        String::from_utf8(bytes).with_context(|| format!("cannot read trace {}: not UTF-8 text", path.display()))?;
    let name = path.display().to_string();
    let gavel = path.extension().is_some_and(|x| x == "trace");
    let format = match format {
        Some(f) => f,
        None if gavel => TraceFormatName::Gavel,
        None => {
            let header = text.lines().next().unwrap_or_default();
            TraceFormatName::detect(header).ok_or_else(|| {
                anyhow!(
                    "{name}:1: the header names no known format (Philly: timestamp, duration, num_gpus; \
                     Helios/Acme: submit_time, duration, gpu_num; Alibaba PAI: creation_time, scheduled_time, \
                     deletion_time, num_gpu; Gavel: 7 or 10 tab-separated fields); say which with \
                     --trace-format"
                )
            })?
        }
    };
    format.reader().parse(&name, &text)
}

/// The tenant of row `n` (`fields`), from column `who` of `csv` (none: empty).
fn tenant(name: &str, csv: &Csv, n: usize, who: Option<usize>, fields: &[&str]) -> anyhow::Result<String> {
    let Some(t) = who else { return Ok(String::new()) };
    let value = fields[t];
    if value.len() > MAX_TENANT || value.chars().any(char::is_control) {
        bail!(
            "{name}:{n}: column `{}`: {} is not a name (at most {MAX_TENANT} bytes, no control characters)",
            csv.columns[t],
            shown(value)
        );
    }
    Ok(value.to_string())
}

/// A duration in seconds from a trace field.
fn seconds(name: &str, n: usize, column: &str, value: &str) -> anyhow::Result<f64> {
    let v: f64 = value
        .parse()
        .map_err(|_| anyhow!("{name}:{n}: column `{column}`: {} is not a number", shown(value)))?;
    if let Err(why) = bounds::check_job_seconds(v) {
        bail!("{name}:{n}: column `{column}`: not a duration: {why}");
    }
    Ok(v)
}

/// A time from a trace field (see [`parse_time`]).
fn time(name: &str, n: usize, column: &str, value: &str) -> anyhow::Result<f64> {
    parse_time(value).map_err(|e| anyhow!("{name}:{n}: column `{column}`: {e}"))
}

/// A GPU count from a trace field: 0 (a CPU-only job) or a gang size.
fn gpu_count(name: &str, n: usize, column: &str, value: &str) -> anyhow::Result<u32> {
    if value.parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Ok(0);
    }
    parse_gpus(value).ok_or_else(|| {
        anyhow!(
            "{name}:{n}: column `{column}`: {} is not a whole number from 0 to {}",
            shown(value),
            bounds::MAX_GPUS_PER_JOB
        )
    })
}

fn finish(name: &str, parsed: Parsed) -> anyhow::Result<Parsed> {
    if parsed.jobs.is_empty() {
        let skipped: usize = parsed.skipped.values().sum();
        if skipped > 0 {
            bail!("{name}: no GPU job to replay ({skipped} rows skipped: CPU-only or never scheduled)");
        }
        bail!("{name}: no jobs after the header");
    }
    Ok(parsed)
}

/// The per-job CSV form of Microsoft's Philly trace (as derived by the
/// AdaptDL/Pollux artifact): a header naming at least `timestamp`,
/// `duration` and `num_gpus`; optional `cluster` or `user` for the tenant.
/// `timestamp` is `YYYY-MM-DD HH:MM:SS` (UTC) or plain seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct PhillyCsv;

impl TraceFormat for PhillyCsv {
    fn parse(&self, name: &str, text: &str) -> anyhow::Result<Parsed> {
        let mut csv = Csv::new(name, text)?;
        let (ts, dur, gpus) = (csv.need("timestamp")?, csv.need("duration")?, csv.need("num_gpus")?);
        let who = csv.find("user").or_else(|| csv.find("cluster"));
        let mut parsed = Parsed::default();
        while let Some((n, fields)) = csv.row()? {
            let submit = time(name, n, "timestamp", fields[ts])?;
            let duration = seconds(name, n, "duration", fields[dur])?;
            let gpu_count: u32 = parse_gpus(fields[gpus]).ok_or_else(|| {
                anyhow!(
                    "{name}:{n}: column `num_gpus`: {} is not a whole number from 1 to {}",
                    shown(fields[gpus]),
                    bounds::MAX_GPUS_PER_JOB
                )
            })?;
            let tenant = tenant(name, &csv, n, who, &fields)?;
            parsed.jobs.push(TraceJob {
                line: n,
                submit,
                duration,
                gpus: gpu_count,
                tenant,
                share: None,
                job_type: None,
            });
        }
        finish(name, parsed)
    }
}

/// The job traces of SenseTime's Helios (Hu et al., SC'21) and Shanghai AI
/// Lab's Acme (Hu et al., NSDI'24): a header naming at least
/// `submit_time`, `duration` (seconds of execution) and `gpu_num`; the
/// tenant is `user`, else `vc`. Times are `YYYY-MM-DD HH:MM:SS`, with a
/// UTC offset (`+08:00`) or without (read as UTC), or seconds. CPU-only
/// jobs (`gpu_num` 0) are skipped and counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeliosCsv;

impl TraceFormat for HeliosCsv {
    fn parse(&self, name: &str, text: &str) -> anyhow::Result<Parsed> {
        let mut csv = Csv::new(name, text)?;
        let (ts, dur, gpus) = (csv.need("submit_time")?, csv.need("duration")?, csv.need("gpu_num")?);
        let who = csv.find("user").or_else(|| csv.find("vc"));
        let mut parsed = Parsed::default();
        while let Some((n, fields)) = csv.row()? {
            let gpu_count = gpu_count(name, n, "gpu_num", fields[gpus])?;
            if gpu_count == 0 {
                *parsed.skipped.entry("without GPUs").or_default() += 1;
                continue;
            }
            let tenant = tenant(name, &csv, n, who, &fields)?;
            parsed.jobs.push(TraceJob {
                line: n,
                submit: time(name, n, "submit_time", fields[ts])?,
                duration: seconds(name, n, "duration", fields[dur])?,
                gpus: gpu_count,
                tenant,
                share: None,
                job_type: None,
            });
        }
        finish(name, parsed)
    }
}

/// The pod lists of Alibaba's GPU cluster trace v2023 (`openb_pod_list_*.csv`,
/// Weng et al., ATC'23): `creation_time` (the submission), `scheduled_time`
/// and `deletion_time` (seconds; the job runs from the one to the other),
/// `num_gpu` (0 to 8) and `gpu_milli` (thousandths of each GPU: below 1000
/// on a one-GPU pod, a share of a GPU). CPU-only pods and pods never
/// scheduled (no `scheduled_time`) are skipped and counted. `gpu_spec`
/// (the GPU kinds a pod accepts) is not modelled yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlibabaPaiCsv;

impl TraceFormat for AlibabaPaiCsv {
    fn parse(&self, name: &str, text: &str) -> anyhow::Result<Parsed> {
        let mut csv = Csv::new(name, text)?;
        let created = csv.need("creation_time")?;
        let scheduled = csv.need("scheduled_time")?;
        let deleted = csv.need("deletion_time")?;
        let gpus = csv.need("num_gpu")?;
        let milli = csv.find("gpu_milli");
        let mut parsed = Parsed::default();
        while let Some((n, fields)) = csv.row()? {
            let gpu_count = gpu_count(name, n, "num_gpu", fields[gpus])?;
            if gpu_count == 0 {
                *parsed.skipped.entry("without GPUs").or_default() += 1;
                continue;
            }
            if fields[scheduled].is_empty() || fields[scheduled].eq_ignore_ascii_case("nan") {
                *parsed.skipped.entry("never scheduled").or_default() += 1;
                continue;
            }
            let submit = time(name, n, "creation_time", fields[created])?;
            let start = time(name, n, "scheduled_time", fields[scheduled])?;
            let end = time(name, n, "deletion_time", fields[deleted])?;
            let duration = end - start;
            if let Err(why) = bounds::check_job_seconds(duration) {
                bail!("{name}:{n}: column `deletion_time`: not after `scheduled_time`: {why}");
            }
            let share = match milli.map(|m| fields[m]) {
                None => None,
                Some(value) => {
                    let m: f64 = value
                        .parse()
                        .ok()
                        .filter(|m: &f64| m.fract() == 0.0 && (1.0..=1000.0).contains(m))
                        .ok_or_else(|| {
                            anyhow!(
                                "{name}:{n}: column `gpu_milli`: {} is not a whole number from 1 to 1000",
                                shown(value)
                            )
                        })?;
                    (gpu_count == 1 && m < 1000.0).then_some(m / 1000.0)
                }
            };
            parsed.jobs.push(TraceJob {
                line: n,
                submit,
                duration,
                gpus: gpu_count,
                tenant: String::new(),
                share,
                job_type: None,
            });
        }
        finish(name, parsed)
    }
}

/// The `.trace` files of Gavel's simulator (stanford-futuredata/gavel,
/// `scheduler/utils.py: parse_trace`): no header, one job per line, tab
/// separated, either the 10 fields Gavel reads today
///
/// `job_type, command, working_directory, num_steps_arg, needs_data_dir,
/// total_steps, scale_factor, priority_weight, SLO, arrival_time`
///
/// or the 7 of the older files in its `traces/msr/` (commit 4e459d6)
///
/// `job_type, command, num_steps_arg, needs_data_dir, total_steps,
/// arrival_time, scale_factor`.
///
/// `job_type` names a row of the throughput table, e.g. `ResNet-50 (batch
/// size 64)`; `scale_factor` is the gang size; `total_steps` the work, in
/// steps, made seconds by [`Parsed::resolve_steps`]; `arrival_time` seconds.
/// The command, directories, priority weight and SLO are not used. Jobs
/// have no tenant.
#[derive(Debug, Default, Clone, Copy)]
pub struct GavelTrace;

impl GavelTrace {
    /// Fields of a line today.
    pub const FIELDS: usize = 10;
    /// Fields of a line in the older files.
    pub const OLD_FIELDS: usize = 7;
}

impl TraceFormat for GavelTrace {
    fn parse(&self, name: &str, text: &str) -> anyhow::Result<Parsed> {
        let mut parsed = Parsed {
            in_steps: true,
            ..Parsed::default()
        };
        let mut type_ids: BTreeMap<&str, u16> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            let (job_type, steps, gang, arrival) = match fields.len() {
                GavelTrace::FIELDS => (fields[0], fields[5], fields[6], fields[9]),
                GavelTrace::OLD_FIELDS => (fields[0], fields[4], fields[6], fields[5]),
                k => bail!(
                    "{name}:{n}: {k} tab-separated fields; a Gavel trace line has {} or {}",
                    GavelTrace::FIELDS,
                    GavelTrace::OLD_FIELDS
                ),
            };
            if job_type.is_empty() || job_type.len() > 256 || job_type.chars().any(char::is_control) {
                bail!(
                    "{name}:{n}: column `job_type`: {} is not a name (1 to 256 bytes)",
                    shown(job_type)
                );
            }
            let total: f64 = steps
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=1 << 53).contains(s))
                .map(|s| s as f64)
                .ok_or_else(|| {
                    anyhow!(
                        "{name}:{n}: column `total_steps`: {} is not a whole number from 1 to 2^53",
                        shown(steps)
                    )
                })?;
            let gpus = gang
                .parse::<u32>()
                .ok()
                .filter(|g| (1..=bounds::MAX_GPUS_PER_JOB).contains(g))
                .ok_or_else(|| {
                    anyhow!(
                        "{name}:{n}: column `scale_factor`: {} is not a whole number from 1 to {}",
                        shown(gang),
                        bounds::MAX_GPUS_PER_JOB
                    )
                })?;
            let submit = arrival
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && (0.0..=bounds::MAX_TIME).contains(t))
                .ok_or_else(|| {
                    anyhow!(
                        "{name}:{n}: column `arrival_time`: {} is not seconds from 0 to {:e}",
                        shown(arrival),
                        bounds::MAX_TIME
                    )
                })?;
            let next = parsed.job_types.len();
            let type_id = match type_ids.get(job_type) {
                Some(&id) => id,
                None => {
                    let id = u16::try_from(next)
                        .ok()
                        .filter(|&id| usize::from(id) < crate::speed::MAX_NAMES)
                        .ok_or_else(|| {
                            anyhow!(
                                "{name}:{n}: column `job_type`: more than {} job types",
                                crate::speed::MAX_NAMES
                            )
                        })?;
                    type_ids.insert(job_type, id);
                    parsed.job_types.push(job_type.to_string());
                    id
                }
            };
            parsed.jobs.push(TraceJob {
                line: n,
                submit,
                duration: total,
                gpus,
                tenant: String::new(),
                share: None,
                job_type: Some(type_id),
            });
        }
        finish(name, parsed)
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
    let bad = || format!("{} is neither `YYYY-MM-DD HH:MM:SS[+HH:MM]` nor seconds", shown(s));
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    // A UTC offset (`+08:00`, `-05:30`) or `Z` after the time.
    let (time, offset) = match time.find(['+', '-', 'Z']) {
        None => (time, 0),
        Some(i) => {
            let (clock, zone) = time.split_at(i);
            let offset = if zone == "Z" {
                0
            } else {
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let (h, m) = zone[1..].split_once(':').ok_or_else(bad)?;
                let (h, m) = (
                    h.parse::<i64>().map_err(|_| bad())?,
                    m.parse::<i64>().map_err(|_| bad())?,
                );
                if !(0..=14).contains(&h) || !(0..60).contains(&m) || zone.len() != 6 {
                    return Err(bad());
                }
                sign * (h * 3600 + m * 60)
            };
            (clock, offset)
        }
    };
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
    Ok((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se - offset) as f64)
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
        let jobs = PhillyCsv.parse("t.csv", text).unwrap().jobs;
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].submit, 1_507_532_515.0);
        assert_eq!(
            (jobs[0].duration, jobs[0].gpus, jobs[0].tenant.as_str(), jobs[0].line),
            (66.0, 1, "11cb48", 2)
        );
        assert_eq!((jobs[1].submit, jobs[1].gpus), (1000.0, 4));
    }

    fn sample(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/traces")
            .join(name)
    }

    #[test]
    fn the_format_is_read_from_the_header() {
        for (file, format) in [
            ("philly-11cb48.csv", TraceFormatName::Philly),
            ("helios-sample.csv", TraceFormatName::Helios),
            ("acme-sample.csv", TraceFormatName::Helios),
            ("alibaba-pai-sample.csv", TraceFormatName::AlibabaPai),
        ] {
            let text = std::fs::read_to_string(sample(file)).unwrap();
            assert_eq!(
                TraceFormatName::detect(text.lines().next().unwrap()),
                Some(format),
                "{file}"
            );
        }
        assert_eq!(TraceFormatName::detect("a,b,c"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        assert!(read_as(&path, None).unwrap_err().to_string().contains("--trace-format"));
        // Not read: a directory, a device, a file that is not text.
        assert!(read(dir.path()).unwrap_err().to_string().contains("not a regular file"));
        assert!(
            read(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("not UTF-8"));
    }

    #[test]
    fn helios_and_acme_rows_become_jobs_and_cpu_jobs_are_skipped() {
        let helios = read_as(&sample("helios-sample.csv"), None).unwrap();
        assert_eq!((helios.jobs.len(), helios.skipped.get("without GPUs")), (6, Some(&2)));
        let first = &helios.jobs[0];
        assert_eq!(
            (first.line, first.gpus, first.duration, first.tenant.as_str()),
            (2, 8, 7800.0, "u01")
        );
        assert_eq!(first.submit, parse_time("2020-04-01 00:00:07").unwrap());
        let acme = read_as(&sample("acme-sample.csv"), Some(TraceFormatName::Helios)).unwrap();
        assert_eq!((acme.jobs.len(), acme.skipped.get("without GPUs")), (5, Some(&1)));
        // 00:18:22 at UTC+8 is 16:18:22 UTC the day before.
        assert_eq!(acme.jobs[0].submit, parse_time("2023-02-28 16:18:22").unwrap());
        assert_eq!((acme.jobs[2].gpus, acme.jobs[2].duration), (32, 120.0));
    }

    #[test]
    fn alibaba_pods_become_jobs_with_their_gpu_shares() {
        let pai = read_as(&sample("alibaba-pai-sample.csv"), None).unwrap();
        assert_eq!(pai.jobs.len(), 5);
        assert_eq!(pai.skipped.get("without GPUs"), Some(&1));
        assert_eq!(pai.skipped.get("never scheduled"), Some(&1));
        let shares: Vec<Option<f64>> = pai.jobs.iter().map(|j| j.share).collect();
        assert_eq!(shares, [None, Some(0.22), None, Some(0.5), None]);
        let j = &pai.jobs[2];
        assert_eq!((j.submit, j.duration), (9_967_058.0, 9_968_575.0 - 9_967_063.0));
    }

    #[test]
    fn broken_rows_of_every_format_name_file_line_and_column() {
        let helios = |rows: &str| {
            HeliosCsv
                .parse("h.csv", &format!("submit_time,duration,gpu_num,user\n{rows}"))
                .unwrap_err()
                .to_string()
        };
        assert!(helios("2020-04-01 00:00:07,ten,1,u\n").starts_with("h.csv:2: column `duration`"));
        assert!(helios("yesterday,10,1,u\n").starts_with("h.csv:2: column `submit_time`"));
        assert!(helios("2020-04-01 00:00:07+25:00,10,1,u\n").starts_with("h.csv:2: column `submit_time`"));
        assert!(helios("1,10,1.5,u\n").starts_with("h.csv:2: column `gpu_num`"));
        assert!(helios("1,10,-1,u\n").starts_with("h.csv:2: column `gpu_num`"));
        assert!(helios("1,10,1,u\n1,10,NaN,u\n").starts_with("h.csv:3: column `gpu_num`"));
        assert!(helios("1,1e300,1,u\n").starts_with("h.csv:2: column `duration`"));
        assert!(helios("1,10,1\n").starts_with("h.csv:2: 3 fields"));
        assert!(helios("1,10,0,u\n").contains("no GPU job to replay"));
        let long = "u".repeat(10 << 20);
        let e = helios(&format!("1,10,1,{long}\n"));
        assert!(
            e.starts_with("h.csv:2: column `user`") && e.len() < 300,
            "{} bytes",
            e.len()
        );
        assert!(
            HeliosCsv
                .parse("h.csv", "submit_time,gpu_num\n1,1\n")
                .unwrap_err()
                .to_string()
                .contains("no `duration` column")
        );

        let pai = |rows: &str| {
            AlibabaPaiCsv
                .parse(
                    "p.csv",
                    &format!("num_gpu,gpu_milli,creation_time,deletion_time,scheduled_time\n{rows}"),
                )
                .unwrap_err()
                .to_string()
        };
        assert!(pai("1,500,10,5,8\n").starts_with("p.csv:2: column `deletion_time`: not after"));
        assert!(pai("1,0,10,20,10\n").starts_with("p.csv:2: column `gpu_milli`"));
        assert!(pai("1,1001,10,20,10\n").starts_with("p.csv:2: column `gpu_milli`"));
        assert!(pai("1,2.5,10,20,10\n").starts_with("p.csv:2: column `gpu_milli`"));
        assert!(pai("9999999,1000,10,20,10\n").starts_with("p.csv:2: column `num_gpu`"));
        assert!(pai("1,1000,inf,20,10\n").starts_with("p.csv:2: column `creation_time`"));
        assert!(pai("1,1000,10,20,soon\n").starts_with("p.csv:2: column `scheduled_time`"));
        assert!(pai("0,0,10,20,10\n1,1000,10,20,\n").contains("2 rows skipped"));
    }

    #[test]
    fn gavel_traces_count_steps_timed_through_the_table() {
        let row10 = |t: &str, steps: &str, gang: &str, at: &str| {
            format!("{t}\tpython3 train.py\tdir\t-step\t1\t{steps}\t{gang}\t1\t-1.000000\t{at}\n")
        };
        let row7 = |t: &str, steps: &str, at: &str, gang: &str| {
            format!("{t}\tcd x && python3 m.py\t-n\t1\t{steps}\t{at}\t{gang}\n")
        };
        let text = row10("A3C", "1000", "1", "0")
            + &row7("ResNet (batch size 8)", "600", "30.5", "2")
            + &row10("A3C", "50", "1", "40");
        assert_eq!(
            TraceFormatName::detect(text.lines().next().unwrap()),
            Some(TraceFormatName::Gavel)
        );
        let mut parsed = GavelTrace.parse("g.trace", &text).unwrap();
        assert!(parsed.in_steps);
        assert_eq!(parsed.job_types, ["A3C", "ResNet (batch size 8)"]);
        let j = &parsed.jobs[1];
        assert_eq!(
            (j.line, j.submit, j.duration, j.gpus, j.job_type),
            (2, 30.5, 600.0, 2, Some(1))
        );
        let table = crate::speed::ThroughputTable::from_gavel_json(
            r#"{"v100": {"('A3C', 1)": {"null": 10.0}, "('ResNet (batch size 8)', 2)": {"null": 4.0}},
                "k80": {"('A3C', 1)": {"null": 1.0}}}"#,
        )
        .unwrap();
        // Not measured on K80 with 2 GPUs: the line is named.
        let mut on_k80 = parsed.clone();
        let e = on_k80.resolve_steps("g.trace", &table, "K80").unwrap_err().to_string();
        assert!(e.starts_with("g.trace:2: the throughput table has no figure"), "{e}");
        parsed.resolve_steps("g.trace", &table, "V100").unwrap();
        assert!(!parsed.in_steps);
        let seconds: Vec<f64> = parsed.jobs.iter().map(|j| j.duration).collect();
        assert_eq!(seconds, [100.0, 150.0, 5.0]);
        let types: Vec<Option<u16>> = parsed.jobs.iter().map(|j| j.job_type).collect();
        assert_eq!(types, [Some(0), Some(1), Some(0)], "the table's indices");
        // A type the table lacks.
        let mut unknown = GavelTrace.parse("g.trace", &row10("BERT", "5", "1", "0")).unwrap();
        let e = unknown
            .resolve_steps("g.trace", &table, "V100")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("g.trace:1: column `job_type`: \"BERT\""), "{e}");
    }

    #[test]
    fn broken_gavel_rows_name_file_line_and_column() {
        let err = |text: &str| GavelTrace.parse("g.trace", text).unwrap_err().to_string();
        let ok = "A3C\tcmd\tdir\t-n\t1\t100\t1\t1\t-1\t0\n";
        let row =
            |steps: &str, gang: &str, at: &str| format!("{ok}A3C\tcmd\tdir\t-n\t1\t{steps}\t{gang}\t1\t-1\t{at}\n");
        for bad in ["0", "-5", "1.5", "NaN", "1e300", "99999999999999999999"] {
            assert!(
                err(&row(bad, "1", "0")).starts_with("g.trace:2: column `total_steps`"),
                "{bad}"
            );
        }
        for bad in ["0", "-1", "2.5", "70000", "inf"] {
            assert!(
                err(&row("10", bad, "0")).starts_with("g.trace:2: column `scale_factor`"),
                "{bad}"
            );
        }
        for bad in ["NaN", "-1", "1e300", "inf", "soon", "5e-324x"] {
            assert!(
                err(&row("10", "1", bad)).starts_with("g.trace:2: column `arrival_time`"),
                "{bad}"
            );
        }
        assert!(err(&format!("{ok}A3C\t1\t2\n")).starts_with("g.trace:2: 3 tab-separated fields"));
        assert!(err(&format!("{ok}\tcmd\tdir\t-n\t1\t100\t1\t1\t-1\t0\n")).starts_with("g.trace:2: column `job_type`"));
        let long = "x".repeat(10 << 20);
        let e = err(&format!("{long}\tcmd\tdir\t-n\t1\t100\t1\t1\t-1\t0\n"));
        assert!(
            e.starts_with("g.trace:1: column `job_type`") && e.len() < 300,
            "{} bytes",
            e.len()
        );
        assert!(err("\n\n").contains("no jobs"));
        // Many distinct types are bounded.
        let many: String = (0..=crate::speed::MAX_NAMES)
            .map(|i| format!("T{i}\tcmd\tdir\t-n\t1\t1\t1\t1\t-1\t0\n"))
            .collect();
        assert!(err(&many).contains("more than 4096 job types"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = |text: &str| PhillyCsv.parse("t.csv", text).unwrap_err().to_string();
        assert!(err("timestamp,duration,num_gpus,user\n1,1,1,a\u{1b}b\n").starts_with("t.csv:2: column `user`"));
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
