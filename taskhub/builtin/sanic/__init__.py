"""The ``sanic`` server: an adapter between Sanic and taskhub's HTTP API (taskhub.web).

May import: the public surface only.
"""
