/* OpenAI's Images API (http/openai.c). */
#ifndef EASEL_OPENAI_H
#define EASEL_OPENAI_H

#include "server.h"

enum MHD_Result openai_generations(http_req *r);
enum MHD_Result openai_edits(http_req *r);
/* GET /v1/images/files/{id}.{png|jpg|webp}?expires=&q=&sig= (the signed URLs). */
enum MHD_Result openai_file(http_req *r);

#endif
