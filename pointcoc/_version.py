"""pointcoc's version, written only here; the build reads it (``[tool.setuptools.dynamic]``), the package
re-exports it as ``pointcoc.__version__``."""
__version__ = "0.2.0"
