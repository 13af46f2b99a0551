/* The LoRA directory as the service lists it (GET /v1/loras, /sdapi/v1/loras):
 * one JSON object per file with what the header says and whether it fits the
 * loaded model (models/lora.h). Set as server_config.loras by `easel serve`. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../models/lora.h"
#include "cli.h"

typedef struct {
    cJSON *arr;
    const lora_index *ix;
    const char *dir;
} list_ctx;

/* The path relative to the directory (the server's own layout is not shown). */
static const char *relative(const char *dir, const char *path) {
    size_t n = strlen(dir);
    if (!strncmp(path, dir, n) && path[n] == '/') return path + n + 1;
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static void add_entry(void *arg, const lora_entry *e) {
    list_ctx *c = arg;
    cJSON *o = cJSON_CreateObject();
    if (!o) return;
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "file", relative(c->dir, e->path));
    cJSON_AddNumberToObject(o, "size_bytes", (double)e->bytes);
    if (!e->file) {
        cJSON_AddStringToObject(o, "error", e->error ? e->error : "unreadable");
        cJSON_AddBoolToObject(o, "compatible", 0);
        cJSON_AddItemToArray(c->arr, o);
        return;
    }
    const lora_info *in = lora_file_info(e->file);
    cJSON_AddStringToObject(o, "format", lora_format_name(in->format));
    if (in->base[0]) {
        cJSON_AddStringToObject(o, "base", in->base);
        cJSON_AddStringToObject(o, "base_from", in->base_from);
    } else {
        cJSON_AddNullToObject(o, "base");
    }
    cJSON_AddNumberToObject(o, "rank", in->rank_max);
    if (in->rank_min != in->rank_max) cJSON_AddNumberToObject(o, "rank_min", in->rank_min);
    cJSON *layers = cJSON_AddObjectToObject(o, "layers");
    cJSON_AddNumberToObject(layers, "unet", in->part_modules[LORA_UNET]);
    cJSON_AddNumberToObject(layers, "text_encoder", in->part_modules[LORA_TEXT]);
    if (in->part_modules[LORA_TEXT2])
        cJSON_AddNumberToObject(layers, "text_encoder_2", in->part_modules[LORA_TEXT2]);
    cJSON_AddNumberToObject(layers, "conv", in->conv_modules);
    cJSON_AddNumberToObject(o, "parameters", (double)in->params);
    int ok = !c->ix || !lora_check(c->ix, e->file, e->name);
    cJSON_AddBoolToObject(o, "compatible", ok);
    if (!ok) cJSON_AddStringToObject(o, "incompatible", easel_errmsg());
    const char *tr[8];
    int nt = lora_file_triggers(e->file, tr, 8);
    cJSON *t = cJSON_AddArrayToObject(o, "trigger_words");
    for (int i = 0; i < nt; i++)
        cJSON_AddItemToArray(t, cJSON_CreateString(tr[i]));
    cJSON *m = cJSON_AddObjectToObject(o, "metadata");
    for (size_t i = 0; i < lora_file_meta_count(e->file); i++) {
        const char *k, *v;
        if (!lora_file_meta_at(e->file, i, &k, &v)) cJSON_AddStringToObject(m, k, v);
    }
    cJSON_AddItemToArray(c->arr, o);
}

cJSON *cli_loras_json(lora_lib *lib, const sd_model *model) {
    list_ctx c = {cJSON_CreateArray(), model ? sd_model_lora_index(model) : NULL,
                  lib ? lora_lib_dir(lib) : ""};
    if (!c.arr || !lib) return c.arr;
    if (lora_lib_each(lib, add_entry, &c)) {
        cJSON_Delete(c.arr);
        return NULL;
    }
    return c.arr;
}
