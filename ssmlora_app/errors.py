"""The one exception type for bad input: the CLI prints its message (no traceback) and exits 2."""


class SsmloraError(ValueError):
    """A problem with the user's input (config, files, data), with a message that names the fix."""
