"""Our top-level packages next to Hugging Face transformers and PEFT change nothing in them.

Our distribution is ``sealagg`` but its top-level import names are generic: ``kernels``,
``crypto``, ``attest``, ``appliance``, ``client_shim``. Hugging Face publishes a package whose
import name is also ``kernels`` (hub kernels), and transformers probes for it:
``transformers.utils.import_utils.is_kernels_available()`` calls
``_is_package_available("kernels", return_version=True)``, which

1. asks ``importlib.util.find_spec("kernels")``: our ``kernels`` package answers;
2. asks ``importlib.metadata.version("kernels")``: no such distribution, so it falls back to
   ``importlib.metadata.packages_distributions()["kernels"]``, which names ``sealagg`` (its
   ``top_level.txt``), and takes sealagg's version;
3. (with no metadata at all it would ``import kernels`` and read ``__version__``).

So the raw probe reports ``(True, <sealagg version>)``; ``is_kernels_available()`` stays False
only because that version lies outside transformers' accepted window
``[KERNELS_MIN_VERSION, KERNELS_MAX_VERSION)`` (0.18.2 to 0.19.0 in transformers 5.24). Were
sealagg's version inside it, transformers would run ``from kernels import CUDAProperties, ...``
in ``transformers.integrations.hub_kernels`` and every model import would fail with
ImportError. :func:`test_sealagg_version_stays_outside_the_hub_kernels_window` guards that.

Each check runs in a fresh interpreter: transformers caches its probes per process.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub in this process
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import importlib.metadata
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

OURS = ("kernels", "crypto", "attest", "appliance", "client_shim")

SCRIPT = r"""
import hashlib, importlib, json, sys

OURS = ("kernels", "crypto", "attest", "appliance", "client_shim")


def import_ours(huggingface=True):
    for name in OURS:
        importlib.import_module(name)
    importlib.import_module("client_shim.pytorch")
    if huggingface:  # imports transformers itself
        importlib.import_module("client_shim.huggingface")


def probe():
    from transformers.utils import import_utils as iu

    iu.is_kernels_available.cache_clear()
    iu._package_distribution_mapping.cache_clear()
    found, version = iu._is_package_available("kernels", return_version=True)
    return {
        "is_kernels_available": iu.is_kernels_available(),
        "raw": [found, version],
        "kernels_module": getattr(sys.modules.get("kernels"), "__file__", None),
    }


def digest(tensor):
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def behaviour():
    import peft
    import torch
    import transformers
    import transformers.integrations.hub_kernels  # what a tripped probe would break

    config = transformers.GPT2Config(
        vocab_size=128, n_positions=16, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(1234)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
        task_type="CAUSAL_LM", init_lora_weights="gaussian",
    )
    torch.manual_seed(99)
    peft_model = peft.get_peft_model(model, lora).eval()
    trainable = {n: digest(p) for n, p in peft_model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        lora_logits = peft_model(input_ids=ids).logits
    return {
        "logits": digest(logits),
        "peft_type": type(peft_model).__name__,
        "trainable": trainable,
        "trainable_count": sum(
            p.numel() for p in peft_model.parameters() if p.requires_grad
        ),
        "lora_logits": digest(lora_logits),
    }


order = sys.argv[1]
out = {}
if order == "ours_first":  # ours, then transformers: both records are taken with ours loaded
    import_ours(huggingface=False)
    out["ours_in_modules_before_transformers"] = (
        all(n in sys.modules for n in OURS) and "transformers" not in sys.modules
    )
    import transformers
    out["probe_before"] = probe()
    out["behaviour_before"] = behaviour()
    import_ours()
    out["probe_after"] = probe()
    out["behaviour_after"] = behaviour()
else:
    import transformers
    out["ours_in_modules_before_transformers"] = any(n in sys.modules for n in OURS)
    out["probe_before"] = probe()
    out["behaviour_before"] = behaviour()
    import_ours()
    out["probe_after"] = probe()
    out["behaviour_after"] = behaviour()
out["transformers"] = transformers.__version__
print(json.dumps(out))
"""


ORDERS = ("transformers_first", "ours_first")


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    """One fresh interpreter per import order (the first records transformers without ours)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    results = {}
    for order in ORDERS:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, order],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=env,
        )
        assert out.returncode == 0, (order, out.stderr[-4000:])
        results[order] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def test_hub_kernels_probe_is_not_changed_by_our_packages(runs):
    for order, run in runs.items():
        for when in ("probe_before", "probe_after"):
            assert run[when]["is_kernels_available"] is False, (order, when, run[when])
    assert runs["ours_first"]["ours_in_modules_before_transformers"] is True
    assert runs["transformers_first"]["ours_in_modules_before_transformers"] is False
    # The raw probe answers the same whether or not, and in whichever order, ours are imported.
    raw = runs["transformers_first"]["probe_before"]["raw"]
    for order, run in runs.items():
        assert run["probe_before"]["raw"] == raw and run["probe_after"]["raw"] == raw, order
    # transformers' probe (and building models, PEFT) never imports our kernels package.
    assert runs["transformers_first"]["probe_before"]["kernels_module"] is None
    assert runs["ours_first"]["probe_before"]["kernels_module"].endswith("__init__.py")


def test_sealagg_version_stays_outside_the_hub_kernels_window(runs):
    """While our ``kernels`` is attributed to sealagg, its version must not look like HF's."""
    from packaging.version import Version
    from transformers.utils import import_utils as iu

    found, version = runs["transformers_first"]["probe_before"]["raw"]
    if not found or version == "N/A":
        return  # the probe no longer sees our package (e.g. after a rename): nothing to guard
    assert version == importlib.metadata.version("sealagg"), version
    low, high = Version(iu.KERNELS_MIN_VERSION), Version(iu.KERNELS_MAX_VERSION)
    assert not (low <= Version(version) < high), (
        f"sealagg {version} lies inside transformers' hub-kernels window [{low}, {high}): "
        "transformers would take our `kernels` package for Hugging Face's and fail on "
        "`from kernels import CUDAProperties`"
    )


def test_model_outputs_and_peft_are_identical_with_our_packages(runs):
    reference = runs["transformers_first"]["behaviour_before"]  # before ours were imported
    assert reference["peft_type"] == "PeftModelForCausalLM"
    assert reference["trainable"] and all("lora_" in n for n in reference["trainable"])
    assert reference["trainable_count"] == 2 * 4 * (32 + 96)  # r * (in + out) per c_attn
    for order, run in runs.items():
        for when in ("behaviour_before", "behaviour_after"):
            assert run[when] == reference, (order, when)


def test_distribution_metadata():
    assert importlib.metadata.version("sealagg")
    names = {
        (dist.metadata["Name"] or "").lower().replace("_", "-")
        for dist in importlib.metadata.distributions()
    }
    assert "sealagg" in names
    for name in ("kernels", "crypto", "attest"):
        assert name not in names, f"a distribution named {name!r} is installed"
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version(name)
    top_level = importlib.metadata.distribution("sealagg").read_text("top_level.txt")
    if top_level is not None:  # the metadata maps our import names to sealagg
        assert set(OURS) <= set(top_level.split()), top_level
