#!/usr/bin/env python3
"""Drives the seed Lambda handler the way the Lambda service would, in one warm process.

    driver.py --queue-url URL --expect N

Long-polls the SQS queue (as Lambda's SQS event source does), invokes
lambda_handler({"Records": [record]}, None) once per S3 record (the handler reads only
Records[0], so one event per invocation), and deletes the message once every invocation for it
returned. Prints one JSON line: invocations, bytes (ContentLength of each hashed object), the
handler's CPU seconds (user+sys of this process summed over the invocations only, via
getrusage; the webhook receiver is another process), the whole process's CPU, and the epoch time
of the last delete. The module is imported (cold start) before the clock starts.
"""

import argparse
import json
import os
import resource
import sys
import time

import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lambda_handler as seed  # noqa: E402  (prints "Loading function", creates the client)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--expect", type=int, required=True)
    args = parser.parse_args()

    sqs = boto3.client("sqs")
    s3 = seed.s3
    done = 0
    handler_cpu = 0.0
    nbytes = 0
    process_cpu_start = cpu()
    # Report readiness: the orchestrator starts feeding once it sees this line.
    print(json.dumps({"ready": True}), flush=True)
    while done < args.expect:
        got = sqs.receive_message(
            QueueUrl=args.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in got:
            body = json.loads(message["Body"])
            for record in body.get("Records", []):
                event = {"Records": [record]}
                before = cpu()
                seed.lambda_handler(event, None)
                handler_cpu += cpu() - before
                nbytes += int(record["s3"]["object"].get("size", 0))
                done += 1
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=message["ReceiptHandle"])
    end = time.time()
    print(
        json.dumps(
            {
                "invocations": done,
                "bytes": nbytes,
                "handler_cpu_s": handler_cpu,
                "process_cpu_s": cpu() - process_cpu_start,
                "end_epoch": end,
            }
        ),
        flush=True,
    )
    del s3


if __name__ == "__main__":
    main()
