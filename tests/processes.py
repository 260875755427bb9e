"""Process helpers the tests share: stopping what a test started, and
looking at live processes through /proc."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator


def stop_process(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM `process`, then SIGKILL if it has not exited within `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)


def live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live, non-zombie process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state; zombies are already dead.
        if fields[0] != "Z":
            yield int(entry), int(fields[1]), int(fields[2])
