"""``python -m pointcoc``: print the environment report to paste into bug reports."""
from pointcoc.env import env_report

print(env_report())
