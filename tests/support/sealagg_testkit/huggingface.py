"""Tiny Hugging Face models, token data and Trainers for the integration tests.

Nothing is downloaded: GPT-2 models are built from a config with random weights, the data are
random token ids, and the hub is set offline before ``transformers`` is first imported. Importing
this module skips the importing test module when torch or transformers is missing.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 512, 16


def tiny_config() -> transformers.GPT2Config:
    """A two-layer GPT-2 small enough to train a few steps on a CPU in a test."""
    return transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )


def tiny_lm(seed: int) -> transformers.GPT2LMHeadModel:
    """A tiny causal LM with random weights; call from the main thread (global RNG)."""
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(tiny_config())


def token_dataset(seed: int, size: int) -> list[dict[str, torch.Tensor]]:
    """``size`` random sequences, each its own label (causal LM)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (size, SEQ), generator=generator)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x} for x in ids]


def make_trainer(model, dataset, folder: Path, **overrides) -> transformers.Trainer:
    """A CPU Trainer whose epoch count is large: a round's step budget must stop it."""
    settings = {
        "output_dir": str(folder),
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 1,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "dataloader_pin_memory": False,
        "num_train_epochs": 100,  # the round's budget must come from the integration
        **overrides,
    }
    args = transformers.TrainingArguments(**settings)
    return transformers.Trainer(model=model, args=args, train_dataset=dataset)


def as_numpy(params) -> dict[str, np.ndarray]:
    """Copies of named torch parameters as float32 arrays."""
    return {n: p.detach().cpu().numpy().astype(np.float32).copy() for n, p in params.items()}
