"""Errors caused by the user's input. The command line prints them as one line, no traceback.

Library functions raise these (or ``ValueError``) where input enters, with a message that says
what is wrong and what to do. Set ``RESLAB_DEBUG=1`` to see the traceback on the command line.
"""


class ReslabError(Exception):
    """Base of errors in what the user gave reslab (a file, a path, an argument)."""


class DataError(ReslabError, ValueError):
    """A data set path or file that cannot be read as asked."""


class CheckpointError(ReslabError, ValueError):
    """A checkpoint that is missing, unsafe, or of another model."""


class TrainingError(ReslabError, RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message names the last good checkpoint."""


class MissingDependencyError(ReslabError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command."""
