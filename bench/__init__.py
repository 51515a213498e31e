"""The benchmark harness of the performance issue: ``make bench`` (``python -m bench``).

Every row runs its two systems side by side on a private Redis, alternating which
goes first, and reports the median of the per-pair ratios against its target.
"""
