"""The one error type a user should ever see: it names the problem and what to do about it."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable environment. The CLI prints it as one line and exits with code 2;
    the server marks the job failed with this message. Say what is wrong AND how to fix it. `field`
    names the setting at fault when there is one, so the server and the panel can point at it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
