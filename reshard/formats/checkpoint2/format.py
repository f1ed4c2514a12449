"""MindFormers Checkpoint 2.0 as a registered format (reshard.formats.registry's line
`reshard.formats.checkpoint2.format:FORMAT`): what the engine, both commands and the job ask.

Its sets are iteration folders whose metadata.json names the shards, not rank files the engine
writes one by one, so it converts through its own path (cli.run, through convert.convert_checkpoint):
`command(args)` hands transform-checkpoint's run to it, `add_arguments` adds --iteration and
--mindformers_release. Its shards are safetensors files (shards_of), read and written by the
safetensors reader and writer; the integrity manifest covers the tracker and the iteration
folders (in_set).
"""
from __future__ import annotations

from ..interface import CheckpointFormat
from ..safetensors_format import SafetensorsReader, SafetensorsWriter
from .folder import ITERATION_PREFIX, METADATA, TRACKER, is_checkpoint2


# Why a legacy step (--step, the job's load_checkpoint_step) is refused with this format, in both
# commands' one-line errors: MindFormers names a save's folder by its global step (iteration),
# legacy files by <epoch>_<step in epoch>, and the steps per epoch that would map one to the
# other are recorded nowhere in the folder.
NO_STEP = ("a step's <epoch>_<step> names no Checkpoint 2.0 iteration (iterations count global steps; "
           "the steps per epoch that would map one to the other are not recorded)")


class Checkpoint2Format(CheckpointFormat):
    name = "checkpoint2"
    extensions = (".safetensors",)
    reader = SafetensorsReader
    writer = SafetensorsWriter
    shards_of = "safetensors"
    own_path = True

    def refusal(self, dtype, shape=None):
        from ..registry import get
        return get(self.shards_of).refusal(dtype, shape)

    def in_set(self, name: str) -> bool:
        return name == TRACKER or (name.startswith(ITERATION_PREFIX) and "/" in name)

    def folder_source(self, root, entries, *, step=None, partial=False):
        """A Checkpoint 2.0 folder met where rank folders or complete files are expected is
        refused in one line naming the format (its shards would otherwise look like several
        complete files holding different values of one parameter)."""
        if is_checkpoint2(root, {e.name for e in entries}):
            raise _refused(root)
        return None

    def add_arguments(self, parser) -> None:
        from .cli import add_arguments
        add_arguments(parser)

    def command(self, args):
        from .cli import run, wants
        return run if wants(args) else None


def _refused(root: str):
    from ...errors import ReshardError
    return ReshardError(f"source checkpoint {root} is a MindFormers Checkpoint 2.0 folder ({TRACKER} "
                        f"/ {METADATA}); convert it with transform-checkpoint --src_checkpoint {root}")


FORMAT = Checkpoint2Format()
