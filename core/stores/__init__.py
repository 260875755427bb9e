"""Job stores: where job records live (SQLite, SimpleDB, DynamoDB), and the codec and AWS client handling they share."""
