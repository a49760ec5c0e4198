"""`python -m pyflaxnpu` is the `flaxnpu` command."""

import sys

from .cli import main

sys.exit(main())
