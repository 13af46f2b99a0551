/* The CLIP tokenizer of SD1.x: byte-level BPE over OpenAI CLIP's 49,408-token
 * vocabulary, producing the 77 ids the text encoder reads. It reproduces what
 * diffusers' StableDiffusionPipeline gets from transformers' CLIPTokenizer
 * (transformers 5.x, tokenizers backend): NFC, whitespace runs -> " ",
 * lower-case, CLIP's pre-tokenizer regex, BPE with "</w>" word ends, then
 * BOS + up to 75 tokens + EOS, padded to 77 with the pad token. No ftfy and
 * no HTML unescaping (transformers 5 does neither). A tokenizer is read-only
 * once made, so workers may share one. */
#ifndef EASEL_TOKENIZER_H
#define EASEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/err.h"

#define TOKENIZER_MAX_LEN 77

typedef struct tokenizer tokenizer;

/* The built-in vocabulary (embedded in the binary: models/data/clip_merges.txt).
 * ENOMEM, or EINTERNAL if the embedded data is damaged. */
easel_err tokenizer_create_default(tokenizer **out);
/* A diffusers/transformers tokenizer folder: vocab.json + merges.txt, and the
 * pad token from tokenizer_config.json or special_tokens_map.json if present
 * (default: <|endoftext|>). ENOTFOUND/EIO/EFORMAT name the file at fault. */
easel_err tokenizer_load_dir(const char *dir, tokenizer **out);
void tokenizer_free(tokenizer *t);

/* ids[0..77) = BOS, the prompt's tokens (at most 75), EOS, then pad ids, as
 * CLIPTokenizer(text, padding="max_length", max_length=77, truncation=True).
 * *truncated (if not NULL) is set to 1 when tokens were dropped. Invalid
 * UTF-8 bytes count as U+FFFD. The literal strings "<|startoftext|>" and
 * "<|endoftext|>" in text become the special ids, as in transformers.
 * EINVAL for NULL text, ENOMEM. */
easel_err tokenizer_encode(const tokenizer *t, const char *text, int32_t ids[TOKENIZER_MAX_LEN],
                           int *truncated);

int tokenizer_vocab_size(const tokenizer *t);
/* The vocabulary entry of id in byte-level form ("cat</w>"), or NULL. */
const char *tokenizer_token(const tokenizer *t, int32_t id);
int32_t tokenizer_bos(const tokenizer *t);
int32_t tokenizer_eos(const tokenizer *t);
int32_t tokenizer_pad(const tokenizer *t);
/* Sets the pad id before the tokenizer is shared (SD2 single files pad with
 * OpenCLIP's "!", id 0). EINVAL outside the vocabulary. */
easel_err tokenizer_set_pad(tokenizer *t, int32_t id);
/* The built-in BPE merges as merges.txt lines (no "#version" line), for
 * writing a diffusers tokenizer/ folder. Not NUL-terminated: *len bytes. */
const char *tokenizer_default_merges(size_t *len);

#endif
