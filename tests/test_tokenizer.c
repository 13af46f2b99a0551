/* models/tokenizer.c against transformers' CLIPTokenizer as diffusers' SD1.5
 * pipeline calls it (tools/fixtures_tokenizer.py over tools/prompts.txt ->
 * tests/fixtures/tokenizer/clip_ids.bin), with the built-in vocabulary and
 * with a full tokenizer/ folder; plus the folder loader on a tiny
 * vocab.json/merges.txt written here, hand-checked ids, truncation, bad UTF-8. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../engine/err.h"
#include "../models/tokenizer.h"
#include "test.h"

/* REQUIRE evaluates its condition twice: calls with effects go through this. */
#define REQUIRE_OK(expr)                                                                           \
    do {                                                                                           \
        easel_err e_ = (expr);                                                                     \
        REQUIRE(e_ == EASEL_OK, "%s: %s", #expr, easel_errmsg());                                  \
    } while (0)
#define REQUIRE_TRUE(expr, what)                                                                   \
    do {                                                                                           \
        int ok_ = (expr) != 0;                                                                     \
        REQUIRE(ok_, "%s", what);                                                                  \
    } while (0)

static tokenizer *tok;

static unsigned char *load_file(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)*len + 1);
    if (buf && fread(buf, 1, (size_t)*len, f) != (size_t)*len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static void print_ids(const char *label, const int32_t *ids) {
    fprintf(stderr, "    %s:", label);
    for (int i = 0; i < TOKENIZER_MAX_LEN; i++) {
        fprintf(stderr, " %d", ids[i]);
        if (ids[i] == 49407 && (i + 1 == TOKENIZER_MAX_LEN || ids[i + 1] == 49407)) break;
    }
    fprintf(stderr, "\n");
}

/* One fixture prompt and what transformers made of it. */
typedef struct {
    char *text;
    int truncated;
    int32_t ids[TOKENIZER_MAX_LEN];
} fixture_prompt;

static fixture_prompt *prompts;
static uint32_t n_prompts;

/* Reads tests/fixtures/tokenizer/clip_ids.bin: "ETOK1\0\0\0", u32 count, then
 * per prompt u32 nbytes, the UTF-8 text, u8 truncated, 77 x u16 ids. */
static int load_prompts(void) {
    char path[1024];
    long len;
    unsigned char *buf = load_file(test_fixture("tokenizer/clip_ids.bin", path, sizeof path), &len);
    if (!buf || len < 12 || memcmp(buf, "ETOK1", 5)) {
        free(buf);
        return 0;
    }
    uint32_t count;
    memcpy(&count, buf + 8, 4);
    prompts = calloc(count, sizeof *prompts);
    long pos = 12;
    while (prompts && n_prompts < count && pos + 4 <= len) {
        uint32_t nb;
        memcpy(&nb, buf + pos, 4);
        if (pos + 5 + (long)nb + 2 * TOKENIZER_MAX_LEN > len) break;
        fixture_prompt *fp = &prompts[n_prompts];
        if (!(fp->text = malloc(nb + 1))) break;
        memcpy(fp->text, buf + pos + 4, nb);
        fp->text[nb] = 0;
        fp->truncated = buf[pos + 4 + nb];
        for (int i = 0; i < TOKENIZER_MAX_LEN; i++) {
            uint16_t v;
            memcpy(&v, buf + pos + 5 + nb + 2 * i, 2);
            fp->ids[i] = v;
        }
        pos += 5 + (long)nb + 2 * TOKENIZER_MAX_LEN;
        n_prompts++;
    }
    free(buf);
    return prompts && n_prompts == count;
}

/* Encodes every fixture prompt with t; returns how many match exactly. */
static uint32_t check_prompts(const tokenizer *t) {
    uint32_t same = 0;
    for (uint32_t k = 0; k < n_prompts; k++) {
        const fixture_prompt *fp = &prompts[k];
        int32_t got[TOKENIZER_MAX_LEN];
        int trunc = -1;
        easel_err e = tokenizer_encode(t, fp->text, got, &trunc);
        int ok = e == EASEL_OK && !memcmp(got, fp->ids, sizeof got) && trunc == fp->truncated;
        CHECK(ok, "prompt %u \"%s\": err %d, truncated %d (want %d)", k, fp->text, (int)e, trunc,
              fp->truncated);
        if (!ok && test_case_failed_ <= 10) {
            print_ids("got ", got);
            print_ids("want", fp->ids);
        }
        same += ok;
    }
    return same;
}

/* Every prompt of the fixture: the same 77 ids and truncation flag. */
static void test_matches_transformers(void) {
    REQUIRE(tok, "no default tokenizer: %s", easel_errmsg());
    REQUIRE(n_prompts >= 1000, "fixture not loaded (%u prompts)", n_prompts);
    uint32_t same = check_prompts(tok);
    printf("  tokenizer: %u/%u prompts identical to transformers\n", same, n_prompts);
}

/* Hand-checked ids (openai/clip-vit-large-patch14 vocabulary). */
static void test_known_ids(void) {
    REQUIRE(tok, "no default tokenizer");
    int32_t ids[TOKENIZER_MAX_LEN];
    int trunc = -1;
    REQUIRE_OK(tokenizer_encode(tok, "a photo of a cat", ids, &trunc));
    const int32_t want[] = {49406, 320, 1125, 539, 320, 2368, 49407, 49407};
    CHECK(!memcmp(ids, want, sizeof want), "a photo of a cat: %d %d %d %d %d %d %d", ids[0], ids[1],
          ids[2], ids[3], ids[4], ids[5], ids[6]);
    CHECK(ids[76] == 49407 && trunc == 0, "padding / truncated flag");
    CHECK(tokenizer_vocab_size(tok) == 49408, "vocab size %d", tokenizer_vocab_size(tok));
    CHECK(tokenizer_bos(tok) == 49406 && tokenizer_eos(tok) == 49407 && tokenizer_pad(tok) == 49407,
          "special ids");
    const char *s = tokenizer_token(tok, 2368);
    CHECK(s && !strcmp(s, "cat</w>"), "token 2368 = %s", s ? s : "(null)");
    CHECK(tokenizer_token(tok, 49408) == NULL && tokenizer_token(tok, -1) == NULL, "out of range");
}

static void test_truncation_and_bad_input(void) {
    REQUIRE(tok, "no default tokenizer");
    char text[400];
    int32_t ids[TOKENIZER_MAX_LEN];
    int trunc = -1;
    /* "a " x 75 is exactly 75 tokens: fits; one more truncates */
    for (int i = 0; i < 75; i++)
        memcpy(text + 2 * i, "a ", 2);
    text[150] = 0;
    REQUIRE_OK(tokenizer_encode(tok, text, ids, &trunc));
    CHECK(trunc == 0 && ids[75] == 320 && ids[76] == 49407, "75 tokens fit");
    memcpy(text + 150, "a", 2);
    REQUIRE_OK(tokenizer_encode(tok, text, ids, &trunc));
    CHECK(trunc == 1 && ids[75] == 320 && ids[76] == 49407, "76 tokens truncate, EOS kept last");
    /* invalid UTF-8 is tokenized as U+FFFD, like a Python decode with errors="replace" */
    int32_t rep[TOKENIZER_MAX_LEN];
    REQUIRE_OK(tokenizer_encode(tok, "\xef\xbf\xbd", rep, NULL));
    REQUIRE_OK(tokenizer_encode(tok, "\xff", ids, NULL));
    CHECK(!memcmp(ids, rep, sizeof ids), "0xff -> U+FFFD");
    REQUIRE_OK(tokenizer_encode(tok, "a\xef\xbf\xbd b", rep, NULL));
    REQUIRE_OK(tokenizer_encode(tok, "a\xe2\x82 b", ids, NULL));
    CHECK(!memcmp(ids, rep, sizeof ids), "a cut sequence is one U+FFFD");
    REQUIRE_OK(tokenizer_encode(tok, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", rep, NULL));
    REQUIRE_OK(tokenizer_encode(tok, "\xed\xa0\x80", ids, NULL));
    CHECK(!memcmp(ids, rep, sizeof ids), "a surrogate's 3 bytes are 3 U+FFFD");
    CHECK(tokenizer_encode(tok, NULL, ids, NULL) == EASEL_EINVAL, "NULL text");
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* A vocabulary of 256 bytes x 2 + merges over "lo" "low" and a custom pad. */
static void test_load_dir(void) {
    char dir[] = "/tmp/easel_tok_XXXXXX", path[256];
    REQUIRE_TRUE(mkdtemp(dir), "mkdtemp");
    /* vocab.json: byte characters (printable ASCII map to themselves; others are
     * not used by the test text but must exist) built from the default tokenizer */
    REQUIRE(tok, "no default tokenizer");
    size_t cap = 1 << 16, n = 0;
    char *json = malloc(cap);
    REQUIRE(json, "oom");
    n += (size_t)snprintf(json + n, cap - n, "{");
    for (int i = 0; i < 512; i++) {
        const char *s = tokenizer_token(tok, i);
        int esc = s[0] == '"' || s[0] == '\\'; /* the '"' and '\\' byte tokens */
        n += (size_t)snprintf(json + n, cap - n, "\"%s%s\": %d, ", esc ? "\\" : "", s, i);
    }
    n += (size_t)snprintf(json + n, cap - n,
                          "\"lo\": 512, \"low</w>\": 513, \"er</w>\": 514, \"<pad>\": 515, "
                          "\"<|startoftext|>\": 516, \"<|endoftext|>\": 517}");
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    int wrote = write_text(path, json);
    free(json);
    REQUIRE(wrote, "write vocab.json");
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    REQUIRE_TRUE(write_text(path, "#version: 0.2\nl o\nlo w</w>\ne r</w>\n"), "write merges");
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    REQUIRE_TRUE(write_text(path, "{\"pad_token\": {\"content\": \"<pad>\"}}"), "write map");
    tokenizer *t = NULL;
    easel_err e = tokenizer_load_dir(dir, &t);
    CHECK(e == EASEL_OK, "load: %s", easel_errmsg());
    if (t) {
        int32_t ids[TOKENIZER_MAX_LEN];
        REQUIRE_OK(tokenizer_encode(t, "Low LOWER lo", ids, NULL));
        /* low -> "low</w>"; lower -> lo w e r</w> ("low" needs </w>); lo -> l o</w> */
        const int32_t want[] = {516, 513, 512, 'w' - 33, 514, 'l' - 33, 'o' - 33 + 256, 517, 515};
        CHECK(!memcmp(ids, want, sizeof want), "ids %d %d %d %d %d %d %d %d %d", ids[0], ids[1],
              ids[2], ids[3], ids[4], ids[5], ids[6], ids[7], ids[8]);
        CHECK(tokenizer_pad(t) == 515 && ids[76] == 515, "pad from special_tokens_map.json");
        tokenizer_free(t);
    }
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    REQUIRE_TRUE(write_text(path, "#version: 0.2\nl q\n"), "write merges");
    t = NULL;
    CHECK(tokenizer_load_dir(dir, &t) == EASEL_EFORMAT && !t, "merge with unknown result");
    CHECK(tokenizer_load_dir("/nonexistent/dir", &t) == EASEL_ENOTFOUND, "missing dir");
    const char *names[] = {"vocab.json", "merges.txt", "special_tokens_map.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* The whole SD1.5 tokenizer/ folder as transformers reads it: vocab.json made
 * from the built-in vocabulary, merges.txt = "#version" + models/data's merges.
 * The folder loader must then tokenize every fixture prompt the same. */
static void test_load_dir_full(void) {
    REQUIRE(tok && n_prompts >= 1000, "no default tokenizer or fixture");
    char dir[] = "/tmp/easel_tokfull_XXXXXX", path[256];
    REQUIRE_TRUE(mkdtemp(dir), "mkdtemp");
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && i < tokenizer_vocab_size(tok); i++)
        cJSON_AddNumberToObject(o, tokenizer_token(tok, i), i);
    char *vocab = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    long mlen = 0;
    unsigned char *merges = load_file(EASEL_SOURCE_DIR "/models/data/clip_merges.txt", &mlen);
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    int ok = vocab && merges && write_text(path, vocab);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (ok) {
        merges[mlen] = 0;
        FILE *f = fopen(path, "wb");
        ok = f && fputs("#version: 0.2\n", f) >= 0 && fputs((char *)merges, f) >= 0;
        ok = f && fclose(f) == 0 && ok;
    }
    free(vocab);
    free(merges);
    tokenizer *t = NULL;
    easel_err e = ok ? tokenizer_load_dir(dir, &t) : EASEL_EIO;
    CHECK(e == EASEL_OK, "load_dir: %s", easel_errmsg());
    if (t) {
        CHECK(tokenizer_vocab_size(t) == 49408 && tokenizer_pad(t) == 49407, "vocab %d pad %d",
              tokenizer_vocab_size(t), tokenizer_pad(t));
        uint32_t same = check_prompts(t);
        printf("  tokenizer_load_dir: %u/%u prompts identical to transformers\n", same, n_prompts);
        tokenizer_free(t);
    }
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    if (tokenizer_create_default(&tok) != EASEL_OK) {
        fprintf(stderr, "tokenizer_create_default: %s\n", easel_errmsg());
        tok = NULL;
    }
    if (!load_prompts()) fprintf(stderr, "cannot read tests/fixtures/tokenizer/clip_ids.bin\n");
    RUN(test_known_ids);
    RUN(test_matches_transformers);
    RUN(test_truncation_and_bad_input);
    RUN(test_load_dir);
    RUN(test_load_dir_full);
    tokenizer_free(tok);
    for (uint32_t k = 0; k < n_prompts; k++)
        free(prompts[k].text);
    free(prompts);
    return test_summary();
}
