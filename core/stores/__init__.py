"""Job stores: where job records live (SQLite, SimpleDB, DynamoDB) and the codec they share."""
