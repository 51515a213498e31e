"""The built-in task handlers.

May import: the public surface only.
"""
