"""The `lowdiff-sched` command line (typer). Run as `lowdiff-sched ...` or `python -m lowdiff_sched.cli ...`."""
