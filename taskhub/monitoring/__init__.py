"""Observability: Prometheus metrics, traffic and dashboard data, queue status, request
ids and the log format.

May import: taskhub.limits, taskhub.store, taskhub.config and the public surface.
"""
