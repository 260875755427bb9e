"""The application: the `nommer` command and the one-machine launcher."""
