"""`python -m pipeline`: the ffp CLI (app/cli.py)."""

from app.cli import main

main()
