#!/usr/bin/env python3
"""Checks that deploy/aws/iam-policy.json grants what the stack's WorkerPolicy grants: same
statements (by Sid), same actions, same effect; only the resource ARNs are examples there.

    policy_match.py STACK.yaml POLICY.json
"""

from __future__ import annotations

import json
import sys

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


def grants(statements: list[dict]) -> dict[str, tuple[str, frozenset[str]]]:
    out = {}
    for statement in statements:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        out[statement["Sid"]] = (statement["Effect"], frozenset(actions))
    return out


def main() -> int:
    stack_path, policy_path = sys.argv[1:3]
    stack = yaml.load(open(stack_path), Loader=CloudFormationLoader)
    in_stack = grants(stack["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]["Statement"])
    in_json = grants(json.load(open(policy_path))["Statement"])
    if in_stack != in_json:
        for sid in sorted(set(in_stack) | set(in_json)):
            if in_stack.get(sid) != in_json.get(sid):
                print(f"  {sid}: stack {in_stack.get(sid)} != json {in_json.get(sid)}")
        return 1
    actions = sorted(set().union(*(a for _, a in in_stack.values())))
    print(f"  {len(in_stack)} statements, actions: {' '.join(actions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
