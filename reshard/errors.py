"""The one error type the engine shows to users."""


class ReshardError(ValueError):
    """Bad input. str(err) is the one line shown to the user; it names the culprit
    (file, rank, parameter or flag). Raised before anything is written. The command-line tools
    print it without a traceback and exit with code 2."""
