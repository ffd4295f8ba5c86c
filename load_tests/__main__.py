"""`python -m triode.load_tests`: see load_tests/cli.py."""

import sys

from triode.load_tests.cli import main

sys.exit(main())
