/* test_threads.c — the pool runs every task of every job exactly once before sq_pool_run returns,
 * including back-to-back jobs of different sizes (where a worker that wakes late must not run a
 * task of the next job under the old job's bookkeeping). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "threads.h"

typedef struct {
    atomic_int *hits;
    int job;
} ctx_t;

static void task(void *c, int t, int thread) {
    ctx_t *x = c;
    if ((t * 7 + x->job) % 11 == 0)
        for (volatile int i = 0; i < 500; i++) {
        }
    atomic_fetch_add(&x->hits[t], 1);
}

int main(void) {
    int fail = 0;
    enum { MAXT = 64 };
    atomic_int hits[MAXT];
    for (int nt = 2; nt <= 4; nt++) {
        sq_pool *p = sq_pool_new(nt);
        if (!p) return 1;
        for (int job = 1; job <= 30000 && fail < 5; job++) {
            int n = 1 + (job * 13) % MAXT; /* sizes jump up and down */
            for (int i = 0; i < MAXT; i++) atomic_store(&hits[i], 0);
            ctx_t c = {hits, job};
            sq_pool_run(p, task, &c, n);
            for (int i = 0; i < MAXT; i++) {
                int h = atomic_load(&hits[i]), want = i < n ? 1 : 0;
                if (h != want && fail++ < 5) printf("FAIL threads %d job %d: task %d ran %d times (n %d)\n", nt, job, i, h, n);
            }
        }
        sq_pool_free(p);
    }
    if (sq_pool_new(0) != NULL) fail++, printf("FAIL pool of 0 threads\n");
    printf(fail ? "test_threads: failures\n" : "test_threads: all passed\n");
    return fail != 0;
}
