"""Fixtures that several test modules share. Shared plain helpers are in tests/helpers.py and the
server tests' stand-ins in tests/server_fakes.py: no test module imports from another."""
import pytest
import torch

from backend.priors.sd_random import save_random_pipeline


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline saved as a diffusers folder (real loading code, no download).
    Written once per session: every user only reads it (tests that change a file edit a copy)."""
    return save_random_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd", "tiny", seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): with tiny
    models on a busy machine, thread handoffs cost more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
