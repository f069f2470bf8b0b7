//! How fast a job runs where it runs: measured throughput per job type,
//! GPU kind and gang size.
//!
//! Why a table: the effects utilisation policies act on are differences of
//! speed. A ResNet-50 step takes about ten times longer on a K80 than on a
//! V100, and a Transformer gains less than twice from twice the GPUs.
//! Without them every kind looks alike and every gang scales perfectly,
//! so heterogeneity-aware and placement-aware policies can only look
//! neutral. The table is Gavel's measured one by default
//! (`examples/throughputs/gavel-simulation.json`, from
//! stanford-futuredata/gavel, MIT), in Gavel's own format so that its
//! users' tables load as they are:
//!
//! ```json
//! {"v100": {"('ResNet-50 (batch size 64)', 2)": {"null": 6.1, "...": [..]}}}
//! ```
//!
//! GPU kind (matched to a cluster's kinds without regard to case), then
//! `(job type, GPUs)`, then `null`: steps per second of that job alone on
//! that many GPUs of that kind. Each other entry, keyed by a second job
//! type on as many GPUs, is the pair measured sharing those GPUs: the
//! steps per second of the first job and of the second (read when sharing
//! is modelled as measured, see [`crate::cluster::Colocation`]). A pair
//! naming a type that has no figure of its own is ignored.
//!
//! A job's speed is read relative to its reference: the kind its trace
//! duration was measured on, with the GPUs it asked for, on one node. There
//! a job runs exactly as fast as without a table. A gang spread over nodes
//! reads the `<kind>_unconsolidated` figures where the table has them
//! (see [`crate::cluster::Cluster::set_speed_model`]).

use std::collections::BTreeMap;
use std::path::Path;

/// Gavel's measured table (`examples/throughputs/gavel-simulation.json`),
/// built in: `--throughputs gavel`.
pub const GAVEL: &str = include_str!("../../examples/throughputs/gavel-simulation.json");

/// Largest table file read, in bytes (Gavel's is 1.2 MB).
pub const MAX_FILE_BYTES: usize = 32 << 20;

/// Most GPU kinds, and most job types, in a table.
pub const MAX_NAMES: usize = 4096;

/// Steps per second by GPU kind, job type and gang size.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ThroughputTable {
    /// Job type names, sorted: a job's type is an index into them.
    types: Vec<String>,
    /// GPU kinds, lower case, sorted.
    kinds: Vec<String>,
    /// (kind, type, GPUs) -> steps per second alone.
    alone: BTreeMap<(u16, u16, u32), f64>,
    /// (kind, type, GPUs, other type) -> steps per second of each of the
    /// two sharing those GPUs.
    pairs: BTreeMap<(u16, u16, u32, u16), (f64, f64)>,
}

/// A throughput read from a table: finite and in [0, 1e12].
fn steps_per_second(value: Option<f64>) -> Option<f64> {
    value.filter(|t| t.is_finite() && (0.0..=1e12).contains(t))
}

/// `('ResNet-50 (batch size 64)', 2)` -> the name and the GPU count.
fn parse_key(key: &str) -> Option<(String, u32)> {
    let inner = key.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (name, gpus) = inner.rsplit_once(',')?;
    let name = name.trim();
    let name = name
        .strip_prefix('\'')
        .and_then(|n| n.strip_suffix('\''))
        .or_else(|| name.strip_prefix('"').and_then(|n| n.strip_suffix('"')))?;
    let gpus: u32 = gpus.trim().parse().ok()?;
    (!name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control) && gpus >= 1)
        .then(|| (name.to_string(), gpus))
}

impl ThroughputTable {
    /// A table from text in Gavel's format (see the module doc).
    pub fn from_gavel_json(text: &str) -> Result<ThroughputTable, String> {
        let raw: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
            serde_json::from_str(text).map_err(|e| format!("not a throughput table: {e}"))?;
        if raw.len() > MAX_NAMES {
            return Err(format!("{} GPU kinds, the most is {MAX_NAMES}", raw.len()));
        }
        let mut entries: Vec<(String, String, u32, f64)> = Vec::new();
        // (kind, type, GPUs, other type, both throughputs)
        type PairEntry = (String, String, u32, String, (f64, f64));
        let mut pairs: Vec<PairEntry> = Vec::new();
        for (kind, jobs) in &raw {
            let kind_lc = kind.trim().to_ascii_lowercase();
            if kind_lc.is_empty() || kind_lc.len() > 64 || kind_lc.chars().any(char::is_control) {
                return Err(format!("GPU kind {} is not a name", crate::bounds::shown(kind)));
            }
            for (key, value) in jobs {
                let (name, gpus) = parse_key(key)
                    .ok_or_else(|| format!("{kind}: {} is not ('job type', GPUs)", crate::bounds::shown(key)))?;
                let alone = value
                    .get("null")
                    .and_then(serde_json::Value::as_f64)
                    .ok_or_else(|| format!("{kind}: {}: no \"null\" throughput", crate::bounds::shown(key)))?;
                if !(alone.is_finite() && (0.0..=1e12).contains(&alone)) {
                    return Err(format!(
                        "{kind}: {}: throughput {alone} is not in [0, 1e12]",
                        crate::bounds::shown(key)
                    ));
                }
                if let Some(shared) = value.as_object() {
                    for (other, both) in shared.iter().filter(|(k, _)| k.as_str() != "null") {
                        let measured = both
                            .as_array()
                            .filter(|a| a.len() == 2)
                            .and_then(|a| Some((steps_per_second(a[0].as_f64())?, steps_per_second(a[1].as_f64())?)));
                        let (Some((other, other_gpus)), Some(both)) = (parse_key(other), measured) else {
                            return Err(format!(
                                "{kind}: {}: {}: not a pair of throughputs in [0, 1e12]",
                                crate::bounds::shown(key),
                                crate::bounds::shown(other)
                            ));
                        };
                        if other_gpus == gpus {
                            pairs.push((kind_lc.clone(), name.clone(), gpus, other, both));
                        }
                    }
                }
                entries.push((kind_lc.clone(), name, gpus, alone));
            }
        }
        let mut types: Vec<String> = entries.iter().map(|e| e.1.clone()).collect();
        types.sort();
        types.dedup();
        let mut kinds: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
        kinds.sort();
        kinds.dedup();
        if types.len() > MAX_NAMES {
            return Err(format!("{} job types, the most is {MAX_NAMES}", types.len()));
        }
        if types.is_empty() {
            return Err("no throughput in the table".into());
        }
        let index = |list: &[String], name: &str| list.binary_search_by(|n| n.as_str().cmp(name)).unwrap_or(0) as u16;
        let alone = entries
            .iter()
            .map(|(kind, name, gpus, t)| ((index(&kinds, kind), index(&types, name), *gpus), *t))
            .collect();
        let known = |name: &str| types.binary_search_by(|n| n.as_str().cmp(name)).is_ok();
        let pairs = pairs
            .iter()
            .filter(|p| known(&p.3))
            .map(|(kind, name, gpus, other, both)| {
                (
                    (index(&kinds, kind), index(&types, name), *gpus, index(&types, other)),
                    *both,
                )
            })
            .collect();
        Ok(ThroughputTable {
            types,
            kinds,
            alone,
            pairs,
        })
    }

    /// Read a table file (a regular file, at most [`MAX_FILE_BYTES`]).
    pub fn read(path: &Path) -> Result<ThroughputTable, String> {
        let bytes = crate::files::read_regular_file(path, MAX_FILE_BYTES)
            .map_err(|why| format!("cannot read the throughput table {}: {why}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("cannot read the throughput table {}: not UTF-8 text", path.display()))?;
        ThroughputTable::from_gavel_json(&text).map_err(|why| format!("{}: {why}", path.display()))
    }

    /// A job type picked uniformly at random among `candidates` (the
    /// types measured for the job's gang on the reference kind, see
    /// [`ThroughputTable::types_on`]), from `seed` and the job's `line`
    /// alone (so a job's type does not depend on the other jobs): how
    /// Gavel's trace generator types its jobs. None without candidates.
    pub fn pick_type(candidates: &[u16], seed: u64, line: usize) -> Option<u16> {
        if candidates.is_empty() {
            return None;
        }
        // SplitMix64 of the seed and the line.
        let mut z = seed ^ (line as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Some(candidates[(z % candidates.len() as u64) as usize])
    }

    /// The job types, sorted; a job's type is an index into them.
    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// The index of GPU kind `kind` in the table (without regard to case),
    /// for [`ThroughputTable::relative_speed`]: resolve a cluster's kinds
    /// once, not at every placement.
    pub fn kind_index(&self, kind: &str) -> Option<u16> {
        let kind = kind.to_ascii_lowercase();
        self.kinds.binary_search(&kind).ok().map(|i| i as u16)
    }

    /// Whether the table has GPU kind `kind` (without regard to case).
    pub fn has_kind(&self, kind: &str) -> bool {
        self.kind_index(kind).is_some()
    }

    /// Steps per second of a job of type `job_type` alone on `gpus` GPUs
    /// of kind `kind`, when measured (and positive).
    pub fn throughput(&self, kind: &str, job_type: u16, gpus: u32) -> Option<f64> {
        self.throughput_at(self.kind_index(kind)?, job_type, gpus)
    }

    /// Steps per second of a job of type `job_type` alone on `gpus` GPUs
    /// of the kind with index `kind` (see [`ThroughputTable::kind_index`]).
    pub fn throughput_index(&self, kind: u16, job_type: u16, gpus: u32) -> Option<f64> {
        self.throughput_at(kind, job_type, gpus)
    }

    fn throughput_at(&self, kind: u16, job_type: u16, gpus: u32) -> Option<f64> {
        self.alone.get(&(kind, job_type, gpus)).copied().filter(|&t| t > 0.0)
    }

    /// The job types measured on `gpus` GPUs of kind `kind`.
    pub fn types_on(&self, kind: &str, gpus: u32) -> Vec<u16> {
        let Some(k) = self.kind_index(kind) else {
            return Vec::new();
        };
        (0..self.types.len() as u16)
            .filter(|&t| self.throughput_at(k, t, gpus).is_some())
            .collect()
    }

    /// A job's rate of progress alone on `held` GPUs of kind `kind`
    /// relative to its reference (`asked` GPUs of kind `reference`), kinds
    /// given by [`ThroughputTable::kind_index`]: what a policy reads
    /// through `cluster-view.throughput`. None where either figure is
    /// missing.
    pub fn rate(&self, reference: u16, job_type: u16, asked: u32, kind: u16, held: u32) -> Option<f64> {
        let base = self.throughput_at(reference, job_type, asked)?;
        let here = self.throughput_at(kind, job_type, held)?;
        Some(here / base).filter(|r| r.is_finite())
    }

    /// Steps per second of jobs of types `a` and `b` sharing the same
    /// `gpus` GPUs of kind `kind` (an index), each, when measured: the
    /// table keeps each pair under one of its two types, so both orders
    /// are looked up.
    pub fn pair(&self, kind: u16, a: u16, b: u16, gpus: u32) -> Option<(f64, f64)> {
        self.pairs
            .get(&(kind, a, gpus, b))
            .copied()
            .or_else(|| self.pairs.get(&(kind, b, gpus, a)).map(|&(tb, ta)| (ta, tb)))
    }

    /// How fast a job of type `a` runs sharing `gpus` GPUs of kind `kind`
    /// with one of type `b`, relative to the same job alone on them; None
    /// unless both figures are measured and positive (Gavel writes 0 for a
    /// pair that could not share, e.g. for want of memory: a model without
    /// placement constraints reads that as unmeasured).
    pub fn pair_factor(&self, kind: u16, a: u16, b: u16, gpus: u32) -> Option<f64> {
        let (shared, _) = self.pair(kind, a, b, gpus)?;
        let alone = self.throughput_at(kind, a, gpus)?;
        Some(shared / alone).filter(|f| f.is_finite() && *f > 0.0)
    }

    /// The mean over every measured single-GPU pair on kind `kind` of each
    /// job's speed sharing relative to alone: the interference factor the
    /// table implies where it has no figure for a pair. None without pairs.
    pub fn mean_pair_factor(&self, kind: u16) -> Option<f64> {
        let (mut sum, mut n) = (0.0, 0u32);
        for (&(k, a, gpus, b), _) in self.pairs.range((kind, 0, 0, 0)..=(kind, u16::MAX, u32::MAX, u16::MAX)) {
            if k != kind || gpus != 1 {
                continue;
            }
            for f in [self.pair_factor(k, a, b, 1), self.pair_factor(k, b, a, 1)]
                .into_iter()
                .flatten()
            {
                sum += f;
                n += 1;
            }
        }
        (n > 0).then(|| sum / f64::from(n))
    }

    /// How fast a job of type `job_type` that asked for `asked` GPUs runs
    /// on `held` GPUs of kind `kind`, per GPU held, relative to its
    /// reference (`asked` GPUs of kind `reference`), kinds given by
    /// [`ThroughputTable::kind_index`]: 1.0 there, and 1.0 wherever the
    /// table lacks a figure (the job then runs as without a table).
    /// Multiplies the linear rate (GPUs held over GPUs asked).
    pub fn relative_speed(&self, reference: u16, job_type: u16, asked: u32, kind: u16, held: u32) -> f64 {
        let (Some(base), Some(here)) = (
            self.throughput_at(reference, job_type, asked),
            self.throughput_at(kind, job_type, held),
        ) else {
            return 1.0;
        };
        if held == 0 || asked == 0 {
            return 1.0;
        }
        (here / base) / (f64::from(held) / f64::from(asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"{
        "v100": {"('ResNet-50 (batch size 64)', 1)": {"null": 10.0},
                 "('ResNet-50 (batch size 64)', 2)": {"null": 18.0, "('A3C', 1)": [1.0, 2.0]},
                 "('A3C', 1)": {"null": 4.0}},
        "K80":  {"('ResNet-50 (batch size 64)', 1)": {"null": 1.0},
                 "('A3C', 1)": {"null": 0.0}}
    }"#;

    #[test]
    fn throughputs_are_read_by_kind_type_and_gang() {
        let t = ThroughputTable::from_gavel_json(SMALL).unwrap();
        assert_eq!(t.types(), ["A3C", "ResNet-50 (batch size 64)"]);
        let resnet = 1;
        assert_eq!(t.throughput("V100", resnet, 2), Some(18.0));
        assert_eq!(t.throughput("k80", resnet, 1), Some(1.0));
        assert_eq!(t.throughput("k80", 0, 1), None, "zero is not measured");
        assert_eq!(t.throughput("P100", resnet, 1), None);
        assert_eq!(t.types_on("v100", 1), [0, 1]);
        assert_eq!(t.types_on("k80", 1), [1]);
        // On the reference, exactly 1; a K80 is ten times slower; two V100s
        // for a job that asked for one give 1.8x, 0.9 per GPU.
        let (v100, k80) = (t.kind_index("V100").unwrap(), t.kind_index("k80").unwrap());
        assert_eq!(t.relative_speed(v100, resnet, 1, v100, 1), 1.0);
        assert_eq!(t.relative_speed(v100, resnet, 1, k80, 1), 0.1);
        assert_eq!(t.relative_speed(v100, resnet, 1, v100, 2), 0.9);
        assert_eq!(
            t.relative_speed(v100, resnet, 1, v100, 8),
            1.0,
            "no figure: as without a table"
        );
        let candidates = t.types_on("v100", 1);
        let picks: Vec<Option<u16>> = (0..6)
            .map(|line| ThroughputTable::pick_type(&candidates, 7, line))
            .collect();
        assert!(
            picks.iter().all(|p| p.is_some_and(|t| candidates.contains(&t))),
            "{picks:?}"
        );
        assert_eq!(ThroughputTable::pick_type(&[], 7, 1), None);
    }

    #[test]
    fn pairs_are_read_in_both_orders_and_zero_is_unmeasured() {
        let t = ThroughputTable::from_gavel_json(
            r#"{"v100": {"('A', 1)": {"null": 10.0, "('B', 1)": [6.0, 2.0], "('C', 1)": [0.0, 0.0],
                                      "('Z', 1)": [1.0, 1.0], "('B', 2)": [1.0, 1.0]},
                         "('B', 1)": {"null": 4.0},
                         "('C', 1)": {"null": 5.0}}}"#,
        )
        .unwrap();
        let v100 = t.kind_index("v100").unwrap();
        let (a, b, c) = (0, 1, 2);
        assert_eq!(t.pair(v100, a, b, 1), Some((6.0, 2.0)));
        assert_eq!(t.pair(v100, b, a, 1), Some((2.0, 6.0)), "the other order");
        assert_eq!(t.pair(v100, a, b, 2), None, "pairs of other gang sizes are not read");
        assert_eq!(t.pair_factor(v100, a, b, 1), Some(0.6));
        assert_eq!(t.pair_factor(v100, b, a, 1), Some(0.5));
        assert_eq!(t.pair_factor(v100, a, c, 1), None, "0: could not share");
        // Mean over both jobs of each measured pair, zeros left out.
        assert_eq!(t.mean_pair_factor(v100), Some((0.6 + 0.5) / 2.0));
        assert_eq!(t.types(), ["A", "B", "C"], "a pair naming an unknown type is ignored");
    }

    #[test]
    fn gavels_shipped_table_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/throughputs/gavel-simulation.json");
        let t = ThroughputTable::read(&path).unwrap();
        assert_eq!(t.types().len(), 26);
        for kind in ["v100", "p100", "k80", "v100_unconsolidated"] {
            assert!(t.has_kind(kind), "{kind}");
        }
        let resnet50 = t.types().iter().position(|n| n == "ResNet-50 (batch size 64)").unwrap() as u16;
        let (v100, k80) = (t.kind_index("v100").unwrap(), t.kind_index("k80").unwrap());
        let k80 = t.relative_speed(v100, resnet50, 1, k80, 1);
        assert!(k80 > 0.0 && k80 < 0.5, "a K80 is much slower than a V100: {k80}");
    }

    #[test]
    fn hostile_tables_are_refused() {
        for (text, why) in [
            ("[]", "not a throughput table"),
            ("{}", "no throughput"),
            (r#"{"v100": {"ResNet": {"null": 1}}}"#, "is not ('job type', GPUs)"),
            (r#"{"v100": {"('A', 0)": {"null": 1}}}"#, "is not ('job type', GPUs)"),
            (r#"{"v100": {"('A', 1)": {}}}"#, "no \"null\""),
            (r#"{"v100": {"('A', 1)": {"null": -1}}}"#, "not in [0, 1e12]"),
            (r#"{"v100": {"('A', 1)": {"null": 1e300}}}"#, "not in [0, 1e12]"),
            (r#"{"": {"('A', 1)": {"null": 1}}}"#, "not a name"),
            (
                r#"{"v100": {"('A', 1)": {"null": 1, "('A', 1)": [1, "x"]}}}"#,
                "not a pair",
            ),
            (
                r#"{"v100": {"('A', 1)": {"null": 1, "('A', 1)": [1, 1e300]}}}"#,
                "not a pair",
            ),
            (r#"{"v100": {"('A', 1)": {"null": 1, "('A', 1)": [1]}}}"#, "not a pair"),
            (r#"{"v100": {"('A', 1)": {"null": 1, "A": [1, 1]}}}"#, "not a pair"),
        ] {
            let e = ThroughputTable::from_gavel_json(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        let huge = format!(r#"{{"v100": {{"('{}', 1)": {{"null": 1}}}}}}"#, "x".repeat(10 << 20));
        let e = ThroughputTable::from_gavel_json(&huge).unwrap_err();
        assert!(e.len() < 300, "{} bytes", e.len());
        assert!(
            ThroughputTable::read(Path::new("/dev/zero"))
                .unwrap_err()
                .contains("not a regular file")
        );
    }
}
