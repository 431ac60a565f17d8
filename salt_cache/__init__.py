"""salt-cache: SALT video self-supervised learning with an offline teacher-latent cache."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("salt-cache")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
