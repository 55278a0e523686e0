"""AmoraOS agent: makes an AmoraOS music player remotely manageable."""

__version__ = "0.1.0"
