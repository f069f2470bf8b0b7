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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::proto;

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The key of the service clock's origin: "epoch" in existing databases.
const META_CLOCK_ORIGIN: &str = "epoch";
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
    /// Checkpoints (every running job's progress) in the batch: turns that
    /// took one, counted once the batch is on disk.
    pub checkpoints: u64,
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
        self.checkpoints += later.checkpoints;
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.expired.is_empty()
            && self.plugins.is_empty()
            && self.unload.is_empty()
            && self.active.is_none()
            && self.next_id.is_none()
            && self.checkpoints == 0
    }
}

/// Everything stored, as read at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// When the service's clock started (seconds since the Unix epoch);
    /// `None` on a new database.
    pub clock_origin: Option<f64>,
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
/// record, a tombstone, deletes its job), after deleting the rows of
/// `drop_first`.
fn write_jobs(db: &Database, drop_first: &[u64], jobs: &wal::Records) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(JOBS)?;
        for id in drop_first {
            table.remove(id)?;
        }
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

/// The log's way into the database.
fn checkpoint_into(db: &Arc<Database>) -> wal::CheckpointFn {
    let db = db.clone();
    Arc::new(move |jobs: &wal::Records| {
        write_jobs(&db, &[], jobs).context("cannot checkpoint job records into the database")
    })
}

/// The database file in a state directory.
pub fn database_path(state_dir: &Path) -> PathBuf {
    state_dir.join("wsched.redb")
}

/// The log's two segment files beside the database at `path`.
fn log_paths(path: &Path) -> [PathBuf; 2] {
    [path.with_extension("wal0"), path.with_extension("wal1")]
}

/// The state directory holding the database at `path`.
fn state_dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// The job id a log record's payload holds, if it is an encoded job: how
/// the log tells records from noise past damage.
fn job_id_of(payload: &[u8]) -> Option<u64> {
    proto::Job::decode(payload).ok().map(|job| job.id)
}

/// The job id an encoded job's first bytes hold, whatever follows: its
/// field 1, which the encoder writes first, and leaves out when it is 0.
fn leading_job_id(payload: &[u8]) -> Option<u64> {
    match payload.strip_prefix(&[0x08]) {
        Some(mut rest) => prost::encoding::decode_varint(&mut rest).ok(),
        None => Some(0),
    }
}

/// How the log reads job records.
const JOB_PAYLOADS: wal::Payloads = wal::Payloads {
    id: job_id_of,
    leading_id: leading_job_id,
};

/// Open (or create) the database at `path`; its file lock keeps a second
/// process (a server, or a salvage) off it and the log beside it.
fn open_database(path: &Path) -> anyhow::Result<Database> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => in_use(path),
        e => anyhow::Error::new(e).context(format!("cannot open the database {}", path.display())),
    })
}

/// Create the tables, so that reads of a new database find them.
fn create_tables(db: &Database) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(JOBS)?;
    txn.open_table(PLUGINS)?;
    txn.open_table(META)?;
    txn.commit()?;
    Ok(())
}

/// The error for a database another process holds.
fn in_use(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "the database {} is in use by another process (a running `wsched serve`?); stop it first",
        path.display()
    )
}

/// The finding for a database that is gone from beside its log.
fn database_missing(path: &Path) -> String {
    format!(
        "{}: missing, while the write-ahead log beside it holds records: the jobs it held are gone",
        path.display()
    )
}

/// What is wrong with the state beside the database at `path`, whose log
/// `scan` read: a damaged log, or a log without its database (created
/// before the log's first header, so missing only if removed, with every
/// job checkpointed into it).
fn damage(path: &Path, scan: &wal::LogScan) -> Vec<String> {
    let mut findings = Vec::new();
    if !path.exists() && scan.holds_a_log() {
        findings.push(database_missing(path));
    }
    findings.extend(scan.problems().iter().map(ToString::to_string));
    findings
}

/// The state directory is damaged: the store refused to open it, and
/// changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The state directory.
    pub dir: PathBuf,
    /// What is wrong, one finding per damaged place.
    pub findings: Vec<String>,
}

impl Damaged {
    /// The error for `findings` beside the database at `path`.
    fn at(path: &Path, findings: Vec<String>) -> anyhow::Error {
        Damaged {
            dir: state_dir_of(path).to_path_buf(),
            findings,
        }
        .into()
    }
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.findings.join("; "))?;
        write!(
            f,
            ". Nothing was changed. `wsched store recover --state-dir {}` keeps a copy of each damaged file, \
             salvages every record whose checksum holds and lists the jobs lost",
            self.dir.display()
        )
    }
}

impl std::error::Error for Damaged {}

impl Store {
    /// Open (or create) the database at `path` and its log beside it
    /// (`.wal0`, `.wal1`). A database left by a crash is recovered by redb on
    /// open; then the log's records are replayed into it. A damaged log, or
    /// a log without its database, is refused with a [`Damaged`] error
    /// before any file is changed.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let logs = log_paths(path);
        let read_log = || wal::LogScan::read([&logs[0], &logs[1]], JOB_PAYLOADS);
        // Judged before the database is opened for writing (which repairs
        // one a crash left), so that a refusal leaves every file as found.
        let mut scan = read_log()?;
        let findings = damage(path, &scan);
        if !findings.is_empty() {
            if path.exists()
                && matches!(
                    redb::ReadOnlyDatabase::open(path),
                    Err(redb::DatabaseError::DatabaseAlreadyOpen)
                )
            {
                return Err(in_use(path));
            }
            return Err(Damaged::at(path, findings));
        }
        let db = open_database(path)?;
        // The database's lock keeps a server (or a salvage) off the log
        // too; if one wrote it since it was read, judge it again.
        if !scan.unchanged()? {
            scan = read_log()?;
            let findings = damage(path, &scan);
            if !findings.is_empty() {
                return Err(Damaged::at(path, findings));
            }
        }
        create_tables(&db)?;
        let db = Arc::new(db);
        let (log, replayed) = wal::Log::open_scanned(scan, checkpoint_into(&db))?;
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
        recovered.clock_origin = eight_bytes(META_CLOCK_ORIGIN, "clock origin")?.map(f64::from_le_bytes);
        recovered.next_id = eight_bytes(META_NEXT_ID, "next job id")?.map(u64::from_le_bytes);
        if let Some(active) = meta.get(META_ACTIVE)? {
            recovered.active = Some(
                serde_json::from_slice(active.value())
                    .with_context(|| format!("{}: the stored active policy is corrupt", self.path.display()))?,
            );
        }
        for row in txn.open_table(JOBS)?.iter()? {
            let (id, bytes) = row?;
            let job = proto::Job::decode(bytes.value()).with_context(|| {
                format!(
                    "{}: the record of job {} does not decode; `wsched store recover --state-dir {}` keeps a copy \
                     of the database, sets the record aside and lists the job as lost",
                    self.path.display(),
                    id.value(),
                    state_dir_of(&self.path).display()
                )
            })?;
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
    pub fn set_clock_origin(&self, origin: f64) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(META_CLOCK_ORIGIN, origin.to_le_bytes().as_slice())?;
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

/// What became of a job whose newest record was damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// No record of it is left: the job is gone.
    Lost,
    /// Back as of an earlier record in the log.
    RolledBackToLog,
    /// Back as of its row in the database.
    RolledBackToDatabase,
    /// Its deletion was lost: it is back as of its last stored state.
    Undeleted,
    /// A later record of it checks: nothing lost.
    Intact,
    /// Its row in the database does not decode (the copy keeps it), and
    /// the log has no record of it: gone.
    RowLost,
    /// Its row in the database does not decode, but the log's record of it
    /// replaced the row.
    RowReplaced,
}

/// A job that damage touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    /// The job.
    pub id: u64,
    /// What became of it.
    pub fate: Fate,
    /// Where its damaged record was: file and offset (none for a row).
    pub at: Option<(PathBuf, u64)>,
    /// Whether the id was read from a damaged record that could hold
    /// another (its header and payload disagree, or the payload does not
    /// decode).
    pub unsure: bool,
}

/// What a salvage ([`salvage`]) found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    /// The state directory.
    pub dir: PathBuf,
    /// What was wrong, one finding per damaged place; empty when nothing
    /// was (then nothing was changed).
    pub findings: Vec<String>,
    /// Each damaged file and the copy kept of it, as found.
    pub copies: Vec<(PathBuf, PathBuf)>,
    /// Records that check, salvaged from the log, and the jobs they are.
    pub records: usize,
    /// How many jobs those records are.
    pub jobs: usize,
    /// Every job that damage touched, by id.
    pub touched: Vec<Touched>,
    /// Records that a crash cut short (never acknowledged): file, offset
    /// and the job their header names.
    pub torn: Vec<(PathBuf, u64, u64)>,
    /// Damaged bytes where no record's id can be read: file and range.
    pub unreadable: Vec<(PathBuf, std::ops::Range<u64>)>,
    /// When ids may have been lost unseen (unreadable bytes, a cut file, a
    /// missing database): the ids up to the highest known that have no
    /// record anywhere, and that highest id.
    pub unaccounted: Option<(Vec<std::ops::RangeInclusive<u64>>, Option<u64>)>,
}

impl Salvage {
    /// The ids of the jobs with this fate.
    pub fn ids(&self, fate: Fate) -> Vec<u64> {
        self.touched.iter().filter(|t| t.fate == fate).map(|t| t.id).collect()
    }
}

impl std::fmt::Display for Salvage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.dir.display();
        if self.findings.is_empty() {
            return writeln!(f, "{dir}: nothing is damaged; nothing was changed");
        }
        writeln!(f, "damage found in {dir}:")?;
        for finding in &self.findings {
            writeln!(f, "  {finding}")?;
        }
        if !self.copies.is_empty() {
            writeln!(f, "copies kept, as found:")?;
            for (file, copy) in &self.copies {
                writeln!(f, "  {} -> {}", file.display(), copy.display())?;
            }
        }
        writeln!(
            f,
            "salvaged {} records whose checksum holds ({} jobs) into the database; the log is started over",
            self.records, self.jobs
        )?;
        let list = |ids: Vec<u64>| {
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            }
        };
        let mut lost = self.ids(Fate::Lost);
        lost.extend(self.ids(Fate::RowLost));
        lost.sort_unstable();
        lost.dedup();
        let mut rolled_back = self.ids(Fate::RolledBackToLog);
        rolled_back.extend(self.ids(Fate::RolledBackToDatabase));
        rolled_back.sort_unstable();
        let unseen = if self.unaccounted.is_some() {
            " (and any whose records could not be read: see below)"
        } else {
            ""
        };
        writeln!(f, "jobs lost: {}{unseen}", list(lost))?;
        writeln!(f, "jobs rolled back to an earlier stored state: {}", list(rolled_back))?;
        for touched in &self.touched {
            let id = touched.id;
            let probably = if touched.unsure {
                " (the id is read from a damaged record, so it may be another)"
            } else {
                ""
            };
            let place = match &touched.at {
                Some((file, at)) => format!("its record at byte {at} of {}", file.display()),
                None => "its row in the database".to_string(),
            };
            let what = match touched.fate {
                Fate::Lost => format!("lost: {place} is damaged and no other record of it is left"),
                Fate::RolledBackToLog => {
                    format!("rolled back to its previous record in the log: {place}, its newest, is damaged")
                }
                Fate::RolledBackToDatabase => {
                    format!("rolled back to its row in the database: {place}, its newest, is damaged")
                }
                Fate::Undeleted => {
                    format!("its deletion is lost ({place} is damaged): it is back as last stored")
                }
                Fate::Intact => format!("nothing lost: {place} is damaged, but a later record of it holds"),
                Fate::RowLost => format!("lost: {place} does not decode (the copy keeps it)"),
                Fate::RowReplaced => {
                    format!("{place} does not decode, but the log's record of it replaced it: nothing lost")
                }
            };
            writeln!(f, "  job {id}{probably}: {what}")?;
        }
        for (file, at, id) in &self.torn {
            writeln!(
                f,
                "not lost: the record at byte {at} of {} (job {id}, by its header) is a write cut short by a crash, \
                 never acknowledged",
                file.display()
            )?;
        }
        for (file, range) in &self.unreadable {
            writeln!(
                f,
                "unreadable: bytes {}..{} of {}: the ids of the records there cannot be read",
                range.start,
                range.end,
                file.display()
            )?;
        }
        if let Some((ranges, highest)) = &self.unaccounted {
            let ranges: Vec<String> = ranges
                .iter()
                .map(|r| {
                    if r.start() == r.end() {
                        r.start().to_string()
                    } else {
                        format!("{}-{}", r.start(), r.end())
                    }
                })
                .collect();
            let ranges = if ranges.is_empty() {
                "none".to_string()
            } else {
                ranges.join(", ")
            };
            write!(
                f,
                "job ids with no record anywhere: {ranges} (jobs the lost bytes held, or jobs deleted by retention)"
            )?;
            match highest {
                Some(highest) => writeln!(f, "; jobs above {highest} may have been lost too")?,
                None => writeln!(f, "; which jobs the lost bytes held cannot be told")?,
            }
        }
        writeln!(f, "`wsched serve` starts normally now")
    }
}

/// Keep a copy of `file` beside it, as `NAME.damaged-SECONDS`, durably;
/// returns its path.
fn keep_copy(file: &Path, seconds: u64) -> anyhow::Result<PathBuf> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = state_dir_of(file);
    let copy = (1..1000)
        .map(|n| match n {
            1 => dir.join(format!("{name}.damaged-{seconds}")),
            n => dir.join(format!("{name}.damaged-{seconds}-{n}")),
        })
        .find(|candidate| !candidate.exists())
        .ok_or_else(|| anyhow::anyhow!("{}: too many copies already", file.display()))?;
    std::fs::copy(file, &copy)
        .and_then(|_| File::open(&copy)?.sync_all())
        .and_then(|()| File::open(dir)?.sync_all())
        .with_context(|| format!("cannot keep a copy of {} as {}", file.display(), copy.display()))?;
    Ok(copy)
}

/// The jobs table, read without changing it: ids whose rows decode, and
/// ids whose rows do not.
fn read_job_rows(db: &Database) -> anyhow::Result<(BTreeSet<u64>, Vec<u64>)> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(JOBS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
        Err(e) => return Err(e.into()),
    };
    let (mut good, mut bad) = (BTreeSet::new(), Vec::new());
    for row in table.iter()? {
        let (id, bytes) = row?;
        if proto::Job::decode(bytes.value()).is_ok() {
            good.insert(id.value());
        } else {
            bad.push(id.value());
        }
    }
    Ok((good, bad))
}

/// The stored lowest id not yet given out, if any.
fn read_next_id(db: &Database) -> anyhow::Result<Option<u64>> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(meta
        .get(META_NEXT_ID)?
        .and_then(|value| value.value().try_into().ok().map(u64::from_le_bytes)))
}

/// Salvage the damaged state beside the database at `path`, which a
/// server refused to start on: keep a copy of every damaged file, write
/// every log record whose checksum holds into the database (after damage
/// too; later records of a job win), set aside rows that do not decode,
/// and start the log over. Says which jobs were lost. Refuses while a
/// server holds the database; changes nothing when nothing is damaged.
pub fn salvage(path: &Path) -> anyhow::Result<Salvage> {
    let logs = log_paths(path);
    let existed = path.exists();
    let db = open_database(path)?;
    let scan = wal::LogScan::read([&logs[0], &logs[1]], JOB_PAYLOADS)?;
    let (rows, corrupt) = read_job_rows(&db)?;
    let problems = scan.problems();
    let mut report = Salvage {
        dir: state_dir_of(path).to_path_buf(),
        ..Salvage::default()
    };
    let missing_database = !existed && scan.holds_a_log();
    if missing_database {
        report.findings.push(database_missing(path));
    }
    report.findings.extend(problems.iter().map(ToString::to_string));
    report.findings.extend(
        corrupt
            .iter()
            .map(|id| format!("{}: the record of job {id} does not decode", path.display())),
    );
    if report.findings.is_empty() {
        return Ok(report);
    }

    // Copies first, before anything changes.
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut damaged_files: Vec<&Path> = problems
        .iter()
        .filter(|p| p.kind != wal::ProblemKind::Missing)
        .map(|p| p.path.as_path())
        .collect();
    damaged_files.dedup();
    if !corrupt.is_empty() {
        damaged_files.push(path);
    }
    for file in damaged_files {
        report.copies.push((file.to_path_buf(), keep_copy(file, seconds)?));
    }

    // What became of each job whose newest record is lost.
    let mut valid: HashMap<u64, wal::Place> = HashMap::new();
    for (place, record) in scan.records() {
        valid.insert(record.id, place); // places come in order: the last wins
    }
    let mut damaged: BTreeMap<u64, (wal::Place, &wal::LostRecord, &Path)> = BTreeMap::new();
    let lost = scan.lost();
    let mut unseen = missing_database;
    for stretch in &lost {
        if stretch.cause == wal::Cause::Torn {
            for record in &stretch.records {
                report.torn.push((stretch.path.clone(), record.at, record.ids[0]));
            }
            continue;
        }
        if stretch.cause == wal::Cause::Cut {
            unseen = true;
        }
        if let Some(range) = &stretch.unreadable {
            report.unreadable.push((stretch.path.clone(), range.clone()));
            unseen = true;
        }
        for record in &stretch.records {
            let place = wal::Place {
                rank: stretch.rank,
                at: record.at,
            };
            for &id in &record.ids {
                if damaged.get(&id).is_none_or(|(seen, _, _)| *seen < place) {
                    damaged.insert(id, (place, record, &stretch.path));
                }
            }
        }
    }
    for (&id, &(place, record, file)) in &damaged {
        let fate = match valid.get(&id) {
            Some(&last) if last > place => Fate::Intact,
            Some(_) if record.deletion => Fate::Undeleted,
            Some(_) => Fate::RolledBackToLog,
            None if rows.contains(&id) && record.deletion => Fate::Undeleted,
            None if rows.contains(&id) => Fate::RolledBackToDatabase,
            None if record.deletion => continue, // it stays deleted
            None => Fate::Lost,
        };
        report.touched.push(Touched {
            id,
            fate,
            at: Some((file.to_path_buf(), record.at)),
            unsure: !record.sure || record.ids.len() > 1,
        });
    }
    let (records, count) = scan.salvage();
    for &id in &corrupt {
        report.touched.push(Touched {
            id,
            fate: if records.contains_key(&id) {
                Fate::RowReplaced
            } else {
                Fate::RowLost
            },
            at: None,
            unsure: false,
        });
    }
    if unseen {
        let known: BTreeSet<u64> = rows
            .iter()
            .chain(&corrupt)
            .chain(records.keys())
            .chain(damaged.keys())
            .copied()
            .collect();
        let highest = known
            .last()
            .copied()
            .max(read_next_id(&db)?.and_then(|next| next.checked_sub(1)));
        let mut gaps: Vec<std::ops::RangeInclusive<u64>> = Vec::new();
        let mut expected = 0u64;
        for &id in &known {
            if id > expected {
                gaps.push(expected..=id - 1);
            }
            expected = id.saturating_add(1);
        }
        if let Some(highest) = highest
            && highest >= expected
        {
            gaps.push(expected..=highest);
        }
        report.unaccounted = Some((gaps, highest));
    }

    // Then the writes: the salvaged records (replacing rows that do not
    // decode, or deleting them), then a log started over.
    report.records = count;
    report.jobs = records.len();
    create_tables(&db)?;
    let db = Arc::new(db);
    write_jobs(&db, &corrupt, &records).context("cannot write the salvaged records into the database")?;
    drop(wal::Log::start_over(&scan, checkpoint_into(&db))?);
    Ok(report)
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
            assert!(store.recover().unwrap().clock_origin.is_none());
            store.set_clock_origin(1234.5).unwrap();
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
        assert_eq!(got.clock_origin, Some(1234.5));
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

    /// A job of id `id` whose record says `failure`.
    fn job(id: u64, failure: &str) -> proto::Job {
        proto::Job {
            id,
            failure: failure.into(),
            ..Default::default()
        }
    }

    /// A store at `path` holding jobs 0..200, each committed on its own,
    /// then `kill -9`ed (dropped without a word).
    fn two_hundred_jobs(path: &Path) {
        let mut store = Store::open(path).unwrap();
        for id in 0..200 {
            store
                .commit(&Batch {
                    jobs: vec![job(id, "first")],
                    ..Default::default()
                })
                .unwrap();
        }
    }

    /// Where the newest record of job `id` lies: file and offset.
    fn record_of(path: &Path, id: u64) -> (PathBuf, u64) {
        let logs = log_paths(path);
        let scan = wal::LogScan::read([&logs[0], &logs[1]], JOB_PAYLOADS).unwrap();
        let (place, found) = scan.records().filter(|(_, r)| r.id == id).last().unwrap();
        (scan.segment_path(place.rank).to_path_buf(), found.at)
    }

    fn flip(file: &Path, at: u64) {
        let mut bytes = std::fs::read(file).unwrap();
        bytes[at as usize] ^= 0xff;
        std::fs::write(file, bytes).unwrap();
    }

    /// Every file in `dir`, by name, with its bytes.
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn ids(store: &Store) -> Vec<u64> {
        store.recover().unwrap().jobs.iter().map(|j| j.id).collect()
    }

    #[test]
    fn a_damaged_log_is_refused_untouched_then_salvaged_naming_the_lost_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        two_hundred_jobs(&path);
        let (file, at) = record_of(&path, 100);
        flip(&file, at + 20); // in its payload
        let before = files(dir.path());

        let error = Store::open(&path).err().expect("refused");
        let damaged = error.downcast_ref::<Damaged>().expect("a Damaged error");
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!("{}: the record at byte {at} (job 100)", file.display())),
            "{message}"
        );
        assert!(message.contains("99 records that check follow it"), "{message}");
        assert!(
            message.contains(&format!("wsched store recover --state-dir {}", dir.path().display())),
            "{message}"
        );
        assert_eq!(damaged.dir, dir.path());
        assert!(files(dir.path()) == before, "a refusal changed a file");

        let report = salvage(&path).unwrap();
        assert_eq!(report.ids(Fate::Lost), [100], "{report}");
        assert_eq!(report.touched.len(), 1, "{report}");
        assert_eq!(report.copies.len(), 1, "{report}");
        assert_eq!(
            std::fs::read(&report.copies[0].1).unwrap(),
            before[&file.file_name().unwrap().to_string_lossy().into_owned()]
        );
        let printed = report.to_string();
        assert!(printed.contains("jobs lost: 100\n"), "{printed}");
        assert!(
            printed.contains(&format!("job 100: lost: its record at byte {at} of {}", file.display())),
            "{printed}"
        );

        let store = Store::open(&path).unwrap();
        let expected: Vec<u64> = (0..200).filter(|&id| id != 100).collect();
        assert_eq!(ids(&store), expected);
        drop(store);
        // And again, once the log has started over.
        assert_eq!(ids(&Store::open(&path).unwrap()), expected);
        assert!(salvage(&path).unwrap().findings.is_empty(), "nothing left to salvage");
    }

    #[test]
    fn a_job_whose_newest_record_is_damaged_is_rolled_back_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        two_hundred_jobs(&path);
        {
            let mut store = Store::open(&path).unwrap(); // checkpoints the 200 into the database
            for (id, failure) in [(7, "second"), (8, "second"), (8, "third"), (9, "second")] {
                store
                    .commit(&Batch {
                        jobs: vec![job(id, failure)],
                        ..Default::default()
                    })
                    .unwrap();
            }
        }
        for id in [7, 8] {
            let (file, at) = record_of(&path, id);
            flip(&file, at + 4); // its checksum
        }
        assert!(Store::open(&path).is_err());
        let report = salvage(&path).unwrap();
        assert!(report.ids(Fate::Lost).is_empty(), "{report}");
        assert_eq!(report.ids(Fate::RolledBackToDatabase), [7], "{report}");
        assert_eq!(report.ids(Fate::RolledBackToLog), [8], "{report}");
        let store = Store::open(&path).unwrap();
        let jobs = store.recover().unwrap().jobs;
        let failure = |id: u64| jobs.iter().find(|j| j.id == id).unwrap().failure.clone();
        assert_eq!(failure(7), "first");
        assert_eq!(failure(8), "second");
        assert_eq!(failure(9), "second");
    }

    #[test]
    fn a_cut_log_is_refused_and_salvaged_up_to_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        two_hundred_jobs(&path);
        let (file, at) = record_of(&path, 150);
        let cut = at + 16 + 3; // in the payload of job 150's record
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..cut as usize]).unwrap();
        let message = format!("{:#}", Store::open(&path).err().expect("refused"));
        assert!(
            message.contains(&format!("{}: the file was cut short at byte {cut}", file.display())),
            "{message}"
        );
        let report = salvage(&path).unwrap();
        assert_eq!(report.ids(Fate::Lost), [150], "{report}");
        let (gaps, highest) = report.unaccounted.clone().expect("ids that may be lost");
        assert!(gaps.is_empty(), "{report}");
        assert_eq!(highest, Some(150), "{report}");
        assert!(
            report.to_string().contains("jobs above 150 may have been lost too"),
            "{report}"
        );
        assert_eq!(ids(&Store::open(&path).unwrap()), (0..150).collect::<Vec<_>>());
    }

    #[test]
    fn a_row_that_does_not_decode_is_named_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        two_hundred_jobs(&path);
        drop(Store::open(&path).unwrap()); // into the database
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(JOBS)
                .unwrap()
                .insert(5, [0xffu8, 0xff, 0xff].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let message = format!("{:#}", store.recover().expect_err("refused"));
        assert!(message.contains("the record of job 5 does not decode"), "{message}");
        assert!(message.contains("wsched store recover --state-dir"), "{message}");
        drop(store);
        let report = salvage(&path).unwrap();
        assert_eq!(report.ids(Fate::RowLost), [5], "{report}");
        assert!(report.to_string().contains("jobs lost: 5\n"), "{report}");
        assert_eq!(report.copies.len(), 1);
        assert_eq!(report.copies[0].0, path);
        let expected: Vec<u64> = (0..200).filter(|&id| id != 5).collect();
        assert_eq!(ids(&Store::open(&path).unwrap()), expected);
    }

    #[test]
    fn a_log_without_its_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        two_hundred_jobs(&path);
        std::fs::remove_file(&path).unwrap();
        let message = format!("{:#}", Store::open(&path).err().expect("refused"));
        assert!(
            message.contains("missing, while the write-ahead log beside it holds records"),
            "{message}"
        );
        assert!(!path.exists(), "the refusal created the database");
        let report = salvage(&path).unwrap();
        assert!(report.unaccounted.is_some(), "{report}");
        assert_eq!(ids(&Store::open(&path).unwrap()).len(), 200, "the log's records");
    }

    #[test]
    fn a_salvage_waits_for_the_server_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _server = Store::open(&path).unwrap();
        let message = format!("{:#}", salvage(&path).expect_err("refused"));
        assert!(message.contains("in use by another process"), "{message}");
    }
}
