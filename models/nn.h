/* Building blocks shared by the networks (clip.c, unet.c, vae.c): parameter
 * bookkeeping, linear/conv/norm weights, the diffusers ResNet block, the
 * attention and transformer blocks, nearest upsampling to a size. Each block
 * is a weights struct + a load function (by diffusers names under a prefix) +
 * a forward function over backend ops on NHWC tensors whose temporaries come
 * from the arena and are released before it returns. */
#ifndef EASEL_NN_H
#define EASEL_NN_H

#include "../engine/arena.h"
#include "weights.h"

#define NN_NAME_MAX 256
#define NN_MAX_TLAYERS 16

/* Every weight a network loaded, so that it can free them all. */
typedef struct {
    wstore *ws;
    backend *be;
    void **ptrs;
    int n, cap;
} nn_params;

void nn_params_init(nn_params *p, wstore *ws);
void nn_params_free(nn_params *p);
/* ws->get(prefix + name) recorded in p. */
easel_err nn_get(nn_params *p, tensor *out, weight_layout layout, int ndim, const int64_t *shape,
                 const char *prefix, const char *name);

typedef struct {
    tensor w, b; /* w [out,in]; b [out] or data NULL */
    int in, out;
} nn_linear;

typedef struct {
    tensor w, b; /* w [Co,KH,KW,Ci], b [Co] */
    int in, out, k;
} nn_conv;

typedef struct {
    tensor w, b; /* gamma, beta [C] */
} nn_norm;

/* "<prefix>.weight" [out,in] (+ "<prefix>.bias" when bias). as_conv: stored as a
 * 1x1 conv [out,in,1,1] (SD1.x proj_in/out). */
easel_err nn_linear_load(nn_params *p, nn_linear *l, int in, int out, int bias, int as_conv,
                         const char *prefix);
easel_err nn_conv_load(nn_params *p, nn_conv *c, int in, int out, int k, const char *prefix);
easel_err nn_norm_load(nn_params *p, nn_norm *n, int ch, const char *prefix);

/* y = x·wᵀ + b over the last dim. */
easel_err nn_linear_fwd(backend *be, const nn_linear *l, tensor *y, const tensor *x);
/* A new arena tensor holding linear(x) (data NULL + sticky arena error on OOM). */
tensor nn_linear_new(arena *ar, const nn_linear *l, const tensor *x, easel_err *err);

/* diffusers ResnetBlock2D (time_embedding_norm "default", output scale 1). */
typedef struct {
    int in, out, groups, has_temb, has_shortcut;
    float eps;
    nn_norm norm1, norm2;
    nn_conv conv1, conv2, shortcut;
    nn_linear temb;
} nn_resnet;

/* temb_dim 0: no time embedding (VAE). */
easel_err nn_resnet_load(nn_params *p, nn_resnet *r, int in, int out, int temb_dim, int groups,
                         float eps, const char *prefix);
/* out = resnet(x, temb_act) where temb_act = SiLU(temb) [B, temb_dim] or NULL.
 * out [B,H,W,r->out]; out may be x itself when r->in == r->out (in place). */
easel_err nn_resnet_fwd(const nn_resnet *r, arena *ar, const tensor *x, const tensor *temb_act,
                        tensor *out);

/* diffusers Attention as used by BasicTransformerBlock (q/k/v without bias,
 * to_out.0 with bias) and by the VAE (all with bias). */
typedef struct {
    int heads;
    nn_linear q, k, v, o;
} nn_attn;

easel_err nn_attn_load(nn_params *p, nn_attn *a, int dim, int ctx_dim, int heads, int qkv_bias,
                       int as_conv, const char *prefix);
/* x += to_out(attention(to_q(n), to_k(ctx), to_v(ctx))), with ctx = n when
 * NULL (self-attention). n: [B,L,dim] normalised input; x: the residual. */
easel_err nn_attn_fwd(const nn_attn *a, arena *ar, tensor *x, const tensor *n, const tensor *ctx);

/* BasicTransformerBlock: self-attn, cross-attn, GEGLU feed-forward. */
typedef struct {
    nn_norm norm1, norm2, norm3;
    nn_attn attn1, attn2;
    nn_linear ff_in, ff_out;
} nn_tblock;

/* Transformer2DModel (continuous input): GroupNorm(eps 1e-6), proj_in,
 * blocks, proj_out, + residual. */
typedef struct {
    int ch, heads, groups, layers, linear_proj;
    nn_norm norm;
    nn_linear proj_in, proj_out;
    nn_tblock blocks[NN_MAX_TLAYERS];
} nn_transformer;

easel_err nn_transformer_load(nn_params *p, nn_transformer *t, int ch, int heads, int ctx_dim,
                              int groups, int layers, int linear_proj, const char *prefix);
/* x [B,H,W,ch] += transformer(x, ctx [B,L,ctx_dim]) in place. */
easel_err nn_transformer_fwd(const nn_transformer *t, arena *ar, tensor *x, const tensor *ctx);

/* y [N,H,W,C] = nearest-neighbour upsampling of x [N,h,w,C] to H×W with
 * h = ceil(H/2), w = ceil(W/2) (torch's interpolate(size=...) for those
 * sizes equals 2x then cropping). */
easel_err nn_upsample_to(backend *be, arena *ar, tensor *y, const tensor *x);

/* Moves *t down to the arena position `mark` (everything allocated after the
 * mark except *t is garbage), releasing the rest, so that a chain of blocks
 * does not pile up dead inputs. *t is updated. */
easel_err nn_compact(arena *ar, size_t mark, tensor *t);

/* Config JSON helpers for the *_config_from_json functions. Each returns 0
 * (value set, or key absent/null and value untouched) or -1 (wrong type). */
struct cJSON;
int nn_json_int(const struct cJSON *obj, const char *key, int *v);
int nn_json_float(const struct cJSON *obj, const char *key, float *v);
int nn_json_bool(const struct cJSON *obj, const char *key, int *v);
/* An int or a list of up to max ints (an int fills all max). Returns the
 * count set (max for an int, 0 if absent) or -1. */
int nn_json_ints(const struct cJSON *obj, const char *key, int *v, int max);
/* 1 if key is present with a value other than null/false/0/"" (a feature we
 * do not implement is switched on). */
int nn_json_set(const struct cJSON *obj, const char *key);

/* "<prefix><fmt...>" into buf; 0 or EASEL_EINVAL if it does not fit. */
easel_err nn_name(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
