"""scripts/kafka_consumer.py and scripts/make_token.py as real processes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
from kafka import KafkaProducer

ROOT = Path(__file__).resolve().parents[2]


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value).get(timeout=10)
    finally:
        producer.close()


class Proc:
    """A consumer process whose output lines are collected by reader threads."""

    def __init__(self, bootstrap: str, topic: str, *extra: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "kafka_consumer.py"), "--topic", topic, *extra],
            env={**os.environ, "KAFKA_BROKER": bootstrap},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        for stream, sink in ((self.popen.stdout, self.stdout), (self.popen.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream, sink: queue.Queue[str]) -> None:
        for line in stream:
            sink.put(line.rstrip("\n"))

    def lines(self, sink: queue.Queue[str], count: int, timeout: float = 20.0) -> list[str]:
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while len(lines) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                lines.append(sink.get(timeout=remaining))
            except queue.Empty:
                break
        return lines

    def interrupt(self) -> tuple[int, str]:
        self.popen.send_signal(signal.SIGINT)
        try:
            code = self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise
        time.sleep(0.2)  # let the reader threads drain
        rest = []
        while not self.stderr.empty():
            rest.append(self.stderr.get())
        return code, "\n".join(rest)


def test_from_beginning_prints_partition_offset_key_value_and_stops_on_ctrl_c(
    kafka_bootstrap, kafka_topic
):
    records = [(b"42", b'{"user_id": 42, "action_type": "LOGIN"}') for _ in range(3)]
    produce(kafka_bootstrap, kafka_topic, records)
    proc = Proc(kafka_bootstrap, kafka_topic, "--from-beginning")
    try:
        lines = proc.lines(proc.stdout, 3)
    finally:
        code, stderr = proc.interrupt()
    assert len(lines) == 3, (lines, stderr)
    partitions = {line.split()[0] for line in lines}
    assert len(partitions) == 1  # one key, one partition
    assert [line.split()[1] for line in lines] == ["offset=0", "offset=1", "offset=2"]
    for line in lines:
        assert line.startswith("partition=")
        assert ' key=42 value={"user_id": 42, "action_type": "LOGIN"}' in line
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "stopped after 3 message(s)" in stderr


def test_follows_from_the_end_by_default(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, [(b"1", b"old")])
    proc = Proc(kafka_bootstrap, kafka_topic)
    try:
        ready = proc.lines(proc.stderr, 1)
        assert ready and "from the end" in ready[0], ready
        produce(kafka_bootstrap, kafka_topic, [(b"7", b"new-1"), (b"7", b"new-2")])
        lines = proc.lines(proc.stdout, 2)
    finally:
        code, stderr = proc.interrupt()
    assert [line.split(" value=")[1] for line in lines] == ["new-1", "new-2"]
    assert all(" key=7 " in line for line in lines)
    assert code == 0 and "Traceback" not in stderr


def test_missing_topic_is_one_line_and_exit_2(kafka_bootstrap):
    proc = Proc(kafka_bootstrap, "no_such_topic_here")
    assert proc.popen.wait(timeout=30) == 2
    stderr = "\n".join(proc.lines(proc.stderr, 2, timeout=2))
    assert "does not exist" in stderr and "Traceback" not in stderr


def run_make_token(*args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    env["CC_STATE_DIR"] = "/nonexistent"
    if secret is not None:
        env["JWT_SECRET"] = secret
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_token.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_token_mints_user_and_service_tokens():
    secret = "k" * 48
    user = run_make_token("--user", "42", "--ttl", "120", secret=secret)
    assert user.returncode == 0, user.stderr
    claims = jwt.decode(user.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "42" and "role" not in claims
    assert 100 <= claims["exp"] - time.time() <= 121
    service = run_make_token("--service", "reporting", secret=secret)
    claims = jwt.decode(service.stdout.strip(), secret, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("reporting", "service")


def test_make_token_without_secret_names_it():
    result = run_make_token("--user", "1", secret=None)
    assert result.returncode == 2
    assert "JWT_SECRET is not set" in result.stderr
