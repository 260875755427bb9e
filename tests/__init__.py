"""The tests: contract suites, unit tests, one-process tests and whole-system tests."""
