"""The README's "In research code" block runs as printed: each `print(...)  # output` line prints that output."""
import re
import subprocess
import sys

import pytest

from script_checks import ROOT, _env


@pytest.mark.slow
def test_the_research_code_block_runs_and_prints_what_it_says(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## In research code\n\n```python\n(.*?)```", readme, re.S).group(1)
    promised = []
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("print(") and "  # " in line:
            promised.append(line.split("  # ", 1)[1])
        elif line.startswith("print(") and i + 1 < len(lines) and lines[i + 1].startswith("# "):
            promised.append(lines[i + 1][2:])
    assert len(promised) >= 3, promised
    script = tmp_path / "snippet.py"
    script.write_text(block)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.splitlines()
    for want in promised:
        assert want in printed, (want, printed)
