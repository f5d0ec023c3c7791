#!/usr/bin/env python
"""Train a rimrl agent: ``python train.py --env rimrl/Pickup-Train-v0 --core rim`` (see docs/train.md).

A thin entry point; the command line lives in :mod:`rimrl.cli.train`.
"""

import sys

try:
    from rimrl.cli.train import main
except KeyboardInterrupt:  # Ctrl-C while torch & co. import: no traceback wall
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
