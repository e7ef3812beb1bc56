"""S3 storage drivers on the test session's SeaweedFS, configured as a server configures them."""

from __future__ import annotations

import os
from unittest import mock

from storage_backends import open_storage
from storage_backends.s3 import S3Driver

from .seaweed import SeaweedS3


def s3_driver(seaweed: SeaweedS3, bucket: str, **options) -> S3Driver:
    """Configured as a server would be: through boto3's standard environment variables."""
    with mock.patch.dict(os.environ, seaweed.env):
        driver = open_storage(f"s3://{bucket}/some/prefix", addressing_style="path", **options)
    assert isinstance(driver, S3Driver)
    return driver
