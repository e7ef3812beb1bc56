"""Create pier's S3 bucket(s) if missing, once S3 answers: the one-shot step of deploy/compose.yaml.

Usage: python3 create-bucket.py BUCKET...  with PIER_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL)
and the AWS_* credentials in the environment. Exits 0 when every bucket exists.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

WAIT = 120.0  # seconds to wait for S3 to answer


def main(buckets: list[str]) -> int:
    if not buckets:
        print("usage: create-bucket.py BUCKET...", file=sys.stderr)
        return 2
    endpoint = os.environ.get("PIER_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + WAIT
    for bucket in buckets:
        while True:
            try:
                client.head_bucket(Bucket=bucket)
                print(f"bucket {bucket}: ready")
                break
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status != 404:
                    print(f"bucket {bucket}: {exc}", file=sys.stderr)
                    return 1
                try:
                    client.create_bucket(Bucket=bucket)
                    print(f"bucket {bucket}: created")
                except ClientError as create_error:
                    code = create_error.response.get("Error", {}).get("Code")
                    if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        print(f"bucket {bucket}: {create_error}", file=sys.stderr)
                        return 1
            except BotoCoreError as exc:  # not answering yet
                if time.monotonic() > deadline:
                    print(f"S3 at {endpoint} did not answer within {WAIT:.0f}s: {exc}", file=sys.stderr)
                    return 1
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
