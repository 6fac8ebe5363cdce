# The seed Lambda handler, verbatim from /work/shared/seed/aws-datapack-management.md
# ("Lambda Config", src/lambda/share_file_request.py). Only this comment block is added.
# The benchmark configures it the way AWS Lambda would: S3 endpoint, region and credentials from
# the environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_CONFIG_FILE with path-style addressing for
# moto), WEBHOOK_URL and WEBHOOK_SECRET_TOKEN set by bench/baseline/driver.py.
import hashlib
import json
import os
import urllib.parse

import boto3
import requests

print("Loading function")

s3 = boto3.client("s3")

# Config
webhook_url = os.environ.get("WEBHOOK_URL")
secret_token = os.environ.get("WEBHOOK_SECRET_TOKEN")


def analysis_key(key: str) -> str:
    arr = key.split("/")
    datapack_identifier = arr[0]
    display = arr[-1]
    path = "/" + "/".join(arr[1:-1])
    return (datapack_identifier, display, path)


def hash(streambody):
    sha256_hash = hashlib.sha256()
    for chunk in streambody.iter_chunks():
        sha256_hash.update(chunk)
    return sha256_hash.hexdigest()


def lambda_handler(event, context):
    bucket = event["Records"][0]["s3"]["bucket"]["name"]
    key = urllib.parse.unquote_plus(
        event["Records"][0]["s3"]["object"]["key"], encoding="utf-8"
    )
    eTag = event["Records"][0]["s3"]["object"]["eTag"]
    try:
        response = s3.get_object(Bucket=bucket, Key=key)

        headers = response["ResponseMetadata"]["HTTPHeaders"]
        if ("x-amz-meta-uploaded-by" in headers) and (
            headers["x-amz-meta-uploaded-by"] == "presigned-url"
        ):
            content_type = response["ContentType"]
            datapack_identifier, display, path = analysis_key(key)
            length = response["ContentLength"]

            requests.post(
                webhook_url,
                data=json.dumps(
                    {
                        "datapack_identifier": datapack_identifier,
                        "display": display,
                        "path": path,
                        "content_type": content_type,
                        "length": length,
                        "etag": eTag,
                        "secret_token": secret_token,
                        "sha256": hash(response["Body"]),
                        "submitter_name": headers["x-amz-meta-uploader-name"],
                        "submitter_email": headers["x-amz-meta-uploader-email"],
                        "_updated": str(response["LastModified"]),
                    }
                ),
            )
        return response["ContentType"]
    except Exception as e:
        print(
            "Error getting object {} from bucket {}. Make sure they exist and your bucket is in the same region as this function.".format(
                key, bucket
            )
        )
        raise e
