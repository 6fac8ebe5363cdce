#!/usr/bin/env python3
"""Lints and renders a Helm chart through helm-python-sdk (Helm's Go SDK over a C ABI; no helm binary).

    helm_chart.py lint     CHART [-f VALUES]... [--namespace NS]
    helm_chart.py template CHART [-f VALUES]... [--set-json KEY=JSON]... [--namespace NS] [--name RELEASE]
                           --out FILE [--split]
    helm_chart.py reject   CHART -f VALUES --set-json KEY=JSON   (expects the schema to refuse)
    helm_chart.py refuse   CHART [-f VALUES]... [--set-json KEY=JSON]... --expect TEXT
                           (expects the render itself to fail, its message containing TEXT)

`lint` is `helm lint --strict`: any warning or error fails. `template` is `helm template`:
values are checked against values.schema.json, then every manifest is written into FILE as one
multi-document YAML stream (hooks included; NOTES.txt left out); `--split` also writes the
built-in kinds to FILE.core.yaml and the custom resources to FILE.custom.yaml (FILE minus its
.yaml suffix), for validators that know only one of the two. `reject` proves the schema is
not vacuous: the override must be refused. `refuse` proves a template's `fail` guard: values the
schema accepts (it cannot compare two fields or do arithmetic) must still not render.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def load_values(files: list[str]) -> dict:
    """Merges the values files in order, like repeated `-f` (later files win, maps merge deeply)."""
    merged: dict = {}

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)

    for name in files:
        merge(merged, yaml.safe_load(Path(name).read_text()) or {})
    return merged


def lint(args: argparse.Namespace) -> int:
    report = helm.lint(
        args.chart, load_values(args.values), strict=True, namespace=args.namespace
    )
    bad = 0
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        print(f"  [{SEVERITY.get(severity, severity)}] {message.get('path')}: {message.get('error')}")
        bad += severity >= 2
    for error in report.get("errors") or []:
        print(f"  [ERROR] {error}")
        bad += 1
    print(f"  linted {report.get('total_charts_linted')} chart(s), {bad} warning(s)/error(s)")
    return 1 if bad or not report.get("total_charts_linted") else 0


def is_builtin(api_version: str) -> bool:
    """Kubernetes' own API groups: the core group ("v1"), dotless groups (apps, batch, policy,
    autoscaling) and *.k8s.io; anything else is a custom resource."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def write(path: str, documents: list[dict]) -> None:
    with open(path, "w") as out:
        yaml.safe_dump_all(documents, out, sort_keys=False)


def template(args: argparse.Namespace) -> int:
    chart = helm.Chart.load(args.chart)
    values = load_values(args.values)
    apply_set_json(values, args.set_json)
    chart.validate_schema(values)
    manifests = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    documents = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(manifests[path]):
            if document:
                documents.append(document)
    write(args.out, documents)
    if args.split:
        stem = args.out.removesuffix(".yaml")
        write(f"{stem}.core.yaml", [d for d in documents if is_builtin(d["apiVersion"])])
        write(f"{stem}.custom.yaml", [d for d in documents if not is_builtin(d["apiVersion"])])
    kinds = ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents))
    print(f"  rendered {len(documents)} object(s): {kinds}")
    return 0


def apply_set_json(values: dict, assignments: list[str]) -> None:
    """`--set-json a.b=JSON`, in order: creates the parents, replaces the leaf."""
    for assignment in assignments:
        key, _, raw = assignment.partition("=")
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(raw)


def reject(args: argparse.Namespace) -> int:
    chart = helm.Chart.load(args.chart)
    values = load_values(args.values)
    apply_set_json(values, args.set_json)
    try:
        chart.validate_schema(values)
    except helm.HelmValuesError as refused:
        print(f"  refused as expected: {' '.join(str(refused).split())[:240]}")
        return 0
    print(f"  values.schema.json accepted {args.set_json}")
    return 1


def refuse(args: argparse.Namespace) -> int:
    chart = helm.Chart.load(args.chart)
    values = load_values(args.values)
    apply_set_json(values, args.set_json)
    chart.validate_schema(values)  # the schema must accept them: the template is under test
    try:
        chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    except helm.HelmError as refused:
        message = " ".join(str(refused).split())
        if args.expect not in message:
            print(f"  refused, but not with {args.expect!r}: {message[:400]}")
            return 1
        print(f"  refused as expected: {message[message.find(args.expect):][:300]}")
        return 0
    print(f"  the chart rendered {args.set_json}")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lint", "template", "reject", "refuse"])
    parser.add_argument("chart")
    parser.add_argument("-f", "--values", action="append", default=[])
    parser.add_argument("--namespace", default="datapack")
    parser.add_argument("--name", default="datapack-worker")
    parser.add_argument("--out")
    parser.add_argument("--set-json", action="append", default=[])
    parser.add_argument("--expect", default="")
    parser.add_argument("--split", action="store_true")
    args = parser.parse_args()
    try:
        commands = {"lint": lint, "template": template, "reject": reject, "refuse": refuse}
        return commands[args.command](args)
    except helm.HelmError as error:
        print(f"  helm: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
