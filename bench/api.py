"""Benchmark of the API's read path: GET /jobs/<id> requests per second.

Two servers run side by side as separate processes, on the same server
(waitress, with the API's thread count):
  api    `python -m feeder.api` itself, on the embedded store, with the
         settings `nommer run` gives it (its request log going to a file as
         under supervisord)
  bare   a bare Bottle app answering the same JSON body from a dict
The load comes from client processes (so they never hold a server's GIL),
each keeping one keep-alive connection (urllib3) busy. Each server is loaded
in turn, A-B-B-A, repeated; the figures are the medians.

Prints both rates and their ratio (api / bare), then the same while the job
is being written (each write ends the answers the API keeps, so the reads
that follow query the store).

Usage: python bench/api.py [--seconds 0.5] [--rounds 12] [--clients 4] [--threads N]
                           [--writes-per-s 20]
       python bench/api.py --profile   (cProfile of the API's request path, in-process)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import urllib3

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from core.settings import Settings  # noqa: E402

def submission(media: Path) -> dict:
    """A job as clients send one: files under the media folder, a notify URL, a preset."""
    media.mkdir(parents=True, exist_ok=True)
    (media / "clip.mp4").write_bytes(b"")
    return {"source_path": (media / "clip.mp4").as_uri(),
            "dest_path": (media / "out" / "clip.mp4").as_uri(),
            "notify_url": "http://127.0.0.1:9/done/", "job_options": {"preset": "mp4-720p"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_bare(port: int, threads: int, body_file: str) -> None:
    """The comparison: Bottle on waitress returning a dict (Bottle's own JSON)."""
    import bottle
    import waitress

    answer = json.loads(Path(body_file).read_text())
    app = bottle.Bottle()

    @app.get("/jobs/<job_id>")
    def job(job_id):
        return answer

    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, ident="bare",
                   _quiet=True)


def _client(urls: dict[str, str], commands, results) -> None:
    """One keep-alive connection to each server; on ("name", seconds), loads
    that server for so long and answers how many requests it got done."""
    pools, paths = {}, {}
    for name, url in urls.items():
        parts = urllib3.util.parse_url(url)
        pools[name] = urllib3.HTTPConnectionPool(parts.host, parts.port, maxsize=1,
                                                 retries=False)
        paths[name] = parts.request_uri
        for _ in range(20):  # warm: the connection opened, the server's caches filled
            pools[name].request("GET", paths[name]).data
    results.put("ready")
    for name, seconds in iter(commands.get, None):
        pool, path = pools[name], paths[name]
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            response = pool.request("GET", path)
            if response.status != 200:
                raise RuntimeError(f"{urls[name]}: HTTP {response.status}")
            count += 1
        results.put(count)


class Load:
    """`clients` processes, each with a keep-alive connection to every server."""

    def __init__(self, urls: dict[str, str], clients: int):
        context = multiprocessing.get_context("fork")
        self._commands = [context.Queue() for _ in range(clients)]
        self._results = context.Queue()
        self._workers = [context.Process(target=_client, args=(urls, commands, self._results),
                                         daemon=True)
                         for commands in self._commands]
        for worker in self._workers:
            worker.start()
        for _ in self._workers:
            if self._results.get(timeout=60) != "ready":
                raise RuntimeError("a client failed to start")

    def rate(self, name: str, seconds: float) -> float:
        """Requests per second all clients together get from server `name`."""
        for commands in self._commands:
            commands.put((name, seconds))
        return sum(self._results.get(timeout=seconds + 60) for _ in self._workers) / seconds

    def close(self) -> None:
        for commands in self._commands:
            commands.put(None)
        for worker in self._workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time process `pid` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            urllib3.request("GET", url, timeout=2, retries=False)
            return
        except urllib3.exceptions.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(argv, cwd=str(PROJECT_DIR), env=env, stdout=out,
                                stderr=subprocess.STDOUT)


class Writer:
    """While on, rewrites the job's progress `per_s` times a second through
    the store, as encoders do: each write ends what the API keeps."""

    def __init__(self, data_dir: Path, job_id: str, per_s: float):
        from core.backends import open_backends

        self._backends = open_backends(Settings(data_dir=str(data_dir)))
        self._job_id, self._interval_s = job_id, 1 / per_s
        self._on = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def writing(self, on: bool) -> None:
        (self._on.set if on else self._on.clear)()

    def _run(self) -> None:
        store = self._backends.store
        while not self._stop.is_set():
            if not self._on.wait(0.1):
                continue
            job = store.get_job(self._job_id)
            store.update_job(dataclasses.replace(job, progress=(job.progress + 1) % 100),
                             job.version)
            time.sleep(self._interval_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._backends.close()


def measure(load: Load, pids: dict[str, int], pairs: list[tuple[str, str]], rounds: int,
            seconds: float, before_turn) -> dict[str, dict]:
    """A-B-B-A rounds of each (api, bare) pair, in short turns: each server
    runs as often early as late, so a drift in the machine's load (other
    work on it) weighs on both alike. Per name: turn rates, CPU s, requests."""
    figures = {name: {"rates": [], "cpu_s": 0.0, "requests": 0.0}
               for pair in pairs for name in pair}
    for api, bare in pairs:
        for name in (bare, api, api, bare) * rounds:
            before_turn(name)
            server = name.split("+")[0]
            cpu_before = cpu_seconds(pids[server])
            rate = load.rate(server, seconds)
            figures[name]["cpu_s"] += cpu_seconds(pids[server]) - cpu_before
            figures[name]["requests"] += rate * seconds
            figures[name]["rates"].append(rate)
    return figures


def report(figures: dict[str, dict], api: str, bare: str, target: str) -> None:
    for name in (api, bare):
        rates = figures[name]["rates"]
        cpu_us = figures[name]["cpu_s"] / figures[name]["requests"] * 1e6
        print(f"  {name:12} {statistics.median(rates):6.0f} requests/s (median; turns from "
              f"{min(rates):.0f} to {max(rates):.0f}), server CPU {cpu_us:.0f} us per request")
    # Each round's own ratio: a drift in the machine's load between rounds
    # moves both of a round's figures alike.
    api_rates, bare_rates = figures[api]["rates"], figures[bare]["rates"]
    ratio = statistics.median(sum(api_rates[i:i + 2]) / sum(bare_rates[i:i + 2])
                              for i in range(0, len(api_rates), 2))
    print(f"  ratio {ratio:.2f} {api} / {bare}, the median of the rounds'{target}")


def run(args) -> int:
    root = Path(tempfile.mkdtemp(prefix="nommer-bench-api-"))
    threads = args.threads or Settings().api_threads
    api_port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMMER_")}
    env.update(PYTHONPATH=str(PROJECT_DIR), NOMMER_DATA_DIR=str(root / "var"),
               NOMMER_API_PORT=str(api_port), NOMMER_API_THREADS=str(threads))
    processes, writer, load = [], None, None
    try:
        api = start([sys.executable, "-m", "feeder.api"], env, root / "api.log")
        processes.append(api)
        wait_up(f"http://127.0.0.1:{api_port}/health", api, root / "api.log")
        submitted = urllib3.request("POST", f"http://127.0.0.1:{api_port}/job/submit/",
                                    json=submission(root / "var" / "media")).json()
        assert submitted.get("success"), submitted
        job_id = submitted["job_id"]
        api_url = f"http://127.0.0.1:{api_port}/jobs/{job_id}"
        (root / "body.json").write_text(json.dumps(urllib3.request("GET", api_url).json()))
        bare = start([sys.executable, __file__, "--serve-bare", str(bare_port), str(threads),
                      str(root / "body.json")], env, root / "bare.log")
        processes.append(bare)
        bare_url = f"http://127.0.0.1:{bare_port}/jobs/{job_id}"
        wait_up(bare_url, bare, root / "bare.log")

        load = Load({"api": api_url, "bare": bare_url}, args.clients)
        pairs = [("api", "bare")]
        if args.writes_per_s:
            writer = Writer(root / "var", job_id, args.writes_per_s)
            pairs.append(("api+writes", "bare+writes"))

        def before_turn(name: str) -> None:
            if writer:
                writer.writing(name == "api+writes")

        figures = measure(load, {"api": api.pid, "bare": bare.pid}, pairs, args.rounds,
                          args.seconds, before_turn)
    finally:
        for closing in (load, writer):
            if closing:
                closing.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(root, ignore_errors=True)

    print(f"GET /jobs/<id>, waitress with {threads} threads, {args.clients} keep-alive "
          f"clients, A-B-B-A x {args.rounds} turns of {args.seconds:g} s")
    report(figures, "api", "bare", " (target >= 0.80)")
    if args.writes_per_s:
        print(f"the same while the job is written {args.writes_per_s:g} times a second "
              "(each write ends what the API keeps):")
        report(figures, "api+writes", "bare+writes", "")
    return 0


def profile(args) -> int:
    """cProfile of GET /jobs/<id> through the app's WSGI callable (no sockets)."""
    import cProfile
    import logging
    import pstats
    import wsgiref.util

    from core.backends import open_backends
    from core.presets import options_to_run
    from feeder.api import make_app

    from core.log_batching import log_to_stderr_in_batches

    root = Path(tempfile.mkdtemp(prefix="nommer-bench-api-"))
    # As the API logs, into a buffer flushed now and then: here to /dev/null.
    sys.stderr = open(os.devnull, "w")
    log_to_stderr_in_batches(logging.INFO, "%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings(data_dir=str(root / "var"))
        backends = open_backends(settings, interactive=True)
        app = make_app(backends, settings)
        sent = submission(settings.data_path / "media")
        job = backends.jobs.submit(sent["source_path"], sent["dest_path"],
                                   options_to_run(sent["job_options"]), sent["notify_url"],
                                   sent_options=sent["job_options"])

        def one():
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/jobs/{job.id}",
                       "REMOTE_ADDR": "127.0.0.1"}
            wsgiref.util.setup_testing_defaults(environ)
            b"".join(app(environ, lambda *start: None))

        for _ in range(200):
            one()
        profiler = cProfile.Profile()
        profiler.enable()
        started = time.perf_counter()
        for _ in range(args.requests):
            one()
        elapsed = time.perf_counter() - started
        profiler.disable()
        backends.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.requests} requests, {elapsed / args.requests * 1e6:.0f} us each "
          "under the profiler")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(40)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="of each turn")
    parser.add_argument("--rounds", type=int, default=12, help="A-B-B-A rounds")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--writes-per-s", type=float, default=20,
                        help="job writes a second in the second measure (0: skip it)")
    parser.add_argument("--threads", type=int, default=0,
                        help="waitress threads (default: the api_threads setting's default)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--requests", type=int, default=5000, help="with --profile")
    parser.add_argument("--serve-bare", nargs=3, metavar=("PORT", "THREADS", "BODY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        port, threads, body_file = args.serve_bare
        serve_bare(int(port), int(threads), body_file)
        return 0
    if args.profile:
        return profile(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
