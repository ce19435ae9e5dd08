"""Data root, MNIST IDX reading, SHA-256 checks, download and the offline error."""

import gzip
import io
import shutil
import urllib.error
import urllib.request

import pytest
import torch

from momentumrnn.experiments import data
from momentumrnn.experiments.data import DataError, data_root, load_mnist, mnist_file, read_idx
from toolkit_helpers import HAVE_MNIST, SHARED_DATA

needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="needs ../shared/data/mnist")
LABELS = "t10k-labels-idx1-ubyte.gz"


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MOMENTUMRNN_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("MOMENTUMRNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root(None) == tmp_path / "cache" / "momentumrnn" / "data"


@needs_mnist
def test_checksums_agree_with_the_shared_sums():
    sums = dict(reversed(line.split()) for line in (SHARED_DATA / "mnist" / "SHA256SUMS").read_text().splitlines())
    assert sums == data.MNIST_FILES


@needs_mnist
def test_load_mnist_shapes_and_values():
    mnist = load_mnist(SHARED_DATA, download=False)
    assert mnist["train_images"].shape == (60000, 784) and mnist["train_images"].dtype == torch.uint8
    assert mnist["test_images"].shape == (10000, 784) and mnist["test_labels"].shape == (10000,)
    assert mnist["train_labels"][:5].tolist() == [5, 0, 4, 1, 9]
    assert sorted(mnist["test_labels"].unique().tolist()) == list(range(10))


def test_missing_file_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as error:
        mnist_file(tmp_path, LABELS, download=False)
    assert str(tmp_path / "mnist" / LABELS) in str(error.value) and "--data-dir" in str(error.value)


def test_failed_download_says_where_to_put_it_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as error:
        mnist_file(tmp_path, LABELS)
    assert str(tmp_path / "mnist" / LABELS) in str(error.value) and "no network" in str(error.value)
    assert list((tmp_path / "mnist").iterdir()) == []


@needs_mnist
def test_download_is_verified_then_renamed(tmp_path, monkeypatch):
    content = (SHARED_DATA / "mnist" / LABELS).read_bytes()
    served = []

    def fake(url, timeout):
        served.append(url)
        return io.BytesIO(b"not mnist" if len(served) == 1 else content)   # the first mirror serves junk

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    path = mnist_file(tmp_path, LABELS)
    assert path.read_bytes() == content and len(served) == 2
    assert [p.name for p in (tmp_path / "mnist").iterdir()] == [LABELS]


@needs_mnist
def test_checksum_mismatch_names_the_file(tmp_path):
    (tmp_path / "mnist").mkdir()
    shutil.copy(SHARED_DATA / "mnist" / LABELS, tmp_path / "mnist" / LABELS)
    with open(tmp_path / "mnist" / LABELS, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    with pytest.raises(DataError, match="checksum mismatch for .*" + LABELS):
        mnist_file(tmp_path, LABELS, download=False)


def test_read_idx(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
    assert read_idx(path).tolist() == [[0, 1, 2], [3, 4, 5]]
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 13, 1, 0, 0, 0, 2]) + bytes(8))
    with pytest.raises(DataError, match="unsigned bytes"):
        read_idx(path)
