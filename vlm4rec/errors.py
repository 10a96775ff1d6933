"""Errors whose message is the whole story for a user: bad input data, a missing data folder, a bad
parameter, an unreachable model server. The stage runner prints their message without a traceback; any
other exception is a bug and keeps its traceback."""
from __future__ import annotations


class StudyError(Exception):
    """A problem with the study's inputs that the message explains, with what to do about it."""
