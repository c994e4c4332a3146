"""Loading a model never runs, fetches or allocates what its files name; user mistakes are one line."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.cli import cli
from model.io import CheckpointError, load_model
from model.loader import load_for_generation
from tests.conftest import ROOT
from tests.model.conftest import save_tiny


def run_model(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(ROOT), **(env or {})}  # no offline flag
    return subprocess.run([sys.executable, "-m", "model", *map(str, args)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def name_tokenizer(run: Path, name: str) -> None:
    info_path = run / "checkpoint" / "model.json"
    info = json.loads(info_path.read_text())
    info["tokenizer"]["name"] = name
    info_path.write_text(json.dumps(info))


def test_a_tokenizer_folder_with_custom_code_is_never_run(tmp_path):
    """model.json may name a folder whose tokenizer needs its own Python code: refused, never asked or run."""
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (evil / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    run = save_tiny(tmp_path / "run")
    name_tokenizer(run, str(evil))
    for command in (["sample", "--ckpt", run, "--max-new-tokens", "2"], ["export", "--ckpt", run, "--out", tmp_path / "hf"]):
        err = one_line(run_model(*command))
        assert str(evil) in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "hf").exists()


@pytest.fixture
def network_watch():
    """A local proxy that records every connection attempt (HTTP(S)_PROXY point at it) and drops it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    seen: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    seen.append(conn.recv(200))

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    yield {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url, "NO_PROXY": ""}, seen
    server.close()


def test_a_hub_name_in_model_json_is_not_fetched(tmp_path, network_watch):
    proxy, seen = network_watch
    run = save_tiny(tmp_path / "run")
    name_tokenizer(run, "someone/some-tokenizer")
    started = time.monotonic()
    err = one_line(run_model("sample", "--ckpt", run, "--max-new-tokens", "2", timeout=60, env=proxy))
    assert "someone/some-tokenizer" in err and time.monotonic() - started < 30
    assert not seen, f"contacted the network: {seen}"


@pytest.mark.parametrize("field, value, message", [
    ("n_embd", 10**9, "n_embd = 1000000000, expected an integer from 1 to 65,536"),
    ("n_layer", -2, "n_layer = -2"),
    ("vocab_size", 1.5, "vocab_size = 1.5"),
    ("block_size", 64, "implies"),  # a config that disagrees with the stored weights
])
def test_absurd_or_inconsistent_sizes_are_refused_before_allocating(tmp_path, field, value, message):
    run = save_tiny(tmp_path / "run")
    info_path = run / "checkpoint" / "model.json"
    info = json.loads(info_path.read_text())
    info["config"][field] = value
    info_path.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=message):
        load_model(run)


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cuda"], "sees no CUDA GPU"),
    (["--device", "mps"], "mps requested, but it is not available"),
    (["--dtype", "fp16"], "dtype fp16 needs a CUDA device"),
])
def test_devices_and_dtypes_this_machine_lacks_are_one_line(tmp_path, args, message):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = save_tiny(tmp_path / "run")
    r = CliRunner().invoke(cli, ["sample", "--ckpt", str(run), "--max-new-tokens", "2", *args])  # in this process:
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]  # a new one costs seconds
    assert isinstance(r.exception, SystemExit) and r.exit_code == 1, (r.exception, r.output)  # not a traceback
    assert len(errors) == 1 and message in errors[0], r.output


def test_a_tiny_temperature_is_greedy(tmp_path):
    loaded = load_for_generation(save_tiny(tmp_path / "run"))
    from model.sampling import SamplingParams

    tiny = loaded.engine.generate([1, 2, 3], SamplingParams(max_new_tokens=8, temperature=1e-45))[0].tokens
    greedy = loaded.engine.generate([1, 2, 3], SamplingParams(max_new_tokens=8, temperature=0))[0].tokens
    assert tiny == greedy


def test_a_diverged_checkpoint_is_refused(tmp_path):
    import torch

    from model.io import save_model
    from prep.tokenizer import load_tokenizer
    from tests.model.conftest import tiny_model

    model = tiny_model()
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float("nan")
    save_model(tmp_path / "ckpt", model, load_tokenizer("bytes").identity(), "pretrain", 1)
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        load_model(tmp_path / "ckpt")
