/* The compiled core of continuous-batching replicas (see driftsim/sim/stepcore.py).
 *
 * It runs exactly what driftsim.sim.engine.EngineCore and ContinuousReplica do: an FCFS or
 * keyed-policy waiting queue (FcfsQueue, PolicyQueue), chunked prefill, recompute preemption,
 * fast-forwarded pure-decode runs, synchronous or async scheduling, no prefix cache. A lone
 * synchronous replica takes the trace's rows in itself (driftsim.sim.run._ArrivalFeed); with async
 * scheduling, or several replicas behind a router (Cluster, below), it mirrors the arrival process
 * that hands each row in at its time (driftsim.sim.run._arrivals) and each replica's SimPy process:
 * the engine's inbox and its intake and release lags (EngineCore._intake), and a run cut by an
 * arrival during it (_wait_run). Every branch below names the Python method it mirrors; the
 * arithmetic is the same operations in the same order on IEEE doubles (built without FMA
 * contraction), so times are bit-identical to the Python engine, which stays the reference
 * (tests/test_stepcore.py compares the two on random traces and engine limits).
 *
 * Plain C behind ctypes: Python hands rows in (sc_push) and drains finished requests from
 * buffers it owns; sc_run returns when it needs more rows, the buffer is nearly full, or the
 * run is done.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

enum { COST_ROOFLINE = 1, COST_LINEAR = 2, COST_TOKEN_TABLE = 3 };
/* FcfsQueue; a keyed policy with a static key (fifo, priority, sjf, aging, edf); Las; Srpt */
enum { POL_FCFS = 0, POL_STATIC = 1, POL_LAS = 2, POL_SRPT = 3 };
enum { RC_DONE = 0, RC_NEED_ROWS = 1, RC_FULL = 2, RC_STALL = -1, RC_NOMEM = -2 };

typedef struct {
    int kind;
    double p[12];
    int nknots;
    double knots[64];
    double values[64];
} Cost;

typedef struct {
    i64 idx, input, output, computed, generated, blocks, prefill_target;
    i64 entry_step, entry_computed, entry_generated, finish_g, token, order, preemptions, rid;
    double first_token_s, scheduled_s;
    double at, k1, k2, wk1, wk2; /* arrival; a keyed policy's static key; its key when last queued */
    int prev, next; /* running list, admission order */
} Req;

typedef struct {
    i64 g, order, token;
    int slot;
} HeapEntry;

/* pending rows: trace row, arrival, prompt, output (-1: refused at release) */
typedef struct {
    i64 *idx, *in, *out, *rid;
    double *at, *k1, *k2; /* k1, k2: the engine policy's static key (PolicyQueue) */
    i64 head, len, cap;
    double now; /* the arrival process's clock (_ArrivalFeed._now) */
    i64 released;
} Rows;

typedef struct {
    Cost cost;
    i64 bs, max_seqs, token_budget, max_model_len, kv_total, kv_used;
    int chunked, reserve_full, async_sched;
    int policy; /* the waiting queue: POL_FCFS (a ring), else a heap keyed as PolicyQueue keys it */

    /* async scheduling: the inbox (ring of slots with the step they arrived during), whether the
     * plan in progress sees the last step's finishers as still there, and what they hold */
    int *ib_slot;
    i64 *ib_step;
    int ibcap, ibhead, iblen, lagged;
    i64 lag_seqs, lag_blocks, nfin, freed; /* nfin, freed: by the step being committed */
    double last_end;

    Req *reqs;
    int nreqs, capreqs, *free_slots, nfree;

    int *waiting; /* ring */
    int wcap, whead, wlen;

    int run_head, run_tail, n_running;
    int *prefilling, nprefill;
    i64 next_order, next_token;

    i64 decode_step, num_decode, decode_ctx, *by_phase;
    HeapEntry *heap;
    int nheap, capheap;

    Rows q; /* the trace's rows not yet released (a lone replica's own) */

    double clock, busy_s;
    i64 steps, preemptions;
    i64 *chunks; /* the planned general step's chunk per prefilling request */

    double *ends; /* a planned pure-decode run's step ends (after a committed step's, in a cluster) */
    i64 ends_cap;

    /* finished requests, drained by Python (out_cnt: this replica's out_n, or its cluster's count;
     * out_rep: NULL, or the cluster's replica column) */
    i64 out_cap, out_n, *out_cnt, *out_idx, *out_gen, *out_pre, *out_rep;
    int index;
    double *out_sched, *out_first, *out_finish;
} Core;

/* Python's -(-a // b) for a >= 0, b > 0 */
static inline i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }
/* Python's a % b for b > 0 */
static inline i64 pymod(i64 a, i64 b) { i64 m = a % b; return m < 0 ? m + b : m; }

/* ------------------------------------------------------------------ cost formulas */

static double table_eval(const Cost *c, double x, double per_unit) {
    /* LinearCostModel.decode_seqs_s / TokenTableCostModel.tokens_s */
    int n = c->nknots;
    if (x >= c->knots[n - 1]) return c->values[n - 1] + per_unit * (x - c->knots[n - 1]);
    int j = 0; /* bisect_right: knots <= x */
    while (j < n && c->knots[j] <= x) j++;
    if (j && x == c->knots[j - 1]) return c->values[j - 1];
    double k0 = j ? c->knots[j - 1] : 0.0, v0 = j ? c->values[j - 1] : 0.0;
    return v0 + (c->values[j] - v0) * ((x - k0) / (c->knots[j] - k0));
}

static double step_time(const Cost *c, double P, double A, double Sp, double D, double C) {
    const double *p = c->p;
    if (c->kind == COST_ROOFLINE) { /* RooflineCostModel.step_time */
        double compute = (p[0] * (P + D) + p[1] * (Sp + D) + p[2] * (A + C)) / p[3];
        double memory = (p[4] + p[5] * (C + A / p[6] + P + D)) / p[7];
        double overhead = p[8] + p[9] * (Sp + D);
        return overhead + (memory > compute ? memory : compute);
    }
    if (c->kind == COST_LINEAR) { /* LinearCostModel.step_time */
        double S = c->nknots ? table_eval(c, D, p[4]) : p[4] * D;
        return p[0] + p[1] * P + p[2] * A + p[3] * Sp + S + p[5] * C;
    }
    /* TokenTableCostModel.step_time */
    double G = table_eval(c, P + D, p[1]);
    return p[0] + G + p[2] * A + p[3] * Sp + p[4] * (double)(Sp > 0) + p[5] * D + p[6] * (double)(D > 0) + p[7] * C;
}

/* ------------------------------------------------------------------ containers */

static int grow(void **ptr, i64 *cap, i64 need, size_t size) {
    if (need <= *cap) return 0;
    i64 n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *p = realloc(*ptr, (size_t)n * size);
    if (!p) return -1;
    *ptr = p;
    *cap = n;
    return 0;
}

static int new_slot(Core *s) {
    if (s->nfree) return s->free_slots[--s->nfree];
    if (s->nreqs == s->capreqs) {
        int n = s->capreqs ? s->capreqs * 2 : 256;
        Req *r = realloc(s->reqs, (size_t)n * sizeof(Req));
        int *f = realloc(s->free_slots, (size_t)n * sizeof(int));
        if (!r || !f) { if (r) s->reqs = r; if (f) s->free_slots = f; return -1; }
        s->reqs = r;
        s->free_slots = f;
        s->capreqs = n;
    }
    return s->nreqs++;
}

static int waiting_grow(Core *s) {
    if (s->wlen < s->wcap) return 0;
    int n = s->wcap ? s->wcap * 2 : 256;
    int *w = malloc((size_t)n * sizeof(int));
    if (!w) return -1;
    for (int i = 0; i < s->wlen; i++) w[i] = s->waiting[(s->whead + i) % s->wcap];
    free(s->waiting);
    s->waiting = w;
    s->wcap = n;
    s->whead = 0;
    return 0;
}

/* A policy's key of r now (Policy.key): static, Las's generated tokens, Srpt's remaining estimate */
static inline void policy_key(const Core *s, const Req *r, double *k1, double *k2) {
    if (s->policy == POL_LAS) {
        *k1 = (double)r->generated;
        *k2 = 0.0;
    } else if (s->policy == POL_SRPT) { /* max(est_tokens - input_tokens - generated, 0); oracle: est = in + out */
        i64 left = r->output - r->generated;
        *k1 = (double)(left > 0 ? left : 0);
        *k2 = 0.0;
    } else {
        *k1 = r->k1;
        *k2 = r->k2;
    }
}

/* Policy's heap order: (key, arrival_s, request_id) */
static inline int rank_less(double a1, double a2, const Req *a, double b1, double b2, const Req *b) {
    if (a1 != b1) return a1 < b1;
    if (a2 != b2) return a2 < b2;
    if (a->at != b->at) return a->at < b->at;
    return a->rid < b->rid;
}

static inline int wait_less(const Core *s, int a, int b) {
    const Req *x = &s->reqs[a], *y = &s->reqs[b];
    return rank_less(x->wk1, x->wk2, x, y->wk1, y->wk2, y);
}

/* PolicyQueue.push: into the policy's heap with its key now (a preempted request too) */
static int wheap_push(Core *s, int slot) {
    if (waiting_grow(s)) return -1;
    Req *r = &s->reqs[slot];
    policy_key(s, r, &r->wk1, &r->wk2);
    int i = s->wlen++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!wait_less(s, slot, s->waiting[parent])) break;
        s->waiting[i] = s->waiting[parent];
        i = parent;
    }
    s->waiting[i] = slot;
    return 0;
}

static void wheap_pop(Core *s) {
    int last = s->waiting[--s->wlen], n = s->wlen, i = 0;
    if (!n) return;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i, best = last;
        if (l < n && wait_less(s, s->waiting[l], best)) { m = l; best = s->waiting[l]; }
        if (r < n && wait_less(s, s->waiting[r], best)) m = r;
        if (m == i) break;
        s->waiting[i] = s->waiting[m];
        i = m;
    }
    s->waiting[i] = last;
}

static int waiting_push(Core *s, int slot) {
    if (s->policy) return wheap_push(s, slot);
    if (waiting_grow(s)) return -1;
    s->waiting[(s->whead + s->wlen) % s->wcap] = slot;
    s->wlen++;
    return 0;
}

static int waiting_push_front(Core *s, int slot) {
    if (s->policy) return wheap_push(s, slot);
    if (waiting_grow(s)) return -1;
    s->whead = (s->whead + s->wcap - 1) % s->wcap;
    s->waiting[s->whead] = slot;
    s->wlen++;
    return 0;
}

static inline int waiting_peek(Core *s) { return s->waiting[s->whead]; } /* a heap keeps whead 0 */

static inline void waiting_pop(Core *s) {
    if (s->policy) {
        wheap_pop(s);
        return;
    }
    s->whead = (s->whead + 1) % s->wcap;
    s->wlen--;
}

static int heap_less(const HeapEntry *a, const HeapEntry *b) {
    return a->g < b->g || (a->g == b->g && a->order < b->order);
}

static int heap_push(Core *s, HeapEntry e) {
    if (s->nheap == s->capheap) {
        int n = s->capheap ? s->capheap * 2 : 256;
        HeapEntry *h = realloc(s->heap, (size_t)n * sizeof(HeapEntry));
        if (!h) return -1;
        s->heap = h;
        s->capheap = n;
    }
    int i = s->nheap++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!heap_less(&e, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = e;
    return 0;
}

static void heap_pop(Core *s) {
    HeapEntry last = s->heap[--s->nheap];
    int n = s->nheap, i = 0;
    if (!n) return;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        const HeapEntry *best = &last;
        if (l < n && heap_less(&s->heap[l], best)) { m = l; best = &s->heap[l]; }
        if (r < n && heap_less(&s->heap[r], best)) { m = r; }
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    s->heap[i] = last;
}

static void running_append(Core *s, int slot) {
    Req *r = &s->reqs[slot];
    r->prev = s->run_tail;
    r->next = -1;
    if (s->run_tail >= 0) s->reqs[s->run_tail].next = slot; else s->run_head = slot;
    s->run_tail = slot;
    s->n_running++;
}

static void running_remove(Core *s, int slot) {
    Req *r = &s->reqs[slot];
    if (r->prev >= 0) s->reqs[r->prev].next = r->next; else s->run_head = r->next;
    if (r->next >= 0) s->reqs[r->next].prev = r->prev; else s->run_tail = r->prev;
    s->n_running--;
}

/* ------------------------------------------------------------------ engine (EngineCore) */

static inline int has_work(Core *s) { return s->n_running || s->wlen || s->iblen; }
static inline i64 free_blocks(Core *s) { return s->kv_total - s->kv_used; }

/* admitted_prompt_tokens: -1 for None */
static inline i64 admitted(Core *s, i64 remaining, i64 budget) {
    if (remaining > budget && !s->chunked) return -1;
    return remaining < budget ? remaining : budget;
}

/* EngineCore._admission_blocks (no prefix cache) */
static inline i64 admission_blocks(Core *s, Req *r, i64 n) {
    i64 tokens = s->reserve_full ? r->prefill_target : n;
    if (tokens > s->max_model_len) tokens = s->max_model_len;
    return ceil_div(tokens, s->bs);
}

static void finish(Core *s, int slot, double end) {
    Req *r = &s->reqs[slot];
    i64 k = (*s->out_cnt)++;
    if (s->out_rep) s->out_rep[k] = s->index;
    s->out_idx[k] = r->idx;
    s->out_sched[k] = r->scheduled_s;
    s->out_first[k] = r->first_token_s;
    s->out_finish[k] = end;
    s->out_gen[k] = r->generated;
    s->out_pre[k] = r->preemptions;
    s->free_slots[s->nfree++] = slot;
    s->nfin++;
}

/* EngineCore._waiting_blocked */
static int waiting_blocked(Core *s) {
    if (!s->wlen || s->n_running >= s->max_seqs) return 1;
    Req *head = &s->reqs[waiting_peek(s)];
    i64 n = admitted(s, head->prefill_target, s->token_budget - s->num_decode);
    if (n < 0) return 1;
    i64 free_after = free_blocks(s) - s->by_phase[pymod(-s->decode_step, s->bs)];
    return admission_blocks(s, head, n) > free_after;
}

/* EngineCore._stable_steps */
static i64 stable_steps(Core *s) {
    while (s->heap[0].token != s->reqs[s->heap[0].slot].token || s->reqs[s->heap[0].slot].finish_g < 0)
        heap_pop(s);
    i64 to_finish = s->heap[0].g - s->decode_step;
    i64 freeb = free_blocks(s), nd = s->num_decode, bs = s->bs;
    i64 full_cycles = freeb / nd;
    i64 k = full_cycles * bs;
    if (k >= to_finish) return to_finish;
    i64 left = freeb - full_cycles * nd;
    while (k < to_finish) {
        i64 need = s->by_phase[pymod(-(s->decode_step + k), bs)];
        if (need > left) return k;
        left -= need;
        k++;
    }
    return to_finish;
}

/* EngineCore._pop_finished */
static void pop_finished(Core *s, double end) {
    while (s->nheap && s->heap[0].g <= s->decode_step) {
        HeapEntry e = s->heap[0];
        heap_pop(s);
        Req *r = &s->reqs[e.slot];
        if (e.token != r->token || r->finish_g < 0) continue;
        i64 tokens = r->entry_computed + s->decode_step - r->entry_step;
        s->kv_used -= ceil_div(tokens, s->bs);
        s->freed += ceil_div(tokens, s->bs);
        s->num_decode--;
        s->decode_ctx -= tokens;
        s->by_phase[pymod(r->entry_computed - r->entry_step, s->bs)]--;
        r->generated = r->output;
        r->finish_g = -1;
        running_remove(s, e.slot);
        finish(s, e.slot, end);
    }
}

/* EngineCore._enter_decode */
static int enter_decode(Core *s, int slot) {
    Req *r = &s->reqs[slot];
    r->entry_computed = r->computed;
    r->entry_step = s->decode_step;
    r->entry_generated = r->generated;
    r->finish_g = s->decode_step + (r->output - r->generated);
    s->by_phase[pymod(r->entry_computed - r->entry_step, s->bs)]++;
    s->num_decode++;
    s->decode_ctx += r->entry_computed;
    r->blocks = 0;
    r->token = s->next_token++;
    HeapEntry e = {r->finish_g, r->order, r->token, slot};
    return heap_push(s, e);
}

/* The victim the waiting queue names: FcfsQueue's most recently admitted; PolicyQueue's running request
 * the policy ranks last (max of Policy.rank, the first of equals in running order) */
static int victim(Core *s) {
    if (!s->policy) return s->run_tail;
    int best = s->run_head;
    double b1, b2;
    policy_key(s, &s->reqs[best], &b1, &b2);
    for (int i = s->reqs[best].next; i >= 0; i = s->reqs[i].next) {
        double k1, k2;
        policy_key(s, &s->reqs[i], &k1, &k2);
        if (rank_less(b1, b2, &s->reqs[best], k1, k2, &s->reqs[i])) {
            best = i;
            b1 = k1;
            b2 = k2;
        }
    }
    return best;
}

/* EngineCore._preempt_victim and _take_off_running */
static int preempt_victim(Core *s) {
    int slot = victim(s);
    Req *r = &s->reqs[slot];
    running_remove(s, slot);
    if (r->finish_g < 0) {
        for (int i = 0; i < s->nprefill; i++)
            if (s->prefilling[i] == slot) {
                memmove(s->prefilling + i, s->prefilling + i + 1, (size_t)(s->nprefill - i - 1) * sizeof(int));
                s->nprefill--;
                break;
            }
        s->kv_used -= r->blocks;
    } else {
        i64 tokens = r->entry_computed + s->decode_step - r->entry_step;
        s->kv_used -= ceil_div(tokens, s->bs);
        s->num_decode--;
        s->decode_ctx -= tokens;
        s->by_phase[pymod(r->entry_computed - r->entry_step, s->bs)]--;
        r->generated = r->entry_generated + s->decode_step - r->entry_step;
    }
    r->blocks = 0;
    r->finish_g = -1;
    r->computed = 0;
    r->preemptions++;
    s->preemptions++;
    r->prefill_target = r->input + r->generated;
    return waiting_push_front(s, slot);
}

/* ------------------------------------------------------------------ async intake */

/* EngineCore._take_inbox: into the waiting queue, what arrived during steps up to step */
static int take_inbox(Core *s, i64 step) {
    while (s->iblen && s->ib_step[s->ibhead] <= step) {
        if (waiting_push(s, s->ib_slot[s->ibhead])) return -1;
        s->ibhead = (s->ibhead + 1) % s->ibcap;
        s->iblen--;
    }
    return 0;
}

static int inbox_push(Core *s, int slot, i64 step) {
    if (s->iblen == s->ibcap) {
        int n = s->ibcap ? s->ibcap * 2 : 256;
        int *a = malloc((size_t)n * sizeof(int));
        i64 *b = malloc((size_t)n * sizeof(i64));
        if (!a || !b) { free(a); free(b); return -1; }
        for (int i = 0; i < s->iblen; i++) {
            a[i] = s->ib_slot[(s->ibhead + i) % s->ibcap];
            b[i] = s->ib_step[(s->ibhead + i) % s->ibcap];
        }
        free(s->ib_slot);
        free(s->ib_step);
        s->ib_slot = a;
        s->ib_step = b;
        s->ibcap = n;
        s->ibhead = 0;
    }
    int k = (s->ibhead + s->iblen) % s->ibcap;
    s->ib_slot[k] = slot;
    s->ib_step[k] = step;
    s->iblen++;
    return 0;
}

/* EngineCore._head_admissible */
static int head_admissible(Core *s) {
    if (!s->wlen || s->lag_seqs >= s->max_seqs) return 0;
    Req *head = &s->reqs[waiting_peek(s)];
    i64 n = admitted(s, head->prefill_target, s->token_budget);
    if (n < 0) return 0;
    return admission_blocks(s, head, n) <= free_blocks(s) - s->lag_blocks;
}

/* EngineCore._intake */
static int intake(Core *s, double t) {
    s->lagged = t == s->last_end;
    if (take_inbox(s, s->lagged ? s->steps - 1 : s->steps)) return -1;
    if (s->lagged && !s->n_running && !head_admissible(s)) {
        s->lagged = 0;
        if (take_inbox(s, s->steps)) return -1;
    }
    if (s->lagged && !(s->lag_seqs || s->lag_blocks)) s->lagged = 0;
    return 0;
}

/* The end of EngineCore.commit: what the step's finishers held (the release lag), the last end, and
 * the step inbox entries that arrived during it (-1) get */
static void committed(Core *s, double end) {
    s->lag_seqs = s->nfin;
    s->lag_blocks = s->freed;
    s->last_end = end;
    for (int i = s->iblen - 1; i >= 0; i--) {
        int k = (s->ibhead + i) % s->ibcap;
        if (s->ib_step[k] >= 0) break;
        s->ib_step[k] = s->steps;
    }
}

/* One general step from t (EngineCore._plan_step, then commit(1)); returns its end, or NAN on a stall. */
static double general_step(Core *s, double t, int *err) {
    i64 bs = s->bs, decode_blocks, budget, need;
    int preempted;
replan:
    preempted = 0;
    for (;;) { /* _running_pass / _running_demand */
        decode_blocks = s->num_decode ? s->by_phase[pymod(-s->decode_step, bs)] : 0;
        budget = s->token_budget - s->num_decode;
        need = decode_blocks;
        for (int i = 0; i < s->nprefill; i++) {
            Req *r = &s->reqs[s->prefilling[i]];
            i64 n = r->prefill_target - r->computed;
            if (n > budget) n = budget;
            if (n > 0) {
                budget -= n;
                need += ceil_div(r->computed + n, bs) - r->blocks;
                s->chunks[i] = n;
            } else {
                s->chunks[i] = 0;
            }
        }
        if (need + (s->lagged ? s->lag_blocks : 0) <= s->kv_total - s->kv_used) break;
        if (preempt_victim(s)) { *err = RC_NOMEM; return NAN; }
        preempted = 1;
    }
    if (!preempted) { /* _waiting_pass */
        i64 freeb = free_blocks(s) - need, max_seqs = s->max_seqs;
        if (s->lagged) { /* the last step's finishers still hold their slots and blocks */
            freeb -= s->lag_blocks;
            max_seqs -= s->lag_seqs;
        }
        while (s->wlen && s->n_running < max_seqs && budget > 0) {
            int slot = waiting_peek(s);
            Req *r = &s->reqs[slot];
            i64 n = admitted(s, r->prefill_target, budget);
            if (n < 0 || admission_blocks(s, r, n) > freeb) break;
            waiting_pop(s);
            freeb -= ceil_div(r->computed + n, bs) - r->blocks;
            budget -= n;
            r->order = s->next_order++; /* _admit */
            running_append(s, slot);
            s->chunks[s->nprefill] = n;
            s->prefilling[s->nprefill++] = slot;
            if (r->scheduled_s < 0) r->scheduled_s = t;
        }
    }
    /* _step_batch */
    i64 prefill_tokens = 0, prefill_seqs = 0;
    double attn = 0.0;
    for (int i = 0; i < s->nprefill; i++) {
        i64 n = s->chunks[i];
        if (n) {
            i64 c = s->reqs[s->prefilling[i]].computed;
            prefill_tokens += n;
            prefill_seqs++;
            attn += (double)(n * c) + (double)(n * (n + 1)) / 2.0; /* chunk_attn_tokens */
        }
    }
    if (prefill_tokens == 0 && s->num_decode == 0) {
        if (s->lagged) { /* the pre-scheduled batch came out empty: vLLM schedules again */
            s->lagged = 0;
            if (take_inbox(s, s->steps)) { *err = RC_NOMEM; return NAN; }
            goto replan;
        }
        *err = RC_STALL;
        return NAN;
    }
    double end = t + step_time(&s->cost, (double)prefill_tokens, attn, (double)prefill_seqs, (double)s->num_decode,
                               (double)(s->decode_ctx + s->num_decode));
    /* commit(1) */
    s->nfin = s->freed = 0;
    s->busy_s += end - t;
    s->steps += 1;
    if (s->num_decode) {
        s->kv_used += decode_blocks;
        s->decode_step += 1;
        s->decode_ctx += s->num_decode;
        pop_finished(s, end);
    }
    /* _advance_prefills */
    int still = 0;
    for (int i = 0; i < s->nprefill; i++) {
        int slot = s->prefilling[i];
        Req *r = &s->reqs[slot];
        i64 n = s->chunks[i];
        if (n == 0) { s->prefilling[still++] = slot; continue; }
        r->computed += n;
        i64 blocks = ceil_div(r->computed, bs);
        s->kv_used += blocks - r->blocks;
        r->blocks = blocks;
        if (r->computed < r->prefill_target) { s->prefilling[still++] = slot; continue; }
        if (r->first_token_s < 0) r->first_token_s = end;
        r->generated += 1;
        if (r->generated >= r->output) {
            s->kv_used -= r->blocks;
            s->freed += r->blocks;
            r->blocks = 0;
            running_remove(s, slot);
            finish(s, slot, end);
            continue;
        }
        if (enter_decode(s, slot)) { *err = RC_NOMEM; return NAN; }
    }
    s->nprefill = still;
    committed(s, end);
    return end;
}

/* EngineCore.plan_decode_run: the ends of a pure-decode run from t, cut after the first step reaching
 * until, into s->ends from place off; returns how many (0: the engine would plan a general step; -1:
 * out of memory). Planning changes nothing the run's commit reads. */
static i64 decode_plan(Core *s, double t, double until, i64 off) {
    if (s->nprefill || !s->num_decode || s->lagged || s->iblen || !waiting_blocked(s)) return 0;
    i64 k = stable_steps(s);
    if (k <= 0) return 0;
    i64 d = s->num_decode, ctx = s->decode_ctx + s->num_decode, n = 0;
    double end = t, D = (double)d;
    while (n < k) { /* _decode_run_ends */
        if (off + n >= s->ends_cap && grow((void **)&s->ends, &s->ends_cap, off + n + 1, sizeof(double))) return -1;
        end = end + step_time(&s->cost, 0.0, 0.0, 0.0, D, (double)(ctx + n * d));
        s->ends[off + n++] = end;
        if (end >= until) break;
    }
    return n;
}

/* EngineCore.commit(n) of a pure-decode run planned from t and ending at end: _advance_decodes */
static void decode_commit(Core *s, i64 n, double t, double end) {
    s->nfin = s->freed = 0;
    s->busy_s += end - t;
    s->steps += n;
    i64 cycles = n / s->bs, rest = n % s->bs, new_blocks = cycles * s->num_decode;
    for (i64 j = 0; j < rest; j++) new_blocks += s->by_phase[pymod(-(s->decode_step + j), s->bs)];
    s->kv_used += new_blocks;
    s->decode_step += n;
    s->decode_ctx += n * s->num_decode;
    pop_finished(s, end);
    committed(s, end);
}

/* plan_decode_run + commit: the whole run from t cut at until; its last end, NAN for a general step
 * (err set when out of memory) */
static double decode_run(Core *s, double t, double until, int *err) {
    i64 n = decode_plan(s, t, until, 0);
    if (n <= 0) {
        if (n < 0) *err = RC_NOMEM;
        return NAN;
    }
    double end = s->ends[n - 1];
    decode_commit(s, n, t, end);
    return end;
}

/* ------------------------------------------------------------------ the replica with its feed */

/* When a SimPy timeout of max(0, at - now) set at now fires: now + that delay, SimPy's own float */
static inline double timeout_end(double now, double at) {
    double gap = at - now;
    return gap > 0 ? now + gap : now;
}

/* The arrival process's wake for a row arriving at `at` (it sleeps from its last wake) */
static inline double wake(const Rows *q, double at) { return timeout_end(q->now, at); }

/* The next row, released at w (the arrival process's clock moves there); its place in q */
static i64 rows_take(Rows *q, double w) {
    i64 h = q->head++;
    q->len--;
    q->released++;
    q->now = w;
    if (!q->len) q->head = 0;
    return h;
}

/* EngineCore.add's request for row h of q (SimRequest as _Release builds it); its slot, or -1 */
static int new_request(Core *s, const Rows *q, i64 h) {
    int slot = new_slot(s);
    if (slot < 0) return -1;
    Req *r = &s->reqs[slot];
    memset(r, 0, sizeof(Req));
    r->idx = q->idx[h];
    r->input = q->in[h];
    r->output = q->out[h];
    r->rid = q->rid[h];
    r->at = q->at[h];
    r->k1 = q->k1[h];
    r->k2 = q->k2[h];
    r->prefill_target = r->input; /* EngineCore.add */
    r->finish_g = -1;
    r->first_token_s = -1.0;
    r->scheduled_s = -1.0;
    r->prev = r->next = -1;
    return slot;
}

/* _ArrivalFeed.release_due: rows arriving at or before t (with first, the next row whatever its time) */
static int release_due(Core *s, double t, int first) {
    while (s->q.len && (s->q.at[s->q.head] <= t || first)) {
        first = 0;
        i64 h = rows_take(&s->q, wake(&s->q, s->q.at[s->q.head]));
        if (s->q.out[h] < 0) continue; /* refused at release (recorded by Python) */
        int slot = new_request(s, &s->q, h);
        if (slot < 0 || waiting_push(s, slot)) return -1;
    }
    return 0;
}

/* driftsim.sim.run._arrivals: each row at its wake time, before a step ending at the same instant
 * (urgent); those waking by t, into the inbox (EngineCore.add: they arrived during the step just
 * committed, or while the engine was idle) */
static int release_woken(Core *s, double t) {
    while (s->q.len) {
        double w = wake(&s->q, s->q.at[s->q.head]);
        if (w > t) break;
        i64 h = rows_take(&s->q, w);
        if (s->q.out[h] < 0) continue; /* refused at release (recorded by Python) */
        int slot = new_request(s, &s->q, h);
        if (slot < 0 || inbox_push(s, slot, s->steps)) return -1;
    }
    return 0;
}

/* ContinuousReplica._run with async scheduling, each row handed in at its time (no merged runs):
 * one plan and commit per turn; a pure-decode run ends at the first step reaching the next
 * arrival (the plan's horizon), or earlier at the step in progress when that row wakes before
 * the run's last step (the replica's interrupt). */
static int run_async(Core *s, int final) {
    int err = 0;
    if (s->q.released && release_woken(s, s->clock)) return RC_NOMEM;
    for (;;) {
        if (s->out_n + s->max_seqs > s->out_cap) return RC_FULL;
        if (!has_work(s)) {
            if (!s->q.len) return final ? RC_DONE : RC_NEED_ROWS;
            s->clock = wake(&s->q, s->q.at[s->q.head]);
            if (release_woken(s, s->clock)) return RC_NOMEM;
            continue;
        }
        if (!s->q.len && !final) return RC_NEED_ROWS;
        double until = INFINITY;
        if (s->q.len) {
            double at = s->q.at[s->q.head], w = wake(&s->q, at);
            until = w < at ? w : at;
        }
        if (intake(s, s->clock)) return RC_NOMEM;
        double last = decode_run(s, s->clock, until, &err);
        if (isnan(last) && !err) last = general_step(s, s->clock, &err);
        if (err) return err;
        s->clock = last;
        if (release_woken(s, last)) return RC_NOMEM;
    }
}

/* ContinuousReplica._run with a feed, until it needs rows (final: there are none), the finished
 * buffer may overflow, or every row has finished. */
int sc_run(Core *s, int final) {
    if (s->async_sched) return run_async(s, final);
    int err = 0;
    /* rows pushed since the last call that arrived by the last step end: the feed would have released
     * them at that end (the core stopped there for want of rows) */
    if (s->q.released && release_due(s, s->clock, 0)) return RC_NOMEM;
    for (;;) {
        if (s->out_n + s->max_seqs > s->out_cap) return RC_FULL;
        if (!has_work(s)) {
            if (!s->q.len) return final ? RC_DONE : RC_NEED_ROWS;
            s->clock = wake(&s->q, s->q.at[s->q.head]);
            if (release_due(s, s->clock, 1)) return RC_NOMEM;
            continue;
        }
        if (!s->q.len && !final) return RC_NEED_ROWS;
        double until = s->q.len ? s->q.at[s->q.head] : INFINITY;
        /* core.plan(clock, until), committed, then _plan_up_to_arrival's chain of decode runs */
        double last = decode_run(s, s->clock, until, &err);
        if (isnan(last) && !err) last = general_step(s, s->clock, &err);
        if (err) return err;
        while (last < until && has_work(s)) {
            double next = decode_run(s, last, until, &err);
            if (err) return err;
            if (isnan(next)) break;
            last = next;
        }
        s->clock = last;
        if (release_due(s, last, 0)) return RC_NOMEM;
    }
}

/* Rows in trace order: out < 0 marks a row refused at its release; rid, k1, k2: the request id and the
 * engine policy's static key. */
static int rows_push(Rows *q, i64 n, const i64 *idx, const double *at, const i64 *input, const i64 *out,
                     const i64 *rid, const double *k1, const double *k2) {
    void **cols[] = {(void **)&q->idx, (void **)&q->at, (void **)&q->in, (void **)&q->out, (void **)&q->rid,
                     (void **)&q->k1, (void **)&q->k2};
    const void *src[] = {idx, at, input, out, rid, k1, k2};
    enum { NCOLS = 7 }; /* every column holds 8-byte values */
    i64 need = q->head + q->len + n;
    if (q->head && need > q->cap) { /* compact */
        for (int c = 0; c < NCOLS; c++) memmove(*cols[c], (char *)*cols[c] + q->head * 8, (size_t)q->len * 8);
        q->head = 0;
        need = q->len + n;
    }
    if (need > q->cap) {
        i64 cap = 0;
        for (int c = 0; c < NCOLS; c++) { /* each from the same capacity to the same one */
            cap = q->cap;
            if (grow(cols[c], &cap, need, 8)) return RC_NOMEM;
        }
        q->cap = cap;
    }
    i64 o = q->head + q->len;
    for (int c = 0; c < NCOLS; c++) memcpy((char *)*cols[c] + o * 8, src[c], (size_t)n * 8);
    q->len += n;
    return 0;
}

static void rows_free(Rows *q) {
    free(q->idx); free(q->at); free(q->in); free(q->out); free(q->rid); free(q->k1); free(q->k2);
}

int sc_push(Core *s, i64 n, const i64 *idx, const double *at, const i64 *input, const i64 *out, const i64 *rid,
            const double *k1, const double *k2) {
    return rows_push(&s->q, n, idx, at, input, out, rid, k1, k2);
}

/* ------------------------------------------------------------------ several replicas behind a router */

/* What a replica's SimPy process (ContinuousReplica._run, without a feed) waits for: nothing to do
 * (the idle event), the idle event that a submission fired, a step's end (committed already), or a
 * planned pure-decode run (after a committed step when `stepped`: _step_then_run) committed at its
 * wake, which an arrival during it may cut short (_wait_run's interrupt). */
enum { R_IDLE = 0, R_WOKEN = 1, R_STEP = 2, R_RUN = 3 };

void sc_free(Core *s);
enum { ROUTE_ROUND_ROBIN = 0, ROUTE_LEAST_OUTSTANDING = 1 };

typedef struct {
    Rows q; /* the arrival process's rows (driftsim.sim.run._arrivals) */
    int n, router, rr_next, merge;
    Core **eng;
    int *state, *stepped, *interruptible;
    double *wake_at, *plan_t; /* the SimPy time the process wakes at; a plain run's start */
    i64 *outstanding, *pending, *nplan; /* requests routed and not delivered; finished, not delivered */
    i64 out_cap, out_n, max_seqs;
    double now; /* the last event's time */
} Cluster;

/* RoundRobin.pick / LeastOutstanding.pick with no cap */
static int route(Cluster *c) {
    if (c->router == ROUTE_ROUND_ROBIN) {
        int r = c->rr_next;
        c->rr_next = (r + 1) % c->n;
        return r;
    }
    int best = 0;
    for (int i = 1; i < c->n; i++)
        if (c->outstanding[i] < c->outstanding[best]) best = i;
    return best;
}

/* The arrival process releases the next row at its wake w (URGENT: before any step ending then); the
 * pass-through gateway routes it and ContinuousReplica.submit hands it to the engine, wakes an idle
 * replica, or cuts a fast-forwarded run after the step in progress. */
static int cluster_arrival(Cluster *c, double w) {
    Rows *q = &c->q;
    i64 h = rows_take(q, w);
    if (q->out[h] < 0) return 0; /* refused at release (recorded by Python) */
    int r = route(c);
    Core *s = c->eng[r];
    int slot = new_request(s, q, h);
    if (slot < 0) return -1;
    c->outstanding[r]++;
    if (s->async_sched) { /* EngineCore.add: a plan awaiting its commit gives the step at the commit */
        if (inbox_push(s, slot, c->state[r] == R_RUN ? -1 : s->steps)) return -1;
    } else if (waiting_push(s, slot)) {
        return -1;
    }
    if (c->state[r] == R_IDLE) {
        c->state[r] = R_WOKEN;
        c->wake_at[r] = w;
    } else if (c->state[r] == R_RUN && c->interruptible[r] && s->ends[c->nplan[r] - 2] >= w) {
        i64 n = 0; /* searchsorted(ends, now, "left") */
        while (s->ends[n] < w) n++;
        c->nplan[r] = n + 1;
        c->interruptible[r] = 0;
        c->wake_at[r] = timeout_end(w, s->ends[n]);
    }
    return 0;
}

/* Replica r's process wakes at wake_at[r]: commits what it waited for, delivers its completions
 * (_deliver), and plans (ContinuousReplica._run's loop, merged as _step_then_run when `merge`). */
static int cluster_wake(Cluster *c, int r) {
    Core *s = c->eng[r];
    double P = c->wake_at[r];
    int err = 0;
    if (c->state[r] == R_WOKEN) {
        s->clock = P;
    } else if (c->state[r] == R_RUN) { /* after a step: commit(n - 1) of the run; n == 1: drop_decode_run */
        i64 n = c->nplan[r], steps = c->stepped[r] ? n - 1 : n;
        if (steps) {
            decode_commit(s, steps, c->stepped[r] ? s->ends[0] : c->plan_t[r], s->ends[n - 1]);
            c->pending[r] += s->nfin;
        }
        s->clock = s->ends[n - 1];
    } /* R_STEP: committed when planned; s->clock is its end */
    c->outstanding[r] -= c->pending[r];
    c->pending[r] = 0;
    if (!has_work(s)) {
        c->state[r] = R_IDLE;
        return 0;
    }
    Rows *q = &c->q;
    double t = s->clock, until = q->len ? q->at[q->head] : INFINITY; /* next_arrival() */
    if (s->async_sched && intake(s, t)) return RC_NOMEM;
    i64 m = decode_plan(s, t, until, 0);
    if (m < 0) return RC_NOMEM;
    if (m <= 1) { /* one step: committed now (as at its end: nothing reads the engine before) */
        double end;
        if (m == 1) {
            end = s->ends[0];
            decode_commit(s, 1, t, end);
        } else {
            end = general_step(s, t, &err);
            if (err) return err;
            s->ends[0] = end;
        }
        c->pending[r] += s->nfin;
        i64 k = 0;
        if (c->merge && end < until && !s->nfin && has_work(s)) { /* _step_then_run's run */
            k = decode_plan(s, end, until, 1);
            if (k < 0) return RC_NOMEM;
        }
        double last = s->ends[k];
        c->state[r] = k ? R_RUN : R_STEP;
        c->stepped[r] = 1;
        c->nplan[r] = k + 1;
        c->interruptible[r] = k > 0;
        s->clock = end;
        c->wake_at[r] = timeout_end(P, last);
    } else { /* a fast-forwarded run: _wait_run */
        c->state[r] = R_RUN;
        c->stepped[r] = 0;
        c->nplan[r] = m;
        c->plan_t[r] = t;
        c->interruptible[r] = 1;
        c->wake_at[r] = timeout_end(P, s->ends[m - 1]);
    }
    return 0;
}

/* Every process in SimPy's order: the next arrival before any replica waking at the same time; the
 * replicas' own wakes at one instant touch nothing of each other's, so their order is free. Returns
 * when rows are needed (final: there are none), the finished buffer may overflow, or all is done. */
int sc_cluster_run(Cluster *c, int final) {
    Rows *q = &c->q;
    for (;;) {
        if (c->out_n + c->max_seqs > c->out_cap) return RC_FULL;
        if (!q->len && !final) return RC_NEED_ROWS;
        double ta = q->len ? wake(q, q->at[q->head]) : INFINITY;
        int best = -1;
        double tb = INFINITY;
        for (int i = 0; i < c->n; i++)
            if (c->state[i] != R_IDLE && (best < 0 || c->wake_at[i] < tb)) {
                best = i;
                tb = c->wake_at[i];
            }
        if (q->len && (best < 0 || ta <= tb)) {
            c->now = ta;
            if (cluster_arrival(c, ta)) return RC_NOMEM;
            continue;
        }
        if (best < 0) return RC_DONE;
        c->now = tb;
        int err = cluster_wake(c, best);
        if (err) return err;
    }
}

int sc_cluster_push(Cluster *c, i64 n, const i64 *idx, const double *at, const i64 *input, const i64 *out,
                    const i64 *rid, const double *k1, const double *k2) {
    return rows_push(&c->q, n, idx, at, input, out, rid, k1, k2);
}

void sc_cluster_free(Cluster *c) {
    if (!c) return;
    if (c->eng)
        for (int i = 0; i < c->n; i++) sc_free(c->eng[i]);
    free(c->eng); free(c->state); free(c->stepped); free(c->interruptible); free(c->wake_at); free(c->plan_t);
    free(c->outstanding); free(c->pending); free(c->nplan);
    rows_free(&c->q);
    free(c);
}

/* engine: block_size, max_num_seqs, max_num_batched_tokens, max_model_len, kv blocks (usable),
 * chunked prefill, reserve_full_prompt, async scheduling; cost: kind, coefficients, table */
Core *sc_new(const i64 *engine, int kind, const double *p, int np, int nknots, const double *knots,
             const double *values, i64 out_cap, i64 *out_idx, double *out_sched, double *out_first,
             double *out_finish, i64 *out_gen, i64 *out_pre, i64 *out_rep) {
    if (np > 12 || nknots > 64) return NULL;
    Core *s = calloc(1, sizeof(Core));
    if (!s) return NULL;
    s->bs = engine[0];
    s->max_seqs = engine[1];
    s->token_budget = engine[2];
    s->max_model_len = engine[3];
    s->kv_total = engine[4];
    s->chunked = (int)engine[5];
    s->reserve_full = (int)engine[6];
    s->async_sched = (int)engine[7];
    s->policy = (int)engine[8];
    s->last_end = -1.0;
    s->cost.kind = kind;
    memcpy(s->cost.p, p, (size_t)np * sizeof(double));
    s->cost.nknots = nknots;
    memcpy(s->cost.knots, knots, (size_t)nknots * sizeof(double));
    memcpy(s->cost.values, values, (size_t)nknots * sizeof(double));
    s->by_phase = calloc((size_t)s->bs, sizeof(i64));
    s->prefilling = malloc((size_t)(s->max_seqs + 1) * sizeof(int));
    s->chunks = malloc((size_t)(s->max_seqs + 1) * sizeof(i64));
    s->run_head = s->run_tail = -1;
    s->out_cap = out_cap;
    s->out_cnt = &s->out_n;
    s->out_idx = out_idx;
    s->out_sched = out_sched;
    s->out_first = out_first;
    s->out_finish = out_finish;
    s->out_gen = out_gen;
    s->out_pre = out_pre;
    s->out_rep = out_rep;
    s->ends_cap = 0;
    if (!s->by_phase || !s->prefilling || !s->chunks || grow((void **)&s->ends, &s->ends_cap, 64, sizeof(double))) {
        free(s->by_phase); free(s->prefilling); free(s->chunks); free(s->ends); free(s);
        return NULL;
    }
    return s;
}

void sc_free(Core *s) {
    if (!s) return;
    free(s->reqs); free(s->free_slots); free(s->waiting); free(s->prefilling); free(s->by_phase);
    free(s->heap); rows_free(&s->q); free(s->chunks);
    free(s->ib_slot); free(s->ib_step); free(s->ends);
    free(s);
}

/* n replicas of one engine and cost model behind a router (ROUTE_*); merge: synchronous scheduling,
 * whose replicas merge a step and the run after it into one wait */
Cluster *sc_cluster_new(int n, int router, int merge, const i64 *engine, int kind, const double *p, int np,
                        int nknots, const double *knots, const double *values, i64 out_cap, i64 *out_idx,
                        double *out_sched, double *out_first, double *out_finish, i64 *out_gen, i64 *out_pre,
                        i64 *out_rep) {
    Cluster *c = calloc(1, sizeof(Cluster));
    if (!c) return NULL;
    c->n = n;
    c->router = router;
    c->merge = merge;
    c->out_cap = out_cap;
    c->max_seqs = engine[1];
    c->eng = calloc((size_t)n, sizeof(Core *));
    c->state = calloc((size_t)n, sizeof(int));
    c->stepped = calloc((size_t)n, sizeof(int));
    c->interruptible = calloc((size_t)n, sizeof(int));
    c->wake_at = calloc((size_t)n, sizeof(double));
    c->plan_t = calloc((size_t)n, sizeof(double));
    c->outstanding = calloc((size_t)n, sizeof(i64));
    c->pending = calloc((size_t)n, sizeof(i64));
    c->nplan = calloc((size_t)n, sizeof(i64));
    if (!c->eng || !c->state || !c->stepped || !c->interruptible || !c->wake_at || !c->plan_t || !c->outstanding
        || !c->pending || !c->nplan) {
        sc_cluster_free(c);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        Core *s = sc_new(engine, kind, p, np, nknots, knots, values, out_cap, out_idx, out_sched, out_first,
                         out_finish, out_gen, out_pre, out_rep);
        if (!s) {
            sc_cluster_free(c);
            return NULL;
        }
        s->out_cnt = &c->out_n;
        s->index = i;
        c->eng[i] = s;
    }
    return c;
}

/* One replica's busy_s, and its steps, preemptions, running, waiting and KV blocks in use */
static void replica_counters(Core *s, double *busy, i64 *o) {
    *busy = s->busy_s;
    o[0] = s->steps;
    o[1] = s->preemptions;
    o[2] = s->n_running;
    o[3] = s->wlen;
    o[4] = s->kv_used;
}

/* counters: the last event's time, then per replica busy_s (doubles); rows released, finished waiting to
 * be drained, then per replica steps, preemptions, running, waiting, kv used (ints) */
void sc_cluster_counters(Cluster *c, double *d, i64 *n) {
    d[0] = c->now;
    n[0] = c->q.released;
    n[1] = c->out_n;
    for (int i = 0; i < c->n; i++) replica_counters(c->eng[i], d + 1 + i, n + 2 + 5 * i);
}

void sc_cluster_drained(Cluster *c) { c->out_n = 0; }

/* counters, as sc_cluster_counters' for one replica: the clock, busy_s (doubles); rows released, finished
 * waiting to be drained, steps, preemptions, running, waiting, kv used (ints) */
void sc_counters(Core *s, double *d, i64 *n) {
    d[0] = s->clock;
    n[0] = s->q.released;
    n[1] = s->out_n;
    replica_counters(s, d + 1, n + 2);
}

void sc_drained(Core *s) { s->out_n = 0; }

/* One step time, for checking the formulas against the Python cost models. */
double sc_step_time(int kind, const double *p, int np, int nknots, const double *knots, const double *values,
                    double P, double A, double Sp, double D, double C) {
    Cost c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    memcpy(c.p, p, (size_t)np * sizeof(double));
    c.nknots = nknots;
    memcpy(c.knots, knots, (size_t)nknots * sizeof(double));
    memcpy(c.values, values, (size_t)nknots * sizeof(double));
    return step_time(&c, P, A, Sp, D, C);
}

/* An importable module, so that the build installs it beside the package; the functions above
 * are reached through ctypes. */
static struct PyModuleDef stepcore_module = {PyModuleDef_HEAD_INIT, "_stepcore", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__stepcore(void) { return PyModule_Create(&stepcore_module); }
