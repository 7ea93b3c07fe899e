"""The model zoo. Importing this package registers every family with :mod:`reslab.registry`."""

from reslab.models import resnet  # noqa: F401
