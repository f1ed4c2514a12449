"""`python -m obs_io`: the obs_io command (obs_io.cli), the same as the `obs_io` console script.

obs_io.cli imports boto3 (about half a second): it is imported through the distribution's console
runner (reshard.console, standard library only), so a Ctrl-C during that import is one line and
exit code 130, not a traceback of the import machinery. The library itself never imports reshard.
"""
import sys

from reshard.console import obs_io

sys.exit(obs_io())
