"""Exception types. A `SaltCacheError` is a user-facing problem: the CLI prints its message as
one line and exits non-zero, with no traceback."""


class SaltCacheError(Exception):
    """Bad input or a refused operation; the message names the file, key or field at fault."""


class DecodeError(SaltCacheError):
    """A clip could not be decoded. Carries the clip key and the reason."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self):  # survives pickling across DataLoader / pool workers
        return (DecodeError, (self.key, self.reason))


class DamagedRow(SaltCacheError):
    """A cache row whose stored bytes fail their checksum (or cannot be read). Training skips
    and counts it, up to data.max_damaged_rows; tools report it."""
