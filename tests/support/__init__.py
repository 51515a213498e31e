"""What the tests share (and the benchmark's private Redis and cluster): helpers, no tests."""
