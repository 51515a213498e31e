"""The built-in completion sinks.

May import: the public surface only.
"""
