"""The one error type a user should ever see: it names the problem and what to do about it."""


class UserError(Exception):
    """Bad input or an unusable environment. The CLI prints it as one line and exits with code 2;
    the server marks the job failed with this message. Say what is wrong AND how to fix it."""
