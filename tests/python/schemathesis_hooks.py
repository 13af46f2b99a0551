"""schemathesis hooks for test_api_schema.py: a generated job's `loras` name
LoRAs by their names, which are state (what is in the server's LoRA
directory), like a job id; a schema cannot say which exist. So a *positive*
case's loras are renamed to LoRAs the test server has (style0..style7, made
with `easel make-lora --arch tiny`), keeping their count and weights: every
other field stays as generated, and negative cases stay as they are (their
names are refused for what the schema says about them).

Uploads likewise: a positive job's init_image / mask (ids or base64 that a
schema cannot make decode) become uploads the test made first (a 96x64 JPEG
and a mask of its size: $EASEL_SCHEMA_UPLOAD_IMAGE / _MASK)."""
import os

import schemathesis


@schemathesis.hook
def map_case(context, case):
    body = case.body
    meta = getattr(case, "meta", None)
    positive = meta is not None and meta.generation.mode.is_positive
    if positive and isinstance(body, dict) and isinstance(body.get("loras"), list):
        for i, item in enumerate(body["loras"]):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                item["name"] = f"style{i}"
        # a prompt that happens to hold <lora:...> tags would name more
        if isinstance(body.get("prompt"), str):
            body["prompt"] = body["prompt"].replace("<lora:", "<lora ").replace("<lyco:", "<lyco ")
    if positive and isinstance(body, dict):
        for key, env in (("init_image", "EASEL_SCHEMA_UPLOAD_IMAGE"),
                         ("room_image", "EASEL_SCHEMA_UPLOAD_IMAGE"),
                         ("mask", "EASEL_SCHEMA_UPLOAD_MASK")):
            if isinstance(body.get(key), str) and os.environ.get(env):
                body[key] = os.environ[env]
    return case
