/* test_sq_chat.c — sq-chat's output contract when stdout cannot take the answer.
 *
 * Runs the sq-chat binary of this build (SQ_CHAT_EXE, set by native/CMakeLists.txt) on a tiny model
 * with a byte-level vocabulary and a chatml template (tiny_model.h), stdout pointing at:
 *   a file            exit 0, the prompt echoed, nothing on stderr but the timings
 *   /dev/full         exit 1, stderr exactly "sq-chat: error: cannot write the answer: No space left on device"
 *   a closed stdout   exit 1, stderr exactly "sq-chat: error: cannot write the answer: Bad file descriptor"
 *   a pipe nobody reads (| head that has quit): killed by SIGPIPE, or exit 141 when SIGPIPE is
 *                     ignored; nothing on stderr either way
 * (sq-chat used to exit 0 with the answer lost.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tiny_model.h"

enum { OUT_FILE, OUT_FULL, OUT_CLOSED, OUT_BROKEN_PIPE, OUT_BROKEN_PIPE_IGNORED };

static char g_err_path[64], g_out_path[64];

/* Runs sq-chat with stdout as `kind`, stderr into g_err_path; returns the wait status. */
static int run_chat(const char *model, int kind) {
    int pipefd[2] = {-1, -1};
    if (kind >= OUT_BROKEN_PIPE && pipe(pipefd) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int err = open(g_err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (err < 0 || dup2(err, 2) < 0) _exit(99);
        close(err);
        int out = -1;
        if (kind == OUT_FILE) out = open(g_out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (kind == OUT_FULL) out = open("/dev/full", O_WRONLY);
        if (kind >= OUT_BROKEN_PIPE) {
            close(pipefd[0]); /* the reader is gone before the first write */
            out = pipefd[1];
        }
        if (kind == OUT_CLOSED) close(1);
        else if (out < 0 || dup2(out, 1) < 0) _exit(99);
        if (out > 1) close(out);
        signal(SIGPIPE, kind == OUT_BROKEN_PIPE_IGNORED ? SIG_IGN : SIG_DFL);
        execl(SQ_CHAT_EXE, "sq-chat", "-m", model, "-p", "Hello there", "-n", "8", "--temp", "0", "-t", "1",
              (char *)NULL);
        _exit(98);
    }
    if (pipefd[0] >= 0) close(pipefd[0]), close(pipefd[1]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return status;
}

static char *slurp(const char *path) {
    static char buf[8192];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    return buf;
}

static void expect_error_line(const char *model, int kind, const char *what, const char *line) {
    int st = run_chat(model, kind);
    const char *err = slurp(g_err_path);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s: exit status %d (signal %d), expected 1", what,
          WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    CHECK(strcmp(err, line) == 0, "%s: stderr is\n[%s]\nexpected\n[%s]", what, err, line);
}

int main(void) {
#ifndef SQ_CHAT_EXE
    printf("test_sq_chat: this build has no sq-chat\n");
    return 77;
#else
    tiny_cfg c = tiny_vocab_cfg();
    c.chat_template = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}"
                      "{% endfor %}";
    size_t size;
    uint8_t *buf = tiny_model_build(&c, &size);
    const char *model = tiny_model_file(buf, size, "sq_chat");
    free(buf);
    snprintf(g_err_path, sizeof g_err_path, "/tmp/sq_test_chat_err_%d", (int)getpid());
    snprintf(g_out_path, sizeof g_out_path, "/tmp/sq_test_chat_out_%d", (int)getpid());

    int st = run_chat(model, OUT_FILE);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "to a file: status %d: %s", st, slurp(g_err_path));
    CHECK(strncmp(slurp(g_out_path), "Hello there\n", 12) == 0, "to a file: the prompt is not echoed: [%s]",
          slurp(g_out_path));
    CHECK(strstr(slurp(g_err_path), "error") == NULL, "to a file: stderr [%s]", slurp(g_err_path));

    expect_error_line(model, OUT_FULL, "> /dev/full", "sq-chat: error: cannot write the answer: No space left on device\n");
    expect_error_line(model, OUT_CLOSED, ">&-", "sq-chat: error: cannot write the answer: Bad file descriptor\n");

    st = run_chat(model, OUT_BROKEN_PIPE);
    CHECK((WIFSIGNALED(st) && WTERMSIG(st) == SIGPIPE) || (WIFEXITED(st) && WEXITSTATUS(st) == 141),
          "broken pipe: status %d", st);
    CHECK(slurp(g_err_path)[0] == '\0', "broken pipe: stderr [%s]", slurp(g_err_path));
    st = run_chat(model, OUT_BROKEN_PIPE_IGNORED);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 141, "broken pipe, SIGPIPE ignored: status %d", st);
    CHECK(slurp(g_err_path)[0] == '\0', "broken pipe, SIGPIPE ignored: stderr [%s]", slurp(g_err_path));

    unlink(model);
    unlink(g_err_path);
    unlink(g_out_path);
    return test_finish("test_sq_chat");
#endif
}
