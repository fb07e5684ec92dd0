/* error.h — internal error reporting: a status code plus one line of text, per thread.
 *
 * Every failing internal function calls sq_set_error(code, fmt, ...) once, at the place that knows
 * what went wrong, and returns the code it got back; callers just propagate the code. The text is
 * what sq_last_error() (specquant.h) shows.
 */
#ifndef SQ_ERROR_H
#define SQ_ERROR_H

#include "specquant.h"

#if defined(__GNUC__)
#define SQ_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SQ_PRINTF(a, b)
#endif

/* Records the error for this thread and returns code (so `return sq_set_error(...)` works). */
sq_status sq_set_error(sq_status code, const char *fmt, ...) SQ_PRINTF(2, 3);
/* sq_last_status() (specquant.h): the status recorded with the last error on this thread. */
void sq_clear_error(void);

#endif
