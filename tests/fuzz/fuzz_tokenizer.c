/* libFuzzer target for the CLIP tokenizer: any bytes (as a NUL-terminated
 * prompt, invalid UTF-8 included) must encode to 77 in-vocabulary ids that
 * start with BOS, the same ids on a second call; and, when the text holds no
 * special-token literal ("<|..."), framed as BOS, tokens, EOS, padding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "models/tokenizer.h"

static tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (tokenizer_create_default(&tok)) abort();
    return 0;
}

/* The invariants tokenizer.h promises for one encoding. Literal special
 * tokens in the text may put BOS/EOS ids anywhere: then only ids are checked. */
static void check(const int32_t ids[TOKENIZER_MAX_LEN], int truncated, int specials) {
    int vocab = tokenizer_vocab_size(tok);
    int32_t eos = tokenizer_eos(tok), pad = tokenizer_pad(tok);
    if (ids[0] != tokenizer_bos(tok)) abort();
    for (int i = 0; i < TOKENIZER_MAX_LEN; i++)
        if (ids[i] < 0 || ids[i] >= vocab || !tokenizer_token(tok, ids[i])) abort();
    if (truncated && ids[TOKENIZER_MAX_LEN - 1] != eos) abort();
    if (specials) return;
    int end = 1;
    while (end < TOKENIZER_MAX_LEN && ids[end] != eos)
        end++;
    if (end == TOKENIZER_MAX_LEN) abort(); /* no EOS within 77 */
    for (int i = end + 1; i < TOKENIZER_MAX_LEN; i++)
        if (ids[i] != pad) abort();
    if (truncated && end != TOKENIZER_MAX_LEN - 1) abort(); /* truncation fills all 75 */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1); /* exact size: reads past the NUL are ASan reports */
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    int32_t a[TOKENIZER_MAX_LEN], b[TOKENIZER_MAX_LEN];
    int ta = 0, tb = 0;
    easel_err e = tokenizer_encode(tok, text, a, &ta);
    if (e == EASEL_OK) {
        check(a, ta, strstr(text, "<|") != NULL);
        if (tokenizer_encode(tok, text, b, &tb) || memcmp(a, b, sizeof a) || ta != tb) abort();
    } else if (e != EASEL_ENOMEM) {
        abort();
    }
    free(text);
    return 0;
}
