"""A local S3 server (moto's, from the `moto[server]` dev dependency) for the embedded broker's
`s3://` storage, the Tansu storage that survives a broker restart (memory storage does not).

Tansu reads its S3 settings from the environment (the `object_store` crate's AmazonS3Builder):
`AWS_ENDPOINT` (required for a local server), `AWS_ALLOW_HTTP=true` (else a plain-http endpoint
is refused as a bad scheme), `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (anything: moto does
not check them) and `AWS_DEFAULT_REGION`; the bucket is the host part of `s3://BUCKET/` and
must exist before the broker starts."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from notaflow.launch.broker import EmbeddedBroker, free_port, port_open
from testkit.waiting import wait_for


class S3Server:
    """`python -m moto.server` on 127.0.0.1, a free port; its buckets live in its memory, so
    they outlast any number of broker restarts (not its own)."""

    def __init__(self, log_file: Path | None = None) -> None:
        self.port = free_port()
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> S3Server:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            return port_open("127.0.0.1", self.port)

        wait_for(up, timeout, 0.1)
        return self

    def create_bucket(self, name: str) -> None:
        # moto accepts unsigned requests: a plain PUT creates the bucket.
        r = httpx.put(f"{self.endpoint}/{name}", timeout=10)
        r.raise_for_status()

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        r = httpx.get(
            f"{self.endpoint}/{bucket}", params={"list-type": "2", "prefix": prefix}, timeout=10
        )
        r.raise_for_status()
        return [part.split("</Key>")[0] for part in r.text.split("<Key>")[1:]]

    def broker_env(self) -> dict[str, str]:
        """What Tansu needs in its environment to use this server."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "notaflow-test",
            "AWS_SECRET_ACCESS_KEY": "notaflow-test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def broker(self, bucket: str, port: int, log_file: Path | None = None) -> EmbeddedBroker:
        """An embedded broker storing in `bucket` (created here), restartable on `port`."""
        self.create_bucket(bucket)
        return EmbeddedBroker(
            port, storage=f"s3://{bucket}/", log_file=log_file, env=self.broker_env()
        )

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
