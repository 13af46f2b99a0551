/* Several jobs for one synchronous request (see batch.h). */
#include "batch.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/fsutil.h"
#include "../engine/image.h"

easel_err batch_submit(jobs *js, const job_params *tmpl, int n, int timeout_s, job_batch *b) {
    memset(b, 0, sizeof *b);
    b->js = js;
    if (n < 1 || n > BATCH_MAX)
        return easel_seterr(EASEL_EINVAL, "a batch is 1 to %d images (got %d)", BATCH_MAX, n);
    for (int i = 0; i < n; i++) {
        job_params p;
        easel_err e = params_copy(&p, tmpl);
        if (!e) {
            p.seed = tmpl->seed + (uint64_t)i;
            p.seed_given = 1;
            b->seeds[i] = p.seed;
            e = jobs_submit(js, &p, b->ids[i]);
            if (e) params_clear(&p);
        }
        if (e) {
            batch_cancel(b, -1); /* the first i went in: take them back */
            return e;
        }
        b->n = i + 1;
    }
    b->deadline_mono = jobs_mono_ms() + (int64_t)timeout_s * 1000;
    return EASEL_OK;
}

static void view_item(void *user, const job *j, const job_extra *x) {
    batch_item *it = user;
    it->status = j->status;
    snprintf(it->image, sizeof it->image, "%s",
             j->status == JOB_COMPLETED && j->image ? j->image : "");
    snprintf(it->error, sizeof it->error, "%s", j->error ? j->error : "");
    it->step = j->step;
    it->steps = j->steps > 0 ? j->steps : j->params.steps;
    it->eta_s = x->eta_s;
    it->width = j->params.width;
    it->height = j->params.height;
}

easel_err batch_item_get(job_batch *b, int i, batch_item *out) {
    memset(out, 0, sizeof *out);
    return jobs_view(b->js, b->ids[i], view_item, out);
}

batch_state batch_poll(job_batch *b) {
    if (batch_finished(b)) return BATCH_DONE;
    if (jobs_mono_ms() <= b->deadline_mono) return BATCH_WAITING;
    batch_cancel(b, -1);
    b->answered = 1;
    return BATCH_TIMED_OUT;
}

int batch_finished(job_batch *b) {
    for (int i = 0; i < b->n; i++) {
        batch_item it;
        if (!batch_item_get(b, i, &it) && it.status < JOB_COMPLETED) return 0;
    }
    return 1;
}

void batch_cancel(job_batch *b, int i) {
    for (int k = 0; k < b->n; k++) {
        if (i >= 0 && k != i) continue;
        job_status after;
        jobs_cancel(b->js, b->ids[k], &after); /* finished ones answer EINVAL: fine */
    }
}

/* A finished image file (the store's names, so no size cap of our own). */
static easel_err read_file(const char *path, uint8_t **out, size_t *len) {
    easel_err e = fs_read_file(path, SIZE_MAX, out, len);
    if (e == EASEL_ENOTFOUND) return easel_seterr(e, "the image is gone");
    return e ? easel_seterr(e, "reading the image failed") : EASEL_OK;
}

easel_err batch_image(job_batch *b, int i, const char *images_dir, image_format f, int quality,
                      uint8_t **out, size_t *len) {
    batch_item it;
    easel_err e = batch_item_get(b, i, &it);
    if (!e && it.status != JOB_COMPLETED) { /* several nodes: another may have just finished it */
        jobs_refresh(b->js, b->ids[i]);
        e = batch_item_get(b, i, &it);
    }
    if (e) return e;
    if (it.status != JOB_COMPLETED || !it.image[0])
        return easel_seterr(EASEL_ENOTFOUND, "job %s has no image", b->ids[i]);
    uint8_t *png = NULL, *rgb = NULL;
    size_t n = 0;
    if (jobs_images_in_store(b->js)) { /* a shared store's row, from any node */
        if ((e = jobs_image_read(b->js, it.image, &png, &n))) return e;
    } else {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", images_dir, it.image);
        if ((e = read_file(path, &png, &n))) return e;
    }
    if (f == IMG_PNG) { /* as written: no re-encoding */
        *out = png, *len = n;
        return EASEL_OK;
    }
    int w = 0, h = 0;
    e = image_decode_png_mem(png, n, &rgb, &w, &h);
    free(png);
    if (!e) e = image_encode(f, rgb, w, h, quality, out, len);
    free(rgb);
    return e;
}

void batch_free(void *p) {
    job_batch *b = p;
    if (!b) return;
    if (!b->answered) batch_cancel(b, -1); /* the client went away: its work is not wanted */
    if (b->api && b->api_free) b->api_free(b->api);
    free(b);
}

char *http_base64(const uint8_t *p, size_t n) {
    size_t cap = 4 * ((n + 2) / 3) + 1;
    char *out = malloc(cap);
    if (!out) return NULL;
    EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}
