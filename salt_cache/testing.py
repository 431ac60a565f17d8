"""A real S3 server on 127.0.0.1 for tests and benchmarks: moto's server mode in a child process.

    with local_s3(buckets=["salt"]) as endpoint:   # sets AWS_ENDPOINT_URL and test keys
        ...                                        # s3://salt/... works in this process and its children

Not a mock client: requests go over HTTP to a server that speaks the S3 API (conditional writes,
byte ranges, listings), so the code under test runs exactly as it does against AWS or MinIO.
moto is a dev dependency (`pip install -e ".[dev]"`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

from salt_cache.errors import SaltCacheError

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_s3(buckets=("salt",), set_env: bool = True):
    """Start moto's S3 server on a free port of 127.0.0.1, create `buckets`, yield its endpoint
    URL; with `set_env` the standard AWS variables point at it for the duration (restored after).
    The server is stopped on exit."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise SaltCacheError("moto is not installed: pip install -e \".[dev]\" (a local S3 server for tests)") from None
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in S3_ENV}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SaltCacheError(f"moto server did not start on port {port}") from None
                time.sleep(0.05)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        if set_env:
            os.environ.update(env)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                              region_name="us-east-1")
        for b in buckets:
            client.create_bucket(Bucket=b)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if set_env:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
