"""The benchmark harness's own unit tests (its parsing and arithmetic; no process started)."""
