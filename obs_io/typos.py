"""Which known flag a mistyped one probably meant: THE rule of the three command-line tools
(cloud-entry's hyperparameters, transform-checkpoint's and obs_io's flags), so a typo such as
`--auto_trans_ckp=True` or `--src_stratgy=x` is one line naming the flag meant, never a flag
silently ignored or argparse's usage dump. Standard library only (obs_io is the lowest package).
"""
from __future__ import annotations

from typing import Sequence


def normal(name: str) -> str:
    """A flag name as compared: lower case, `-` read as `_`."""
    return name.lower().replace("-", "_")


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent swaps)."""
    d = [[max(i, j) if 0 in (i, j) else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _tokens_match(a: list[str], b: list[str]) -> bool:
    """Every word of a (2 or more) is the start of a different word of b, or b's of a:
    `auto_transform_ckpt` ~ `auto_trans_ckpt`, `trans_ckpt` ~ `auto_trans_ckpt`."""
    if len(a) < 2:
        return False
    left = list(b)
    for word in a:
        hit = next((w for w in left if w.startswith(word) or word.startswith(w)), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


def closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate `name` is probably a typo of, or None. Close means: the same up to case and
    -/_ (and with the underscores left out); one of them with something appended
    (`load_checkpoint_path`); an abbreviation of 7+ characters covering 2/3 of it (`auto_trans`, `autotrans`);
    its words, abbreviated or not (`auto_transform_ckpt`, `trans_ckpt`); or 1 edit away (names
    of 5-7 characters), 2 edits (longer names). Names under 5 characters are never typos."""
    low = normal(name)
    if len(low) < 5:
        return None
    squashed = low.replace("_", "")
    for known in sorted(candidates):
        k_squashed = known.replace("_", "")
        if low == known or squashed == k_squashed:
            return known
        if len(known) >= 8 and (low.startswith(known) or
                                (len(squashed) >= 7 and k_squashed.startswith(squashed)
                                 and 3 * len(squashed) >= 2 * len(k_squashed))):
            return known
        if _tokens_match(low.split("_"), known.split("_")) or _tokens_match(known.split("_"), low.split("_")):
            return known
    best = min(sorted(candidates), key=lambda known: _distance(low, known))
    limit = 1 if len(low) <= 7 else 2
    return best if _distance(low, best) <= limit else None
