"""`python -m mixa` with the test stand-in for mixa.convert (see _distill_shim.py); used under torchrun."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _distill_shim  # noqa: E402

_distill_shim.install()
from mixa.cli import main  # noqa: E402

sys.exit(main())
