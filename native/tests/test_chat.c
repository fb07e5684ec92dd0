/* test_chat.c — chat template detection and rendering.
 *
 * Each built-in format renders a system + user + assistant + user conversation exactly as the
 * model's own template prints it; Jinja texts are recognised by their markers; SmolLM2's default
 * system prompt is taken from its template; bad roles, unknown names and small buffers.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "chat.h"
#include "error.h"
#include "test_util.h"

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

int main(void) {
    test_render();
    test_detect();
    test_errors();
    return test_finish("test_chat");
}
