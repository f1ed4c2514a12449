"""Planning at scale stays the same plan: the shared, once-per-stage planner gives exactly the
plan of a straightforward rank-by-rank reference, its pieces are shared objects, and a source
folder with fewer ranks than its strategy is one line naming the missing rank folder."""
from __future__ import annotations

import math
import os
import pickle
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reshard import api
from reshard.cli import main
from reshard.layout import complete_layout
from reshard.plan import Headers, Piece, PlanPolicy, RankPlan, TensorPlan, _itemsize, _Planner, _product
from reshard.sources import output_name
from tests import synth
from conftest import errors_only

# Built at import: it imports MindSpore (bfloat16 values), which raises the recursion limit,
# something hypothesis warns about when it happens during a test.
PARAMS = synth.llama_params(vocab=64, hidden=16, ffn=32)


class _ReferencePlanner(_Planner):
    """The planner as it was before the scale work: every destination rank walks every name,
    filters its layouts, recomputes its region and source blocks and scans every replica for
    the least loaded. Slow (ranks x names x source devices) but obviously right: the
    reference the shared planner must equal."""

    def holders_from_strategies(self) -> None:
        src, dst = self.src, self.dst
        names = list(src.layouts) if src else list(dst.layouts) if dst else []
        keys = sorted(self.files) or list(range(src.world_size if src else 1))
        for name in names:
            self.holders[name] = [k for k in keys if src is None or
                                  any(src.stage_of(k) == lay.stage for lay in src.layouts[name])]

    def pick(self, cands: list[int]) -> int:
        return min(cands, key=lambda r: (self.loads.get(r, 0), r))

    def plan_rank(self, d: int) -> RankPlan:
        """Every name walked per rank; a rank holding the same slices (same stage, same region
        of every laid-out tensor) as an earlier one reads the same pieces, and the two are the
        same bytes when their carried values are the same too."""
        src, dst = self.src, self.dst
        d_stage = dst.stage_of(d) if dst else 0
        d_local = d % self.d_dev
        laid, carried = [], []
        for name in list(self.holders):
            full = self.full[name]
            dlay = dst.layout_in_stage(name, d_stage) if dst else complete_layout(len(full))
            if dst is not None and dlay is None and name in dst.layouts:
                continue
            slays = list(src.layouts.get(name, ())) if src else [complete_layout(len(full))]
            if dlay is None or not slays:
                carried.append(name)
                continue
            slays = [sl for sl in slays if sl.same_blocks(slays[0])]
            assert not (dlay.devices % slays[0].devices and slays[0].devices % dlay.devices)
            dlay.check_divides(full)
            laid.append((name, slays, dlay.region(dlay.block_of(d_local), full)))
        key = (d_stage, tuple(region for _, _, region in laid))
        tensors = self.laid_of.get(key)
        if tensors is None:
            tensors = self.laid_of[key] = [
                TensorPlan(name, self.dtypes[name], tuple(b - a for a, b in region),
                           tuple(self._pieces(name, region, slays))) for name, slays, region in laid]
        tensors = list(tensors)
        used = sorted({p.src_rank // self.s_dev for t in tensors for p in t.pieces}) or [0]
        carry_rank = None
        if self.headers is None:
            carry_rank = used[0] * self.s_dev + d_local % self.s_dev if src else 0
        for name in carried:
            tensors.append(self.carried(name, d_local % self.s_dev, used))
        rp = RankPlan(d, output_name(d, self.prefix, self.fmt), tuple(tensors), carry_rank)
        twin = next((r for r, (k, o) in self.seen.items() if k == key and o.tensors == rp.tensors
                     and o.carry_rank == carry_rank and r not in self.same_as), None)
        if twin is not None:
            self.same_as[d] = twin
        self.seen[d] = (key, rp)
        return rp

    @property
    def seen(self) -> dict:
        if not hasattr(self, "_seen"):
            self._seen = {}
        return self._seen

    def _pieces(self, name, dst_region, src_lays):
        full = self.full[name]
        if any(b <= a for a, b in dst_region):
            return []
        lay = src_lays[0]
        replicas: dict = {}
        for sl in src_lays:
            for block, local in sl.replicas.items():
                replicas.setdefault(block, []).extend(sl.stage * self.s_dev + r for r in local)
        ranges = [range(a // (n // s), (b - 1) // (n // s) + 1)
                  for (a, b), n, s in zip(dst_region, full, lay.splits)]
        out = []
        for block in _product(ranges):
            src_block = lay.region(block, full)
            inter = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(dst_region, src_block))
            rank = self.pick(self.holding(name, replicas[block], block))
            self.loads[rank] = self.loads.get(rank, 0) + \
                math.prod(b - a for a, b in inter) * _itemsize(self.dtypes[name])
            out.append(Piece(rank, self.file_of(rank, name),
                             tuple((a - c, b - c) for (a, b), (c, _) in zip(inter, src_block)),
                             tuple((a - c, b - c) for (a, b), (c, _) in zip(inter, dst_region))))
        return out


def _reference(src, dst, source, headers=None, read=(), dst_ranks=None):
    return _ReferencePlanner(src, dst, source, headers, tuple(read), dst_ranks, "checkpoint_",
                             "ckpt", PlanPolicy()).plan()


def _assert_same_plan(plan, ref):
    """Equal as data (every rank, tensor and piece) and as printed."""
    assert plan == ref
    assert plan.dump() == ref.dump()
    assert plan.needed_source_ranks() == ref.needed_source_ranks()


layouts = st.fixed_dictionaries({"dp": st.sampled_from([1, 2, 4]),
                                 "mp": st.sampled_from([1, 2, 4]),
                                 "pp": st.sampled_from([1, 2]),
                                 "opt_shard": st.sampled_from([0, -1, 2])})


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(a=layouts, b=layouts, shared=st.booleans(), some=st.booleans())
def test_skeleton_equals_the_reference(tmp_path_factory, a, b, shared, some):
    """From strategies alone, over random dp/mp/pp/optimizer-shard pairs (replicated sources
    exercise the least-loaded pick, shared embeddings several source stages per name)."""
    tmp = tmp_path_factory.mktemp("skel")
    params = PARAMS
    synth.write_strategy(str(tmp / "a"), params=params, shared_embedding=shared, **a)
    synth.write_strategy(str(tmp / "b"), params=params, **b)
    src, dst = api.load_strategy(str(tmp / "a")), api.load_strategy(str(tmp / "b"))
    ranks = list(range(0, dst.world_size, 3)) if some else None
    for s, d in ((src, dst), (None, dst), (src, None)):
        r = ranks if d is not None else None
        _assert_same_plan(api.plan_from_strategies(None, s, d, dst_ranks=r),
                          _reference(s, d, None, dst_ranks=r))


def test_fixed_pieces_and_picks_by_load_equal_the_reference(tmp_path):
    """Parameters with one source replica per block (optimizer-sharded: fixed pieces, looked
    up once per class) beside parameters with several (picked by load, after the bytes of the
    fixed pieces before them): within one destination stage, in both orders, and a stage of
    fixed pieces only whose bytes weigh on the picks of a later one; every rank and some."""
    params = synth.llama_params(num_layers=4, vocab=60, hidden=16, ffn=32)
    for name, kw in (("a", dict(dp=4, mp=2, pp=2)), ("b", dict(dp=2, mp=2, pp=2)),
                     ("c", dict(dp=8, mp=1, pp=1))):
        synth.write_strategy(str(tmp_path / name), opt_shard=-1, num_layers=4, params=params,
                             **kw)
    # d: every parameter optimizer-sharded (one replica per block) but lm_head (8 replicas)
    stages = synth.strategy_stages(8, 1, 1, synth.llama_params(num_layers=4, vocab=64, hidden=16,
                                                               ffn=32), opt_shard=-1, num_layers=4)
    stages[0]["lm_head.weight"].update(opt_weight_shard_size=0, opt_weight_shard_step=0)
    synth.write_layouts(str(tmp_path / "d"), stages, 8)
    a, b, c, d = (api.load_strategy(str(tmp_path / n)) for n in "abcd")
    emb = "model.tok_embeddings.embedding_weight"
    assert len(a.layouts[emb][0].replicas[(0, 0)]) > 1          # picked by load
    assert len(a.layouts["model.layers.0.attention.wq.weight"][0].replicas[(0, 0)]) == 1
    assert len(d.layouts[emb][0].replicas[(0, 0)]) == 1
    assert len(d.layouts["lm_head.weight"][0].replicas[(0, 0)]) == 8
    for src, dst, ranks in ((a, b, None), (a, c, None), (c, b, None), (a, b, [1, 2, 6]),
                            (b, a, None), (d, b, None), (d, b, [0, 6]), (d, b, [3, 4]),
                            (d, a, [4, 8])):
        plan = api.plan_from_strategies(None, src, dst, dst_ranks=ranks)
        _assert_same_plan(plan, _reference(src, dst, None, dst_ranks=ranks))


def test_full_plans_equal_the_reference(tmp_path):
    """With headers: a rank-folder source (all of it, and a partial copy), a redundancy-removed
    one (the planner reads other replicas' files) and a complete one."""
    params = PARAMS
    full = synth.write_complete_checkpoint(str(tmp_path / "full.ckpt"), params)
    synth.write_strategy(str(tmp_path / "s8"), dp=2, mp=2, pp=2, params=params)
    synth.write_strategy(str(tmp_path / "s8o"), dp=4, mp=2, pp=1, opt_shard=-1, params=params)
    synth.write_strategy(str(tmp_path / "s4"), dp=1, mp=2, pp=2, params=params)
    s8, s8o, s4 = (api.load_strategy(str(tmp_path / n)) for n in ("s8", "s8o", "s4"))
    c8 = str(tmp_path / "c8")
    api.transform(full, c8, dst_strategy=str(tmp_path / "s8"))
    c8o = str(tmp_path / "c8o")
    api.transform(full, c8o, dst_strategy=str(tmp_path / "s8o"))
    lean = str(tmp_path / "lean")
    synth.remove_redundancy(c8, lean, str(tmp_path / "s8"), 4)
    cases = [(c8, s8, s4, None), (c8, s8, s4, [1, 2]), (c8, s8, None, None),
             (c8o, s8o, s4, None), (c8o, s8o, s8, [0, 5]), (lean, s8, s4, None),
             (full, None, s8, None), (full, None, s4, [3])]
    for folder, src, dst, ranks in cases:
        source = api.find_sources(folder)
        skeleton = api.plan_from_strategies(source, src, dst, dst_ranks=ranks)
        _assert_same_plan(skeleton, _reference(src, dst, source, dst_ranks=ranks))
        root = os.path.dirname(folder) if os.path.isfile(folder) else folder
        needed = skeleton.needed_files()
        _assert_same_plan(api.complete_plan(skeleton, root),
                          _reference(src, dst, source, Headers(root), needed, ranks))


def test_pieces_are_shared_and_the_plan_pickles(tmp_path):
    """Equal pieces are one object (their regions too), so memory grows with the tensors
    planned, not with their pieces; the plan still pickles (to workers) to an equal plan."""
    params = synth.llama_params(num_layers=4, vocab=64, hidden=16, ffn=32)
    synth.write_strategy(str(tmp_path / "a"), dp=4, mp=2, pp=2, opt_shard=-1, num_layers=4,
                         params=params)
    synth.write_strategy(str(tmp_path / "b"), dp=2, mp=2, pp=4, num_layers=4, params=params)
    src, dst = api.load_strategy(str(tmp_path / "a")), api.load_strategy(str(tmp_path / "b"))
    plan = api.plan_from_strategies(None, src, dst)
    pieces = [p for rp in plan.ranks for t in rp.tensors for p in t.pieces]
    assert len({id(p) for p in pieces}) < len(pieces) // 4
    regions = [p.src_region for p in pieces] + [p.dst_region for p in pieces]
    assert len({id(r) for r in regions}) == len(set(regions))
    again = pickle.loads(pickle.dumps(plan))
    assert again == plan and again.dump() == plan.dump()


@pytest.fixture(scope="module")
def half_folder(tmp_path_factory):
    """An 8-rank source strategy (dp2 mp2 pp2) and a folder holding rank_0..3 only (stage 0),
    destinations s4 (dp1 mp2 pp2) and s4sub (without layer 1: its values are carried)."""
    root = tmp_path_factory.mktemp("half")
    params = PARAMS
    full = synth.write_complete_checkpoint(str(root / "full.ckpt"), params)
    synth.write_strategy(str(root / "s8"), dp=2, mp=2, pp=2, params=params)
    synth.write_strategy(str(root / "s4"), dp=1, mp=2, pp=2, params=params)
    synth.write_strategy(str(root / "s4sub"), dp=1, mp=2, pp=2,
                         params={n: v for n, v in params.items() if "layers.1." not in n})
    api.transform(full, str(root / "c8"), dst_strategy=str(root / "s8"))
    shutil.copytree(root / "c8", root / "c4")
    for r in range(4, 8):
        shutil.rmtree(root / "c4" / f"rank_{r}")
    return root


@pytest.mark.parametrize("dst, ranks, why", [
    ("s4", None, "the source strategy has 8 ranks"),
    ("s4", [2], "needed by the destination ranks"),
    ("s4sub", [0], "the source strategy has 8 ranks; parameter model.layers.1."),
])
def test_fewer_rank_folders_than_the_strategy_through_the_api(half_folder, dst, ranks, why):
    root = half_folder
    src, d = api.load_strategy(str(root / "s8")), api.load_strategy(str(root / dst))
    with pytest.raises(api.ReshardError) as e:
        source = api.find_sources(str(root / "c4"))
        api.complete_plan(api.plan_from_strategies(source, src, d, dst_ranks=ranks),
                          str(root / "c4"))
    msg = str(e.value)
    assert msg.startswith(f"{root / 'c4' / 'rank_4'}: missing or empty (") and why in msg, msg
    assert "\n" not in msg


def test_fewer_rank_folders_where_the_stage_read_suffices(half_folder):
    """Destination ranks of stage 0 read source ranks 0-3 only: planned and complete."""
    root = half_folder
    src, d = api.load_strategy(str(root / "s8")), api.load_strategy(str(root / "s4"))
    source = api.find_sources(str(root / "c4"))
    plan = api.complete_plan(api.plan_from_strategies(source, src, d, dst_ranks=[0, 1]),
                             str(root / "c4"))
    assert plan.with_headers and plan.needed_source_ranks() == [0, 1, 2, 3]


@pytest.mark.parametrize("dst, extra", [("s4", []),
                                        ("s4sub", ["--rank_id", "0", "--world_size", "4"])])
def test_fewer_rank_folders_through_transform_checkpoint(half_folder, capsys, dst, extra):
    root = half_folder
    out = root / f"out_{dst}"
    rc = main(["--src_checkpoint", str(root / "c4"), "--src_strategy", str(root / "s8"),
               "--dst_strategy", str(root / dst), "--dst_checkpoint", str(out)] + extra)
    err = errors_only(capsys.readouterr().err)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{root / 'c4' / 'rank_4'}: missing or empty" in err, err
    assert not out.exists() or not any(out.rglob("*.ckpt"))
