"""The feeder host's processes: the JSON API (`feeder.api`), the scheduler
that sends notifications and abandons stale jobs, and the scaler."""
