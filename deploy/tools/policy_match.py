#!/usr/bin/env python3
"""Checks that deploy/aws/iam-policy.json grants what the stack's WorkerPolicy grants: same
statements (by Sid), same actions, same effect; only the resource ARNs are examples there.
With --src, also that WorkerPolicy's actions are exactly those the worker's AWS SDK calls need
(every `.operation()` call under the source tree, the operator commands dlq, presign and
reconcile left out); an operation this script does not know fails, so a new call cannot go
unnoticed. A call is recognised as the SDK's builder: `.operation()` followed by its first
parameter setter (`.bucket(`, `.key(`, `.queue_url(`, `.entries(`, `.receipt_handle(`), or
as the first argument of a macro of the same file whose body applies such a setter to it
(`page_of!(self.s3.list_object_versions(), …)`).

With --reconcile the same for the stack's ReconcilePolicy and reconcile-policy.json against
what `datapack-worker reconcile` calls: its own calls (src/commands/reconcile/) and the S3
calls of the pipeline it repairs through (the shared code; it uses no queue). A statement under
a condition (`!If [cond, statement, !Ref AWS::NoValue]`) counts as present.

    policy_match.py STACK.yaml POLICY.json [--src DIR] [--reconcile]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml


class CloudFormationLoader(yaml.SafeLoader):
    """Reads a template's short-form intrinsics (!Sub, !GetAtt, …) as plain values."""


def _intrinsic(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> object:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


# SDK operation -> the IAM actions it is authorised by. GetObject is pinned to the announced
# version when there is one, which S3 authorises as GetObjectVersion; HeadBucket as ListBucket.
ACTIONS = {
    "get_object": {"s3:GetObject", "s3:GetObjectVersion"},
    "head_object": {"s3:GetObject", "s3:GetObjectVersion"},
    "head_bucket": {"s3:ListBucket"},
    "list_objects_v2": {"s3:ListBucket"},
    "list_object_versions": {"s3:ListBucketVersions"},
    "get_bucket_versioning": {"s3:GetBucketVersioning"},
    "receive_message": {"sqs:ReceiveMessage"},
    "delete_message": {"sqs:DeleteMessage"},
    "delete_message_batch": {"sqs:DeleteMessage"},
    "change_message_visibility": {"sqs:ChangeMessageVisibility"},
    "change_message_visibility_batch": {"sqs:ChangeMessageVisibility"},
    "get_queue_attributes": {"sqs:GetQueueAttributes"},
    "send_message": {"sqs:SendMessage"},
    "send_message_batch": {"sqs:SendMessage"},
}
SDK_CALL = re.compile(r"\.(\w+)\(\)\s*(?://[^\n]*)?\s*\.(?:bucket|key|queue_url|entries|receipt_handle)\(")
SETTER = re.compile(r"\.(?:bucket|key|queue_url|entries|receipt_handle)\(")
# A macro that finishes a request: `macro_rules! name { ($request:expr …) => { $request.bucket(…`.
REQUEST_MACRO = re.compile(r"macro_rules!\s*(\w+)\s*\{\s*\(\$(\w+):expr[^)]*\)\s*=>\s*\{\s*\$\2\s*((?:\.[^;{}]*)?)")


def sdk_calls(text: str) -> list[str]:
    """The SDK operations a source file builds requests for, in either recognised form."""
    calls = SDK_CALL.findall(text)
    for name, _, body in REQUEST_MACRO.findall(text):
        if SETTER.match(body.lstrip()):
            calls += re.findall(rf"\b{name}!\(\s*[\w.]+\.(\w+)\(\)\s*,", text)
    return calls


def needed(src: Path, reconcile: bool = False) -> tuple[set[str], list[str]]:
    """The IAM actions the SDK calls need, and the operations this script cannot map: the
    worker's (the shared code), or reconcile's (its command's calls and the shared S3 calls)."""
    actions: set[str] = set()
    unknown = []
    for path in sorted(src.rglob("*.rs")):
        parts = path.relative_to(src).parts
        if "tests.rs" in parts:
            continue
        own = parts[:2] == ("commands", "reconcile")
        if "commands" in parts and not (reconcile and own):
            continue
        for operation in sdk_calls(path.read_text()):
            if operation not in ACTIONS:
                unknown.append(f"{path}: {operation}")
                continue
            wanted = ACTIONS[operation]
            if reconcile and not own:
                wanted = {a for a in wanted if a.startswith("s3:")}
            actions |= wanted
    return actions, unknown


def grants(statements: list) -> dict[str, tuple[str, frozenset[str]]]:
    out = {}
    for statement in statements:
        if isinstance(statement, list):  # !If [condition, statement, !Ref AWS::NoValue]
            statement = next(s for s in statement[1:] if isinstance(s, dict))
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        out[statement["Sid"]] = (statement["Effect"], frozenset(actions))
    return out


def main() -> int:
    args = sys.argv[1:]
    reconcile = "--reconcile" in args
    args = [a for a in args if a != "--reconcile"]
    stack_path, policy_path = args[:2]
    src = Path(args[3]) if len(args) > 3 and args[2] == "--src" else None
    stack = yaml.load(open(stack_path), Loader=CloudFormationLoader)
    policy = "ReconcilePolicy" if reconcile else "WorkerPolicy"
    in_stack = grants(stack["Resources"][policy]["Properties"]["PolicyDocument"]["Statement"])
    in_json = grants(json.load(open(policy_path))["Statement"])
    if in_stack != in_json:
        for sid in sorted(set(in_stack) | set(in_json)):
            if in_stack.get(sid) != in_json.get(sid):
                print(f"  {sid}: stack {in_stack.get(sid)} != json {in_json.get(sid)}")
        return 1
    granted = set().union(*(a for _, a in in_stack.values()))
    print(f"  {policy}: {len(in_stack)} statements, actions: {' '.join(sorted(granted))}")
    if src is not None:
        who = "reconcile's" if reconcile else "the worker's"
        wanted, unknown = needed(src, reconcile)
        for call in unknown:
            print(f"  an SDK call this check cannot map to IAM actions: {call}")
        if unknown or wanted != granted:
            print(f"  {who} calls need {sorted(wanted)}; missing {sorted(wanted - granted)}, "
                  f"unused {sorted(granted - wanted)}")
            return 1
        print(f"  = exactly what {who} SDK calls need")
    return 0


if __name__ == "__main__":
    sys.exit(main())
