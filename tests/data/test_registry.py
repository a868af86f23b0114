"""The dataset registry: every entry pinned and checksummed (checked against the files in
../shared/data with hashlib when present), names and groups, the data directory, and
scripts/fetch_data.py end to end."""
import hashlib
import os
import re
import subprocess
import sys

import pytest

from llmserve.data import registry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "data")


def test_every_entry_is_pinned_checksummed_and_licensed():
    assert len(registry.DATASETS) == 13
    for f in registry.DATASETS.values():
        # raw GitHub at a full commit hash: the bytes behind the URL cannot change
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/"
                            r"\S+", f.url), f.url
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0 and f.license
        assert f.filename.startswith(f.name + ".") and f.format in (
            "azure_csv", "castillo", "alpaca", "sharegpt")


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data not present")
def test_registry_matches_the_shared_copies():
    for f in registry.DATASETS.values():
        path = os.path.join(SHARED, f.filename)
        with open(path, "rb") as fh:
            blob = fh.read()
        assert (len(blob), hashlib.sha256(blob).hexdigest()) == (f.size, f.sha256), f.name


def test_names_groups_and_errors():
    got = [f.name for f in registry.resolve("azure_conv_2023, castillo_llama31_8b_chat,"
                                            "azure_conv_2023")]
    assert got == ["azure_conv_2023", "castillo_llama31_8b_alpaca_validate",
                   "castillo_llama31_8b_dolly_validate", "castillo_llama31_8b_sharegpt_validate"]
    assert len(registry.resolve("castillo_llama31_8b")) == 9
    assert len(registry.resolve("all")) == 13
    with pytest.raises(ValueError, match="unknown dataset 'azure_2024'"):
        registry.resolve("azure_2024")
    with pytest.raises(ValueError, match="is a group"):
        registry.dataset_path("castillo_llama31_8b")


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMSERVE_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.data_dir() == str(tmp_path / "home" / ".cache" / "llmserve" / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.data_dir() == str(tmp_path / "xdg" / "llmserve" / "data")
    monkeypatch.setenv("LLMSERVE_DATA", str(tmp_path / "d"))
    assert registry.data_dir() == str(tmp_path / "d")


def _script(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fetch_data.py"),
                           f"--config={os.path.join(ROOT, 'configs', 'data.py')}", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data not present")
def test_fetch_script_end_to_end(tmp_path):
    args = ("--config.names=azure_conv_2023,castillo_llama31_8b_chat",
            f"--config.mirror={SHARED}")
    env = {"LLMSERVE_DATA": str(tmp_path)}
    first = _script(*args, env_extra=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("fetched") == 4 and "4 files verified" in first.stdout
    assert "[####################] 100%" in first.stderr          # the progress bar
    second = _script(*args, env_extra=env)
    assert second.returncode == 0 and second.stdout.count("present") == 4
    listing = _script(env_extra=env)
    assert re.search(r"azure_conv_2023 +0\.72 +yes", listing.stdout)
    assert re.search(r"dolly15k_validate +2\.63 +- ", listing.stdout)


def test_fetch_script_bad_name_exits_with_the_field(tmp_path):
    r = _script("--config.names=nope", env_extra={"LLMSERVE_DATA": str(tmp_path)})
    assert r.returncode != 0 and "--config.names: unknown dataset 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
