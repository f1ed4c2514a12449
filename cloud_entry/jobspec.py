"""The parsed job: what the user asked for, validated, before anything touches disk or network.

Data flows one way: arguments -> JobSpec -> plan -> download -> convert -> markers -> upload ->
launch; later stages read a JobSpec, they never re-parse arguments or the environment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reshard.sources import DEFAULT_PREFIX
from reshard.steps import Step


@dataclass(frozen=True)
class JobSpec:
    config: str | None = None                 # base YAML: path, name in configs/, or URL
    load_checkpoint: str | None = None        # None: as the config says; "" clears it
    src_strategy: str | None = None           # src_strategy_path_or_dir, likewise
    dst_strategy: str = ""                    # file, folder or URL; "" -> strategy pass
    auto_trans_ckpt: bool | None = None
    transform_process_num: int | None = None
    transform_timeout: float = 3600.0         # seconds, every cross-node wait
    max_memory: int | None = None             # bytes, passed to the engine
    npu_num_per_node: int | None = None
    node_num: int | None = None
    node_index: int | None = None
    only_save_strategy: bool | None = None
    load_ckpt_format: str | None = None
    use_parallel: bool | None = None
    run_mode: str | None = None
    output_dir: str | None = None
    remote_save_url: str | None = None        # likewise
    shared_dir: str = ""
    work_dir: str = ""                        # "" -> <output_dir>/cloud_entry
    prefix: str = DEFAULT_PREFIX
    run_id: str = ""                          # "" -> derived (see cluster.run_id)
    transform_only: bool = False
    overlap: bool = True                      # upload each converted rank as soon as it is written
    keep_source_cache: bool = False           # keep the downloaded source after success
    load_checkpoint_step: Step | None = None  # the training step to read (reshard.steps); None: latest
    allow_missing_params: bool = False        # reshard.PlanPolicy.allow_missing
    keep_unnamed_params: bool = False         # reshard.PlanPolicy.keep_unnamed
    checkpoint2_mode: str = ""                # cloud_entry.checkpoint2.MODES; "": by --dst_strategy
    launch_cmd: tuple[str, ...] = ()
    parallel: dict[str, Any] = field(default_factory=dict)     # parallel_config.<key> -> value
    overrides: dict[str, Any] = field(default_factory=dict)    # dotted key -> value
    passthrough: tuple[str, ...] = ()         # arguments not ours, passed on to the training command
    platform: dict[str, str] = field(default_factory=dict)     # data_url / train_url / ... as given
    pass_args: tuple[str, ...] = ()           # names never taken for typos of ours (--pass_args)
    quiet: bool = False                       # console: warnings and errors only
    verbose: bool = False                     # console: debug lines too

    @property
    def inputs(self) -> list[str]:
        """The user's checkpoint and strategies: never cleared, never written into."""
        return [x for x in (self.load_checkpoint, self.src_strategy, self.dst_strategy) if x]
