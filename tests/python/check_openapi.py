"""Validates the hub's OpenAPI document with openapi-spec-validator, then
checks that real answers match it.

Usage: check_openapi.py OPENAPI_JSON CALLS_JSON
CALLS_JSON is a list of [path, status, body]: each body must match the
schema the document gives for that path's POST and that status.
"""

import json
import sys

import jsonschema
from openapi_spec_validator import validate


def pointer(*parts):
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    with open(sys.argv[2], encoding="utf-8") as f:
        calls = json.load(f)
    if doc.get("openapi", "").split(".")[:2] != ["3", "1"]:
        sys.exit(f"not an OpenAPI 3.1 document: openapi = {doc.get('openapi')!r}")
    validate(doc)  # raises with the reason when the document is invalid
    for path, status, body in calls:
        responses = doc["paths"][path]["post"]["responses"]
        key = str(status) if str(status) in responses else "default"
        response = responses[key]
        if "$ref" in response:
            name = response["$ref"].rsplit("/", 1)[1]
            target = pointer("components", "responses", name, "content", "application/json", "schema")
        else:
            target = pointer("paths", path, "post", "responses", key, "content", "application/json", "schema")
        # The whole document as the schema resource, so that its $refs resolve.
        schema = dict(doc)
        schema["$ref"] = target
        jsonschema.Draft202012Validator(schema).validate(body)
        print(f"{path} {status}: matches the document")
    print("the document is valid OpenAPI 3.1")


if __name__ == "__main__":
    main()
