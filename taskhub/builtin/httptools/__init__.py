"""The ``httptools`` server: taskhub's HTTP API on an asyncio protocol over llhttp, for speed.

May import: the public surface only.
"""
