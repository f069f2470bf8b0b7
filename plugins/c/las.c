/*
 * Discretised two-dimensional least-attained-service (2D-LAS), preempting,
 * in C: a line-for-line port of plugins/las/src/lib.rs. The Rust code is
 * authoritative, and tests/languages.rs checks that this port gives the
 * very same per-job results on the bundled trace. So the floating-point
 * expressions below are the Rust ones, operand for operand and in the same
 * order (and build.sh turns off FMA contraction): reassociating one of them
 * changes a rounding, a wake-up time, and eventually some job's schedule.
 *
 * The algorithm, on every decision:
 * 1. Fold the events into the policy's own model of live jobs (GPUs,
 *    GPU-seconds attained as of `since`, running or waiting, placement).
 * 2. If nothing waits, do nothing.
 * 3. Rank every live job by (queue, id): the queue is the number of
 *    thresholds its attained GPU-seconds (time x GPUs) have reached, so
 *    jobs that have received little service come first, and within a queue
 *    the older submission wins (ids grow with submission).
 * 4. Walk that ranking with the online GPU count as capacity: a job that
 *    fits keeps its GPUs (running) or is admitted (waiting); a running job
 *    that no longer fits is a victim. Waiting jobs that do not fit are
 *    skipped, so smaller ones behind them may start (backfilling).
 * 5. If nothing is admitted, preempt nobody (it would only waste work).
 *    Otherwise preempt the victims, then start or resume the admitted jobs
 *    in rank order on the lowest-numbered free GPUs.
 * 6. While anything waits, ask to be woken when the first running job
 *    reaches its next threshold, when the ranking may change.
 *
 * Configuration: empty for thresholds of 3,600 and 36,000 GPU-seconds, or
 * `thresholds=A,B,...` (GPU-seconds, positive, strictly ascending).
 */
#include "common.h"

#include <math.h>

/* What the policy remembers about one live job. */
typedef struct {
    job_id_t id;
    /* GPUs the job needs (waiting) or holds (running). */
    uint32_t gpus;
    /* GPU-seconds attained as of `since` (running) or in total (waiting). */
    double attained;
    /* When the job last started or resumed (running only). */
    double since;
    /* GPU-seconds gained per second while running: GPUs held x share. */
    double rate;
    bool running;
    /* Whether the job has run before, so that it resumes rather than starts. */
    bool started;
    /* GPUs held (running only); malloc'd, NULL when empty. */
    gpu_id_t *placement;
    size_t placement_len;
} job_t;

/* The policy's state. The Rust version keeps a BTreeMap<JobId, Job>; here
 * the jobs are an array sorted by id, so that every walk over them visits
 * them in the same (id) order as the Rust iteration does: ties in
 * `next_crossing` are broken by that order. */
static struct {
    bool initialized;
    double *thresholds;
    size_t n_thresholds;
    job_t *jobs;
    size_t len, cap;
    /* Online GPUs; recounted after a GPU change. */
    bool has_capacity;
    uint32_t capacity;
} las;

/* GPU-seconds attained by `now`. */
static double attained_at(const job_t *job, double now) {
    if (job->running) return job->attained + job->rate * (now - job->since);
    return job->attained;
}

/* The queue for `attained` GPU-seconds: how many thresholds it reached. */
static uint32_t queue_of(double attained) {
    uint32_t q = 0;
    for (size_t i = 0; i < las.n_thresholds; i++)
        if (attained >= las.thresholds[i]) q++;
    return q;
}

/* ---- the job table (sorted by id) ---------------------------------- */

/* Index of the first job with id >= `id`. */
static size_t lower_bound(job_id_t id) {
    size_t lo = 0, hi = las.len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (las.jobs[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* BTreeMap::insert: add or replace (the replaced record's placement is freed). */
static void job_insert(const job_t *job) {
    size_t i = lower_bound(job->id);
    if (i < las.len && las.jobs[i].id == job->id) {
        free(las.jobs[i].placement);
        las.jobs[i] = *job;
        return;
    }
    if (las.len == las.cap) {
        las.cap = las.cap ? las.cap * 2 : 64;
        las.jobs = xrealloc(las.jobs, las.cap * sizeof *las.jobs);
    }
    memmove(&las.jobs[i + 1], &las.jobs[i], (las.len - i) * sizeof *las.jobs);
    las.jobs[i] = *job;
    las.len++;
}

/* BTreeMap::remove. */
static void job_remove(job_id_t id) {
    size_t i = lower_bound(id);
    if (i < las.len && las.jobs[i].id == id) {
        free(las.jobs[i].placement);
        memmove(&las.jobs[i], &las.jobs[i + 1], (las.len - i - 1) * sizeof *las.jobs);
        las.len--;
    }
}

static bool all_running(void) {
    for (size_t i = 0; i < las.len; i++)
        if (!las.jobs[i].running) return false;
    return true;
}

/* ---- folding events into the model --------------------------------- */

/* Bring the model in line with a job's record, as of `now`. */
static void note(const wsched_policy_types_job_info_t *info, double now) {
    job_t job = {.id = info->id, .since = now, .attained = info->attained_gpu_seconds};
    switch (info->state) {
    case WSCHED_POLICY_TYPES_JOB_STATE_PENDING:
    case WSCHED_POLICY_TYPES_JOB_STATE_SUSPENDED:
        job.gpus = info->gpus_requested;
        job.rate = 0.0;
        job.running = false;
        job.started = info->state == WSCHED_POLICY_TYPES_JOB_STATE_SUSPENDED;
        job_insert(&job);
        break;
    case WSCHED_POLICY_TYPES_JOB_STATE_RUNNING:
        job.gpus = (uint32_t)info->placement.len;
        job.rate = (double)job.gpus * info->fraction;
        job.running = true;
        job.started = true;
        /* Copy: the record (and its list) is freed with the events. */
        job.placement = gpus_copy(info->placement.ptr, info->placement.len);
        job.placement_len = info->placement.len;
        job_insert(&job);
        break;
    default: /* finished, failed */
        job_remove(info->id);
        break;
    }
}

/* Re-read one job from the host (after the host suspended it, or refused
 * an action about it). */
static void refresh(view_t view, job_id_t id, double now) {
    wsched_policy_host_job_info_t info;
    if (wsched_policy_host_method_cluster_view_job(view, id, &info)) {
        note(&info, now);
        wsched_policy_host_job_info_free(&info); /* a returned record is ours to free */
    } else {
        job_remove(id);
    }
}

static void fold_event(view_t view, const event_t *e, double now) {
    switch (e->tag) {
    case WSCHED_POLICY_TYPES_EVENT_JOB_ARRIVED:
        note(&e->val.job_arrived, now);
        break;
    case WSCHED_POLICY_TYPES_EVENT_JOB_FINISHED:
        job_remove(e->val.job_finished);
        break;
    case WSCHED_POLICY_TYPES_EVENT_JOB_FAILED:
        job_remove(e->val.job_failed.f0);
        break;
    case WSCHED_POLICY_TYPES_EVENT_JOB_PREEMPTED:
        refresh(view, e->val.job_preempted, now);
        break;
    case WSCHED_POLICY_TYPES_EVENT_ACTION_REJECTED:
        log_warn("las: action rejected: ", &e->val.action_rejected.reason);
        refresh(view, e->val.action_rejected.job, now);
        break;
    case WSCHED_POLICY_TYPES_EVENT_GPU_CHANGED:
        las.has_capacity = false;
        break;
    default: /* tick */
        break;
    }
}

/* ---- deciding ------------------------------------------------------- */

/* The earliest time a running job reaches its next threshold, while
 * anything waits (otherwise no reason to wake up). */
static bool next_crossing(double now, double *earliest) {
    if (all_running()) return false;
    bool found = false;
    for (size_t i = 0; i < las.len; i++) {
        const job_t *job = &las.jobs[i];
        if (!job->running || job->rate <= 0.0) continue;
        double attained = attained_at(job, now);
        uint32_t q = queue_of(attained);
        if (q >= las.n_thresholds) continue; /* in the last queue: never moves down */
        double at = now + (las.thresholds[q] - attained) / job->rate;
        if (!found || at < *earliest) {
            *earliest = at;
            found = true;
        }
    }
    return found;
}

/* One entry of the ranking: (queue, id), plus where the job sits in the
 * table (the table does not change shape while the ranking is in use). */
typedef struct {
    uint32_t queue;
    job_id_t id;
    size_t index;
} rank_t;

static int rank_cmp(const void *pa, const void *pb) {
    const rank_t *a = pa, *b = pb;
    if (a->queue != b->queue) return a->queue < b->queue ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id ? 1 : 0;
}

static int gpu_cmp(const void *pa, const void *pb) {
    gpu_id_t a = *(const gpu_id_t *)pa, b = *(const gpu_id_t *)pb;
    return a < b ? -1 : a > b;
}

/* Steps 2-6 of the algorithm; returns whether to ask for a wake-up. */
static bool schedule(view_t view, double now, uint32_t capacity, actions_t *actions, double *wakeup) {
    if (all_running()) return false;

    /* 3. Rank every live job by (queue, id). The keys are unique, so any
     *    correct sort gives the order Rust's sort_unstable gives. */
    rank_t *ranking = xmalloc(las.len * sizeof *ranking);
    for (size_t i = 0; i < las.len; i++)
        ranking[i] = (rank_t){queue_of(attained_at(&las.jobs[i], now)), las.jobs[i].id, i};
    qsort(ranking, las.len, sizeof *ranking, rank_cmp);

    /* 4. Walk it with the online GPU count as capacity. admit and victims
     *    hold table indices, in rank order. */
    size_t *admit = xmalloc(las.len * sizeof *admit), n_admit = 0;
    size_t *victims = xmalloc(las.len * sizeof *victims), n_victims = 0;
    uint32_t cap = capacity;
    for (size_t r = 0; r < las.len; r++) {
        const job_t *job = &las.jobs[ranking[r].index];
        if (job->gpus > 0 && job->gpus <= cap) {
            cap -= job->gpus;
            if (!job->running) admit[n_admit++] = ranking[r].index;
        } else if (job->running) {
            victims[n_victims++] = ranking[r].index;
        }
    }
    free(ranking);

    /* 5. Nothing admitted: preempt nobody, it would only waste work. */
    if (n_admit > 0) {
        /* The free list is the host's plus what the victims release,
         * re-sorted so that the lowest-numbered GPUs go first. */
        wsched_policy_host_list_gpu_id_t host_free;
        wsched_policy_host_method_cluster_view_free_gpus(view, &host_free);
        gpus_t free_gpus = {0};
        gpus_push(&free_gpus, host_free.ptr, host_free.len);
        wsched_policy_host_list_gpu_id_free(&host_free);

        for (size_t v = 0; v < n_victims; v++) {
            job_t *job = &las.jobs[victims[v]];
            push_preempt(actions, job->id);
            job->attained = attained_at(job, now);
            job->running = false;
            job->rate = 0.0;
            gpus_push(&free_gpus, job->placement, job->placement_len);
            free(job->placement);
            job->placement = NULL;
            job->placement_len = 0;
        }
        qsort(free_gpus.ptr, free_gpus.len, sizeof *free_gpus.ptr, gpu_cmp);

        size_t next_free = 0;
        for (size_t a = 0; a < n_admit; a++) {
            job_t *job = &las.jobs[admit[a]];
            const gpu_id_t *gpus;
            if (!take_gpus(free_gpus.ptr, free_gpus.len, &next_free, job->gpus, &gpus))
                continue; /* not actually free (shared GPUs): try next time */
            push_placement(actions, job->started ? WSCHED_POLICY_TYPES_ACTION_RESUME : WSCHED_POLICY_TYPES_ACTION_START,
                           job->id, gpus, job->gpus);
            job->running = true;
            job->started = true;
            job->since = now;
            job->rate = (double)job->gpus;
            /* The action's copy goes to the host; the job keeps its own. */
            job->placement = gpus_copy(gpus, job->gpus);
            job->placement_len = job->gpus;
        }
        free(free_gpus.ptr);
    }
    free(admit);
    free(victims);

    /* 6. While anything waits, wake up at the next threshold crossing. */
    return next_crossing(now, wakeup);
}

void exports_wsched_policy_policy_decide(view_t view, exports_wsched_policy_policy_list_event_t *events,
                                         exports_wsched_policy_policy_decision_t *ret) {
    actions_t actions = {0};
    bool has_wakeup = false;
    double wakeup = 0.0;
    /* The host always calls init first; before it, answer nothing rather than trap. */
    if (las.initialized) {
        double now = wsched_policy_host_method_cluster_view_now(view);
        /* 1. Fold the events into the model. */
        for (size_t i = 0; i < events->len; i++) fold_event(view, &events->ptr[i], now);
        if (!las.has_capacity) {
            wsched_policy_host_list_gpu_info_t gpus;
            wsched_policy_host_method_cluster_view_gpus(view, &gpus);
            uint32_t online = 0;
            for (size_t i = 0; i < gpus.len; i++)
                if (gpus.ptr[i].online) online++;
            wsched_policy_host_list_gpu_info_free(&gpus);
            las.capacity = online;
            las.has_capacity = true;
        }
        has_wakeup = schedule(view, now, las.capacity, &actions, &wakeup);
    }
    finish_decision(ret, &actions, has_wakeup, wakeup);
    /* The events list is ours to free; the borrowed view must be dropped
     * before returning (the component model traps on a borrow still
     * outstanding when the call ends). */
    exports_wsched_policy_policy_list_event_free(events);
    wsched_policy_host_cluster_view_drop_borrow(view);
}

/* ---- configuration ------------------------------------------------- */

static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* Whether s[0..len) equals the ASCII word `lower`, ignoring case. */
static bool equals_nocase(const uint8_t *s, size_t len, const char *lower) {
    if (strlen(lower) != len) return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c >= 'A' && c <= 'Z') c = (uint8_t)(c - 'A' + 'a');
        if (c != (uint8_t)lower[i]) return false;
    }
    return true;
}

/* Rust's `str::parse::<f64>`: the same accepted grammar
 *   [+-]? ( inf | infinity | nan | digits [. digits?] | . digits ) ([eE] [+-]? digits)?
 * (no white space, no hex, no '_'), correctly rounded. strtod alone would
 * accept more (hex floats, leading space, "nan(...)"), which would let the
 * port load a configuration the Rust policy refuses. */
static bool parse_f64(const uint8_t *s, size_t len, double *out) {
    size_t i = 0;
    bool negative = false;
    if (i < len && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
    if (equals_nocase(s + i, len - i, "inf") || equals_nocase(s + i, len - i, "infinity")) {
        *out = negative ? -INFINITY : INFINITY;
        return true;
    }
    if (equals_nocase(s + i, len - i, "nan")) {
        *out = NAN;
        return true;
    }
    size_t digits = 0;
    while (i < len && is_digit(s[i])) i++, digits++;
    if (i < len && s[i] == '.') {
        i++;
        while (i < len && is_digit(s[i])) i++, digits++;
    }
    if (digits == 0) return false;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        size_t exp_digits = 0;
        while (i < len && is_digit(s[i])) i++, exp_digits++;
        if (exp_digits == 0) return false;
    }
    if (i != len) return false;
    /* Validated: hand a NUL-terminated copy to strtod for correct rounding
     * (wasi-libc's strtod is musl's, correctly rounded like Rust's). */
    char *copy = xmalloc(len + 1);
    memcpy(copy, s, len);
    copy[len] = '\0';
    *out = strtod(copy, NULL);
    free(copy);
    return true;
}

/* Parse the configuration into a malloc'd array of thresholds, or set *err. */
static bool parse_config(const uint8_t *config, size_t config_len, double **out, size_t *out_len,
                         scheduler_string_t *err) {
    size_t start = 0, end = config_len;
    trim(config, &start, &end);
    if (start == end) {
        *out_len = 2;
        *out = xmalloc(2 * sizeof(double));
        (*out)[0] = 3600.0;
        (*out)[1] = 36000.0;
        return true;
    }
    static const char prefix[] = "thresholds=";
    const size_t prefix_len = sizeof prefix - 1;
    if (end - start < prefix_len || memcmp(config + start, prefix, prefix_len) != 0) {
        /* Quotes the trimmed configuration, as the Rust one does. */
        *err = string3("las: unknown configuration `", config + start, end - start,
                       "` (expected thresholds=A,B,...)");
        return false;
    }
    const uint8_t *list = config + start + prefix_len;
    size_t list_len = end - start - prefix_len;

    /* At most one threshold per comma, plus one. */
    size_t max = 1;
    for (size_t i = 0; i < list_len; i++)
        if (list[i] == ',') max++;
    double *thresholds = xmalloc(max * sizeof(double));
    size_t n = 0;

    /* `split(',')`: every piece, empty ones included (they are not numbers). */
    size_t item_start = 0;
    for (;;) {
        size_t item_end = item_start;
        while (item_end < list_len && list[item_end] != ',') item_end++;
        const uint8_t *item = list + item_start;
        size_t item_len = item_end - item_start;

        size_t ts = 0, te = item_len;
        trim(item, &ts, &te);
        double t;
        if (!parse_f64(item + ts, te - ts, &t)) {
            /* The messages quote the untrimmed piece, as the Rust ones do. */
            *err = string3("las: thresholds: `", item, item_len, "` is not a number");
            free(thresholds);
            return false;
        }
        if (!(isfinite(t) && t > 0.0)) {
            *err = string3("las: thresholds: `", item, item_len, "` must be positive");
            free(thresholds);
            return false;
        }
        if (n > 0 && t <= thresholds[n - 1]) {
            scheduler_string_dup(err, "las: thresholds must be strictly ascending");
            free(thresholds);
            return false;
        }
        thresholds[n++] = t;

        if (item_end == list_len) break;
        item_start = item_end + 1;
    }
    *out = thresholds;
    *out_len = n;
    return true;
}

/* Forget everything (before a fresh init). */
static void reset(void) {
    for (size_t i = 0; i < las.len; i++) free(las.jobs[i].placement);
    free(las.jobs);
    free(las.thresholds);
    memset(&las, 0, sizeof las);
}

bool exports_wsched_policy_policy_init(scheduler_string_t *config, exports_wsched_policy_policy_policy_info_t *ret,
                                       scheduler_string_t *err) {
    double *thresholds;
    size_t n_thresholds;
    bool ok = parse_config(config->ptr, config->len, &thresholds, &n_thresholds, err);
    if (ok) {
        /* A second init starts over, like the Rust SDK replacing its state
         * (a refused one, as there, leaves the current state alone). */
        reset();
        las.thresholds = thresholds;
        las.n_thresholds = n_thresholds;
        las.initialized = true;
        policy_info(ret, "las");
    }
    /* We own the argument (the host allocated it through cabi_realloc). */
    scheduler_string_free(config);
    return ok;
}

/* LAS keeps no state worth handing over: its model is rebuilt from the
 * job-arrived events the host replays on every takeover. */
bool exports_wsched_policy_policy_snapshot(scheduler_list_u8_t *ret) {
    (void)ret;
    return false;
}

bool exports_wsched_policy_policy_restore(scheduler_list_u8_t *state, scheduler_string_t *err) {
    scheduler_list_u8_free(state);
    scheduler_string_dup(err, las.initialized ? "this policy does not restore state" : "restore called before init");
    return false;
}
