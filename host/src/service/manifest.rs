//! Job specs from YAML, in the `apiVersion/kind/metadata/spec` shape that
//! users of Kubernetes and its batch schedulers already write:
//!
//! ```yaml
//! apiVersion: wsched.dev/v1
//! kind: Job
//! metadata:
//!   name: resnet50
//!   user: alice
//! spec:
//!   gpus: 2
//!   expectedDuration: 2h      # or seconds: 7200
//!   memoryPerGpu: 16Gi        # or bytes
//!   command: [python, train.py, --epochs, "90"]
//!   env:
//!     - {name: BATCH, value: "256"}
//!   workingDir: /data/resnet
//! ```
//!
//! or `synthetic: {seconds: 600}` instead of a command (on real GPUs also
//! `gflopsPerIteration`, and `faultAtIteration` to try the fault path).
//! Several documents
//! separated by `---` are several jobs. Unknown fields are errors (a typo
//! must not silently drop a setting), reported with the document and line.

use serde::Deserialize;

use crate::proto;
pub use crate::units::memory_bytes;
use crate::units::{Quantity, bytes, seconds};

/// The `apiVersion` this reader understands.
pub const API_VERSION: &str = "wsched.dev/v1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Manifest {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    gpus: u32,
    gpu_fraction: Option<f64>,
    priority: Option<f64>,
    expected_duration: Option<Quantity>,
    iterations: Option<u64>,
    memory_per_gpu: Option<Quantity>,
    command: Option<Vec<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    working_dir: Option<String>,
    synthetic: Option<SyntheticSpec>,
    job_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct SyntheticSpec {
    seconds: Quantity,
    gflops_per_iteration: Option<f64>,
    fault_at_iteration: Option<u64>,
}

fn to_spec(m: Manifest, default_user: &str) -> Result<proto::JobSpec, String> {
    if m.api_version != API_VERSION {
        return Err(format!("apiVersion: expected {API_VERSION}, got {:?}", m.api_version));
    }
    if m.kind != "Job" {
        return Err(format!("kind: expected Job, got {:?}", m.kind));
    }
    let s = m.spec;
    let work = match (s.command, s.synthetic) {
        (Some(_), Some(_)) => return Err("spec: give either command or synthetic, not both".into()),
        (None, None) => return Err("spec: give a command or a synthetic workload".into()),
        (Some(mut argv), None) => {
            argv.extend(s.args);
            proto::job_spec::Work::Command(proto::Command {
                argv,
                env: s.env.into_iter().map(|e| (e.name, e.value)).collect(),
                workdir: s.working_dir.unwrap_or_default(),
            })
        }
        (None, Some(synthetic)) => {
            if !s.args.is_empty() || !s.env.is_empty() || s.working_dir.is_some() {
                return Err("spec: args, env and workingDir go with a command, not a synthetic job".into());
            }
            proto::job_spec::Work::Synthetic(proto::Synthetic {
                seconds: seconds("spec.synthetic.seconds", &synthetic.seconds)?,
                gflops_per_iteration: synthetic.gflops_per_iteration,
                fault_at_iteration: synthetic.fault_at_iteration,
            })
        }
    };
    Ok(proto::JobSpec {
        name: m.metadata.name,
        user: if m.metadata.user.is_empty() {
            default_user.to_string()
        } else {
            m.metadata.user
        },
        gpus: s.gpus,
        gpu_fraction: s.gpu_fraction,
        priority: s.priority,
        expected_duration_seconds: s
            .expected_duration
            .as_ref()
            .map(|q| seconds("spec.expectedDuration", q))
            .transpose()?,
        iterations: s.iterations,
        memory_per_gpu_bytes: s
            .memory_per_gpu
            .as_ref()
            .map(|q| bytes("spec.memoryPerGpu", q))
            .transpose()?
            .unwrap_or(0),
        work: Some(work),
        job_type: s.job_type,
    })
}

/// The name a manifest gives the spec field `field` (`spec.gpu_fraction`
/// is `spec.gpuFraction`, `spec.user` is `metadata.user`).
fn yaml_field(field: &str) -> String {
    const NAMES: [(&str, &str); 11] = [
        ("spec.job_type", "spec.jobType"),
        ("spec.name", "metadata.name"),
        ("spec.user", "metadata.user"),
        ("spec.gpu_fraction", "spec.gpuFraction"),
        ("spec.expected_duration_seconds", "spec.expectedDuration"),
        ("spec.memory_per_gpu_bytes", "spec.memoryPerGpu"),
        (
            "spec.synthetic.gflops_per_iteration",
            "spec.synthetic.gflopsPerIteration",
        ),
        ("spec.synthetic.fault_at_iteration", "spec.synthetic.faultAtIteration"),
        ("spec.command.workdir", "spec.workingDir"),
        ("spec.command.env", "spec.env"),
        ("spec.command.argv", "spec.command"),
    ];
    NAMES
        .iter()
        .find_map(|(proto, yaml)| field.strip_prefix(proto).map(|rest| format!("{yaml}{rest}")))
        .unwrap_or_else(|| field.to_string())
}

/// Read every job in a YAML text (documents separated by `---`); jobs
/// without `metadata.user` belong to `default_user`. An error names the
/// document (1-based) and what is wrong.
pub fn parse(text: &str, default_user: &str) -> Result<Vec<proto::JobSpec>, String> {
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return Err("no job in the file".into());
    }
    let mut specs = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let manifest = Manifest::deserialize(document).map_err(|e| format!("document {}: {e}", i + 1))?;
        let spec = to_spec(manifest, default_user).map_err(|e| format!("document {}: {e}", i + 1))?;
        // The same checks as the server's, named as the file names them.
        super::spec::validate(&spec, "spec")
            .map_err(|e| format!("document {}: {}: {}", i + 1, yaml_field(&e.field), e.why))?;
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err("no job in the file".into());
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest_becomes_a_spec() {
        let text = r#"
apiVersion: wsched.dev/v1
kind: Job
metadata: {name: resnet50, user: alice}
spec:
  gpus: 2
  expectedDuration: 2h
  memoryPerGpu: 16Gi
  iterations: 1000
  command: [python, train.py]
  args: [--epochs, "90"]
  env: [{name: BATCH, value: "256"}]
  workingDir: /data
---
apiVersion: wsched.dev/v1
kind: Job
spec: {gpus: 1, gpuFraction: 0.5, synthetic: {seconds: 90s}}
"#;
        let specs = parse(text, "bob").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].user, "alice");
        assert_eq!(specs[0].expected_duration_seconds, Some(7200.0));
        assert_eq!(specs[0].memory_per_gpu_bytes, 16 << 30);
        let Some(proto::job_spec::Work::Command(c)) = &specs[0].work else {
            panic!()
        };
        assert_eq!(c.argv, ["python", "train.py", "--epochs", "90"]);
        assert_eq!(c.env["BATCH"], "256");
        assert_eq!(specs[1].user, "bob");
        assert_eq!(specs[1].gpu_fraction, Some(0.5));
        let Some(proto::job_spec::Work::Synthetic(s)) = &specs[1].work else {
            panic!()
        };
        assert_eq!(s.seconds, 90.0);
    }

    #[test]
    fn the_bundled_example_parses() {
        let specs = parse(include_str!("../../../examples/jobs/jobs.yaml"), "u").unwrap();
        assert_eq!(specs.len(), 3);
    }

    #[test]
    fn mistakes_are_named() {
        let base = "apiVersion: wsched.dev/v1\nkind: Job\nspec:\n  gpus: 1\n  synthetic: {seconds: 5}\n";
        let err = |text: &str| parse(text, "u").unwrap_err();
        assert!(
            err(&base.replace("gpus: 1", "gpu: 1")).contains("unknown field `gpu`"),
            "{}",
            err(&base.replace("gpus: 1", "gpu: 1"))
        );
        assert!(err(&base.replace("v1", "v9")).contains("apiVersion"));
        assert!(err(&base.replace("kind: Job", "kind: Pod")).contains("kind"));
        assert!(err(&base.replace("seconds: 5", "seconds: 5y")).contains("unknown unit"));
        assert!(
            err(&base.replace("synthetic: {seconds: 5}", "command: [a]\n  synthetic: {seconds: 5}"))
                .contains("not both")
        );
        assert!(err("").contains("no job"));
        assert!(err("spec: [").starts_with("document 1"));
        // Hostile numbers are refused by the server's own rules, named as
        // the file names them.
        for bad in ["1e20", "-1", ".nan", ".inf", "1e300"] {
            let e = err(&base.replace("seconds: 5", &format!("seconds: {bad}")));
            assert!(e.contains("spec.synthetic.seconds"), "{bad}: {e}");
        }
        let e = err(&base.replace("gpus: 1", "gpus: 1\n  gpuFraction: 1e-300"));
        assert!(e.starts_with("document 1: spec.gpuFraction"), "{e}");
        let e = err(&base.replace("gpus: 1", "gpus: 1\n  priority: .nan"));
        assert!(e.starts_with("document 1: spec.priority"), "{e}");
        let e = err(&base.replace("gpus: 1", "gpus: 0"));
        assert!(e.starts_with("document 1: spec.gpus"), "{e}");
        let long = format!(
            "apiVersion: wsched.dev/v1\nkind: Job\nmetadata: {{name: {}}}\nspec: {{gpus: 1, synthetic: {{seconds: 5}}}}\n",
            "n".repeat(100_000)
        );
        let e = err(&long);
        assert!(
            e.starts_with("document 1: metadata.name") && e.len() < 200,
            "{}",
            &e[..e.len().min(300)]
        );
    }
}
