"""Benchmark of the whole system on the embedded default, measured in one run.

Prints:
  dispatch latency   submit -> DOWNLOADING, p50/p95, with idle encoders running
                     (the original polled its queue every 60 s)
  notification       FINISHED written -> notification received, p50
  overhead ratio     wall time of N clips through the system with 2 encoder
                     slots / wall time of the same ffmpeg commands run
                     directly, 2 at a time (A-B-B-A, repeated)

Usage: python bench/embedded.py [--jobs 20] [--clip-s 5] [--samples 20] [--repeats 2]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import http.server
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.backends import open_backends  # noqa: E402
from core.jobs import JobState  # noqa: E402
from core.app.local_system import LocalSystem, wait_for  # noqa: E402
from core.media import ffmpeg_path, make_sample_clip, probe  # noqa: E402
from nommerd.ffmpeg import build_pass_argvs  # noqa: E402

SLOTS = 2
# Heavy enough that ffmpeg, not bookkeeping, is what a real job spends time on;
# one thread per encode so two encodes share the two cores evenly both ways.
ENCODE = [["c:v", "libx264"], ["preset", "fast"], ["b:v", "1500k"], ["threads", "1"],
          ["c:a", "aac"], ["b:a", "128k"]]
TINY = [["c:v", "libx264"], ["preset", "ultrafast"], ["c:a", "aac"]]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class NotificationReceiver:
    """Records when each job's FINISHED notification arrives."""

    def __init__(self):
        self.finished_at: dict[str, float] = {}
        received = self.finished_at

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                form = urllib.parse.parse_qs(
                    self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                if form.get("job_state") == ["FINISHED"]:
                    received[form["unique_id"][0]] = time.time()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def one_pass(outfile_options) -> list[dict]:
    return [{"infile_options": [], "outfile_options": outfile_options, "move_atom_to_front": True}]


def measure_latencies(system: LocalSystem, store, samples: int, receiver) -> tuple[list, list]:
    """Submit tiny jobs one at a time; return (dispatch s, notification s) lists."""
    src = system.media_dir / "tiny.mp4"
    make_sample_clip(ffmpeg_path(system.settings), str(src), duration_s=1, size="160x120")
    dispatch, notify = [], []
    for index in range(samples):
        out = system.media_dir / "lat" / f"{index}.mp4"
        started = time.time()
        job_id = system.client.submit(src.as_uri(), out.as_uri(), one_pass(TINY), receiver.url)
        job = wait_for(lambda: _moved(store, job_id), 30, interval_s=0.002, what="dispatch")
        dispatch.append(job - started)
        finished = wait_for(lambda: _finished(store, job_id), 60, interval_s=0.01, what="finish")
        wait_for(lambda: job_id in receiver.finished_at, 30, interval_s=0.01, what="notification")
        notify.append(receiver.finished_at[job_id] - finished.timestamp())
    return dispatch, notify


def _moved(store, job_id: str) -> float | None:
    return time.time() if store.get_job(job_id).state is not JobState.PENDING else None


def _finished(store, job_id: str) -> datetime | None:
    job = store.get_job(job_id)
    if job.state is JobState.FINISHED:
        return job.updated_at
    if job.is_terminal:
        raise RuntimeError(f"job {job_id} ended {job.state}: {job.state_details}")
    return None


def through_system(system: LocalSystem, store, clips: list[Path], out_folder: str) -> float:
    (clips[0].parent / out_folder).mkdir()
    started = time.monotonic()
    ids = [system.client.submit(c.as_uri(), (c.parent / out_folder / c.name).as_uri(),
                                one_pass(ENCODE))
           for c in clips]
    for job_id in ids:
        wait_for(lambda: _finished(store, job_id), 900, interval_s=0.05, what="batch")
    return time.monotonic() - started


def directly(ffmpeg: str, clips: list[Path], work: Path) -> float:
    """The argv nommerd would build for each clip, run 2 at a time."""
    demuxer = probe(ffmpeg, str(clips[0])).demuxer
    options = {"nommer": "ffmpeg", "options": one_pass(ENCODE)}
    argvs = [build_pass_argvs(ffmpeg, options, str(c), demuxer, str(work / c.name), str(work))[0]
             for c in clips]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(SLOTS) as pool:
        for result in pool.map(lambda a: subprocess.run(a, capture_output=True), argvs):
            result.check_returncode()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--clip-s", type=float, default=5)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="A-B-B-A rounds of the batch")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nommer-bench-"))
    # Both slots kept warm (min_encoders): the figures are the pipeline's
    # overhead, not the boot of an encoder the scaler stopped between runs.
    env = {"NOMMER_MAX_NUM_EC2_INSTANCES": str(SLOTS), "NOMMER_MIN_ENCODERS": str(SLOTS),
           "NOMMER_FEEDERD_AUTO_SCALE_INTERVAL": "0.5"}
    receiver = NotificationReceiver()
    try:
        with LocalSystem(root / "system", env) as system:
            backends = open_backends(system.settings)
            ffmpeg = ffmpeg_path(system.settings)
            fleet = system.fleet()
            fleet.launch(SLOTS)
            wait_for(lambda: sum(e.state == "running" for e in fleet.list_encoders()) == SLOTS,
                     30, what="encoders running")
            dispatch, notify = measure_latencies(system, backends.store, args.samples, receiver)

            clip = system.media_dir / "batch" / "clip0.mp4"
            clip.parent.mkdir(parents=True)
            make_sample_clip(ffmpeg, str(clip), duration_s=args.clip_s, size="1280x720")
            clips = [clip] + [clip.with_name(f"clip{i}.mp4") for i in range(1, args.jobs)]
            for copy in clips[1:]:
                shutil.copy(clip, copy)
            # A-B-B-A, repeated: each way runs as often early as late, so a
            # drift in machine load weighs on both alike.
            direct_s = system_s = 0.0
            order = ("direct", "system", "system", "direct") * args.repeats
            for index, way in enumerate(order):
                if way == "direct":
                    work = root / f"direct{index}"
                    work.mkdir()
                    direct_s += directly(ffmpeg, clips, work)
                else:
                    system_s += through_system(system, backends.store, clips, f"sys{index}")
            backends.close()
    finally:
        receiver.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"dispatch latency (submit -> DOWNLOADING, {len(dispatch)} jobs, idle encoders): "
          f"p50 {statistics.median(dispatch):.3f} s, p95 {percentile(dispatch, 0.95):.3f} s "
          f"(target p50 <= 0.2 s; the original polled every 60 s)")
    print(f"notification latency (FINISHED written -> received): "
          f"p50 {statistics.median(notify):.3f} s, p95 {percentile(notify, 0.95):.3f} s "
          f"(target p50 <= 1 s)")
    print(f"{args.jobs} x {args.clip_s:g} s 720p clips, {SLOTS} slots, "
          f"{2 * args.repeats} times each way (A-B-B-A x {args.repeats}): "
          f"through the system {system_s:.1f} s, ffmpeg directly {direct_s:.1f} s, "
          f"overhead ratio {system_s / direct_s:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
