"""Links to the project's public repository, for messages that point at its files.

An installed wheel holds no ``data/README.md``, ``docs/`` or ``scripts/``: a message that names such a file gives
its link, never a path that exists only in a source checkout. ``REPOSITORY`` is the ``Homepage`` of
pyproject.toml's ``[project.urls]`` (tests/test_links.py keeps the two equal).
"""
from __future__ import annotations

__all__ = ["REPOSITORY", "repository_link"]

REPOSITORY = "https://github.com/pointcoc/pointcoc"


def repository_link(path: str) -> str:
    """The web page of ``path``, a file (``docs/training.md``) or folder (``data/modelnet40_1024/``, with its
    trailing slash) of the repository, on its main branch."""
    kind = "tree" if path.endswith("/") else "blob"
    return f"{REPOSITORY}/{kind}/main/{path.rstrip('/')}"
