/* error.c — thread-local last error (code + one line of text). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Thread-local so that two threads loading two models never see each other's messages. */
static _Thread_local char g_msg[512];
static _Thread_local sq_status g_code = SQ_OK;

sq_status sq_set_error(sq_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    /* One line: a message built from file contents must not smuggle in newlines. */
    for (char *p = g_msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    g_code = code;
    return code;
}

SQ_API sq_status sq_last_status(void) { return g_code; }

void sq_clear_error(void) {
    g_msg[0] = '\0';
    g_code = SQ_OK;
}

SQ_API const char *sq_last_error(void) { return g_msg; }
