"""Fixtures shared by several test files."""
import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def fresh_inductor_cache(tmp_path_factory):
    """torch.compile tests build their own kernels: a cache left half-written by a killed run ("file too short")
    in the shared /tmp/torchinductor_<user> must not fail them. Scripts run by the tests inherit the variable."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor_cache"))
    yield
    if before is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


@pytest.fixture
def one_thread():
    """Small models are many tiny ops: on a shared 2-core CPU, two threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.hookimpl(tryfirst=True)  # before `-m cuda` selects by marker
def pytest_collection_modifyitems(config, items):
    """One meaning for "a CUDA test": marked ``cuda`` (``pytest -m cuda`` runs them all; so does gpu_check.py).

    A test skipped without CUDA (``skipif(..., reason="needs a CUDA device")``) gets the ``cuda`` marker,
    and a test marked ``cuda`` is skipped where no CUDA device is available.
    """
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if any(m.name == "skipif" and "CUDA" in str(m.kwargs.get("reason", "")) for m in item.iter_markers()):
            item.add_marker(pytest.mark.cuda)
        if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
            item.add_marker(no_cuda)
