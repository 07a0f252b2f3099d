"""sealagg beside Hugging Face's ``kernels`` distribution (a dependency of transformers >= 5.25).

Until the namespace change our folders imported under bare names (``kernels``, ``crypto``, ...):
Hugging Face's ``site-packages/kernels/`` shadowed our ``kernels`` and the demo died with
``cannot import name 'dequantize' from 'kernels'``. Now every module is ``sealagg.<folder>.*``
and the bare names belong to whoever installed them. Each check runs in a fresh interpreter
started from the repository root, the place where a bare name would find our folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("kernels", "crypto", "attest", "appliance", "client_shim")


def python(code: str, *args: str, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter whose working directory is the repository root."""
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def our_modules() -> list[str]:
    """Every module of the five folders, under its installed name."""
    names = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(("sealagg", *parts)))
    return names


def test_hugging_face_kernels_is_installed_here() -> None:
    """The suite runs beside the distribution that broke fresh installs (it is in the lock)."""
    assert importlib.metadata.version("kernels")
    transformers_version = importlib.metadata.version("transformers")
    assert tuple(int(x) for x in transformers_version.split(".")[:2]) >= (5, 25)


def test_bare_kernels_is_theirs_and_every_sealagg_module_imports() -> None:
    code = (
        "import importlib, json, sys\n"
        "kernels = importlib.import_module('kernels')  # Hugging Face's, by its bare name\n"
        "theirs = kernels.__file__\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'theirs': theirs, 'after': sys.modules['kernels'].__file__,\n"
        "                  'bare': sorted(set(sys.modules) & {'crypto', 'attest', 'appliance',\n"
        "                                                     'client_shim'})}))\n"
    )
    modules = our_modules()
    assert len(modules) > 100
    seen = python(code, *modules)
    site = Path(seen["theirs"]).resolve()
    assert not site.is_relative_to(REPO / "kernels"), (
        f"bare `kernels` resolved to our folder: {site}"
    )
    assert "site-packages" in site.parts
    assert seen["after"] == seen["theirs"]
    assert seen["bare"] == [], f"our folders were imported under bare names: {seen['bare']}"


def test_transformers_hub_kernels_and_our_huggingface_integration_together() -> None:
    """transformers' own hub-kernels module imports, and our Trainer integration trains LoRA."""
    code = r"""
import json
import torch, transformers, peft
import transformers.integrations.hub_kernels
import importlib
kernels = importlib.import_module("kernels")  # Hugging Face's, by its bare name
from sealagg.client_shim import huggingface
from sealagg.client_shim.pytorch import shared_parameters

config = transformers.GPT2Config(vocab_size=64, n_positions=8, n_embd=16, n_layer=1, n_head=2)
torch.manual_seed(0)
model = transformers.GPT2LMHeadModel(config)
lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True,
                       task_type="CAUSAL_LM")
model = peft.get_peft_model(model, lora)
names = list(shared_parameters(model, "trainable"))
print(json.dumps({"kernels": kernels.__file__, "shared": names,
                  "callback": hasattr(huggingface, "FederatedCallback")}))
"""
    seen = python(code)
    assert not Path(seen["kernels"]).resolve().is_relative_to(REPO / "kernels")
    assert seen["shared"] and all("lora_" in name for name in seen["shared"])
