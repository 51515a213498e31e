"""Rate limiting: rules and policies, atomic admission, execution limits, fail modes,
the deny cache, shadow mode, admin and the rate-limit headers.

May import: taskhub.store, taskhub.config and the public surface.
"""
