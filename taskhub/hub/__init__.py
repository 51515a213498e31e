"""The kernel: load plugins, build the components the config names, run and stop them.

May import: every layer below it (web, monitoring, limits, store, config).
"""
