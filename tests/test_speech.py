"""The speech tasks: WAV reading and its errors, the STFT features, the FSDD splits, the
TIMIT file format, and padding that changes neither the loss nor any state."""

import json
import math
import wave

import numpy as np
import pytest
import torch

import momentumrnn as mrnn
from momentumrnn.experiments.config import ConfigError, resolve_config
from momentumrnn.experiments.data import DataError
from momentumrnn.experiments.models import build_model
from momentumrnn.experiments.speech import BINS, log_spectrogram, masked_mse, read_wav
from momentumrnn.experiments.tasks import TASKS
from toolkit_helpers import SHARED_DATA, cli, rows, summary

HAVE_FSDD = (SHARED_DATA / "fsdd" / "recordings" / "0_george_0.wav").exists()


def write_wav(path, samples, rate=8000, channels=1, width=2):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes() if width == 2 else bytes(len(samples)))


def test_wav_reading_and_the_stft_features(tmp_path):
    t = np.arange(4000) / 8000
    samples = np.round(8000 * np.sin(2 * math.pi * 1000 * t)).astype(np.int16)
    write_wav(tmp_path / "tone.wav", samples)
    x = read_wav(tmp_path / "tone.wav")
    assert torch.equal(x, torch.tensor(samples, dtype=torch.float32))
    frames = log_spectrogram(x)
    assert frames.shape == ((4000 - 256) // 128 + 1, BINS) == (30, 129)
    assert (frames.argmax(1) == 32).all()                       # 1000 Hz = bin 1000 / (8000 / 256)
    for k in (0, 5):                                             # frame k: samples 128 k .. 128 k + 255
        expected = torch.fft.rfft(x[128 * k:128 * k + 256] * torch.hann_window(256)).abs().log1p()
        assert torch.allclose(frames[k], expected, atol=1e-4)


@pytest.mark.parametrize("damage, message", [
    ("garbage", "is not a readable WAV file"),
    ("rate", "sampled at 16000 Hz; the speech task needs 8000 Hz"),
    ("stereo", "2 channel(s)"),
    ("truncated", "truncated"),
])
def test_bad_wav_files_are_named(tmp_path, damage, message):
    path = tmp_path / "3_bad_7.wav"
    if damage == "garbage":
        path.write_bytes(b"RIFF not really a wave file")
    elif damage == "rate":
        write_wav(path, np.zeros(1000), rate=16000)
    elif damage == "stereo":
        write_wav(path, np.zeros(1000), channels=2)
    else:
        write_wav(path, np.zeros(1000))
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as error:
        read_wav(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_a_bad_recording_in_the_data_folder_is_named(tmp_path):
    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    write_wav(folder / "0_a_0.wav", np.zeros(2000))
    write_wav(folder / "0_a_5.wav", np.zeros(2000), rate=44100)
    config = resolve_config("speech", "lstm", {"val_size": 1})
    with pytest.raises(DataError, match="0_a_5.wav is sampled at 44100 Hz"):
        TASKS["speech"](config, tmp_path)
    with pytest.raises(DataError, match="Free Spoken Digit Dataset"):
        TASKS["speech"](config, tmp_path / "elsewhere")


def timit_files(folder, sizes=(5, 3, 4), t_max=9, seed=0):
    """The authors' TIMIT layout with random frames: z is x shifted by one frame."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in zip(("train", "eval", "test"), sizes):
        frames = rng.normal(size=(n, t_max + 1, BINS)).astype(np.float32)
        lens = rng.integers(2, t_max + 1, size=n)
        lens[0] = t_max
        x, z = frames[:, :-1].copy(), frames[:, 1:].copy()
        for i, length in enumerate(lens):                      # padding as junk, not zeros
            x[i, length:] = 99.0
            z[i, length:] = -99.0
        np.save(folder / f"{stem}_x.npy", x)
        np.save(folder / f"{stem}_z.npy", z)
        np.save(folder / f"lens_{stem}.npy", lens)
    return folder


def test_timit_reads_the_authors_arrays(tmp_path):
    timit_files(tmp_path / "timit")
    task = TASKS["timit"](resolve_config("timit", "lstm"), tmp_path)
    assert (task.size("train"), task.size("val"), task.size("test")) == (5, 3, 4)
    lens = np.load(tmp_path / "timit" / "lens_eval.npy")
    x_all = np.load(tmp_path / "timit" / "eval_x.npy")
    packed, (y, mask) = task.batch("val", torch.arange(3))
    x, lengths = torch.nn.utils.rnn.pad_packed_sequence(packed, batch_first=True)
    assert lengths.tolist() == lens.tolist() and mask.sum(1).tolist() == lens.tolist()
    for i, n in enumerate(lens):
        assert torch.equal(x[i, :n], torch.from_numpy(x_all[i, :n])) and (x[i, n:] == 0).all()
        assert (y[i, n:] == 0).all() and (y[i, :n].abs() < 50).all()
    # the data dir itself may hold the files
    assert TASKS["timit"](resolve_config("timit", "lstm"), tmp_path / "timit").size("test") == 4


def test_timit_file_errors(tmp_path):
    folder = timit_files(tmp_path / "t")
    np.save(folder / "lens_test.npy", np.array([1, 2]))
    with pytest.raises(DataError, match="lens_test.npy must hold one length per sequence"):
        TASKS["timit"](resolve_config("timit", "lstm"), folder)
    (folder / "eval_z.npy").unlink()
    with pytest.raises(DataError, match="eval_z.npy"):
        TASKS["timit"](resolve_config("timit", "lstm"), folder)


@pytest.fixture(scope="module")
def timit_task(tmp_path_factory):
    folder = timit_files(tmp_path_factory.mktemp("timit"), sizes=(6, 4, 4), t_max=11, seed=1)
    return TASKS["timit"](resolve_config("timit", "lstm"), folder)


@pytest.mark.parametrize("name", ["lstm", "momentum-lstm", "nesterov-lstm", "adam-gru"])
def test_padding_changes_neither_the_loss_nor_the_states(timit_task, name):
    """A batch gives the same loss with extra padding, each sequence's outputs and final
    states (hidden and momentum) are those of the sequence alone, and padded positions of
    the output do not enter the loss."""
    config = resolve_config("timit", name, {"hidden_size": 7, "init": "paper", "forget_bias": -4.0})
    torch.manual_seed(0)
    model = build_model(config, BINS, BINS, True)
    x, y, lengths = timit_task.padded("train", torch.arange(6))
    mask = torch.arange(x.size(1))[None] < lengths[:, None]
    pack = lambda x: torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,  # noqa: E731
                                                             enforce_sorted=False)
    loss = timit_task.loss(model(pack(x)), (y, mask))
    extra = torch.cat([x, torch.randn(6, 5, BINS)], 1)          # five more steps of junk padding
    extra_y = torch.cat([y, torch.randn(6, 5, BINS)], 1)
    extra_mask = torch.arange(extra.size(1))[None] < lengths[:, None]
    out = model.rnn(pack(extra))
    out_padded = model.head(torch.nn.utils.rnn.pad_packed_sequence(out[0], batch_first=True,
                                                                   total_length=extra.size(1))[0])
    assert torch.allclose(timit_task.loss(out_padded, (extra_y, extra_mask)), loss, atol=1e-6)
    garbage = out_padded + 1e3 * (~extra_mask)[..., None]      # whatever sits in padded positions
    assert torch.allclose(timit_task.loss(garbage, (extra_y, extra_mask)), loss, atol=1e-6)
    rule = name not in ("lstm",)
    _, hx, *rs = model.rnn(pack(extra), **({"return_rule_state": True} if rule else {}))
    for i in (1, 4):
        alone = x[i:i + 1, :lengths[i]]
        out_i, hx_i, *rs_i = model.rnn(alone, **({"return_rule_state": True} if rule else {}))
        assert torch.allclose(model.head(out_i)[0], model(pack(x))[i, :lengths[i]], atol=1e-5)
        h = hx if isinstance(hx, torch.Tensor) else hx[0]
        h_i = hx_i if isinstance(hx_i, torch.Tensor) else hx_i[0]
        assert torch.allclose(h[:, i], h_i[:, 0], atol=1e-5)
        if rule:
            assert torch.allclose(rs[0].velocity[:, i], rs_i[0].velocity[:, 0], atol=1e-5)
            assert rs[0].steps[i] == lengths[i]


def test_masked_mse_is_the_mean_over_valid_elements():
    out, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    expected = torch.nn.functional.mse_loss(out[mask], target[mask])
    assert torch.allclose(masked_mse(out, target, mask), expected)
    assert torch.allclose(masked_mse(out, target, mask, "sum"), expected * 12)


def test_timit_cli_run_with_the_mu0_control(tmp_path):
    timit_files(tmp_path / "data" / "timit", sizes=(8, 4, 4))
    run = tmp_path / "run"
    assert cli("train", "--task", "timit", "--model", "momentum-lstm", "--preset", "paper", "--momentum", 0,
               "--step-size", 0.1, "--data-dir", tmp_path / "data", "--hidden-size", 6, "--batch-size", 4,
               "--epochs", 2, "--out", run) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["momentum"], config["step_size"], config["optimizer"], config["lr"], config["forget_bias"]) == \
        (0.0, 0.1, "adam", 1e-4, -4.0)
    s = summary(run)
    assert s["selection"] == {"metric": "loss", "mode": "min"} and s["steps"] == 4 and s["test_at_best_val"] > 0
    assert [r["step"] for r in rows(run) if r["split"] == "val"] == [2, 4]


@pytest.mark.skipif(not HAVE_FSDD, reason="needs ../shared/data/fsdd")
def test_speech_splits_features_and_normalization():
    config = resolve_config("speech", "lstm", {"data_dir": str(SHARED_DATA)})
    task = TASKS["speech"](config, SHARED_DATA)
    assert (task.size("train"), task.size("val"), task.size("test")) == (2400, 300, 300)
    assert all(int(n.split("_")[2][:-4]) < 5 for n in task.files["test"])
    assert not set(task.files["train"]) & set(task.files["val"])
    assert all(int(n.split("_")[2][:-4]) >= 5 for n in task.files["train"] + task.files["val"])
    lengths, offsets = task.splits["train"]
    raw = TASKS["speech"]({**config, "normalize": "none"}, SHARED_DATA)         # per-bin stats of train only
    assert raw.inputs["train"].min() >= 0 and raw.inputs["train"].mean() > 1
    frames = torch.cat([raw.inputs["train"], raw.targets["train"][offsets + lengths - 1]])
    assert torch.allclose(frames.mean(0), task.mean, atol=1e-4) and torch.allclose(frames.std(0), task.std, atol=1e-4)
    assert torch.allclose(task.inputs["val"] * task.std + task.mean, raw.inputs["val"], atol=1e-4)
    i, n, o = 7, int(task.splits["train"][0][7]), int(task.splits["train"][1][7])
    assert torch.equal(task.inputs["train"][o + 1:o + n], task.targets["train"][o:o + n - 1])   # next frames
    packed, (y, mask) = task.batch("train", torch.tensor([3, 7]))
    assert mask.sum(1).tolist() == lengths[[3, 7]].tolist() and y.size(-1) == BINS
    other = TASKS["speech"]({**config, "data_seed": 1}, SHARED_DATA)
    assert other.files["val"] != task.files["val"] and other.files["test"] == task.files["test"]
    assert TASKS["speech"](config, SHARED_DATA).files == task.files


@pytest.mark.skipif(not HAVE_FSDD, reason="needs ../shared/data/fsdd")
def test_speech_cli_run(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--task", "speech", "--model", "momentum-lstm", "--preset", "paper",
               "--data-dir", SHARED_DATA, "--hidden-size", 8, "--train-subset", 64, "--val-subset", 16,
               "--test-subset", 16, "--max-steps", 3, "--out", run) == 0
    s = summary(run)
    assert s["steps"] == 3 and s["test_size"] == 16 and math.isfinite(s["test_at_best_val"])
    assert json.loads((run / "speech_normalization.json").read_text())["mode"] == "standard"
    assert isinstance(json.loads((run / "config.json").read_text())["config"]["momentum"], float)


def test_speech_options_are_checked():
    with pytest.raises(ConfigError, match="normalize must be 'standard' or 'none'"):
        resolve_config("speech", "lstm", {"normalize": "minmax"})
    with pytest.raises(ConfigError, match="--bptt does not apply to task 'speech'"):
        resolve_config("speech", "lstm", {"bptt": 10})
    assert isinstance(mrnn.LAYERS["lstm", "momentum"](BINS, 4, momentum=0.0), torch.nn.Module)


def test_input_blind_baseline_is_the_training_mean(tmp_path):
    folder = timit_files(tmp_path / "timit", sizes=(5, 3, 4))
    config = resolve_config("timit", "lstm", {"data_dir": str(tmp_path)})
    z, lens = np.load(folder / "train_z.npy"), np.load(folder / "lens_train.npy")
    mean = np.concatenate([z[i, :n] for i, n in enumerate(lens)]).mean(0)
    z, lens = np.load(folder / "eval_z.npy"), np.load(folder / "lens_eval.npy")
    expected = np.mean((np.concatenate([z[i, :n] for i, n in enumerate(lens)]) - mean) ** 2)
    assert TASKS["timit"].baseline(config)["loss"] == pytest.approx(expected, rel=1e-5)
    assert TASKS["timit"].baseline({**config, "data_dir": str(tmp_path / "nothing")}) == {}
