"""What a checkpoint format is to the engine: the one object the planner, the CLIs and the job
ask, instead of comparing format names or file suffixes.

Why an object per format (torch.distributed.checkpoint's StorageReader/StorageWriter, and its
hf_storage.py, which added a format as one file without touching the planner): adding a format
must be one module plus one line in reshard/formats/registry.py, not edits to planning,
fetching, classifying, verifying and both command lines.

A format module holds its reader and writer (subclasses of base.CheckpointReader and
base.CheckpointWriter) and `FORMAT = <subclass of CheckpointFormat>()`. The engine uses it in
this order:

1. which format: registry.get(name) for `--format` / `load_ckpt_format` (registry.names() are
   the choices); registry.by_file(name) for a file found in a source.
2. the source: sources.classify asks every format `folder_source(root, entries, ...)` first (a
   format that owns its folder layout, e.g. one with a metadata file naming its shards, answers
   with the SourceSet itself); else the rank-folder layout applies (rank_<r>/ folders or a
   folder of complete files) with the files `owns()` accepts; an index file beside complete
   files that `is_index()` accepts is read by `apply_index(source, bytes)` (SourceSet.with_index),
   which says which file holds each parameter. A format that owns its folder layout may name a
   set-level file of its own (a metadata file) as the SourceSet's index_name the same way.
3. the plan: `refusal(dtype, shape)` for every value to write (the conversion is refused before
   anything is written, naming the parameter and a format that can store it).
4. reading: `reader(location, ...)` per source file; `embedded_crc(index)` says what a file's own
   checksum covers, checked while it downloads (reshard.fetch) or by `reader.check_crc()`
   before a local one is converted (reshard.api).
5. writing: `output_name(rank, prefix)` is each destination rank's file, relative to the output
   folder; `writer(path, metas, **options)` writes it (the engine passes config=, the run's
   ReshardConfig, for base.CheckpointWriter; the same for `reader(..., config=)`).
6. verifying: `in_set(name)` says which files below a written set's folder the integrity
   manifest covers.

A format whose sets are not rank files the engine writes one by one (Checkpoint 2.0: an
iteration folder with metadata.json naming its shards) converts through a path of its own:
`add_arguments(parser)` adds its flags to transform-checkpoint, `command(args)` returns that
path for a run that reads or writes it. Its shards may be another format's files (`shards_of`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from reshard.errors import ReshardError

if TYPE_CHECKING:
    from reshard.formats.base import CheckpointReader, CheckpointWriter, FileIndex
    from reshard.sources import SourceEntry, SourceSet
    from reshard.steps import Step


class CheckpointFormat:
    """One checkpoint format. Subclass it, set the class attributes, override what differs.

    name: as `--format` and `load_ckpt_format` spell it, and as open_writer's `fmt` takes it.
    extensions: file-name endings of its files, the first one for the files it writes
        ('.ckpt'); matched exactly in a source folder, ignoring case for a file opened by name.
    reader / writer: its base.CheckpointReader / base.CheckpointWriter subclasses.
    has_checksum: its files may carry a CRC32 of their own bytes (MindSpore's .ckpt trailer):
        see embedded_crc; its reader then has check_crc(), which reads the file once and
        raises FormatError naming it on a mismatch.
    mindspore_name: MindSpore's `output_format` for it (`--engine mindspore`); None when
        MindSpore cannot write it.
    resume_loads_folder: MindFormers resumes a single-card training of it from the converted
        set's folder (rank_0/ holding the file), not from the file itself.
    """
    name: str = ""
    extensions: tuple[str, ...] = ()
    reader: type[CheckpointReader]
    writer: type[CheckpointWriter]
    has_checksum: bool = False
    mindspore_name: str | None = None
    resume_loads_folder: bool = False
    shards_of: str | None = None
    own_path: bool = False

    # shards_of: the format whose files hold this one's values (Checkpoint 2.0's shards are
    #   safetensors files): such a format claims no file by its name (owns and registry.by_file
    #   give the other format), and its extensions may be that format's.
    # own_path: it converts through a path of its own (command); the planner refuses it as the
    #   format of rank files.

    def __repr__(self) -> str:
        return f"<checkpoint format {self.name}>"

    def refusal(self, dtype: str | None, shape: Iterable[int] | None = None) -> str | None:
        """Why a value of MindSpore tensor_type `dtype` (None: not known yet, a plan from
        strategies alone) and, when given, of this shape cannot be stored in this format, as a
        phrase ('a str value cannot be stored in safetensors'); None when it can."""
        return None

    def can_store(self, dtype: str | None, shape: Iterable[int] | None = None) -> bool:
        return self.refusal(dtype, shape) is None

    def owns(self, file_name: str) -> bool:
        """Whether a file of a source folder, by its name, is one of this format's."""
        return self.shards_of is None and file_name.endswith(self.extensions)

    def in_set(self, name: str) -> bool:
        """Whether a file below a written set's folder (name relative to it, '/'-separated) is
        one of the set's, which the integrity manifest records: a rank_<r>/ folder's files of
        this format."""
        return name.startswith("rank_") and "/" in name and self.owns(name)

    def add_arguments(self, parser) -> None:
        """transform-checkpoint flags of this format's own (argparse parser); none by default."""

    def command(self, args):
        """For a format converted through a path of its own: that path (a callable taking the
        parsed transform-checkpoint args, returning the exit code) when this run reads or
        writes this format; None (the default): the engine's path."""
        return None

    def is_index(self, file_name: str) -> bool:
        """Whether a file beside complete files of this format is its index (apply_index reads
        it)."""
        return False

    def apply_index(self, source: SourceSet, data: bytes | str) -> SourceSet:
        """`source` (classified with its index_name and this format) completed by the bytes of
        its index: which file holds each parameter (SourceSet.index), the files that count.
        ReshardError naming the index for one that cannot be used."""
        raise ReshardError(f"{source.path_of(source.index_name)}: format {self.name} reads no index")

    def output_name(self, rank: int, prefix: str) -> str:
        """THE name of a destination rank's file, relative to the destination folder."""
        return f"rank_{rank}/{prefix}{rank}{self.extensions[0]}"

    def embedded_crc(self, index: FileIndex) -> tuple[int, int] | None:
        """(bytes covered from the file's start, the CRC32 they must sum to) when the file
        whose headers gave `index` carries its own checksum; None when it carries none."""
        return None

    def crc_mismatch(self, location: str, expected: int, found: int) -> str:
        """The one line for a file whose bytes do not sum to its own checksum."""
        return f"{location}: corrupt checkpoint: it records CRC32 {expected:08x}, its bytes sum to {found:08x}"

    def folder_source(self, root: str, entries: list[SourceEntry], *, step: Step | None = None,
                      partial: bool = False) -> SourceSet | None:
        """A format that owns its folder layout recognises a source folder here and returns what
        it is (which file holds each source rank; with index_name and format set, a set-level
        file the callers read and give to apply_index); None: not such a folder (the rank-folder
        layout applies). Arguments as sources.classify takes them (pure: names and sizes, no
        I/O); ReshardError, one line naming the folder, for such a folder that is incomplete."""
        return None
