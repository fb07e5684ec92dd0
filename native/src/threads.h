/* threads.h — a small fixed pthread pool for the forward pass (internal).
 *
 * Created once at model load; sq_pool_run() hands n_tasks task indices to the pool's threads (the
 * calling thread works too) and returns when all are done. Workers spin briefly before sleeping,
 * because decode dispatches a few hundred small jobs per token and a condition-variable wake-up
 * for each would cost more than the work. No allocation happens in sq_pool_run.
 */
#ifndef SQ_THREADS_H
#define SQ_THREADS_H

/* fn(ctx, task, thread): task in [0, n_tasks), thread in [0, n_threads) (0 = caller). */
typedef void (*sq_task_fn)(void *ctx, int task, int thread);

typedef struct sq_pool sq_pool;

/* n_threads >= 1 (1 = no worker threads, everything runs in the caller). NULL on failure (error set). */
sq_pool *sq_pool_new(int n_threads);
void sq_pool_free(sq_pool *p);
int sq_pool_size(const sq_pool *p);
/* Runs fn for every task; tasks are taken in order by whichever thread is free. Not reentrant. */
void sq_pool_run(sq_pool *p, sq_task_fn fn, void *ctx, int n_tasks);

/* Number of online CPUs (>= 1). */
int sq_cpu_count(void);

#endif
