#!/usr/bin/env python3
"""Validates custom resources against the openAPIV3Schema of their CustomResourceDefinitions.

    crd_validate.py --crd CRD.yaml [--crd ...] MANIFESTS.yaml [...]

Every object whose apiVersion/kind one of the CRDs serves is checked with jsonschema against
that version's schema, made as strict as the API server's pruning: an unknown field is an error
(unless the CRD preserves unknown fields there), `x-kubernetes-int-or-string` accepts an integer
or a string. Objects of other kinds are ignored; a file with none of the CRDs' kinds fails, so a
renamed kind cannot pass unnoticed. Exit 1 on any violation.
"""

from __future__ import annotations

import argparse
import sys

import jsonschema
import yaml


def strict(schema: dict) -> dict:
    """A copy of a structural schema in plain JSON Schema, closed like the API server's pruning."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    return out


def load_crds(paths: list[str]) -> dict[tuple[str, str], dict]:
    schemas: dict[tuple[str, str], dict] = {}
    for path in paths:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if not version.get("served", True):
                        continue
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    # metadata is the API server's business; apiVersion/kind are fixed above.
                    schema["properties"]["metadata"] = {"type": "object"}
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crd", action="append", required=True)
    parser.add_argument("manifests", nargs="+")
    args = parser.parse_args()
    schemas = load_crds(args.crd)
    checked = failed = 0
    for path in args.manifests:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        for document in documents:
            schema = schemas.get((document.get("apiVersion"), document.get("kind")))
            if schema is None:
                continue
            checked += 1
            name = f"{document['kind']}/{document.get('metadata', {}).get('name')}"
            validator = jsonschema.Draft7Validator(schema)
            errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
            for error in errors:
                where = ".".join(str(p) for p in error.path) or "(root)"
                print(f"  {path}: {name}: {where}: {error.message}")
            failed += bool(errors)
            if not errors:
                print(f"  {name}: valid against {document['apiVersion']}")
    if checked == 0:
        print("  no object of the given CRDs' kinds was found")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
