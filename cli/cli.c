/* What the commands share (see cli.h). */
#include "cli.h"

#include "../models/scheduler.h"

int cli_status_of(easel_err e) {
    return e == EASEL_EINVAL || e == EASEL_ENOTFOUND || e == EASEL_EFORMAT ||
                   e == EASEL_EUNSUPPORTED
               ? 2
               : 1;
}

const char *cli_set_prediction(void *load_opts, const char *v) {
    int s = prediction_parse(v);
    if (s < 0) return "must be epsilon, v_prediction or sample";
    ((sd_load_opts *)load_opts)->prediction = s;
    return NULL;
}
