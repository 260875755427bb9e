"""Benchmark of the AWS path against an emulated cloud this script starts
(a moto server; with --store simpledb also the SimpleDB test server, behind
the tests' one-endpoint proxy). Needs the test extras (moto).

Prints, beside the embedded benchmark's targets:
  dispatch latency   submit -> DOWNLOADING, p50/p95, with idle encoders
                     long-polling SQS (the original polled every 60 s)
  overhead ratio     wall time of N clips s3:// -> s3:// through the system
                     with 2 encoders / wall time of the same ffmpeg commands
                     run directly on local files, 2 at a time (each way run
                     twice, A-B-B-A)

The api and two nommerd processes run with backend "aws"; the encoders are
started with --node-id, as booted instances would be (no scaler, no EC2).

Usage: python bench/aws.py [--jobs 20] [--clip-s 5] [--samples 20] [--store dynamodb] [--keep]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from aws_fixtures import DUMMY_AWS_ENV, MotoServer  # noqa: E402
from bench.embedded import (ENCODE, SLOTS, TINY, _finished, _moved, directly, one_pass,  # noqa: E402
                            percentile)
from core.aws import client as aws_client  # noqa: E402
from core.backends import open_backends  # noqa: E402
from core.app.cli import ApiClient  # noqa: E402
from core.app.local_system import free_port, wait_for  # noqa: E402
from core.media import ffmpeg_path, make_sample_clip  # noqa: E402
from core.settings import load  # noqa: E402

BUCKET = "nommer-bench"
DISPATCH_TARGET_S = 1.0
OVERHEAD_TARGET = 1.10


@contextlib.contextmanager
def emulated_cloud(store: str, workdir: Path):
    """The endpoint URL of a moto server (and for SimpleDB, the SimpleDB test
    server behind the one-endpoint proxy), stopped on exit."""
    os.environ.update({k: v for k, v in DUMMY_AWS_ENV.items() if k not in os.environ})
    moto = MotoServer(str(workdir / "moto.log"))
    try:
        if store != "simpledb":
            yield moto.endpoint_url
            return
        from fault_proxy import FaultProxy
        from simpledb_server import SimpleDBServer

        sdb = SimpleDBServer(str(workdir / "simpledb.log"))
        try:
            with FaultProxy(moto.endpoint_url, sdb.endpoint_url) as proxy:
                yield proxy.url
        finally:
            sdb.stop()
    finally:
        moto.stop()


class Processes:
    """The api and the encoders, as real processes; stopped (by PID) on exit."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.env = env
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str]) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", *argv], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def measure_dispatch(api: ApiClient, store, source: str, samples: int) -> list[float]:
    """Submit tiny jobs one at a time; seconds from submit to DOWNLOADING."""
    dispatch = []
    for index in range(samples):
        started = time.time()
        job_id = api.submit(source, f"s3://{BUCKET}/lat/{index}.mp4", one_pass(TINY))
        dispatch.append(wait_for(lambda: _moved(store, job_id), 30, interval_s=0.002,
                                 what="dispatch") - started)
        wait_for(lambda: _finished(store, job_id), 60, interval_s=0.01, what="finish")
    return dispatch


def through_system(api: ApiClient, store, sources: list[str], out_folder: str) -> float:
    started = time.monotonic()
    ids = [api.submit(source, source.replace("/in/", f"/{out_folder}/"), one_pass(ENCODE))
           for source in sources]
    for job_id in ids:
        wait_for(lambda: _finished(store, job_id), 900, interval_s=0.05, what="batch")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--clip-s", type=float, default=5)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--store", choices=("dynamodb", "simpledb"), default="dynamodb")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder with the processes' logs")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nommer-bench-aws-"))
    try:
        with emulated_cloud(args.store, root) as endpoint_url:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
            env.update(NOMMER_BACKEND="aws", NOMMER_AWS_ENDPOINT_URL=endpoint_url,
                       NOMMER_AWS_STORE=args.store, NOMMER_API_PORT=str(port),
                       NOMMER_DATA_DIR=str(root / "var"),
                       # No metadata service here: the first Spot check is after the run.
                       NOMMER_SPOT_CHECK_INTERVAL_S="86400")
            settings = load(environ=env)
            ffmpeg = ffmpeg_path(settings)
            s3 = aws_client(settings, "s3")
            s3.create_bucket(Bucket=BUCKET)
            backends = open_backends(settings)  # creates the tables or domains
            with Processes(env, root) as processes:
                processes.start("api", ["feeder.api"])
                for n in range(SLOTS):
                    processes.start(f"nommerd{n}", ["nommerd.daemon", "--node-id", f"i-bench{n}"])
                api = ApiClient(f"http://127.0.0.1:{port}", timeout_s=30)
                api.wait_healthy(60)

                tiny = root / "tiny.mp4"
                make_sample_clip(ffmpeg, str(tiny), duration_s=1, size="160x120")
                s3.upload_file(str(tiny), BUCKET, "tiny.mp4")
                dispatch = measure_dispatch(api, backends.store, f"s3://{BUCKET}/tiny.mp4",
                                            args.samples)

                clips = [root / "batch" / f"clip{i}.mp4" for i in range(args.jobs)]
                clips[0].parent.mkdir()
                make_sample_clip(ffmpeg, str(clips[0]), duration_s=args.clip_s, size="1280x720")
                for clip in clips:
                    if clip != clips[0]:
                        shutil.copy(clips[0], clip)
                    s3.upload_file(str(clip), BUCKET, f"in/{clip.name}")
                sources = [f"s3://{BUCKET}/in/{c.name}" for c in clips]
                # A-B-B-A, as bench/embedded.py: a drift in machine load
                # weighs on both ways alike.
                direct_s = system_s = 0.0
                for order, way in enumerate(("direct", "system", "system", "direct")):
                    if way == "direct":
                        (root / f"direct{order}").mkdir()
                        direct_s += directly(ffmpeg, clips, root / f"direct{order}")
                    else:
                        system_s += through_system(api, backends.store, sources, f"sys{order}")
            backends.close()
            s3.close()
    finally:
        if args.keep:
            print(f"work folder and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    p50, p95 = statistics.median(dispatch), percentile(dispatch, 0.95)
    ratio = system_s / direct_s
    rows = [
        ("dispatch p50 (submit -> DOWNLOADING)", f"{p50:.3f} s", f"<= {DISPATCH_TARGET_S:g} s",
         f"{p50 / DISPATCH_TARGET_S:.2f}"),
        ("dispatch p95", f"{p95:.3f} s", "", ""),
        (f"{args.jobs} x {args.clip_s:g} s 720p, {SLOTS} encoders, twice: system",
         f"{system_s:.1f} s", "", ""),
        ("same ffmpeg commands directly, twice (A-B-B-A)", f"{direct_s:.1f} s", "", ""),
        ("overhead ratio (system / direct)", f"{ratio:.3f}", f"<= {OVERHEAD_TARGET:.2f}",
         f"{ratio / OVERHEAD_TARGET:.2f}"),
    ]
    print(f"AWS path on the emulated cloud (store: {args.store}, {len(dispatch)} dispatch samples)")
    print(f"{'figure':<46} {'measured':>10} {'target':>10} {'of target':>10}")
    for name, value, target, share in rows:
        print(f"{name:<46} {value:>10} {target:>10} {share:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
