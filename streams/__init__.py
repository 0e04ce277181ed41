"""Everything that moves events: runtimes, replay, CLI, SDK, metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tiergate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
