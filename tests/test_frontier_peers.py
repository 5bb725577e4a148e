"""experiments/frontier_peers.py: the SAELens configs it trains (both unit modes), the ours-over-theirs
rows it writes, and its argument errors. The training itself is an experiment run, not a test."""

from __future__ import annotations

import pytest

from experiments import frontier_peers as peers


def test_gemma_scope_units_use_gemma_scopes_jumprelu_constants_and_our_coefficients():
    cfg = peers.sae_lens_config("jumprelu_step", "gemma_scope", 1e-3, d_in=8, d_sae=32, c2=400.0, quad_coef=1e-2)
    assert cfg.jumprelu_sparsity_loss_mode == "step"
    assert (cfg.jumprelu_bandwidth, cfg.jumprelu_init_threshold, cfg.decoder_init_norm) == (0.001, 0.001, 1.0)
    assert cfg.l0_coefficient == pytest.approx(1e-3)  # inputs scaled to E||x||^2 = 1: our lambda as is
    assert cfg.l0_warm_up_steps == peers.SPARSITY_WARMUP
    quad = peers.sae_lens_config("jumprelu_quadratic", "gemma_scope", 40.0, 8, 32, c2=400.0, quad_coef=1e-2)
    assert quad.jumprelu_sparsity_loss_mode == "quadratic"
    assert (quad.target_l0, quad.l0_coefficient) == (40.0, pytest.approx(1e-2))
    topk = peers.sae_lens_config("batchtopk", "gemma_scope", 64.0, 8, 32, c2=400.0, quad_coef=1e-2)
    assert (type(topk).__name__, topk.k, topk.decoder_init_norm) == ("BatchTopKTrainingSAEConfig", 64, 1.0)


def test_defaults_units_keep_sae_lens_defaults_and_scale_the_penalty_by_the_input_power():
    cfg = peers.sae_lens_config("jumprelu_step", "defaults", 1e-3, d_in=8, d_sae=32, c2=400.0, quad_coef=1e-2)
    # raw inputs: the MSE is c2 times larger than in our units, so the penalty must be too
    assert cfg.l0_coefficient == pytest.approx(1e-3 * 400.0)
    assert cfg.jumprelu_bandwidth != 0.001 and cfg.decoder_init_norm != 1.0  # SAELens's own defaults


def _rows(series, points):
    return [{"architecture": series, "l0": l0, "delta_loss": dl, "fvu": f} for l0, dl, f in points]


def test_compare_writes_ours_over_theirs_at_matched_l0_and_the_wall_times():
    theirs = _rows("saelens_jumprelu_step_gs", [(20.0, 0.4, 0.30), (100.0, 0.2, 0.20)])
    # ours: half their delta loss and the same FVU at every L0
    ours = _rows("jumprelu_quadratic_batch_centred", [(20.0, 0.2, 0.30), (100.0, 0.1, 0.20)])
    rows = peers.compare(
        ours + theirs,
        ["jumprelu_step"],
        ["gemma_scope"],
        {"jumprelu_quadratic_batch_centred": 120.0},
        {"saelens_jumprelu_step_gs": [300.0, 320.0]},
        "1.0",
        ("jumprelu_quadratic_batch_centred",),
    )
    assert len(rows) == 1  # our plain `jumprelu` series is absent: no row for it
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[0] == "jumprelu_quadratic_batch_centred vs SAELens jumprelu_step" and cells[1] == "gemma_scope"
    assert cells[2].endswith("= 0.50x") and cells[3].endswith("= 1.00x")  # delta loss, FVU @ L0 40
    assert cells[4].endswith("= 0.50x") and cells[5].endswith("= 1.00x")  # @ L0 80
    assert cells[6:] == ["120", "310", "1.0"]


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--values_for=topk", "is not PEER=V1,V2"),
        ("--values_for=nope=1,2", "is not PEER=V1,V2"),
        ("--values_for=topk=32,big", "values must be numbers"),
        ("--values_for=jumprelu_step=1e-3,0", "values must be positive"),
        ("--values_for=batchtopk=32,64.5", "k must be a whole number"),
        ("--peers=nope", "unknown peer 'nope'"),
    ],
)
def test_bad_arguments_fail_before_any_training_naming_the_flag(arg, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        peers.main([f"--workdir={tmp_path}", arg])
    assert message in capsys.readouterr().err


def test_a_peer_without_our_counterpart_fails_before_training_naming_the_series(tmp_path, capsys):
    sae = tmp_path / "saes" / "res" / "layer_15" / "width_4k" / "jumprelu_quadratic_batch_centred" / "average_l0_41"
    sae.mkdir(parents=True)
    (sae / "params.npz").write_bytes(b"")
    assert peers.our_series(str(tmp_path)) == {"jumprelu_quadratic_batch_centred"}
    # our plain `batchtopk` series is not there: the experiment would train for nothing, so it stops first
    with pytest.raises(SystemExit):
        peers.main([f"--workdir={tmp_path}", "--peers=batchtopk", "--units=gemma_scope"])
    err = capsys.readouterr().err
    assert "batchtopk is compared with our 'batchtopk' series" in err and "jumprelu_quadratic_batch_centred" in err
    with pytest.raises(SystemExit):
        peers.main([f"--workdir={tmp_path}", "--peers=batchtopk", "--ours=nope"])
    assert "--ours: ['nope'] not exported" in capsys.readouterr().err


def test_training_load_is_read_from_the_peer_saes_metadata(tmp_path):
    (tmp_path / "metadata.json").write_text('{"load_1min_start": 1.5, "load_1min_end": 2.5}')
    assert peers.training_load(str(tmp_path / "params.npz")) == 2.0
    (tmp_path / "metadata.json").write_text('{"variant": "x"}')
    assert peers.training_load(str(tmp_path / "params.npz")) is None
