"""`nommer`: run the system, try it with a sample clip, list presets, submit,
follow, list, cancel, retry and watch jobs, read the logs.

Exit codes: 0 done; 1 the job followed ended other than FINISHED; 2 wrong
usage or settings; 3 the API refused the request (unknown job, a job in
the wrong state, a missing or wrong token, bad input); 4 the API could not
be reached or failed (5xx); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from core import settings as settings_module
from core.errors import NommerError

TERMINAL = {"FINISHED", "ERROR", "ABANDONED", "CANCELLED"}

EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4


class ApiRefused(NommerError):
    """The API answered 4xx: the request was wrong, not the system."""


class ApiUnavailable(NommerError):
    """The API could not be reached, or answered 5xx."""

# The original's documented nommer name; clients keep sending it.
FFMPEG_NOMMER = "media_nommer.ec2nommerd.nommers.ffmpeg.FFmpegNommer"


class ApiClient:
    """A small client of the JSON API (what an application would write)."""

    def __init__(self, base_url: str, token: str = "", timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The API's answer to a request that succeeded. Raises ApiRefused on
        4xx, ApiUnavailable when unreachable or on 5xx, with the API's message."""
        status, answer = self._exchange(method, path, body)
        if status < 300 and answer.get("success"):
            return answer
        message = answer.get("message") or f"HTTP {status}"
        raise (ApiRefused if 400 <= status < 500 else ApiUnavailable)(message)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        return self._exchange(method, path, body)[1]

    def _exchange(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.load(exc)
            except ValueError:
                error = ApiRefused if 400 <= exc.code < 500 else ApiUnavailable
                raise error(f"{method} {path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiUnavailable(f"cannot reach the API at {self.base_url}: {exc}") from None

    def submit(self, source: str, destination: str, passes: list[dict],
               notify_url: str | None = None, notify_format: str | None = None) -> str:
        return self.submit_options(source, destination,
                                   {"nommer": FFMPEG_NOMMER, "options": passes}, notify_url,
                                   notify_format)

    def submit_options(self, source: str, destination: str, job_options: dict,
                       notify_url: str | None = None, notify_format: str | None = None) -> str:
        """Submit with `job_options` as they are (passes, or {"preset": NAME, ...});
        returns the job id. Raises NommerError with the API's message when refused."""
        return self._submit({"source_path": source, "dest_path": destination,
                             "job_options": job_options}, notify_url, notify_format)

    def submit_outputs(self, source: str, outputs: list[dict], notify_url: str | None = None,
                       notify_format: str | None = None) -> str:
        """Submit one job of several outputs ({"destination", "job_options" or
        "preset"}, ...); returns the job id. Raises NommerError when refused."""
        return self._submit({"source_path": source, "outputs": outputs}, notify_url,
                            notify_format)

    def _submit(self, body: dict, notify_url: str | None, notify_format: str | None) -> str:
        if notify_url:
            body["notify_url"] = notify_url
        if notify_format:
            body["notify_format"] = notify_format
        answer = self._request("POST", "/job/submit/", body)
        if not answer.get("success"):
            raise ApiRefused(f"job refused: {answer.get('message')}")
        return answer["job_id"]

    def presets(self) -> list[dict]:
        answer = self._request("GET", "/presets")
        if not answer.get("success"):
            raise NommerError(answer.get("message", "cannot list presets"))
        return answer["presets"]

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}")["job"]

    def jobs(self, state: str | None = None, limit: int = 50) -> list[dict]:
        """The newest `limit` jobs (of one state when given), newest first."""
        query = urllib.parse.urlencode({"limit": limit, **({"state": state} if state else {})})
        return self.call("GET", f"/jobs?{query}")["jobs"]

    def act(self, job_id: str, action: str) -> dict:
        """POST /jobs/<id>/<action> ("cancel", "retry"); returns the job as changed."""
        return self.call("POST", f"/jobs/{urllib.parse.quote(job_id, safe='')}/{action}")["job"]

    def health(self) -> dict:
        return self.call("GET", "/health")

    def cancel(self, job_id: str) -> dict:
        answer = self._request("POST", f"/jobs/{job_id}/cancel")
        if not answer.get("success"):
            raise NommerError(answer.get("message", "cancel refused"))
        return answer["job"]

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._request("GET", "/health").get("success"):
                    return
            except NommerError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def h264_passes(two_pass: bool = False) -> list[dict]:
    """Sensible H.264/AAC MP4 options in the original's pass format."""
    video = [["c:v", "libx264"], ["preset", "veryfast"], ["b:v", "800k"], ["pix_fmt", "yuv420p"]]
    if not two_pass:
        return [{"infile_options": [], "move_atom_to_front": True,
                 "outfile_options": video + [["c:a", "aac"], ["b:a", "128k"]]}]
    return [
        {"infile_options": [], "outfile_options": video + [["an", None], ["f", "mp4"]]},
        {"infile_options": [], "move_atom_to_front": True,
         "outfile_options": video + [["c:a", "aac"], ["b:a", "128k"]]},
    ]


def follow(client: ApiClient, job_id: str, timeout_s: float, out=sys.stdout) -> dict:
    """Print a progress line until the job ends; return the final job."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        job = client.job(job_id)
        line = f"{job['state']:<11} {job['progress']:3d}% " + "#" * (job["progress"] // 4)
        if line != last:
            out.write("\r" + line.ljust(40))
            out.flush()
            last = line
        if job["state"] in TERMINAL:
            out.write("\n")
            return job
        if time.monotonic() > deadline:
            out.write("\n")
            raise NommerError(f"job {job_id} still {job['state']} after {timeout_s:.0f} s")
        time.sleep(0.25)


def api_client(settings, args=None) -> ApiClient:
    """The API named by --api/--token when given, else by the settings."""
    url = getattr(args, "api", None) or f"http://{settings.api_host}:{settings.api_port}"
    token = getattr(args, "token", None)
    return ApiClient(url, settings.api_token if token is None else token)


def cmd_run(args, settings) -> int:
    from core.app.launcher import exec_supervisord
    from core.reach import listen_refusal

    # Refused here, in the foreground: under supervisord the API would only
    # crash-loop while this command seemed to run.
    refusal = listen_refusal(settings)
    if refusal:
        print(f"nommer run: {refusal}", file=sys.stderr)
        return 2

    print(f"media-nommer: API on http://{settings.api_host}:{settings.api_port}, "
          f"data in {settings.data_path.resolve()}; Ctrl-C stops everything", flush=True)
    exec_supervisord(settings, args.config)
    return 0  # not reached: supervisord replaced this process


def cmd_demo(args, settings) -> int:
    from core.media import ffmpeg_path, make_sample_clip

    media = settings.file_root_paths[0]
    sample = media / "samples" / "sample.mp4"
    if not sample.exists():
        sample.parent.mkdir(parents=True, exist_ok=True)
        print(f"making a 10 s sample clip: {sample}")
        make_sample_clip(ffmpeg_path(settings), str(sample), duration_s=10, size="640x360")
    destination = media / "output" / f"sample-{int(time.time())}.mp4"
    client = api_client(settings, args)
    client.wait_healthy(timeout_s=30)
    job_id = client.submit(sample.as_uri(), destination.as_uri(), h264_passes(args.two_pass))
    print(f"job {job_id} submitted")
    job = follow(client, job_id, timeout_s=args.timeout)
    if job["state"] != "FINISHED":
        print(f"job ended {job['state']}: {job['state_details']}", file=sys.stderr)
        return EXIT_JOB_FAILED
    print(f"done: {destination}")
    return 0


def as_uri(location: str) -> str:
    """`location` as a URI: a local path becomes an absolute file:// URI. A
    trailing '/' stays: it names a folder (an hls or sprite destination)."""
    if "://" in location:
        return location
    uri = Path(location).expanduser().resolve().as_uri()
    return uri + "/" if location.endswith(("/", os.sep)) and not uri.endswith("/") else uri


def preset_request(name: str, overrides: list[str]) -> dict:
    """{"preset": name, key: value, ...} from "key=value" overrides. A value
    that reads as JSON is sent as such (dash=true, ladder=[360,720],
    interval_s=5); anything else as text (video_bitrate=1500k). Raises
    NommerError."""
    job_options = {"preset": name}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NommerError(f"--set {item!r}: expected KEY=VALUE, e.g. video_bitrate=1500k")
        job_options[key.strip()] = _override_value(value.strip())
    return job_options


def _override_value(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(constant)  # NaN and Infinity are not JSON
    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def output_request(item: str) -> dict:
    """One more output from --output DEST=PRESET. Raises NommerError."""
    destination, sep, preset = item.rpartition("=")
    if not sep or not destination or not preset:
        raise NommerError(f"--output {item!r}: expected DEST=PRESET, e.g. "
                          "show/poster.jpg=poster-jpeg")
    return {"destination": as_uri(destination), "preset": preset}


def cmd_submit(args, settings) -> int:
    client = api_client(settings, args)
    source, destination = as_uri(args.source), as_uri(args.destination)
    if args.set and not args.preset:
        raise NommerError("--set changes a preset: give --preset NAME too")
    job_options = preset_request(args.preset, args.set) if args.preset else \
        {"nommer": FFMPEG_NOMMER, "options": h264_passes(args.two_pass)}
    if args.output:
        outputs = [{"destination": destination, "job_options": job_options},
                   *(output_request(item) for item in args.output)]
        job_id = client.submit_outputs(source, outputs, args.notify_url, args.notify_format)
    else:
        job_id = client.submit_options(source, destination, job_options, args.notify_url,
                                       args.notify_format)
    print(job_id)
    if args.follow:
        job = follow(client, job_id, timeout_s=args.timeout)
        return 0 if job["state"] == "FINISHED" else EXIT_JOB_FAILED
    return 0


def cmd_presets(args, settings) -> int:
    for preset in api_client(settings, args).presets():
        print(f"{preset['name']:<12} .{preset['extension']:<5} {preset['description']}")
        for key, override in preset["overrides"].items():
            print(f"{'':<19}{key}={override['default']}: {override['meaning']}")
    return 0


def _common_options() -> argparse.ArgumentParser:
    """--api and --token, taken by every command (before or after its name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default=argparse.SUPPRESS, metavar="URL",
                        help="the API's base URL (default: from api_host and api_port)")
    common.add_argument("--token", default=argparse.SUPPRESS,
                        help="bearer token (default: the api_token setting)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(prog="nommer", description=__doc__, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="nomconf.toml (default: $NOMMER_CONFIG, else ./nomconf.toml if present)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the whole system under supervisord (foreground)",
                   parents=[common])
    demo = sub.add_parser("demo", help="encode a generated sample clip and follow it to the end",
                          parents=[common])
    demo.add_argument("--two-pass", action="store_true")
    demo.add_argument("--timeout", type=float, default=300)
    sub.add_parser("presets", help="list the catalogue presets and their overrides",
                   parents=[common])
    submit = sub.add_parser("submit", help="submit a job: a catalogue preset, or H.264/AAC MP4",
                            parents=[common])
    submit.add_argument("source", help="a URI, or a local path (sent as a file:// URI)")
    submit.add_argument("destination", help="a URI, or a local path (sent as a file:// URI)")
    submit.add_argument("--preset", help="a catalogue preset (see `nommer presets`)")
    submit.add_argument("--output", action="append", default=[], metavar="DEST=PRESET",
                        help="one more output of the same job, from the same decode "
                             "(e.g. show/poster.jpg=poster-jpeg); repeatable")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset override, e.g. video_bitrate=1500k (repeatable)")
    submit.add_argument("--notify-url")
    submit.add_argument("--notify-format", choices=("form", "json"),
                        help="form (the original's, default) or json (signed; needs "
                             "webhook_secret on the feeder)")
    submit.add_argument("--two-pass", action="store_true")
    submit.add_argument("--follow", action="store_true")
    submit.add_argument("--timeout", type=float, default=3600)
    from core.app import jobs_cli  # it builds on this module's client

    jobs_cli.add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is None and Path("nomconf.toml").exists():
        args.config = "nomconf.toml"
    from core.app import jobs_cli

    try:
        settings = settings_module.load(args.config)
        handler = {"run": cmd_run, "demo": cmd_demo, "submit": cmd_submit,
                   "presets": cmd_presets, **jobs_cli.HANDLERS}[args.command]
        return handler(args, settings)
    except ApiRefused as exc:
        print(f"nommer: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ApiUnavailable as exc:
        print(f"nommer: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except NommerError as exc:
        print(f"nommer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Through the module's own name: run as a script, this file is __main__,
    # and the commands in core.app.jobs_cli raise core.app.cli's errors.
    from core.app.cli import main as module_main

    sys.exit(module_main())
