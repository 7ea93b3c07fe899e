"""One module per ``reslab`` subcommand: ``HELP``, ``add_arguments(parser)`` and ``run(args)``.

Modules import heavy dependencies inside ``run`` so that ``reslab --help`` stays quick.
"""
