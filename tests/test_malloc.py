"""glibc malloc tuning: applied by the CLI, opt-out by environment, harmless where it does not apply."""

import json
import os
import subprocess
import sys

import pytest

CODE = "import json, dipgo; print(json.dumps(dipgo.tune_malloc()))"


def _run(env_extra: dict) -> object:
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_malloc_sets_both_thresholds_and_can_be_turned_off():
    settings = _run({"DIPGO_MALLOC": ""})
    if settings is None:
        pytest.skip("not glibc")
    assert settings["mmap_threshold"] == 32 * 1024 * 1024 and settings["trim_threshold"] == 1024 ** 3
    assert _run({"DIPGO_MALLOC": "system"}) is None


def test_cli_tunes_malloc(monkeypatch):
    import dipgo.cli as cli
    import dipgo.malloc as malloc

    calls = []
    monkeypatch.setattr(malloc, "tune_malloc", lambda: calls.append(1))
    assert cli.main(["show", "/nonexistent.json"]) == 2  # an error, but only after the tuning
    assert calls, "the CLI must tune malloc before running a command"
