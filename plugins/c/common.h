/*
 * Small helpers shared by the C policies (fifo.c, las.c).
 *
 * Everything here is `static inline`, so that each policy is one
 * translation unit plus the generated bindings (scheduler.c) and nothing is
 * exported by accident.
 *
 * The only libc used is malloc/realloc/free, memcpy/memmove/memcmp, qsort
 * and (las.c) strtod. None of them touches WASI (strtod only when linked
 * with -lc-printscan-long-double, see build.sh), so the core module imports
 * nothing but the wsched host interface and needs no WASI adapter. Avoid
 * stdio, time, getenv and the like: a policy has no files, clock or
 * environment, and they would pull WASI imports in.
 */
#ifndef WSCHED_C_COMMON_H
#define WSCHED_C_COMMON_H

#include "scheduler.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Shorter names for the generated types used everywhere. */
typedef wsched_policy_types_job_id_t job_id_t;
typedef wsched_policy_types_gpu_id_t gpu_id_t;
typedef wsched_policy_types_action_t action_t;
typedef exports_wsched_policy_policy_event_t event_t;
typedef exports_wsched_policy_policy_borrow_cluster_view_t view_t;

/* ---------------------------------------------------------------------
 * Allocation. A policy cannot report "out of memory" through the WIT
 * contract, and the host treats a trap as a fault of the policy (it
 * strikes and eventually ejects it): trapping is the honest answer.
 * Everything handed back to the host (strings, lists) must come from
 * malloc, because the generated cabi_post_* functions free() it after the
 * host has copied it out.
 * ------------------------------------------------------------------- */

static inline void *xrealloc(void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (!p) __builtin_trap();
    return p;
}

static inline void *xmalloc(size_t size) { return xrealloc(NULL, size); }

/* ---------------------------------------------------------------------
 * Strings. WIT strings are UTF-8 with an explicit length (not
 * NUL-terminated, and may contain NUL), so they are handled as
 * (pointer, length) throughout.
 * ------------------------------------------------------------------- */

/* A byte string under construction (malloc'd, not NUL-terminated). */
typedef struct {
    uint8_t *ptr;
    size_t len, cap;
} buf_t;

static inline void buf_push(buf_t *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2;
        b->ptr = xrealloc(b->ptr, b->cap);
    }
    memcpy(b->ptr + b->len, data, len);
    b->len += len;
}

static inline void buf_cstr(buf_t *b, const char *s) { buf_push(b, s, strlen(s)); }

/* Hand a buffer over as a WIT string; the receiver frees it. */
static inline scheduler_string_t buf_into_string(buf_t *b) {
    scheduler_string_t s = {b->ptr, b->len};
    if (s.len == 0) {
        /* The bindings never free an empty string, so do not leak one. */
        free(b->ptr);
        s.ptr = NULL;
    }
    b->ptr = NULL;
    b->len = b->cap = 0;
    return s;
}

/* A malloc'd WIT string "<a><middle><c>", for error messages that quote
 * the operator's input. */
static inline scheduler_string_t string3(const char *a, const uint8_t *middle, size_t middle_len, const char *c) {
    buf_t b = {0};
    buf_cstr(&b, a);
    buf_push(&b, middle, middle_len);
    buf_cstr(&b, c);
    return buf_into_string(&b);
}

/* Decode the UTF-8 character starting at s[i] (input is valid UTF-8: the
 * host is Rust and the canonical ABI checks it); sets *width. */
static inline uint32_t utf8_at(const uint8_t *s, size_t i, size_t *width) {
    uint8_t c = s[i];
    if (c < 0x80) {
        *width = 1;
        return c;
    }
    if (c < 0xE0) {
        *width = 2;
        return ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    }
    if (c < 0xF0) {
        *width = 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    }
    *width = 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
           ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
}

/* Unicode White_Space, exactly what Rust's `char::is_whitespace` (and so
 * `str::trim`, which the Rust policies use on their configuration) treats
 * as space: a config of "\u3000" must be refused or accepted alike. */
static inline bool is_unicode_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* Rust's `str::trim`: narrows [*start, *end) of s to drop leading and
 * trailing white space. */
static inline void trim(const uint8_t *s, size_t *start, size_t *end) {
    size_t w;
    while (*start < *end && is_unicode_space(utf8_at(s, *start, &w))) *start += w;
    while (*start < *end) {
        size_t last = *end - 1;
        while (last > *start && (s[last] & 0xC0) == 0x80) last--; /* back to a lead byte */
        if (!is_unicode_space(utf8_at(s, last, &w))) break;
        *end = last;
    }
}

/* ---------------------------------------------------------------------
 * Host calls.
 * ------------------------------------------------------------------- */

/* `log(Level::Warn, "<prefix><reason>")` as the Rust SDK does it: ask the
 * host first so that a message it would drop is never built. */
static inline void log_warn(const char *prefix, const scheduler_string_t *reason) {
    if (!wsched_policy_host_log_enabled(WSCHED_POLICY_TYPES_LEVEL_WARN)) return;
    scheduler_string_t msg = string3(prefix, reason->ptr, reason->len, "");
    /* log borrows the message; we still own it. */
    wsched_policy_host_log(WSCHED_POLICY_TYPES_LEVEL_WARN, &msg);
    scheduler_string_free(&msg);
}

/* ---------------------------------------------------------------------
 * GPU lists and actions.
 * ------------------------------------------------------------------- */

/* A growable list of GPU ids, owned by the policy. */
typedef struct {
    gpu_id_t *ptr;
    size_t len, cap;
} gpus_t;

static inline void gpus_push(gpus_t *v, const gpu_id_t *ids, size_t n) {
    if (v->len + n > v->cap) {
        v->cap = (v->len + n) * 2;
        v->ptr = xrealloc(v->ptr, v->cap * sizeof *v->ptr);
    }
    if (n) memcpy(v->ptr + v->len, ids, n * sizeof *ids);
    v->len += n;
}

/* A malloc'd copy of n GPU ids (NULL for none). */
static inline gpu_id_t *gpus_copy(const gpu_id_t *ids, size_t n) {
    if (n == 0) return NULL;
    gpu_id_t *p = xmalloc(n * sizeof *p);
    memcpy(p, ids, n * sizeof *p);
    return p;
}

/* The SDK's `take_gpus`: the first k GPUs of the free list (lowest ids
 * first, as the host lists them and as LAS re-sorts them), all or nothing.
 * Instead of draining the front of the array, *next marks how far it has
 * been consumed. Returns false (and takes nothing) for k == 0 or when fewer
 * than k are left; otherwise points *taken at the k ids inside the list. */
static inline bool take_gpus(const gpu_id_t *free_ids, size_t free_len, size_t *next, uint32_t k,
                      const gpu_id_t **taken) {
    if (k == 0 || free_len - *next < (size_t)k) return false;
    *taken = free_ids + *next;
    *next += k;
    return true;
}

/* The decision's action list under construction. It becomes the
 * `decision.actions` handed to the host, which the generated
 * cabi_post_...#decide frees (array and each placement's GPU list). */
typedef struct {
    action_t *ptr;
    size_t len, cap;
} actions_t;

static inline action_t *actions_next(actions_t *a) {
    if (a->len == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 8;
        a->ptr = xrealloc(a->ptr, a->cap * sizeof *a->ptr);
    }
    return &a->ptr[a->len++];
}

/* Append start/resume (tag) of `job` on a copy of `gpus`. */
static inline void push_placement(actions_t *a, uint8_t tag, job_id_t job, const gpu_id_t *gpus, size_t n) {
    action_t *act = actions_next(a);
    act->tag = tag;
    /* start and resume share the placement layout; fill the one named. */
    wsched_policy_types_placement_t *p = tag == WSCHED_POLICY_TYPES_ACTION_RESUME ? &act->val.resume : &act->val.start;
    p->job = job;
    p->gpus.ptr = gpus_copy(gpus, n);
    p->gpus.len = n;
}

static inline void push_preempt(actions_t *a, job_id_t job) {
    action_t *act = actions_next(a);
    act->tag = WSCHED_POLICY_TYPES_ACTION_PREEMPT;
    act->val.preempt = job;
}

/* Fill the decision the host receives from the actions built. */
static inline void finish_decision(exports_wsched_policy_policy_decision_t *ret, actions_t *a, bool has_wakeup,
                            double wakeup) {
    if (a->len == 0) {
        free(a->ptr); /* the bindings never free an empty list */
        a->ptr = NULL;
    }
    ret->actions.ptr = a->ptr;
    ret->actions.len = a->len;
    ret->wakeup.is_some = has_wakeup;
    ret->wakeup.val = has_wakeup ? wakeup : 0.0;
}

/* Give `policy-info { name, tick-interval: none }` back from init; the
 * name must be malloc'd because the post-return function frees it. */
static inline void policy_info(exports_wsched_policy_policy_policy_info_t *ret, const char *name) {
    scheduler_string_dup(&ret->name, name);
    ret->tick_interval.is_some = false;
    ret->tick_interval.val = 0.0;
}

#endif
