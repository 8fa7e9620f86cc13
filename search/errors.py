"""Errors of the run loop."""


class RunFailed(Exception):
    """The run could not go on (exit code 1); what was stored stays stored."""
