"""pointcoc.allocator: freed memory is reused (no fresh zero-filled pages per large tensor), off by the env var."""
import subprocess
import sys

import pytest

from pointcoc.allocator import _glibc

PROBE = r"""
import resource, sys
import torch
from pointcoc.allocator import keep_freed_memory, keeps_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
assert keeps_freed_memory() == applied
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(64 * 2**20 // 4)  # 64 MiB: above glibc's largest mmap threshold
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(applied), max(faults[-8:]))  # the heap grows to a reusable size within the first ~10
"""


def _run(mode, env=None):
    import os
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    applied, faults = out.stdout.split()
    return applied == "1", int(faults)


@pytest.mark.skipif(_glibc() is None, reason="needs glibc (Linux)")
def test_freed_memory_is_reused_after_keep_freed_memory():
    pages = 64 * 2**20 // 4096
    applied, faults = _run("on")
    assert applied
    assert faults < pages // 20, f"a 64 MiB tensor after 16 others faulted {faults} pages in (of {pages})"
    applied, faults = _run("off")  # glibc's default: every 64 MiB tensor is a fresh mapping, every page faults in
    assert not applied
    assert faults > pages // 2


@pytest.mark.skipif(_glibc() is None, reason="needs glibc (Linux)")
def test_env_var_turns_it_off():
    applied, faults = _run("on", {"POINTCOC_KEEP_FREED_MEMORY": "0"})
    assert not applied
    assert faults > 64 * 2**20 // 4096 // 2


STEP = r"""
import sys
import torch
from pointcoc import create_model
from pointcoc.allocator import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = create_model("pointmlp_elite", num_classes=5)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
xyz = torch.rand(4, 256, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
for _ in range(2):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(xyz), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
print(repr(float(loss)), repr(float(sum(p.detach().double().sum() for p in model.parameters()))))
"""


@pytest.mark.skipif(_glibc() is None, reason="needs glibc (Linux)")
def test_training_steps_are_bitwise_the_same_with_freed_memory_kept():
    import os
    outs = [subprocess.run([sys.executable, "-c", STEP, mode], capture_output=True, text=True, check=True,
                           env=os.environ).stdout for mode in ("on", "off")]
    assert outs[0] == outs[1] and outs[0].strip()
