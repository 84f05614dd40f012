/* The compiled core of continuous-batching replicas (see driftsim/sim/stepcore.py).
 *
 * It runs exactly what driftsim.sim.engine.EngineCore and ContinuousReplica do: an FCFS or
 * keyed-policy waiting queue (FcfsQueue, PolicyQueue), chunked prefill, recompute preemption,
 * fast-forwarded pure-decode runs, synchronous or async scheduling, vLLM's prefix cache (PrefixCachedBlocks:
 * chained block keys hashed as Python hashes them, shared blocks, an LRU free queue). A lone
 * synchronous replica takes the trace's rows in itself (driftsim.sim.run._ArrivalFeed); with async
 * scheduling, or several replicas behind a router (Cluster, below: round robin, least outstanding or
 * prefix affinity, which reads each engine's cache), or a gateway with a cap that queues arrivals
 * in its policy's order, or multi-turn sessions and closed loops (timers that send a row after an answer),
 * it mirrors the arrival process
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
    /* prefix identity (has_ids: prefix caching on and the row names ids): its ids until the first lookup
     * turns them into keys (SimRequest.block_keys, nkeys of them, then room for `shared`, nshared of
     * them), the blocks offered to the cache, the first admission's cached tokens (-1: not admitted),
     * and the last lookup (hit_memo: cache version, prefill target, hit, free hit blocks) */
    int has_ids;
    i64 *ids, nids, idt, *keys, nkeys, nshared, hashed_upto, cached;
    i64 memo_version, memo_target, memo_hit, memo_free;
} Req;

/* PrefixCachedBlocks' free queue: a cached free block (count 0, its key) or a run of anonymous free blocks */
typedef struct {
    i64 key, count;
    int prev, next;
} QNode;

typedef struct {
    i64 g, order, token;
    int slot;
} HeapEntry;

/* pending rows: trace row, arrival, prompt, output (-1: refused at release) */
typedef struct {
    i64 *idx, *in, *out, *rid;
    double *at, *k1, *k2; /* k1, k2: the engine policy's static key (PolicyQueue) */
    double *gk1, *gk2; /* the gateway policy's static key (a capped gateway's queue) */
    i64 *idt, *ioff, *ilen; /* prefix identity: tokens per id (0: none), the row's ids in `ids` */
    i64 *ids, ids_len, ids_cap;
    i64 head, len, cap;
    double now; /* the arrival process's clock (_ArrivalFeed._now) */
    i64 released;
} Rows;

typedef struct {
    Cost cost;
    i64 bs, max_seqs, token_budget, max_model_len, kv_total, kv_used;
    int chunked, reserve_full, async_sched, prefix;
    int cache_read_by_router; /* EngineCore.cache_read_by_router: the prefix-affinity router, several replicas */

    /* the prefix cache (PrefixCachedBlocks): refs, an open-addressing map from a cached block's key to
     * its reference count and its free-queue node (-1: referenced); the free queue, oldest first, and
     * the blocks in it; the version a lookup memo checks; the counters prefix_stats reports */
    i64 *m_key, *m_ref, m_mask;
    int *m_node;
    unsigned char *m_used;
    QNode *qn;
    int qhead, qtail, qfree;
    i64 queued, version, evictions, p_queries, p_query_tokens, p_hit_tokens;
    int nomem; /* a request's keys could not be allocated */
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
    i64 plan_decode_blocks; /* and the blocks its decodes take */

    double *ends; /* a planned pure-decode run's step ends (after a committed step's, in a cluster) */
    i64 ends_cap;

    /* finished requests, drained by Python (out_cnt: this replica's out_n, or its cluster's count;
     * out_rep: NULL, or the cluster's replica column) */
    i64 out_cap, out_n, *out_cnt, *out_idx, *out_gen, *out_pre, *out_rep, *out_cached;
    int index;
    double *out_sched, *out_first, *out_finish;
    /* with sessions: the requests finished and not delivered yet (trace row, finish time), in order */
    int track_finished;
    i64 *fin_idx, nfinq, capfinq;
    double *fin_t;
} Core;

/* Python's -(-a // b) for a >= 0, b > 0 */
static inline i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }
/* Python's a % b for b > 0 */
static inline i64 pymod(i64 a, i64 b) { i64 m = a % b; return m < 0 ? m + b : m; }

/* The binary min-heaps below (finish steps, an engine's waiting queue under a policy, a capped gateway's
 * queue, the senders' timers), one pair of sifts each: NAME##_up places e at h[i] and moves it towards the
 * root, NAME##_down places e at the root of a heap of n > 0 and moves it down; LESS(ctx, a, b) compares
 * elements by pointer */
#define DEFINE_HEAP(NAME, TYPE, CTX, LESS)                                                                \
    static void NAME##_up(CTX ctx, TYPE *h, i64 i, TYPE e) {                                              \
        (void)ctx;                                                                                        \
        while (i > 0) {                                                                                   \
            i64 p = (i - 1) / 2;                                                                          \
            if (!LESS(ctx, &e, &h[p])) break;                                                             \
            h[i] = h[p];                                                                                  \
            i = p;                                                                                        \
        }                                                                                                 \
        h[i] = e;                                                                                         \
    }                                                                                                     \
    static void NAME##_down(CTX ctx, TYPE *h, i64 n, TYPE e) {                                            \
        (void)ctx;                                                                                        \
        i64 i = 0;                                                                                        \
        for (;;) {                                                                                        \
            i64 k = 2 * i + 1;                                                                            \
            if (k >= n) break;                                                                            \
            if (k + 1 < n && LESS(ctx, &h[k + 1], &h[k])) k++;                                            \
            if (!LESS(ctx, &h[k], &e)) break;                                                             \
            h[i] = h[k];                                                                                  \
            i = k;                                                                                        \
        }                                                                                                 \
        h[i] = e;                                                                                         \
    }

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

#define WAIT_LESS(s, a, b) wait_less(s, *(a), *(b))
DEFINE_HEAP(wheap, int, const Core *, WAIT_LESS)

/* PolicyQueue.push: into the policy's heap with its key now (a preempted request too) */
static int wheap_push(Core *s, int slot) {
    if (waiting_grow(s)) return -1;
    Req *r = &s->reqs[slot];
    policy_key(s, r, &r->wk1, &r->wk2);
    wheap_up(s, s->waiting, s->wlen++, slot);
    return 0;
}

static void wheap_pop(Core *s) {
    int last = s->waiting[--s->wlen];
    if (s->wlen) wheap_down(s, s->waiting, s->wlen, last);
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

#define FINISH_LESS(s, a, b) heap_less(a, b)
DEFINE_HEAP(finish_heap, HeapEntry, const Core *, FINISH_LESS)

static int heap_push(Core *s, HeapEntry e) {
    if (s->nheap == s->capheap) {
        int n = s->capheap ? s->capheap * 2 : 256;
        HeapEntry *h = realloc(s->heap, (size_t)n * sizeof(HeapEntry));
        if (!h) return -1;
        s->heap = h;
        s->capheap = n;
    }
    finish_heap_up(s, s->heap, s->nheap++, e);
    return 0;
}

static void heap_pop(Core *s) {
    HeapEntry last = s->heap[--s->nheap];
    if (s->nheap) finish_heap_down(s, s->heap, s->nheap, last);
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

/* ------------------------------------------------------------------ the prefix cache */

/* Python's hash() of an int (long_hash: |v| mod 2**61 - 1, signed, -1 -> -2) and of a pair of ints
 * (tuplehash, 64-bit xxHash lanes), so the keys are driftsim.sim.prefix_cache.block_keys' own */
static inline uint64_t py_int_hash(i64 v) {
    const uint64_t modulus = ((uint64_t)1 << 61) - 1;
    uint64_t x = (v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v) % modulus;
    if (v < 0) x = (uint64_t)0 - x;
    return x == (uint64_t)-1 ? (uint64_t)-2 : x;
}

static inline i64 py_pair_hash(i64 a, i64 b) {
    const uint64_t p1 = 11400714785074694791ULL, p2 = 14029467366897019727ULL, p5 = 2870177450012600261ULL;
    uint64_t acc = p5;
    acc += py_int_hash(a) * p2;
    acc = ((acc << 31) | (acc >> 33)) * p1;
    acc += py_int_hash(b) * p2;
    acc = ((acc << 31) | (acc >> 33)) * p1;
    acc += (uint64_t)2 ^ (p5 ^ 3527539ULL);
    return acc == (uint64_t)-1 ? 1546275796 : (i64)acc;
}

/* block_keys(ids, idt, bs, tokens) into keys; returns how many */
static i64 block_keys(const i64 *ids, i64 nids, i64 idt, i64 bs, i64 tokens, i64 *keys) {
    i64 covered = nids * idt < tokens ? nids * idt : tokens, n = covered / bs;
    i64 chain = py_pair_hash(0x5EED, 0);
    if (idt == bs) { /* one id per engine block: the chain itself is the key */
        for (i64 m = 0; m < n; m++) keys[m] = chain = py_pair_hash(chain, ids[m]);
        return n;
    }
    i64 m_done = -1;
    for (i64 j = 0; j < n; j++) {
        i64 m_end = ((j + 1) * bs - 1) / idt;
        while (m_done < m_end) chain = py_pair_hash(chain, ids[++m_done]);
        keys[j] = py_pair_hash(chain, j);
    }
    return n;
}

/* the map's slot of key: where it is, or the empty slot where it would go */
static inline i64 m_find(const Core *s, i64 key) {
    uint64_t h = (uint64_t)key;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    i64 i = (i64)(h & (uint64_t)s->m_mask);
    while (s->m_used[i] && s->m_key[i] != key) i = (i + 1) & s->m_mask;
    return i;
}

/* remove the entry in slot i (linear probing's backward-shift deletion) */
static void m_delete(Core *s, i64 i) {
    for (i64 j = (i + 1) & s->m_mask; s->m_used[j]; j = (j + 1) & s->m_mask) {
        uint64_t h = (uint64_t)s->m_key[j];
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
        i64 home = (i64)(h & (uint64_t)s->m_mask);
        /* the entry in j may move to i unless its home lies cyclically in (i, j] */
        if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
            s->m_key[i] = s->m_key[j];
            s->m_ref[i] = s->m_ref[j];
            s->m_node[i] = s->m_node[j];
            i = j;
        }
    }
    s->m_used[i] = 0;
}

/* The map and the queue's nodes, made when the first request with prefix ids arrives: at most one
 * map entry and one queue node per block */
static int prefix_cache_new(Core *s) {
    i64 cap = 16, nodes = s->kv_total + 2;
    while (cap < 2 * nodes) cap *= 2;
    s->m_mask = cap - 1;
    s->m_key = malloc((size_t)cap * sizeof(i64));
    s->m_ref = malloc((size_t)cap * sizeof(i64));
    s->m_node = malloc((size_t)cap * sizeof(int));
    s->qn = malloc((size_t)nodes * sizeof(QNode));
    s->m_used = calloc((size_t)cap, 1); /* last: it says whether the others are there */
    if (!s->m_key || !s->m_ref || !s->m_node || !s->qn || !s->m_used) return -1;
    for (i64 i = 0; i < nodes; i++) s->qn[i].next = i + 1 < nodes ? (int)i + 1 : -1;
    s->qfree = 0;
    return 0;
}

static int q_append(Core *s, i64 key, i64 count) {
    int n = s->qfree;
    s->qfree = s->qn[n].next;
    s->qn[n] = (QNode){key, count, s->qtail, -1};
    if (s->qtail >= 0) s->qn[s->qtail].next = n; else s->qhead = n;
    s->qtail = n;
    return n;
}

static void q_unlink(Core *s, int n) {
    QNode *q = &s->qn[n];
    if (q->prev >= 0) s->qn[q->prev].next = q->next; else s->qhead = q->next;
    if (q->next >= 0) s->qn[q->next].prev = q->prev; else s->qtail = q->prev;
    q->next = s->qfree;
    s->qfree = n;
}

/* PrefixCachedBlocks.allocate (KvBlocks.allocate without a cache: its queue stays empty) */
static void kv_allocate(Core *s, i64 n) {
    s->kv_used += n;
    if (!n || s->qhead < 0) return;
    i64 evicted = 0, taken = 0;
    while (n && s->qhead >= 0) {
        int h = s->qhead;
        QNode *q = &s->qn[h];
        if (!q->count) { /* a cached block: its hash goes */
            m_delete(s, m_find(s, q->key));
            q_unlink(s, h);
            evicted++;
            n--;
        } else if (q->count <= n) {
            taken += q->count;
            n -= q->count;
            q_unlink(s, h);
        } else {
            q->count -= n;
            taken += n;
            n = 0;
        }
    }
    s->queued -= evicted + taken;
    s->evictions += evicted;
    s->version += evicted;
}

/* PrefixCachedBlocks.release of `keys` (last to first) and `private` anonymous blocks: blocks freed */
static i64 kv_release(Core *s, const i64 *keys, i64 nkeys, i64 private) {
    s->kv_used -= private;
    if (!nkeys) return private;
    i64 freed = 0;
    for (i64 j = nkeys - 1; j >= 0; j--) {
        i64 i = m_find(s, keys[j]);
        if (--s->m_ref[i]) continue;
        if (!freed) { /* the free blocks not queued yet go in ahead of the newly free cached ones */
            i64 tail = s->kv_total - s->kv_used - s->queued;
            if (tail) {
                q_append(s, 0, tail);
                s->queued += tail;
            }
        }
        s->m_node[i] = q_append(s, keys[j], 0);
        freed++;
    }
    s->queued += freed;
    s->kv_used -= freed;
    s->version++;
    return private + freed;
}

/* EngineCore._register_blocks: offer r's blocks that `tokens` fill (PrefixCachedBlocks.register each) */
static void register_blocks(Core *s, Req *r, i64 tokens) {
    i64 full = tokens / s->bs;
    if (full > r->nkeys) full = r->nkeys;
    for (i64 j = r->hashed_upto; j < full; j++) {
        i64 i = m_find(s, r->keys[j]);
        if (s->m_used[i]) continue; /* another block has that key: r's copy stays anonymous */
        s->m_used[i] = 1;
        s->m_key[i] = r->keys[j];
        s->m_ref[i] = 1;
        s->m_node[i] = -1;
        s->version++;
        r->keys[r->nkeys + r->nshared++] = r->keys[j];
    }
    if (full > r->hashed_upto) r->hashed_upto = full;
}

/* The tokens EngineCore._block_keys keys: the prompt's, and the answer's up to its last token when the
 * ids name more blocks than the prompt has; no more than the ids cover */
static i64 keyed_tokens(i64 nids, i64 idt, i64 input, i64 output) {
    i64 tokens = nids > ceil_div(input, idt) ? input + output - 1 : input;
    return nids * idt < tokens ? nids * idt : tokens;
}

/* PrefixCachedBlocks.lookup: the longest run of cached leading keys (at most max_blocks), and in *free
 * how many of them are free */
static i64 lookup(const Core *s, const i64 *keys, i64 nkeys, i64 max_blocks, i64 *free_hit) {
    i64 h = 0, f = 0;
    if (max_blocks > nkeys) max_blocks = nkeys;
    if (!s->m_used) max_blocks = 0; /* nothing was ever cached here */
    for (; h < max_blocks; h++) {
        i64 i = m_find(s, keys[h]);
        if (!s->m_used[i]) break;
        if (!s->m_ref[i]) f++;
    }
    *free_hit = f;
    return h;
}

/* EngineCore._cache_hit: the waiting request's cached leading blocks, and how many are free (none when
 * its keys cannot be allocated: s->nomem is set, and the run stops with RC_NOMEM) */
static void cache_hit(Core *s, Req *r, i64 *hit, i64 *hit_free) {
    *hit = *hit_free = 0;
    if (!r->has_ids) return;
    if (r->memo_version == s->version && r->memo_target == r->prefill_target) {
        *hit = r->memo_hit;
        *hit_free = r->memo_free;
        return;
    }
    if (!r->keys) {
        i64 tokens = keyed_tokens(r->nids, r->idt, r->input, r->output);
        r->keys = malloc((size_t)(2 * (tokens / s->bs) + 1) * sizeof(i64)); /* the keys, then `shared` */
        if (!r->keys) {
            s->nomem = 1;
            return;
        }
        r->nkeys = block_keys(r->ids, r->nids, r->idt, s->bs, tokens, r->keys);
        free(r->ids);
        r->ids = NULL;
    }
    *hit = r->memo_hit = lookup(s, r->keys, r->nkeys, (r->prefill_target - 1) / s->bs, &r->memo_free);
    *hit_free = r->memo_free;
    r->memo_version = s->version;
    r->memo_target = r->prefill_target;
}

/* EngineCore._take_hit: admit r onto its `hit` cached leading blocks (PrefixCachedBlocks.acquire) */
static void take_hit(Core *s, Req *r, i64 hit) {
    i64 taken = 0;
    for (i64 j = 0; j < hit; j++) {
        i64 i = m_find(s, r->keys[j]);
        if (!s->m_ref[i]++) {
            q_unlink(s, s->m_node[i]);
            s->m_node[i] = -1;
            taken++;
        }
        r->keys[r->nkeys + j] = r->keys[j];
    }
    s->queued -= taken;
    s->kv_used += taken;
    s->version++;
    r->nshared = r->hashed_upto = r->blocks = hit;
    r->computed = hit * s->bs;
    s->p_queries++;
    s->p_query_tokens += r->prefill_target;
    s->p_hit_tokens += r->computed;
    if (r->cached < 0) r->cached = r->computed;
}

/* EngineCore._release: give back r's `blocks` (KV for its first `computed` tokens), its full blocks
 * offered to the cache first; returns the blocks that became free */
static i64 release_blocks(Core *s, Req *r, i64 blocks, i64 computed) {
    if (r->nkeys) register_blocks(s, r, computed);
    r->hashed_upto = 0;
    if (!r->nshared) {
        s->kv_used -= blocks;
        return blocks;
    }
    i64 n = r->nshared;
    r->nshared = 0;
    return kv_release(s, r->keys + r->nkeys, n, blocks - n);
}

/* EngineCore._admission_blocks: after `hit` cached blocks, `hit_free` of them free */
static inline i64 admission_blocks(Core *s, Req *r, i64 n, i64 hit, i64 hit_free) {
    i64 tokens = s->reserve_full ? r->prefill_target : hit * s->bs + n;
    if (tokens > s->max_model_len) tokens = s->max_model_len;
    return ceil_div(tokens, s->bs) - hit + hit_free;
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
    s->out_cached[k] = r->cached > 0 ? r->cached : 0;
    if (s->track_finished) { /* kept for Sessions' settle at delivery; room made at release */
        s->fin_idx[s->nfinq] = r->idx;
        s->fin_t[s->nfinq++] = end;
    }
    free(r->keys);
    free(r->ids);
    r->keys = r->ids = NULL;
    s->free_slots[s->nfree++] = slot;
    s->nfin++;
}

/* EngineCore._waiting_blocked */
static int waiting_blocked(Core *s) {
    if (!s->wlen || s->n_running >= s->max_seqs) return 1;
    Req *head = &s->reqs[waiting_peek(s)];
    i64 hit, hit_free;
    cache_hit(s, head, &hit, &hit_free);
    i64 n = admitted(s, head->prefill_target - hit * s->bs, s->token_budget - s->num_decode);
    if (n < 0) return 1;
    i64 free_after = free_blocks(s) - s->by_phase[pymod(-s->decode_step, s->bs)];
    /* while the run lasts, allocations only take free blocks and may evict cached ones the head would
     * hit, so what it needs never shrinks: blocked now means blocked until the run ends */
    return admission_blocks(s, head, n, hit, hit_free) > free_after;
}

/* EngineCore._steps_allocating: pure-decode steps from now whose new blocks come to at most `blocks` */
static i64 steps_allocating(Core *s, i64 blocks) {
    i64 nd = s->num_decode, bs = s->bs, full_cycles = blocks / nd;
    i64 k = full_cycles * bs, left = blocks - full_cycles * nd;
    for (;;) {
        i64 need = s->by_phase[pymod(-(s->decode_step + k), bs)];
        if (need > left) return k;
        left -= need;
        k++;
    }
}

/* PrefixCachedBlocks.blocks_before_cached: free blocks an allocation takes before it evicts a cached
 * one (-1: it never does) */
static i64 blocks_before_cached(const Core *s) {
    i64 blocks = 0;
    for (int n = s->qhead; n >= 0; n = s->qn[n].next) {
        if (!s->qn[n].count) return blocks;
        blocks += s->qn[n].count;
    }
    return -1;
}

/* EngineCore._stable_steps */
static i64 stable_steps(Core *s) {
    while (s->heap[0].token != s->reqs[s->heap[0].slot].token || s->reqs[s->heap[0].slot].finish_g < 0)
        heap_pop(s);
    i64 to_finish = s->heap[0].g - s->decode_step;
    if (s->cache_read_by_router && s->prefix) {
        i64 before = blocks_before_cached(s);
        if (before >= 0) {
            i64 k = steps_allocating(s, before) + 1;
            if (k < to_finish) to_finish = k;
        }
    }
    i64 k = steps_allocating(s, free_blocks(s));
    return k < to_finish ? k : to_finish;
}

/* EngineCore._pop_finished */
static void pop_finished(Core *s, double end) {
    while (s->nheap && s->heap[0].g <= s->decode_step) {
        HeapEntry e = s->heap[0];
        heap_pop(s);
        Req *r = &s->reqs[e.slot];
        if (e.token != r->token || r->finish_g < 0) continue;
        i64 tokens = r->entry_computed + s->decode_step - r->entry_step;
        s->freed += release_blocks(s, r, ceil_div(tokens, s->bs), tokens);
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
        release_blocks(s, r, r->blocks, r->computed);
    } else {
        i64 tokens = r->entry_computed + s->decode_step - r->entry_step;
        release_blocks(s, r, ceil_div(tokens, s->bs), tokens);
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
    i64 hit, hit_free;
    cache_hit(s, head, &hit, &hit_free);
    i64 n = admitted(s, head->prefill_target - hit * s->bs, s->token_budget);
    if (n < 0) return 0;
    return admission_blocks(s, head, n, hit, hit_free) <= free_blocks(s) - s->lag_blocks;
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
    return s->nomem ? -1 : 0;
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

/* Plan one general step from t (EngineCore._plan_step); returns its end, or NAN on a stall (err set) */
static double general_plan(Core *s, double t, int *err) {
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
    for (int i = 0; i < s->nprefill; i++) { /* running prefills' blocks offered to the cache */
        Req *r = &s->reqs[s->prefilling[i]];
        if (s->chunks[i] && r->nkeys) register_blocks(s, r, r->computed + s->chunks[i]);
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
            i64 hit, hit_free;
            cache_hit(s, r, &hit, &hit_free);
            i64 n = admitted(s, r->prefill_target - hit * bs, budget);
            if (n < 0 || admission_blocks(s, r, n, hit, hit_free) > freeb) break;
            waiting_pop(s);
            if (r->has_ids) {
                take_hit(s, r, hit);
                freeb -= hit_free;
            }
            freeb -= ceil_div(r->computed + n, bs) - r->blocks;
            budget -= n;
            r->order = s->next_order++; /* _admit */
            running_append(s, slot);
            s->chunks[s->nprefill] = n;
            s->prefilling[s->nprefill++] = slot;
            if (r->scheduled_s < 0) r->scheduled_s = t;
            if (r->nkeys) register_blocks(s, r, r->computed + n);
        }
    }
    if (s->nomem) { *err = RC_NOMEM; return NAN; }
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
    s->plan_decode_blocks = decode_blocks;
    return t + step_time(&s->cost, (double)prefill_tokens, attn, (double)prefill_seqs, (double)s->num_decode,
                         (double)(s->decode_ctx + s->num_decode));
}

/* EngineCore.commit(1) of the general step planned from t, ending at end; RC_NOMEM or 0 */
static int general_commit(Core *s, double t, double end) {
    i64 bs = s->bs;
    s->nfin = s->freed = 0;
    s->busy_s += end - t;
    s->steps += 1;
    if (s->num_decode) {
        kv_allocate(s, s->plan_decode_blocks);
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
        kv_allocate(s, blocks - r->blocks);
        r->blocks = blocks;
        if (r->computed < r->prefill_target) { s->prefilling[still++] = slot; continue; }
        if (r->first_token_s < 0) r->first_token_s = end;
        r->generated += 1;
        if (r->generated >= r->output) {
            s->freed += release_blocks(s, r, r->blocks, r->computed);
            r->blocks = 0;
            running_remove(s, slot);
            finish(s, slot, end);
            continue;
        }
        if (enter_decode(s, slot)) return RC_NOMEM;
    }
    s->nprefill = still;
    committed(s, end);
    return 0;
}

/* One general step from t, planned and committed; returns its end, or NAN (err set) */
static double general_step(Core *s, double t, int *err) {
    double end = general_plan(s, t, err);
    if (isnan(end)) return end;
    if ((*err = general_commit(s, t, end))) return NAN;
    return end;
}

/* EngineCore.plan_decode_run: the ends of a pure-decode run from t, cut after the first step reaching
 * until, into s->ends from place off; returns how many (0: the engine would plan a general step; -1:
 * out of memory). Planning changes nothing the run's commit reads. */
static i64 decode_plan(Core *s, double t, double until, i64 off) {
    if (s->nprefill || !s->num_decode || s->lagged || s->iblen || !waiting_blocked(s)) return s->nomem ? -1 : 0;
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
    kv_allocate(s, new_blocks);
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
    if (!q->len) q->head = 0; /* (the ids buffer restarts at the next push) */
    return h;
}

/* One trace row as an engine takes it in: a view of a row of Rows, or a row waiting at a capped
 * gateway (which owns its copy of the ids) */
typedef struct {
    i64 idx, in, out, rid, idt, nids;
    double at, k1, k2, gk1, gk2;
    i64 *ids;
} Row;

static Row row_at(const Rows *q, i64 h) {
    return (Row){q->idx[h], q->in[h], q->out[h], q->rid[h], q->idt[h], q->ilen[h], q->at[h], q->k1[h], q->k2[h],
                 q->gk1[h], q->gk2[h], q->ids ? q->ids + q->ioff[h] : NULL};
}

/* EngineCore.add's request for row h of q (SimRequest as _Release builds it); its slot, or -1 */
static int new_request(Core *s, const Row *w) {
    int slot = new_slot(s);
    if (slot < 0) return -1;
    Req *r = &s->reqs[slot];
    memset(r, 0, sizeof(Req));
    r->idx = w->idx;
    r->input = w->in;
    r->output = w->out;
    r->rid = w->rid;
    r->at = w->at;
    r->k1 = w->k1;
    r->k2 = w->k2;
    r->prefill_target = r->input; /* EngineCore.add */
    r->finish_g = -1;
    r->first_token_s = -1.0;
    r->scheduled_s = -1.0;
    r->prev = r->next = -1;
    r->cached = -1;
    r->memo_version = -1;
    if (s->prefix && w->idt > 0) { /* SimRequest.prefix_ids: kept until its first lookup */
        if (!s->m_used && prefix_cache_new(s)) return -1;
        r->has_ids = 1;
        r->idt = w->idt;
        r->nids = w->nids;
        r->ids = malloc((size_t)(r->nids + 1) * sizeof(i64));
        if (!r->ids) return -1;
        memcpy(r->ids, w->ids, (size_t)r->nids * sizeof(i64));
    }
    return slot;
}

/* _ArrivalFeed.release_due: rows arriving at or before t (with first, the next row whatever its time) */
static int release_due(Core *s, double t, int first) {
    while (s->q.len && (s->q.at[s->q.head] <= t || first)) {
        first = 0;
        i64 h = rows_take(&s->q, wake(&s->q, s->q.at[s->q.head]));
        if (s->q.out[h] < 0) continue; /* refused at release (recorded by Python) */
        Row w = row_at(&s->q, h);
        int slot = new_request(s, &w);
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
        Row row = row_at(&s->q, h);
        int slot = new_request(s, &row);
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
 * engine policy's static key; idt, ioff, ilen: its prefix ids' tokens each (0: none) and where they
 * lie in ids (offsets non-decreasing, ioff[0] == 0). */
static int rows_push(Rows *q, i64 n, const i64 *idx, const double *at, const i64 *input, const i64 *out,
                     const i64 *rid, const double *k1, const double *k2, const double *gk1, const double *gk2,
                     const i64 *idt, const i64 *ioff, const i64 *ilen, i64 nids, const i64 *ids) {
    void **cols[] = {(void **)&q->idx, (void **)&q->at, (void **)&q->in, (void **)&q->out, (void **)&q->rid,
                     (void **)&q->k1, (void **)&q->k2, (void **)&q->gk1, (void **)&q->gk2, (void **)&q->idt,
                     (void **)&q->ioff, (void **)&q->ilen};
    const void *src[] = {idx, at, input, out, rid, k1, k2, gk1, gk2, idt, ioff, ilen};
    enum { NCOLS = 12 }; /* every column holds 8-byte values */
    if (!q->len) q->ids_len = 0;
    i64 base = q->ids_len, need = q->head + q->len + n;
    if (q->head && need > q->cap) { /* compact, the ids of the rows left too */
        i64 first = q->ioff[q->head];
        memmove(q->ids, q->ids + first, (size_t)(q->ids_len - first) * 8);
        q->ids_len -= first;
        base = q->ids_len;
        for (i64 i = q->head; i < q->head + q->len; i++) q->ioff[i] -= first;
        for (int c = 0; c < NCOLS; c++) memmove(*cols[c], (char *)*cols[c] + q->head * 8, (size_t)q->len * 8);
        q->head = 0;
        need = q->len + n;
    }
    if (base + nids > q->ids_cap && grow((void **)&q->ids, &q->ids_cap, base + nids, 8)) return RC_NOMEM;
    memcpy(q->ids + base, ids, (size_t)nids * 8);
    q->ids_len = base + nids;
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
    for (i64 i = o; i < o + n; i++) q->ioff[i] += base;
    q->len += n;
    return 0;
}

static void rows_free(Rows *q) {
    free(q->idx); free(q->at); free(q->in); free(q->out); free(q->rid); free(q->k1); free(q->k2);
    free(q->gk1); free(q->gk2); free(q->idt); free(q->ioff); free(q->ilen); free(q->ids);
}

int sc_push(Core *s, i64 n, const i64 *idx, const double *at, const i64 *input, const i64 *out, const i64 *rid,
            const double *k1, const double *k2, const double *gk1, const double *gk2, const i64 *idt,
            const i64 *ioff, const i64 *ilen, i64 nids, const i64 *ids) {
    return rows_push(&s->q, n, idx, at, input, out, rid, k1, k2, gk1, gk2, idt, ioff, ilen, nids, ids);
}

/* ------------------------------------------------------------------ several replicas behind a router */

/* What a replica's SimPy process (ContinuousReplica._run, without a feed) waits for: nothing to do
 * (the idle event), the idle event that a submission fired, a step's end (committed already), or a
 * planned pure-decode run (after a committed step when `stepped`: _step_then_run) committed at its
 * wake, which an arrival during it may cut short (_wait_run's interrupt), or a general step planned
 * and committed at its end (R_PLANNED: where the router reads the engines' caches meanwhile). */
enum { R_IDLE = 0, R_WOKEN = 1, R_STEP = 2, R_RUN = 3, R_PLANNED = 4, R_EXEC = 5 /* its process is running */ };

void sc_free(Core *s);
enum { ROUTE_ROUND_ROBIN = 0, ROUTE_LEAST_OUTSTANDING = 1, ROUTE_PREFIX_AFFINITY = 2 };

typedef struct {
    Rows q; /* the arrival process's rows (driftsim.sim.run._arrivals) */
    int n, router, rr_next, merge;
    Core **eng;
    int *state, *stepped, *interruptible;
    double *wake_at, *plan_t; /* the SimPy time the process wakes at; a plain run's start */
    i64 *outstanding, *pending, *nplan; /* requests routed and not delivered; finished, not delivered */
    i64 out_cap, out_n, max_seqs;
    double now; /* the last event's time */
    i64 *keys, keys_cap; /* the keys of the row being routed (PrefixAffinity) */
    /* a capped gateway (cap >= 0: Gateway.max_outstanding): its policy's queue, a heap of rows by
     * (gk1, gk2, arrival, request id), each owning its ids; and SimPy's order of the replicas' wakes
     * at one instant (the order their events were scheduled in: dispatches at one replica's wake
     * decide what the next one gets) */
    i64 cap, seq, *wake_seq;
    Row *gq;
    i64 gq_len, gq_cap;
    /* multi-turn sessions (driftsim.sim.sessions.SessionSender): every row in `tab` (by trace row), the
     * rows a previous turn holds back released by urgent timers (time, order scheduled, row) at
     * max(open, settle + think) of their session's previous turn; the send times written to `sent`;
     * arr_seq: when the arrival process's pending wake-up was scheduled. A closed loop
     * (driftsim.sim.closed_loop.ClosedLoopSender) holds every row: its timers free a slot (row
     * TIMER_SLOT) or wake it at the next row's open time (TIMER_WAKE) */
    int sessions;
    i64 loop_free, loop_next, loop_timer; /* a closed loop (ClosedLoopSender): free slots, next row, a wake pending */
    Rows tab;
    const i64 *next_turn;
    const double *think, *open;
    double *sent;
    struct Timer { double t; i64 seq, row; } *timers;
    i64 ntimers, captimers, arr_seq;
} Cluster;

static int gq_less(const Row *a, const Row *b) {
    if (a->gk1 != b->gk1) return a->gk1 < b->gk1;
    if (a->gk2 != b->gk2) return a->gk2 < b->gk2;
    if (a->at != b->at) return a->at < b->at;
    return a->rid < b->rid;
}

#define GQ_LESS(c, a, b) gq_less(a, b)
DEFINE_HEAP(gq, Row, const Cluster *, GQ_LESS)

/* Policy.push at a capped gateway: a copy of row w (its ids too) */
static int gq_push(Cluster *c, const Row *w) {
    if (c->gq_len == c->gq_cap && grow((void **)&c->gq, &c->gq_cap, c->gq_len + 1, sizeof(Row))) return -1;
    Row e = *w;
    e.ids = malloc((size_t)(w->nids + 1) * sizeof(i64));
    if (!e.ids) return -1;
    if (w->nids) memcpy(e.ids, w->ids, (size_t)w->nids * sizeof(i64));
    gq_up(c, c->gq, c->gq_len++, e);
    return 0;
}

/* Policy.pop: the head leaves the heap (its ids are the caller's to free) */
static Row gq_pop(Cluster *c) {
    Row top = c->gq[0], last = c->gq[--c->gq_len];
    if (c->gq_len) gq_down(c, c->gq, c->gq_len, last);
    return top;
}

/* replica r's process will wake at t, by an event scheduled now */
static inline void wake_at(Cluster *c, int r, double t) {
    c->wake_at[r] = t;
    c->wake_seq[r] = c->seq++;
}

static inline int below_cap(const Cluster *c, int r) { return c->cap < 0 || c->outstanding[r] < c->cap; }

/* RoundRobin.pick, LeastOutstanding.pick or PrefixAffinity.pick for row w, skipping replicas at the
 * gateway's cap: with prefix affinity, the replica whose cache holds the longest run of the row's
 * leading blocks (EngineCore.cached_prefix_blocks), ties to the fewest in flight, then the lowest
 * index; -1: every replica is at its cap; -2: out of memory */
static int route(Cluster *c, const Row *w) {
    if (c->router == ROUTE_ROUND_ROBIN) {
        for (int k = 0; k < c->n; k++) {
            int r = (c->rr_next + k) % c->n;
            if (below_cap(c, r)) {
                c->rr_next = (r + 1) % c->n;
                return r;
            }
        }
        return -1;
    }
    i64 nkeys = 0, bs = c->eng[0]->bs;
    if (c->router == ROUTE_PREFIX_AFFINITY && c->eng[0]->prefix && w->idt > 0) {
        i64 tokens = keyed_tokens(w->nids, w->idt, w->in, w->out);
        if (tokens / bs + 1 > c->keys_cap && grow((void **)&c->keys, &c->keys_cap, tokens / bs + 1, 8)) return -2;
        nkeys = block_keys(w->ids, w->nids, w->idt, bs, tokens, c->keys);
    }
    int best = -1;
    i64 best_cached = -1, unused;
    for (int i = 0; i < c->n; i++) {
        if (!below_cap(c, i)) continue;
        i64 cached = nkeys ? lookup(c->eng[i], c->keys, nkeys, (w->in - 1) / bs, &unused) : 0;
        if (cached > best_cached || (cached == best_cached && c->outstanding[i] < c->outstanding[best])) {
            best = i;
            best_cached = cached;
        }
    }
    return best;
}

enum { TIMER_SLOT = -1, TIMER_WAKE = -2 };

static int timer_less(const struct Timer *a, const struct Timer *b) {
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

#define TIMER_LESS(c, a, b) timer_less(a, b)
DEFINE_HEAP(timers, struct Timer, const Cluster *, TIMER_LESS)

/* urgent_timeout(env, max(0, at - now)), scheduled now, for `row` (a row to send, or TIMER_*) */
static int timer_push(Cluster *c, double at, i64 row) {
    if (c->ntimers == c->captimers
        && grow((void **)&c->timers, &c->captimers, c->ntimers + 1, sizeof(struct Timer))) return -1;
    struct Timer e = {timeout_end(c->now, at), c->seq++, row};
    timers_up(c, c->timers, c->ntimers++, e);
    return 0;
}

/* SessionSender.settled(i, t): the next turn of row i's session leaves at max(open, t + think);
 * ClosedLoopSender.settled(i, t): a slot frees at t + think */
static int settle(Cluster *c, i64 i, double t) {
    if (c->sessions == 2) return timer_push(c, t + c->think[i], TIMER_SLOT);
    i64 j = c->next_turn[i];
    if (j < 0) return 0;
    double at = t + c->think[j];
    if (c->open[j] >= at) at = c->open[j]; /* Python's max(open, t + think) */
    return timer_push(c, at, j);
}

static struct Timer timer_pop(Cluster *c) {
    struct Timer top = c->timers[0], last = c->timers[--c->ntimers];
    if (c->ntimers) timers_down(c, c->timers, c->ntimers, last);
    return top;
}

/* ContinuousReplica.submit at time w of row `row` to replica r: the engine takes it, an idle replica
 * wakes, a fast-forwarded run is cut after the step in progress (nothing, when r's process is the
 * one running) */
static int submit(Cluster *c, int r, const Row *row, double w) {
    Core *s = c->eng[r];
    int slot = new_request(s, row);
    if (slot < 0) return -1;
    if (s->track_finished && s->nfinq + s->nreqs >= s->capfinq) { /* room for every request it holds */
        i64 cap = s->capfinq;
        if (grow((void **)&s->fin_idx, &cap, s->nfinq + s->nreqs + 1, sizeof(i64))
            || grow((void **)&s->fin_t, &s->capfinq, s->nfinq + s->nreqs + 1, sizeof(double))) return -1;
    }
    c->outstanding[r]++;
    if (s->async_sched) { /* EngineCore.add: a plan awaiting its commit gives the step at the commit */
        if (inbox_push(s, slot, c->state[r] == R_RUN || c->state[r] == R_PLANNED ? -1 : s->steps)) return -1;
    } else if (waiting_push(s, slot)) {
        return -1;
    }
    if (c->state[r] == R_IDLE) {
        c->state[r] = R_WOKEN;
        wake_at(c, r, w);
    } else if (c->state[r] == R_RUN && c->interruptible[r] && s->ends[c->nplan[r] - 2] >= w) {
        i64 n = 0; /* searchsorted(ends, now, "left") */
        while (s->ends[n] < w) n++;
        c->nplan[r] = n + 1;
        c->interruptible[r] = 0;
        wake_at(c, r, timeout_end(w, s->ends[n]));
    }
    return 0;
}

/* Gateway._dispatch at time w: the policy's next rows to the replicas below the cap */
static int dispatch(Cluster *c, double w) {
    while (c->gq_len) {
        int r = route(c, &c->gq[0]);
        if (r == -1) return 0;
        if (r < 0) return -1;
        Row e = gq_pop(c);
        int err = submit(c, r, &e, w);
        free(e.ids);
        if (err) return -1;
    }
    return 0;
}

/* _Release at time w: the gateway routes the row at once (no cap) or queues it and dispatches (a cap);
 * a row refused at its release (recorded by Python) settles now */
static int release_row(Cluster *c, Row *row, double w) {
    if (row->out < 0) return c->sessions ? settle(c, row->idx, w) : 0;
    if (c->cap >= 0) return gq_push(c, row) || dispatch(c, w) ? -1 : 0;
    int r = route(c, row);
    return r < 0 || submit(c, r, row, w) ? -1 : 0;
}

/* The arrival process releases the next row at its wake w (URGENT: before any step ending then); it
 * schedules its next wake-up now, unless the next row is due already (it goes on at once) */
static int cluster_arrival(Cluster *c, double w) {
    Rows *q = &c->q;
    i64 h = rows_take(q, w);
    Row row = row_at(q, h);
    if (release_row(c, &row, w)) return -1;
    if (q->len && q->at[q->head] - w > 0) c->arr_seq = c->seq++;
    return 0;
}

/* The sender's send(j): row j leaves now, its send time its arrival */
static int send_row(Cluster *c, i64 j) {
    Row row = row_at(&c->tab, j);
    row.at = c->now;
    c->sent[j] = c->now;
    return release_row(c, &row, c->now);
}

/* ClosedLoopSender._advance: rows in order while slots are free and they are open, else a wake at the
 * next one's open time */
static int loop_advance(Cluster *c) {
    while (c->loop_free > 0 && c->loop_next < c->tab.len) {
        i64 i = c->loop_next;
        if (c->open[i] > c->now) {
            if (c->loop_timer) return 0;
            c->loop_timer = 1;
            return timer_push(c, c->open[i], TIMER_WAKE);
        }
        c->loop_free--;
        c->loop_next++;
        if (send_row(c, i)) return -1;
    }
    return 0;
}

/* The sender's timer fires: a session's turn leaves, or the closed loop frees a slot or wakes */
static int cluster_send(Cluster *c) {
    struct Timer e = timer_pop(c);
    if (e.row >= 0) return send_row(c, e.row);
    if (e.row == TIMER_SLOT) c->loop_free++;
    else c->loop_timer = 0;
    return loop_advance(c);
}

/* Replica r's process wakes at wake_at[r]: commits what it waited for, delivers its completions
 * (_deliver), and plans (ContinuousReplica._run's loop, merged as _step_then_run when `merge`). */
static int cluster_wake(Cluster *c, int r) {
    Core *s = c->eng[r];
    double P = c->wake_at[r];
    int err = 0, was = c->state[r];
    c->state[r] = R_EXEC;
    if (was == R_WOKEN) {
        s->clock = P;
    } else if (was == R_RUN) { /* after a step: commit(n - 1) of the run; n == 1: drop_decode_run */
        i64 n = c->nplan[r], steps = c->stepped[r] ? n - 1 : n;
        if (steps) {
            decode_commit(s, steps, c->stepped[r] ? s->ends[0] : c->plan_t[r], s->ends[n - 1]);
            c->pending[r] += s->nfin;
        }
        s->clock = s->ends[n - 1];
    } else if (was == R_PLANNED) {
        if ((err = general_commit(s, c->plan_t[r], s->ends[0]))) return err;
        c->pending[r] += s->nfin;
        s->clock = s->ends[0];
    } /* R_STEP: committed when planned; s->clock is its end */
    c->outstanding[r] -= c->pending[r];
    c->pending[r] = 0;
    for (i64 k = 0; k < s->nfinq; k++) /* _deliver: each completion settles its session's turn */
        if (settle(c, s->fin_idx[k], s->fin_t[k])) return RC_NOMEM;
    s->nfinq = 0;
    if (c->cap >= 0 && dispatch(c, P)) return RC_NOMEM; /* Gateway.finished: slots freed */
    if (!has_work(s)) {
        c->state[r] = R_IDLE;
        return 0;
    }
    Rows *q = &c->q;
    double t = s->clock, until = q->len ? q->at[q->head] : INFINITY; /* next_arrival() */
    if (s->async_sched && intake(s, t)) return RC_NOMEM;
    i64 m = decode_plan(s, t, until, 0);
    if (m < 0) return RC_NOMEM;
    c->plan_t[r] = t;
    if (m <= 1 && c->router == ROUTE_PREFIX_AFFINITY) { /* one step, committed at its end: the router reads the
                                                          * engine's cache meanwhile */
        if (m == 0 && isnan(s->ends[0] = general_plan(s, t, &err))) return err;
        c->state[r] = m ? R_RUN : R_PLANNED;
        c->stepped[r] = 0;
        c->nplan[r] = 1;
        c->interruptible[r] = 0;
        wake_at(c, r, timeout_end(P, s->ends[0]));
        return 0;
    }
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
        wake_at(c, r, timeout_end(P, last));
    } else { /* a fast-forwarded run: _wait_run */
        c->state[r] = R_RUN;
        c->stepped[r] = 0;
        c->nplan[r] = m;
        c->interruptible[r] = 1;
        wake_at(c, r, timeout_end(P, s->ends[m - 1]));
    }
    return 0;
}

/* Every process in SimPy's order: the next arrival before any replica waking at the same time, the
 * replicas waking at one instant in the order their wakes were scheduled. Returns
 * when rows are needed (final: there are none), the finished buffer may overflow, or all is done. */
int sc_cluster_run(Cluster *c, int final) {
    Rows *q = &c->q;
    for (;;) {
        if (c->out_n + c->max_seqs > c->out_cap) return RC_FULL;
        if (!q->len && !final) return RC_NEED_ROWS;
        double ta = q->len ? wake(q, q->at[q->head]) : INFINITY;
        /* the urgent event first: the arrival process's wake or a session's send, by time and order */
        int send = c->ntimers && (!q->len || c->timers[0].t < ta
                                  || (c->timers[0].t == ta && c->timers[0].seq < c->arr_seq));
        if (send) ta = c->timers[0].t;
        int best = -1;
        double tb = INFINITY;
        for (int i = 0; i < c->n; i++) /* SimPy's order: time, then the order events were scheduled in */
            if (c->state[i] != R_IDLE && (best < 0 || c->wake_at[i] < tb
                                          || (c->wake_at[i] == tb && c->wake_seq[i] < c->wake_seq[best]))) {
                best = i;
                tb = c->wake_at[i];
            }
        if ((q->len || send) && (best < 0 || ta <= tb)) {
            c->now = ta;
            if (send ? cluster_send(c) : cluster_arrival(c, ta)) return RC_NOMEM;
            continue;
        }
        if (best < 0) return RC_DONE;
        c->now = tb;
        int err = cluster_wake(c, best);
        if (err) return err;
    }
}

int sc_cluster_push(Cluster *c, i64 n, const i64 *idx, const double *at, const i64 *input, const i64 *out,
                    const i64 *rid, const double *k1, const double *k2, const double *gk1, const double *gk2,
                    const i64 *idt, const i64 *ioff, const i64 *ilen, i64 nids, const i64 *ids) {
    return rows_push(&c->q, n, idx, at, input, out, rid, k1, k2, gk1, gk2, idt, ioff, ilen, nids, ids);
}

/* A sender: every row of the trace (in trace order, the whole trace at once), the next turn of each
 * row's session (-1: none), each row's think time and open time, and where send times go (the
 * arrays stay the caller's and must outlive the run); slots > 0: a closed loop of that many
 * requests in flight instead of sessions (think: the pause after a completion). */
int sc_cluster_sessions(Cluster *c, i64 n, const i64 *idx, const double *at, const i64 *input, const i64 *out,
                        const i64 *rid, const double *k1, const double *k2, const double *gk1, const double *gk2,
                        const i64 *idt, const i64 *ioff, const i64 *ilen, i64 nids, const i64 *ids,
                        const i64 *next_turn, const double *think, const double *open, double *sent, i64 slots) {
    if (rows_push(&c->tab, n, idx, at, input, out, rid, k1, k2, gk1, gk2, idt, ioff, ilen, nids, ids)) return -1;
    c->sessions = slots > 0 ? 2 : 1;
    c->loop_free = slots;
    if (slots > 0 && n > 0) { /* ClosedLoopSender.start: a wake at the first row's open time */
        c->loop_timer = 1;
        if (timer_push(c, open[0], TIMER_WAKE)) return -1;
    }
    c->next_turn = next_turn;
    c->think = think;
    c->open = open;
    c->sent = sent;
    for (int i = 0; i < c->n; i++) c->eng[i]->track_finished = 1;
    return 0;
}

void sc_cluster_free(Cluster *c) {
    if (!c) return;
    if (c->eng)
        for (int i = 0; i < c->n; i++) sc_free(c->eng[i]);
    free(c->eng); free(c->state); free(c->stepped); free(c->interruptible); free(c->wake_at); free(c->plan_t);
    free(c->outstanding); free(c->pending); free(c->nplan); free(c->keys); free(c->wake_seq);
    for (i64 i = 0; i < c->gq_len; i++) free(c->gq[i].ids);
    free(c->gq);
    free(c->timers);
    rows_free(&c->tab);
    rows_free(&c->q);
    free(c);
}

/* engine: block_size, max_num_seqs, max_num_batched_tokens, max_model_len, kv blocks (usable),
 * chunked prefill, reserve_full_prompt, async scheduling, the waiting queue's policy, prefix caching;
 * cost: kind, coefficients, table */
Core *sc_new(const i64 *engine, int kind, const double *p, int np, int nknots, const double *knots,
             const double *values, i64 out_cap, i64 *out_idx, double *out_sched, double *out_first,
             double *out_finish, i64 *out_gen, i64 *out_pre, i64 *out_rep, i64 *out_cached) {
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
    s->prefix = (int)engine[9];
    s->last_end = -1.0;
    s->qhead = s->qtail = -1;
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
    s->out_cached = out_cached;
    s->ends_cap = 0;
    if (!s->by_phase || !s->prefilling || !s->chunks || grow((void **)&s->ends, &s->ends_cap, 64, sizeof(double))) {
        sc_free(s);
        return NULL;
    }
    return s;
}

void sc_free(Core *s) {
    if (!s) return;
    for (int i = 0; i < s->nreqs; i++) { /* a finished request's slot holds NULLs */
        free(s->reqs[i].keys);
        free(s->reqs[i].ids);
    }
    free(s->m_key); free(s->m_ref); free(s->m_node); free(s->m_used); free(s->qn);
    free(s->reqs); free(s->free_slots); free(s->waiting); free(s->prefilling); free(s->by_phase);
    free(s->heap); rows_free(&s->q); free(s->chunks); free(s->fin_idx); free(s->fin_t);
    free(s->ib_slot); free(s->ib_step); free(s->ends);
    free(s);
}

/* n replicas of one engine and cost model behind a router (ROUTE_*) and a gateway that holds arrivals
 * beyond `cap` requests in flight per replica (< 0: none); merge: replicas merge a step and the run
 * after it into one wait (ContinuousReplica.merge_runs) */
Cluster *sc_cluster_new(int n, int router, int merge, i64 cap, const i64 *engine, int kind, const double *p, int np,
                        int nknots, const double *knots, const double *values, i64 out_cap, i64 *out_idx,
                        double *out_sched, double *out_first, double *out_finish, i64 *out_gen, i64 *out_pre,
                        i64 *out_rep, i64 *out_cached) {
    Cluster *c = calloc(1, sizeof(Cluster));
    if (!c) return NULL;
    c->n = n;
    c->router = router;
    c->merge = merge;
    c->cap = cap;
    c->arr_seq = c->seq++; /* the arrival process starts first */
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
    c->wake_seq = calloc((size_t)n, sizeof(i64));
    if (!c->eng || !c->state || !c->stepped || !c->interruptible || !c->wake_at || !c->plan_t || !c->outstanding
        || !c->pending || !c->nplan || !c->wake_seq) {
        sc_cluster_free(c);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        Core *s = sc_new(engine, kind, p, np, nknots, knots, values, out_cap, out_idx, out_sched, out_first,
                         out_finish, out_gen, out_pre, out_rep, out_cached);
        if (!s) {
            sc_cluster_free(c);
            return NULL;
        }
        s->out_cnt = &c->out_n;
        s->index = i;
        s->cache_read_by_router = router == ROUTE_PREFIX_AFFINITY && n > 1;
        c->eng[i] = s;
    }
    return c;
}

/* One replica's busy_s, and its steps, preemptions, running, waiting and KV blocks in use, then its
 * prefix-cache lookups, their tokens to compute, the tokens found cached, and the cached blocks evicted */
enum { NCOUNTERS = 9 };
static void replica_counters(Core *s, double *busy, i64 *o) {
    *busy = s->busy_s;
    o[0] = s->steps;
    o[1] = s->preemptions;
    o[2] = s->n_running;
    o[3] = s->wlen;
    o[4] = s->kv_used;
    o[5] = s->p_queries;
    o[6] = s->p_query_tokens;
    o[7] = s->p_hit_tokens;
    o[8] = s->evictions;
}

/* counters: the last event's time, then per replica busy_s (doubles); rows released, finished waiting to
 * be drained, then per replica its NCOUNTERS ints (replica_counters) */
void sc_cluster_counters(Cluster *c, double *d, i64 *n) {
    d[0] = c->now;
    n[0] = c->q.released;
    n[1] = c->out_n;
    for (int i = 0; i < c->n; i++) replica_counters(c->eng[i], d + 1 + i, n + 2 + NCOUNTERS * i);
}

void sc_cluster_drained(Cluster *c) { c->out_n = 0; }

/* counters, as sc_cluster_counters' for one replica: the clock, busy_s (doubles); rows released, finished
 * waiting to be drained, then the replica's NCOUNTERS ints (replica_counters) */
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

/* The keys of block_keys, for checking them against driftsim.sim.prefix_cache.block_keys. */
i64 sc_block_keys(const i64 *ids, i64 nids, i64 idt, i64 bs, i64 tokens, i64 *keys) {
    return block_keys(ids, nids, idt, bs, tokens, keys);
}

/* An importable module, so that the build installs it beside the package; the functions above
 * are reached through ctypes. */
static struct PyModuleDef stepcore_module = {PyModuleDef_HEAD_INIT, "_stepcore", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__stepcore(void) { return PyModule_Create(&stepcore_module); }
