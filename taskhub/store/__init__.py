"""Redis: connection settings, clients, the pipelined admission connection, the cluster
router, key layout and outage logging.

May import: taskhub.config and taskhub.errors.
"""
