/* CLIP byte-level BPE tokenizer (see tokenizer.h for what it reproduces).
 * Vocabulary: strings in one pool, a string->id hash used while loading, and
 * a (left id, right id) -> (rank, merged id) hash used by BPE. Text goes
 * through: UTF-8 decode -> split on special tokens -> NFC -> whitespace
 * collapse -> lower-case -> CLIP's pre-tokenizer -> bytes -> BPE. */
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/fsutil.h"
#include "data/unicode_tables.h"

/* The merges of OpenAI's bpe_simple_vocab_16e6.txt (lines 2..48895), linked
 * into the binary so `easel` needs no data files. */
__asm__(".section .rodata\n"
        ".globl easel_clip_merges\n"
        ".hidden easel_clip_merges\n"
        ".globl easel_clip_merges_end\n"
        ".hidden easel_clip_merges_end\n"
        "easel_clip_merges:\n"
        ".incbin \"" EASEL_SOURCE_DIR "/models/data/clip_merges.txt\"\n"
        "easel_clip_merges_end:\n"
        ".byte 0\n"
        ".previous\n");
extern const char easel_clip_merges[], easel_clip_merges_end[];

#define CLIP_N_MERGES 48894
#define UNI_MAX_DECOMP 4

struct tokenizer {
    int n_vocab;
    char *pool;     /* NUL-terminated token strings */
    uint32_t *offs; /* [n_vocab] offset into pool, UINT32_MAX for a hole */
    size_t pool_len, pool_cap;
    uint32_t *str_tab; /* string hash: id + 1 (0 = empty), load time only */
    size_t str_cap;
    uint64_t *pair_key; /* pair hash: (left << 32 | right) + 1 (0 = empty) */
    int32_t *pair_rank, *pair_id;
    size_t pair_cap;
    int32_t byte_id[256], byte_eow_id[256];
    int32_t bos, eos, pad;
};

/* ---------- vocabulary ---------- */

static uint64_t hash_str(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_pair(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

/* The id of the n-byte string s, or -1. */
static int32_t vocab_find(const tokenizer *t, const char *s, size_t n) {
    size_t mask = t->str_cap - 1;
    for (size_t i = hash_str(s, n) & mask;; i = (i + 1) & mask) {
        uint32_t v = t->str_tab[i];
        if (!v) return -1;
        const char *p = t->pool + t->offs[v - 1];
        if (strlen(p) == n && !memcmp(p, s, n)) return (int32_t)(v - 1);
    }
}

/* Stores s (n bytes) as token id; the string table must have room. */
static easel_err vocab_set(tokenizer *t, int32_t id, const char *s, size_t n) {
    if (t->pool_len + n + 1 > t->pool_cap) {
        size_t cap = (t->pool_cap ? t->pool_cap * 2 : 1 << 20) + n + 1;
        char *p = realloc(t->pool, cap);
        if (!p) return easel_seterr(EASEL_ENOMEM, "tokenizer: out of memory");
        t->pool = p;
        t->pool_cap = cap;
    }
    if (t->offs[id] != UINT32_MAX || vocab_find(t, s, n) >= 0)
        return easel_seterr(EASEL_EFORMAT, "tokenizer: duplicate token %d", (int)id);
    t->offs[id] = (uint32_t)t->pool_len;
    memcpy(t->pool + t->pool_len, s, n);
    t->pool[t->pool_len + n] = 0;
    t->pool_len += n + 1;
    size_t mask = t->str_cap - 1, i = hash_str(s, n) & mask;
    while (t->str_tab[i])
        i = (i + 1) & mask;
    t->str_tab[i] = (uint32_t)id + 1;
    return EASEL_OK;
}

static size_t pow2_above(size_t n) {
    size_t c = 1024;
    while (c < n * 2)
        c *= 2;
    return c;
}

static tokenizer *tok_alloc(int n_vocab, int n_merges) {
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n_vocab = n_vocab;
    t->offs = malloc(sizeof(uint32_t) * (size_t)n_vocab);
    t->str_cap = pow2_above((size_t)n_vocab);
    t->str_tab = calloc(t->str_cap, sizeof(uint32_t));
    t->pair_cap = pow2_above((size_t)n_merges);
    t->pair_key = calloc(t->pair_cap, sizeof(uint64_t));
    t->pair_rank = malloc(sizeof(int32_t) * t->pair_cap);
    t->pair_id = malloc(sizeof(int32_t) * t->pair_cap);
    if (!t->offs || !t->str_tab || !t->pair_key || !t->pair_rank || !t->pair_id) {
        tokenizer_free(t);
        return NULL;
    }
    memset(t->offs, 0xff, sizeof(uint32_t) * (size_t)n_vocab);
    return t;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->offs);
    free(t->str_tab);
    free(t->pair_key);
    free(t->pair_rank);
    free(t->pair_id);
    free(t);
}

/* (rank, merged id) of the pair, or rank -1. */
static int32_t pair_find(const tokenizer *t, int32_t a, int32_t b, int32_t *merged) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t mask = t->pair_cap - 1;
    for (size_t i = hash_pair(key) & mask;; i = (i + 1) & mask) {
        if (!t->pair_key[i]) return -1;
        if (t->pair_key[i] == key) {
            *merged = t->pair_id[i];
            return t->pair_rank[i];
        }
    }
}

/* Adds merge number rank: "left right" (a line of merges.txt, n bytes). The
 * first rule for a pair wins, as in tokenizers. */
static easel_err merge_add(tokenizer *t, const char *line, size_t n, int32_t rank) {
    const char *sp = memchr(line, ' ', n);
    if (!sp || sp == line || sp == line + n - 1)
        return easel_seterr(EASEL_EFORMAT, "tokenizer: bad merge %d", (int)rank);
    size_t la = (size_t)(sp - line), lb = n - la - 1;
    char buf[512];
    if (la + lb >= sizeof buf) return easel_seterr(EASEL_EFORMAT, "tokenizer: merge too long");
    memcpy(buf, line, la);
    memcpy(buf + la, sp + 1, lb);
    int32_t a = vocab_find(t, line, la), b = vocab_find(t, sp + 1, lb);
    int32_t m = vocab_find(t, buf, la + lb);
    if (a < 0 || b < 0 || m < 0)
        return easel_seterr(EASEL_EFORMAT, "tokenizer: merge %d (%.*s) uses unknown tokens",
                            (int)rank, (int)n, line);
    int32_t old;
    if (pair_find(t, a, b, &old) >= 0) return EASEL_OK;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t mask = t->pair_cap - 1, i = hash_pair(key) & mask;
    while (t->pair_key[i])
        i = (i + 1) & mask;
    t->pair_key[i] = key;
    t->pair_rank[i] = rank;
    t->pair_id[i] = m;
    return EASEL_OK;
}

static int printable_byte(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to
 * U+0100.. in byte order. Writes the UTF-8 of byte b's character into out. */
static size_t byte_char(int b, char *out) {
    int cp = b;
    if (!printable_byte(b)) {
        int k = 0;
        for (int x = 0; x < b; x++)
            k += !printable_byte(x);
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* Fills byte_id/byte_eow_id and bos/eos from the vocabulary. */
static easel_err resolve_bytes(tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char s[8];
        size_t n = byte_char(b, s);
        memcpy(s + n, "</w>", 4);
        t->byte_id[b] = vocab_find(t, s, n);
        t->byte_eow_id[b] = vocab_find(t, s, n + 4);
        if (t->byte_id[b] < 0 || t->byte_eow_id[b] < 0)
            return easel_seterr(EASEL_EFORMAT, "tokenizer: vocabulary lacks byte 0x%02x", b);
    }
    t->bos = vocab_find(t, "<|startoftext|>", 15);
    t->eos = vocab_find(t, "<|endoftext|>", 13);
    if (t->bos < 0 || t->eos < 0)
        return easel_seterr(EASEL_EFORMAT,
                            "tokenizer: vocabulary lacks <|startoftext|>/<|endoftext|>");
    t->pad = t->eos;
    return EASEL_OK;
}

/* CLIP's layout: merge number rank ("left right", n bytes) defines token
 * 512 + rank, the two halves joined. */
static easel_err merge_define(tokenizer *t, const char *line, size_t n, int32_t rank) {
    const char *sp = memchr(line, ' ', n);
    char buf[512];
    size_t la = sp ? (size_t)(sp - line) : 0, lb = sp ? n - la - 1 : 0;
    if (!sp || la + lb >= sizeof buf || 512 + rank >= t->n_vocab)
        return easel_seterr(EASEL_EFORMAT, "tokenizer: bad merge %d", (int)rank);
    memcpy(buf, line, la);
    memcpy(buf + la, sp + 1, lb);
    return vocab_set(t, 512 + rank, buf, la + lb);
}

/* Adds the merges in text (one "a b" per line; a "#version" line skipped). If
 * define_vocab, each merge also defines the next token id (CLIP's layout). */
static easel_err add_merges(tokenizer *t, const char *text, size_t len, int define_vocab,
                            int *n_merges) {
    int32_t rank = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n && p[n - 1] == '\r') n--;
        if (n && !(rank == 0 && p == text && n >= 8 && !memcmp(p, "#version", 8))) {
            if (define_vocab) {
                easel_err e = merge_define(t, p, n, rank);
                if (e) return e;
            }
            easel_err e = merge_add(t, p, n, rank);
            if (e) return e;
            rank++;
        }
        if (!nl) break;
        p = nl + 1;
    }
    *n_merges = rank;
    return EASEL_OK;
}

easel_err tokenizer_create_default(tokenizer **out) {
    const int n_vocab = 512 + CLIP_N_MERGES + 2;
    tokenizer *t = tok_alloc(n_vocab, CLIP_N_MERGES);
    if (!t) return easel_seterr(EASEL_ENOMEM, "tokenizer: out of memory");
    easel_err e = EASEL_OK;
    /* ids 0..255 follow bytes_to_unicode(): the printable bytes, then the rest */
    int order[256], k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++)
            if (printable_byte(b) == (pass == 0)) order[k++] = b;
    for (int i = 0; i < 256 && !e; i++) {
        char s[8];
        size_t n = byte_char(order[i], s);
        e = vocab_set(t, i, s, n);
        memcpy(s + n, "</w>", 4);
        if (!e) e = vocab_set(t, 256 + i, s, n + 4);
    }
    int n_merges = 0;
    size_t len = (size_t)(easel_clip_merges_end - easel_clip_merges);
    if (!e) e = add_merges(t, easel_clip_merges, len, 1, &n_merges);
    if (!e && n_merges != CLIP_N_MERGES)
        e = easel_seterr(EASEL_EINTERNAL, "tokenizer: embedded merges: %d, want %d", n_merges,
                         CLIP_N_MERGES);
    if (!e) e = vocab_set(t, n_vocab - 2, "<|startoftext|>", 15);
    if (!e) e = vocab_set(t, n_vocab - 1, "<|endoftext|>", 13);
    if (!e) e = resolve_bytes(t);
    if (e) {
        tokenizer_free(t);
        return e == EASEL_ENOMEM ? e : easel_wraperr(EASEL_EINTERNAL, "embedded vocabulary");
    }
    *out = t;
    return EASEL_OK;
}

/* ---------- loading a tokenizer folder ---------- */

static char *read_file(const char *path, size_t *len) {
    uint8_t *buf = NULL;
    return fs_read_file(path, SIZE_MAX, &buf, len) ? NULL : (char *)buf;
}

static easel_err load_vocab_json(const char *path, tokenizer **out, int n_merges_hint) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return easel_seterr(EASEL_ENOTFOUND, "tokenizer: cannot read %s", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return easel_seterr(EASEL_EFORMAT, "tokenizer: %s is not a JSON object", path);
    }
    int max_id = -1;
    for (cJSON *it = root->child; it; it = it->next) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 10000000) {
            cJSON_Delete(root);
            return easel_seterr(EASEL_EFORMAT, "tokenizer: %s: bad id for \"%s\"", path,
                                it->string ? it->string : "");
        }
        if (it->valueint > max_id) max_id = it->valueint;
    }
    tokenizer *t = max_id >= 0 ? tok_alloc(max_id + 1, n_merges_hint) : NULL;
    easel_err e = t ? EASEL_OK : easel_seterr(EASEL_EFORMAT, "tokenizer: %s is empty", path);
    if (max_id >= 0 && !t) e = easel_seterr(EASEL_ENOMEM, "tokenizer: out of memory");
    for (cJSON *it = root->child; it && !e; it = it->next)
        e = vocab_set(t, it->valueint, it->string, strlen(it->string));
    cJSON_Delete(root);
    if (e) {
        tokenizer_free(t);
        return easel_wraperr(e, "%s", path);
    }
    *out = t;
    return EASEL_OK;
}

/* The pad token named in a transformers JSON config ("pad_token": "x" or
 * {"content": "x"}); leaves t->pad alone if the file or key is missing. */
static void load_pad_token(tokenizer *t, const char *path) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    cJSON *pad = cJSON_GetObjectItemCaseSensitive(root, "pad_token");
    if (cJSON_IsObject(pad)) pad = cJSON_GetObjectItemCaseSensitive(pad, "content");
    if (cJSON_IsString(pad)) {
        int32_t id = vocab_find(t, pad->valuestring, strlen(pad->valuestring));
        if (id >= 0) t->pad = id;
    }
    cJSON_Delete(root);
}

easel_err tokenizer_load_dir(const char *dir, tokenizer **out) {
    char path[4096];
    size_t mlen;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    char *merges = read_file(path, &mlen);
    if (!merges) return easel_seterr(EASEL_ENOTFOUND, "tokenizer: cannot read %s", path);
    int lines = 1;
    for (size_t i = 0; i < mlen; i++)
        lines += merges[i] == '\n';
    tokenizer *t = NULL;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    easel_err e = load_vocab_json(path, &t, lines);
    int n_merges = 0;
    if (!e) {
        snprintf(path, sizeof path, "%s/merges.txt", dir);
        e = add_merges(t, merges, mlen, 0, &n_merges);
        if (e) easel_wraperr(e, "%s", path);
    }
    free(merges);
    if (!e) e = resolve_bytes(t);
    if (e) {
        tokenizer_free(t);
        return e;
    }
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    load_pad_token(t, path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    load_pad_token(t, path);
    *out = t;
    return EASEL_OK;
}

int tokenizer_vocab_size(const tokenizer *t) {
    return t->n_vocab;
}
int32_t tokenizer_bos(const tokenizer *t) {
    return t->bos;
}
int32_t tokenizer_eos(const tokenizer *t) {
    return t->eos;
}
int32_t tokenizer_pad(const tokenizer *t) {
    return t->pad;
}

easel_err tokenizer_set_pad(tokenizer *t, int32_t id) {
    if (id < 0 || id >= tokenizer_vocab_size(t))
        return easel_seterr(EASEL_EINVAL, "tokenizer: pad id %d outside the vocabulary", id);
    t->pad = id;
    return EASEL_OK;
}

const char *tokenizer_token(const tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab || t->offs[id] == UINT32_MAX) return NULL;
    return t->pool + t->offs[id];
}

/* ---------- Unicode ---------- */

static int in_ranges(const uint32_t (*r)[2], int n, uint32_t cp) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid - 1;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_letter(uint32_t c) {
    if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    return in_ranges(uni_letter, UNI_N_LETTER, c);
}

static int is_number(uint32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    return in_ranges(uni_number, UNI_N_NUMBER, c);
}

static int is_space(uint32_t c) {
    return in_ranges(uni_space, UNI_N_SPACE, c);
}

/* Binary search in a table sorted by its first column; the row or NULL. */
static const uint32_t *find_row(const uint32_t *tab, int rows, int cols, uint32_t cp) {
    int lo = 0, hi = rows - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t k = tab[mid * cols];
        if (cp < k)
            hi = mid - 1;
        else if (cp > k)
            lo = mid + 1;
        else
            return tab + mid * cols;
    }
    return NULL;
}

static int ccc_of(uint32_t c) {
    if (c < 0x300) return 0;
    int lo = 0, hi = UNI_N_CCC - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < uni_ccc[mid][0])
            hi = mid - 1;
        else if (c > uni_ccc[mid][1])
            lo = mid + 1;
        else
            return (int)uni_ccc[mid][2];
    }
    return 0;
}

#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_NV 21u
#define HANGUL_NT 28u
#define HANGUL_NS 11172u

/* Full canonical decomposition of c into out (at most UNI_MAX_DECOMP). */
static int decompose(uint32_t c, uint32_t *out) {
    if (c >= HANGUL_S && c < HANGUL_S + HANGUL_NS) {
        uint32_t s = c - HANGUL_S, t = s % HANGUL_NT;
        out[0] = HANGUL_L + s / (HANGUL_NV * HANGUL_NT);
        out[1] = HANGUL_V + (s % (HANGUL_NV * HANGUL_NT)) / HANGUL_NT;
        if (!t) return 2;
        out[2] = HANGUL_T + t;
        return 3;
    }
    const uint32_t *row = c < 0xC0 ? NULL : find_row(&uni_decomp[0][0], UNI_N_DECOMP, 3, c);
    if (!row) {
        out[0] = c;
        return 1;
    }
    memcpy(out, uni_decomp_pool + row[1], sizeof(uint32_t) * row[2]);
    return (int)row[2];
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L && a < HANGUL_L + 19 && b >= HANGUL_V && b < HANGUL_V + HANGUL_NV)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_NV + (b - HANGUL_V)) * HANGUL_NT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_NS && (a - HANGUL_S) % HANGUL_NT == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_NT)
        return a + (b - HANGUL_T);
    int lo = 0, hi = UNI_N_COMPOSE - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const uint32_t *r = uni_compose[mid];
        if (a < r[0] || (a == r[0] && b < r[1]))
            hi = mid - 1;
        else if (a > r[0] || b > r[1])
            lo = mid + 1;
        else
            return r[2];
    }
    return 0;
}

/* NFC of s[0..n) into out (room for n * UNI_MAX_DECOMP); returns the length. */
static size_t nfc(const uint32_t *s, size_t n, uint32_t *out) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        m += (size_t)decompose(s[i], out + m);
    for (size_t i = 1; i < m; i++) { /* canonical ordering: stable by ccc */
        int c = ccc_of(out[i]);
        if (!c) continue;
        for (size_t j = i; j > 0; j--) {
            int p = ccc_of(out[j - 1]);
            if (p <= c) break;
            uint32_t tmp = out[j];
            out[j] = out[j - 1];
            out[j - 1] = tmp;
        }
    }
    size_t k = 0;
    long starter = -1;
    int last_ccc = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t c = out[i];
        int cc = ccc_of(c);
        if (starter >= 0 && ((size_t)starter == k - 1 || (last_ccc != 0 && last_ccc < cc))) {
            uint32_t comp = compose(out[starter], c);
            if (comp) {
                out[starter] = comp;
                continue;
            }
        }
        if (cc == 0) starter = (long)k;
        last_ccc = cc;
        out[k++] = c;
    }
    return k;
}

/* transformers' normalizer on s[0..n): NFC, each run of White_Space -> one
 * " ", lower-case (U+0130 -> "i" U+0307). Returns the length written to out
 * (room for n * UNI_MAX_DECOMP * 2), or 0 with *err set on ENOMEM. */
static size_t normalize(const uint32_t *s, size_t n, uint32_t *out, easel_err *err) {
    int ascii = 1;
    for (size_t i = 0; i < n && ascii; i++)
        ascii = s[i] < 0x300;
    uint32_t *tmp = NULL;
    if (!ascii) {
        tmp = malloc(sizeof(uint32_t) * (n * UNI_MAX_DECOMP + 1));
        if (!tmp) {
            *err = easel_seterr(EASEL_ENOMEM, "tokenizer: out of memory");
            return 0;
        }
        n = nfc(s, n, tmp);
        s = tmp;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (is_space(c)) {
            if (i == 0 || !is_space(s[i - 1])) out[k++] = ' ';
            continue;
        }
        if (c < 0x80) {
            out[k++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        } else if (c == 0x130) {
            out[k++] = 'i';
            out[k++] = 0x307;
        } else {
            const uint32_t *row = find_row(&uni_lower[0][0], UNI_N_LOWER, 2, c);
            out[k++] = row ? row[1] : c;
        }
    }
    free(tmp);
    return k;
}

/* Whether b may follow lead as continuation byte j (1-based) of a well-formed
 * sequence (the Unicode table of well-formed byte sequences). */
static int utf8_cont_ok(unsigned char lead, int j, unsigned char b) {
    if ((b & 0xC0) != 0x80) return 0;
    if (j > 1) return 1;
    if (lead == 0xE0) return b >= 0xA0;
    if (lead == 0xED) return b <= 0x9F;
    if (lead == 0xF0) return b >= 0x90;
    if (lead == 0xF4) return b <= 0x8F;
    return 1;
}

/* Decodes UTF-8 into code points; out has room for len. Each maximal
 * ill-formed subpart becomes one U+FFFD, as Python's decode(errors="replace")
 * does. */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *out) {
    size_t k = 0, i = 0;
    while (i < len) {
        unsigned char b = s[i];
        int n = b < 0x80 ? 0 : b < 0xC2 ? -1 : b < 0xE0 ? 1 : b < 0xF0 ? 2 : b < 0xF5 ? 3 : -1;
        uint32_t c = n == 0 ? b : n == 1 ? (b & 0x1Fu) : n == 2 ? (b & 0x0Fu) : (b & 0x07u);
        int j = 1;
        for (; n > 0 && j <= n; j++) {
            if (i + (size_t)j >= len || !utf8_cont_ok(b, j, s[i + j])) break;
            c = (c << 6) | (s[i + j] & 0x3Fu);
        }
        if (n < 0 || j <= n) {
            out[k++] = 0xFFFD;
            i += n < 0 ? 1 : (size_t)j;
            continue;
        }
        out[k++] = c;
        i += (size_t)n + 1;
    }
    return k;
}

/* ---------- pre-tokenizer and BPE ---------- */

/* The token list being built: ids beyond TOKENIZER_MAX_LEN - 2 only count. */
typedef struct {
    int32_t ids[TOKENIZER_MAX_LEN];
    int n; /* tokens so far (may exceed the room) */
} tok_out;

static void emit(tok_out *o, int32_t id) {
    if (o->n < TOKENIZER_MAX_LEN - 2) o->ids[o->n] = id;
    o->n++;
}

static int full(const tok_out *o) {
    return o->n > TOKENIZER_MAX_LEN - 2;
}

/* Scratch for BPE: symbols and, per adjacent pair, its merge rank and id. */
typedef struct {
    int32_t *sym, *rank, *merged;
} bpe_buf;

static void pair_at(const tokenizer *t, bpe_buf *w, size_t i) {
    int32_t r = pair_find(t, w->sym[i], w->sym[i + 1], &w->merged[i]);
    w->rank[i] = r < 0 ? INT32_MAX : r;
}

/* BPE of one pre-token (its UTF-8 bytes): the byte symbols, the last with
 * "</w>", merged pair by pair, lowest rank first, leftmost on ties. The
 * buffers have room for len. */
static void bpe_word(const tokenizer *t, const unsigned char *bytes, size_t len, bpe_buf *w,
                     tok_out *o) {
    size_t n = len;
    for (size_t i = 0; i < len; i++)
        w->sym[i] = i + 1 == len ? t->byte_eow_id[bytes[i]] : t->byte_id[bytes[i]];
    for (size_t i = 0; i + 1 < n; i++)
        pair_at(t, w, i);
    while (n > 1) {
        size_t at = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (w->rank[i] < w->rank[at]) at = i;
        if (w->rank[at] == INT32_MAX) break;
        w->sym[at] = w->merged[at];
        size_t tail = n - at - 2;
        memmove(w->sym + at + 1, w->sym + at + 2, sizeof(int32_t) * tail);
        memmove(w->rank + at + 1, w->rank + at + 2, sizeof(int32_t) * (tail ? tail - 1 : 0));
        memmove(w->merged + at + 1, w->merged + at + 2, sizeof(int32_t) * (tail ? tail - 1 : 0));
        n--;
        if (at > 0) pair_at(t, w, at - 1);
        if (at + 1 < n) pair_at(t, w, at);
    }
    for (size_t i = 0; i < n && !full(o); i++)
        emit(o, w->sym[i]);
}

static size_t utf8_encode(uint32_t c, unsigned char *out) {
    if (c < 0x80) {
        out[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (unsigned char)(0xC0 | (c >> 6));
        out[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (c >> 12));
        out[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (c >> 18));
    out[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* BPE over s[0..n) as one byte-level word; buf and w have room for 4n. */
static void bpe_piece(const tokenizer *t, const uint32_t *s, size_t n, unsigned char *buf,
                      bpe_buf *w, tok_out *o) {
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += utf8_encode(s[i], buf + len);
    bpe_word(t, buf, len, w, o);
}

/* Matches the ASCII string lit at s[i..n). */
static int match_lit(const uint32_t *s, size_t i, size_t n, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= n || s[i + k] != (unsigned char)lit[k]) return 0;
    return 1;
}

/* Length of a contraction ('s 't 're 've 'm 'll 'd) at s[i], or 0. */
static size_t contraction(const uint32_t *s, size_t i, size_t n) {
    if (s[i] != '\'' || i + 1 >= n) return 0;
    uint32_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* CLIP's pre-tokenizer regex over normalized text, each match BPE'd:
 *   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
 * The special-token literals are then split again by the ByteLevel step's
 * GPT-2 regex into "<|", the word, "|>"; every other match passes it whole. */
static void pretokenize(const tokenizer *t, const uint32_t *s, size_t n, unsigned char *buf,
                        bpe_buf *w, tok_out *o) {
    size_t i = 0;
    while (i < n && !full(o)) {
        size_t len;
        const char *lit = match_lit(s, i, n, "<|startoftext|>") ? "startoftext"
                          : match_lit(s, i, n, "<|endoftext|>") ? "endoftext"
                                                                : NULL;
        if (lit) {
            size_t wl = strlen(lit);
            bpe_piece(t, s + i, 2, buf, w, o);
            bpe_piece(t, s + i + 2, wl, buf, w, o);
            bpe_piece(t, s + i + 2 + wl, 2, buf, w, o);
            i += wl + 4;
            continue;
        }
        if ((len = contraction(s, i, n))) {
        } else if (is_letter(s[i])) {
            for (len = 1; i + len < n && is_letter(s[i + len]); len++) {
            }
        } else if (is_number(s[i])) {
            len = 1;
        } else if (is_space(s[i])) {
            i++;
            continue;
        } else {
            for (len = 1; i + len < n; len++) {
                uint32_t c = s[i + len];
                if (is_space(c) || is_letter(c) || is_number(c)) break;
            }
        }
        bpe_piece(t, s + i, len, buf, w, o);
        i += len;
    }
}

/* Normalizes and tokenizes the text between special tokens. */
static easel_err encode_segment(const tokenizer *t, const uint32_t *s, size_t n, tok_out *o) {
    if (!n) return EASEL_OK;
    size_t cap = n * UNI_MAX_DECOMP * 2 + 1;
    uint32_t *norm = malloc(sizeof(uint32_t) * cap);
    unsigned char *buf = malloc(cap * 4);
    int32_t *scratch = malloc(sizeof(int32_t) * cap * 4 * 3);
    bpe_buf w = {scratch, scratch + cap * 4, scratch + cap * 8};
    easel_err e = EASEL_OK;
    if (!norm || !buf || !scratch) e = easel_seterr(EASEL_ENOMEM, "tokenizer: out of memory");
    size_t m = e ? 0 : normalize(s, n, norm, &e);
    if (!e) pretokenize(t, norm, m, buf, &w, o);
    free(norm);
    free(buf);
    free(scratch);
    return e;
}

easel_err tokenizer_encode(const tokenizer *t, const char *text, int32_t ids[TOKENIZER_MAX_LEN],
                           int *truncated) {
    if (!t || !text || !ids) return easel_seterr(EASEL_EINVAL, "tokenizer: NULL argument");
    size_t len = strlen(text);
    uint32_t *cps = malloc(sizeof(uint32_t) * (len + 1));
    if (!cps) return easel_seterr(EASEL_ENOMEM, "tokenizer: out of memory");
    size_t n = utf8_decode((const unsigned char *)text, len, cps);
    tok_out o = {.n = 0};
    easel_err e = EASEL_OK;
    size_t seg = 0;
    for (size_t i = 0; i <= n && !e && !full(&o); i++) {
        int special = i == n                                    ? 0
                      : match_lit(cps, i, n, "<|startoftext|>") ? 1
                      : match_lit(cps, i, n, "<|endoftext|>")   ? 2
                                                                : 0;
        if (!special && i < n) continue;
        e = encode_segment(t, cps + seg, i - seg, &o);
        if (special && !e && !full(&o)) emit(&o, special == 1 ? t->bos : t->eos);
        if (special) {
            i += special == 1 ? 14 : 12;
            seg = i + 1;
        }
    }
    free(cps);
    if (e) return e;
    int kept = o.n < TOKENIZER_MAX_LEN - 2 ? o.n : TOKENIZER_MAX_LEN - 2;
    ids[0] = t->bos;
    memcpy(ids + 1, o.ids, sizeof(int32_t) * (size_t)kept);
    ids[kept + 1] = t->eos;
    for (int i = kept + 2; i < TOKENIZER_MAX_LEN; i++)
        ids[i] = t->pad;
    if (truncated) *truncated = o.n > TOKENIZER_MAX_LEN - 2;
    return EASEL_OK;
}

const char *tokenizer_default_merges(size_t *len) {
    *len = (size_t)(easel_clip_merges_end - easel_clip_merges);
    return easel_clip_merges;
}
