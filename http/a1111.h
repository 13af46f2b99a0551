/* AUTOMATIC1111's /sdapi/v1 (http/a1111.c). */
#ifndef EASEL_A1111_H
#define EASEL_A1111_H

#include "server.h"

/* The API's state the server owns: its requests in flight (for progress,
 * interrupt and skip) and its options. */
a1111_state *a1111_state_create(void);
void a1111_state_free(a1111_state *s);

enum MHD_Result a1111_txt2img(http_req *r);
enum MHD_Result a1111_img2img(http_req *r);
enum MHD_Result a1111_progress(http_req *r);
enum MHD_Result a1111_interrupt(http_req *r);
enum MHD_Result a1111_skip(http_req *r);
enum MHD_Result a1111_options_get(http_req *r);
enum MHD_Result a1111_options_set(http_req *r);
enum MHD_Result a1111_sd_models(http_req *r);
enum MHD_Result a1111_samplers(http_req *r);
enum MHD_Result a1111_schedulers(http_req *r);
enum MHD_Result a1111_scripts(http_req *r);
enum MHD_Result a1111_empty_list(http_req *r); /* loras, upscalers, ... (nothing yet) */
enum MHD_Result a1111_refresh(http_req *r);

#endif
