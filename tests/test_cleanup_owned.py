"""Cleanup owned by context managers (obs_io.cleanup): an undo runs when its block raises
anything, a stop request too, and never after a clean exit; a store's writer used as a context
manager leaves nothing behind when its block raises."""
from __future__ import annotations

import os

import pytest

from obs_io import store_for
from obs_io.cleanup import on_failure


@pytest.mark.parametrize("stop", [ValueError("bad input"), KeyboardInterrupt(), SystemExit(143)])
def test_the_undo_runs_whatever_ends_the_block_and_the_exception_goes_on(stop):
    undone = []
    with pytest.raises(type(stop)) as raised:
        with on_failure(undone.append, "undone"):
            raise stop
    assert raised.value is stop and undone == ["undone"]


def test_a_clean_block_is_not_undone_and_the_undo_sees_how_far_it_got():
    undone = []
    with on_failure(undone.append, "undone"):
        pass
    assert undone == []
    made = []
    with pytest.raises(RuntimeError):
        with on_failure(lambda: undone.extend(made)):
            made.append("first")
            raise RuntimeError("after the first step")
    assert undone == ["first"]


def test_an_undo_that_fails_chains_the_block_s_exception():
    def undo() -> None:
        raise OSError("the undo failed too")
    with pytest.raises(OSError) as raised:
        with on_failure(undo):
            raise ValueError("the block failed")
    assert isinstance(raised.value.__context__, ValueError)


def test_a_store_writer_whose_block_raises_leaves_nothing(tmp_path):
    target = str(tmp_path / "object.bin")
    with pytest.raises(KeyboardInterrupt):
        with store_for(target).open_writer(target) as writer:
            writer.write(b"half of it")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with store_for(target).open_writer(target) as writer:
        writer.write(b"all of it")
        writer.commit()
    assert os.listdir(tmp_path) == ["object.bin"]
