"""taskhub's test suite: a package, so that its modules and tests.support import by full name."""
