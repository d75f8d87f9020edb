"""`python -m backend.server [options]`: the same as `python -m backend serve`."""
import sys

from . import serve_from_args

sys.exit(serve_from_args(sys.argv[1:]))
