"""User errors on the command line end with one clear `himac-ray: ...` line and exit code 2, never
a traceback; folders himac-ray did not write are never replaced. Nothing here starts Ray or vLLM."""

import pytest

from himac_ray import cli
from himac_ray.models.store import MODEL_MARKER, ModelDirError, check_replaceable


def run_cli(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _bad_configs(tmp_path):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "latin1.yaml").write_bytes(b"run:\n  dir: caf\xe9\n")
    (tmp_path / "list.yaml").write_text("- model\n- run\n")
    (tmp_path / "scalar.yaml").write_text("42\n")
    (tmp_path / "dup.yaml").write_text("run:\n  seed: 1\n  seed: 2\n")
    return {
        "a_dir": "is not a file",
        "latin1.yaml": "is not UTF-8 text",
        "list.yaml": "must hold a mapping of sections",
        "scalar.yaml": "must hold a mapping of sections",
        "dup.yaml": "duplicate key 'seed'",
    }


@pytest.mark.parametrize("command", ["config", "train", "sft"])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, command):
    for name, needle in _bad_configs(tmp_path).items():
        code, err = run_cli([command, "--config", str(tmp_path / name)], capsys)
        assert code == 2 and needle in err and "Traceback" not in err, (name, err)


@pytest.mark.parametrize("override, needle", [
    ("algorithm=", "algorithm must be a mapping (it is a section"),
    ("learner.lr=nan", "must be a finite number"),
    ("algorithm.gamma=2", "algorithm.gamma=2.0 must be in (0, 1]"),
])
def test_bad_overrides_are_one_line_errors(capsys, override, needle):
    code, err = run_cli(["config", "--set", override], capsys)
    assert code == 2 and needle in err


def test_eval_on_a_missing_path_or_a_folder_of_garbage(tmp_path, capsys):
    code, err = run_cli(["eval", "--checkpoint", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    code, err = run_cli(["eval", "--checkpoint", str(junk)], capsys)
    assert code == 2 and "neither a run dir" in err
    (junk / "config.json").write_text("not json")
    (junk / "model.safetensors").write_bytes(b"\x00" * 3)
    code, err = run_cli(["eval", "--checkpoint", str(junk)], capsys)
    assert code == 2 and "not a usable model folder" in err
    (junk / "config.json").write_text('{"model_type": "llama"}')
    code, err = run_cli(["eval", "--checkpoint", str(junk)], capsys)
    assert code == 2 and "truncated" in err
    (junk / "checkpoints").mkdir()
    (junk / "config.json").unlink()
    code, err = run_cli(["eval", "--checkpoint", str(junk)], capsys)
    assert code == 2 and "no complete checkpoint" in err


def test_train_into_a_foreign_directory_is_refused(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    code, err = run_cli(["train", "--set", f"run.dir={tmp_path}", "--set", "model.path=tiny"], capsys)
    assert code == 2 and "not a himac-ray run directory" in err
    code, err = run_cli(["train", "--set", "run.dir=/", "--set", "model.path=tiny"], capsys)
    assert code == 2 and "not a himac-ray run directory" in err
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_sft_out_only_replaces_a_folder_himac_ray_wrote(tmp_path, capsys, monkeypatch):
    import himac_ray.sft.expert as expert

    def no_training(*a, **k):
        raise AssertionError("the folder must be refused before any SFT work")

    monkeypatch.setattr(expert, "expert_demonstrations", no_training)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export KEEP=1")
    for out in (home, tmp_path / "home" / ".bashrc"):
        code, err = run_cli(["sft", "--out", str(out), "--set", "model.path=tiny"], capsys)
        assert code == 2 and "choose a new" in err, err
    assert (home / ".bashrc").read_text() == "export KEEP=1"
    # absent, empty, marked (or an SFT folder from before the marker) may be replaced
    assert check_replaceable(tmp_path / "new") == (tmp_path / "new").absolute()
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    (home / MODEL_MARKER).write_text("")
    check_replaceable(home)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("config.json", "sft_metrics.json", "model.safetensors", "tokenizer.json"):
        (legacy / name).write_text("{}")
    check_replaceable(legacy)
    (legacy / "src").mkdir()
    with pytest.raises(ModelDirError):
        check_replaceable(legacy)


def test_sft_save_refuses_a_foreign_folder_and_marks_its_own(tmp_path):
    from himac_ray.sft.trainer import _save_atomic

    class Saves:
        def save_pretrained(self, path, **kw):
            (path / "config.json").write_text("{}")

    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "main.py").write_text("print(1)")
    with pytest.raises(ModelDirError):
        _save_atomic(Saves(), Saves(), foreign, {})
    assert (foreign / "main.py").exists() and [p.name for p in tmp_path.iterdir()] == ["project"]
    out = _save_atomic(Saves(), Saves(), tmp_path / "sft", {})
    assert (out / MODEL_MARKER).exists()
    _save_atomic(Saves(), Saves(), tmp_path / "sft", {"again": 1})  # its own folder: replaced
    assert '"again"' in (out / "sft_metrics.json").read_text()
