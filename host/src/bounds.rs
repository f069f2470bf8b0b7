//! The documented range of every number that enters the host from outside:
//! a client's job spec, a YAML file, a trace row, or a plugin's answer.
//!
//! Why one module: a value is checked where it enters (the gRPC layer, the
//! YAML and trace readers, the validation of a plugin's decision), but the
//! limits must be the same at every edge, or a value refused over gRPC
//! would still reach the model through a trace. Each limit is chosen so
//! that everything computed from values inside it stays exact enough and
//! finite: a job's end is at most [`MAX_JOB_SECONDS`] of work slowed down
//! by at most `1 / MIN_SHARE`, which keeps every time the model computes
//! under [`MAX_TIME`], where an `f64` still resolves well under a
//! millisecond, and every conversion to a `Duration` succeeds.
//!
//! | value | range |
//! |---|---|
//! | seconds of work, expected duration, trace duration | 0 to [`MAX_JOB_SECONDS`] (about 31 years) |
//! | GPUs per job | 1 to [`MAX_GPUS_PER_JOB`] (and at most the cluster's) |
//! | share of a GPU (`gpu_fraction`, `share` actions) | [`MIN_SHARE`] to 1 |
//! | priority (spec and `set-priority`) | 0 (actions only) or more, up to [`MAX_PRIORITY`] |
//! | iterations | up to [`MAX_ITERATIONS`] |
//! | device memory per GPU | up to [`MAX_MEMORY_BYTES`] (and at most the largest GPU's) |
//! | model time (wake-ups, ticks, trace timestamps after the first) | 0 to [`MAX_TIME`] |
//! | a policy's tick interval | [`MIN_TICK`] to [`MAX_TICK`] |
//!
//! Strings from outside are bounded where they enter (names, commands);
//! when an error repeats one, it goes through [`shown`], which cuts it.

/// Longest job, in seconds of work on its full gang: about 31.7 years.
pub const MAX_JOB_SECONDS: f64 = 1e9;

/// Largest gang a job may ask for.
pub const MAX_GPUS_PER_JOB: u32 = 1 << 16;

/// Smallest share of a GPU a job may hold: below it a job would take a
/// thousand times its duration, and time would run out of resolution.
pub const MIN_SHARE: f64 = 1e-3;

/// Largest weight a job may carry.
pub const MAX_PRIORITY: f64 = 1e9;

/// Most iterations a job may declare.
pub const MAX_ITERATIONS: u64 = 1_000_000_000_000_000;

/// Most device memory per GPU a job may ask for: 1 PiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;

/// The model's time horizon, in seconds after its clock's zero: about
/// 31,700 years, where an `f64` still resolves 0.1 ms. Nothing (a wake-up,
/// a trace arrival) may be scheduled later.
pub const MAX_TIME: f64 = 1e12;

/// Shortest tick interval a policy may ask for, in seconds.
pub const MIN_TICK: f64 = 1e-3;

/// Longest tick interval a policy may ask for, in seconds.
pub const MAX_TICK: f64 = MAX_JOB_SECONDS;

/// What is wrong with `value` as a number of seconds of work, if anything.
pub fn check_job_seconds(value: f64) -> Result<(), String> {
    if value.is_finite() && (0.0..=MAX_JOB_SECONDS).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "must be a number of seconds from 0 to {MAX_JOB_SECONDS:e}, got {value}"
        ))
    }
}

/// What is wrong with `value` as a share of one GPU, if anything.
pub fn check_share(value: f64) -> Result<(), String> {
    if value.is_finite() && (MIN_SHARE..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("must be a share of a GPU from {MIN_SHARE} to 1, got {value}"))
    }
}

/// What is wrong with `value` as a job's weight, if anything (`min_exclusive`:
/// whether 0 is refused, as it is for a submitted spec).
pub fn check_priority(value: f64, min_exclusive: bool) -> Result<(), String> {
    let above_min = if min_exclusive { value > 0.0 } else { value >= 0.0 };
    if value.is_finite() && above_min && value <= MAX_PRIORITY {
        Ok(())
    } else {
        let low = if min_exclusive { "above 0" } else { "from 0" };
        Err(format!("must be a number {low} up to {MAX_PRIORITY:e}, got {value}"))
    }
}

/// What is wrong with `value` as a point of model time, if anything.
pub fn check_time(value: f64) -> Result<(), String> {
    if value.is_finite() && (0.0..=MAX_TIME).contains(&value) {
        Ok(())
    } else {
        Err(format!("must be a time from 0 to {MAX_TIME:e} seconds, got {value}"))
    }
}

/// What is wrong with `value` as a tick interval, if anything.
pub fn check_tick(value: f64) -> Result<(), String> {
    if value.is_finite() && (MIN_TICK..=MAX_TICK).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "must be a number of seconds from {MIN_TICK} to {MAX_TICK:e}, got {value}"
        ))
    }
}

/// Longest piece of outside input an error message repeats.
const MAX_SHOWN: usize = 64;

/// `value` as an error message may repeat it: quoted, and cut to a few
/// dozen characters with its length said, so that a 10 MB name never
/// comes back whole inside a status, a log line or a report.
pub fn shown(value: &str) -> String {
    if value.len() <= MAX_SHOWN {
        return format!("{value:?}");
    }
    let mut end = MAX_SHOWN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

/// A duration of `seconds`, clamped into what a `Duration` holds (never
/// panics: NaN and negative values give zero, huge ones the maximum).
pub fn duration(seconds: f64) -> std::time::Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::try_from_secs_f64(seconds).unwrap_or(std::time::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_numbers_are_refused_everywhere() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 1e20, 1e300] {
            assert!(check_job_seconds(bad).is_err(), "{bad}");
            assert!(check_share(bad).is_err(), "{bad}");
            assert!(check_priority(bad, true).is_err(), "{bad}");
            assert!(check_time(bad).is_err(), "{bad}");
            assert!(check_tick(bad).is_err(), "{bad}");
        }
        assert!(check_share(5e-324).is_err());
        assert!(check_share(1e-300).is_err());
        assert!(check_tick(5e-324).is_err());
        assert!(check_priority(0.0, true).is_err());
        assert!(check_priority(0.0, false).is_ok());
        assert!(check_job_seconds(0.0).is_ok() && check_job_seconds(5e-324).is_ok());
        assert!(check_share(1.0).is_ok() && check_share(MIN_SHARE).is_ok());
    }

    #[test]
    fn shown_values_are_cut() {
        assert_eq!(shown("abc"), "\"abc\"");
        let cut = shown(&"é".repeat(1000));
        assert!(cut.len() < 100 && cut.ends_with("(2000 bytes)"), "{cut}");
    }

    #[test]
    fn durations_never_panic() {
        assert_eq!(duration(f64::NAN), std::time::Duration::ZERO);
        assert_eq!(duration(-5.0), std::time::Duration::ZERO);
        assert_eq!(duration(1e300), std::time::Duration::MAX);
        assert_eq!(duration(f64::INFINITY), std::time::Duration::MAX);
        assert_eq!(duration(1.5), std::time::Duration::from_millis(1500));
    }

    #[test]
    fn the_slowest_job_ends_inside_the_horizon_with_time_to_spare() {
        let latest_end = MAX_TIME + MAX_JOB_SECONDS / MIN_SHARE;
        assert!(latest_end.is_finite());
        // One ulp at the horizon is far below a millisecond.
        assert!((latest_end * f64::EPSILON) < 1e-3);
    }
}
