/* threads.c — fixed pthread pool: generation counter, atomic task counter, spin-then-sleep. */
#define _GNU_SOURCE
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* Spin iterations before a worker sleeps: long enough to bridge the gap between two jobs of one
 * token (tens of microseconds), short enough not to burn a shared core between tokens. */
#define SPIN_ITERS 20000

typedef struct {
    sq_pool *pool;
    int id;
    pthread_t th;
} worker;

/* The job word packs (job id:24 | task count:20 | next task:20). A worker claims a task with one
 * CAS on it, which fails if the job changed in between; since the count travels in the same word,
 * a worker that wakes late can never run a task of the wrong job or a task twice (an earlier
 * version kept the count in a separate field and did, when the caller had already written the
 * next job's count). The caller waits for finished tasks, not for workers: on an oversubscribed
 * machine, when a worker is not scheduled, the caller simply runs every task itself. */
#define IDX_BITS 20
#define MAX_TASKS ((1u << IDX_BITS) - 1)
#define W_JOB(w) ((uint32_t)((w) >> (2 * IDX_BITS)))
#define W_N(w) ((uint32_t)((w) >> IDX_BITS) & MAX_TASKS)
#define W_IDX(w) ((uint32_t)(w)&MAX_TASKS)

struct sq_pool {
    int n_threads;
    worker *workers;
    sq_task_fn fn;           /* current job, written before the job word is published */
    void *ctx;
    _Atomic uint64_t word;
    atomic_int done;         /* tasks finished in the current job */
    atomic_uint generation;  /* bumped for every job; idle workers wait for a change */
    atomic_int quit;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int sleepers;
};

/* Claims and runs tasks of job `job` until none is left. */
static void run_tasks(sq_pool *p, uint32_t job, int thread) {
    uint64_t w = atomic_load_explicit(&p->word, memory_order_acquire);
    for (;;) {
        if (W_JOB(w) != job || W_IDX(w) >= W_N(w)) return;
        if (!atomic_compare_exchange_weak_explicit(&p->word, &w, w + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        /* The job cannot finish before this task has: fn/ctx stay this job's. */
        p->fn(p->ctx, (int)W_IDX(w), thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        w = atomic_load_explicit(&p->word, memory_order_acquire);
    }
}

/* Waits until the generation differs from seen; spins first, then sleeps on the condvar. */
static unsigned wait_job(sq_pool *p, unsigned seen) {
    for (int i = 0; i < SPIN_ITERS; i++) {
        unsigned g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g != seen || atomic_load(&p->quit)) return g;
        cpu_relax();
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    unsigned g;
    while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->cv, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    sq_pool *p = w->pool;
    /* 0 = the generation at creation, not the current one: a job may already have been posted
     * before this thread got scheduled, and it may still take part in it. */
    unsigned seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load(&p->quit)) break;
        run_tasks(p, W_JOB(atomic_load_explicit(&p->word, memory_order_acquire)), w->id);
    }
    return NULL;
}

sq_pool *sq_pool_new(int n_threads) {
    if (n_threads < 1 || n_threads > 1024) {
        sq_set_error(SQ_ERR_ARG, "thread count %d is out of range (1..1024)", n_threads);
        return NULL;
    }
    sq_pool *p = calloc(1, sizeof *p);
    if (!p) goto oom;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) goto oom;
    for (int i = 1; i < n_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].id = i;
        if (pthread_create(&p->workers[i].th, NULL, worker_main, &p->workers[i]) != 0) {
            p->n_threads = i; /* free joins the ones that started */
            sq_pool_free(p);
            sq_set_error(SQ_ERR_NOMEM, "cannot start thread %d of %d", i, n_threads);
            return NULL;
        }
    }
    return p;
oom:
    if (p) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p);
    }
    sq_set_error(SQ_ERR_NOMEM, "out of memory creating the thread pool");
    return NULL;
}

void sq_pool_free(sq_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i].th, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->workers);
    free(p);
}

int sq_pool_size(const sq_pool *p) { return p ? p->n_threads : 1; }

void sq_pool_run(sq_pool *p, sq_task_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1 || (unsigned)n_tasks > MAX_TASKS) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t job = (W_JOB(atomic_load_explicit(&p->word, memory_order_relaxed)) + 1) & 0xFFFFFF;
    atomic_store_explicit(&p->word, (uint64_t)job << (2 * IDX_BITS) | (uint64_t)n_tasks << IDX_BITS,
                          memory_order_release);
    atomic_fetch_add(&p->generation, 1); /* seq_cst: pairs with the sleepers check */
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_tasks(p, job, 0);
    /* Only tasks that a worker claimed and has not finished are waited for. */
    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks; i++) {
        if (i < SPIN_ITERS) cpu_relax();
        else sched_yield();
    }
}

int sq_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 ? (int)n : 1;
}
