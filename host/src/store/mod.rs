//! Durable state of a long-running scheduler: every acknowledged job, the
//! loaded plugins and the active policy, in one embedded database file.
//!
//! Why an embedded database: the promise to operators is that an
//! acknowledged job survives `kill -9` and a power cut, which needs atomic,
//! fsynced commits and a file that is never left half-written. redb gives
//! exactly that (copy-on-write B-trees, checksummed commits) with no server
//! to install. Only the hot path, job records, goes through a small log of
//! our own first ([`wal`]), for the cost of its commits.
//!
//! Jobs are stored as the service's own `Job` message (protobuf bytes), so
//! the record format is the one in `proto/`, not a second definition. Many
//! changes go into one commit ([`Store::commit`]): the service commits once
//! per turn of its loop, which is what lets thousands of submissions a
//! second share one sync. Job records go through a write-ahead log first
//! ([`wal`]), whose appends cost a fraction of a database commit, and reach
//! the database in bulk.

pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::proto;

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_EPOCH: &str = "epoch";
const META_ACTIVE: &str = "active-policy";
const META_NEXT_ID: &str = "next-id";

/// The policy that was active, to make active again after a restart.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivePolicyRecord {
    /// A loaded plugin's name, or `builtin-fifo`.
    pub name: String,
    /// The config its instance was started with.
    pub config: String,
}

/// Changes to write in one commit.
#[derive(Debug, Default)]
pub struct Batch {
    /// Jobs to write (insert or replace).
    pub jobs: Vec<proto::Job>,
    /// Ended jobs to delete, by id (written after `jobs`, so a deletion
    /// wins over a record of the same job in the same batch).
    pub expired: Vec<u64>,
    /// Plugins to store: name and component bytes.
    pub plugins: Vec<(String, Vec<u8>)>,
    /// Plugins to forget.
    pub unload: Vec<String>,
    /// A new active policy.
    pub active: Option<ActivePolicyRecord>,
    /// The lowest job id not yet given out, stored when the newest job is
    /// deleted, so that a restart never gives its id out again.
    pub next_id: Option<u64>,
}

impl Batch {
    /// Add `later`'s changes after this batch's, as if committed after it.
    pub fn merge(&mut self, later: Batch) {
        for (name, bytes) in later.plugins {
            self.unload.retain(|n| *n != name);
            self.plugins.retain(|(n, _)| *n != name);
            self.plugins.push((name, bytes));
        }
        for name in later.unload {
            self.plugins.retain(|(n, _)| *n != name);
            if !self.unload.contains(&name) {
                self.unload.push(name);
            }
        }
        // Jobs are written in order, so a later record of a job wins. An
        // expired job has no later records (it is gone from the model).
        self.jobs.extend(later.jobs);
        self.expired.extend(later.expired);
        if later.active.is_some() {
            self.active = later.active;
        }
        self.next_id = self.next_id.max(later.next_id);
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.expired.is_empty()
            && self.plugins.is_empty()
            && self.unload.is_empty()
            && self.active.is_none()
            && self.next_id.is_none()
    }
}

/// Everything stored, as read at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// When the service's clock started (seconds since the Unix epoch);
    /// `None` on a new database.
    pub epoch: Option<f64>,
    /// Every job, by id.
    pub jobs: Vec<proto::Job>,
    /// Loaded plugins: name and bytes.
    pub plugins: Vec<(String, Vec<u8>)>,
    /// The policy that was active.
    pub active: Option<ActivePolicyRecord>,
    /// No job id below this may be given out (deleted jobs' ids among
    /// them); `None` when no newest job was ever deleted.
    pub next_id: Option<u64>,
}

/// The database file and the log in front of it.
pub struct Store {
    db: Arc<Database>,
    log: wal::Log,
    path: PathBuf,
}

/// Write job records into the jobs table in one transaction (an empty
/// record, a tombstone, deletes its job).
fn write_jobs(db: &Database, jobs: &wal::Records) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(JOBS)?;
        for (id, bytes) in jobs {
            if bytes.is_empty() {
                table.remove(id)?; // a tombstone
            } else {
                table.insert(id, bytes.as_slice())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

impl Store {
    /// Open (or create) the database at `path` and its log beside it
    /// (`.wal0`, `.wal1`). A database left by a crash is recovered by redb on
    /// open; then the log's records are replayed into it.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::create(path).with_context(|| format!("cannot open the database {}", path.display()))?;
        // Create the tables so that reads of a new database find them.
        let txn = db.begin_write()?;
        txn.open_table(JOBS)?;
        txn.open_table(PLUGINS)?;
        txn.open_table(META)?;
        txn.commit()?;
        // The log is opened after the database, whose file lock keeps a
        // second server off both.
        let db = Arc::new(db);
        let checkpoint_db = db.clone();
        let checkpoint: wal::CheckpointFn = Arc::new(move |jobs: &wal::Records| {
            write_jobs(&checkpoint_db, jobs).context("cannot checkpoint job records into the database")
        });
        let logs = [path.with_extension("wal0"), path.with_extension("wal1")];
        let (log, replayed) = wal::Log::open([&logs[0], &logs[1]], checkpoint)?;
        if replayed > 0 {
            tracing::info!(records = replayed, "job records replayed from the write-ahead log");
        }
        Ok(Store {
            db,
            log,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read back everything stored when the store was opened (call it before
    /// the first [`Store::commit`]). A record that does not decode is an
    /// error naming it, rather than a job silently dropped.
    pub fn recover(&self) -> anyhow::Result<Recovered> {
        let txn = self.db.begin_read()?;
        let mut recovered = Recovered::default();
        let meta = txn.open_table(META)?;
        // An 8-byte value under `key`; an error naming `what` if it is not.
        let eight_bytes = |key: &str, what: &str| -> anyhow::Result<Option<[u8; 8]>> {
            let Some(value) = meta.get(key)? else { return Ok(None) };
            let bytes = value
                .value()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{}: the stored {what} is corrupt", self.path.display()))?;
            Ok(Some(bytes))
        };
        recovered.epoch = eight_bytes(META_EPOCH, "epoch")?.map(f64::from_le_bytes);
        recovered.next_id = eight_bytes(META_NEXT_ID, "next job id")?.map(u64::from_le_bytes);
        if let Some(active) = meta.get(META_ACTIVE)? {
            recovered.active = Some(
                serde_json::from_slice(active.value())
                    .with_context(|| format!("{}: the stored active policy is corrupt", self.path.display()))?,
            );
        }
        for row in txn.open_table(JOBS)?.iter()? {
            let (id, bytes) = row?;
            let job = proto::Job::decode(bytes.value())
                .with_context(|| format!("{}: job {} is corrupt", self.path.display(), id.value()))?;
            recovered.jobs.push(job);
        }
        for row in txn.open_table(PLUGINS)?.iter()? {
            let (name, bytes) = row?;
            recovered
                .plugins
                .push((name.value().to_string(), bytes.value().to_vec()));
        }
        Ok(recovered)
    }

    /// Record when the service's clock started; done once, on a new database.
    pub fn set_epoch(&self, epoch: f64) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(META_EPOCH, epoch.to_le_bytes().as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Write `batch` durably: when this returns Ok, all of it is on disk.
    /// Plugins, the active policy and the next job id go into one database
    /// transaction (before the deletions that need it are logged), then
    /// the jobs into one append to the log; when either fails, the jobs
    /// will not be found after a restart.
    pub fn commit(&mut self, batch: &Batch) -> anyhow::Result<()> {
        if !batch.plugins.is_empty() || !batch.unload.is_empty() || batch.active.is_some() || batch.next_id.is_some() {
            let txn = self.db.begin_write()?;
            {
                let mut plugins = txn.open_table(PLUGINS)?;
                for (name, bytes) in &batch.plugins {
                    plugins.insert(name.as_str(), bytes.as_slice())?;
                }
                for name in &batch.unload {
                    plugins.remove(name.as_str())?;
                }
                let mut meta = txn.open_table(META)?;
                if let Some(active) = &batch.active {
                    let json = serde_json::to_vec(active)?;
                    meta.insert(META_ACTIVE, json.as_slice())?;
                }
                if let Some(next) = batch.next_id {
                    meta.insert(META_NEXT_ID, next.to_le_bytes().as_slice())?;
                }
            }
            txn.commit()?;
        }
        let records = batch
            .jobs
            .iter()
            .map(|job| (job.id, job.encode_to_vec()))
            .chain(batch.expired.iter().map(|&id| (id, Vec::new())))
            .collect();
        self.log.append(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_batch_is_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let mut store = Store::open(&path).unwrap();
            assert!(store.recover().unwrap().epoch.is_none());
            store.set_epoch(1234.5).unwrap();
            let batch = Batch {
                jobs: vec![proto::Job {
                    id: 7,
                    failure: "x".into(),
                    ..Default::default()
                }],
                plugins: vec![("fifo".into(), vec![0, 97, 115, 109])],
                active: Some(ActivePolicyRecord {
                    name: "fifo".into(),
                    config: "c".into(),
                }),
                ..Default::default()
            };
            store.commit(&batch).unwrap();
            store
                .commit(&Batch {
                    unload: vec!["fifo".into()],
                    ..Default::default()
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let got = store.recover().unwrap();
        assert_eq!(got.epoch, Some(1234.5));
        assert_eq!(got.jobs.len(), 1);
        assert_eq!(got.jobs[0].id, 7);
        assert_eq!(got.jobs[0].failure, "x");
        assert!(got.plugins.is_empty());
        assert_eq!(got.active.unwrap().config, "c");
    }

    #[test]
    fn an_expired_job_stays_deleted_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let job = |id: u64| proto::Job {
            id,
            failure: format!("job {id}"),
            ..Default::default()
        };
        {
            let mut store = Store::open(&path).unwrap();
            store
                .commit(&Batch {
                    jobs: vec![job(1), job(2), job(3)],
                    ..Default::default()
                })
                .unwrap();
        }
        {
            // Reopening checkpoints 1-3 into the database; the deletion of 2
            // then lives only in the log until the next reopening.
            let mut store = Store::open(&path).unwrap();
            assert_eq!(store.recover().unwrap().jobs.len(), 3);
            let mut batch = Batch {
                jobs: vec![job(4), job(3)],
                ..Default::default()
            };
            batch.merge(Batch {
                expired: vec![2, 3],
                next_id: Some(9),
                ..Default::default()
            });
            store.commit(&batch).unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(&path).unwrap();
            let ids: Vec<u64> = store.recover().unwrap().jobs.iter().map(|j| j.id).collect();
            assert_eq!(
                ids,
                [1, 4],
                "2 and 3 deleted, even with a record of 3 in the same batch"
            );
            assert_eq!(store.recover().unwrap().next_id, Some(9));
        }
    }

    #[test]
    fn merged_batches_keep_the_order_of_loads_and_unloads() {
        let load = |n: &str| Batch {
            plugins: vec![(n.into(), vec![1])],
            ..Default::default()
        };
        let unload = |n: &str| Batch {
            unload: vec![n.into()],
            ..Default::default()
        };
        let mut b = load("a");
        b.merge(unload("a"));
        assert!(b.plugins.is_empty() && b.unload == ["a"]);
        b.merge(load("a"));
        assert!(b.unload.is_empty() && b.plugins.len() == 1);
    }
}
