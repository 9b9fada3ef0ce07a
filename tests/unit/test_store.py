"""The provider store (gateway.store): files an operator can read, written atomically."""

from __future__ import annotations

import os

import pytest
import yaml

from gateway import store


def test_render_orders_fields_as_a_person_would_and_drops_empty_ones():
    text = store.render(
        {"models": ["m"], "base_url": "http://h/v1", "name": "lab", "headers": None}
    )
    assert text.startswith("# Written by the gateway admin API; safe to edit and commit.\n")
    assert list(yaml.safe_load(text)) == ["name", "base_url", "models"]
    assert "headers" not in text


def test_render_keeps_unicode_readable():
    assert "Trợ lý" in store.render({"name": "vi", "headers": {"X-Title": "Trợ lý"}})


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = store.fragment_path(tmp_path, "lab")
    assert path == tmp_path / "lab.yaml"
    store.write_atomic(path, "one\n")
    store.write_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.yaml"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "lab.yaml"
    path.write_text("old\n")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.yaml"]


def test_remove_and_read_raw(tmp_path):
    path = tmp_path / "lab.yaml"
    store.write_atomic(path, store.render({"name": "lab", "base_url": "http://h/v1"}))
    assert store.read_raw(path) == {"name": "lab", "base_url": "http://h/v1"}
    path.write_text("- a list, not a provider\n")
    assert store.read_raw(path) == {}
    store.remove(path)
    assert not path.exists()


def test_writable_problem_says_why_the_store_cannot_be_written(tmp_path, monkeypatch):
    assert "no include: directory" in store.writable_problem(None)
    assert "does not exist" in store.writable_problem(tmp_path / "missing")
    assert store.writable_problem(tmp_path) is None
    # Root may write anywhere: the read-only mount is simulated.
    monkeypatch.setattr(store.os, "access", lambda p, mode: mode != os.W_OK)
    assert "is not writable (read-only GitOps mount)" in store.writable_problem(tmp_path)
