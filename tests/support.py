"""Helpers that tests import (fixtures live in the conftest.py files)."""


def run(shell, code):
    """Run a cell; return its result (re-raising the cell's exception)."""
    result = shell.run_cell(code)
    if result.error_before_exec:
        raise result.error_before_exec
    if result.error_in_exec:
        raise result.error_in_exec
    return result.result
