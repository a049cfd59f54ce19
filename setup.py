"""Build step of the wheel: copy the shipped data sets of the top-level ``data/`` into ``pointcoc/_data``.

Everything else is declared in pyproject.toml. The repository keeps ``data/`` at the top level (the layout
the project was specified with); an installed wheel finds the copy through ``importlib.resources``
(``pointcoc.data.locations``). Editable installs read the checkout's ``data/`` directly, so nothing is copied.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_SETS = ("modelnet10", "mnist5k", "rgbd_frames")  # = pointcoc.data.locations.SHIPPED_SETS


class BuildWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = Path(__file__).resolve().parent / "data"
        target = Path(self.build_lib) / "pointcoc" / "_data"
        for name in SHIPPED_SETS:
            if not (source / name).is_dir():
                raise FileNotFoundError(f"cannot build the wheel: shipped data set {source / name} is missing")
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithData})
