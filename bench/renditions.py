"""Benchmark: three MP4 renditions of one source as one job of three outputs
vs three one-output jobs run one after another, on the same encoder.

The source is a generated 1080p clip with film-grain noise (so decoding it
costs what a camera file's decoding costs, not a test pattern's); the
renditions are the catalogue presets mp4-360p, mp4-720p and mp4-1080p at
the x264 speed --encoder-preset. One encoder slot runs every job. Each way
runs A-B-B-A, repeated, so a drift in machine load weighs on both alike.

Prints both wall times (submit to FINISHED) and their ratio (target <= 0.75).

Usage: python bench/renditions.py [--clip-s 10] [--repeats 1] [--encoder-preset veryfast]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.app.local_system import LocalSystem, wait_for  # noqa: E402
from core.media import ffmpeg_path  # noqa: E402

PRESETS = ("mp4-360p", "mp4-720p", "mp4-1080p")
ENDED = {"FINISHED", "ERROR", "ABANDONED", "CANCELLED"}


def make_source(ffmpeg: str, path: Path, duration_s: float) -> None:
    subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={duration_s},"
                                         "noise=alls=12:allf=t",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={duration_s}",
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "12M", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", "-f", "mp4", str(path)], check=True, timeout=900)


def run_job(system: LocalSystem, body: dict) -> None:
    job_id = system.client.call("POST", "/job/submit/", body)["job_id"]

    def ended():
        job = system.client.job(job_id)
        return job if job["state"] in ENDED else None

    job = wait_for(ended, 1800, interval_s=0.1, what=f"job {job_id}")
    if job["state"] != "FINISHED":
        raise RuntimeError(f"job {job_id} ended {job['state']}: {job['state_details']}")


def one_job(system: LocalSystem, source: Path, out: Path, encoder_preset: str) -> float:
    started = time.monotonic()
    run_job(system, {"source_path": source.as_uri(), "outputs": [
        {"destination": (out / f"{name}.mp4").as_uri(),
         "job_options": {"preset": name, "encoder_preset": encoder_preset}}
        for name in PRESETS]})
    return time.monotonic() - started


def three_jobs(system: LocalSystem, source: Path, out: Path, encoder_preset: str) -> float:
    started = time.monotonic()
    for name in PRESETS:
        run_job(system, {"source_path": source.as_uri(),
                         "dest_path": (out / f"{name}.mp4").as_uri(),
                         "job_options": {"preset": name, "encoder_preset": encoder_preset}})
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-s", type=float, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="A-B-B-A rounds")
    parser.add_argument("--encoder-preset", default="veryfast")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nommer-bench-renditions-"))
    # One slot, kept warm: every job runs on the same encoder.
    env = {"NOMMER_MAX_NUM_EC2_INSTANCES": "1", "NOMMER_MIN_ENCODERS": "1",
           "NOMMER_FEEDERD_AUTO_SCALE_INTERVAL": "0.5"}
    try:
        with LocalSystem(root / "system", env) as system:
            source = system.media_dir / "in" / "source-1080p.mp4"
            source.parent.mkdir(parents=True)
            make_source(ffmpeg_path(system.settings), source, args.clip_s)
            fleet = system.fleet()
            fleet.launch(1)
            wait_for(lambda: any(e.state == "running" for e in fleet.list_encoders()), 30,
                     what="the encoder running")
            times = {"one": 0.0, "three": 0.0}
            for index, way in enumerate(("one", "three", "three", "one") * args.repeats):
                out = system.media_dir / f"out{index}"
                out.mkdir()
                measure = one_job if way == "one" else three_jobs
                times[way] += measure(system, source, out, args.encoder_preset)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rounds = 2 * args.repeats
    print(f"{', '.join(PRESETS)} of a {args.clip_s:g} s 1080p source (x264 {args.encoder_preset}), "
          f"one encoder, {rounds} times each way: one job of three outputs "
          f"{times['one'] / rounds:.1f} s, three one-output jobs one after another "
          f"{times['three'] / rounds:.1f} s, ratio {times['one'] / times['three']:.3f} "
          "(target <= 0.75)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
