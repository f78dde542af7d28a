"""The data errors every source and task shares, in a module of their own so that any data module can raise
them without importing `sources` (which imports the sources)."""


class DataError(ValueError):
    """A data set that cannot be opened; the message names the data set, split or file."""


class NoCaptionError(ValueError):
    """A record without the caption (text) a task needs; skipped and counted under this name."""


class NoImageError(ValueError):
    """A record without an image where one is needed (e.g. LLaVA's text-only conversations); skipped and counted
    under this name."""
