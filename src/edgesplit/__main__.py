"""``python -m edgesplit``: the command line."""

from edgesplit.cli import main

main()
