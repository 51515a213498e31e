"""The default plugins. They register through the same hooks as anyone else's.

May import: the public surface, and the layers the import contracts name per plugin.
"""
