//! The write-ahead log in front of the database, for job records.
//!
//! Why a log of our own in front of redb: every acknowledged submission must
//! be on disk before its reply, so the service can acknowledge no faster than
//! it can make a commit durable. A redb commit rewrites the B-tree pages on
//! the path to every changed job and its allocator state, then syncs: about
//! 0.95 ms of wall time and 0.43 ms of CPU for 16 jobs on the 2-core
//! development VM. Writing the same 16 records at the end of a file whose
//! blocks are already allocated and written, then `fdatasync`, takes about
//! 0.3 ms and 0.1 ms. So job records are appended here first, and the
//! database gets them in bulk (a *checkpoint*) when a segment fills, on a
//! thread of its own so that acknowledgements do not wait for it.
//!
//! Two segment files take turns. The active one receives appends; when it is
//! full, the other one is reset (its records were checkpointed already) and
//! becomes active, and the full one's records are checkpointed. A segment is
//! reset by writing a header with a new, higher *generation*; every record's
//! checksum covers its generation, so whatever an older generation left
//! further on in the file can never pass for a record of the current one.
//!
//! On open, the records of both segments are replayed in generation order
//! (later records of a job win) into the database in one transaction, and
//! then both segments are reset, the older first. Replaying records that were
//! checkpointed already is harmless: the segments that are still valid hold
//! the newest record of every job they mention, and resetting the older one
//! first keeps that true after a crash at any point.
//!
//! Format (little-endian): a 32-byte header, `wschwal1`, the generation
//! (u64), a CRC-32 of those 16 bytes, zero padding; then records, each the
//! payload length (u32), a CRC-32 of generation, length, job id and payload,
//! the job id (u64), the payload. The log ends at the first record that does
//! not check, which is where a crash during a write leaves it. An empty
//! payload is a *tombstone*: the job was deleted (an encoded job is never
//! empty: it always holds its spec).
//!
//! Damage is not a crash, and the log must tell them apart, because what
//! follows damage may be acknowledged jobs. So before it changes anything,
//! `open` reads both segments whole ([`LogScan`]) and looks past the end of
//! each log for more records of its generation (any later offset whose
//! length fits, whose payload is a well-formed record of its job and whose
//! checksum holds). A crash leaves at most its last write cut short, at a
//! sector boundary, with nothing of its generation after it; a record that
//! does not check followed by ones that do, a last record that is whole and
//! well-formed yet does not check, a damaged header, or a file shorter than
//! the log ever leaves it is damage: `open` refuses ([`DamagedLog`]) and
//! leaves every file as it found it. A salvage (`wsched store recover`)
//! then takes every record that checks, after the damage too
//! ([`LogScan::salvage`]), and says what was lost ([`LogScan::lost`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use anyhow::Context;

/// Size of a new segment. 8 MiB holds about 40,000 job records, so a busy
/// service checkpoints every few seconds and a restart replays little.
pub const SEGMENT_BYTES: u64 = 8 << 20;
const MAGIC: &[u8; 8] = b"wschwal1";
const HEADER_BYTES: u64 = 32;
/// Length, checksum and job id in front of every payload.
const RECORD_HEADER_BYTES: usize = 16;
/// Segments grow (for a batch larger than a segment) in steps of this.
const GROW_STEP: u64 = 1 << 20;

/// Latest record of every job, by id: what a checkpoint writes (an empty
/// record deletes the job).
pub type Records = BTreeMap<u64, Vec<u8>>;

/// Job records in the order they were appended: id and payload.
pub type Appended = Vec<(u64, Vec<u8>)>;

/// Writes records into the database (one transaction); the log's only view
/// of it.
pub type CheckpointFn = Arc<dyn Fn(&Records) -> anyhow::Result<()> + Send + Sync>;

/// One segment file.
struct Segment {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Where the next record goes.
    end: u64,
    /// Bytes of the file, all allocated and written.
    capacity: u64,
}

impl Segment {
    /// Open the segment `scan` read (creating its file if there was none),
    /// zero-filled to at least `SEGMENT_BYTES`. Called only once the log is
    /// judged sound, or its records salvaged: it may change the file.
    fn prepare(scan: &SegmentScan, wipe: bool) -> anyhow::Result<Segment> {
        let path = &scan.path;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open the log {}", path.display()))?;
        let mut segment = Segment {
            file,
            path: path.clone(),
            generation: scan.generation().unwrap_or(0),
            end: scan.end,
            capacity: scan.bytes.len() as u64,
        };
        if wipe {
            // Damaged bytes left past the end of the new log would be
            // judged damage again at the next open.
            segment.capacity = 0;
        }
        // Zero-fill the whole segment up front: an append into blocks that
        // exist and were written needs no metadata in its fdatasync.
        if segment.capacity < SEGMENT_BYTES {
            segment.grow(SEGMENT_BYTES.max(scan.bytes.len() as u64))?;
        }
        if !scan.exists
            && let Some(dir) = path.parent()
        {
            // The file's name must be as durable as its contents.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
        }
        Ok(segment)
    }

    /// Extend the file with zeros to at least `bytes`, durably.
    fn grow(&mut self, bytes: u64) -> anyhow::Result<()> {
        let target = bytes.div_ceil(GROW_STEP) * GROW_STEP;
        let zeros = vec![0u8; GROW_STEP as usize];
        let mut at = self.capacity;
        while at < target {
            let n = (target - at).min(GROW_STEP) as usize;
            self.file
                .write_all_at(&zeros[..n], at)
                .with_context(|| format!("cannot extend the log {}", self.path.display()))?;
            at += n as u64;
        }
        self.file
            .sync_all()
            .with_context(|| format!("cannot sync the log {}", self.path.display()))?;
        self.capacity = target;
        Ok(())
    }

    /// Start the segment over, empty, as `generation`.
    fn reset(&mut self, generation: u64) -> anyhow::Result<()> {
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&generation.to_le_bytes());
        let crc = crc32fast::hash(&header[..16]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&header, 0)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot reset the log {}", self.path.display()))?;
        self.generation = generation;
        self.end = HEADER_BYTES;
        Ok(())
    }

    /// Write `bytes` (whole records) at the end, durably.
    fn append(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let written = self
            .file
            .write_all_at(bytes, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Records that were not acknowledged must not come back at the
            // next start, so erase whatever part of them reached the file.
            let zeros = vec![0u8; bytes.len()];
            self.file
                .write_all_at(&zeros, self.end)
                .and_then(|()| self.file.sync_data())
                .with_context(|| {
                    format!(
                        "cannot write the log {} ({e}), nor erase the failed write",
                        self.path.display()
                    )
                })?;
            return Err(e).with_context(|| format!("cannot write the log {}", self.path.display()));
        }
        self.end += bytes.len() as u64;
        Ok(())
    }
}

// Reading and judging a log without changing it.

/// How the log reads its records' payloads: the store's knowledge of its
/// records, which the log uses to tell records from noise when it looks
/// past damage, and to name the jobs of damaged ones. (An empty payload, a
/// deletion, is always well-formed; neither is asked about it.)
#[derive(Debug, Clone, Copy)]
pub struct Payloads {
    /// The job id a whole, well-formed payload holds; `None` for anything
    /// else (a payload cut short, damaged, or noise).
    pub id: fn(&[u8]) -> Option<u64>,
    /// The job id a payload's first bytes name, even when the rest is
    /// damaged or cut short. It must be `id`'s for every payload `id`
    /// accepts: the log checks it first, as the cheap test.
    pub leading_id: fn(&[u8]) -> Option<u64>,
}

/// The unit a crash leaves written or not: a write cut short ends at a
/// multiple of this.
const SECTOR_BYTES: usize = 512;

/// What a segment file's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// There is no file.
    Missing,
    /// Zeros, and so is the rest of the file: created and never used.
    Blank,
    /// A header that checks, of this generation.
    Valid(u64),
    /// Damaged; the generation its records were found to have, if any were.
    Damaged(Option<u64>),
}

/// A record whose checksum holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where it starts in its file.
    pub at: u64,
    /// Its job.
    pub id: u64,
    /// The job's record; empty for a deletion.
    pub payload: Vec<u8>,
}

impl Found {
    fn end(&self) -> u64 {
        self.at + (RECORD_HEADER_BYTES + self.payload.len()) as u64
    }
}

/// What follows the last record that checks in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Nothing: zeros, or what an older generation left.
    Clean,
    /// Bytes that are not a record: a record whose write a crash cut short
    /// (never acknowledged), or bytes an older generation left, which
    /// cannot be told apart unless only zeros follow them (`fresh`: then
    /// they are this generation's). `id` is what their header names.
    Torn { at: u64, end: u64, id: u64, fresh: bool },
    /// A whole record whose payload is a well-formed one of job `id`, but
    /// whose checksum fails for every generation: damage, which a crash
    /// does not leave.
    Damaged { at: u64, end: u64, id: u64 },
}

/// One segment file as read.
struct SegmentScan {
    path: PathBuf,
    exists: bool,
    bytes: Vec<u8>,
    header: Header,
    /// Every record of its generation whose checksum holds, in file order
    /// (after damage too).
    records: Vec<Found>,
    /// How many of `records` follow one another from the header on: the
    /// log proper, and all that a sound segment holds.
    intact: usize,
    /// Where the intact records end: where appends go on.
    end: u64,
    /// What follows the last of `records`.
    tail: Tail,
}

impl SegmentScan {
    fn generation(&self) -> Option<u64> {
        match self.header {
            Header::Valid(generation) | Header::Damaged(Some(generation)) => Some(generation),
            _ => None,
        }
    }

    /// Whether it holds (or held) a log: a header was written to it.
    fn headed(&self) -> bool {
        matches!(self.header, Header::Valid(_) | Header::Damaged(_))
    }

    /// Whether its size is one the log never leaves: segments are created
    /// zero-filled at `SEGMENT_BYTES` (durably, before their first header)
    /// and only grow, in whole `GROW_STEP`s, so a headed one that is
    /// shorter, or not a whole number of steps, was cut short.
    fn truncated(&self) -> bool {
        let size = self.bytes.len() as u64;
        self.headed() && (size < SEGMENT_BYTES || !size.is_multiple_of(GROW_STEP))
    }

    /// The segment at `path`, with `header` and its records of
    /// `generation` (none without one).
    fn new(path: &Path, exists: bool, bytes: Vec<u8>, header: Header, payloads: Payloads) -> SegmentScan {
        let generation = match header {
            Header::Valid(generation) | Header::Damaged(Some(generation)) => Some(generation),
            _ => None,
        };
        let (records, intact, end) = match generation {
            Some(generation) => find_records(&bytes, generation, payloads),
            None => (Vec::new(), 0, HEADER_BYTES),
        };
        let tail = match generation {
            Some(generation) => {
                let after = records.last().map_or(HEADER_BYTES, Found::end);
                tail_at(
                    &bytes,
                    usize::try_from(after).unwrap_or(usize::MAX),
                    generation,
                    payloads,
                )
            }
            None => Tail::Clean,
        };
        SegmentScan {
            path: path.to_path_buf(),
            exists,
            bytes,
            header,
            records,
            intact,
            end,
            tail,
        }
    }
}

/// The two segments of a log as read, unchanged: what [`Log::open`] judges
/// before it changes anything, and what a salvage works from.
pub struct LogScan {
    segments: [SegmentScan; 2],
    payloads: Payloads,
}

/// Something wrong with a log that a crash does not leave: records after
/// it, or in it, may be acknowledged jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The segment file.
    pub path: PathBuf,
    /// Where in it the damage starts.
    pub offset: u64,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Records that check after `offset` (before it, for a cut): what a
    /// salvage brings back from there.
    pub records: usize,
}

/// What is wrong with a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Its header does not check.
    Header,
    /// A record in the middle of the log does not check; `id` is the job
    /// the damaged bytes seem to hold, if they name one.
    Record {
        /// The job the damaged bytes seem to hold.
        id: Option<u64>,
    },
    /// The last record is whole and well-formed but does not check.
    LastRecord {
        /// The job the record holds.
        id: u64,
    },
    /// The file is shorter than the log ever leaves it.
    Truncated,
    /// The file is gone while the other segment holds a log.
    Missing,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display();
        let (offset, records) = (self.offset, self.records);
        match self.kind {
            ProblemKind::Header => write!(
                f,
                "{path}: its header is damaged (at byte 0); {records} records that check follow it"
            ),
            ProblemKind::Record { id } => {
                write!(f, "{path}: the record at byte {offset}")?;
                if let Some(id) = id {
                    write!(f, " (job {id})")?;
                }
                write!(f, " is damaged, and {records} records that check follow it")
            }
            ProblemKind::LastRecord { id } => write!(
                f,
                "{path}: the last record, at byte {offset} (job {id}), is whole but fails its checksum: damage, \
                 not a write cut short by a crash"
            ),
            ProblemKind::Truncated => write!(
                f,
                "{path}: the file was cut short at byte {offset} (the log makes its segments {} MiB or more, in \
                 whole MiB); whatever followed is gone ({records} records that check precede the cut)",
                SEGMENT_BYTES >> 20
            ),
            ProblemKind::Missing => write!(f, "{path}: missing, while the other segment holds a log"),
        }
    }
}

/// The log is damaged: [`Log::open`] refused it and changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedLog {
    /// What is wrong, segment by segment.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for DamagedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DamagedLog {}

/// Why records were lost in a stretch of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The bytes are damaged.
    Damage,
    /// A write cut short by a crash: never acknowledged, so nothing lost.
    Torn,
    /// The end of a file that was cut short.
    Cut,
    /// Behind a damaged header whose generation could not be found: no
    /// record there can be checked.
    Header,
}

/// A record a damaged stretch seems to have held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRecord {
    /// Where it starts.
    pub at: u64,
    /// Its job: one id, or two when its header and payload disagree.
    pub ids: Vec<u64>,
    /// Whether the id can be trusted: its payload decodes as that job's.
    pub sure: bool,
    /// Whether it was a deletion (an empty payload).
    pub deletion: bool,
}

/// A stretch of a segment that holds no record that checks, where the log
/// had (or may have had) records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostStretch {
    /// The segment file.
    pub path: PathBuf,
    /// The bytes.
    pub range: std::ops::Range<u64>,
    /// Why.
    pub cause: Cause,
    /// The records it seems to have held, in order.
    pub records: Vec<LostRecord>,
    /// Bytes of `range` whose records cannot be told apart: no id can be
    /// given for them.
    pub unreadable: Option<std::ops::Range<u64>>,
    /// The segment's place in the log (0: the older).
    pub rank: usize,
}

/// A record that checks, with its place in the log: later places win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    /// The segment's place (0: the older).
    pub rank: usize,
    /// The offset in it.
    pub at: u64,
}

impl LogScan {
    /// Read the log in `paths` (two segment files, either possibly
    /// missing), changing nothing. Fails only when a file cannot be read.
    pub fn read(paths: [&Path; 2], payloads: Payloads) -> anyhow::Result<LogScan> {
        let read = |path: &Path| read_segment(path).map(|bytes| (bytes.is_some(), bytes.unwrap_or_default()));
        let [(exists0, bytes0), (exists1, bytes1)] = [read(paths[0])?, read(paths[1])?];
        let headers = [header_of(exists0, &bytes0), header_of(exists1, &bytes1)];
        // A damaged header's generation, where it can be told for certain:
        // what it states, if its checksum holds for it (only the magic is
        // damaged); a neighbour of the other segment's (the two have
        // consecutive generations once the log is in use) that its
        // checksum holds for (the stated one is damaged); what it states,
        // if that is a neighbour (the checksum is damaged) or has records;
        // the newer neighbour, if it has records (this file never had it
        // before). Not the older neighbour on the strength of its records
        // alone: an older generation's records lie past the end of a
        // newer log, and salvaging them would roll jobs back.
        let guess = |bytes: &[u8], other: Header| -> Header {
            let stated = bytes.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            let checksum = bytes
                .get(16..20)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            let fits = |generation: u64| {
                let mut header = MAGIC.to_vec();
                header.extend_from_slice(&generation.to_le_bytes());
                Some(crc32fast::hash(&header)) == checksum
            };
            let has_records = |generation: u64| !find_records(bytes, generation, payloads).0.is_empty();
            let (older, newer) = match other {
                Header::Valid(g) => (g.checked_sub(1), g.checked_add(1)),
                _ => (None, None),
            };
            let neighbours = [older, newer];
            let generation = stated
                .filter(|&g| fits(g))
                .or_else(|| neighbours.into_iter().flatten().find(|&g| fits(g)))
                .or_else(|| stated.filter(|g| neighbours.contains(&Some(*g)) || has_records(*g)))
                .or_else(|| newer.filter(|&g| has_records(g)));
            Header::Damaged(generation)
        };
        let headers = [
            if headers[0] == Header::Damaged(None) {
                guess(&bytes0, headers[1])
            } else {
                headers[0]
            },
            if headers[1] == Header::Damaged(None) {
                guess(&bytes1, headers[0])
            } else {
                headers[1]
            },
        ];
        Ok(LogScan {
            segments: [
                SegmentScan::new(paths[0], exists0, bytes0, headers[0], payloads),
                SegmentScan::new(paths[1], exists1, bytes1, headers[1], payloads),
            ],
            payloads,
        })
    }

    /// Whether the files still hold what was read.
    pub fn unchanged(&self) -> anyhow::Result<bool> {
        for segment in &self.segments {
            let now = read_segment(&segment.path)?;
            if now.as_deref() != segment.exists.then_some(segment.bytes.as_slice()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether either segment holds (or held) a log: its header was written.
    pub fn holds_a_log(&self) -> bool {
        self.segments.iter().any(SegmentScan::headed)
    }

    /// Segment indices, older generation first.
    fn order(&self) -> [usize; 2] {
        let generation = |i: usize| self.segments[i].generation().unwrap_or(0);
        if generation(0) <= generation(1) { [0, 1] } else { [1, 0] }
    }

    /// The highest generation either segment held.
    fn highest_generation(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(SegmentScan::generation)
            .max()
            .unwrap_or(0)
    }

    /// What is wrong with the log, if anything: damage that a crash does
    /// not leave, after which records may have been lost. Empty for a log
    /// that opens.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            let path = segment.path.clone();
            match segment.header {
                Header::Missing if self.segments[1 - i].headed() => problems.push(Problem {
                    path,
                    offset: 0,
                    kind: ProblemKind::Missing,
                    records: 0,
                }),
                Header::Blank if self.segments[1 - i].headed() => {
                    // Zeros are all a segment holds only until its first
                    // header, and both get theirs at the first open: only
                    // a crash during it leaves one beside a log, which
                    // then has no record and its first generations.
                    let other = &self.segments[1 - i];
                    let size = segment.bytes.len() as u64;
                    if size < SEGMENT_BYTES || !size.is_multiple_of(GROW_STEP) {
                        problems.push(Problem {
                            path,
                            offset: size,
                            kind: ProblemKind::Truncated,
                            records: 0,
                        });
                    } else if !other.records.is_empty() || other.generation().unwrap_or(0) > 2 {
                        problems.push(Problem {
                            path,
                            offset: 0,
                            kind: ProblemKind::Header,
                            records: 0,
                        });
                    }
                }
                Header::Missing | Header::Blank => {}
                Header::Damaged(_) => problems.push(Problem {
                    path,
                    offset: 0,
                    kind: ProblemKind::Header,
                    records: segment.records.len(),
                }),
                Header::Valid(_) => {
                    if segment.records.len() > segment.intact {
                        let next = segment.records[segment.intact].at;
                        let stretch = segment.lost_stretch(segment.end..next, Cause::Damage, 0, self.payloads);
                        problems.push(Problem {
                            path: path.clone(),
                            offset: segment.end,
                            kind: ProblemKind::Record {
                                id: stretch.records.first().map(|r| r.ids[0]),
                            },
                            records: segment.records.len() - segment.intact,
                        });
                    } else if let Tail::Damaged { at, id, .. } = segment.tail
                        && !segment.truncated()
                    {
                        problems.push(Problem {
                            path: path.clone(),
                            offset: at,
                            kind: ProblemKind::LastRecord { id },
                            records: 0,
                        });
                    }
                    if segment.truncated() {
                        problems.push(Problem {
                            path,
                            offset: segment.bytes.len() as u64,
                            kind: ProblemKind::Truncated,
                            records: segment.records.len(),
                        });
                    }
                }
            }
        }
        problems
    }

    /// The file of the segment at `rank` in the log (0: the older).
    pub fn segment_path(&self, rank: usize) -> &Path {
        &self.segments[self.order()[rank.min(1)]].path
    }

    /// Every record that checks, in both segments, in log order (the older
    /// segment first): after damage too.
    pub fn records(&self) -> impl Iterator<Item = (Place, &Found)> {
        self.order().into_iter().enumerate().flat_map(move |(rank, i)| {
            self.segments[i]
                .records
                .iter()
                .map(move |record| (Place { rank, at: record.at }, record))
        })
    }

    /// The latest record of every job among all that check, and how many
    /// records that is in all: what the database gets. For a sound log,
    /// its whole content.
    pub fn salvage(&self) -> (Records, usize) {
        let mut latest = Records::new();
        let mut count = 0;
        for (_, record) in self.records() {
            latest.insert(record.id, record.payload.clone());
            count += 1;
        }
        (latest, count)
    }

    /// Every stretch of either segment where the log had, or may have had,
    /// records that do not check, with what can be told of them.
    pub fn lost(&self) -> Vec<LostStretch> {
        let mut lost = Vec::new();
        for (rank, i) in self.order().into_iter().enumerate() {
            let segment = &self.segments[i];
            let size = segment.bytes.len() as u64;
            if segment.header == Header::Damaged(None) {
                // No generation: nothing in it can be checked.
                if first_nonzero(&segment.bytes, HEADER_BYTES as usize).is_some() {
                    lost.push(segment.lost_stretch(HEADER_BYTES..size, Cause::Header, rank, self.payloads));
                }
                if segment.truncated() {
                    lost.push(segment.lost_stretch(size..size, Cause::Cut, rank, self.payloads));
                }
                continue;
            }
            if segment.generation().is_none() {
                // Gone, cut to zeros or zeroed beside a log: whatever it
                // held is lost unseen.
                if !segment.headed() && self.segments[1 - i].headed() && first_nonzero(&segment.bytes, 0).is_none() {
                    let cause = if segment.bytes.len() as u64 >= SEGMENT_BYTES {
                        Cause::Header
                    } else {
                        Cause::Cut
                    };
                    lost.push(segment.lost_stretch(0..size, cause, rank, self.payloads));
                }
                continue;
            }
            let mut from = HEADER_BYTES;
            for record in &segment.records {
                if record.at > from {
                    lost.push(segment.lost_stretch(from..record.at, Cause::Damage, rank, self.payloads));
                }
                from = record.end();
            }
            let cut_from = match segment.tail {
                Tail::Clean => from,
                Tail::Torn { at, end, .. } => {
                    if !segment.truncated() {
                        lost.push(segment.lost_stretch(at..end, Cause::Torn, rank, self.payloads));
                    }
                    at
                }
                Tail::Damaged { at, end, .. } => {
                    if !segment.truncated() {
                        lost.push(segment.lost_stretch(at..end, Cause::Damage, rank, self.payloads));
                    }
                    at
                }
            };
            if segment.truncated() {
                lost.push(segment.lost_stretch(cut_from.min(size)..size, Cause::Cut, rank, self.payloads));
            }
        }
        lost
    }

    /// Log the end of each segment that is not a clean one: a record cut
    /// short by a crash (never acknowledged), or what an older generation
    /// left, which cannot be told apart where other bytes follow.
    pub fn report_torn_ends(&self) {
        for segment in &self.segments {
            if let Tail::Torn { at, id, fresh, .. } = segment.tail {
                if fresh {
                    tracing::warn!(
                        log = %segment.path.display(),
                        offset = at,
                        job = id,
                        "the last record does not check: a write cut short by a crash, never acknowledged; dropped"
                    );
                } else {
                    tracing::debug!(
                        log = %segment.path.display(),
                        offset = at,
                        "the log ends where bytes of an older generation (or a write cut short) follow"
                    );
                }
            }
        }
    }
}

impl SegmentScan {
    /// What can be told of the records `range` held (none of them checks):
    /// follow their lengths from its start as far as they lead to payloads
    /// that decode, or to its end.
    fn lost_stretch(&self, range: std::ops::Range<u64>, cause: Cause, rank: usize, payloads: Payloads) -> LostStretch {
        let bytes = &self.bytes;
        let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(bytes.len());
        let end = usize::try_from(range.end)
            .unwrap_or(usize::MAX)
            .clamp(start, bytes.len());
        let mut records = Vec::new();
        let mut at = start;
        while let Some(head) = bytes
            .get(at..at + RECORD_HEADER_BYTES)
            .filter(|_| at + RECORD_HEADER_BYTES <= end)
        {
            if head.iter().all(|&b| b == 0) {
                break;
            }
            let (len, id) = record_head(head);
            let framed = (at + RECORD_HEADER_BYTES).checked_add(len).filter(|&e| e <= end);
            let decoded = framed.and_then(|e| {
                let payload = &bytes[at + RECORD_HEADER_BYTES..e];
                if payload.is_empty() {
                    None
                } else {
                    (payloads.id)(payload)
                }
            });
            let (next, ids, sure) = match (framed, decoded) {
                // The payload names the header's job: both are intact.
                (Some(e), Some(named)) if named == id => (e, vec![id], true),
                // They disagree: one of them is damaged.
                (Some(e), Some(named)) => (e, vec![named, id], false),
                // A deletion, or a payload that does not decode, whose
                // length leads exactly to the next record: the header
                // holds (the id too, if the payload's first bytes agree).
                (Some(e), None) if e == end => {
                    let leading = (payloads.leading_id)(&bytes[at + RECORD_HEADER_BYTES..e]);
                    (e, vec![id], len == 0 || leading == Some(id))
                }
                _ => {
                    // Perhaps only the length is damaged: the rest of the
                    // stretch as the payload.
                    let rest = &bytes[(at + RECORD_HEADER_BYTES).min(end)..end];
                    if !rest.is_empty() && (payloads.id)(rest) == Some(id) {
                        (end, vec![id], true)
                    } else {
                        // Unreadable from here; but if the payload's first
                        // bytes name the header's job, it is probably the
                        // job of the record starting here (one cut short).
                        if !rest.is_empty() && (payloads.leading_id)(rest) == Some(id) {
                            records.push(LostRecord {
                                at: at as u64,
                                ids: vec![id],
                                sure: false,
                                deletion: false,
                            });
                        }
                        break;
                    }
                }
            };
            records.push(LostRecord {
                at: at as u64,
                ids,
                sure,
                deletion: next == at + RECORD_HEADER_BYTES,
            });
            at = next;
        }
        let unreadable = first_nonzero(&bytes[..end], at).map(|_| at as u64..end as u64);
        LostStretch {
            path: self.path.clone(),
            range,
            cause,
            records,
            unreadable,
            rank,
        }
    }
}

/// A segment file's bytes; `None` when there is no file.
fn read_segment(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read the log {}", path.display())),
    }
}

/// What the first bytes of a file say (`exists`: whether there is one).
fn header_of(exists: bool, bytes: &[u8]) -> Header {
    if !exists {
        Header::Missing
    } else if let Some(generation) = parse_header(bytes) {
        Header::Valid(generation)
    } else if first_nonzero(bytes, 0).is_none() {
        Header::Blank
    } else {
        Header::Damaged(None)
    }
}

/// The records of `generation` in `bytes`: all that check (a scan past
/// damage finds those after it), how many of them follow one another from
/// the header, and where those end.
fn find_records(bytes: &[u8], generation: u64, payloads: Payloads) -> (Vec<Found>, usize, u64) {
    let mut records = Vec::new();
    let found = |(id, payload, _): (u64, &[u8], usize), at: usize| Found {
        at: at as u64,
        id,
        payload: payload.to_vec(),
    };
    let mut at = HEADER_BYTES as usize;
    while let Some(record) = parse_record(bytes, at, generation) {
        let next = record.2;
        records.push(found(record, at));
        at = next;
    }
    let intact = records.len();
    let end = at as u64;
    // Past the end of the log proper: is there more? Every later offset is
    // a candidate; runs of zeros (the unused part of a segment) are
    // skipped, and a candidate is checked only if its length fits and its
    // payload is a well-formed one of its job, so that only a record's
    // length costs a checksum, and noise all but never passes for one.
    let mut probe = at + 1;
    while let Some(head) = bytes.get(probe..probe + RECORD_HEADER_BYTES) {
        // Most noise claims a length past the end of the file.
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > bytes.len() - probe - RECORD_HEADER_BYTES {
            probe += 1;
            continue;
        }
        if head.iter().all(|&b| b == 0) {
            match first_nonzero(bytes, probe + RECORD_HEADER_BYTES) {
                // The first candidate whose header reaches that byte.
                Some(nonzero) => probe = nonzero + 1 - RECORD_HEADER_BYTES,
                None => break,
            }
            continue;
        }
        match plausible_record(bytes, probe, generation, payloads) {
            Some(record) => {
                let next = record.2;
                records.push(found(record, probe));
                probe = next;
            }
            None => probe += 1,
        }
    }
    (records, intact, end)
}

/// Length and job id in a record header.
fn record_head(head: &[u8]) -> (usize, u64) {
    let len = head
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let id = head
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    (len as usize, id)
}

/// The record at `at`, as [`parse_record`], when its payload is also a
/// well-formed one of its job.
fn plausible_record(bytes: &[u8], at: usize, generation: u64, payloads: Payloads) -> Option<(u64, &[u8], usize)> {
    let head = bytes.get(at..at.checked_add(RECORD_HEADER_BYTES)?)?;
    let (len, id) = record_head(head);
    let start = at + RECORD_HEADER_BYTES;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    // Cheapest first: the payload's first bytes, which reject nearly all
    // noise; the checksum, which rejects what an older generation left;
    // then the whole payload.
    if !payload.is_empty() && (payloads.leading_id)(payload) != Some(id) {
        return None;
    }
    parse_record(bytes, at, generation).filter(|_| payload.is_empty() || (payloads.id)(payload) == Some(id))
}

/// What follows the last record that checks, at `at`.
fn tail_at(bytes: &[u8], at: usize, generation: u64, payloads: Payloads) -> Tail {
    let Some(head) = bytes.get(at..at.saturating_add(RECORD_HEADER_BYTES)) else {
        return Tail::Clean; // a cut file is judged by its size
    };
    if head.iter().all(|&b| b == 0) {
        return Tail::Clean;
    }
    let (len, id) = record_head(head);
    let start = at + RECORD_HEADER_BYTES;
    let whole = start.checked_add(len).filter(|&end| end <= bytes.len());
    if let Some(end) = whole {
        let payload = &bytes[start..end];
        if left_by_older_generation(head, payload, generation) {
            return Tail::Clean;
        }
        // A crash cuts a write short at a sector boundary and leaves what
        // was there (zeros, or an older generation's bytes) after it; a
        // whole payload that decodes was written whole, so its failing
        // checksum is damage.
        if !payload.is_empty()
            && let Some(named) = (payloads.id)(payload)
        {
            return Tail::Damaged {
                at: at as u64,
                end: end as u64,
                id: named,
            };
        }
    }
    let last_nonzero = bytes.iter().rposition(|&b| b != 0).unwrap_or(0);
    let claimed_end = whole.unwrap_or(start);
    let fresh = last_nonzero < claimed_end.max(start);
    // Only zeros follow, so the bytes are this generation's. If they
    // decode as the header's job when taken up to the last of them, only
    // the length is damaged; unless they end at a sector boundary, where a
    // write cut short would end them too.
    if last_nonzero >= start && (last_nonzero + 1) % SECTOR_BYTES != 0 {
        let rest = &bytes[start..=last_nonzero];
        if (payloads.id)(rest) == Some(id) {
            return Tail::Damaged {
                at: at as u64,
                end: last_nonzero as u64 + 1,
                id,
            };
        }
    }
    Tail::Torn {
        at: at as u64,
        end: claimed_end.max(start) as u64,
        id,
        fresh,
    }
}

/// The first byte from `from` on that is not zero.
fn first_nonzero(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    // Eight bytes at a time: segments are mostly zeros.
    let mut chunks = rest.chunks_exact(8);
    let mut skipped = 0;
    for chunk in chunks.by_ref() {
        if chunk.iter().any(|&b| b != 0) {
            break;
        }
        skipped += 8;
    }
    rest[skipped..].iter().position(|&b| b != 0).map(|i| from + skipped + i)
}

/// Whether a whole record (`head` and `payload`) checks for some
/// generation below `generation`: bytes an older generation left, not
/// damage. The checksum is affine in the generation over GF(2) (CRC-32 is
/// linear in its input, for a fixed length), so rather than trying the
/// generations one by one, solve for the smallest that would check.
fn left_by_older_generation(head: &[u8], payload: &[u8], generation: u64) -> bool {
    let Some(stored) = head.get(4..8).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes) else {
        return false;
    };
    let mut rest = crc32fast::Hasher::new();
    rest.update(&head[0..4]);
    rest.update(&head[8..16]);
    rest.update(payload);
    let checksum = |generation: u64| {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&generation.to_le_bytes());
        hasher.combine(&rest);
        hasher.finalize()
    };
    let base = checksum(0);
    let columns: [u32; 64] = std::array::from_fn(|bit| checksum(1 << bit) ^ base);
    smallest_solution(&columns, stored ^ base).is_some_and(|older| older < generation)
}

/// The smallest `x` whose set bits pick columns that XOR to `target`, if any.
fn smallest_solution(columns: &[u32; 64], target: u32) -> Option<u64> {
    // spans[i]: a basis of the span of columns[..i], by leading bit.
    let mut spans = Vec::with_capacity(65);
    let mut basis = [0u32; 32];
    spans.push(basis);
    for &column in columns {
        let mut v = column;
        for bit in (0..32).rev() {
            if v >> bit & 1 == 0 {
                continue;
            }
            if basis[bit] == 0 {
                basis[bit] = v;
                break;
            }
            v ^= basis[bit];
        }
        spans.push(basis);
    }
    let in_span = |basis: &[u32; 32], mut v: u32| {
        for bit in (0..32).rev() {
            if v >> bit & 1 == 1 {
                v ^= basis[bit];
            }
        }
        v == 0
    };
    let mut rest = target;
    if !in_span(&spans[64], rest) {
        return None;
    }
    // From the highest bit down, leave a bit clear whenever the lower
    // columns can still make up the rest.
    let mut x = 0u64;
    for bit in (0..64).rev() {
        if !in_span(&spans[bit], rest) {
            x |= 1 << bit;
            rest ^= columns[bit];
        }
    }
    (rest == 0).then_some(x)
}

fn parse_header(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(..HEADER_BYTES as usize)?;
    if &header[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().ok()?);
    (crc32fast::hash(&header[..16]) == crc).then(|| u64::from_le_bytes(header[8..16].try_into().unwrap_or_default()))
}

/// The record at `at`, if a whole one of `generation` is there: job id,
/// payload and where the next record starts.
fn parse_record(bytes: &[u8], at: usize, generation: u64) -> Option<(u64, &[u8], usize)> {
    let head = bytes.get(at..at.checked_add(RECORD_HEADER_BYTES)?)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let id_bytes = &head[8..16];
    let start = at + RECORD_HEADER_BYTES;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(&head[0..4]);
    hasher.update(id_bytes);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return None;
    }
    Some((u64::from_le_bytes(id_bytes.try_into().ok()?), payload, start + len))
}

fn encode_record(out: &mut Vec<u8>, generation: u64, id: u64, payload: &[u8]) -> anyhow::Result<()> {
    let len = u32::try_from(payload.len()).context("a job record is over 4 GiB")?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(&id.to_le_bytes());
    hasher.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The thread that checkpoints a full segment while appends go on.
struct Checkpointer {
    write: CheckpointFn,
    jobs: Option<Sender<Records>>,
    done: Receiver<(Records, anyhow::Result<()>)>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
    /// A checkpoint that failed, to retry before its segment may be reset.
    failed: Option<Records>,
}

impl Checkpointer {
    fn start(write: CheckpointFn) -> anyhow::Result<Checkpointer> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Records>();
        let (done_tx, done) = mpsc::channel();
        let thread_write = write.clone();
        let thread = std::thread::Builder::new()
            .name("wsched-checkpoint".into())
            .spawn(move || {
                for records in jobs_rx {
                    let started = std::time::Instant::now();
                    let result = thread_write(&records);
                    tracing::debug!(
                        records = records.len(),
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "checkpoint written"
                    );
                    if done_tx.send((records, result)).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the checkpoint thread")?;
        Ok(Checkpointer {
            write,
            jobs: Some(jobs_tx),
            done,
            thread: Some(thread),
            in_flight: false,
            failed: None,
        })
    }

    /// Hand `records` to the thread; if it is gone, keep them for `wait` to
    /// write here.
    fn send(&mut self, records: Records) {
        match &self.jobs {
            Some(sender) => match sender.send(records) {
                Ok(()) => self.in_flight = true,
                Err(mpsc::SendError(records)) => self.failed = Some(records),
            },
            None => self.failed = Some(records),
        }
    }

    /// Wait until the last checkpoint is in the database, retrying it here
    /// if it failed.
    fn wait(&mut self) -> anyhow::Result<()> {
        if self.in_flight {
            // A thread that died took its records with it: stay in flight,
            // so that their segment is never reset (a restart replays it).
            let (records, result) = self
                .done
                .recv()
                .map_err(|_| anyhow::anyhow!("the checkpoint thread died; restart to replay the log"))?;
            self.in_flight = false;
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "checkpoint failed; retrying");
                self.failed = Some(records);
            }
        }
        if let Some(records) = self.failed.take()
            && let Err(e) = (self.write)(&records)
        {
            self.failed = Some(records);
            return Err(e.context("cannot checkpoint the log into the database"));
        }
        Ok(())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Let a checkpoint in flight finish; what it does not finish is
        // replayed from the log at the next start.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The log: two segments and the checkpoint thread.
pub struct Log {
    segments: [Segment; 2],
    active: usize,
    next_generation: u64,
    /// Latest record of every job appended to the active segment since its
    /// reset: what its checkpoint will write.
    pending: Records,
    checkpointer: Checkpointer,
    buf: Vec<u8>,
}

impl Log {
    /// Open the log in `paths` (creating it), write every record it holds
    /// into the database through `checkpoint`, and start it over empty.
    /// Returns the log and how many records were replayed. A damaged log is
    /// refused with a [`DamagedLog`] error, before any file is changed.
    pub fn open(paths: [&Path; 2], checkpoint: CheckpointFn, payloads: Payloads) -> anyhow::Result<(Log, usize)> {
        Log::open_scanned(LogScan::read(paths, payloads)?, checkpoint)
    }

    /// [`Log::open`] the log `scan` read.
    pub fn open_scanned(scan: LogScan, checkpoint: CheckpointFn) -> anyhow::Result<(Log, usize)> {
        let problems = scan.problems();
        if !problems.is_empty() {
            return Err(DamagedLog { problems }.into());
        }
        scan.report_torn_ends();
        let (replay, count) = scan.salvage();
        if !replay.is_empty() {
            checkpoint(&replay).context("cannot replay the log into the database")?;
        }
        Ok((Log::start_over(&scan, checkpoint)?, count))
    }

    /// Start the log `scan` read over empty, in the same files, once its
    /// records are in the database: both segments are (created and)
    /// reset, the older first, with generations above any they held; a
    /// damaged one is zero-filled first (keep a copy).
    pub fn start_over(scan: &LogScan, checkpoint: CheckpointFn) -> anyhow::Result<Log> {
        let damaged: Vec<PathBuf> = scan.problems().into_iter().map(|p| p.path).collect();
        let mut segments = [
            Segment::prepare(&scan.segments[0], damaged.contains(&scan.segments[0].path))?,
            Segment::prepare(&scan.segments[1], damaged.contains(&scan.segments[1].path))?,
        ];
        let order = scan.order();
        let mut next_generation = scan.highest_generation() + 1;
        // Resetting the older one first keeps the newest record of every
        // job in a segment that is still valid after a crash at any point.
        for &i in &order {
            segments[i].reset(next_generation)?;
            next_generation += 1;
        }
        // The newer one takes appends; the older stays empty until rotation.
        let active = order[1];
        Ok(Log {
            segments,
            active,
            next_generation,
            pending: Records::new(),
            checkpointer: Checkpointer::start(checkpoint)?,
            buf: Vec::new(),
        })
    }

    /// Append job records (id, payload), durably: when this returns Ok, all
    /// of them are on disk; when it fails, none of them will be replayed.
    pub fn append(&mut self, records: Appended) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let bytes: u64 = records
            .iter()
            .map(|(_, p)| (RECORD_HEADER_BYTES + p.len()) as u64)
            .sum();
        let segment = &self.segments[self.active];
        if segment.end + bytes > segment.capacity && segment.end > HEADER_BYTES {
            self.rotate()?;
        }
        let segment = &mut self.segments[self.active];
        if segment.end + bytes > segment.capacity {
            segment.grow(segment.end + bytes)?;
        }
        self.buf.clear();
        for (id, payload) in &records {
            encode_record(&mut self.buf, segment.generation, *id, payload)?;
        }
        segment.append(&self.buf)?;
        self.pending.extend(records);
        Ok(())
    }

    /// Switch appends to the other segment and checkpoint the full one.
    fn rotate(&mut self) -> anyhow::Result<()> {
        // The other segment's records must be in the database before it is
        // reset.
        self.checkpointer.wait()?;
        let next = 1 - self.active;
        self.segments[next].reset(self.next_generation)?;
        self.next_generation += 1;
        self.active = next;
        let full = std::mem::take(&mut self.pending);
        self.checkpointer.send(full);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A database stand-in that records what checkpoints wrote.
    fn memory_db() -> (Arc<Mutex<Records>>, CheckpointFn) {
        let db: Arc<Mutex<Records>> = Arc::default();
        let writer = db.clone();
        let write: CheckpointFn = Arc::new(move |records: &Records| {
            let mut db = writer.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            db.extend(records.iter().map(|(k, v)| (*k, v.clone())));
            Ok(())
        });
        (db, write)
    }

    fn paths(dir: &Path) -> [PathBuf; 2] {
        [dir.join("log0"), dir.join("log1")]
    }

    /// The test payloads' job id: their first eight bytes, when a text
    /// without zeros ending in `.` follows (as a protobuf message, a
    /// payload cut short and filled with zeros does not decode).
    fn test_payload_id(payload: &[u8]) -> Option<u64> {
        let (id, text) = payload.split_at_checked(8)?;
        (text.last() == Some(&b'.') && !text.contains(&0)).then(|| u64::from_le_bytes(id.try_into().unwrap()))
    }

    const TEST_PAYLOADS: Payloads = Payloads {
        id: test_payload_id,
        leading_id: |payload| payload.get(..8)?.try_into().ok().map(u64::from_le_bytes),
    };

    /// A payload of job `id` saying `text`.
    fn rec(id: u64, text: &str) -> Vec<u8> {
        let mut payload = id.to_le_bytes().to_vec();
        payload.extend_from_slice(text.as_bytes());
        payload.push(b'.');
        payload
    }

    fn try_open(dir: &Path, write: &CheckpointFn) -> anyhow::Result<(Log, usize)> {
        let [a, b] = paths(dir);
        Log::open([&a, &b], write.clone(), TEST_PAYLOADS)
    }

    fn open(dir: &Path, write: &CheckpointFn) -> (Log, usize) {
        try_open(dir, write).unwrap()
    }

    #[test]
    fn appended_records_are_replayed_after_a_crash_latest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (db, write) = memory_db();
        {
            let (mut log, replayed) = open(dir.path(), &write);
            assert_eq!(replayed, 0);
            log.append(vec![(1, rec(1, "pending")), (2, rec(2, "pending"))])
                .unwrap();
            log.append(vec![(1, rec(1, "running"))]).unwrap();
            // Dropped without a checkpoint: as after `kill -9`.
        }
        assert!(db.lock().unwrap().is_empty());
        let (_log, replayed) = open(dir.path(), &write);
        assert_eq!(replayed, 3);
        let db = db.lock().unwrap();
        assert_eq!(db[&1], rec(1, "running"));
        assert_eq!(db[&2], rec(2, "pending"));
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_ones_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (db, write) = memory_db();
        let (end, active) = {
            let (mut log, _) = open(dir.path(), &write);
            log.append(vec![(1, rec(1, "kept"))]).unwrap();
            log.append(vec![(2, rec(2, "torn"))]).unwrap();
            (log.segments[log.active].end, log.active)
        };
        // Cut the last record short, as a crash in the middle of its write.
        let file = OpenOptions::new().write(true).open(&paths(dir.path())[active]).unwrap();
        file.write_all_at(&[0u8; 3], end - 3).unwrap();
        let (_log, replayed) = open(dir.path(), &write);
        assert_eq!(replayed, 1);
        let db = db.lock().unwrap();
        assert_eq!(db[&1], rec(1, "kept"));
        assert!(!db.contains_key(&2));
    }

    #[test]
    fn a_damaged_header_is_an_error_naming_the_file_not_a_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let (db, write) = memory_db();
        let active = {
            let (mut log, _) = open(dir.path(), &write);
            log.append(vec![(1, rec(1, "acknowledged"))]).unwrap();
            log.active
        };
        let damaged = &paths(dir.path())[active];
        let file = OpenOptions::new().write(true).open(damaged).unwrap();
        file.write_all_at(b"garbage!", 0).unwrap();
        let error = try_open(dir.path(), &write).err().expect("refused");
        let message = format!("{error:#}");
        assert!(message.contains(&damaged.display().to_string()), "{message}");
        assert!(message.contains("header is damaged"), "{message}");
        assert!(db.lock().unwrap().is_empty());
    }

    #[test]
    fn records_of_an_older_generation_are_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (db, write) = memory_db();
        {
            let (mut log, _) = open(dir.path(), &write);
            for _ in 0..100 {
                log.append(vec![(1, rec(1, "old"))]).unwrap();
            }
        }
        // The restart checkpoints "old" and resets both segments; then one
        // newer record is written over the start of the old ones.
        {
            let (mut log, replayed) = open(dir.path(), &write);
            assert_eq!(replayed, 100);
            db.lock().unwrap().clear();
            log.append(vec![(1, rec(1, "new"))]).unwrap();
        }
        let (_log, replayed) = open(dir.path(), &write);
        assert_eq!(replayed, 1);
        assert_eq!(db.lock().unwrap()[&1], rec(1, "new"));
    }

    #[test]
    fn full_segments_rotate_and_are_checkpointed_without_losing_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (db, write) = memory_db();
        let payload = vec![7u8; 64 * 1024];
        // Enough for several rotations of 8 MiB segments.
        let total = 3 * SEGMENT_BYTES as usize / payload.len();
        {
            let (mut log, _) = open(dir.path(), &write);
            for id in 0..total as u64 {
                log.append(vec![(id, payload.clone())]).unwrap();
            }
            assert!(log.next_generation > 4, "the segments rotated");
        }
        // What the checkpoints wrote plus what the restart replays is all.
        let _ = open(dir.path(), &write);
        assert_eq!(db.lock().unwrap().len(), total);
    }

    #[test]
    fn a_batch_larger_than_a_segment_grows_it() {
        let dir = tempfile::tempdir().unwrap();
        let (db, write) = memory_db();
        {
            let (mut log, _) = open(dir.path(), &write);
            let big = vec![1u8; SEGMENT_BYTES as usize + 10];
            log.append(vec![(1, big), (2, rec(2, "small"))]).unwrap();
        }
        let (_log, replayed) = open(dir.path(), &write);
        assert_eq!(replayed, 2);
        assert_eq!(db.lock().unwrap()[&1].len(), SEGMENT_BYTES as usize + 10);
    }

    #[test]
    fn a_failed_checkpoint_keeps_the_segment_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (db, good) = memory_db();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let switch = failing.clone();
        let write: CheckpointFn = Arc::new(move |records: &Records| {
            anyhow::ensure!(!switch.load(std::sync::atomic::Ordering::SeqCst), "disk full");
            good(records)
        });
        let payload = vec![7u8; 1024 * 1024];
        let (mut log, _) = open(dir.path(), &write);
        // Fill the first segment; rotating sends its checkpoint, which fails.
        for id in 0..8 {
            log.append(vec![(id, payload.clone())]).unwrap();
        }
        // Filling the second one needs the first reset: refused while its
        // records are not in the database.
        let mut refused = false;
        for id in 8..16 {
            if log.append(vec![(id, payload.clone())]).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "a segment was reset before its checkpoint succeeded");
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        log.append(vec![(99, payload.clone())]).unwrap();
        drop(log);
        let _ = open(dir.path(), &write);
        let db = db.lock().unwrap();
        for id in (0..8).chain([99]) {
            assert!(db.contains_key(&id), "job {id} lost");
        }
    }

    /// A log as a crash left it, kept in memory to damage copies of: both
    /// segment files, what the database held, and every record in log
    /// order with where it lies.
    struct Pristine {
        dir: tempfile::TempDir,
        files: [Vec<u8>; 2],
        db: Records,
        /// File index, byte range, job id, payload.
        records: Vec<(usize, std::ops::Range<u64>, u64, Vec<u8>)>,
    }

    /// What to do to one file.
    #[derive(Debug, Clone, Copy)]
    enum Harm {
        /// Flip every bit of the byte at this offset.
        Flip(usize, u64),
        /// Cut the file short at this offset.
        Cut(usize, u64),
    }

    /// Assert two databases are equal, showing only where they differ.
    fn assert_same(got: &Records, want: &Records, context: &str) {
        let short =
            |v: Option<&Vec<u8>>| v.map(|v| String::from_utf8_lossy(&v[8.min(v.len())..v.len().min(14)]).into_owned());
        let differ: Vec<_> = got
            .keys()
            .chain(want.keys())
            .filter(|id| got.get(id) != want.get(id))
            .map(|id| (id, short(got.get(id)), short(want.get(id))))
            .collect();
        assert!(differ.is_empty(), "{context}: (job, got, want): {differ:?}");
    }

    impl Pristine {
        /// Append `batches` and crash (drop the log without a word).
        fn new(batches: Vec<Appended>) -> Pristine {
            let dir = tempfile::tempdir().unwrap();
            let (db, write) = memory_db();
            {
                let (mut log, _) = open(dir.path(), &write);
                for batch in batches {
                    log.append(batch).unwrap();
                }
            }
            let [a, b] = paths(dir.path());
            let files = [std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()];
            let scan = LogScan::read([&a, &b], TEST_PAYLOADS).unwrap();
            assert!(scan.problems().is_empty(), "{:?}", scan.problems());
            let order = scan.order();
            let records = scan
                .records()
                .map(|(place, r)| (order[place.rank], r.at..r.end(), r.id, r.payload.clone()))
                .collect();
            let db = db.lock().unwrap().clone();
            Pristine {
                dir,
                files,
                db,
                records,
            }
        }

        fn write(&self, files: &[Vec<u8>; 2]) {
            for (path, bytes) in paths(self.dir.path()).iter().zip(files) {
                std::fs::write(path, bytes).unwrap();
            }
        }

        /// Harm the log, open it, and check that no record whose bytes
        /// are intact is lost: either it opens with all of them (a damaged
        /// last record may be taken for one a crash cut short), or it
        /// refuses, naming the file, and leaves both files as they were;
        /// then a salvage brings every one of them back and names the
        /// damaged records. Returns whether it refused.
        fn judge(&self, harm: Harm) -> bool {
            let (file, hit) = match harm {
                Harm::Flip(file, at) => (file, at..at + 1),
                Harm::Cut(file, at) => (file, at..u64::MAX),
            };
            let path = &paths(self.dir.path())[file];
            let mut files = self.files.clone();
            match harm {
                Harm::Flip(_, at) => files[file][at as usize] ^= 0xff,
                Harm::Cut(_, at) => files[file].truncate(at as usize),
            }
            std::fs::write(path, &files[file]).unwrap();
            let damaged =
                |f: usize, range: &std::ops::Range<u64>| f == file && range.start < hit.end && hit.start < range.end;
            // The database after a replay of the intact records.
            let mut expected = self.db.clone();
            for (f, range, id, payload) in &self.records {
                if !damaged(*f, range) {
                    expected.insert(*id, payload.clone());
                }
            }
            // Each damaged record, and whether it was the last of its file.
            let hurt: Vec<(u64, u64, bool)> = self
                .records
                .iter()
                .enumerate()
                .filter(|(_, (f, range, _, _))| damaged(*f, range))
                .map(|(i, (f, range, id, _))| {
                    let last = self.records[i + 1..].iter().all(|(other, ..)| other != f);
                    (*id, range.start, last)
                })
                .collect();
            let (db, write) = memory_db();
            db.lock().unwrap().clone_from(&self.db);
            let refused = match try_open(self.dir.path(), &write) {
                Ok((log, _)) => {
                    drop(log);
                    assert!(!matches!(harm, Harm::Cut(..)), "{harm:?}: a cut file opened");
                    for &(id, at, last) in &hurt {
                        assert!(
                            last,
                            "{harm:?}: the record of job {id} at {at} is damaged, yet the log opened"
                        );
                    }
                    assert_same(&db.lock().unwrap(), &expected, &format!("{harm:?}: a record lost"));
                    false
                }
                Err(e) => {
                    let damaged_log = e
                        .downcast_ref::<DamagedLog>()
                        .unwrap_or_else(|| panic!("{harm:?}: {e:#}"));
                    let message = damaged_log.to_string();
                    assert!(message.contains(&path.display().to_string()), "{harm:?}: {message}");
                    assert!(message.contains("byte "), "{harm:?}: {message}");
                    assert_same(
                        &db.lock().unwrap(),
                        &self.db,
                        &format!("{harm:?}: the database changed"),
                    );
                    for (path, bytes) in paths(self.dir.path()).iter().zip(&files) {
                        assert!(
                            std::fs::read(path).unwrap() == *bytes,
                            "{harm:?}: {} changed",
                            path.display()
                        );
                    }
                    // The salvage.
                    let [a, b] = paths(self.dir.path());
                    let scan = LogScan::read([&a, &b], TEST_PAYLOADS).unwrap();
                    let mut salvaged = self.db.clone();
                    salvaged.extend(scan.salvage().0);
                    assert_same(
                        &salvaged,
                        &expected,
                        &format!("{harm:?}: a salvage lost a record that checks"),
                    );
                    let lost = scan.lost();
                    for &(id, at, _) in &hurt {
                        let named = lost.iter().any(|stretch| {
                            stretch.cause == Cause::Cut
                                || stretch.unreadable.as_ref().is_some_and(|u| u.contains(&at))
                                || stretch.records.iter().any(|r| r.at == at && r.ids.contains(&id))
                        });
                        assert!(
                            named,
                            "{harm:?}: the damaged record of job {id} at {at} is not named: {lost:?}"
                        );
                    }
                    // Started over, the log opens clean.
                    db.lock().unwrap().clone_from(&salvaged);
                    drop(Log::start_over(&scan, write.clone()).unwrap());
                    let (log, replayed) = try_open(self.dir.path(), &write)
                        .unwrap_or_else(|e| panic!("{harm:?}: refused after a salvage: {e:#}"));
                    drop(log);
                    assert_eq!(replayed, 0, "{harm:?}");
                    assert_same(&db.lock().unwrap(), &expected, &format!("{harm:?}: after a salvage"));
                    self.write(&self.files);
                    true
                }
            };
            if !refused {
                self.write(&self.files);
            }
            refused
        }
    }

    /// Bytes worth damaging in a record at `range`: every one of its
    /// header's and a spread of its payload's.
    fn offsets_in(range: &std::ops::Range<u64>) -> Vec<u64> {
        let payload = range.start + RECORD_HEADER_BYTES as u64..range.end;
        let step = (payload.end - payload.start).div_ceil(8).max(1);
        (range.start..payload.start)
            .chain(payload.clone().step_by(step as usize))
            .chain([range.end - 1])
            .collect()
    }

    #[test]
    fn damage_anywhere_loses_no_record_silently() {
        // 200 jobs, one record each, in batches of one to three, with
        // payloads of 2 to 41 bytes, in the first segment of a new log.
        let mut batches = Vec::new();
        let mut id = 0;
        while id < 200 {
            let batch: Appended = (id..(id + 1 + id % 3).min(200))
                .map(|i| (i, rec(i, &"x".repeat(1 + (i % 40) as usize))))
                .collect();
            id += batch.len() as u64;
            batches.push(batch);
        }
        let log = Pristine::new(batches);
        let active = log.records[0].0;
        let spans: Vec<_> = log.records.iter().map(|(_, range, ..)| range.clone()).collect();
        let log_end = spans.last().unwrap().end;
        let mut refusals = 0;
        let mut trials = 0;
        let mut harm = |harm: Harm| {
            trials += 1;
            refusals += usize::from(log.judge(harm));
        };
        // Every byte of the first, the 101st, the last but one and the last
        // record; a spread over the rest of the records.
        for i in [0, 100, 198, 199] {
            for at in spans[i].start..spans[i].end {
                harm(Harm::Flip(active, at));
            }
        }
        for at in (HEADER_BYTES..log_end).step_by(61) {
            harm(Harm::Flip(active, at));
        }
        // The headers, and both files' unused space.
        for file in [0, 1] {
            for at in 0..HEADER_BYTES {
                harm(Harm::Flip(file, at));
            }
        }
        for at in (log_end..log_end + 24).chain((log_end + 24..SEGMENT_BYTES).step_by(299_993)) {
            assert!(
                !log.judge(Harm::Flip(active, at)),
                "a flip at {at}, past the log, refused"
            );
        }
        for at in (HEADER_BYTES..SEGMENT_BYTES).step_by(1_048_573) {
            assert!(
                !log.judge(Harm::Flip(1 - active, at)),
                "a flip at {at} of the unused segment, refused"
            );
        }
        // Cuts: at and around record boundaries, and across the file.
        for i in [0, 1, 50, 100, 150, 199] {
            for at in [
                spans[i].start,
                spans[i].start + 1,
                spans[i].start + 17,
                spans[i].end - 1,
                spans[i].end,
            ] {
                harm(Harm::Cut(active, at));
            }
        }
        for at in [0, 1, 31, 32, 33, 4096, 1 << 20, SEGMENT_BYTES - 1] {
            harm(Harm::Cut(active, at));
            harm(Harm::Cut(1 - active, at));
        }
        assert!(refusals > trials / 2, "{refusals} refusals in {trials} trials");
    }

    #[test]
    fn damage_in_a_rotated_log_loses_no_record_silently() {
        // Records of 150 jobs, each several times, in 40 KiB records: the
        // segments rotate twice, so each holds an older generation's
        // records past its end.
        let batches: Vec<Appended> = (0..500u64)
            .map(|i| vec![(i % 150, rec(i % 150, &format!("{i}{}", "y".repeat(40_000))))])
            .collect();
        let log = Pristine::new(batches);
        let mut trials = Vec::new();
        for file in [0, 1] {
            let spans: Vec<_> = log
                .records
                .iter()
                .filter(|(f, ..)| *f == file)
                .map(|(_, range, ..)| range.clone())
                .collect();
            assert!(spans.len() > 10, "both segments hold records");
            for i in [0, 1, spans.len() / 2, spans.len() - 2, spans.len() - 1] {
                trials.extend(offsets_in(&spans[i]).into_iter().map(|at| Harm::Flip(file, at)));
                trials.push(Harm::Cut(file, spans[i].start + 5));
            }
            trials.extend([0, 7, 8, 15, 16, 19, 20, 31].map(|at| Harm::Flip(file, at)));
            // What an older generation left, past the end of the log.
            let end = spans.last().unwrap().end;
            trials.extend((end..end + 20).map(|at| Harm::Flip(file, at)));
        }
        for harm in trials {
            log.judge(harm);
        }
    }

    #[test]
    fn a_record_an_older_generation_left_is_told_from_damage() {
        let mut record = Vec::new();
        encode_record(&mut record, 5, 42, &rec(42, "older")).unwrap();
        let (head, payload) = record.split_at(RECORD_HEADER_BYTES);
        assert!(left_by_older_generation(head, payload, 7));
        assert!(left_by_older_generation(head, payload, 6));
        assert!(!left_by_older_generation(head, payload, 5), "not older than its own");
        for at in 0..record.len() {
            let mut damaged = record.clone();
            damaged[at] ^= 0x5a;
            let (head, payload) = damaged.split_at(RECORD_HEADER_BYTES);
            if (4..8).contains(&at) {
                // The checksum itself: some far generation may match it.
                continue;
            }
            assert!(!left_by_older_generation(head, payload, 1 << 20), "damage at {at}");
        }
    }
}
