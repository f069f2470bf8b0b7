//! Gavel's allocation: heterogeneity-aware max-min fairness as a linear
//! program (`scheduler/policies/max_min_fairness.py`,
//! `MaxMinFairnessPolicyWithPerf.get_allocation`), solved here with
//! `microlp`, plus the closed forms that stand in for it where its optimum
//! is known without a solver. The crate documentation states the program.
//!
//! Everything here is pure: rows in, time shares out, no view.

use microlp::{ComparisonOp, OptimizationDirection, Problem, Variable};
use std::collections::BTreeMap;

/// The least throughput a job is taken to have on a kind, relative to its
/// best kind: figures below it are raised to it, so that the program's
/// coefficients stay within six orders of magnitude (what `microlp` asks
/// for) whatever the view answers.
pub const MIN_RATIO: f64 = 1e-3;

/// The most LP variables (job classes x GPU kinds, plus one) one solve may
/// have. At the bound (127 classes x 3 kinds) both stages take about 14 ms
/// natively and 22 ms in Wasm (see the crate documentation); the host's
/// deadline is 100 ms of CPU a call.
pub const MAX_LP_VARS: usize = 384;

/// Steps of the log grid that throughputs are rounded to, coarser and
/// coarser, when the distinct jobs do not fit in [`MAX_LP_VARS`].
const COARSENING: [f64; 4] = [1.01, 1.05, 1.25, 2.0];

/// One job's inputs: its gang size and its throughput on each GPU kind,
/// relative to its best kind (in [`MIN_RATIO`], 1]; all 1.0 for a job the
/// view has no figure for, and in the agnostic mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub gang: u32,
    pub tput: Vec<f64>,
}

/// How an allocation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No job to share anything among.
    Empty,
    /// Water-filling: one kind, or throughputs equal on every kind with
    /// every job fitting every kind, where it is an optimum of the program.
    Closed,
    /// The program, solved over this many classes of identical jobs.
    Lp { classes: usize },
    /// Water-filling over the whole cluster, throughputs ignored: too many
    /// distinct jobs for [`MAX_LP_VARS`] even coarsened, or the solver
    /// failed.
    Fallback,
}

/// Time shares: `x[job][kind]`, the fraction of time each job (in the
/// order of the rows given) should run on each kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub x: Vec<Vec<f64>>,
    pub method: Method,
    /// The program's optimum: the least normalised effective throughput
    /// (Gavel's objective) over the jobs that fit somewhere; 0 when none.
    pub objective: f64,
}

/// Gavel's allocation for `rows` on a cluster with `caps[k]` usable GPUs of
/// kind `k`.
///
/// A job fits kind `k` when `1 <= gang <= caps[k]`: a gang runs on one
/// kind. A job that fits no kind gets nothing and is left out of the
/// program (it can never run); one that does not fit kind `k` gets no time
/// there.
pub fn allocate(caps: &[u32], rows: &[Row]) -> Allocation {
    allocate_with(caps, rows, true)
}

/// [`allocate`], with or without stage 2 (`fill`): without it the answer
/// is stage 1's optimum as the simplex finds it, as Gavel keeps whatever
/// optimum its solver returns.
pub fn allocate_with(caps: &[u32], rows: &[Row], fill: bool) -> Allocation {
    let kinds = caps.len();
    let mut x = vec![vec![0.0; kinds]; rows.len()];
    let fits = |r: &Row, k: usize| r.gang >= 1 && r.gang <= caps[k];
    let live: Vec<usize> = (0..rows.len())
        .filter(|&j| (0..kinds).any(|k| fits(&rows[j], k)))
        .collect();
    let total: f64 = caps.iter().map(|&c| f64::from(c)).sum();
    if live.is_empty() || total <= 0.0 {
        return Allocation {
            x,
            method: Method::Empty,
            objective: 0.0,
        };
    }
    let uniform = live
        .iter()
        .all(|&j| (0..kinds).all(|k| fits(&rows[j], k) && rows[j].tput.get(k) == Some(&1.0)));
    if uniform {
        let shares = water_fill(total, live.iter().map(|&j| rows[j].gang));
        let objective = live
            .iter()
            .zip(&shares)
            .map(|(&j, s)| s * f64::from(rows[j].gang))
            .fold(f64::INFINITY, f64::min);
        for (&j, s) in live.iter().zip(&shares) {
            for k in 0..kinds {
                x[j][k] = s * f64::from(caps[k]) / total;
            }
        }
        return Allocation {
            x,
            method: Method::Closed,
            objective,
        };
    }
    for step in std::iter::once(None).chain(COARSENING.iter().map(Some)) {
        let classes = Classes::of(caps, rows, &live, step.copied());
        let vars: usize = classes.list.iter().map(|c| c.fits.iter().filter(|&&f| f).count()).sum();
        if vars + 1 > MAX_LP_VARS {
            continue;
        }
        match solve(caps, &classes, fill) {
            Ok((shares, objective)) => {
                for (&j, &c) in live.iter().zip(&classes.of_job) {
                    x[j].clone_from(&shares[c]);
                }
                return Allocation {
                    x,
                    method: Method::Lp {
                        classes: classes.list.len(),
                    },
                    objective,
                };
            }
            Err(_) => break,
        }
    }
    // Too many distinct jobs, or the solver failed: equal time shares,
    // spread over the kinds each job fits.
    let shares = water_fill(total, live.iter().map(|&j| rows[j].gang));
    for (&j, s) in live.iter().zip(&shares) {
        let room: f64 = (0..kinds)
            .filter(|&k| fits(&rows[j], k))
            .map(|k| f64::from(caps[k]))
            .sum();
        for k in (0..kinds).filter(|&k| fits(&rows[j], k)) {
            x[j][k] = s * f64::from(caps[k]) / room;
        }
    }
    Allocation {
        x,
        method: Method::Fallback,
        objective: 0.0,
    }
}

/// Max-min fair time shares on one pool of `capacity` GPUs, each job's
/// share of time at most 1 and weighted by its gang (Gavel's scale
/// factor), so that every job gets the same GPU time `level` unless its
/// gang saturates first: share = min(1, level / gang), with
/// sum(min(gang, level)) = capacity. It maximises the least `share x gang`
/// (Gavel's objective on one kind) and, among those optima, every job's in
/// turn, using all the capacity there is demand for.
pub fn water_fill(capacity: f64, gangs: impl Iterator<Item = u32>) -> Vec<f64> {
    let gangs: Vec<f64> = gangs.map(f64::from).collect();
    let demand: f64 = gangs.iter().sum();
    if demand <= capacity {
        return vec![1.0; gangs.len()];
    }
    let mut sorted = gangs.clone();
    sorted.sort_by(f64::total_cmp);
    let (mut left, mut count) = (capacity, sorted.len() as f64);
    let mut level = left / count;
    for &g in &sorted {
        level = left / count;
        if g > level {
            break;
        }
        left -= g;
        count -= 1.0;
    }
    gangs.iter().map(|&g| (level / g).min(1.0)).collect()
}

/// One class of identical jobs: the program is symmetric in them, so an
/// optimum gives them equal shares, and one set of variables stands for
/// all of them.
#[derive(Debug)]
struct Class {
    gang: f64,
    count: f64,
    /// Throughput on each kind divided by the throughput under equal
    /// shares (Gavel's `proportional_throughputs`).
    norm: Vec<f64>,
    fits: Vec<bool>,
}

#[derive(Debug)]
struct Classes {
    list: Vec<Class>,
    /// The class of each live job, in the order of `live`.
    of_job: Vec<usize>,
}

impl Classes {
    fn of(caps: &[u32], rows: &[Row], live: &[usize], step: Option<f64>) -> Classes {
        let total: f64 = caps.iter().map(|&c| f64::from(c)).sum();
        let mut index: BTreeMap<(u32, Vec<u64>), usize> = BTreeMap::new();
        let mut list: Vec<Class> = Vec::new();
        let mut of_job = Vec::with_capacity(live.len());
        for &j in live {
            let row = &rows[j];
            let tput: Vec<f64> = (0..caps.len())
                .map(|k| {
                    let t = row.tput.get(k).copied().unwrap_or(1.0);
                    match step {
                        Some(s) => s.powf((t.ln() / s.ln()).round()).clamp(MIN_RATIO, 1.0),
                        None => t,
                    }
                })
                .collect();
            let key = (row.gang, tput.iter().map(|t| t.to_bits()).collect());
            let c = *index.entry(key).or_insert_with(|| {
                // Gavel's equal share: x[k] = caps[k] / total on every kind
                // (proportional.py normalises each row to sum 1).
                let proportional: f64 = tput.iter().zip(caps).map(|(t, &c)| t * f64::from(c)).sum::<f64>() / total;
                list.push(Class {
                    gang: f64::from(row.gang),
                    count: 0.0,
                    norm: tput.iter().map(|t| t / proportional).collect(),
                    fits: caps.iter().map(|&c| row.gang <= c).collect(),
                });
                list.len() - 1
            });
            list[c].count += 1.0;
            of_job.push(c);
        }
        Classes { list, of_job }
    }
}

/// Solve the program over classes: stage 1 is Gavel's, maximise the least
/// normalised effective throughput `t`; stage 2 keeps every job at `t` or
/// more and maximises their sum, choosing among stage 1's optima (which
/// are seldom unique) one that leaves no capacity idle that some job could
/// use. Returns each class's shares per kind and `t`.
fn solve(caps: &[u32], classes: &Classes, fill: bool) -> Result<(Vec<Vec<f64>>, f64), microlp::Error> {
    let (first, vars) = build(caps, classes, None);
    let solution = first.solve()?.into_solution().map_err(|_| microlp::Error::Infeasible)?;
    let t = solution.objective();
    let mut shares = read(&solution, &vars);
    if !(t.is_finite() && t > 0.0) {
        return Err(microlp::Error::InternalError(format!("objective {t}")));
    }
    // Stage 2, within the solver's tolerance of stage 1's optimum.
    let floor = t * (1.0 - 1e-6) - 1e-9;
    if fill {
        let (second, vars) = build(caps, classes, Some(floor));
        if let Ok(Ok(better)) = second.solve().map(|o| o.into_solution()) {
            shares = read(&better, &vars);
        }
    }
    // As Gavel does: clip to [0, 1]; then keep each job's sum within 1.
    for row in &mut shares {
        for v in row.iter_mut() {
            *v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
        }
        let sum: f64 = row.iter().sum();
        if sum > 1.0 {
            row.iter_mut().for_each(|v| *v /= sum);
        }
    }
    Ok((shares, t))
}

/// The program over `classes`. Without `floor`: Gavel's, maximise `t`
/// with every class's `gang x sum_k norm[k] x[k] >= t`. With it: every
/// class's `gang x sum_k norm[k] x[k] >= floor`, maximising the sum over
/// jobs. Rows are divided by the gang (term rows) or the capacity
/// (capacity rows) to keep coefficients near 1.
fn build(caps: &[u32], classes: &Classes, floor: Option<f64>) -> (Problem, Vec<Vec<Option<Variable>>>) {
    let mut p = Problem::new(OptimizationDirection::Maximize);
    let t = floor.is_none().then(|| p.add_var(1.0, (0.0, f64::INFINITY)));
    let scale = classes
        .list
        .iter()
        .map(|c| c.count * c.gang * c.norm.iter().copied().fold(0.0, f64::max))
        .fold(0.0, f64::max)
        .max(1e-300);
    let vars: Vec<Vec<Option<Variable>>> = classes
        .list
        .iter()
        .map(|c| {
            (0..caps.len())
                .map(|k| {
                    c.fits[k].then(|| {
                        let gain = if floor.is_some() {
                            c.count * c.gang * c.norm[k] / scale
                        } else {
                            0.0
                        };
                        p.add_var(gain, (0.0, 1.0))
                    })
                })
                .collect()
        })
        .collect();
    for (c, row) in classes.list.iter().zip(&vars) {
        let mut terms: Vec<(Variable, f64)> = row
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.map(|v| (v, c.norm[k])))
            .collect();
        match (t, floor) {
            (Some(t), _) => {
                terms.push((t, -1.0 / c.gang));
                p.add_constraint(&terms[..], ComparisonOp::Ge, 0.0);
            }
            (None, Some(floor)) => p.add_constraint(&terms[..], ComparisonOp::Ge, floor / c.gang),
            (None, None) => {}
        }
        let ones: Vec<(Variable, f64)> = row.iter().flatten().map(|&v| (v, 1.0)).collect();
        if ones.len() > 1 {
            p.add_constraint(&ones[..], ComparisonOp::Le, 1.0);
        }
    }
    for (k, &cap) in caps.iter().enumerate() {
        let used: Vec<(Variable, f64)> = classes
            .list
            .iter()
            .zip(&vars)
            .filter_map(|(c, row)| row[k].map(|v| (v, c.count * c.gang / f64::from(cap))))
            .collect();
        if !used.is_empty() {
            p.add_constraint(&used[..], ComparisonOp::Le, 1.0);
        }
    }
    (p, vars)
}

fn read(solution: &microlp::Solution, vars: &[Vec<Option<Variable>>]) -> Vec<Vec<f64>> {
    vars.iter()
        .map(|row| row.iter().map(|v| v.map_or(0.0, |v| solution.var_value(v))).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(gang: u32, tput: &[f64]) -> Row {
        Row {
            gang,
            tput: tput.to_vec(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    /// Each job's effective throughput `sum_k tput[k] x[k]`.
    fn effective(rows: &[Row], a: &Allocation) -> Vec<f64> {
        rows.iter()
            .zip(&a.x)
            .map(|(r, x)| r.tput.iter().zip(x).map(|(t, x)| t * x).sum())
            .collect()
    }

    /// Capacity and per-job sums hold.
    fn feasible(caps: &[u32], rows: &[Row], a: &Allocation) {
        for (r, x) in rows.iter().zip(&a.x) {
            assert!(x.iter().all(|v| v.is_finite() && *v >= 0.0), "{x:?}");
            assert!(x.iter().sum::<f64>() <= 1.0 + 1e-6, "{x:?}");
            for (k, v) in x.iter().enumerate() {
                if r.gang > caps[k] || r.gang == 0 {
                    assert_eq!(*v, 0.0, "a gang that does not fit gets no time there");
                }
            }
        }
        for (k, &cap) in caps.iter().enumerate() {
            let used: f64 = rows.iter().zip(&a.x).map(|(r, x)| f64::from(r.gang) * x[k]).sum();
            assert!(used <= f64::from(cap) + 1e-6, "kind {k}: {used} > {cap}");
        }
    }

    /// Two kinds of one GPU each. A is 10x faster on "fast" (kind 0), B
    /// only 1.2x; two jobs of each (with one of each the program's only
    /// optimum is the equal split, see below). Equal shares give every job
    /// 1/4 of each GPU: effective 2.75/10 for A, 0.55/1.2 for B, and the
    /// normalised throughput 0.5 for both. By hand, with a = x_A[fast],
    /// b = x_B[fast], slow all B's (A values a slow unit at 1/5.5 of its
    /// equal-share throughput, B at 1/1.1; a fast unit 10/5.5 vs 1.2/1.1):
    /// 10a/5.5 = (1.2b + 0.5)/1.1 with a + b = 1/2 gives b = 5/32,
    /// a = 11/32, t = 0.625 > 0.5.
    #[test]
    fn heterogeneity_aware_puts_each_job_where_it_is_fastest() {
        let caps = [1, 1];
        let (a, b) = (row(1, &[1.0, 0.1]), row(1, &[1.0, 1.0 / 1.2]));
        let rows = vec![a.clone(), a, b.clone(), b];
        let alloc = allocate(&caps, &rows);
        feasible(&caps, &rows, &alloc);
        assert_eq!(alloc.method, Method::Lp { classes: 2 });
        assert!(close(alloc.objective, 0.625), "{alloc:?}");
        for j in 0..2 {
            assert!(close(alloc.x[j][0], 11.0 / 32.0), "{alloc:?}");
            assert!(close(alloc.x[j][1], 0.0), "A never on slow: {alloc:?}");
            assert!(close(alloc.x[j + 2][0], 5.0 / 32.0), "{alloc:?}");
            assert!(close(alloc.x[j + 2][1], 0.5), "B has all of slow: {alloc:?}");
        }
        // Both beat their equal share (1/4 of each GPU).
        let eff = effective(&rows, &alloc);
        let equal: Vec<f64> = rows.iter().map(|r| 0.25 * (r.tput[0] + r.tput[1])).collect();
        for (e, q) in eff.iter().zip(&equal) {
            assert!(e > &(q * 1.2), "{eff:?} vs equal {equal:?}");
        }
    }

    /// One A and one B on 1 fast + 1 slow GPU: B keeps its equal-share
    /// throughput only with x_B[fast] >= 1/2 (0.2 x_B[fast] >= 0.1 with
    /// x_B[slow] = 1 - x_B[fast]), which leaves A exactly half of each:
    /// the program's only optimum is the equal split, t = 1.
    #[test]
    fn two_jobs_on_two_gpus_split_equally() {
        let caps = [1, 1];
        let rows = vec![row(1, &[1.0, 0.1]), row(1, &[1.0, 1.0 / 1.2])];
        let alloc = allocate(&caps, &rows);
        feasible(&caps, &rows, &alloc);
        assert!(close(alloc.objective, 1.0), "{alloc:?}");
        // Within the slack stage 2 allows itself (1e-6 of t).
        for x in &alloc.x {
            assert!((x[0] - 0.5).abs() < 1e-4 && (x[1] - 0.5).abs() < 1e-4, "{alloc:?}");
        }
    }

    /// A 4-GPU job and a 1-GPU job on 4 GPUs. Gavel's objective weighs
    /// time by gang: max t with 4 x_A >= t, x_B >= t, 4 x_A + x_B <= 4,
    /// x <= 1. x_B <= 1 caps t at 1, so x_B = 1 and x_A may be anything in
    /// [1/4, 3/4] (Gavel's own code, solved by ECOS, returns 0.4995, the
    /// middle); stage 2 (and water-filling: min(L,4) + min(L,1) = 4,
    /// L = 3) takes x_A = 3/4, which leaves no GPU idle.
    #[test]
    fn gang_size_weighting() {
        let rows = vec![row(4, &[1.0]), row(1, &[1.0])];
        let alloc = allocate(&[4], &rows);
        assert_eq!(alloc.method, Method::Closed);
        assert!(close(alloc.x[0][0], 0.75) && close(alloc.x[1][0], 1.0), "{alloc:?}");
        assert!(close(alloc.objective, 1.0));
        // The same through the solver: two kinds, the second too small for
        // the 4-GPU job and equal throughputs, so no closed form applies.
        let rows = vec![row(4, &[1.0, 1.0]), row(1, &[1.0, 1.0])];
        let alloc = allocate(&[4, 1], &rows);
        feasible(&[4, 1], &rows, &alloc);
        assert!(matches!(alloc.method, Method::Lp { .. }), "{alloc:?}");
        // Five GPUs now: t = 1 still (x_B <= 1), and stage 2 maximises
        // 4 x_A + x_B: A gets the 4-GPU kind (x_A = 1), B the other GPU.
        assert!(close(alloc.objective, 1.0), "{alloc:?}");
        assert!(close(alloc.x[0][0], 1.0), "{alloc:?}");
        assert!(close(alloc.x[1][0], 0.0) && close(alloc.x[1][1], 1.0), "{alloc:?}");
        // Without stage 2: the same optimum t, and never more GPUs used.
        let bare = allocate_with(&[4, 1], &rows, false);
        feasible(&[4, 1], &rows, &bare);
        assert!(close(bare.objective, alloc.objective), "{bare:?}");
        let used = |a: &Allocation| -> f64 {
            a.x.iter()
                .zip(&rows)
                .map(|(x, r)| x.iter().sum::<f64>() * f64::from(r.gang))
                .sum()
        };
        assert!(used(&bare) <= used(&alloc) + 1e-9, "{bare:?} {alloc:?}");
        // More demand than GPUs: three 2-GPU jobs and a 1-GPU job on 4:
        // water-filling 3 min(L,2) + min(L,1) = 4 gives L = 1: each 2-GPU
        // job 1/2 of the time, the 1-GPU job all of it; t = 1.
        let rows = vec![row(2, &[1.0]), row(2, &[1.0]), row(2, &[1.0]), row(1, &[1.0])];
        let alloc = allocate(&[4], &rows);
        let shares: Vec<f64> = alloc.x.iter().map(|x| x[0]).collect();
        assert!(
            shares.iter().zip([0.5, 0.5, 0.5, 1.0]).all(|(a, b)| close(*a, b)),
            "{shares:?}"
        );
    }

    /// Agnostic (all throughputs 1): equal time, spread over kinds by
    /// their size, whatever the kinds are.
    #[test]
    fn equal_throughputs_split_time_equally() {
        let rows = vec![row(1, &[1.0, 1.0]); 4];
        let alloc = allocate(&[1, 1], &rows);
        assert_eq!(alloc.method, Method::Closed);
        for x in &alloc.x {
            assert!(close(x[0], 0.25) && close(x[1], 0.25), "{alloc:?}");
        }
        // The closed form is an optimum of the program: the solver agrees
        // on the objective (forced by a kind the 4-GPU gang cannot use).
        let rows = vec![row(1, &[1.0, 1.0, 1.0]); 6];
        let closed = allocate(&[2, 2, 2], &rows);
        let mut with_big = rows.clone();
        with_big.push(row(3, &[1.0, 1.0, 1.0]));
        let lp = allocate(&[2, 2, 3], &with_big);
        feasible(&[2, 2, 3], &with_big, &lp);
        assert!(matches!(lp.method, Method::Lp { .. }));
        assert!(close(closed.objective, 1.0));
        // 7 GPUs, demand 9: t = min over jobs; water-filling L = 1 for
        // the 1-GPU jobs (6 x 1) and 1 for the 3-GPU one: t = 1.
        assert!(close(lp.objective, 1.0), "{lp:?}");
    }

    #[test]
    fn jobs_that_fit_nowhere_get_nothing() {
        let rows = vec![row(0, &[1.0]), row(9, &[1.0]), row(2, &[1.0])];
        let alloc = allocate(&[4], &rows);
        assert_eq!(alloc.x, vec![vec![0.0], vec![0.0], vec![1.0]]);
        assert_eq!(allocate(&[], &rows).method, Method::Empty);
        assert_eq!(allocate(&[0, 0], &rows).method, Method::Empty);
        assert_eq!(allocate(&[4], &[]).method, Method::Empty);
    }

    /// Many distinct jobs: the program is coarsened, or replaced, never
    /// larger than the bound; random rows always give a feasible answer.
    #[test]
    fn random_rows_stay_feasible_and_bounded() {
        let mut rng = wsched_sdk::testing::Rng::new(7);
        for round in 0..40 {
            let kinds = 1 + rng.below(4) as usize;
            let caps: Vec<u32> = (0..kinds).map(|_| rng.below(20) as u32).collect();
            let n = rng.below(if round % 8 == 0 { 400 } else { 40 }) as usize;
            let rows: Vec<Row> = (0..n)
                .map(|_| Row {
                    gang: [0, 1, 1, 1, 2, 4, 8, 30][rng.below(8) as usize],
                    tput: (0..kinds)
                        .map(|_| {
                            if rng.below(3) == 0 {
                                1.0
                            } else {
                                (MIN_RATIO + rng.below(1000) as f64 / 1000.0).min(1.0)
                            }
                        })
                        .collect(),
                })
                .collect();
            let alloc = allocate(&caps, &rows);
            feasible(&caps, &rows, &alloc);
        }
    }

    /// Cases from Gavel's own `MaxMinFairnessPolicyWithPerf` solved by
    /// ECOS (`simulation_throughputs.json`, steps per second on k80, p100,
    /// v100; random job types and gangs): the optimum agrees.
    #[test]
    fn agrees_with_gavels_own_solver() {
        let case = |caps: [u32; 3], jobs: &[(u32, [f64; 3])], gavel: f64| {
            let rows: Vec<Row> = jobs
                .iter()
                .map(|&(gang, t)| {
                    let best = t.iter().copied().fold(0.0, f64::max);
                    row(gang, &t.map(|v| v / best))
                })
                .collect();
            let alloc = allocate(&caps, &rows);
            feasible(&caps, &rows, &alloc);
            assert!(
                (alloc.objective - gavel).abs() < 1e-5,
                "{} vs Gavel's {gavel}",
                alloc.objective
            );
        };
        case(
            [16, 8, 16],
            &[
                (8, [61.44923706594953, 116.64882298424683, 497.2952582330656]),
                (1, [0.4583310125271042, 1.6776964927127545, 1.5951407072133263]),
                (4, [22.985588987864023, 76.05171457103407, 96.0312451685392]),
                (8, [42.64410449114462, 120.03699011475503, 255.82913926317391]),
                (4, [7.984971344075782, 18.159443120087595, 22.822511223673345]),
            ],
            1.450130,
        );
        case(
            [8, 36, 36],
            &[
                (1, [0.3472236920519382, 1.5843515911819712, 2.4967655780898292]),
                (2, [3.0630786746251895, 7.886748284628143, 15.876496488983058]),
                (1, [0.9815827061299781, 3.0735350560514787, 5.44610521981264]),
                (4, [7.984971344075782, 18.159443120087595, 22.822511223673345]),
                (4, [35.70344542111913, 93.81478290324394, 110.99685986392635]),
                (2, [3.0630786746251895, 7.886748284628143, 15.876496488983058]),
                (1, [0.5047705689725351, 2.4026681703106223, 4.426088263367452]),
                (1, [0.9815827061299781, 3.0735350560514787, 5.44610521981264]),
                (4, [16.121271269107403, 94.32078314001782, 123.85376642692827]),
                (4, [1.512889415506919, 5.243218194017366, 4.763045770199511]),
                (4, [6.98169990398197, 45.35074002546124, 69.95051765177759]),
                (1, [5.30024719584159, 8.896661974093526, 3.9060505302376054]),
                (1, [0.9815827061299781, 3.0735350560514787, 5.44610521981264]),
                (2, [0.8491945073883904, 2.941399294868527, 2.8852436298687203]),
                (4, [1.512889415506919, 5.243218194017366, 4.763045770199511]),
                (1, [0.9815827061299781, 3.0735350560514787, 5.44610521981264]),
                (4, [7.704099165853955, 30.798442100370274, 23.195585654383645]),
                (2, [10.008340130840935, 31.841192000355488, 58.09153801943523]),
                (4, [6.98169990398197, 45.35074002546124, 69.95051765177759]),
                (2, [10.008340130840935, 31.841192000355488, 58.09153801943523]),
            ],
            1.334295,
        );
    }

    #[test]
    fn water_fill_levels() {
        assert_eq!(water_fill(10.0, [1, 2].into_iter()), vec![1.0, 1.0]);
        assert_eq!(water_fill(3.0, [1, 1, 1, 1, 1, 1].into_iter()), vec![0.5; 6]);
        let s = water_fill(4.0, [4, 1].into_iter());
        assert!(close(s[0], 0.75) && close(s[1], 1.0));
    }
}
