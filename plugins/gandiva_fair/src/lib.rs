//! Gandiva_fair-style fair shares between tenants, with GPU trading.
//!
//! From Chaudhary et al., "Balancing Efficiency and Fairness in
//! Heterogeneous GPU Clusters for Deep Learning" (EuroSys'20). Fairness is
//! between tenants (users, `job-info.tenant`), not jobs: each tenant holds
//! tickets, and over time receives GPU-time in proportion to them among the
//! tenants with work, whatever the number and the gang sizes of its jobs.
//! On a cluster of several GPU kinds, tenants then trade: one whose jobs
//! speed up a lot on the fast kind buys fast GPUs from one whose jobs barely
//! do, paying with slow GPUs, so that both get more work done than with
//! their plain share of each kind.
//!
//! **Shares.** `C` GPUs online, `C_k` of kind `k`. A tenant with live jobs
//! demands `D_u` GPUs (the gang sizes of its live jobs, summed). Its share
//! `S_u` is its tickets' part of `C`, capped at `D_u`, what a capped tenant
//! leaves going to the others by their tickets again (water-filling). It is
//! first given on each kind in proportion: `e_uk = S_u * C_k / C` GPUs of
//! kind `k` (fractions of a GPU are realised over rounds).
//!
//! **Trading** (`trade=true`, two or more kinds online, two or more tenants
//! with a performance model). For each pair of kinds, the fast one `f` is
//! the one the live jobs run faster on (geometric mean of their rates from
//! `view.throughput`), `s` the other. A tenant's speedup `r_u` is the mean,
//! over its live jobs with a rate on both kinds, of `rate_f / rate_s`. The
//! tenant with the highest speedup (the buyer) buys fast GPUs from the one
//! with the lowest (the seller), while `r_buyer > 1.05 * r_seller`, at the
//! price `p = (r_buyer + r_seller) / 2` slow GPUs per fast GPU: the buyer
//! gives `p * x` of its slow share for `x` of the seller's fast share, `x`
//! as large as both shares allow and as the side that ends with more GPUs
//! can use (its demand). Measured in slow-GPU equivalents the buyer gains
//! `x * (r_buyer - p)` and the seller `x * (p - r_seller)`, both positive:
//! neither does worse than with its plain share. Any price between the two
//! speedups has that property; the midpoint, splitting the gain, is the
//! rule chosen here. A second-price-like rule (`p = r_seller` with two
//! tenants) would leave the seller exactly indifferent, and the whole-GPU
//! rounding of each round could then leave it a little short. Trades are
//! recomputed from the plain shares whenever the demand changes and at
//! every round; without a performance model (`throughput` is none) no
//! tenant has a speedup and nothing is traded.
//!
//! **Rounds and stride.** Every `quantum` seconds (the tick) a round is
//! planned afresh. Each tenant keeps, per kind, a credit: the GPU-seconds
//! it was entitled to (`e_uk` over time) minus those it received, the lag
//! of stride scheduling. Its want for the round on kind `k` is
//! `e_uk + credit_uk / quantum` GPUs. GPUs are handed out gang by gang:
//! the (tenant, kind) with the largest remaining want gets its next job
//! whose whole gang fits in what is left of that kind (a job gets all its
//! GPUs or none), and its want drops by the gang. So a tenant served more
//! than its share in one round (a gang bigger than its share) is served
//! less in the next ones, and over rounds each tenant receives its share
//! of GPU-time even when gangs do not divide it. GPUs no want claims still
//! go to any job that fits (work-conserving), at the cost of its tenant's
//! credit. Running jobs not picked are preempted at the round boundary;
//! picked ones stay where they are, or move (preempt and resume) when
//! picked for another kind. Between rounds, arrivals and completions only
//! fill free GPUs, by the same wants less what each tenant holds (its
//! deficit), preempting nothing.
//!
//! **Within a tenant** jobs take its GPUs by least attained service
//! (GPU-seconds; ties: older, then lower id): the jobs a tenant cannot run
//! at once take turns round by round.
//!
//! **Simplified from the paper:** the paper runs a gang-aware stride
//! scheduler on each server and migrates jobs to balance load between
//! servers; here one central plan per round, with per-(tenant, kind)
//! credits standing for stride passes, chooses gangs and places them on as
//! few nodes as possible. The paper profiles each job's speedup itself;
//! here it comes from the host's throughput table, and a tenant's is the
//! plain mean over its live jobs (not weighted by gang size). Within a
//! tenant, jobs are not steered to the kind they gain most on. A gang is
//! placed on one kind, unless it is larger than every kind (then it spans
//! kinds). Credits are bounded by one round of the whole kind
//! (`+-C_k * quantum` GPU-seconds) so that a tenant that cannot use a kind
//! (its gangs do not fit) banks no unbounded claim, and a tenant whose
//! last job ends forgets its credits (as stride scheduling resets a client
//! that leaves). A tenant's demand counts every live gang, including any
//! too large for the GPUs online.
//!
//! Cost: a round reads the running jobs and considers, per tenant, only as
//! many of its waiting jobs (kept in least-attained order) as could be
//! placed; a decision between rounds reads nothing when no GPU is free or
//! no job waits. Shares are recomputed when the set of live jobs changed;
//! with trading, that reads every live job's rates (each fetched once).
//!
//! Config (`;`-separated `key=value`):
//! - `tickets=alice:2,bob:1`: tickets per tenant (a number of tickets
//!   from 1e-6 to 1e6); tenants not listed hold 1.
//! - `quantum=600`: seconds per round (from 0.001 to 1e7).
//! - `trade=true`: whether tenants trade GPU kinds.
//!
//! Unknown keys, repeated keys or tenants, bad numbers and configs over
//! 16 KiB are refused. `snapshot`/`restore` carry the tenants' accounts
//! (credits per kind and lifetime totals, as of the last decision) over a
//! hot swap; a snapshot that is not this policy's, or is damaged, is
//! refused with a reason.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use wsched_sdk::*;

/// Snapshot header: "GFAIRsnp" and a format version.
const MAGIC: u64 = u64::from_le_bytes(*b"GFAIRsnp");
const VERSION: u64 = 1;

/// The longest config accepted, in bytes.
const MAX_CONFIG: usize = 16 * 1024;
/// The fewest and most tickets one tenant may hold.
const MIN_TICKETS: f64 = 1e-6;
const MAX_TICKETS: f64 = 1e6;
/// The longest tenant or GPU kind name kept from a config or snapshot, in bytes.
const MAX_NAME: usize = 1024;
/// The shortest and longest round.
const QUANTUM_RANGE: (f64, f64) = (1e-3, 1e7);
/// A trade needs the buyer's speedup to beat the seller's by this factor.
const TRADE_MARGIN: f64 = 1.05;
/// Shares and credits below this are nothing.
const EPS: f64 = 1e-9;

/// What the config says.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    quantum: f64,
    trade: bool,
    tickets: BTreeMap<String, f64>,
}

fn parse_config(config: &str) -> Result<Config, String> {
    if config.len() > MAX_CONFIG {
        return Err(format!(
            "gandiva_fair: config is {} bytes, more than {MAX_CONFIG}",
            config.len()
        ));
    }
    let mut parsed = Config {
        quantum: 600.0,
        trade: true,
        tickets: BTreeMap::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for pair in config.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("gandiva_fair: `{}` is not key=value", shown(pair)));
        };
        let (key, value) = (key.trim(), value.trim());
        if seen.contains(&key) {
            return Err(format!("gandiva_fair: `{}` is given twice", shown(key)));
        }
        match key {
            "quantum" => {
                parsed.quantum = value
                    .parse::<f64>()
                    .ok()
                    .filter(|q| q.is_finite() && (QUANTUM_RANGE.0..=QUANTUM_RANGE.1).contains(q))
                    .ok_or_else(|| {
                        format!(
                            "gandiva_fair: quantum: `{}` is not a number of seconds from {} to {}",
                            shown(value),
                            QUANTUM_RANGE.0,
                            QUANTUM_RANGE.1
                        )
                    })?;
            }
            "trade" => {
                parsed.trade = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("gandiva_fair: trade: `{}` is not true or false", shown(value))),
                }
            }
            "tickets" => parsed.tickets = parse_tickets(value)?,
            other => {
                return Err(format!(
                    "gandiva_fair: unknown config key `{}` (known: tickets, quantum, trade)",
                    shown(other)
                ));
            }
        }
        seen.push(key);
    }
    Ok(parsed)
}

/// `alice:2,bob:1` to tickets by tenant.
fn parse_tickets(value: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut tickets = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, number)) = entry.rsplit_once(':') else {
            return Err(format!(
                "gandiva_fair: tickets: `{}` is not tenant:tickets",
                shown(entry)
            ));
        };
        let (name, number) = (name.trim(), number.trim());
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(format!(
                "gandiva_fair: tickets: `{}` is not a tenant name (1 to {MAX_NAME} bytes, no control characters)",
                shown(name)
            ));
        }
        let n = number
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && (MIN_TICKETS..=MAX_TICKETS).contains(n))
            .ok_or_else(|| {
                format!(
                    "gandiva_fair: tickets: {}: `{}` is not a number of tickets from {MIN_TICKETS} to {MAX_TICKETS}",
                    shown(name),
                    shown(number)
                )
            })?;
        if tickets.insert(name.to_string(), n).is_some() {
            return Err(format!(
                "gandiva_fair: tickets: tenant `{}` is given twice",
                shown(name)
            ));
        }
    }
    Ok(tickets)
}

/// A piece of untrusted text, cut short for an error message.
fn shown(text: &str) -> String {
    const MOST: usize = 64;
    if text.len() <= MOST {
        return text.escape_debug().to_string();
    }
    let mut end = MOST;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", text[..end].escape_debug())
}

/// An `f64` as a `u64` that orders as the number does (negatives too).
fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
}

/// A live job as the policy keeps it.
#[derive(Debug, Clone)]
struct Live {
    tenant: usize,
    gpus: u32,
    state: JobState,
    /// Its place among its tenant's waiting jobs: attained service, then
    /// submission time (see [`order_key`]).
    key: (u64, u64),
    attained: f64,
    submit: f64,
    /// The GPUs it holds (running only), and whether whole (fraction 1).
    placement: Vec<GpuId>,
    whole: bool,
    /// Its rate alone on its gang on each GPU kind (NaN: unknown); empty
    /// until first needed.
    rates: Vec<f64>,
}

/// A tenant's account.
#[derive(Debug, Clone, Default)]
struct Account {
    name: String,
    tickets: f64,
    /// Live jobs, and the GPUs they ask for together.
    live: u32,
    demand: u64,
    /// Waiting (pending or suspended) jobs, least attained service first,
    /// and how many wait of each gang size.
    queue: BTreeSet<(u64, u64, JobId)>,
    sizes: BTreeMap<u32, u32>,
    /// GPUs held now, per kind.
    held: Vec<u32>,
    /// The entitlement now, in GPUs per kind, after trading.
    share: Vec<f64>,
    /// Entitled minus received GPU-seconds, per kind (the stride lag).
    credit: Vec<f64>,
    /// GPU-seconds received and entitled to, in total.
    received: f64,
    entitled: f64,
}

/// What a running job holds: the one kind it is on (none when it spans
/// kinds), and its GPUs per kind.
#[derive(Debug, Clone)]
struct Held {
    home: Option<usize>,
    counts: Vec<(usize, u32)>,
}

/// One job the allocator may give GPUs to.
#[derive(Debug, Clone)]
struct Cand {
    id: JobId,
    gpus: u32,
    /// What it holds now when it runs whole: it may stay.
    held: Option<Held>,
}

/// What the allocator decided for one job.
#[derive(Debug, Clone)]
struct Pick {
    id: JobId,
    /// GPUs to take of each kind.
    counts: Vec<(usize, u32)>,
    /// It runs already and stays where it is.
    keep: bool,
}

/// A (tenant, kind) in the allocator's queue: the largest want first;
/// ties: lower tenant, then lower kind.
#[derive(Debug, Clone, Copy)]
struct Entry {
    want: f64,
    tenant: usize,
    kind: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.want
            .total_cmp(&other.want)
            .then(other.tenant.cmp(&self.tenant))
            .then(other.kind.cmp(&self.kind))
    }
}

/// The Gandiva_fair policy.
#[derive(Debug)]
pub struct GandivaFair {
    config: Config,
    jobs: BTreeMap<JobId, Live>,
    /// Jobs running now, as far as the policy knows.
    running: BTreeSet<JobId>,
    /// How many live jobs wait.
    waiting: usize,
    tenants: Vec<Account>,
    tenant_ix: BTreeMap<String, usize>,
    /// GPU kinds by first sight (the view's, then any a snapshot named).
    kinds: Vec<String>,
    /// Kind and node of each GPU id.
    kind_of: Vec<usize>,
    node_of: Vec<u32>,
    /// Online GPUs per kind.
    cap: Vec<u32>,
    topology_known: bool,
    free: FreeGpus,
    /// When the accounts were last brought up to date.
    last: Option<f64>,
    /// Whether the shares must be computed again.
    dirty: bool,
}

impl GandivaFair {
    fn tenant(&mut self, name: &str) -> usize {
        if let Some(&t) = self.tenant_ix.get(name) {
            return t;
        }
        let t = self.tenants.len();
        let k = self.kinds.len();
        self.tenants.push(Account {
            name: name.to_string(),
            tickets: self.config.tickets.get(name).copied().unwrap_or(1.0),
            held: vec![0; k],
            share: vec![0.0; k],
            credit: vec![0.0; k],
            ..Account::default()
        });
        self.tenant_ix.insert(name.to_string(), t);
        t
    }

    fn kind(&mut self, name: &str) -> usize {
        if let Some(k) = self.kinds.iter().position(|n| n == name) {
            return k;
        }
        self.kinds.push(name.to_string());
        let k = self.kinds.len();
        self.cap.resize(k, 0);
        for t in &mut self.tenants {
            t.held.resize(k, 0);
            t.share.resize(k, 0.0);
            t.credit.resize(k, 0.0);
        }
        k - 1
    }

    /// Read the GPUs' kinds, nodes and which are online.
    fn read_topology(&mut self, view: &impl View) {
        let gpus = view.gpus();
        let len = gpus.iter().map(|g| g.id as usize + 1).max().unwrap_or(0).min(1 << 24);
        self.kind_of = vec![usize::MAX; len];
        self.node_of = vec![u32::MAX; len];
        for g in &gpus {
            let k = self.kind(&g.kind);
            if let Some(slot) = self.kind_of.get_mut(g.id as usize) {
                *slot = k;
                self.node_of[g.id as usize] = g.node;
            }
        }
        self.cap = vec![0; self.kinds.len()];
        for g in gpus.iter().filter(|g| g.online) {
            if let Some(&k) = self.kind_of.get(g.id as usize) {
                self.cap[k] += 1;
            }
        }
        // What each running job holds, by kind, from scratch.
        for t in &mut self.tenants {
            t.held.iter_mut().for_each(|h| *h = 0);
        }
        for id in self.running.clone() {
            if let Some(job) = self.jobs.get(&id) {
                let (tenant, placement) = (job.tenant, job.placement.clone());
                self.hold(tenant, &placement, true);
            }
        }
        self.topology_known = true;
        self.dirty = true;
    }

    fn kind_of(&self, gpu: GpuId) -> Option<usize> {
        self.kind_of.get(gpu as usize).copied().filter(|&k| k != usize::MAX)
    }

    /// GPUs per kind in `placement`, lowest kind first.
    fn counts(&self, placement: &[GpuId]) -> Vec<(usize, u32)> {
        let mut counts: Vec<(usize, u32)> = Vec::new();
        for &g in placement {
            if let Some(k) = self.kind_of(g) {
                match counts.iter_mut().find(|(kind, _)| *kind == k) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((k, 1)),
                }
            }
        }
        counts.sort_unstable();
        counts
    }

    fn hold(&mut self, tenant: usize, placement: &[GpuId], add: bool) {
        for (k, c) in self.counts(placement) {
            if let Some(h) = self.tenants.get_mut(tenant).and_then(|t| t.held.get_mut(k)) {
                *h = if add { h.saturating_add(c) } else { h.saturating_sub(c) };
            }
        }
    }

    /// Take note of a job as the host describes it.
    fn note(&mut self, job: &JobInfo) {
        if !matches!(job.state, JobState::Pending | JobState::Running | JobState::Suspended) {
            self.forget(job.id);
            return;
        }
        let tenant = self.tenant(&job.tenant);
        let rates = match self.jobs.get(&job.id) {
            Some(old) if old.tenant == tenant && old.gpus == job.gpus_requested => old.rates.clone(),
            _ => Vec::new(),
        };
        self.forget_keeping_credit(job.id);
        let attained = if job.attained_gpu_seconds.is_finite() {
            job.attained_gpu_seconds.max(0.0)
        } else {
            0.0
        };
        let submit = if job.submit_time.is_finite() {
            job.submit_time
        } else {
            0.0
        };
        let account = &mut self.tenants[tenant];
        account.live += 1;
        account.demand += u64::from(job.gpus_requested);
        self.jobs.insert(
            job.id,
            Live {
                tenant,
                gpus: job.gpus_requested,
                state: JobState::Pending,
                key: (order_key(attained), order_key(submit)),
                attained,
                submit,
                placement: Vec::new(),
                whole: true,
                rates,
            },
        );
        if job.state == JobState::Running && !job.placement.is_empty() {
            self.set_running(job.id, job.placement.clone(), job.fraction >= 1.0 - 1e-9);
        } else {
            let state = if job.state == JobState::Running {
                JobState::Suspended
            } else {
                job.state
            };
            self.set_waiting(job.id, state);
        }
        self.dirty = true;
    }

    /// A job left for good.
    fn forget(&mut self, id: JobId) {
        if let Some(tenant) = self.forget_keeping_credit(id) {
            let account = &mut self.tenants[tenant];
            if account.live == 0 {
                // Its last job ended: a tenant that leaves banks no lag.
                account.credit.iter_mut().for_each(|c| *c = 0.0);
                account.share.iter_mut().for_each(|s| *s = 0.0);
            }
        }
    }

    fn forget_keeping_credit(&mut self, id: JobId) -> Option<usize> {
        let job = self.jobs.remove(&id)?;
        self.unlist(id, &job);
        let account = &mut self.tenants[job.tenant];
        account.live = account.live.saturating_sub(1);
        account.demand = account.demand.saturating_sub(u64::from(job.gpus));
        self.dirty = true;
        Some(job.tenant)
    }

    /// Take a job out of its tenant's queue or holdings.
    fn unlist(&mut self, id: JobId, job: &Live) {
        if job.state == JobState::Running {
            self.running.remove(&id);
            self.hold(job.tenant, &job.placement, false);
        } else {
            let account = &mut self.tenants[job.tenant];
            if account.queue.remove(&(job.key.0, job.key.1, id)) {
                self.waiting -= 1;
                if let Some(n) = account.sizes.get_mut(&job.gpus) {
                    *n -= 1;
                    if *n == 0 {
                        account.sizes.remove(&job.gpus);
                    }
                }
            }
        }
    }

    fn set_waiting(&mut self, id: JobId, state: JobState) {
        let Some(job) = self.jobs.get(&id).cloned() else { return };
        self.unlist(id, &job);
        let key = (order_key(job.attained), order_key(job.submit));
        if let Some(j) = self.jobs.get_mut(&id) {
            j.state = state;
            j.key = key;
            j.placement.clear();
            j.whole = true;
        }
        let account = &mut self.tenants[job.tenant];
        if account.queue.insert((key.0, key.1, id)) {
            self.waiting += 1;
            *account.sizes.entry(job.gpus).or_default() += 1;
        }
    }

    fn set_running(&mut self, id: JobId, placement: Vec<GpuId>, whole: bool) {
        let Some(job) = self.jobs.get(&id).cloned() else { return };
        self.unlist(id, &job);
        self.hold(job.tenant, &placement, true);
        self.running.insert(id);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.state = JobState::Running;
            j.placement = placement;
            j.whole = whole;
        }
    }

    /// Bring every tenant's credits and totals up to `now`, with the shares
    /// and holdings in force since the last call.
    fn account(&mut self, now: f64) {
        if !now.is_finite() {
            return;
        }
        let Some(last) = self.last.filter(|l| now > *l) else {
            if self.last.is_none() {
                self.last = Some(now);
            }
            return;
        };
        let dt = now - last;
        let bounds: Vec<f64> = self
            .cap
            .iter()
            .map(|&c| f64::from(c.max(1)) * self.config.quantum)
            .collect();
        for t in self.tenants.iter_mut().filter(|t| t.live > 0) {
            let mut held_total = 0.0;
            let mut share_total = 0.0;
            for k in 0..t.credit.len() {
                let (held, share) = (f64::from(t.held[k]), t.share[k]);
                let bound = bounds.get(k).copied().unwrap_or(self.config.quantum);
                t.credit[k] = (t.credit[k] + (share - held) * dt).clamp(-bound, bound);
                held_total += held;
                share_total += share;
            }
            t.received += held_total * dt;
            t.entitled += share_total * dt;
        }
        self.last = Some(now);
    }

    /// Every tenant's entitlement per kind: water-filled shares, split over
    /// the kinds in proportion, then traded.
    fn entitle(&mut self, view: &impl View) {
        self.dirty = false;
        for t in &mut self.tenants {
            t.share.iter_mut().for_each(|s| *s = 0.0);
        }
        let total: u32 = self.cap.iter().sum();
        if total == 0 {
            return;
        }
        let total = f64::from(total);
        let mut open: Vec<usize> = (0..self.tenants.len())
            .filter(|&t| self.tenants[t].live > 0 && self.tenants[t].demand > 0)
            .collect();
        let active = open.clone();
        let mut share = vec![0.0; self.tenants.len()];
        let mut left = total;
        while !open.is_empty() && left > EPS {
            let weight: f64 = open.iter().map(|&t| self.tenants[t].tickets).sum();
            let demand = |t: usize| (self.tenants[t].demand as f64).min(total);
            let capped: Vec<usize> = open
                .iter()
                .copied()
                .filter(|&t| demand(t) <= left * self.tenants[t].tickets / weight + EPS)
                .collect();
            if capped.is_empty() {
                for &t in &open {
                    share[t] = left * self.tenants[t].tickets / weight;
                }
                break;
            }
            for &t in &capped {
                share[t] = demand(t);
                left -= demand(t);
            }
            open.retain(|t| !capped.contains(t));
        }
        for &t in &active {
            for k in 0..self.cap.len() {
                self.tenants[t].share[k] = share[t] * f64::from(self.cap[k]) / total;
            }
        }
        if self.config.trade && active.len() >= 2 && self.cap.iter().filter(|&&c| c > 0).count() >= 2 {
            self.trade(view, &active);
        }
    }

    /// Each live job's rate on every kind, read once.
    fn read_rates(&mut self, view: &impl View) {
        let kinds = self.kinds.clone();
        for (&id, job) in self.jobs.iter_mut() {
            if job.rates.len() == kinds.len() {
                continue;
            }
            let start = job.rates.len();
            for kind in &kinds[start..] {
                let rate = view
                    .throughput(id, kind, job.gpus, false)
                    .or_else(|| view.throughput(id, kind, job.gpus, true))
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .unwrap_or(f64::NAN);
                job.rates.push(rate);
            }
        }
    }

    /// Trade fast GPUs for slow ones between tenants (see the module doc).
    fn trade(&mut self, view: &impl View, active: &[usize]) {
        self.read_rates(view);
        let kinds = self.cap.len();
        for a in 0..kinds {
            for b in a + 1..kinds {
                if self.cap[a] == 0 || self.cap[b] == 0 {
                    continue;
                }
                // Which kind is fast: the one the live jobs run faster on.
                let mut log_ratio = 0.0;
                // Per tenant: sum of rate_a / rate_b, of rate_b / rate_a, jobs.
                let mut sums = vec![(0.0, 0.0, 0u32); self.tenants.len()];
                for job in self.jobs.values() {
                    let (ra, rb) = (job.rates[a], job.rates[b]);
                    if ra.is_finite() && rb.is_finite() {
                        log_ratio += (ra / rb).ln();
                        let s = &mut sums[job.tenant];
                        s.0 += ra / rb;
                        s.1 += rb / ra;
                        s.2 += 1;
                    }
                }
                if !log_ratio.is_finite() || log_ratio == 0.0 {
                    continue;
                }
                let (fast, slow) = if log_ratio > 0.0 { (a, b) } else { (b, a) };
                // Each tenant's mean speedup on the fast kind over the slow one.
                let speedup: Vec<Option<f64>> = sums
                    .iter()
                    .map(|&(ab, ba, n)| (n > 0).then(|| if fast == a { ab } else { ba } / f64::from(n)))
                    .map(|s| s.filter(|s| s.is_finite() && *s > 0.0))
                    .collect();
                self.trade_pair(active, &speedup, fast, slow);
            }
        }
    }

    /// Trades on one pair of kinds, highest speedup buying from lowest.
    fn trade_pair(&mut self, active: &[usize], speedup: &[Option<f64>], fast: usize, slow: usize) {
        let total = f64::from(self.cap.iter().sum::<u32>());
        let room = |t: &Account| (t.demand as f64).min(total) - t.share.iter().sum::<f64>();
        let mut no_buy: BTreeSet<usize> = BTreeSet::new();
        let mut no_sell: BTreeSet<usize> = BTreeSet::new();
        for _ in 0..active.len() * active.len() + 1 {
            let traders = active.iter().filter_map(|&t| speedup[t].map(|s| (s, t)));
            let Some((r_buy, buyer)) = traders
                .clone()
                .filter(|&(_, t)| !no_buy.contains(&t) && self.tenants[t].share[slow] > EPS)
                .max_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)))
            else {
                break;
            };
            let Some((r_sell, seller)) = traders
                .filter(|&(_, t)| t != buyer && !no_sell.contains(&t) && self.tenants[t].share[fast] > EPS)
                .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)))
            else {
                break;
            };
            if r_buy <= r_sell * TRADE_MARGIN {
                break;
            }
            let price = (r_buy + r_sell) / 2.0;
            let (b, s) = (&self.tenants[buyer], &self.tenants[seller]);
            let mut x = s.share[fast].min(b.share[slow] / price);
            // The side that ends with more GPUs must have the demand for them.
            let (gainer, gain) = if price > 1.0 {
                (seller, price - 1.0)
            } else {
                (buyer, 1.0 - price)
            };
            if gain > EPS {
                x = x.min(room(&self.tenants[gainer]).max(0.0) / gain);
            }
            if x <= EPS {
                if gain > EPS && room(&self.tenants[gainer]) <= EPS {
                    if gainer == seller {
                        no_sell.insert(seller);
                    } else {
                        no_buy.insert(buyer);
                    }
                } else {
                    no_buy.insert(buyer);
                }
                continue;
            }
            self.tenants[buyer].share[fast] += x;
            self.tenants[buyer].share[slow] = (self.tenants[buyer].share[slow] - price * x).max(0.0);
            self.tenants[seller].share[fast] = (self.tenants[seller].share[fast] - x).max(0.0);
            self.tenants[seller].share[slow] += price * x;
        }
    }

    /// Candidates of tenant `t` in least-attained order: its running jobs
    /// (given, already in that order) merged with its waiting ones, of
    /// those only as many as could be placed in `avail`. Of gang size `g`
    /// at most `sum / g` can be placed (`sum` the GPUs available), and the
    /// allocator takes each tenant's jobs of one size in order, so the
    /// first `sum / g` of each size are all it may need.
    fn candidates(&self, t: usize, running: &[(u64, u64, JobId)], avail: &[u32]) -> Vec<Cand> {
        let most_cap = self.cap.iter().copied().max().unwrap_or(0);
        let most = avail.iter().copied().max().unwrap_or(0);
        let sum: u32 = avail.iter().sum();
        let account = &self.tenants[t];
        let mut need: BTreeMap<u32, u32> = account
            .sizes
            .iter()
            .filter(|&(&g, _)| g > 0 && g <= sum && (g <= most || g > most_cap))
            .map(|(&g, &n)| (g, n.min(sum / g)))
            .collect();
        let mut out = Vec::new();
        let mut waiting = account.queue.iter().peekable();
        let mut running = running.iter().peekable();
        loop {
            if need.is_empty() && running.peek().is_none() {
                break;
            }
            let (next, is_running) = match (waiting.peek(), running.peek()) {
                (Some(w), Some(r)) if r <= w => (running.next(), true),
                (Some(_), _) => (waiting.next(), false),
                (None, Some(_)) => (running.next(), true),
                (None, None) => break,
            };
            let Some(&(_, _, id)) = next else { break };
            let Some(job) = self.jobs.get(&id) else { continue };
            let gpus = job.gpus;
            if !is_running {
                let Some(n) = need.get_mut(&gpus) else { continue };
                *n -= 1;
                if *n == 0 {
                    need.remove(&gpus);
                }
            } else if gpus == 0 || gpus > sum {
                continue;
            }
            let held = (job.state == JobState::Running && job.whole).then(|| {
                let counts = self.counts(&job.placement);
                let home = match counts.as_slice() {
                    [(k, _)] => Some(*k),
                    _ => None,
                };
                Held { home, counts }
            });
            out.push(Cand { id, gpus, held });
        }
        out
    }

    /// Hand out `avail` GPUs per kind gang by gang, to the (tenant, kind)
    /// with the largest remaining `want` first (see the module doc).
    fn allocate(&self, avail: &mut [u32], want: &mut [Vec<f64>], cands: &[Vec<Cand>]) -> Vec<Pick> {
        let kinds = avail.len();
        let most = self.cap.iter().copied().max().unwrap_or(0);
        let mut heap = BinaryHeap::new();
        let mut cursor: Vec<Vec<usize>> = cands.iter().map(|_| vec![0; kinds]).collect();
        let mut taken: Vec<Vec<bool>> = cands.iter().map(|c| vec![false; c.len()]).collect();
        for (tenant, list) in cands.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            for (kind, &a) in avail.iter().enumerate() {
                if a > 0 {
                    heap.push(Entry {
                        want: want[tenant][kind],
                        tenant,
                        kind,
                    });
                }
            }
        }
        let mut picks = Vec::new();
        while let Some(Entry { want: w, tenant, kind }) = heap.pop() {
            if w.to_bits() != want[tenant][kind].to_bits() {
                heap.push(Entry {
                    want: want[tenant][kind],
                    tenant,
                    kind,
                });
                continue;
            }
            if avail[kind] == 0 {
                continue;
            }
            let sum: u32 = avail.iter().sum();
            let fits = |c: &Cand, avail: &[u32]| {
                if c.gpus <= most {
                    c.gpus <= avail[kind]
                } else {
                    c.gpus <= sum
                }
            };
            // The tenant's first job, in its order, that fits this kind.
            let list = &cands[tenant];
            let mut i = cursor[tenant][kind];
            while i < list.len() && (taken[tenant][i] || !fits(&list[i], avail)) {
                i += 1;
            }
            cursor[tenant][kind] = i;
            let Some(cand) = list.get(i) else { continue };
            taken[tenant][i] = true;
            // It stays where it runs if it runs on this kind (or spans
            // kinds as it would be placed now) and its GPUs are unclaimed.
            let stays = cand.held.as_ref().filter(|held| {
                let here = match held.home {
                    Some(h) => h == kind,
                    None => cand.gpus > most,
                };
                here && held.counts.iter().all(|&(k, c)| c <= avail[k])
            });
            let counts = match stays {
                Some(held) => held.counts.clone(),
                None if cand.gpus <= most => vec![(kind, cand.gpus)],
                None => {
                    // Larger than any kind: this kind first, then the
                    // kinds with the most left.
                    let mut order: Vec<usize> = (0..kinds).filter(|&k| k != kind).collect();
                    order.sort_by_key(|&k| (Reverse(avail[k]), k));
                    let mut left = cand.gpus;
                    let mut counts = Vec::new();
                    for k in std::iter::once(kind).chain(order) {
                        let c = left.min(avail[k]);
                        if c > 0 {
                            counts.push((k, c));
                            left -= c;
                        }
                    }
                    counts.sort_unstable();
                    counts
                }
            };
            for &(k, c) in &counts {
                avail[k] -= c;
                want[tenant][k] -= f64::from(c);
            }
            picks.push(Pick {
                id: cand.id,
                counts,
                keep: stays.is_some(),
            });
            if avail[kind] > 0 {
                heap.push(Entry {
                    want: want[tenant][kind],
                    tenant,
                    kind,
                });
            }
        }
        picks
    }

    /// What each tenant wants this round per kind, in GPUs.
    fn wants(&self, less_held: bool) -> Vec<Vec<f64>> {
        self.tenants
            .iter()
            .map(|t| {
                (0..self.cap.len())
                    .map(|k| {
                        let held = if less_held { f64::from(t.held[k]) } else { 0.0 };
                        t.share[k] + t.credit[k] / self.config.quantum - held
                    })
                    .collect()
            })
            .collect()
    }

    /// Free GPUs to give `id`, `counts` per kind, on as few nodes as
    /// possible; none unless all are free.
    fn take(&mut self, id: JobId, counts: &[(usize, u32)]) -> Option<Vec<GpuId>> {
        if self.cap.iter().filter(|&&c| c > 0).count() <= 1 {
            return self.free.take_gang(id, counts.iter().map(|c| c.1).sum());
        }
        let mut chosen: Vec<GpuId> = Vec::new();
        for &(kind, count) in counts {
            let count = count as usize;
            let mut by_node: BTreeMap<u32, Vec<GpuId>> = BTreeMap::new();
            for g in self.free.iter() {
                if self.kind_of(g) == Some(kind) {
                    let node = self.node_of.get(g as usize).copied().unwrap_or(u32::MAX);
                    by_node.entry(node).or_default().push(g);
                }
            }
            if by_node.values().map(Vec::len).sum::<usize>() < count {
                return None;
            }
            // The fullest node that fits it whole, else the emptiest first.
            let best = by_node
                .iter()
                .filter(|(_, gpus)| gpus.len() >= count)
                .min_by_key(|(node, gpus)| (gpus.len(), **node))
                .map(|(&node, _)| node);
            match best {
                Some(node) => chosen.extend(&by_node[&node][..count]),
                None => {
                    let mut nodes: Vec<Vec<GpuId>> = by_node.into_values().collect();
                    nodes.sort_by_key(|gpus| Reverse(gpus.len()));
                    chosen.extend(nodes.into_iter().flatten().take(count));
                }
            }
        }
        chosen.sort_unstable();
        self.free.assign(id, &chosen);
        Some(chosen)
    }

    /// Start or resume a waiting job with `counts` GPUs per kind.
    fn place(&mut self, id: JobId, counts: &[(usize, u32)], actions: &mut Vec<Action>) -> bool {
        let Some(job) = self.jobs.get(&id) else { return false };
        let state = job.state;
        if !matches!(state, JobState::Pending | JobState::Suspended) {
            return false;
        }
        let Some(gpus) = self.take(id, counts) else {
            return false;
        };
        let placement = Placement {
            job: id,
            gpus: gpus.clone(),
        };
        actions.push(if state == JobState::Suspended {
            Action::Resume(placement)
        } else {
            Action::Start(placement)
        });
        self.set_running(id, gpus, true);
        true
    }

    /// A round ends: plan the next one afresh.
    fn round(&mut self, view: &impl View, actions: &mut Vec<Action>) {
        // Who runs now, and how much service each has had.
        let running = view.running();
        let now_running: BTreeSet<JobId> = running.iter().map(|r| r.id).collect();
        for id in self.running.clone() {
            if !now_running.contains(&id) {
                self.set_waiting(id, JobState::Suspended);
            }
        }
        let mut by_tenant: Vec<Vec<(u64, u64, JobId)>> = vec![Vec::new(); self.tenants.len()];
        for r in &running {
            if !self.running.contains(&r.id)
                && self.jobs.contains_key(&r.id)
                && let Some(job) = view.job(r.id)
            {
                self.note(&job);
            }
            let Some(job) = self.jobs.get_mut(&r.id) else { continue };
            if r.attained_gpu_seconds.is_finite() {
                job.attained = r.attained_gpu_seconds.max(0.0);
            }
            if job.state == JobState::Running {
                by_tenant[job.tenant].push((order_key(job.attained), order_key(job.submit), r.id));
            }
        }
        for list in &mut by_tenant {
            list.sort_unstable();
        }
        if self.dirty {
            self.entitle(view);
        }
        let mut avail = self.cap.clone();
        let cands: Vec<Vec<Cand>> = (0..self.tenants.len())
            .map(|t| self.candidates(t, &by_tenant[t], &avail))
            .collect();
        let mut want = self.wants(false);
        let picks = self.allocate(&mut avail, &mut want, &cands);

        // Preempt the running jobs that do not stay, then place the rest.
        let stay: BTreeSet<JobId> = picks.iter().filter(|p| p.keep).map(|p| p.id).collect();
        self.free.sync(view);
        let mut unsure = Vec::new();
        for id in self.running.clone() {
            if stay.contains(&id) {
                continue;
            }
            actions.push(Action::Preempt(id));
            match self.jobs.get(&id) {
                Some(job) if job.whole => self.free.vacate(id, &job.placement.clone()),
                _ => unsure.push(id),
            }
            self.set_waiting(id, JobState::Suspended);
        }
        for pick in picks.iter().filter(|p| !p.keep) {
            self.place(pick.id, &pick.counts, actions);
        }
        for id in unsure {
            self.free.release(id);
            self.free.invalidate();
        }
    }

    /// Between rounds: fill free GPUs by deficit, preempting nothing.
    fn fill(&mut self, view: &impl View, actions: &mut Vec<Action>) {
        if self.waiting == 0 {
            return;
        }
        self.free.sync(view);
        if self.free.is_empty() {
            return;
        }
        let mut avail = vec![0u32; self.cap.len()];
        for g in self.free.iter() {
            if let Some(k) = self.kind_of(g) {
                avail[k] += 1;
            }
        }
        let cands: Vec<Vec<Cand>> = (0..self.tenants.len())
            .map(|t| self.candidates(t, &[], &avail))
            .collect();
        let mut want = self.wants(true);
        let picks = self.allocate(&mut avail, &mut want, &cands);
        for pick in picks {
            self.place(pick.id, &pick.counts, actions);
        }
    }

    /// A tenant's GPU-seconds received and entitled to so far (for tests
    /// and tools).
    pub fn totals(&self, tenant: &str) -> Option<(f64, f64)> {
        let t = &self.tenants[*self.tenant_ix.get(tenant)?];
        Some((t.received, t.entitled))
    }

    /// A tenant's entitlement now on GPU kind `kind`, in GPUs, after trading.
    pub fn share(&self, tenant: &str, kind: &str) -> Option<f64> {
        let t = &self.tenants[*self.tenant_ix.get(tenant)?];
        let k = self.kinds.iter().position(|n| n == kind)?;
        t.share.get(k).copied()
    }
}

impl Policy for GandivaFair {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let config = parse_config(config)?;
        let quantum = config.quantum;
        Ok((
            GandivaFair {
                config,
                jobs: BTreeMap::new(),
                running: BTreeSet::new(),
                waiting: 0,
                tenants: Vec::new(),
                tenant_ix: BTreeMap::new(),
                kinds: Vec::new(),
                kind_of: Vec::new(),
                node_of: Vec::new(),
                cap: Vec::new(),
                topology_known: false,
                free: FreeGpus::new(),
                last: None,
                dirty: true,
            },
            PolicyInfo {
                name: "gandiva_fair".into(),
                tick_interval: Some(quantum),
            },
        ))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        self.account(view.now());
        for event in &events {
            self.free.observe(event);
        }
        if !self.topology_known || events.iter().any(|e| matches!(e, Event::GpuChanged(_))) {
            self.read_topology(view);
        }
        let mut tick = false;
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => self.forget(id),
                Event::JobPreempted(id) => match view.job(id) {
                    Some(job) => self.note(&job),
                    None => self.forget(id),
                },
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("gandiva_fair: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(&job),
                        None => self.forget(r.job),
                    }
                }
                Event::GpuChanged(_) => {}
                Event::Tick => tick = true,
            }
        }
        if self.dirty || tick {
            self.entitle(view);
        }
        let mut actions = Vec::new();
        if tick {
            self.round(view, &mut actions);
        } else {
            self.fill(view, &mut actions);
        }
        Decision { actions, wakeup: None }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut e = Encoder::default();
        e.u64(MAGIC)
            .u64(VERSION)
            .f64(self.config.quantum)
            .u64(self.kinds.len() as u64);
        for kind in &self.kinds {
            e.bytes(kind.as_bytes());
        }
        e.u64(self.tenants.len() as u64);
        for t in &self.tenants {
            e.bytes(t.name.as_bytes()).f64(t.received).f64(t.entitled);
            for k in 0..self.kinds.len() {
                e.f64(t.credit.get(k).copied().unwrap_or(0.0));
            }
        }
        Some(e.0)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let snap = decode(state).map_err(|e| format!("gandiva_fair: {e}"))?;
        let kinds: Vec<usize> = snap.kinds.iter().map(|k| self.kind(k)).collect();
        for t in snap.tenants {
            let ix = self.tenant(&t.name);
            let account = &mut self.tenants[ix];
            account.received = t.received;
            account.entitled = t.entitled;
            for (&k, credit) in kinds.iter().zip(t.credit) {
                account.credit[k] = credit;
            }
        }
        Ok(())
    }
}

/// A tenant's account as a snapshot holds it.
struct SnapTenant {
    name: String,
    received: f64,
    entitled: f64,
    credit: Vec<f64>,
}

struct Snapshot {
    kinds: Vec<String>,
    tenants: Vec<SnapTenant>,
}

fn name(d: &mut Decoder, what: &str) -> Result<String, String> {
    let bytes = d.bytes()?;
    if bytes.len() > MAX_NAME {
        return Err(format!("{what} name of {} bytes", bytes.len()));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} name is not UTF-8"))
}

fn finite(d: &mut Decoder, what: &str) -> Result<f64, String> {
    let v = d.f64()?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{what} is not a finite number"))
    }
}

/// Read a snapshot made by [`GandivaFair::snapshot`], checking everything.
fn decode(state: &[u8]) -> Result<Snapshot, String> {
    let mut d = Decoder(state);
    if d.u64().ok() != Some(MAGIC) {
        return Err("not a gandiva_fair snapshot (bad magic)".into());
    }
    let version = d.u64()?;
    if version != VERSION {
        return Err(format!("snapshot version {version}, expected {VERSION}"));
    }
    let _quantum = d.f64()?;
    // Every kind and tenant takes at least 8 bytes: a count larger than
    // what is left is a lie, refused before anything is allocated.
    let n = d.u64()?;
    if n > (d.0.len() / 8) as u64 {
        return Err(format!("{n} GPU kinds in {} bytes", d.0.len()));
    }
    let mut kinds = Vec::new();
    for _ in 0..n {
        let kind = name(&mut d, "GPU kind")?;
        if kinds.contains(&kind) {
            return Err(format!("GPU kind `{}` twice", shown(&kind)));
        }
        kinds.push(kind);
    }
    let n = d.u64()?;
    if n > (d.0.len() / 8) as u64 {
        return Err(format!("{n} tenants in {} bytes", d.0.len()));
    }
    let mut tenants: Vec<SnapTenant> = Vec::new();
    for _ in 0..n {
        let name = name(&mut d, "tenant")?;
        if tenants.iter().any(|t| t.name == name) {
            return Err(format!("tenant `{}` twice", shown(&name)));
        }
        let received = finite(&mut d, "received service")?;
        let entitled = finite(&mut d, "entitled service")?;
        let credit = (0..kinds.len())
            .map(|_| finite(&mut d, "a credit"))
            .collect::<Result<Vec<f64>, String>>()?;
        tenants.push(SnapTenant {
            name,
            received,
            entitled,
            credit,
        });
    }
    if !d.is_empty() {
        return Err("trailing bytes after snapshot".into());
    }
    Ok(Snapshot { kinds, tenants })
}

export_policy!(GandivaFair);

#[cfg(test)]
mod tests;
