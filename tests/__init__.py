"""The test suite, in folders that mirror the packages (tests/marc/ tests marc/, ...), with its helpers and
the one place that starts processes for tests in tests/support/."""
