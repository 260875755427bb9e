"""The job record and its state machine (core.jobs)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from core.errors import InvalidTransition
from core.jobs import (ACTIVE_STATES, MAX_DETAILS_CHARS, TERMINAL_STATES, Job, JobState,
                       can_transition, transition)

P, D, E, U = JobState.PENDING, JobState.DOWNLOADING, JobState.ENCODING, JobState.UPLOADING
F, ERR, AB, C = JobState.FINISHED, JobState.ERROR, JobState.ABANDONED, JobState.CANCELLED


def _job(state: JobState = P, **changes) -> Job:
    fields = dict(source="file:///media/in.mov", destination="file:///media/out.mp4",
                  options={"preset": "web"}, state=state)
    return Job(id="job-1", **{**fields, **changes})


@pytest.mark.parametrize("current,new", [
    (P, D), (D, E), (E, U), (U, F),            # the normal life of a job
    (D, D), (E, D), (U, D),                    # another encoder takes over after a lapsed lease
    (D, P), (E, P), (U, P),                    # an encoder gives the job back
    (P, ERR), (D, ERR), (E, ERR), (U, ERR),
    (P, C), (D, C), (E, C), (U, C),
    (P, AB), (D, AB), (E, AB), (U, AB),
])
def test_allowed_transitions(current, new):
    assert can_transition(current, new)
    assert transition(_job(current), new).state is new


@pytest.mark.parametrize("current,new", [
    (P, E), (P, U), (P, F), (P, P),            # nothing is skipped
    (D, U), (D, F), (E, F),
    (E, E), (U, U),
])
def test_refused_transitions_between_unfinished_states(current, new):
    assert not can_transition(current, new)
    with pytest.raises(InvalidTransition):
        transition(_job(current), new)


@pytest.mark.parametrize("current", sorted(TERMINAL_STATES))
@pytest.mark.parametrize("new", list(JobState))
def test_an_ended_job_never_changes_state(current, new):
    with pytest.raises(InvalidTransition):
        transition(_job(current), new)


def test_transition_returns_a_changed_copy_and_keeps_the_version():
    job = _job(P, version=4, updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    moved = transition(job, D, "starting", node="encoder-1", attempts=1)

    assert (moved.state, moved.state_details, moved.node, moved.attempts) == (
        D, "starting", "encoder-1", 1)
    assert moved.version == 4
    assert moved.updated_at > job.updated_at
    assert (job.state, job.node, job.attempts) == (P, None, 0)


def test_refused_transition_leaves_the_job_alone():
    job = _job(F, progress=100)
    with pytest.raises(InvalidTransition, match="job-1"):
        transition(job, D)
    assert job.state is F


def test_long_details_keep_their_last_1023_characters():
    stderr = "header " * 100 + "x" * 2000 + "the real error at the end"
    failed = transition(_job(E), ERR, stderr)
    assert MAX_DETAILS_CHARS == 1023
    assert len(failed.state_details) == 1023
    assert failed.state_details == stderr[-1023:]
    assert failed.state_details.endswith("the real error at the end")


def test_short_details_are_kept_whole():
    assert transition(_job(E), ERR, "bad codec").state_details == "bad codec"


def test_finished_sets_progress_to_100():
    assert transition(_job(U, progress=97), F).progress == 100


@pytest.mark.parametrize("ending", sorted(TERMINAL_STATES - {F}))
def test_ending_clears_the_lease(ending):
    lease = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert transition(_job(E, lease_expires_at=lease), ending).lease_expires_at is None


def test_finishing_clears_the_lease():
    lease = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert transition(_job(U, lease_expires_at=lease), F).lease_expires_at is None


def test_an_active_move_keeps_the_lease():
    lease = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert transition(_job(D, lease_expires_at=lease), E).lease_expires_at == lease


def test_is_terminal_matches_the_terminal_states():
    assert {s for s in JobState if _job(s).is_terminal} == TERMINAL_STATES
    assert not ACTIVE_STATES & TERMINAL_STATES


def test_to_dict_is_json_ready_and_from_dict_round_trips():
    job = _job(E, state_details="pass 1", progress=40, attempts=2, node="encoder-2",
               notify_url="https://app.example/hook", version=7,
               lease_expires_at=datetime(2024, 5, 1, 12, 1, tzinfo=timezone.utc),
               options={"passes": [{"crf": 23}], "flag": True})
    data = json.loads(json.dumps(job.to_dict()))

    assert data["state"] == "ENCODING"
    assert datetime.fromisoformat(data["created_at"]).utcoffset() == timedelta(0)
    assert Job.from_dict(data) == job


def test_from_dict_of_a_job_without_lease():
    job = _job(P)
    assert job.to_dict()["lease_expires_at"] is None
    assert Job.from_dict(job.to_dict()) == job


def test_state_prints_as_its_wire_name():
    assert str(JobState.FINISHED) == "FINISHED"
    assert JobState("ERROR") is ERR
