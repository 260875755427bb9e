"""Work queues with SQS semantics: SQLite for one machine, Amazon SQS for AWS."""
