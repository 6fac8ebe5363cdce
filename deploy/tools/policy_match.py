#!/usr/bin/env python3
"""Checks that deploy/aws/iam-policy.json grants what the stack's WorkerPolicy grants: same
statements (by Sid), same actions, same effect; only the resource ARNs are examples there.
With --src, also that WorkerPolicy's actions are exactly those the worker's AWS SDK calls need
(every `.operation()` call under the source tree, the operator commands dlq and presign left
out); an operation this script does not know fails, so a new call cannot go unnoticed. A call
is recognised as the SDK's builder: `.operation()` followed by its first parameter setter
(`.bucket(`, `.key(`, `.queue_url(`, `.entries(`, `.receipt_handle(`).

    policy_match.py STACK.yaml POLICY.json [--src DIR]
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


def needed_by_worker(src: Path) -> tuple[set[str], list[str]]:
    """The IAM actions the worker's SDK calls need, and the operations this script cannot map."""
    actions: set[str] = set()
    unknown = []
    for path in sorted(src.rglob("*.rs")):
        if {"commands", "tests.rs"} & set(path.parts):
            continue
        for operation in SDK_CALL.findall(path.read_text()):
            if operation in ACTIONS:
                actions |= ACTIONS[operation]
            else:
                unknown.append(f"{path}: {operation}")
    return actions, unknown


def grants(statements: list[dict]) -> dict[str, tuple[str, frozenset[str]]]:
    out = {}
    for statement in statements:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        out[statement["Sid"]] = (statement["Effect"], frozenset(actions))
    return out


def main() -> int:
    stack_path, policy_path = sys.argv[1:3]
    src = Path(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--src" else None
    stack = yaml.load(open(stack_path), Loader=CloudFormationLoader)
    in_stack = grants(stack["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]["Statement"])
    in_json = grants(json.load(open(policy_path))["Statement"])
    if in_stack != in_json:
        for sid in sorted(set(in_stack) | set(in_json)):
            if in_stack.get(sid) != in_json.get(sid):
                print(f"  {sid}: stack {in_stack.get(sid)} != json {in_json.get(sid)}")
        return 1
    granted = set().union(*(a for _, a in in_stack.values()))
    print(f"  {len(in_stack)} statements, actions: {' '.join(sorted(granted))}")
    if src is not None:
        needed, unknown = needed_by_worker(src)
        for call in unknown:
            print(f"  an SDK call this check cannot map to IAM actions: {call}")
        if unknown or needed != granted:
            print(f"  the worker's calls need {sorted(needed)}; missing {sorted(needed - granted)}, "
                  f"unused {sorted(granted - needed)}")
            return 1
        print("  = exactly what the worker's SDK calls need")
    return 0


if __name__ == "__main__":
    sys.exit(main())
