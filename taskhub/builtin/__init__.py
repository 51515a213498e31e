"""The default plugins. They register through the same hooks as anyone else's."""
