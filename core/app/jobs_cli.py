"""`nommer` commands that look at and steer running jobs: status, list,
cancel, retry, notify, watch, and logs (the supervisord logs of this machine)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core.app.cli import api_client
from core.app.launcher import run_dir
from core.errors import NommerError

STATES = ("PENDING", "DOWNLOADING", "ENCODING", "UPLOADING", "FINISHED", "ERROR",
          "ABANDONED", "CANCELLED")
# What `watch` shows: jobs not yet ended.
WATCHED_STATES = ("PENDING", "DOWNLOADING", "ENCODING", "UPLOADING")


def job_text(job: dict) -> str:
    """One job as readable lines (the fields a person asks about first)."""
    lines = [f"job      {job['id']}",
             f"state    {job['state']} {job['progress']}%"
             + (f" on {job['node']}" if job.get("node") else ""),
             f"attempts {job['attempts']}",
             f"source   {job['source']}",
             f"dest     {job['destination']}"]
    if job.get("notify_url"):
        lines.append(f"notify   {job['notify_url']} ({job.get('notify_format', 'form')})")
    lines += [f"created  {job['created_at']}", f"updated  {job['updated_at']}"]
    if job.get("state_details"):
        lines.append(f"details  {job['state_details']}")
    for output in job.get("outputs") or []:
        lines.append(f"output   {output_text(output)}")
        if output.get("dash_manifest"):
            lines.append(f"         dash, the same renditions  {output['dash_manifest']}")
    for give_up in job.get("notifications_given_up") or []:
        lines.append(f"given up notification of {give_up['state']} at {give_up['given_up_at']}"
                     f" after {give_up['attempts']} attempts: {give_up['reason']}")
    return "\n".join(lines)


def output_text(output: dict) -> str:
    """One finished output on one line: what it is, then where."""
    facts = [output.get("kind") or "file", output.get("container")]
    if output.get("width") and output.get("height"):
        facts.append(f"{output['width']}x{output['height']}")
    if output.get("kind") == "hls":
        facts.append(f"{output.get('renditions')} renditions, {output.get('segments')} segments")
    elif output.get("kind") == "sprite":
        facts.append(f"{output.get('tiles')} tiles")
    facts.append(f"{output.get('size_bytes') or 0} bytes")
    return f"{', '.join(str(fact) for fact in facts if fact)}  {output.get('uri')}"


def job_row(job: dict) -> str:
    """One job on one line: id, state, progress, last change, source."""
    return (f"{job['id']:<32}  {job['state']:<11} {job['progress']:3d}%  "
            f"{(job['updated_at'] or '')[:19]:<19}  {job['source']}")


def cmd_status(args, settings) -> int:
    job = api_client(settings, args).job(args.job_id)
    print(json.dumps(job, indent=2) if args.json else job_text(job))
    return 0


def cmd_list(args, settings) -> int:
    jobs = api_client(settings, args).jobs(state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    print(f"{'ID':<32}  {'STATE':<11} {'DONE':>4}  {'UPDATED (UTC)':<19}  SOURCE")
    for job in jobs:
        print(job_row(job))
    return 0


def cmd_cancel(args, settings) -> int:
    job = api_client(settings, args).act(args.job_id, "cancel")
    print(f"{job['id']} {job['state']}")
    return 0


def cmd_retry(args, settings) -> int:
    job = api_client(settings, args).act(args.job_id, "retry")
    print(f"{job['id']} {job['state']}")
    return 0


def cmd_notify(args, settings) -> int:
    job = api_client(settings, args).act(args.job_id, "notify")
    print(f"{job['id']} {job['state']}: notification queued")
    return 0


def watch_table(client, limit: int):
    """A rich Table of the jobs not yet ended, with the queue in its title."""
    from rich.table import Table

    health = client.health()
    jobs = [job for state in WATCHED_STATES for job in client.jobs(state=state, limit=limit)]
    jobs.sort(key=lambda job: job["created_at"] or "", reverse=True)
    table = Table(title=f"queued {health['queued']}, in flight {health['in_flight']}, "
                        f"active jobs {len(jobs)}")
    table.add_column("job", no_wrap=True, min_width=32)
    for column in ("state", "progress", "node", "attempts", "updated (UTC)", "source"):
        table.add_column(column)
    for job in jobs[:limit]:
        bar = "#" * (job["progress"] // 10)
        table.add_row(job["id"], job["state"], f"{job['progress']:3d}% {bar:<10}",
                      job.get("node") or "", str(job["attempts"]),
                      (job["updated_at"] or "")[:19], job["source"])
    return table


def cmd_watch(args, settings) -> int:
    from rich.console import Console
    from rich.live import Live

    client = api_client(settings, args)
    console = Console()
    shown = 0
    with Live(watch_table(client, args.limit), console=console,
              refresh_per_second=4, auto_refresh=False) as live:
        shown += 1
        while args.times is None or shown < args.times:
            time.sleep(args.interval)
            live.update(watch_table(client, args.limit), refresh=True)
            shown += 1
    return 0


def log_files(settings, program: str | None) -> list[Path]:
    """The supervisord log files of `program` (all of them when None)."""
    logs = run_dir(settings) / "logs"
    if program is None:
        found = sorted(logs.glob("*.log")) + [run_dir(settings) / "supervisord.log"]
        found = [path for path in found if path.exists()]
    else:
        found = sorted(path for path in logs.glob(f"{program}*.log")
                       if path.stem == program or path.stem.startswith(f"{program}_"))
    if not found:
        known = sorted({p.stem.split("_")[0] for p in logs.glob("*.log")}) if logs.exists() else []
        raise NommerError(f"no log for {program or 'any program'} in {logs}"
                          + (f"; programs: {', '.join(known)}" if known else ""))
    return found


def _tail(path: Path, lines: int) -> tuple[list[str], int]:
    """The last `lines` lines of `path` and the offset its end is at."""
    with path.open("rb") as handle:
        data = handle.read()
    text = data.decode("utf-8", "replace").splitlines()
    return (text[-lines:] if lines else []), len(data)


def cmd_logs(args, settings) -> int:
    paths = log_files(settings, args.program)
    many = len(paths) > 1
    offsets = {}
    for path in paths:
        text, offsets[path] = _tail(path, args.lines)
        for line in text:
            print(f"{path.stem}: {line}" if many else line)
    sys.stdout.flush()
    while args.follow:
        time.sleep(0.5)
        for path in paths:
            with path.open("rb") as handle:
                # A log rotated by supervisord starts again from 0.
                start = offsets[path] if path.stat().st_size >= offsets[path] else 0
                handle.seek(start)
                data = handle.read()
            offsets[path] = start + len(data)
            for line in data.decode("utf-8", "replace").splitlines():
                print(f"{path.stem}: {line}" if many else line, flush=True)
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser("status", help="show one job", parents=[common])
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="the job as JSON, for scripts")
    listing = sub.add_parser("list", help="list jobs newest first", parents=[common])
    listing.add_argument("--state", type=str.upper, choices=STATES)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-100)")
    listing.add_argument("--json", action="store_true", help="the jobs as JSON, for scripts")
    for name, meaning in (("cancel", "cancel a job that has not ended"),
                          ("retry", "run again a job that ended ERROR, ABANDONED or CANCELLED"),
                          ("notify", "send the job's current state to its notify_url again")):
        sub.add_parser(name, help=meaning, parents=[common]).add_argument("job_id")
    watch = sub.add_parser("watch", help="a live table of the jobs not yet ended (Ctrl-C stops)",
                           parents=[common])
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    watch.add_argument("--limit", type=int, default=50, help="most jobs shown")
    watch.add_argument("--times", type=int, help="stop after this many refreshes")
    logs = sub.add_parser("logs", help="print (and follow) this machine's supervisord logs",
                          parents=[common])
    logs.add_argument("program", nargs="?",
                      help="api, scheduler, scaler or nommerd (default: every log)")
    logs.add_argument("-n", "--lines", type=int, default=20, help="lines shown from each log")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


HANDLERS = {"status": cmd_status, "list": cmd_list, "cancel": cmd_cancel, "retry": cmd_retry,
            "notify": cmd_notify, "watch": cmd_watch, "logs": cmd_logs}
