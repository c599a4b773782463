"""`jestkit score` splits its reading over the ranks: shard i is listed by rank i % world_size
and the merged listing is the one-process one; scoring reads only the shards that hold the
asked ids; a second scorer on a locked folder is refused at once."""

from __future__ import annotations

import pytest
from shard_files import write_shards

from jestkit.cli import main as cli_main
from jestkit.data.shards import DuplicateIdError, ShardPool
from jestkit.data.stream import HashedWords, grayscale
from jestkit.engine.rundir import run_lock
from jestkit.own.score import _Scorer, list_my_shards, merge_lists


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    pattern = write_shards(tmp_path_factory.mktemp("score"), shards=5, per_shard=10,
                           bad=(13, 41))  # fmt: skip
    return ShardPool(pattern, transform=grayscale(28), buffer_size=0)


def test_each_rank_lists_its_shards_and_the_merge_is_one_process(pool):
    whole = list_my_shards(pool)
    assert sorted(whole) == [0, 1, 2, 3, 4]
    ranks = [list_my_shards(pool, r, 2) for r in range(2)]
    assert sorted(ranks[0]) == [0, 2, 4] and sorted(ranks[1]) == [1, 3]
    ids, where, skipped = merge_lists(pool.shards, {**ranks[0], **ranks[1]})
    assert (ids, where, skipped) == merge_lists(pool.shards, whole)
    assert ids == [f"{n:032x}" for n in range(50) if n not in (13, 41)]
    assert where[:10] == [0] * 10 and skipped == {"undecodable image": 2}
    twice = {**whole, 3: whole[1]}  # shard 3 listing shard 1's ids
    with pytest.raises(DuplicateIdError, match=r"shards-0001.tar and in .*shards-0003.tar"):
        merge_lists(pool.shards, twice)


def test_scoring_reads_only_the_shards_of_the_asked_ids(pool):
    ids, where, _ = merge_lists(pool.shards, list_my_shards(pool))
    scorer = _Scorer(pool, dict(zip(ids, where, strict=True)), HashedWords(64, 4), None, "cpu")
    in_3 = [i for i, w in zip(ids, where, strict=True) if w == 3]
    images, tokens = scorer.inputs(in_3[:4])
    assert scorer.opened == [3] and images.shape == (4, 1, 28, 28) and tokens.shape == (4, 4)
    in_4 = [i for i, w in zip(ids, where, strict=True) if w == 4]  # 9: sample 41 is bad
    images, _ = scorer.inputs(in_3[4:] + in_4)
    assert scorer.opened == [3, 4] and len(images) == len(in_3) - 4 + 9


def test_a_second_scorer_on_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "ref"
    with run_lock(out):
        code = cli_main(["score", "--shards.pattern", str(tmp_path / "*.tar"), "--reference",
                         str(tmp_path / "model.pt"), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 2 and "another jestkit run" in capsys.readouterr().err


def test_score_refuses_the_training_reader_flags(tmp_path, capsys):
    pattern = write_shards(tmp_path / "s", shards=1, per_shard=4)
    model = str(tmp_path / "model.pt")
    code = cli_main(["score", "--shards.pattern", pattern, "--shards.workers", "2",
                     "--reference", model, "--out", str(tmp_path / "ref"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--shards.workers and --shards.streams are for jestkit train" in err
