"""The ``taskhub`` command, its subcommands, and the supervisor of ``serve --workers N``.

May import: taskhub.hub and the layers below it.
"""
