"""`python -m load_tests`: see load_tests/cli.py."""

import sys

from load_tests.cli import main

sys.exit(main())
