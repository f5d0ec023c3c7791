#!/usr/bin/env python
"""Evaluate trained rimrl agents: ``python evaluate.py RUN_DIR... [--out DIR] [--plot]`` (see docs/evaluate.md)."""

import sys

try:
    from rimrl.cli.evaluate import main
except KeyboardInterrupt:  # Ctrl-C while torch & co. import: no traceback wall
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
