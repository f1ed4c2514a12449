"""Which checkpoint of a training run's series a conversion reads: THE rule, for the offline tool
and the job alike (reshard.sources.classify applies it to every rank folder, and to a folder
of complete files).

MindSpore's ModelCheckpoint (and MindFormers' CheckpointMonitor, built on it) names each save
`<prefix>-<epoch>_<step>.<fmt>` (mindspore/train/callback/_checkpoint.py), so a folder that
kept several saves holds `llama_rank_0-5_2.ckpt` and `llama_rank_0-10_2.ckpt`; in plain name
order `-5_2` comes after `-10_2`, so "the last file in name order" (MindSpore's
transform_checkpoints) reads the OLDER one. A run that saves into a folder already holding
checkpoints of its prefix gets the prefix `<prefix>_<n>` (n = 1, 2, ...: a resumed or restarted
run, `_chg_ckpt_file_name_if_same_exist`).

The rule:
- names of that form are ordered by (epoch, step), numerically; the chosen step is the latest,
  or the one asked for (`--step 10_2`);
- every folder of a set must resolve to the SAME step: rank folders whose latest steps differ,
  or that lack the asked step, are an error naming the ranks and their steps (never a mix);
- several runs in one folder (`p-*` and `p_1-*`): the latest step must belong to the latest run
  (else the folder holds an older run's later steps beside a restarted run: an error asking
  for --step); a step present in two runs is read from the later run;
- a folder mixing step-named and other checkpoint files, or one folder step-named and another
  not, is an error unless a step is asked for (then the others are left aside);
- names that carry no step: the last in name order (MindSpore's rule), unchanged.

Pure functions of names: no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import ReshardError

# the name without its format's extension (sources.classify passes checkpoint files only)
_STEP_NAME = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)\.[^.]+$")
_STEP_TEXT = re.compile(r"^\s*(\d+)[_-](\d+)\s*$")
_RUN_SUFFIX = re.compile(r"^_(\d+)$")


@dataclass(frozen=True, order=True)
class Step:
    """One save of a training run: MindSpore's epoch and step in epoch, as in the file name
    (`<prefix>-<epoch>_<step>.ckpt`).

    Attributes:
        epoch: the epoch.
        step: the step in that epoch.
    """
    epoch: int
    step: int

    def __str__(self) -> str:
        return f"{self.epoch}_{self.step}"

    @property
    def described(self) -> str:
        """`10_2 (epoch 10, step 2)`: how the chosen step is named to the user."""
        return f"{self} (epoch {self.epoch}, step {self.step})"


def parse_step(text: str, flag: str = "--step") -> Step:
    """The step a user asks for: `<epoch>_<step>` as in the file names (`10_2`; `10-2` too).

    Args:
        text: what the user gave.
        flag: the flag it came with, for the message.

    Returns:
        The Step.

    Raises:
        ReshardError: text is not of that form, naming the flag.
    """
    m = _STEP_TEXT.match(text or "")
    if not m:
        raise ReshardError(f"{flag} {text!r}: expected <epoch>_<step> as in the checkpoint file "
                           f"names (e.g. 10_2 for llama_rank_0-10_2.ckpt)")
    return Step(int(m.group(1)), int(m.group(2)))


def step_of(file_name: str) -> tuple[str, Step] | None:
    """(prefix, step) of a `<prefix>-<epoch>_<step>.ckpt|.safetensors` file name (no folder),
    None for a name that carries no step."""
    m = _STEP_NAME.match(file_name)
    if m is None:
        return None
    return m.group("prefix"), Step(int(m.group("epoch")), int(m.group("step")))


@dataclass(frozen=True)
class Choice:
    """The rule's answer for a set of folders: the file chosen in each (folder key -> its name
    as given), the step read (None: no file carries one, the last in name order was taken) and
    the other steps present (sorted), for the one line that says what was chosen."""
    files: dict
    step: Step | None
    others: tuple[Step, ...] = ()


def _run_order(prefixes: set[str], where: str) -> dict[str, int]:
    """prefix -> run number: the shortest prefix p is run 0, `p_<n>` run n (MindSpore's rename
    of a later run's prefix). Unrelated prefixes in one folder are an error."""
    base = min(prefixes, key=len)
    order = {base: 0}
    for p in prefixes - {base}:
        m = _RUN_SUFFIX.match(p[len(base):]) if p.startswith(base) else None
        if m is None:
            raise ReshardError(f"{where} holds checkpoints of several series ({', '.join(sorted(prefixes))}): "
                               f"keep one series per folder")
        order[p] = int(m.group(1))
    return order


def _latest(named: list[tuple[str, str, Step]], where: str) -> Step:
    """The latest step of one folder's series, checked against its runs."""
    runs = _run_order({p for _, p, _ in named}, where)
    latest = max(named, key=lambda x: x[2])
    last_run = max(runs.values())
    in_last = max(s for _, p, s in named if runs[p] == last_run)
    if in_last < latest[2]:
        newest = next(p for p, n in runs.items() if n == last_run)
        raise ReshardError(f"{where}: the latest step {latest[2]} is in {latest[0]}, but the later run "
                           f"{newest}-* (MindSpore adds _<n> to the prefix of a run saving into a folder "
                           f"that holds checkpoints) ends at step {in_last}: give --step to choose one")
    return latest[2]


def _file_of(named: list[tuple[str, str, Step]], step: Step, where: str) -> str | None:
    """The file of `step` in one folder (the later run's when two runs saved it)."""
    hits = [(n, p) for n, p, s in named if s == step]
    if not hits:
        return None
    runs = _run_order({p for _, p, _ in named}, where)
    return max(hits, key=lambda h: runs[h[1]])[0]


def choose(folders: Mapping[object, Sequence[str]], where: Mapping[object, str],
           want: Step | None = None, label: str = "rank", root: str = "") -> Choice:
    """Apply the rule to a set of folders. folders: key (a rank, or 0 for a folder of complete
    files) -> the checkpoint file names in that folder (relative names; only the last '/'-part
    is parsed), every folder non-empty; where: key -> the folder as the user knows it, for
    messages; want: the step asked for; label: how a key is named ("rank" -> rank_3); root: the
    checkpoint as the user named it, for messages about several folders.
    Raises ReshardError (one line naming the folders and steps) where the rule refuses."""
    parsed, plain = _parse_names(folders)
    if not parsed:
        if want is not None:
            first = next(iter(folders))
            raise ReshardError(f"--step {want}: no checkpoint file in {where[first]} names a step "
                               f"(expected <prefix>-<epoch>_<step>.ckpt, found {sorted(folders[first])[-1]})")
        return Choice({k: sorted(v)[-1] for k, v in folders.items()}, None)
    if want is None:
        _refuse_mixed(folders, parsed, plain, where, label)
    missing = [k for k in folders if k not in parsed]
    if missing:   # only with a step asked for: the plain files are left aside
        raise ReshardError(f"--step {want}: {_names(missing, where, label)} of {root} hold no step-named "
                           f"checkpoint")
    step = want if want is not None else _common_latest(folders, parsed, where, label, root)
    files, lacking = {}, []
    for key, named in parsed.items():
        name = _file_of(named, step, where[key])
        if name is None:
            lacking.append(key)
        else:
            files[key] = name
    if lacking:
        have = "; ".join(f"{_names([k], where, label)} has {', '.join(map(str, sorted({s for _, _, s in parsed[k]})))}"
                         for k in lacking[:3])
        raise ReshardError(f"step {step} is missing in {_names(lacking, where, label)} of {root} ({have})")
    others = tuple(sorted({s for v in parsed.values() for _, _, s in v} - {step}))
    return Choice(files, step, others)


def _parse_names(folders: Mapping[object, Sequence[str]]
                 ) -> tuple[dict[object, list[tuple[str, str, Step]]], dict[object, list[str]]]:
    """choose(): (key -> [(name, prefix, step)] of its step-named files, key -> its other files)."""
    parsed: dict[object, list[tuple[str, str, Step]]] = {}
    plain: dict[object, list[str]] = {}
    for key, names in folders.items():
        for name in names:
            got = step_of(name.rsplit("/", 1)[-1])
            if got is None:
                plain.setdefault(key, []).append(name)
            else:
                parsed.setdefault(key, []).append((name, got[0], got[1]))
    return parsed, plain


def _refuse_mixed(folders: Mapping[object, Sequence[str]], parsed: dict, plain: dict,
                  where: Mapping[object, str], label: str) -> None:
    """choose() with no step asked for: a file naming no step where step-named ones are (in
    that folder or the others) is refused: which one would be read is not clear."""
    for key in folders:
        if key in plain:
            there = "there" if key in parsed else f"in the other {label} folders"
            other = (parsed[key] if key in parsed else next(iter(parsed.values())))[0][0]
            raise ReshardError(f"{where[key]} holds {sorted(plain[key])[-1]}, which names no step, while "
                               f"step-named checkpoints are {there} ({other}): give --step to read "
                               f"one step, or remove the other files")


def _common_latest(folders: Mapping[object, Sequence[str]], parsed: dict, where: Mapping[object, str],
                   label: str, root: str) -> Step:
    """choose() with no step asked for: the latest step, the same in every folder (ReshardError
    naming the folders' latest steps, and a step every folder has, when they differ)."""
    latest = {k: _latest(v, where[k]) for k, v in parsed.items()}
    distinct = sorted(set(latest.values()))
    if len(distinct) > 1:
        groups = "; ".join(f"{_names([k for k in folders if latest[k] == s], where, label)}: {s}"
                           for s in reversed(distinct))
        common = set.intersection(*({s for _, _, s in v} for v in parsed.values()))
        hint = f" (--step {max(common)} is in every folder)" if common else ""
        raise ReshardError(f"the latest steps differ between the {label} folders of {root} ({groups}): give --step to "
                           f"read the same step everywhere{hint}, never a mix of steps")
    return distinct[0]


def _names(keys: list, where: Mapping[object, str], label: str) -> str:
    """rank_0-2, rank_5 (runs of ranks) or the folders' names."""
    if label != "rank" or not all(isinstance(k, int) for k in keys):
        return ", ".join(where[k] for k in keys)
    keys = sorted(keys)
    runs: list[list[int]] = []
    for k in keys:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ", ".join(f"rank_{a}" if a == b else f"rank_{a}-{b}" for a, b in runs)


def chosen_line(choice: Choice, count: int, where: str, label: str = "rank") -> str:
    """The one line that says which step was read: `step 10_2 (epoch 10, step 2) chosen in all 8
    rank folders; also present: 5_2`."""
    assert choice.step is not None
    scope = f"all {count} {label} folders" if label == "rank" else where
    also = f"; also present: {', '.join(map(str, choice.others))}" if choice.others else ""
    return f"step {choice.step.described} chosen in {scope}{also}"
