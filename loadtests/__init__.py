"""Load tests for the HTTP service: a locust file and an open-loop sweep that writes a report.

`python -m loadtests.openloop --help`; README "Load tests". Not part of the installed distribution:
run from the repository root.
"""
