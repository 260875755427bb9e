"""The live scaler drives real supervisord encoder slots: a backlog starts
slots, and idle encoders are stopped again (predictive policy) or stop
themselves (original policy)."""
from __future__ import annotations

import pytest

from core.app.local_system import LocalSystem, wait_for
from core.media import ffmpeg_path, make_sample_clip

pytestmark = pytest.mark.timeout(180)

BASE = {
    "NOMMER_FEEDERD_AUTO_SCALE_INTERVAL": "0.5",
    "NOMMER_MAX_NUM_EC2_INSTANCES": "2",
    "NOMMER_BOOT_TIME_ESTIMATE_S": "2",
    "NOMMER_SCALE_COOLDOWN_S": "1",
}


def running(system) -> set[str]:
    return {e.id for e in system.fleet().list_encoders() if e.state in {"pending", "running"}}


def submit_batch(system, count: int) -> list[str]:
    src = system.media_dir / "in.mp4"
    if not src.exists():
        make_sample_clip(ffmpeg_path(system.settings), str(src), duration_s=2, size="320x240")
    passes = [{"infile_options": [], "outfile_options": [["c:v", "libx264"], ["preset", "slow"]]}]
    return [system.client.submit(src.as_uri(), (system.media_dir / f"o{i}.mp4").as_uri(), passes)
            for i in range(count)]


def all_ended(system, ids) -> bool:
    return all(system.client.job(job_id)["state"] == "FINISHED" for job_id in ids)


def test_backlog_starts_slots_and_idle_slots_are_stopped(tmp_path):
    # A short arrival window: once the batch is over, no warm capacity is kept.
    env = dict(BASE, NOMMER_SCALING_POLICY="predictive", NOMMER_SCALE_IN_IDLE_S="2",
               NOMMER_SCALE_ARRIVAL_WINDOW_S="5", NOMMER_NOMMERD_MAX_INACTIVITY="600")
    with LocalSystem(tmp_path / "sys", env) as system:
        assert running(system) == set()
        ids = submit_batch(system, 6)
        # Six jobs of one slot each: the scaler starts both slots, not more.
        wait_for(lambda: len(running(system)) == 2, 30, what="both slots started")
        wait_for(lambda: all_ended(system, ids), 120, interval_s=0.5, what="batch finished")
        # Idle for scale_in_idle_s: the scaler stops them (nommerd itself would wait 600 s).
        wait_for(lambda: running(system) == set(), 60, interval_s=0.5, what="slots stopped")
        assert "stop" in system.log_tail("scaler", 200)


def test_original_policy_never_stops_encoders_they_idle_out(tmp_path):
    env = dict(BASE, NOMMER_SCALING_POLICY="original", NOMMER_NOMMERD_MAX_INACTIVITY="4")
    with LocalSystem(tmp_path / "sys", env) as system:
        ids = submit_batch(system, 1)
        wait_for(lambda: running(system), 30, what="a slot started")
        wait_for(lambda: all_ended(system, ids), 120, interval_s=0.5, what="job finished")
        # The encoder exits 0 on its own after 4 idle seconds; supervisord
        # leaves the slot stopped, and the scaler does not start it again.
        wait_for(lambda: running(system) == set(), 60, interval_s=0.5, what="encoder idled out")
        states = {info["name"]: info["statename"] for info in system.supervisor().getAllProcessInfo()}
        assert "EXITED" in {states["nommerd_00"], states["nommerd_01"]}



def drain_marks(system) -> int:
    """How many scaler decisions marked encoders draining so far."""
    return sum(1 for line in system.log_tail("scaler", 5000).splitlines()
               if "stop=[" in line and "stop=[]" not in line)


def test_scale_in_drains_and_never_interrupts_a_job(tmp_path):
    # Encoders are let go as soon as they idle (no billing minimum, no hold,
    # no warm capacity) while jobs keep coming, so scale-in races new work
    # again and again: half the jobs are sent just after an encoder was
    # marked draining, before it has seen the mark. Every job must still run
    # once, to the end: none is released or started again.
    env = dict(BASE, NOMMER_SCALING_POLICY="predictive", NOMMER_SCALE_IN_IDLE_S="0.5",
               NOMMER_SCALE_IN_BOOTS="0", NOMMER_BILLING_MINIMUM_S="0",
               NOMMER_ACCEPTABLE_WAIT_S="600", NOMMER_NOMMERD_HEARTBEAT_INTERVAL_S="1",
               NOMMER_NOMMERD_MAX_INACTIVITY="600")
    with LocalSystem(tmp_path / "sys", env) as system:
        ids: list[str] = []
        for n in range(12):
            marks = drain_marks(system)
            ids += submit_batch(system, 1)
            wait_for(lambda: all_ended(system, ids), 120, interval_s=0.3, what="job finished")
            if n % 2 == 0:
                # The encoder that ran it idles and is marked (unless it was
                # marked already, and then stops): the next job comes right
                # after the mark, often to the marked encoder.
                wait_for(lambda: drain_marks(system) > marks or not running(system), 60,
                         interval_s=0.2, what="an encoder marked draining or stopped")
        jobs = [system.client.job(job_id) for job_id in ids]
        assert [job["attempts"] for job in jobs] == [1] * len(ids), \
            [(job["id"], job["attempts"], job["state_details"]) for job in jobs]
        logs = system.log_tail("nommerd_00", 5000) + system.log_tail("nommerd_01", 5000)
        assert "draining: taking no new work" in logs
        assert "giving held jobs back" not in logs
        # A drained encoder stops (EXITED), or is terminated once it has; the
        # last mark may have been made just now, so its encoder gets a moment.
        wait_for(lambda: "terminated=['" in system.log_tail("scaler", 5000) or "EXITED" in {
            info["statename"] for info in system.supervisor().getAllProcessInfo()},
            60, interval_s=0.5, what="a drained encoder stopped or terminated")
