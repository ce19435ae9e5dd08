"""Where the data lives, and MNIST: IDX files, SHA-256 checks, download or a clear error.

The data root is ``--data-dir``, else ``$MOMENTUMRNN_DATA``, else a per-user cache
directory. It is laid out as::

    ROOT/mnist/train-images-idx3-ubyte.gz ...   (the four original IDX files)
    ROOT/ptb/ptb.{train,valid,test}.txt
    ROOT/fsdd/recordings/*.wav

A missing MNIST file is downloaded when the network allows (to a temporary file,
verified, then renamed into place); offline, the error says which file to put where.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

import torch

__all__ = ["DataError", "data_root", "default_cache_dir", "load_mnist", "mnist_file", "MNIST_FILES"]


class DataError(RuntimeError):
    """A data file is missing, cannot be fetched, or fails its checksum."""


def default_cache_dir() -> Path:
    """The per-user data cache: ``$XDG_CACHE_HOME/momentumrnn/data`` (``~/.cache/...``),
    ``%LOCALAPPDATA%\\momentumrnn\\data`` on Windows."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "momentumrnn" / "data"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "momentumrnn" / "data"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$MOMENTUMRNN_DATA``, else ``default_cache_dir()``."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("MOMENTUMRNN_DATA"):
        return Path(os.environ["MOMENTUMRNN_DATA"]).expanduser()
    return default_cache_dir()


#: The original MNIST files and their SHA-256 sums.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
#: Public mirrors of the original files, tried in order.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mnist_file(root: Path, name: str, download: bool = True) -> Path:
    """Path of one verified MNIST file under ``root/mnist``, downloading it if missing."""
    path = Path(root) / "mnist" / name
    expected = MNIST_FILES[name]
    if not path.exists():
        if not download:
            raise DataError(_missing_message(path, name, "downloads are off (--no-download)"))
        _download(path, name, expected)
    actual = sha256(path)
    if actual != expected:
        raise DataError(f"checksum mismatch for {path}: SHA-256 is {actual}, expected {expected}. "
                        f"The file is corrupt or not the original; delete it to download it again.")
    return path


def _missing_message(path: Path, name: str, why: str) -> str:
    return (f"MNIST file {name} is missing and could not be downloaded ({why}). Put the original file at "
            f"{path} (from {MNIST_MIRRORS[0]}{name}), or point --data-dir (or $MOMENTUMRNN_DATA) at a "
            f"folder that has mnist/{name}.")


def _download(path: Path, name: str, expected: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in MNIST_MIRRORS:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=30) as response:
                while block := response.read(1 << 20):
                    out.write(block)
            actual = sha256(Path(tmp))
            if actual != expected:
                errors.append(f"{mirror}{name}: SHA-256 {actual}, expected {expected}")
                continue
            os.replace(tmp, path)
            print(f"downloaded {mirror}{name} -> {path}", file=sys.stderr)
            return
        except OSError as error:                      # URLError, timeouts, refused connections
            errors.append(f"{mirror}{name}: {error}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(_missing_message(path, name, "; ".join(errors)))


def read_idx(path: Path) -> torch.Tensor:
    """Read a gzipped IDX file of unsigned bytes into a uint8 tensor of its shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim:]
    count = 1
    for size in shape:
        count *= size
    if len(body) != count:
        raise DataError(f"{path}: expected {count} bytes of data for shape {shape}, found {len(body)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def load_mnist(root: str | os.PathLike, download: bool = True) -> dict[str, torch.Tensor]:
    """MNIST as uint8 tensors: ``train_images`` (60000, 784), ``train_labels`` (60000,),
    ``test_images`` (10000, 784), ``test_labels`` (10000,)."""
    root = Path(root)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(mnist_file(root, f"{prefix}-images-idx3-ubyte.gz", download))
        labels = read_idx(mnist_file(root, f"{prefix}-labels-idx1-ubyte.gz", download))
        out[f"{split}_images"] = images.reshape(images.size(0), -1)
        out[f"{split}_labels"] = labels.long()
    return out
