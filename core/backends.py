"""Build the seams' implementations that the settings choose: "local"
(SQLite store and queues, supervisord fleet) or "aws" (SimpleDB or DynamoDB,
SQS, EC2).

Imports are inside the builders so the local backend never imports boto3
and the AWS backend never opens SQLite.
"""
from __future__ import annotations

import dataclasses

from core.interfaces import Fleet, JobStore, Queue
from core.jobservice import JobService
from core.settings import Settings


STATE_CHANGE_MAX_RECEIVES = 1000


@dataclasses.dataclass
class Backends:
    store: JobStore
    new_jobs: Queue
    state_changes: Queue
    settings: Settings

    @property
    def jobs(self) -> JobService:
        return JobService(self.store, self.new_jobs, self.state_changes)

    def close(self) -> None:
        for part in (self.new_jobs, self.state_changes, self.store):
            part.close()


def open_backends(settings: Settings, interactive: bool = False) -> Backends:
    """The job store and the two queues for `settings.backend`. `interactive`
    (the API): AWS calls get a short retry budget (core.aws.INTERACTIVE)."""
    if settings.backend == "local":
        from core.queues.sqlite import SQLiteQueue
        from core.stores.sqlite import SQLiteJobStore

        settings.data_path.mkdir(parents=True, exist_ok=True)
        path = str(settings.database_path)
        return Backends(
            store=SQLiteJobStore(path),
            new_jobs=SQLiteQueue(path, settings.sqs_new_job_queue_name,
                                 visibility_timeout_s=settings.visibility_timeout_s,
                                 dead_letter_after=settings.max_receives + 1,
                                 poll_interval_s=settings.local_queue_poll_ms / 1000),
            # State changes are redelivered on purpose while a notification
            # is retried with backoff, so they are not dead-lettered early.
            state_changes=SQLiteQueue(path, settings.sqs_job_state_change_queue_name,
                                      visibility_timeout_s=settings.visibility_timeout_s,
                                      dead_letter_after=STATE_CHANGE_MAX_RECEIVES,
                                      poll_interval_s=settings.local_queue_poll_ms / 1000),
            settings=settings,
        )
    from core.aws import BACKGROUND, INTERACTIVE
    from core.queues.sqs import SQSQueue

    budget = INTERACTIVE if interactive else BACKGROUND

    if settings.aws_store == "dynamodb":
        from core.stores.dynamodb import DynamoDBJobStore as AWSStore
    else:
        from core.stores.simpledb import SimpleDBJobStore as AWSStore
    backends = Backends(
        store=AWSStore.from_settings(settings, budget),
        new_jobs=SQSQueue.from_settings(settings, settings.sqs_new_job_queue_name,
                                        settings.max_receives + 1, "max_receives", budget),
        state_changes=SQSQueue.from_settings(settings, settings.sqs_job_state_change_queue_name,
                                             STATE_CHANGE_MAX_RECEIVES, budget=budget),
        settings=settings,
    )
    try:
        # At start-up: an existing new-job queue that would dead-letter jobs
        # before max_receives is refused here, naming the setting.
        backends.new_jobs.check()
    except BaseException:
        backends.close()
        raise
    return backends


def open_fleet(settings: Settings) -> Fleet:
    """The encoder fleet for `settings.backend`."""
    if settings.backend == "local":
        from core.fleets.supervisor import SupervisorFleet

        return SupervisorFleet(settings.supervisor_url, settings.supervisor_program)
    from core.fleets.ec2 import EC2Fleet

    return EC2Fleet.from_settings(settings)
