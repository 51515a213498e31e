"""The HTTP API, framework-neutral: a request (method, path, headers, body, peer) in, a
response (status, headers, body) out, for every route; and its OpenAPI document.

May import: taskhub.monitoring, taskhub.limits, taskhub.store, taskhub.config and the
public surface; never a web framework.
"""
