"""The one error type the local stack reports to the operator as a plain message."""

from __future__ import annotations


class StackError(Exception):
    """Something the operator can fix (a taken port, a server that would not start).

    The launcher prints its message and exits non-zero, without a traceback.
    """
