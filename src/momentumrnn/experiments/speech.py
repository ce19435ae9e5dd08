"""Speech next-frame prediction: ``speech`` (Free Spoken Digit Dataset) and ``timit``.

The paper's TIMIT task predicts the next short-time Fourier transform (STFT) frame of
8 kHz speech from the frames so far: input frame t, target frame t + 1, a prediction at
every step, and the mean squared error over the valid frames and all 129 bins of each
padded batch. TIMIT is licensed, so:

* ``speech`` runs the same pipeline on the Free Spoken Digit Dataset
  (``ROOT/fsdd/recordings/{digit}_{speaker}_{index}.wav``, 8 kHz mono 16-bit). Features:
  STFT of the raw 16-bit sample values with a 256-sample periodic Hann window (32 ms),
  a 128-sample hop (16 ms, 50 % overlap), a 256-point FFT, no padding at the ends
  (``center=False``), giving 129 bins; then ``log(1 + |X|)``. Recordings with index 0-4
  are the test split (300), the others (2,700) are split into validation (``val_size``,
  drawn with ``data_seed``) and training. ``normalize="standard"`` (default) scales each
  bin to zero mean and unit variance with statistics of the training split only (so an
  MSE of 1 is what predicting each bin's mean gives); ``"none"`` keeps the log-magnitudes.
* ``timit`` reads the authors' preprocessed arrays (``train_x.npy``, ``train_z.npy``,
  ``lens_train.npy``, ``eval_*`` for validation, ``test_*``; x and z shaped
  ``(N, T_max, 129)``, z the next frames, lens the valid lengths) from ``ROOT/timit/`` or
  ``ROOT`` itself, used as they are.

Frames are held once in memory, flat (all valid frames of a split one after another), and
a batch is cut into a zero-padded ``(batch, T_max, 129)`` tensor and packed with
``pack_padded_sequence(..., enforce_sorted=False)``: every layer, torch's and ours, runs
each sequence over its own valid steps only, so padding changes neither the outputs, the
final states nor the momentum state, and the loss masks the padded positions out.
"""

from __future__ import annotations

import hashlib
import re
import sys
import wave
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

from .data import DataError, data_root
from .tasks import TASKS, Task, generator

__all__ = ["Speech", "TIMIT", "read_wav", "log_spectrogram", "fsdd_features", "SAMPLE_RATE", "N_FFT", "HOP",
           "BINS", "masked_mse"]

SAMPLE_RATE = 8000
N_FFT = 256                 # window and FFT length: 32 ms at 8 kHz
HOP = 128                   # 16 ms
BINS = N_FFT // 2 + 1       # 129
#: SHA-256 of fsdd/SHA256SUMS.recordings as published with the data.
FSDD_SUMS = "1801eae019c063377d98f831d3f93574f259475df7332bb0e3d1b080fb5e6959"
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
_CACHE: dict = {}


# ----------------------------------------------------------------------------- features
def read_wav(path) -> Tensor:
    """Samples of a mono 16-bit 8 kHz WAV file as a float tensor of raw int16 values.
    Raises ``DataError`` naming the file when it is unreadable, truncated or not in that format."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(frames)
    except (wave.Error, EOFError, OSError) as error:
        raise DataError(f"{path} is not a readable WAV file: {error}") from None
    if rate != SAMPLE_RATE:
        raise DataError(f"{path} is sampled at {rate} Hz; the speech task needs {SAMPLE_RATE} Hz")
    if channels != 1 or width != 2:
        raise DataError(f"{path} has {channels} channel(s) of {8 * width}-bit samples; "
                        f"the speech task needs mono 16-bit PCM")
    if frames == 0:
        raise DataError(f"{path} holds no samples")
    if len(data) != 2 * frames:
        raise DataError(f"{path} is truncated: its header promises {frames} samples, it holds {len(data) // 2}")
    samples = torch.frombuffer(bytearray(data), dtype=torch.int16)
    if sys.byteorder == "big":                       # WAV is little-endian
        samples = samples.view(torch.uint8).view(-1, 2).flip(1).contiguous().view(torch.int16).view(-1)
    return samples.float()


def log_spectrogram(samples: Tensor) -> Tensor:
    """``log(1 + |STFT|)`` frames, shaped (frames, 129): periodic Hann window of 256
    samples, hop 128, 256-point FFT, no padding at the ends."""
    window = torch.hann_window(N_FFT, periodic=True, dtype=samples.dtype)
    spectrum = torch.stft(samples, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=window, center=False,
                          return_complex=True)
    return spectrum.abs().log1p().transpose(0, 1).contiguous()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fsdd_features(root) -> dict[str, tuple[Tensor, int]]:
    """File name -> (log-spectrogram frames, recording index) for every FSDD recording,
    computed once per process and kept in memory. When ``SHA256SUMS.recordings`` is
    present (and itself matches the published list) every file is checked against it."""
    folder = Path(root) / "fsdd" / "recordings"
    key = str(folder.resolve())
    if key in _CACHE:
        return _CACHE[key]
    if not folder.is_dir():
        raise DataError(f"the speech task needs the Free Spoken Digit Dataset recordings in {folder} "
                        f"(*.wav from github.com/Jakobovski/free-spoken-digit-dataset, folder recordings/); "
                        f"point --data-dir (or $MOMENTUMRNN_DATA) at a folder that has fsdd/recordings/")
    sums = {}
    sums_file = folder.parent / "SHA256SUMS.recordings"
    if sums_file.exists():
        if _sha256(sums_file) != FSDD_SUMS:
            raise DataError(f"{sums_file} is not the published checksum list (SHA-256 {_sha256(sums_file)}, "
                            f"expected {FSDD_SUMS})")
        for line in sums_file.read_text().splitlines():
            if line.strip():
                digest, name = line.split()
                sums[name.lstrip("*")] = digest
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav")
    if not files:
        raise DataError(f"{folder} holds no .wav files")
    features = {}
    for path in files:
        match = _NAME.match(path.name)
        if not match:
            raise DataError(f"{path}: FSDD file names are {{digit}}_{{speaker}}_{{index}}.wav")
        if sums:
            expected = sums.get(path.name)
            if expected is None:
                raise DataError(f"{path} is not listed in {sums_file}")
            if _sha256(path) != expected:
                raise DataError(f"checksum mismatch for {path}: the file is corrupt or not the original recording")
        samples = read_wav(path)
        if samples.numel() < N_FFT + HOP:
            raise DataError(f"{path} is too short: {samples.numel()} samples, at least {N_FFT + HOP} are needed "
                            f"(two STFT frames of {N_FFT} samples {HOP} apart: one input and its next frame)")
        frames = log_spectrogram(samples)
        features[path.name] = (frames, int(match.group(3)))
    if sums and len(features) != len(sums):
        missing = sorted(set(sums) - set(features))
        raise DataError(f"{folder} lacks {len(missing)} recording(s) listed in {sums_file}, e.g. {missing[0]}")
    _CACHE[key] = features
    return features


def masked_mse(output: Tensor, target: Tensor, mask: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error over the valid frames (``mask`` (batch, time)) and all bins: their mean
    (the authors' ``MSELoss`` over the masked elements) or sum."""
    error = (output - target).pow(2).sum(-1).masked_select(mask).sum()
    return error if reduction == "sum" else error / (mask.sum() * output.size(-1))


# ----------------------------------------------------------------------------- tasks
class _FrameTask(Task):
    """Next-frame prediction over variable-length sequences of 129-bin frames.

    ``splits[split] = (lengths, offsets)``: sequence ``i`` has ``lengths[i]`` (input,
    target) frame pairs stored from ``offsets[i]`` in the flat ``inputs[split]`` and
    ``targets[split]`` tensors.
    """

    input_size = output_size = BINS
    per_step = True
    selection = ("loss", "min")
    needs_data = True

    def _store(self, split: str, inputs: list[Tensor], targets: list[Tensor]) -> None:
        lengths = torch.tensor([x.size(0) for x in inputs], dtype=torch.long)
        offsets = torch.cumsum(lengths, 0) - lengths
        self.splits[split] = (lengths, offsets)
        self.inputs[split] = torch.cat(inputs).float()
        self.targets[split] = torch.cat(targets).float()

    def to(self, device):
        self.inputs = {k: v.to(device) for k, v in self.inputs.items()}
        self.targets = {k: v.to(device) for k, v in self.targets.items()}
        return super().to(device)

    @classmethod
    def baseline(cls, config: dict) -> dict[str, float]:
        """Input-blind prediction: each bin's training mean at every step; its validation MSE
        (computed from the data; {} when the data cannot be read)."""
        try:
            task = cls(config, data_root(config.get("data_dir")))
        except (DataError, OSError, ValueError):
            return {}
        return {"loss": task.constant_mse("val")}

    def rows(self, split: str) -> Tensor:
        """Indices of the split's frames in the flat stores (after subsets)."""
        lengths, offsets = self.splits[split]
        return torch.cat([torch.arange(int(o), int(o) + int(n)) for o, n in zip(offsets, lengths)])

    def constant_mse(self, split: str) -> float:
        """MSE on ``split`` of predicting each bin's mean over the training targets."""
        mean = self.targets["train"][self.rows("train")].mean(0)
        return float((self.targets[split][self.rows(split)] - mean).pow(2).mean())

    def frames(self, split: str) -> int:
        """Valid frames of a split (after subsets)."""
        return int(self.splits[split][0].sum())

    def padded(self, split: str, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, lengths)``: zero-padded ``(batch, T_max, 129)`` inputs and targets."""
        lengths, offsets = self.splits[split][0][index], self.splits[split][1][index]
        time = torch.arange(int(lengths.max()), device=lengths.device)
        mask = time[None, :] < lengths[:, None]
        position = (offsets[:, None] + time[None, :]).clamp_(max=self.inputs[split].size(0) - 1)
        x = self.inputs[split][position] * mask[..., None]
        y = self.targets[split][position] * mask[..., None]
        return x, y, lengths

    def batch(self, split, index):
        """``x``: a ``PackedSequence`` of the inputs; ``y``: (padded targets, mask (batch, T_max))."""
        x, y, lengths = self.padded(split, index)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        mask = torch.arange(y.size(1), device=y.device)[None, :] < lengths[:, None]
        return packed, (y, mask)

    def loss(self, output, y):
        target, mask = y
        return masked_mse(output, target, mask)

    def statistics(self, output, y):
        target, mask = y
        return {"loss": (masked_mse(output, target, mask, "sum"), int(mask.sum()) * output.size(-1))}


class Speech(_FrameTask):
    name = "speech"
    description = ("next STFT log-magnitude frame of the Free Spoken Digit Dataset (TIMIT's pipeline: 8 kHz, "
                   "256-sample Hann window, hop 128, 129 bins); masked MSE")
    options = {"val_size": 300, "normalize": "standard"}

    @classmethod
    def check_options(cls, config: dict) -> None:
        if config["normalize"] not in ("standard", "none"):
            raise ValueError(f"normalize must be 'standard' or 'none', got {config['normalize']!r}")

    def _build(self, artifacts):
        self.check_options(self.config)
        features = fsdd_features(self.root)
        names = sorted(features)
        test = [n for n in names if features[n][1] < 5]
        rest = [n for n in names if features[n][1] >= 5]
        val_size = self.config["val_size"]
        if not 0 < val_size < len(rest):
            raise ValueError(f"val_size must be in [1, {len(rest)}), got {val_size}")
        order = torch.randperm(len(rest), generator=generator(self.config["data_seed"], 3)).tolist()
        groups = {"train": sorted(rest[i] for i in order[val_size:]), "val": sorted(rest[i] for i in order[:val_size]),
                  "test": test}
        train_frames = torch.cat([features[n][0] for n in groups["train"]])
        if self.config["normalize"] == "standard":
            self.mean, self.std = train_frames.mean(0), train_frames.std(0).clamp_min(1e-5)
        else:
            self.mean, self.std = torch.zeros(BINS), torch.ones(BINS)
        self.files = groups
        self.splits, self.inputs, self.targets = {}, {}, {}
        for split, group in groups.items():
            frames = [(features[n][0] - self.mean) / self.std for n in group]
            self._store(split, [f[:-1] for f in frames], [f[1:] for f in frames])

    def artifacts(self):
        return {"speech_split.json": {split: files for split, files in self.files.items()},
                "speech_normalization.json": {"mode": self.config["normalize"], "mean": self.mean.tolist(),
                                              "std": self.std.tolist()}}


class TIMIT(_FrameTask):
    name = "timit"
    description = ("next-frame prediction on the authors' preprocessed TIMIT arrays (train_x.npy, ..., "
                   "lens_test.npy from --data-dir); masked MSE")
    FILES = {"train": "train", "val": "eval", "test": "test"}

    def _build(self, artifacts):
        folder = Path(self.root) / "timit"
        if not (folder / "train_x.npy").exists():
            folder = Path(self.root)
        self.splits, self.inputs, self.targets = {}, {}, {}
        for split, stem in self.FILES.items():
            x, z, lens = (self._load(folder / name) for name in (f"{stem}_x.npy", f"{stem}_z.npy", f"lens_{stem}.npy"))
            if x.ndim != 3 or x.shape[2] != BINS or z.shape != x.shape:
                raise DataError(f"{folder / f'{stem}_x.npy'} and {stem}_z.npy must both be shaped (N, T_max, {BINS}); "
                                f"got {x.shape} and {z.shape}")
            if lens.ndim != 1 or lens.shape[0] != x.shape[0]:
                raise DataError(f"{folder / f'lens_{stem}.npy'} must hold one length per sequence of {stem}_x.npy "
                                f"({x.shape[0]}); got shape {lens.shape}")
            lengths = [int(n) for n in lens]
            if min(lengths) < 1 or max(lengths) > x.shape[1]:
                raise DataError(f"{folder / f'lens_{stem}.npy'}: lengths must be in [1, {x.shape[1]}], "
                                f"got {min(lengths)}..{max(lengths)}")
            self._store(split, [_tensor(x[i, :n]) for i, n in enumerate(lengths)],
                        [_tensor(z[i, :n]) for i, n in enumerate(lengths)])

    @staticmethod
    def _load(path: Path):
        import numpy

        if not path.exists():
            raise DataError(f"the timit task needs the preprocessed TIMIT file {path} (train/eval/test _x.npy, "
                            f"_z.npy and lens_*.npy); point --data-dir at the folder that holds them "
                            f"(or at a folder with timit/)")
        try:
            return numpy.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise DataError(f"{path} is not a readable .npy array: {error}") from None


def _tensor(array) -> Tensor:
    import numpy

    return torch.from_numpy(numpy.array(array, dtype=numpy.float32))


TASKS[Speech.name] = Speech
TASKS[TIMIT.name] = TIMIT
