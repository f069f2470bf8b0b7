//! The `wsched` binary as a user meets it: the main job on the bundled
//! trace, and bad input that must end in one clear line and a non-zero exit.

mod common;
use common::*;
use std::process::{Command, Output};

fn wsched(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsched"))
        .args(args)
        .output()
        .expect("run wsched")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn write_temp(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn sim_on_the_bundled_trace_writes_table_json_csv_and_plot() {
    let out = tempfile::tempdir().unwrap();
    let trace = root().join("examples/traces/philly-11cb48.csv");
    let policy = plugin_path("tiresias");
    let o = wsched(&[
        "sim",
        "--trace",
        trace.to_str().unwrap(),
        "--gpus",
        "64",
        "--policy",
        policy.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for row in [
        "JCT mean",
        "JCT p99",
        "makespan",
        "GPU utilisation",
        "fairness rho max",
        "policy time per call",
    ] {
        assert!(table.contains(row), "table lacks {row}:\n{table}");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["completed"], 16_091);
    assert_eq!(summary["policy"], "tiresias");
    let csv = std::fs::read_to_string(out.path().join("jobs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 16_092);
    let svg = std::fs::read_to_string(out.path().join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Job completion time") && svg.contains("utilisation"));
    assert!(out.path().join("timing.json").exists());
}

#[test]
fn a_gavel_trace_replays_its_steps_timed_through_gavels_table() {
    let out = tempfile::tempdir().unwrap();
    let trace = root().join("examples/traces/gavel-sample.trace");
    let o = wsched(&[
        "sim",
        "--trace",
        trace.to_str().unwrap(),
        "--gpus",
        "8",
        "--policy",
        "builtin-fifo",
        "--out",
        out.path().to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["completed"], 40);
    assert!(
        summary["speed_model"].as_str().unwrap().contains("40 jobs typed"),
        "{summary}"
    );
    // The first job: 13,407,515 steps of Transformer (batch size 128) on one
    // V100, at Gavel's measured steps per second, starting at 0.
    let csv = std::fs::read_to_string(out.path().join("jobs.csv")).unwrap();
    let first: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let table = wsched::speed::ThroughputTable::from_gavel_json(wsched::speed::GAVEL).unwrap();
    let t = table
        .types()
        .iter()
        .position(|n| n == "Transformer (batch size 128)")
        .unwrap() as u16;
    let rate = table.throughput("v100", t, 1).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = |name: &str| first[header.iter().position(|h| *h == name).unwrap()];
    let duration: f64 = column("duration").parse().unwrap();
    assert!((duration - 13_407_515.0 / rate).abs() < 1e-3 * duration, "{duration}");
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = plugin_path("fifo");
    let fifo = fifo.to_str().unwrap();
    let good_trace = write_temp(dir.path(), "ok.csv", b"timestamp,duration,num_gpus\n0,10,1\n");
    let bad_row = write_temp(dir.path(), "bad.csv", b"timestamp,duration,num_gpus\n0,10,1\n5,ten,1\n");
    let core = write_temp(dir.path(), "core.wasm", b"\0asm\x01\0\0\0");
    let other_world = write_temp(dir.path(), "other.wasm", b"(component)");
    let text = write_temp(dir.path(), "notes.txt", b"not a plugin");
    let bad_gavel = write_temp(
        dir.path(),
        "bad.trace",
        b"A3C\tcmd\tdir\t-n\t1\t100\t1\t1\t-1\t0\nA3C\tcmd\tdir\t-n\t1\t100\t0\t1\t-1\t5\n",
    );
    let unknown_type = write_temp(
        dir.path(),
        "unknown.trace",
        b"BERT\tcmd\tdir\t-n\t1\t100\t1\t1\t-1\t0\n",
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--trace", &bad_gavel, "--policy", fifo],
            format!("{bad_gavel}:2: column `scale_factor`"),
        ),
        (
            vec!["--trace", &unknown_type, "--policy", fifo],
            format!("{unknown_type}:1: column `job_type`: \"BERT\" is not a type of the throughput table"),
        ),
        (
            vec!["--trace", &bad_row, "--policy", fifo],
            format!("{bad_row}:3: column `duration`: \"ten\" is not a number"),
        ),
        (
            vec!["--trace", "/nonexistent.csv", "--policy", fifo],
            "cannot read trace /nonexistent.csv".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", "/nonexistent.wasm"],
            "/nonexistent.wasm: No such file".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", &core],
            format!("{core}: is a core WebAssembly module"),
        ),
        (
            vec!["--trace", &good_trace, "--policy", &other_world],
            "does not export `wsched:policy/policy@0.1.0`".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", &text],
            format!("{text}: is not a WebAssembly component"),
        ),
        (
            vec!["--trace", &good_trace, "--policy", fifo, "--config", "x=1"],
            "fifo takes no configuration".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", fifo, "--swap", "soon=x.wasm"],
            "is not a time in seconds".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", fifo, "--restart-cost", "-1"],
            "--restart-cost: must be `checkpoint`, `host-memory` or seconds from 0 to 1e9, got \"-1\"".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", fifo, "--restart-cost", "NaN"],
            "--restart-cost: must be `checkpoint`, `host-memory` or seconds from 0 to 1e9, got \"NaN\"".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", fifo, "--interference", "5e-324"],
            "--interference: must be in [0.01, 1], got 5e-324".into(),
        ),
        (
            vec!["--trace", &good_trace, "--policy", fifo, "--colocation", "packed"],
            "--colocation: must be `time-slice` or `measured`, got \"packed\"".into(),
        ),
        (
            vec![
                "--trace",
                &good_trace,
                "--policy",
                fifo,
                "--colocation",
                "time-slice",
                "--interference",
                "0.5",
            ],
            "--interference: only with --colocation measured".into(),
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["sim", "--gpus", "4", "-q"];
        full.extend(args);
        let o = wsched(&full);
        let err = stderr(&o);
        assert!(!o.status.success(), "{full:?} should fail");
        assert!(err.contains(&expected), "{full:?}: stderr `{err}` lacks `{expected}`");
        assert_eq!(err.lines().count(), 1, "{full:?}: one line, got:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn several_policies_are_compared_side_by_side() {
    let out = tempfile::tempdir().unwrap();
    let trace = root().join("examples/traces/philly-11cb48.csv");
    let gavel = format!("{}@round=600", plugin_path("gavel").display());
    let tiresias = plugin_path("tiresias");
    let o = wsched(&[
        "sim",
        "--trace",
        trace.to_str().unwrap(),
        "--gpus",
        "64",
        "--policy",
        "builtin-fifo",
        "--policy",
        tiresias.to_str().unwrap(),
        "--policy",
        &gavel,
        "--out",
        out.path().to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("builtin-fifo") && header.contains("tiresias") && header.contains("gavel"),
        "{table}"
    );
    let mean = table
        .lines()
        .find(|l| l.starts_with("JCT mean vs builtin-fifo"))
        .unwrap();
    assert!(mean.contains("1.00x") && mean.contains("0.39x"), "{mean}");
    for sub in ["builtin-fifo", "tiresias", "gavel"] {
        assert!(out.path().join(sub).join("summary.json").exists(), "{sub}");
    }
    let svg = std::fs::read_to_string(out.path().join("compare.svg")).unwrap();
    assert!(svg.contains(">gavel<") && svg.contains(">tiresias<"));
}

#[test]
fn policy_check_passes_every_example_and_names_what_a_bad_plugin_did() {
    for name in ["fifo", "sjf", "tiresias", "gandiva", "gavel"] {
        let path = plugin_path(name);
        let o = wsched(&["policy", "check", path.to_str().unwrap()]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{name}:\n{out}\n{}", stderr(&o));
        assert!(out.contains("exports   wsched:policy/policy@0.1.0"), "{out}");
        assert!(out.contains("6 passed, 0 failed"), "{out}");
        assert!(out.contains("per call  p50"), "{out}");
    }
    let hostile = plugin_path("hostile");
    let o = wsched(&["policy", "check", hostile.to_str().unwrap(), "--config", "mode=invalid"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(out.contains("FAIL  arrivals-and-finishes"), "{out}");
    assert!(
        out.contains("rejected start(job 18446744073709551615, gpus [0]): unknown job"),
        "{out}"
    );
    assert!(stderr(&o).contains("scenario(s) failed"));
    let o = wsched(&[
        "policy",
        "check",
        hostile.to_str().unwrap(),
        "--config",
        "mode=init-fail",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("init refused on purpose"), "{}", stderr(&o));
}

#[test]
fn sweeps_over_sizes_and_loads_run_in_parallel_and_match_single_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = root().join("examples/traces/philly-11cb48.csv");
    let trace = trace.to_str().unwrap();
    let fifo = plugin_path("fifo");
    let fifo = fifo.to_str().unwrap();
    let out = dir.path().join("sweep");
    let o = wsched(&[
        "sim",
        "--trace",
        trace,
        "-q",
        "--policy",
        "builtin-fifo",
        "--policy",
        fifo,
        "--gpus",
        "32",
        "--gpus",
        "64",
        "--load-scale",
        "1",
        "--load-scale",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("builtin-fifo") && table.contains("2x"), "{table}");
    let csv = std::fs::read_to_string(out.join("sweep.csv")).expect("sweep.csv");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 8, "{csv}");
    assert!(rows[0].starts_with("builtin-fifo,32,1,"), "{csv}");
    assert!(
        std::fs::read_to_string(out.join("sweep.svg"))
            .expect("svg")
            .contains("p99 JCT")
    );
    // A point of the sweep is the very replay a single run gives.
    let single = dir.path().join("single");
    let o = wsched(&[
        "sim",
        "--trace",
        trace,
        "-q",
        "--policy",
        fifo,
        "--gpus",
        "64",
        "--load-scale",
        "2",
        "--out",
        single.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["summary.json", "jobs.csv"] {
        assert_eq!(
            std::fs::read(out.join("fifo-g64-x2").join(file)).expect("sweep point"),
            std::fs::read(single.join(file)).expect("single run"),
            "{file}"
        );
    }
    // Loads out of range are refused before anything runs.
    for bad in ["0", "-1", "NaN", "inf", "1e300"] {
        let load = format!("--load-scale={bad}");
        let o = wsched(&[
            "sim",
            "--trace",
            trace,
            "-q",
            "--policy",
            "builtin-fifo",
            "--gpus",
            "8",
            &load,
        ]);
        assert!(!o.status.success(), "{bad}");
        assert!(stderr(&o).contains("--load-scale"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn a_cluster_description_replaces_gpus_and_the_shorthand_is_the_same_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let trace = root().join("examples/traces/philly-11cb48.csv");
    let trace = trace.to_str().unwrap();
    let same = write_temp(
        dir.path(),
        "same.yaml",
        b"apiVersion: wsched.dev/v1\nkind: Cluster\nspec:\n  nodeGroups:\n    \
          - {nodes: 8, gpusPerNode: 8, gpuKind: V100, memoryPerGpu: 16Gi}\n",
    );
    let replay = |cluster: &[&str], out: &str| {
        let mut args = vec!["sim", "--trace", trace, "--policy", "builtin-fifo", "--out", out, "-q"];
        args.extend(cluster);
        let o = wsched(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{out}/summary.json")).unwrap()).unwrap();
        (summary, std::fs::read(format!("{out}/jobs.csv")).unwrap())
    };
    let (a, jobs_a) = replay(&["--gpus", "64"], &format!("{}/a", dir.path().display()));
    let (b, jobs_b) = replay(&["--cluster", &same], &format!("{}/b", dir.path().display()));
    assert_eq!(a["cluster"], "64 V100 on 8 nodes");
    assert_eq!(a, b, "a description of the shorthand's cluster replays the same");
    assert!(jobs_a == jobs_b, "jobs.csv differs");

    let gavel = root().join("examples/clusters/gavel-108.yaml");
    let (h, _) = replay(
        &["--cluster", gavel.to_str().unwrap()],
        &format!("{}/h", dir.path().display()),
    );
    assert_eq!(
        (h["gpus"].as_u64(), h["cluster"].as_str()),
        (Some(108), Some("36 V100 + 36 P100 + 36 K80 on 27 nodes"))
    );
    assert_eq!(h["completed"], 16_091);

    // Bad clusters: one clear line each.
    let zero_nodes = write_temp(
        dir.path(),
        "zero.yaml",
        b"apiVersion: wsched.dev/v1\nkind: Cluster\nspec:\n  nodeGroups:\n    \
          - {nodes: 0, gpusPerNode: 8, gpuKind: V100, memoryPerGpu: 16Gi}\n",
    );
    for (args, expected) in [
        (
            vec!["--cluster", zero_nodes.as_str()],
            "spec.nodeGroups[0].nodes: must be at least 1",
        ),
        (vec!["--cluster", "/dev/zero"], "not a regular file"),
        (
            vec!["--cluster", "/nonexistent.yaml"],
            "cannot read the cluster description /nonexistent.yaml",
        ),
        (vec!["--gpus", "0"], "--gpus: must be 1 to 65536, got 0"),
        (vec!["--gpus", "70000"], "--gpus: must be 1 to 65536, got 70000"),
        (
            vec!["--gpus", "8", "--gpus-per-node", "0"],
            "--gpus-per-node: must be 1 to 1024, got 0",
        ),
    ] {
        let mut full = vec!["sim", "--trace", trace, "--policy", "builtin-fifo", "-q"];
        full.extend(args);
        let o = wsched(&full);
        let err = stderr(&o);
        assert!(!o.status.success(), "{full:?} should fail");
        assert!(err.contains(expected), "{full:?}: stderr `{err}` lacks `{expected}`");
        assert_eq!(err.lines().count(), 1, "{full:?}: one line, got:\n{err}");
    }
    let o = wsched(&[
        "sim",
        "--trace",
        trace,
        "--policy",
        "builtin-fifo",
        "--gpus",
        "8",
        "--cluster",
        &same,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("cannot be used with"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn helios_acme_and_alibaba_traces_replay_and_say_what_they_skipped() {
    for (file, jobs, note) in [
        ("helios-sample.csv", 6, "2 rows of"),
        ("acme-sample.csv", 5, "1 rows of"),
        ("alibaba-pai-sample.csv", 5, "skipped (never scheduled)"),
    ] {
        let trace = root().join("examples/traces").join(file);
        let o = wsched(&[
            "sim",
            "--trace",
            trace.to_str().unwrap(),
            "--gpus",
            "8",
            "--policy",
            "builtin-fifo",
            "--json",
        ]);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["jobs"], jobs, "{file}");
        assert!(stderr(&o).contains(note), "{file}: {}", stderr(&o));
    }
    // Told the wrong format: one line naming the missing column.
    let acme = root().join("examples/traces/acme-sample.csv");
    let o = wsched(&[
        "sim",
        "--trace",
        acme.to_str().unwrap(),
        "--trace-format",
        "alibaba-pai",
        "--gpus",
        "8",
        "--policy",
        "builtin-fifo",
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains(":1: the header has no `creation_time` column"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn measured_throughputs_leave_a_reference_cluster_unchanged_and_slow_other_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let trace = root().join("examples/traces/philly-11cb48.csv");
    let trace = trace.to_str().unwrap();
    let gavel = root().join("examples/clusters/gavel-108.yaml");
    let gavel = gavel.to_str().unwrap();
    let replay = |extra: &[&str], out: &str| {
        let mut args = vec!["sim", "--trace", trace, "--policy", "builtin-fifo", "--out", out, "-q"];
        args.extend(extra);
        let o = wsched(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{out}/summary.json")).unwrap()).unwrap();
        (summary, std::fs::read(format!("{out}/jobs.csv")).unwrap())
    };
    let at = |name: &str| format!("{}/{name}", dir.path().display());
    // 64 V100s on one node, the reference kind: every job runs as without
    // a table.
    let one_node = ["--gpus", "64", "--gpus-per-node", "64"];
    let (plain, plain_jobs) = replay(&one_node, &at("plain"));
    let (typed, typed_jobs) = replay(&[&one_node[..], &["--throughputs", "gavel"]].concat(), &at("typed"));
    assert!(plain_jobs == typed_jobs, "jobs.csv differs on the reference kind");
    assert_eq!(plain["jct"], typed["jct"]);
    // Eight to a node, FIFO (which takes the lowest free GPUs) spreads
    // gangs over nodes, and spread gangs run at Gavel's unconsolidated
    // throughputs.
    let mean = |s: &serde_json::Value| s["jct"]["mean"].as_f64().unwrap();
    let (packed, _) = replay(&["--gpus", "64"], &at("packed"));
    let (spread, _) = replay(&["--gpus", "64", "--throughputs", "gavel"], &at("spread"));
    assert!(mean(&spread) > mean(&packed), "{} vs {}", mean(&spread), mean(&packed));
    assert_eq!(plain["speed_model"], "linear");
    let model = typed["speed_model"].as_str().unwrap();
    assert!(
        model.starts_with("measured throughputs (26 job types), reference V100"),
        "{model}"
    );
    // With P100s and K80s, jobs that land on them are slower.
    let (flat, _) = replay(&["--cluster", gavel], &at("flat"));
    let (measured, _) = replay(&["--cluster", gavel, "--throughputs", "gavel"], &at("measured"));
    assert!(mean(&measured) > mean(&flat), "{} vs {}", mean(&measured), mean(&flat));
    // A table file that is not one, or a reference kind it lacks: one line.
    let bad = write_temp(dir.path(), "bad.json", b"{\"v100\": {\"ResNet\": {\"null\": 1}}}");
    for (extra, expected) in [
        (vec!["--throughputs", bad.as_str()], "is not ('job type', GPUs)"),
        (vec!["--throughputs", "/dev/zero"], "not a regular file"),
        (
            vec!["--throughputs", "gavel", "--reference-gpu", "H200"],
            "has no GPU kind \"H200\"",
        ),
    ] {
        let mut args = vec!["sim", "--trace", trace, "--gpus", "8", "--policy", "builtin-fifo", "-q"];
        args.extend(extra);
        let o = wsched(&args);
        let err = stderr(&o);
        assert!(!o.status.success() && err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
