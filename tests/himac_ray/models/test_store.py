"""`save_model_atomic`, the one publisher of model folders: complete or absent, never half-written;
the previous folder survives a failed save; a folder himac-ray did not write is never replaced."""

import pytest

from himac_ray.models.store import MODEL_MARKER, ModelDirError, is_prepared, save_model_atomic


class Saves:
    """Stands in for a model / tokenizer: `save_pretrained` writes one file, or fails halfway."""

    def __init__(self, name: str = "config.json", text: str = "{}", fail: bool = False):
        self.name, self.text, self.fail = name, text, fail

    def save_pretrained(self, path, **kw):
        (path / self.name).write_text(self.text)
        if self.fail:
            raise KeyboardInterrupt


def test_publishes_files_and_markers(tmp_path):
    out = save_model_atomic(Saves(), Saves("tokenizer.json"), tmp_path / "m", files={"extra.json": "[1]"})
    assert out == tmp_path / "m" and is_prepared(out) and (out / MODEL_MARKER).exists()
    assert {p.name for p in out.iterdir()} >= {"config.json", "tokenizer.json", "extra.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_failed_save_keeps_the_previous_folder_and_leaves_no_temporary_one(tmp_path):
    out = save_model_atomic(Saves(text='{"v": 1}'), Saves("tokenizer.json"), tmp_path / "m")
    with pytest.raises(KeyboardInterrupt):
        save_model_atomic(Saves(text='{"v": 2}'), Saves("tokenizer.json", fail=True), out)
    assert (out / "config.json").read_text() == '{"v": 1}' and [p.name for p in tmp_path.iterdir()] == ["m"]
    save_model_atomic(Saves(text='{"v": 3}'), Saves("tokenizer.json"), out)  # its own folder: replaced
    assert (out / "config.json").read_text() == '{"v": 3}' and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_foreign_folder_is_refused_before_anything_is_written(tmp_path):
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "main.py").write_text("print(1)")
    with pytest.raises(ModelDirError):
        save_model_atomic(Saves(), Saves(), foreign)
    assert [p.name for p in foreign.iterdir()] == ["main.py"] and [p.name for p in tmp_path.iterdir()] == ["project"]
