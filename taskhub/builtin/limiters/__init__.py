"""The built-in rate-limiting strategies, each a Lua module of the admission script.

May import: the public surface only.
"""
