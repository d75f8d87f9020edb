"""How a job ended badly, as one sentence a server user can act on: a failure inside the job, a worker
process that died, a write the data folder refused. The job runner, the executors and the server's
data folder all word these sentences here, so a user reads the same one whatever ran the job.
"""
from __future__ import annotations

import errno
import signal
import sys

from shared.protocol import ProtocolError

from ..errors import UserError

FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_problem(error: OSError, folder: str = "the backend's data folder") -> str:
    """What a failed write means for `folder` (how the sentence names it), as the start of a sentence."""
    reason = error.strerror or type(error).__name__
    if error.errno in FULL:
        return f"{folder} is full ({reason})"
    if error.errno in READ_ONLY:
        return f"{folder} is read-only ({reason})"
    return f"{folder} cannot be written ({reason})"


def describe_failure(error: BaseException, step: int) -> str:
    """One sentence saying why a job failed and what to do. A UserError is passed on as raised: its
    raising site words it for any user (docs/server.md, "Faults")."""
    torch = sys.modules.get("torch")
    if isinstance(error, UserError):
        return str(error)
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return (f"the GPU ran out of memory at step {step}: lower resolution or batch_size, choose a smaller preset, "
                "or close other programs using the GPU, then resubmit the job")
    if isinstance(error, OSError) and error.errno in FULL + READ_ONLY:
        return (f"{write_problem(error)}, so the job stopped at step {step}: resubmit the job once the backend's "
                "operator has freed space or fixed the folder")
    if isinstance(error, ProtocolError):
        return f"this job's request is no longer valid ({error}): resubmit the job"
    return (f"the job crashed at step {step} ({type(error).__name__}: {error}); the backend log has the details. "
            "Try another seed or a lower lr, and report it if it happens again")


def describe_exit(exitcode: int | None) -> str:
    """Why a job process ended without saying so: its signal or exit code."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = {"SIGKILL": " (often the system running out of memory)", "SIGSEGV": " (a crash in native code)",
               "SIGABRT": " (a crash in native code)", "SIGBUS": " (a crash in native code)"}.get(name, "")
        return f"the worker process running the job was killed by {name}{why}"
    return f"the worker process running the job exited unexpectedly (exit code {exitcode})"
