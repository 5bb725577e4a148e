"""The field's habits: TensorBoard / JSON-lines / W&B metric writers, PNG training curves,
progress bars on a terminal and lines elsewhere, the command line's config habits (unknown
fields in one line, comma tuples, the workdir's own config), configs importable from the package,
and the browser set-up of the suite (tests/conftest.py).

One tiny toy sweep (2 SAEs, 24 steps, logged every 6) is trained once for the module; the event
files it writes are read back with an independent TFRecord reader (length and data CRC-32C
checked, events parsed with the protobuf schema) and must hold, per SAE, exactly the values of
``metrics.jsonl`` (float32 in the events: rtol 1e-6).
"""

from __future__ import annotations

import glob
import io
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope import progress as progress_lib
from gemmascope.config import cli
from gemmascope.config import files as config_files
from gemmascope.train import writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
TAGS = {
    "loss",
    "mse",
    "l0",
    "fvu",
    "dead_fraction",
    "threshold/mean",
    "threshold/min",
    "threshold/max",
    "sparsity_coefficient",
    "lr",
}


def tiny_config(**over):
    c = config_lib.base_config()
    c.sites, c.layers, c.widths, c.lambdas = ("toy",), (0,), (32,), (0.01, 0.1)
    c.source = "toy"
    c.toy.d_in, c.toy.n_features, c.toy.mean_active = 8, 16, 2.0
    c.batch_size, c.num_tokens = 64, 64 * 24
    c.lr, c.lr_warmup_steps, c.lambda_warmup_steps = 3e-3, 4, 8
    c.norm_sample_rows = c.eval_rows = 512
    c.log_every, c.checkpoint_every = 6, 100
    for k, v in over.items():
        c[k] = v
    return config_lib.lock(c)


# ------------------------------------------------------------------- reading event files back


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_scalars(path: str) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of one TensorBoard event file: TFRecords (u64 length, masked
    CRC-32C of the length, data, masked CRC-32C of the data), each an ``Event`` protobuf."""
    from tensorboardX.proto import event_pb2

    raw = open(path, "rb").read()
    out: dict[str, dict[int, float]] = {}
    pos, n_events = 0, 0
    while pos < len(raw):
        header = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
        assert len_crc == _masked_crc(header), f"{path}: bad length CRC at byte {pos}"
        data = raw[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
        assert data_crc == _masked_crc(data), f"{path}: bad data CRC at byte {pos}"
        pos += 16 + length
        ev = event_pb2.Event.FromString(data)
        n_events += 1
        for v in ev.summary.value:
            out.setdefault(v.tag, {})[int(ev.step)] = float(v.simple_value)
    assert pos == len(raw) and n_events >= 1
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sweep trained by the real loop, printing to a captured non-terminal stdout."""
    from gemmascope.train.loop import train_and_evaluate

    wd = str(tmp_path_factory.mktemp("habits_train"))
    records = train_and_evaluate(tiny_config(), wd, log=lambda *a: None)
    return wd, records


def test_training_writes_tensorboard_events_equal_to_metrics_jsonl(trained):
    wd, records = trained
    rows = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
    assert sorted({r["step"] for r in rows}) == [6, 12, 18, 24] and {r["sae"] for r in rows} == {0, 1}
    loc = rows[0]["location"]
    runs = sorted(os.listdir(os.path.join(wd, "tensorboard", loc)))
    assert runs == ["sae0_lambda0.01", "sae1_lambda0.1"]
    for i, run in enumerate(runs):
        files = glob.glob(os.path.join(wd, "tensorboard", loc, run, "events.out.tfevents.*"))
        assert len(files) == 1
        got = read_scalars(files[0])
        assert set(got) == TAGS
        for r in (r for r in rows if r["sae"] == i):
            for key, tag in (
                ("loss", "loss"),
                ("l0", "l0"),
                ("fvu", "fvu"),
                ("dead_fraction", "dead_fraction"),
                ("threshold_mean", "threshold/mean"),
                ("threshold_max", "threshold/max"),
                ("sparsity_coefficient", "sparsity_coefficient"),
                ("lr", "lr"),
            ):
                np.testing.assert_allclose(got[tag][r["step"]], r[key], rtol=1e-6, atol=1e-12, err_msg=f"{run} {tag}")
    # the warmed-up lambda reaches the sweep value (warm-up 8 steps), which each row names
    assert got["sparsity_coefficient"][24] == pytest.approx(0.1, rel=1e-6)
    assert {(r["sae"], r["sweep_kind"], r["sweep_value"]) for r in rows} == {(0, "lambda", 0.01), (1, "lambda", 0.1)}


def test_plot_metrics_writes_a_png_per_location(trained, tmp_path):
    from gemmascope.train.curves import plot_metrics, series, sweep_labels
    from gemmascope.train.writers import iter_metrics

    wd, _ = trained
    pngs = plot_metrics(wd, str(tmp_path / "curves"))
    assert len(pngs) == 1 and pngs[0].endswith("toy_layer0_width32.png")
    data = open(pngs[0], "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert w > 600 and h > 300, (w, h)  # 4 x 2 panels
    # legends name the sweep's values (the rows' sweep_value), not the warmed-up lambda
    saes = series(iter_metrics(wd))["toy_layer0_width32"]
    assert sweep_labels(saes) == {0: "sae0_lambda0.01", 1: "sae1_lambda0.1"}
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_metrics(str(tmp_path / "empty"))


def test_plot_metrics_command_line(trained, tmp_path):
    wd, _ = trained
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "plot_metrics.py"),
            f"--workdir={wd}",
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(tmp_path / "toy_layer0_width32.png")


def test_writers_rows_and_tags(tmp_path):
    rows = [
        {
            "location": "x",
            "arch": "topk",
            "site": "res",
            "layer": 1,
            "width": 8,
            "sae": i,
            "sweep_kind": "k",
            "sweep_value": 16.0 * (i + 1),
            "step": 5,
            "sparsity_coefficient": 16.0 * (i + 1),
            "tokens": 320,
            "loss": 0.5 + i,
            "l0": 16.0,
            "threshold_mean": 0.0,
            "lr": 1e-3,
        }
        for i in range(2)
    ]
    assert writers.scalars(rows[1]) == {
        "sparsity_coefficient": 32.0,
        "loss": 1.5,
        "l0": 16.0,
        "threshold/mean": 0.0,
        "lr": 1e-3,
    }
    assert writers.run_name(1, 32.0, "k") == "sae1_k32"
    assert writers.run_name(0, 3e-4, "lambda") == "sae0_lambda0.0003"
    assert writers.run_name(2, 40.0, "target_l0") == "sae2_target40"
    with pytest.raises(ValueError, match="sweep kind 'sae.k'"):
        writers.run_name(0, 1.0, "sae.k")
    c = tiny_config(tensorboard=False)
    with writers.for_location(c, str(tmp_path), "x") as w:
        w.write(5, rows)
        w.write(10, rows)
    assert [json.loads(x) for x in open(tmp_path / "metrics.jsonl")] == rows + rows
    assert not os.path.exists(tmp_path / "tensorboard")  # config.tensorboard=False
    assert writers.for_location(c, str(tmp_path / "other"), "x", enabled=False).writers == []
    tb = writers.TensorBoardWriter(str(tmp_path / "tb"), ["a"])
    with pytest.raises(ValueError, match="2 rows for 1 SAEs"):
        tb.write(1, rows)
    tb.close()


def _read_wandb_history(path: str) -> tuple[list[dict[str, str]], bool]:
    """History records of an offline W&B run file (LevelDB-style log: 7-byte W&B header, 32 KiB
    blocks of chunks with a 7-byte header: CRC-32, u16 length, type FULL/FIRST/MIDDLE/LAST), and
    whether the run's ``exit`` record is there (the file is written by wandb's service process,
    which may still be writing it when ``finish()`` returns)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    pos, buf, out, done = 7, b"", [], False
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        buf += raw[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record.FromString(buf)
            buf = b""
            done |= rec.WhichOneof("record_type") == "exit"
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item})
    return out, done


def test_wandb_offline_and_only_imported_when_asked(tmp_path):
    # not asked: wandb is never imported (a fresh interpreter, as a user's run)
    code = (
        "import sys; from gemmascope.train import writers; from tests.test_habits import tiny_config; "
        f"w = writers.for_location(tiny_config(), {str(tmp_path / 'a')!r}, 'x'); w.close(); "
        "print('wandb' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]
    # asked, offline: one run for the location, metrics keyed sae<i>/<tag> at the training step
    c = tiny_config()
    with c.unlocked():
        c.wandb.project, c.wandb.mode, c.tensorboard = "habits-test", "offline", False
    rows = [
        {
            "location": "x",
            "arch": "jumprelu",
            "sae": i,
            "sweep_kind": "lambda",
            "sweep_value": 0.01,
            "step": s,
            "l0": 10.0 * i + s,
        }
        for s in (3, 6)
        for i in range(2)
    ]
    with writers.for_location(config_lib.validate(c), str(tmp_path / "b"), "x") as w:
        w.write(3, rows[:2])
        w.write(6, rows[2:])
    files = glob.glob(str(tmp_path / "b" / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    deadline = time.time() + 60
    hist, done = _read_wandb_history(files[0])
    while not done and time.time() < deadline:
        time.sleep(0.5)
        hist, done = _read_wandb_history(files[0])
    assert done, f"{files[0]}: no exit record after 60 s"
    assert [(h["_step"], float(h["sae0/l0"]), float(h["sae1/l0"])) for h in hist] == [
        ("3", 3.0, 13.0),
        ("6", 6.0, 16.0),
    ]
    with c.unlocked():
        c.wandb.mode = "cloud"
    with pytest.raises(config_lib.ConfigError, match="config.wandb.mode: must be 'offline', 'online' or 'disabled'"):
        config_lib.validate(c)


# ------------------------------------------------------------------------------ progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_when_not_a_terminal():
    lines = []
    p = progress_lib.Progress("generate:train", 1000, "tok", log=lines.append, lines_every=3)
    assert not p.is_bar
    for i in range(7):
        p.report(100 * (i + 1), f"[generate:train] batch {i}")
    p.close()
    assert lines == ["[generate:train] batch 0", "[generate:train] batch 3", "[generate:train] batch 6"]
    # iterate passes items through untouched and the job's own lines go to its log
    assert list(p.iterate([1, 2, 3])) == [1, 2, 3]
    assert p.lines(lines.append) == lines.append


def test_progress_bar_on_a_terminal():
    out = _Tty()
    p = progress_lib.Progress("[eval 1-4/4] layer 3 res", 3000, "tok", log=print, stream=out)
    assert p.is_bar and out.getvalue() == ""  # drawn at the first update only (silent processes draw nothing)
    log_lines = p.lines(print)
    for _batch in p.iterate([(None, np.ones((2, 500), bool))] * 3, lambda b: int(b[1].sum())):
        log_lines("[eval] 1,000 tokens x 4 SAE(s) (250 tok/s)")  # becomes the postfix, not a line
    p.write("a message above the bar")
    p.close()
    text = out.getvalue()
    assert "\r" in text and "3.00k/3.00k" in text and "tok/s" in text
    assert "1,000 tokens x 4 SAE(s)" in text and "a message above the bar\n" in text
    assert "[eval] 1,000" not in text  # the tag is dropped from the postfix


def test_progress_bar_counts_an_item_once_it_is_used():
    p = progress_lib.Progress("scan", 10, "tok", log=print, stream=_Tty())
    seen = []
    for i in p.iterate(range(5), lambda _: 3):
        seen.append(p.done)  # the items before this one
        if i == 2:
            break  # a consumer that stops early (max_tokens): its last item counts at close
    assert seen == [0, 3, 6]
    p.close()
    assert p.done == 9
    p = progress_lib.Progress("scan", 4, "tok", log=print, stream=_Tty())
    p.report(6)  # overshooting the total by the last batch grows the total
    assert p.bar.total == 6 and p.bar.n == 6
    p.close()


def test_progress_mode_choice(monkeypatch):
    monkeypatch.delenv(progress_lib.ENV, raising=False)
    assert progress_lib.use_bar(_Tty(), print) is True
    assert progress_lib.use_bar(io.StringIO(), print) is False
    assert progress_lib.use_bar(_Tty(), lambda s: None) is False  # a caller's callback wants lines
    monkeypatch.setenv(progress_lib.ENV, "lines")
    assert progress_lib.use_bar(_Tty(), print) is False
    monkeypatch.setenv(progress_lib.ENV, "bar")
    assert progress_lib.use_bar(io.StringIO(), lambda s: None) is True
    assert progress_lib.use_bar(io.StringIO(), print, tty=False) is False
    monkeypatch.setenv(progress_lib.ENV, "maybe")
    with pytest.raises(ValueError, match="GEMMASCOPE_PROGRESS='maybe'"):
        progress_lib.use_bar(io.StringIO(), print)
    assert progress_lib.fmt_time(3725.9) == "1:02:05" and progress_lib.fmt_time(-3) == "0:00:00"


@pytest.mark.parametrize("tty", [False, True])
def test_training_progress_both_modes(tty):
    out = _Tty() if tty else io.StringIO()
    p = progress_lib.TrainingProgress("toy_layer0_width32", 20, 4, batch_size=64, stream=out)
    line = p.report(10, [12.5, 3.25], [0.1234, 0.5])
    assert line.startswith("[toy_layer0_width32] step 10/20 (50%) ") and " tok/s ETA 0:" in line
    assert line.endswith("| L0 12.5 3.2 | FVU 0.123 0.500")
    p.report(20, [10.0, 3.0], [0.1, 0.4])
    text = out.getvalue()
    if tty:
        assert "\r" in text and line not in text and "L0 10.0 3.0 | FVU 0.100 0.400" in text
        assert p.bar is None and p._closed  # closed itself at the last step
    else:
        assert text.splitlines()[0] == line and len(text.splitlines()) == 2


# ------------------------------------------------------------------------- command line


def test_unknown_override_is_one_line_with_a_suggestion():
    err = config_files.unknown_field_error("lamdas")
    assert str(err) == "config.lamdas: unknown field; did you mean config.lambdas?"
    assert "did you mean config.sae.threshold_init" in str(config_files.unknown_field_error("sae.treshold_init"))
    assert str(config_files.unknown_field_error("xyzzy")) == "config.xyzzy: unknown field"
    for ok in ("lambdas", "sae.arch", "wandb.mode", "runlocal_overrides.num_tokens", "sae"):
        assert config_files.unknown_field_error(ok) is None
    cli.check_overrides(["--config=x.py", "--config.lambdas=1", "--noconfig.runlocal", "--workdir=w"])
    with pytest.raises(
        config_lib.ConfigError, match="config.lr_warmup: unknown field; did you mean config.lr_warmup_steps"
    ):
        cli.check_overrides(["--config.lr_warmup", "5"])
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "train.py"),
            f"--config={REPO}/configs/toy.py",
            "--workdir=/nonexistent",
            "--config.lamdas=1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "train.py: config.lamdas: unknown field; did you mean config.lambdas?\n"


def test_parse_tuple_comma_form():
    assert cli.parse_tuple("res,mlp") == ("res", "mlp")
    assert cli.parse_tuple("res") == ("res",)
    assert cli.parse_tuple("5,25") == (5, 25)
    assert cli.parse_tuple("0.01, 3e-3") == (0.01, 0.003)
    assert cli.parse_tuple("('res','att')") == ("res", "att")
    assert cli.parse_tuple("gs://bucket/a.txt,b.txt") == ("gs://bucket/a.txt", "b.txt")
    assert cli.parse_tuple("data/*.txt") == ("data/*.txt",)


def _parse(argv, saved=None):
    """``argv`` through the launch scripts' parser logic on a private FlagValues."""
    from absl import flags
    from ml_collections import config_flags

    argv = cli.prepare_argv(argv, saved)
    fv = flags.FlagValues()
    cfg = config_flags.DEFINE_config_file("config", None, "c", flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "w", flag_values=fv)
    flags.DEFINE_string("sae", None, "s", flag_values=fv)
    fv(argv)
    return cfg.value


def test_tuple_fields_take_the_comma_form_on_the_command_line():
    c = _parse(
        [
            "x",
            f"--config={REPO}/configs/demo.py",
            "--config.sites=res,mlp",
            "--config.store.sites=res,att,mlp",
            "--config.layers=5,25",
            "--config.lambdas=0.01,0.03",
        ]
    )
    assert c.sites == ("res", "mlp") and c.store.sites == ("res", "att", "mlp")
    assert c.layers == (5, 25) and c.lambdas == (0.01, 0.03)
    config_lib.validate(c)
    c = _parse(["x", f"--config={REPO}/configs/demo.py", "--config.sites=mlp"])
    assert c.sites == ("mlp",)


def _saved_workdir(tmp_path, config):
    """A workdir with config.json written exactly as train_and_evaluate writes it, and an SAE folder."""
    wd = tmp_path / "wd"
    (wd / "saes" / "res" / "layer_15" / "width_4k" / "average_l0_60").mkdir(parents=True)
    (wd / "config.json").write_text(config_lib.validate(config_lib.resolve(config)).to_json_best_effort(indent=2))
    return wd


def test_saved_config_round_trip_and_errors(tmp_path):
    from gemmascope.config.experiments import demo

    c = demo.get_config("runlocal=True")
    wd = _saved_workdir(tmp_path, c)
    back = config_files.load_saved(str(wd))
    want = config_lib.resolve(c).to_dict()
    want["runlocal"] = False
    got = back.to_dict()
    got.pop("runlocal_overrides"), want.pop("runlocal_overrides")
    assert got == want and isinstance(back.sites, tuple) and isinstance(back.store.sites, tuple)
    assert config_files.load_saved(str(wd / "config.json")).to_dict() == back.to_dict()
    with pytest.raises(config_lib.ConfigError, match="no saved config"):
        config_files.load_saved(str(tmp_path))
    bad = json.loads((wd / "config.json").read_text())
    bad["sae"]["tresh"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(config_lib.ConfigError, match=r"bad.json: config.sae.tresh: unknown field"):
        config_files.load_saved(str(tmp_path / "bad.json"))
    bad = json.loads((wd / "config.json").read_text())
    bad["batch_size"] = 1.5
    (tmp_path / "bad2.json").write_text(json.dumps(bad))
    with pytest.raises(config_lib.ConfigError, match=r"bad2.json: config.batch_size"):
        config_files.load_saved(str(tmp_path / "bad2.json"))


def test_evaluate_and_analyze_default_to_the_workdirs_config(tmp_path):
    from gemmascope.config.experiments import demo

    c = demo.get_config()
    with c.unlocked():
        c.lm.context_length, c.lm.batch_sequences, c.lm.checkpoint = 64, 8, "/models/x.gguf"
    wd = _saved_workdir(tmp_path, c)
    sae = wd / "saes" / "res" / "layer_15" / "width_4k" / "average_l0_60"
    # evaluate.py --workdir=W (no --config): W/config.json, with overrides applied on top
    got = _parse(["evaluate.py", f"--workdir={wd}", "--config.lm.batch_sequences=4"], saved=cli.workdir_of)
    assert got.lm.context_length == 64 and got.lm.batch_sequences == 4 and got.lm.checkpoint == "/models/x.gguf"
    # an explicit --config wins
    got = _parse(["evaluate.py", f"--workdir={wd}", f"--config={REPO}/configs/demo.py"], saved=cli.workdir_of)
    assert got.lm.context_length == 128
    # analyze.py --sae=<an SAE of W>: the same file, found from the SAE's folder
    assert cli.find_workdir(str(sae)) == str(wd) and cli.find_workdir(str(tmp_path)) is None
    got = _parse(["analyze.py", f"--sae={sae}"], saved=cli.workdir_of_sae)
    assert cli.dashboard_lm_settings(got) == {
        "checkpoint": "/models/x.gguf",
        "seq_len": 64,
        "batch_sequences": 8,
        "outlier_norm_factor": 10.0,
    }
    assert cli.dashboard_lm_settings(got, checkpoint="embedded", context_length=32)["seq_len"] == 32
    assert cli.dashboard_lm_settings(None) == {
        "checkpoint": "embedded",
        "seq_len": 128,
        "batch_sequences": 32,
        "outlier_norm_factor": 10.0,
    }
    # no config.json: evaluate.py says so in its usage error instead of requiring --config
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "evaluate.py"), f"--workdir={tmp_path}"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert r.returncode == 1 and "config.json: no saved config" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------- configs, browser


def test_configs_slash_name_resolves_to_the_package_config_from_any_directory(tmp_path):
    """``--config=configs/NAME.py`` names ``gemmascope/config/experiments/NAME.py`` wherever no
    such file exists; a file that does exist (a user's own ``configs/``) is taken as it is."""
    from gemmascope.config import experiments
    from gemmascope.config.experiments import frontier

    packaged = os.path.join(os.path.dirname(experiments.__file__), "demo.py")
    assert config_files.config_file_path("configs/demo.py") == packaged
    assert config_files.config_file_path(str(tmp_path / "configs" / "demo.py")) == packaged
    assert config_files.config_file_path("elsewhere/demo.py") == "elsewhere/demo.py"
    assert config_files.config_file_path("configs/nope.py") == "configs/nope.py"
    own = tmp_path / "configs" / "mine.py"
    own.parent.mkdir()
    own.write_text("from gemmascope.config.experiments.toy import get_config  # noqa\n")
    assert config_files.config_file_path(str(own)) == str(own)
    assert (
        config_files.load_config_file("configs/frontier.py:arch=topk").to_dict()
        == frontier.get_config("arch=topk").to_dict()
    )
    assert frontier.get_config("arch=topk").sae.topk_ks == (16, 32, 64, 128)
    argv = cli.with_config_path(["x", "--config=configs/demo.py:runlocal=True", "--config.seed=3"])
    assert argv == ["x", f"--config={packaged}:runlocal=True", "--config.seed=3"]
    assert cli.with_config_path(["x", "--config", "configs/demo.py"]) == ["x", "--config", packaged]
    # and through absl in a directory without configs/: the demo's config, the override applied
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "train.py"), "--config=configs/toy.py", "--dry_run"],
        cwd=str(tmp_path / "configs"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0 and "dry run: mesh" in r.stdout, r.stderr[-2000:]


def test_conftest_browser_plan():
    from tests import conftest

    def present(p):
        return True

    def absent(p):
        return False

    ran = []

    def sudo_ok(cmd, **kw):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    def sudo_no(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1)

    assert conftest.browser_plan(exists=present) == (None, "present")
    cmds, msg = conftest.browser_plan(exists=absent, euid=0, which=lambda n: "/usr/bin/" + n, env={})
    assert cmds[0] == ["apt-get", "update", "-q"] and cmds[1][-2:] == ["chromium", "chromium-driver"]
    assert "installing chromium chromium-driver" in msg
    cmds, _ = conftest.browser_plan(exists=absent, euid=1000, which=lambda n: "/usr/bin/" + n, run=sudo_ok, env={})
    assert cmds[0][:2] == ["sudo", "-n"] and ran == [["sudo", "-n", "true"]]
    cmds, msg = conftest.browser_plan(exists=absent, euid=1000, which=lambda n: "/usr/bin/" + n, run=sudo_no, env={})
    assert cmds is None and "sudo apt-get install -y chromium chromium-driver" in msg
    cmds, msg = conftest.browser_plan(exists=absent, euid=0, which=lambda n: None, env={})
    assert cmds is None and "no apt-get" in msg
    cmds, msg = conftest.browser_plan(exists=absent, euid=0, which=lambda n: "/x", env={conftest.NO_APT_ENV: "1"})
    assert cmds is None and conftest.NO_APT_ENV in msg
    # a failing apt-get is reported with its last lines, and nothing claims success
    said = []

    def apt_fails(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, stdout="", stderr="E: Unable to locate package chromium")

    ok = conftest.ensure_browser(
        write=said.append, run=apt_fails, exists=absent, euid=0, which=lambda n: "/usr/bin/" + n, env={}
    )
    assert ok is False and "Unable to locate package chromium" in said[-1]
