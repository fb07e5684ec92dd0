/* test_chat.c — chat template detection and rendering, and the chat session policy.
 *
 * Each built-in format renders a system + user + assistant + user conversation exactly as the
 * model's own template prints it; Jinja texts are recognised by their markers; SmolLM2's default
 * system prompt is taken from its template; bad roles, unknown names and small buffers.
 * Session policy (chat_session.c) on a tiny model with a byte-level vocabulary: the template pick
 * (forced > the model's > none) and sq_chat_fit (which oldest messages go, the reserve, a message
 * too long for the context).
 */
#define TEST_REPORT_LAST_ERROR /* test_util.h: FAIL lines on stdout with sq_last_error() */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "chat.h"
#include "error.h"
#include "model.h"
#include "test_util.h"
#include "tiny_model.h"

static const char *k_roles[] = {"system", "user", "assistant", "user"};
static const char *k_texts[] = {"Be brief.", "Hi!", " Hello. ", "Capital of France?"};

static const char k_smollm2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

static void expect(const char *tmpl, int first, int n, int add, const char *want) {
    char buf[1024];
    int32_t len = sq_chat_apply(tmpl, k_roles + first, k_texts + first, n, add, buf, sizeof buf);
    CHECK(len == (int32_t)strlen(want) && strcmp(buf, want) == 0, "%s (from %d, %d msgs):\n got [%s]\nwant [%s]",
          strlen(tmpl) < 20 ? tmpl : "(jinja)", first, n, len >= 0 ? buf : sq_last_error(), want);
}

static void test_render(void) {
    expect("chatml", 0, 4, 1,
           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n Hello. "
           "<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n");
    expect("llama3", 0, 4, 1,
           "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
           "\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user"
           "<|end_header_id|>\n\nCapital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    expect("llama2", 0, 4, 1,
           "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Capital of France? [/INST]");
    expect("gemma", 0, 4, 1,
           "<start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
           "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n");
    expect("phi3", 0, 4, 1,
           "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\n Hello. <|end|>\n<|user|>\n"
           "Capital of France?<|end|>\n<|assistant|>\n");
    expect("chatml", 1, 1, 0, "<|im_start|>user\nHi!<|im_end|>\n");
    expect("chatml", 0, 0, 1, "<|im_start|>assistant\n");
    /* SmolLM2's Jinja: its default system prompt when the conversation has none */
    expect(k_smollm2, 1, 1, 1,
           "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
           "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
    expect(k_smollm2, 0, 2, 1,
           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
}

static void test_detect(void) {
    CHECK(strcmp(sq_chat_template_detect(k_smollm2), "chatml") == 0, "smollm2 -> chatml");
    CHECK(strcmp(sq_chat_template_detect("{{ '<|start_header_id|>' + role + '<|end_header_id|>' }}"), "llama3") == 0, "llama3");
    CHECK(strcmp(sq_chat_template_detect("{{ bos_token + '[INST] ' + content + ' [/INST]' }}"), "llama2") == 0, "llama2");
    CHECK(strcmp(sq_chat_template_detect("{{ '<start_of_turn>' + role }}"), "gemma") == 0, "gemma");
    CHECK(strcmp(sq_chat_template_detect("{{ '<|user|>' }}{{ '<|end|>' }}{{ '<|assistant|>' }}"), "phi3") == 0, "phi3");
    CHECK(strcmp(sq_chat_template_detect("llama-3"), "llama3") == 0 && strcmp(sq_chat_template_detect("phi-3"), "phi3") == 0,
          "aliases");
    CHECK(sq_chat_template_detect("{{ messages }}") == NULL, "unknown jinja");
    CHECK(sq_chat_template_detect("vicuna") == NULL && sq_chat_template_detect(NULL) == NULL, "unknown name / none");
    char sys[256];
    CHECK(sq_chat_default_system(k_smollm2, sys, sizeof sys) > 0 && strstr(sys, "SmolLM"), "default system");
    CHECK(sq_chat_default_system("chatml", sys, sizeof sys) == -1, "a bare name has none");
    CHECK(sq_chat_default_system("{{'<|im_start|>system\n' + message['content'] + '<|im_end|>'}}", sys, sizeof sys) == -1,
          "an expression is not a default prompt");
    CHECK(sq_chat_default_system(k_smollm2, sys, 8) == -1, "does not fit");
}

static void test_errors(void) {
    char buf[64];
    const char *roles[] = {"user", "wizard"};
    const char *texts[] = {"a", "b"};
    CHECK(sq_chat_apply("chatml", roles, texts, 2, 1, buf, sizeof buf) == INT32_MIN && strstr(sq_last_error(), "wizard"),
          "bad role: %s", sq_last_error());
    CHECK(sq_chat_apply("vicuna", roles, texts, 1, 1, buf, sizeof buf) == INT32_MIN && strstr(sq_last_error(), "chatml"),
          "unknown template: %s", sq_last_error());
    CHECK(sq_chat_apply(NULL, roles, texts, 1, 1, buf, sizeof buf) == INT32_MIN, "no template");
    const char *nul[] = {NULL};
    CHECK(sq_chat_apply("chatml", roles, nul, 1, 1, buf, sizeof buf) == INT32_MIN, "NULL content");
    CHECK(sq_chat_apply("chatml", roles, texts, -1, 1, buf, sizeof buf) == INT32_MIN, "negative count");
    /* "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n" is 51 bytes: needs 52 */
    CHECK(sq_chat_apply("chatml", roles, texts, 1, 1, buf, 51) == -52, "small buffer -> -(length + 1)");
    CHECK(sq_chat_apply("chatml", roles, texts, 1, 1, NULL, 0) == -52, "size query");
    CHECK(sq_chat_apply("chatml", roles, texts, 1, 1, buf, 52) == 51 && buf[51] == '\0', "exact fit");
}

/* ---- session policy -------------------------------------------------------------------------- */

static sq_model *vocab_model(const char *tmpl, int n_ctx, uint8_t **buf) {
    tiny_cfg c = tiny_vocab_cfg();
    c.n_ctx = n_ctx;
    c.chat_template = tmpl;
    size_t size;
    *buf = tiny_model_build(&c, &size);
    sq_model *m = sq_model_load_buffer(*buf, size, NULL);
    CHECK(m != NULL, "tiny model with a vocabulary");
    return m;
}

static void test_pick(void) {
    uint8_t *b1, *b2, *b3;
    sq_model *with = vocab_model(k_smollm2, 64, &b1), *none = vocab_model(NULL, 64, &b2),
             *odd = vocab_model("{{ messages }}", 64, &b3);
    if (with && none && odd) {
        const char *t = sq_chat_template_pick(with, NULL);
        CHECK(t && !strcmp(t, k_smollm2), "the model's own template");
        const char *forced = "llama3";
        CHECK(sq_chat_template_pick(with, forced) == forced, "a forced name wins");
        CHECK(sq_chat_template_pick(none, k_smollm2) == k_smollm2, "a forced Jinja text is kept as is");
        CHECK(sq_chat_template_pick(with, "vicuna") == NULL && sq_last_status() == SQ_ERR_ARG &&
                  strstr(sq_last_error(), "unknown chat template 'vicuna'"),
              "unknown forced template");
        CHECK(sq_chat_template_pick(none, NULL) == NULL && sq_last_status() == SQ_ERR_UNSUPPORTED &&
                  !strcmp(sq_last_error(), "the model has no chat template (tokenizer.chat_template)"),
              "no template");
        CHECK(sq_chat_template_pick(odd, NULL) == NULL && sq_last_status() == SQ_ERR_UNSUPPORTED &&
                  !strcmp(sq_last_error(), "the model has an unrecognised chat template"),
              "unrecognised template");
    }
    CHECK(sq_chat_template_pick(NULL, "chatml") == NULL && sq_last_status() == SQ_ERR_ARG, "NULL model");
    sq_model_free(with);
    sq_model_free(none);
    sq_model_free(odd);
    free(b1);
    free(b2);
    free(b3);
}

/* Tokens of roles/texts[from..n) after message 0 when keep0, in chatml with the assistant header. */
static int tokens_of(sq_model *m, const char *const *roles, const char *const *texts, int keep0, int from, int n) {
    const char *r[16], *t[16];
    int k = 0;
    for (int i = 0; i < n; i++)
        if ((i == 0 && keep0) || i >= from) r[k] = roles[i], t[k++] = texts[i];
    char buf[4096];
    int32_t len = sq_chat_apply("chatml", r, t, k, 1, buf, sizeof buf);
    return len < 0 ? -1 : sq_tokenize(m, buf, len, NULL, 0, 1, 1) * -1;
}

static void test_fit(void) {
    enum { N_CTX = 256 };
    uint8_t *buf;
    sq_model *m = vocab_model(NULL, N_CTX, &buf);
    if (!m) return;
    /* chatml: <|im_start|> and <|im_end|> are one token each, every other byte one token */
    const char *roles[] = {"system", "user", "assistant", "user", "assistant", "user"};
    const char *texts[] = {"Be brief.", "Tell me about cats, please.", "Cats are small, furry and independent.",
                           "And dogs?", "Dogs are loyal, playful companions that love to walk.", "And birds?"};
    int32_t drop = -1, n = -1;
    CHECK(sq_chat_fit(m, "chatml", roles, texts, 2, &drop, &n) == SQ_OK && drop == 0 && n == tokens_of(m, roles, texts, 1, 1, 2),
          "a short chat fits: drop %d, %d tokens", drop, n);
    /* the whole chat needs more than 3/4 of the context: the oldest turns go, never the system */
    int whole = tokens_of(m, roles, texts, 1, 1, 6);
    CHECK(whole + N_CTX / 4 > N_CTX, "the test chat is too short (%d tokens)", whole);
    CHECK(sq_chat_fit(m, "chatml", roles, texts, 6, &drop, &n) == SQ_OK, "fit");
    int kept = tokens_of(m, roles, texts, 1, 1 + drop, 6), one_less = tokens_of(m, roles, texts, 1, drop, 6);
    CHECK(drop > 0 && n == kept && kept + N_CTX / 4 <= N_CTX && one_less + N_CTX / 4 > N_CTX,
          "dropped %d (kept %d tokens, one more kept %d)", drop, kept, one_less);
    /* without a system message the first message is the oldest */
    int32_t drop2 = -1;
    CHECK(sq_chat_fit(m, "chatml", roles + 1, texts + 1, 5, &drop2, &n) == SQ_OK && drop2 >= drop - 1 && drop2 > 0,
          "no system: dropped %d", drop2);
    /* the last message alone: the reserve is 1 token, so it may use up to n_ctx - 1 */
    static char big[N_CTX + 64];
    const char *r1[] = {"system", "user", "user"}, *t1[] = {"S", "first", big};
    int base = tokens_of(m, r1, (const char *const[]){"S", "first", ""}, 1, 2, 3);
    memset(big, 'x', (size_t)(N_CTX - 1 - base));
    big[N_CTX - 1 - base] = '\0';
    CHECK(sq_chat_fit(m, "chatml", r1, t1, 3, &drop, &n) == SQ_OK && drop == 1 && n == N_CTX - 1,
          "last message with 1 token to spare: drop %d, %d tokens", drop, n);
    strcat(big, "x");
    CHECK(sq_chat_fit(m, "chatml", r1, t1, 3, &drop, &n) == SQ_ERR_CTX_FULL && drop == 0 && n == N_CTX &&
              !strcmp(sq_last_error(), "the prompt needs 256 tokens, the context holds 256"),
          "a message too long for the context: drop %d, n %d", drop, n);
    /* errors */
    const char *bad_roles[] = {"user", "wizard"};
    CHECK(sq_chat_fit(m, "chatml", bad_roles, texts, 2, &drop, &n) == SQ_ERR_ARG && strstr(sq_last_error(), "wizard"),
          "bad role");
    CHECK(sq_chat_fit(m, "vicuna", roles, texts, 2, &drop, &n) == SQ_ERR_UNSUPPORTED, "unknown template");
    CHECK(sq_chat_fit(NULL, "chatml", roles, texts, 2, &drop, &n) == SQ_ERR_ARG, "NULL model");
    CHECK(sq_chat_fit(m, "chatml", roles, texts, -1, &drop, &n) == SQ_ERR_ARG, "negative count");
    sq_model_free(m);
    free(buf);
    tiny_cfg c = tiny_default(); /* no tokenizer */
    size_t size;
    buf = tiny_model_build(&c, &size);
    m = sq_model_load_buffer(buf, size, NULL);
    CHECK(m && sq_chat_fit(m, "chatml", roles, texts, 2, &drop, &n) == SQ_ERR_ARG && strstr(sq_last_error(), "tokenizer"),
          "a model without a tokenizer");
    sq_model_free(m);
    free(buf);
}

int main(void) {
    test_render();
    test_detect();
    test_errors();
    test_pick();
    test_fit();
    return test_finish("test_chat");
}
