"""Checks that run on a feeder host, with the Python of the release they check:

    python -m provisioning.hostcheck config --nomconf FILE --supervisord FILE
    python -m provisioning.hostcheck health --nomconf FILE --socket SOCK
        [--programs api,scheduler,scaler] [--timeout-s 30] [--settle-s 3]

`config` loads the settings file the way the daemons will (unknown keys,
wrong types and values are errors) and parses supervisord.conf the way
supervisord will. `health` waits until every program named is RUNNING in
the supervisord behind SOCK and has been for --settle-s seconds (a program
that dies at start is RUNNING for a moment only), and the API that the
settings describe answers success on /health. Exit status 0 when all is
well, 1 with the reason on stderr otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client

from supervisor.options import ServerOptions

from core.errors import ConfigError
from core.fleets.supervisor import supervisor_proxy
from core.settings import Settings, load

# Addresses that mean "every interface": the API is then reached on loopback.
_ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
_POLL_INTERVAL_S = 0.5
_REQUEST_TIMEOUT_S = 5.0
# Longer than the feeder programs' startsecs (1 s): a program that exits at
# start has left RUNNING by then.
DEFAULT_SETTLE_S = 3.0


def check_settings(nomconf: str) -> Settings:
    """The settings in `nomconf` alone (no environment). Raises ConfigError."""
    return load(nomconf, environ={})


def check_supervisord(conf: str) -> None:
    """Raise ConfigError when supervisord would refuse `conf` (including
    folders it writes to that do not exist, or a user that does not)."""
    options = ServerOptions()
    messages = io.StringIO()
    # realize() reports a bad file through usage(): a message on the
    # options' stderr, then SystemExit.
    options.stderr = options.stdout = messages
    try:
        options.realize(args=["--configuration", conf], progname="supervisord")
    except SystemExit:
        said = messages.getvalue().replace("For help, use supervisord -h", "").strip()
        raise ConfigError(f"{conf}: {said}") from None
    except ValueError as exc:
        raise ConfigError(f"{conf}: {exc}") from None


def health_url(settings: Settings) -> str:
    host = _ANY_ADDRESS.get(settings.api_host, settings.api_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}/health"


def ask_health(url: str) -> tuple[bool, str]:
    """(healthy, what the API said or why it could not be asked)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=_REQUEST_TIMEOUT_S) as response:
            body = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        exc.close()
        return False, f"HTTP {exc.code}: {body.strip()[:300]}"
    except OSError as exc:  # URLError, refused, reset, timeout
        return False, str(getattr(exc, "reason", exc))
    try:
        answer = json.loads(body)
    except ValueError:
        return False, f"not JSON: {body.strip()[:300]}"
    return bool(isinstance(answer, dict) and answer.get("success")), body.strip()


def program_states(socket: str, programs: list[str]) -> dict[str, tuple[str, float]]:
    """{program: (state name, seconds in that state)} from the supervisord
    listening on `socket`; a program it does not know is "MISSING"."""
    try:
        infos = supervisor_proxy(f"unix://{socket}", _REQUEST_TIMEOUT_S) \
            .supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        return {program: (f"UNKNOWN (supervisord does not answer: {exc})", 0.0)
                for program in programs}
    by_name = {info["name"]: info for info in infos}
    states = {}
    for program in programs:
        info = by_name.get(program)
        if info is None:
            states[program] = ("MISSING", 0.0)
        else:
            states[program] = (info["statename"], max(0.0, info["now"] - info["start"]))
    return states


def not_settled(states: dict[str, tuple[str, float]], settle_s: float) -> list[str]:
    """"program STATE" for each program not RUNNING for `settle_s` yet."""
    return [f"{program} {state}" + (f" for {age:.0f} s" if state == "RUNNING" else "")
            for program, (state, age) in states.items()
            if state != "RUNNING" or age < settle_s]


def wait_healthy(url: str, timeout_s: float, socket: str | None = None,
                 programs: list[str] = (), settle_s: float = DEFAULT_SETTLE_S) -> str:
    """The healthy answer of `url` once every one of `programs` has been
    RUNNING for `settle_s`; asked every half second for up to `timeout_s`.
    Raises ConfigError with what is wrong when time runs out, or at once
    when a program is FATAL (supervisord gave up on it)."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        waiting = not_settled(program_states(socket, programs), settle_s) if programs else []
        healthy, said = ask_health(url)
        if healthy and not waiting:
            return said
        if any(" FATAL" in item for item in waiting) or time.monotonic() >= deadline:
            problems = ([f"programs not running: {', '.join(waiting)}"] if waiting else [])
            if not healthy:
                problems.append(f"{url} did not answer success: {said}")
            waited = time.monotonic() - started
            raise ConfigError(f"not healthy after {waited:.0f} s: " + "; ".join(problems))
        time.sleep(_POLL_INTERVAL_S)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m provisioning.hostcheck",
                                     description="Check a feeder host's configuration and API.")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="validate nomconf.toml and supervisord.conf")
    config.add_argument("--nomconf", required=True)
    config.add_argument("--supervisord", required=True)
    health = sub.add_parser("health", help="wait for the API's /health to answer success")
    health.add_argument("--nomconf", required=True)
    health.add_argument("--socket", help="supervisord's socket")
    health.add_argument("--programs", default="",
                        help="comma-separated programs that must be RUNNING (needs --socket)")
    health.add_argument("--timeout-s", type=float, default=30.0)
    health.add_argument("--settle-s", type=float, default=DEFAULT_SETTLE_S,
                        help="seconds each program must have been RUNNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = check_settings(args.nomconf)
        if args.command == "config":
            check_supervisord(args.supervisord)
            print("configuration is valid")
        else:
            programs = [name for name in args.programs.split(",") if name]
            if programs and not args.socket:
                print("hostcheck: --programs needs --socket", file=sys.stderr)
                return 2
            print(wait_healthy(health_url(settings), args.timeout_s, args.socket, programs,
                               args.settle_s))
    except ConfigError as exc:
        print(f"hostcheck: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
