"""The built-in authenticators.

May import: the public surface only.
"""
