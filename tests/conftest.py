import secrets

import pytest
import torch

# the emulated GPU (tests/cuda_emulation): its build, and the public API routed to it
from emulation import emulated, emulation_build  # noqa: F401  (fixtures)

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs in every run (docs/DESIGN.md, Numerics); the seed is printed, so a
    failure can be replayed with torch.manual_seed(seed)."""
    seed = secrets.randbelow(2**31)
    torch.manual_seed(seed)
    print(f"seed={seed}")
    return seed
