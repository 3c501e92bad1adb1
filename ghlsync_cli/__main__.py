"""`python -m ghlsync_cli` runs the command line."""

from ghlsync_cli.cli import main

main()
