"""Unit tests: one module at a time, in process (with real servers where the module talks to one)."""
