"""Errors whose message is the whole story for a user: bad input data, a missing data folder, a bad
parameter, an unreachable model server. The stage runner prints their message without a traceback; any
other exception is a bug and keeps its traceback. :func:`os_reason` words a failed network request for
such messages."""
from __future__ import annotations


class StudyError(Exception):
    """A problem with the study's inputs that the message explains, with what to do about it."""


def os_reason(exc: BaseException) -> str:
    """The operating system's words for why a request failed (``Connection refused``, ``Name or service
    not known``), found under the layers ``requests`` and ``urllib3`` wrap it in; else the class name."""
    node: BaseException | None = exc
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.strerror:
            return node.strerror
        wrapped = getattr(node, "reason", None)
        inner = [a for a in node.args if isinstance(a, BaseException)]
        node = (wrapped if isinstance(wrapped, BaseException) else None) or node.__cause__ or (
            inner[0] if inner else None)
    return type(exc).__name__
