"""autodeco: learned per-token temperature and top-p decoding (AutoDeco) as a command-line toolkit."""

__version__ = "0.1.0"
