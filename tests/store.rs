//! The service's stored state end to end: a real `wsched serve` killed with
//! SIGKILL, a byte of its write-ahead log flipped, a restart that refuses
//! and names the damage (changing no file), `wsched store recover`, and a
//! restart with every acknowledged job whose record is intact back.

mod common;

use common::server::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use wsched::proto;

/// The log's segment files in a state directory.
fn segments(state: &Path) -> [PathBuf; 2] {
    [state.join("wsched.wal0"), state.join("wsched.wal1")]
}

/// Where the newest record of job `id` lies in the log (file and offset):
/// the segment with the higher generation is the newer, and its records
/// follow one another from byte 32 (length, checksum, job id, payload).
fn newest_record(state: &Path, id: u64) -> (PathBuf, u64) {
    let u64_at = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut found = None;
    let mut files: Vec<(u64, PathBuf, Vec<u8>)> = segments(state)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("segment");
            (u64_at(&bytes, 8), path, bytes)
        })
        .collect();
    files.sort_by_key(|(generation, ..)| *generation);
    for (_, path, bytes) in files {
        let mut at = 32;
        while at + 16 <= bytes.len() && bytes[at..at + 16].iter().any(|&b| b != 0) {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            if u64_at(&bytes, at + 8) == id {
                found = Some((path.clone(), at as u64));
            }
            at += 16 + len;
        }
    }
    found.unwrap_or_else(|| panic!("no record of job {id} in the log"))
}

/// The log's and the database's bytes, by file name.
fn stored(state: &Path) -> BTreeMap<String, Vec<u8>> {
    ["wsched.redb", "wsched.wal0", "wsched.wal1"]
        .into_iter()
        .map(|name| (name.to_string(), std::fs::read(state.join(name)).expect("stored file")))
        .collect()
}

/// Run `wsched ARGS --state-dir STATE` to its end (at most a minute):
/// whether it succeeded, its stdout and its stderr.
fn wsched(args: &[&str], state: &Path) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsched"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wsched");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`wsched {}` did not end in a minute", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        strip_ansi(&String::from_utf8_lossy(&output.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_refuses_the_start_and_a_recovery_loses_only_the_damaged_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut server = Server::start(&state, &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let mut acknowledged = Vec::new();
    for _ in 0..200 {
        acknowledged.push(server.submit(&mut jobs, synthetic("a", 1, 3600.0)).await);
    }
    server.kill();

    // One flipped byte in the payload of a record in the middle of the log.
    let victim = acknowledged[100];
    let (segment, at) = newest_record(&state, victim);
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes[at as usize + 16 + 3] ^= 0xff;
    std::fs::write(&segment, bytes).expect("damage");
    let before = stored(&state);

    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
        "--emulate-gpus",
        "2",
    ];
    let (started, _, stderr) = wsched(&serve, &state);
    assert!(!started, "the server started on a damaged log: {stderr}");
    for needed in [
        format!(
            "{}: the record at byte {at} (job {victim}) is damaged",
            segment.display()
        ),
        "records that check follow it".to_string(),
        format!("wsched store recover --state-dir {}", state.display()),
    ] {
        assert!(stderr.contains(&needed), "`{needed}` missing from: {stderr}");
    }
    assert!(
        stored(&state) == before,
        "the refused start changed the log or the database"
    );

    let (recovered, report, stderr) = wsched(&["store", "recover"], &state);
    assert!(recovered, "{report}{stderr}");
    assert!(report.contains(&format!("jobs lost: {victim}\n")), "{report}");
    assert!(report.contains(&format!("job {victim}: lost")), "{report}");
    let copy = report
        .lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{} -> ", segment.display())))
        .unwrap_or_else(|| panic!("no copy named: {report}"));
    assert!(
        std::fs::read(copy).expect("the copy") == before["wsched.wal0"]
            || std::fs::read(copy).expect("the copy") == before["wsched.wal1"],
        "the copy is not the damaged file as found"
    );

    let server = Server::start(&state, &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    for &id in &acknowledged {
        let got = jobs.get_job(proto::GetJobRequest { id }).await;
        if id == victim {
            assert_eq!(got.expect_err("lost").code(), Code::NotFound);
        } else {
            let job = got
                .unwrap_or_else(|e| panic!("acknowledged job {id} lost: {e}"))
                .into_inner();
            assert_eq!(job.id, id);
            assert_eq!(job.recoveries, 1, "job {id} was re-queued once");
        }
    }
    // A second recovery finds nothing to do.
    drop(server);
    let (recovered, report, _) = wsched(&["store", "recover"], &state);
    assert!(recovered && report.contains("nothing is damaged"), "{report}");
}
