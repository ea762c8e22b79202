"""himac_ray.atomic: a published file is the old or the new content, never a partial one, and a
failed write leaves no temporary file behind."""

import threading

import pytest

from himac_ray.atomic import fsync_dir, fsync_tree, publish_file
from himac_ray.metrics import MetricsLog


def write_in_chunks(data: bytes, chunks: int = 16):
    """A writer that makes a partial file visible for a while if the publish were not atomic."""

    def write(tmp):
        step = max(1, len(data) // chunks)
        with open(tmp, "wb") as f:
            for i in range(0, len(data), step):
                f.write(data[i:i + step])
                f.flush()

    return write


def test_publish_creates_and_replaces_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "f.bin"
    assert publish_file(path, lambda tmp: tmp.write_bytes(b"old")) == path
    publish_file(str(path), lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_the_old_content_stays_while_the_new_one_is_written(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    seen = []

    def write(tmp):
        tmp.write_bytes(b"new")
        seen.append(path.read_bytes())

    publish_file(path, write)
    assert seen == [b"old"] and path.read_bytes() == b"new"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path, error):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def write(tmp):
        tmp.write_bytes(b"partial")
        raise error("disk full")

    with pytest.raises(error):
        publish_file(path, write)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_first_write_leaves_nothing_and_a_named_tmp_is_removed_too(tmp_path):
    path, tmp = tmp_path / "metrics.jsonl", tmp_path / "metrics.jsonl.tmp"
    with pytest.raises(ValueError):
        publish_file(path, lambda t: (t.write_text("{"), int("x")), tmp=tmp)
    assert list(tmp_path.iterdir()) == []
    publish_file(path, lambda t: t.write_text("{}\n"), tmp=tmp)
    assert path.read_text() == "{}\n" and not tmp.exists()


def test_a_concurrent_reader_sees_only_whole_versions(tmp_path):
    path = tmp_path / "f.bin"
    versions = [bytes([65 + i]) * 200_000 for i in range(2)]
    publish_file(path, write_in_chunks(versions[0]))
    stop, bad, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            data = path.read_bytes()
            reads[0] += 1
            if data not in versions:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            publish_file(path, write_in_chunks(versions[i % 2]))
    finally:
        stop.set()
        thread.join()
    assert not bad, f"partial files seen, sizes {bad[:5]}"
    assert reads[0] > 0


def test_fsync_helpers_run_on_a_tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "g").write_text("y")
    fsync_tree(tmp_path)
    fsync_dir(tmp_path / "a")


def test_metrics_log_rewrite_is_published_through_its_fixed_tmp_name(tmp_path):
    log = MetricsLog(tmp_path)
    for i in range(3):
        log.append({"iteration": i})
    log.truncate_from(1)
    assert [r["iteration"] for r in log.rows()] == [0]
    assert not (tmp_path / "metrics.jsonl.tmp").exists() and not (tmp_path / "eval.jsonl.tmp").exists()
