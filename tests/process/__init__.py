"""One program as a real process: the API, the scheduler, nommerd."""
