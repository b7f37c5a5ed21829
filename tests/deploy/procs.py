"""Real `avl` service processes for the deployment tests: started with an environment like
the one a systemd unit or a compose service gives them, logs to a file, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

AVL = str(Path(sys.executable).parent / "avl")


class AvlProcess:
    def __init__(self, name: str, command: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def environment(cls, **settings: str) -> dict[str, str]:
        """This process's environment without any AVL_* it inherited, plus ``settings``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVL_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(settings)
        return env

    def start(self) -> AvlProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([AVL, self.command], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {needle!r} in its log within {timeout_s} s:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """metric sample name -> {sorted labels: value} from a Prometheus text endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(samples: dict[tuple[tuple[str, str], ...], float], **match: str) -> float:
    return sum(v for labels, v in samples.items() if all(dict(labels).get(k) == want for k, want in match.items()))
