/*
 * Strict first-in-first-out, in C: a line-for-line port of
 * plugins/fifo/src/policy.rs (the Rust code is authoritative).
 *
 * Jobs start in submission order; the oldest waiting job that does not fit
 * blocks every job behind it, even ones that would fit (no backfilling).
 * Suspended jobs (left by a previous policy after a hot swap) wait in the
 * same queue by submission order and are resumed rather than started.
 */
#include "common.h"

/* One waiting job. The Rust policy keeps a BTreeMap<JobId, (gpus, state)>;
 * here it is an array sorted by id (ids grow with submission order, so the
 * array's front is the head of the queue). */
typedef struct {
    job_id_t id;
    uint32_t gpus;
    wsched_policy_types_job_state_t state;
} waiting_t;

static struct {
    bool initialized;
    waiting_t *waiting;
    size_t len, cap;
} fifo;

/* Index of the first entry with id >= `id` (binary search). */
static size_t lower_bound(job_id_t id) {
    size_t lo = 0, hi = fifo.len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fifo.waiting[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* BTreeMap::insert: add or overwrite. */
static void waiting_insert(job_id_t id, uint32_t gpus, wsched_policy_types_job_state_t state) {
    size_t i = lower_bound(id);
    if (i < fifo.len && fifo.waiting[i].id == id) {
        fifo.waiting[i].gpus = gpus;
        fifo.waiting[i].state = state;
        return;
    }
    if (fifo.len == fifo.cap) {
        fifo.cap = fifo.cap ? fifo.cap * 2 : 64;
        fifo.waiting = xrealloc(fifo.waiting, fifo.cap * sizeof *fifo.waiting);
    }
    memmove(&fifo.waiting[i + 1], &fifo.waiting[i], (fifo.len - i) * sizeof *fifo.waiting);
    fifo.waiting[i] = (waiting_t){id, gpus, state};
    fifo.len++;
}

/* BTreeMap::remove. */
static void waiting_remove(job_id_t id) {
    size_t i = lower_bound(id);
    if (i < fifo.len && fifo.waiting[i].id == id) {
        memmove(&fifo.waiting[i], &fifo.waiting[i + 1], (fifo.len - i - 1) * sizeof *fifo.waiting);
        fifo.len--;
    }
}

/* init: no configuration is accepted (white space only counts as none). */
bool exports_wsched_policy_policy_init(scheduler_string_t *config, exports_wsched_policy_policy_policy_info_t *ret,
                                       scheduler_string_t *err) {
    size_t start = 0, end = config->len;
    trim(config->ptr, &start, &end);
    bool ok = start == end;
    if (ok) {
        /* A second init starts over, like the Rust SDK replacing its state. */
        free(fifo.waiting);
        fifo.waiting = NULL;
        fifo.len = fifo.cap = 0;
        fifo.initialized = true;
        policy_info(ret, "fifo");
    } else {
        /* Quotes the configuration as given (untrimmed), as the Rust one does. */
        *err = string3("fifo takes no configuration, got `", config->ptr, config->len, "`");
    }
    /* We own the argument (the host allocated it through cabi_realloc). */
    scheduler_string_free(config);
    return ok;
}

/* Fold one event into the queue. */
static void fold_event(view_t view, const event_t *e) {
    switch (e->tag) {
    case WSCHED_POLICY_TYPES_EVENT_JOB_ARRIVED: {
        const wsched_policy_types_job_info_t *job = &e->val.job_arrived;
        if (job->state == WSCHED_POLICY_TYPES_JOB_STATE_PENDING || job->state == WSCHED_POLICY_TYPES_JOB_STATE_SUSPENDED)
            waiting_insert(job->id, job->gpus_requested, job->state);
        else
            waiting_remove(job->id); /* running (seen after a takeover) or over */
        break;
    }
    case WSCHED_POLICY_TYPES_EVENT_JOB_FINISHED:
        waiting_remove(e->val.job_finished);
        break;
    case WSCHED_POLICY_TYPES_EVENT_JOB_FAILED:
        waiting_remove(e->val.job_failed.f0);
        break;
    case WSCHED_POLICY_TYPES_EVENT_ACTION_REJECTED:
        log_warn("fifo: action rejected: ", &e->val.action_rejected.reason);
        break;
    case WSCHED_POLICY_TYPES_EVENT_JOB_PREEMPTED: {
        /* The host suspended it (a GPU it held went away): it waits again,
         * in whatever state the host now reports. */
        wsched_policy_host_job_info_t job;
        if (wsched_policy_host_method_cluster_view_job(view, e->val.job_preempted, &job)) {
            waiting_insert(job.id, job.gpus_requested, job.state);
            wsched_policy_host_job_info_free(&job); /* a returned record is ours to free */
        }
        break;
    }
    default: /* tick, gpu-changed: nothing changes in the queue */
        break;
    }
}

/* Start the head of the queue while it fits; stop at the first job that
 * does not (head-of-line blocking). */
static void start_heads(view_t view, actions_t *actions) {
    wsched_policy_host_list_gpu_id_t free_list;
    wsched_policy_host_method_cluster_view_free_gpus(view, &free_list);
    size_t next_free = 0, head = 0;
    while (head < fifo.len) {
        const waiting_t *w = &fifo.waiting[head];
        const gpu_id_t *gpus;
        if (!take_gpus(free_list.ptr, free_list.len, &next_free, w->gpus, &gpus)) break;
        uint8_t tag = w->state == WSCHED_POLICY_TYPES_JOB_STATE_SUSPENDED ? WSCHED_POLICY_TYPES_ACTION_RESUME
                                                                          : WSCHED_POLICY_TYPES_ACTION_START;
        push_placement(actions, tag, w->id, gpus, w->gpus);
        head++;
    }
    /* Drop the started jobs from the front in one move rather than one
     * move per start, which would make a long queue quadratic. */
    memmove(fifo.waiting, fifo.waiting + head, (fifo.len - head) * sizeof *fifo.waiting);
    fifo.len -= head;
    wsched_policy_host_list_gpu_id_free(&free_list);
}

void exports_wsched_policy_policy_decide(view_t view, exports_wsched_policy_policy_list_event_t *events,
                                         exports_wsched_policy_policy_decision_t *ret) {
    actions_t actions = {0};
    /* The host always calls init first; before it, answer nothing rather than trap. */
    if (fifo.initialized) {
        for (size_t i = 0; i < events->len; i++) fold_event(view, &events->ptr[i]);
        if (fifo.len > 0) start_heads(view, &actions);
    }
    finish_decision(ret, &actions, false, 0.0);
    /* The events list is ours to free; the borrowed view must be dropped
     * before returning (the component model traps on a borrow still
     * outstanding when the call ends). */
    exports_wsched_policy_policy_list_event_free(events);
    wsched_policy_host_cluster_view_drop_borrow(view);
}

/* FIFO keeps no state worth handing over: its queue is rebuilt from the
 * job-arrived events the host replays on every takeover. */
bool exports_wsched_policy_policy_snapshot(scheduler_list_u8_t *ret) {
    (void)ret;
    return false;
}

bool exports_wsched_policy_policy_restore(scheduler_list_u8_t *state, scheduler_string_t *err) {
    scheduler_list_u8_free(state);
    scheduler_string_dup(err, fifo.initialized ? "this policy does not restore state" : "restore called before init");
    return false;
}
