"""`python -m marc_serve ...` is the `marc` command."""

import sys

from marc_serve.cli import main

sys.exit(main())
