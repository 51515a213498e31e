"""The ``saq`` queue: jobs in SAQ's Redis layout, run by SAQ's worker loop with
taskhub's job lifecycle.

May import: the public surface, taskhub.store and taskhub.monitoring.
"""
