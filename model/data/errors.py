"""The one error type the data layer raises for bad datasets on disk."""

from __future__ import annotations


class DatasetError(Exception):
    """A dataset root, file or folder is missing or malformed.

    The message always names the offending path and what was expected there.
    """
