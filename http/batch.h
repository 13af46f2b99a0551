/* Synchronous requests for several images (OpenAI's n, A1111's batch_size x
 * n_iter) on the durable queue: one job per image, submitted together,
 * waited for together (the request is parked, no HTTP thread held), their
 * images read back. A batch whose client went away before its answer has
 * its unfinished jobs canceled. */
#ifndef EASEL_BATCH_H
#define EASEL_BATCH_H

#include "../engine/image_codecs.h"
#include "server.h"

#define BATCH_MAX 16

typedef struct {
    jobs *js;
    int n;
    char ids[BATCH_MAX][37];
    uint64_t seeds[BATCH_MAX];
    int64_t deadline_mono; /* jobs_mono_ms() after which the answer is a timeout */
    int answered;          /* the response went out: nothing to cancel at the end */
    void *api;             /* what the API kept about the request (freed with the batch) */
    void (*api_free)(void *);
} job_batch;

/* Submits n jobs copied from tmpl, seeds tmpl->seed + i (the A1111 and OpenAI
 * convention for a batch). On error nothing stays queued (jobs already
 * submitted are canceled) and the error is jobs_submit's. */
easel_err batch_submit(jobs *js, const job_params *tmpl, int n, int timeout_s, job_batch *b);

typedef struct {
    job_status status;
    char image[200]; /* file name in the images dir, "" unless completed */
    char error[512]; /* the job's error, "" if none */
    int step, steps;
    double eta_s;
    int width, height;
} batch_item;

/* The state of job i (EASEL_ENOTFOUND if it is gone, e.g. evicted). */
easel_err batch_item_get(job_batch *b, int i, batch_item *out);
/* 1 when every job has finished (completed, failed or canceled). */
int batch_finished(job_batch *b);
/* Where a parked request stands: every job finished (answer it), past its
 * deadline (the unfinished jobs are canceled and the batch marked answered:
 * send the API's timeout), or keep waiting. A stopping server is the
 * caller's to check first. */
typedef enum { BATCH_WAITING, BATCH_DONE, BATCH_TIMED_OUT } batch_state;
batch_state batch_poll(job_batch *b);
/* Cancels the jobs not finished yet (all, or only job i when i >= 0). */
void batch_cancel(job_batch *b, int i);
/* Job i's image encoded as f (quality for JPEG/WebP): a malloc'd buffer. */
easel_err batch_image(job_batch *b, int i, const char *images_dir, image_format f, int quality,
                      uint8_t **out, size_t *len);
/* The park_free of a batch request: cancels what is unfinished if no answer
 * was sent, frees the API's state and the batch. */
void batch_free(void *b);

/* base64 of n bytes (OpenSSL): a malloc'd NUL-terminated string, or NULL. */
char *http_base64(const uint8_t *p, size_t n);

#endif
