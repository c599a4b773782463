"""The one writer and reader of jestkit's records (jestkit.engine.files): nothing written
through a symlink, nothing half-written left behind, nothing read from a FIFO, a device or a
link, and a record that is not what its reader needs named with its field (issue 28)."""

import json
import os
import subprocess
import sys

import pytest

from jestkit.engine.files import (
    RecordError,
    read_json_record,
    read_regular,
    read_text,
    write_bytes_atomic,
)

FULL_DISK = """
import resource, signal, sys, torch
from pathlib import Path
from jestkit.engine.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    save_checkpoint({"step": 1, "config": {}, "w": torch.zeros(200_000)}, Path(sys.argv[1]))
except OSError as e:
    print(e)
    sys.exit(3)
"""


def test_a_full_disk_leaves_no_temporary_file(tmp_path):
    """A checkpoint that does not fit (a file-size limit stands for the full disk): an OSError
    naming the file, the old checkpoint unchanged, and no checkpoint.pt.tmp left on the full
    disk (before: 100 KB of it stayed)."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the last good checkpoint")
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "checkpoint.pt.tmp" in done.stdout and "is unchanged" in done.stdout
    assert path.read_bytes() == b"the last good checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    from jestkit.engine.files import atomic_file

    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write(b"half")
        raise RuntimeError("the figure failed")
    assert path.read_bytes() == b"old" and not (tmp_path / "curves.png.tmp").exists()


def test_writes_replace_links_never_their_targets(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out.json.tmp").symlink_to(victim)
    write_bytes_atomic(b"{}", tmp_path / "out.json")
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("plant, says", [
    ("fifo", "is a FIFO"), ("/dev/zero", "is a symlink"), ("folder", "is a folder"),
    ("missing", "does not exist"),
])  # fmt: skip
def test_records_are_read_only_from_regular_files(tmp_path, plant, says):
    """A FIFO (its read would hang), a symlink to /dev/zero (it would exhaust memory), a
    folder, a missing file: refused, none read."""
    path = tmp_path / "reference.json"
    if plant == "fifo":
        os.mkfifo(path)
    elif plant == "folder":
        path.mkdir()
    elif plant != "missing":
        path.symlink_to(plant)
    with pytest.raises(RecordError, match=f"reference.json {says}"):
        read_json_record(path, "a reference's reference.json")


def test_never_more_than_the_bound_or_the_size_is_read(tmp_path):
    path = tmp_path / "part"
    path.write_bytes(b"x" * 100)
    assert read_regular(path, size=100) == b"x" * 100
    with pytest.raises(RecordError, match="has 100 bytes, 99 were written"):
        read_regular(path, size=99)
    with pytest.raises(RecordError, match="more than the 50"):
        read_regular(path, max_bytes=50)


@pytest.mark.parametrize("content, says", [
    ("[1, 2, 3]", "holds a JSON list, not a reference's reference.json"),
    ('{"loss": "sigmoid", "logit_scale', "is not valid JSON"),
    ('{"loss": "sigmoid"}', "has no 'logit_scale'"),
    ('{"loss": "sigmoid", "logit_scale": "ten"}', "'logit_scale' is \"ten\", it must be a number"),
    ('{"loss": "sigmoid", "logit_scale": true}', "'logit_scale' is true, it must be a number"),
    ('{"loss": 3, "logit_scale": 1.0}', "'loss' is 3, it must be a string"),
])  # fmt: skip
def test_a_record_names_its_file_and_the_bad_field(tmp_path, content, says):
    path = tmp_path / "reference.json"
    path.write_text(content)
    with pytest.raises(RecordError, match="reference.json") as e:
        read_json_record(path, "a reference's reference.json",
                         {"loss": str, "logit_scale": float}, "rebuild it")  # fmt: skip
    assert says in str(e.value) and str(e.value).endswith("; rebuild it")


def test_a_nested_field_and_a_good_record(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"config": {"selection": {"loss": "sigmoid"}}, "steps": 3}))
    got = read_json_record(path, "a run's result.json", {"config.selection.loss": str,
                                                          "steps": int})  # fmt: skip
    assert got["steps"] == 3
    path.write_text(json.dumps({"config": {"selection": []}}))
    with pytest.raises(RecordError, match="has no 'config.selection.loss'"):
        read_json_record(path, "a run's result.json", {"config.selection.loss": str})


def test_text_in_another_encoding_names_the_file(tmp_path):
    path = tmp_path / "classnames.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(RecordError, match=r"classnames.txt is not UTF-8 text \(byte 0xe9"):
        read_text(path)
