//! What a valid job spec is, checked the same way at every edge: a gRPC
//! request, a YAML file read by the command line, and a record read back
//! from the database at start.
//!
//! Why one checker for three edges: a spec refused over gRPC must not reach
//! the model another way (an older server's record, a file), and an error
//! must name the field as the user wrote it (`spec.synthetic.seconds` in a
//! request, `spec.synthetic.seconds` or `spec.expectedDuration` in YAML).
//! Numbers are held to [`crate::bounds`]; strings to the limits below, so
//! that a spec can neither exhaust memory nor fail later, at the start of
//! its process, for a reason that was visible at submission. What needs
//! the server's file system (does the working directory exist?) is
//! checked by [`check_on_server`], on the server only.

use std::fmt;
use std::path::Path;

use crate::bounds;
use crate::proto;
use crate::proto::job_spec::Work;

/// Longest job name or user name, in bytes.
pub const MAX_NAME: usize = 256;

/// Longest single argument, environment name or value, in bytes (Linux
/// refuses longer ones when it starts the program: `MAX_ARG_STRLEN`).
pub const MAX_ARG_BYTES: usize = 128 * 1024 - 1;

/// Most bytes of a command's arguments and environment together (Linux's
/// limit for both is a quarter of the stack limit, 2 MiB by default).
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Most arguments, or environment variables, of one command.
pub const MAX_COMMAND_ITEMS: usize = 4096;

/// Longest working directory, in bytes (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Largest synthetic iteration accepted: about a minute on today's GPUs.
pub const MAX_GFLOPS_PER_ITERATION: f64 = 1.0e6;

/// A field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's full name (`spec.gpus`, `specs[3].synthetic.seconds`).
    pub field: String,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

impl std::error::Error for FieldError {}

pub use crate::bounds::shown;

/// What is wrong with a name or user field, if anything.
pub fn check_name(value: &str, required: bool) -> Result<(), String> {
    if required && value.trim().is_empty() {
        return Err("required".into());
    }
    if value.len() > MAX_NAME {
        return Err(format!("{} bytes, longer than {MAX_NAME}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// Check a job spec as far as it can be without the cluster or the
/// server's file system (the scheduler checks the GPU count and memory
/// against its GPUs). `field` is where the spec sits (`spec`, `specs[3]`),
/// so that an error names the field as the client wrote it.
pub fn validate(spec: &proto::JobSpec, field: &str) -> Result<(), FieldError> {
    let bad = |name: &str, why: String| FieldError {
        field: format!("{field}.{name}"),
        why,
    };
    check_name(&spec.name, false).map_err(|why| bad("name", why))?;
    check_name(&spec.user, true).map_err(|why| bad("user", why))?;
    if spec.gpus == 0 || spec.gpus > bounds::MAX_GPUS_PER_JOB {
        return Err(bad(
            "gpus",
            format!("must be from 1 to {}, got {}", bounds::MAX_GPUS_PER_JOB, spec.gpus),
        ));
    }
    if let Some(f) = spec.gpu_fraction {
        bounds::check_share(f).map_err(|why| bad("gpu_fraction", why))?;
        if spec.gpus != 1 {
            return Err(bad("gpu_fraction", "only for jobs of 1 GPU".into()));
        }
    }
    if let Some(p) = spec.priority {
        bounds::check_priority(p, true).map_err(|why| bad("priority", why))?;
    }
    if let Some(t) = &spec.job_type {
        check_name(t, true).map_err(|why| bad("job_type", why))?;
    }
    if let Some(d) = spec.expected_duration_seconds {
        bounds::check_job_seconds(d).map_err(|why| bad("expected_duration_seconds", why))?;
    }
    if let Some(n) = spec.iterations
        && !(1..=bounds::MAX_ITERATIONS).contains(&n)
    {
        return Err(bad(
            "iterations",
            format!("must be from 1 to {}, got {n}", bounds::MAX_ITERATIONS),
        ));
    }
    if spec.memory_per_gpu_bytes > bounds::MAX_MEMORY_BYTES {
        return Err(bad(
            "memory_per_gpu_bytes",
            format!(
                "must be at most {} bytes (1 PiB), got {}",
                bounds::MAX_MEMORY_BYTES,
                spec.memory_per_gpu_bytes
            ),
        ));
    }
    match &spec.work {
        None => return Err(bad("work", "set either command or synthetic".into())),
        Some(Work::Command(c)) => validate_command(c).map_err(|(name, why)| bad(&name, why))?,
        Some(Work::Synthetic(s)) => {
            bounds::check_job_seconds(s.seconds).map_err(|why| bad("synthetic.seconds", why))?;
            if let Some(g) = s.gflops_per_iteration
                && !(g.is_finite() && g > 0.0 && g <= MAX_GFLOPS_PER_ITERATION)
            {
                return Err(bad(
                    "synthetic.gflops_per_iteration",
                    format!("must be in (0, {MAX_GFLOPS_PER_ITERATION}], got {g}"),
                ));
            }
            match s.fault_at_iteration {
                Some(0) => return Err(bad("synthetic.fault_at_iteration", "iterations count from 1".into())),
                Some(n) if n > bounds::MAX_ITERATIONS => {
                    return Err(bad(
                        "synthetic.fault_at_iteration",
                        format!("must be at most {}", bounds::MAX_ITERATIONS),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// What is wrong with a command, if anything: the field (under `command.`)
/// and why.
fn validate_command(c: &proto::Command) -> Result<(), (String, String)> {
    let at = |name: &str| format!("command.{name}");
    let Some(program) = c.argv.first() else {
        return Err((at("argv"), "empty: give at least the program".into()));
    };
    if program.is_empty() {
        return Err((at("argv[0]"), "the program is empty".into()));
    }
    if c.argv.len() > MAX_COMMAND_ITEMS {
        return Err((
            at("argv"),
            format!("{} arguments, at most {MAX_COMMAND_ITEMS}", c.argv.len()),
        ));
    }
    if c.env.len() > MAX_COMMAND_ITEMS {
        return Err((
            at("env"),
            format!("{} variables, at most {MAX_COMMAND_ITEMS}", c.env.len()),
        ));
    }
    let mut total = 0usize;
    for (i, arg) in c.argv.iter().enumerate() {
        check_arg(arg).map_err(|why| (at(&format!("argv[{i}]")), why))?;
        total = total.saturating_add(arg.len() + 1);
    }
    for (name, value) in &c.env {
        let field = at(&format!("env[{}]", shown(name)));
        if name.is_empty() || name.contains('=') {
            return Err((field, "names must be non-empty and without '='".into()));
        }
        check_arg(name).map_err(|why| (field.clone(), why))?;
        check_arg(value).map_err(|why| (field, why))?;
        total = total.saturating_add(name.len() + value.len() + 2);
    }
    if total > MAX_COMMAND_BYTES {
        return Err((
            at("argv"),
            format!("arguments and environment take {total} bytes, at most {MAX_COMMAND_BYTES}"),
        ));
    }
    if !c.workdir.is_empty() {
        if c.workdir.len() > MAX_PATH_BYTES {
            return Err((
                at("workdir"),
                format!("{} bytes, longer than {MAX_PATH_BYTES}", c.workdir.len()),
            ));
        }
        if c.workdir.contains('\0') {
            return Err((at("workdir"), "contains a NUL byte".into()));
        }
        if !c.workdir.starts_with('/') {
            return Err((at("workdir"), format!("{}: give an absolute path", shown(&c.workdir))));
        }
    }
    Ok(())
}

fn check_arg(value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if value.len() > MAX_ARG_BYTES {
        return Err(format!("{} bytes, longer than {MAX_ARG_BYTES}", value.len()));
    }
    Ok(())
}

/// What the server itself must allow or find for a spec: command jobs at
/// all, the working directory, the program. Checked at submission so that
/// the error comes back to the client, not later as a failed start.
#[derive(Debug, Clone, Default)]
pub struct ServerChecks {
    /// The server runs no command jobs (`--no-command-jobs`).
    pub no_command_jobs: bool,
}

/// Why the server cannot run `spec`, if it cannot (blocking: it looks at
/// the file system; call it off async workers).
pub fn check_on_server(spec: &proto::JobSpec, field: &str, checks: &ServerChecks) -> Result<(), FieldError> {
    let Some(Work::Command(c)) = &spec.work else {
        return Ok(());
    };
    let bad = |name: &str, why: String| FieldError {
        field: format!("{field}.command.{name}"),
        why,
    };
    if checks.no_command_jobs {
        return Err(FieldError {
            field: format!("{field}.command"),
            why: "this server runs no command jobs (it was started with --no-command-jobs)".into(),
        });
    }
    if !c.workdir.is_empty() {
        match std::fs::metadata(&c.workdir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(bad("workdir", format!("{} is not a directory", shown(&c.workdir)))),
            Err(e) => return Err(bad("workdir", format!("{}: {e}", shown(&c.workdir)))),
        }
    }
    let program = c.argv.first().map(String::as_str).unwrap_or_default();
    if program.contains('/') {
        // Relative to the job's working directory, as the job will run it.
        let path = match (Path::new(program).is_absolute(), c.workdir.is_empty()) {
            (false, false) => Path::new(&c.workdir).join(program),
            _ => Path::new(program).to_path_buf(),
        };
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(bad("argv[0]", format!("{} is not a file", shown(program)))),
            Err(e) => return Err(bad("argv[0]", format!("{}: {e}", shown(program)))),
        }
    } else {
        let search = c
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        let found = search
            .split(':')
            .filter(|dir| !dir.is_empty())
            .any(|dir| Path::new(dir).join(program).is_file());
        if !found {
            return Err(bad(
                "argv[0]",
                format!("{} is not found in the PATH the job would have", shown(program)),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(gpus: u32, seconds: f64) -> proto::JobSpec {
        proto::JobSpec {
            user: "alice".into(),
            gpus,
            work: Some(Work::Synthetic(proto::Synthetic {
                seconds,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn command(argv: &[&str], workdir: &str) -> proto::JobSpec {
        proto::JobSpec {
            work: Some(Work::Command(proto::Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                workdir: workdir.into(),
                ..Default::default()
            })),
            ..synthetic(1, 1.0)
        }
    }

    fn field_of(spec: &proto::JobSpec) -> String {
        validate(spec, "spec").expect_err("refused").field
    }

    #[test]
    fn every_hostile_number_is_refused_naming_its_field() {
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e20, 1e300] {
            assert_eq!(field_of(&synthetic(1, bad)), "spec.synthetic.seconds", "{bad}");
            let with = |f: &dyn Fn(&mut proto::JobSpec)| {
                let mut spec = synthetic(1, 1.0);
                f(&mut spec);
                field_of(&spec)
            };
            assert_eq!(with(&|s| s.gpu_fraction = Some(bad)), "spec.gpu_fraction");
            assert_eq!(with(&|s| s.priority = Some(bad)), "spec.priority");
            assert_eq!(
                with(&|s| s.expected_duration_seconds = Some(bad)),
                "spec.expected_duration_seconds"
            );
        }
        let mut spec = synthetic(1, 1.0);
        spec.gpu_fraction = Some(5e-324);
        assert_eq!(field_of(&spec), "spec.gpu_fraction");
        assert_eq!(field_of(&synthetic(0, 1.0)), "spec.gpus");
        assert_eq!(field_of(&synthetic(u32::MAX, 1.0)), "spec.gpus");
        let mut spec = synthetic(1, 1.0);
        spec.iterations = Some(u64::MAX);
        assert_eq!(field_of(&spec), "spec.iterations");
        let mut spec = synthetic(1, 1.0);
        spec.memory_per_gpu_bytes = u64::MAX;
        assert_eq!(field_of(&spec), "spec.memory_per_gpu_bytes");
        assert!(validate(&synthetic(2, 10.0), "spec").is_ok());
    }

    #[test]
    fn hostile_strings_are_refused_and_never_echoed_whole() {
        let huge = "x".repeat(10 << 20);
        let mut spec = synthetic(1, 1.0);
        spec.name = huge.clone();
        let error = validate(&spec, "spec").unwrap_err();
        assert_eq!(error.field, "spec.name");
        assert!(error.to_string().len() < 200, "{error}");
        assert_eq!(field_of(&command(&["/bin/true", &huge], "")), "spec.command.argv[1]");
        assert_eq!(field_of(&command(&["/bin/true"], "/tmp\0x")), "spec.command.workdir");
        assert_eq!(field_of(&command(&["/bin/true"], "relative")), "spec.command.workdir");
        let many: Vec<String> = (0..20).map(|_| "y".repeat(100_000)).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(field_of(&command(&many, "")), "spec.command.argv");
        let mut spec = command(&["/bin/true"], "");
        if let Some(Work::Command(c)) = &mut spec.work {
            c.env.insert(huge.clone(), "v".into());
        }
        let error = validate(&spec, "spec").unwrap_err();
        assert!(error.field.starts_with("spec.command.env["), "{error}");
        assert!(error.to_string().len() < 300, "{}", error.to_string().len());
    }

    #[test]
    fn the_server_finds_what_the_job_would_miss_at_its_start() {
        let checks = ServerChecks::default();
        let check = |spec: &proto::JobSpec| check_on_server(spec, "spec", &checks).map_err(|e| e.field);
        assert_eq!(check(&command(&["true"], "")), Ok(()));
        assert_eq!(check(&command(&["/bin/true"], "/")), Ok(()));
        assert_eq!(
            check(&command(&["/bin/true"], "/no/such/dir")),
            Err("spec.command.workdir".into())
        );
        assert_eq!(
            check(&command(&["no-such-program-anywhere"], "")),
            Err("spec.command.argv[0]".into())
        );
        assert_eq!(
            check(&command(&["/no/such/program"], "")),
            Err("spec.command.argv[0]".into())
        );
        let off = ServerChecks { no_command_jobs: true };
        assert_eq!(
            check_on_server(&command(&["true"], ""), "spec", &off).map_err(|e| e.field),
            Err("spec.command".into())
        );
        assert_eq!(check_on_server(&synthetic(1, 1.0), "spec", &off), Ok(()));
    }
}
