"""The model zoo. Importing this package registers every family with :mod:`reslab.registry`."""

from reslab.models import resnet  # noqa: F401
from reslab.models import preact_resnet  # noqa: F401
from reslab.models import wide_resnet  # noqa: F401
from reslab.models import resnext  # noqa: F401
from reslab.models import dpn  # noqa: F401
from reslab.models import fractalnet  # noqa: F401
from reslab.models import merge_run  # noqa: F401
