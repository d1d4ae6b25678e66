import pytest

from gan.train.checkpoint import CheckpointError, CheckpointManager, resolve_resume


def _save(m: CheckpointManager, step: int) -> None:
    tmp = m.begin(step)
    (tmp / "trainer_state.pt").write_bytes(b"x")
    m.commit(step)


def test_latest_points_to_newest_and_pruning_keeps_last_and_milestones(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2, keep_every=300)
    for step in (100, 200, 300, 400, 500, 600, 700):
        _save(m, step)
    assert m.latest().name == "step_000000700"
    assert m.steps() == [300, 600, 700]


def test_kill_during_save_leaves_previous_checkpoint_usable(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=3)
    _save(m, 10)
    tmp = m.begin(20)  # a save that never completes: killed mid-write
    (tmp / "model.safetensors").write_bytes(b"partial")
    assert m.latest().name == "step_000000010"
    assert resolve_resume(tmp_path, "auto").name == "step_000000010"
    assert m.steps() == [10]
    _save(m, 30)  # the next complete save removes the stale temporary dir
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path, "auto") is None  # fresh run: nothing to resume
    m = CheckpointManager(tmp_path)
    _save(m, 5)
    assert resolve_resume(tmp_path, str(tmp_path)).name == "step_000000005"
    assert resolve_resume(tmp_path, str(m.final_dir(5))) == m.final_dir(5)
    with pytest.raises(CheckpointError, match=r"--resume .*nowhere: no such file or folder; give a checkpoints/"):
        resolve_resume(tmp_path, str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match=r"--init-from .*trainer_state.pt: a file, not a checkpoint directory"):
        resolve_resume(tmp_path, str(m.final_dir(5) / "trainer_state.pt"), option="--init-from")
    with pytest.raises(CheckpointError, match=r"--resume .*checkpoints: not a complete checkpoint \(no trainer_state"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints"))  # a folder, but neither a run nor a step


def test_dangling_latest_pointer_is_a_clear_error(tmp_path):
    m = CheckpointManager(tmp_path)
    _save(m, 5)
    (tmp_path / "checkpoints" / "latest").write_text("step_000000099\n")
    with pytest.raises(CheckpointError, match="points to missing"):
        m.latest()


def test_a_checkpoint_from_before_a_new_model_field_resumes_with_its_default(tmp_path):
    """A field added to a model section since the checkpoint was written (``generator.band_gain.magnitude``,
    nested) takes its default, which keeps the old model; a changed value still refuses."""
    from gan.config import load_config, to_dict
    from gan.train.checkpointer import check_compatible, model_config

    cfg = load_config("cpu", [])
    saved = model_config(cfg)
    del saved["generator"]["band_gain"]["magnitude"]
    state = {"model_config": saved, "optimizers": [cfg.optim.generator.name, cfg.optim.discriminator.name]}
    check_compatible(state, cfg, tmp_path)
    changed = load_config("cpu", ["generator.band_gain.magnitude=false"])
    with pytest.raises(CheckpointError, match="different generator config"):
        check_compatible(state, changed, tmp_path)
    assert to_dict(cfg.generator)["band_gain"]["magnitude"] is True
