/* GET /v1/loras (native) and GET /sdapi/v1/loras (A1111's shape): the LoRA
 * directory as the server's lister describes it (server_config.loras, filled
 * by cli/serve.c: the HTTP layer knows no LoRA files itself). The directory
 * is read on every call, so files added while running show at once. */
#include <cjson/cJSON.h>
#include <string.h>

#include "server.h"

static cJSON *listing(http_req *r) {
    const server_config *c = server_cfg(r->srv);
    return c->loras ? c->loras(c->loras_ctx) : cJSON_CreateArray();
}

enum MHD_Result api_loras(http_req *r) {
    cJSON *list = listing(r);
    cJSON *o = list ? cJSON_CreateObject() : NULL;
    if (!o) {
        cJSON_Delete(list);
        return http_error(r, 500, "internal", "listing the LoRA directory failed", NULL);
    }
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddItemToObject(o, "data", list);
    return http_json(r, 200, o);
}

/* A1111: [{name, alias, path, metadata}] (its metadata is the file's ss_* map). */
enum MHD_Result a1111_loras(http_req *r) {
    cJSON *list = listing(r), *out = list ? cJSON_CreateArray() : NULL;
    if (!out) {
        cJSON_Delete(list);
        return http_error(r, 500, "internal", "listing the LoRA directory failed", NULL);
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        const cJSON *file = cJSON_GetObjectItemCaseSensitive(e, "file");
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(e, "metadata");
        if (!cJSON_IsString(name)) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", name->valuestring);
        cJSON_AddStringToObject(o, "alias", name->valuestring);
        cJSON_AddStringToObject(o, "path", cJSON_IsString(file) ? file->valuestring : "");
        cJSON_AddItemToObject(
            o, "metadata", cJSON_IsObject(meta) ? cJSON_Duplicate(meta, 1) : cJSON_CreateObject());
        cJSON_AddItemToArray(out, o);
    }
    cJSON_Delete(list);
    return http_json(r, 200, out);
}
