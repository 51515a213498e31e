"""Helpers the tests share, no tests; bench/ imports its ports, redis options and cluster here."""
