#!/usr/bin/env python
"""Evaluate trained rimrl agents: ``python evaluate.py RUN_DIR... [--out DIR] [--plot]`` (see docs/evaluate.md)."""

from rimrl.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
