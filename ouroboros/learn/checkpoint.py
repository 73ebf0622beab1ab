"""Checkpoints of published versions, and their export as a model folder.

Each published version is saved under `DIR/runs/<run id>/checkpoints/vNNNN/`:

    adapter_config.json, adapter_model.safetensors   the PEFT adapter (`save_pretrained`)
    learner_state.pt                                 optimizer, value head, step counters
    rng_state.pt                                     torch, Python and numpy RNG states
    config.json                                      the run's config
    version.json                                     version, base model, optimizer step

The learner builds the files in memory (`snapshot`) and the recorder, the run's one writer,
writes them (`write`): nothing assumes that the learner's node has the run directory's disk.
`export` merges a version's adapter into its base model and saves a folder that
`AutoModelForCausalLM.from_pretrained` and vLLM both load.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path


class CheckpointError(ValueError):
    """A run directory or version that cannot be exported; the message says what exists."""


def version_dir(run_path: str | Path, version: int) -> Path:
    return Path(run_path) / "checkpoints" / f"v{version:04d}"


def snapshot(model, optimizer, value_head, version: int, step: int, config: dict, base_model: str,
             extra: dict | None = None) -> dict[str, bytes]:
    """Everything a version's checkpoint holds, as file name -> bytes."""
    import numpy as np
    import torch

    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="ouroboros-ckpt-") as tmp:
        model.save_pretrained(tmp)
        for name in os.listdir(tmp):
            path = Path(tmp) / name
            if path.is_file():
                files[name] = path.read_bytes()
    files["learner_state.pt"] = _torch_bytes({
        "optimizer": optimizer.state_dict(),
        "value_head": value_head.state_dict() if value_head is not None else None,
        "version": version, "step": step, **(extra or {}),
    })
    files["rng_state.pt"] = _torch_bytes({
        "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(), "numpy": _numpy_state(np.random.get_state()),
    })
    files["config.json"] = json.dumps(config, indent=1, default=str).encode()
    files["version.json"] = json.dumps({"version": version, "base_model": base_model, "step": step}).encode()
    return files


def restore(files: dict[str, bytes], model, optimizer, value_head) -> dict:
    """Load a `snapshot` back into a learner's model, optimizer and value head, and set the
    process's RNGs; returns the learner state (version, step, extras)."""
    import numpy as np
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load as load_safetensors

    missing = [n for n in ("adapter_model.safetensors", "learner_state.pt", "rng_state.pt") if n not in files]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)}: it cannot be restored")
    adapter = load_safetensors(files["adapter_model.safetensors"])
    result = set_peft_model_state_dict(model, adapter)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"the checkpoint's adapter does not fit this model (unexpected "
                              f"{list(result.unexpected_keys)[:3]}): was the config changed?")
    # weights_only: tensors and plain containers, never a pickle that could run code (a run
    # directory may come from someone else).
    try:
        state = torch.load(io.BytesIO(files["learner_state.pt"]), weights_only=True)
        rng = torch.load(io.BytesIO(files["rng_state.pt"]), weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"the checkpoint's learner or RNG state cannot be read as plain tensors "
                              f"({type(exc).__name__}): it is damaged or was not written by this version") from None
    optimizer.load_state_dict(state["optimizer"])
    if value_head is not None and state.get("value_head") is not None:
        value_head.load_state_dict(state["value_head"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    n = rng["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), int(n[2]), int(n[3]), float(n[4])))
    return state


def _numpy_state(state) -> list:
    """numpy's RNG state as plain values (its key array as a list), loadable with weights_only."""
    return [state[0], state[1].tolist(), int(state[2]), int(state[3]), float(state[4])]


def _torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write(run_path: str | Path, version: int, files: dict[str, bytes]) -> Path:
    """Write a version's files atomically: a half-written checkpoint never has the final name."""
    final = version_dir(run_path, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, data in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad checkpoint file name {name!r}")
        (tmp / name).write_bytes(data)
    if final.exists():  # a retried write of the same version replaces it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def run_path_of(path: str | Path) -> Path:
    """The run a path names: a run's own directory (it has checkpoints/ or summary.json), or a
    run directory (`--out`), whose `latest` run is meant."""
    p = Path(path)
    if (p / "checkpoints").is_dir() or (p / "summary.json").is_file():
        return p
    if (p / "latest").exists():
        return (p / "latest").resolve()
    raise CheckpointError(f"{str(p)!r} is neither a run directory (with a 'latest' run) nor a run's own directory "
                          "(runs/<run id>/): pass the --out of `ouroboros run`, or one of its runs/<run id>")


def versions(run_path: str | Path) -> list[int]:
    root = Path(run_path) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(d.name[1:]) for d in root.iterdir() if d.is_dir() and d.name[:1] == "v" and d.name[1:].isdigit())


def run_config(run_path: Path) -> dict:
    """The run's config: from a checkpoint, else from the run's summary."""
    for v in reversed(versions(run_path)):
        cfg = version_dir(run_path, v) / "config.json"
        if cfg.is_file():
            return _read_config(cfg)
    raise CheckpointError(f"{str(run_path)!r} holds no checkpoint (checkpoints/vNNNN/config.json), so its base "
                          "model is unknown: nothing to export")


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        model = data["policy"]["model"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a run config with policy.model ({type(exc).__name__}): "
                              "the checkpoint is damaged; export another version") from None
    if not isinstance(model, str) or not model:
        raise CheckpointError(f"{str(path)!r}: policy.model is not a model name")
    return data


def export(path: str | Path, out: str | Path, version: int | None = None) -> dict:
    """Merge version `version` (default: the latest checkpoint; 0: the base model) into its base
    and save a Hugging Face model folder at `out`, tokenizer included."""
    from ouroboros import models

    run_path = run_path_of(path)
    have = versions(run_path)
    if version is None:
        if not have:
            raise CheckpointError(f"{str(run_path)!r} has no checkpoints yet (checkpoints/vNNNN/): "
                                  "pass --version 0 to export the base model")
        version = have[-1]
    if version != 0 and version not in have:
        raise CheckpointError(f"{str(run_path)!r} has no checkpoint of version {version}: it has "
                              + (", ".join(str(v) for v in have) if have else "none"))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {str(out)!r} exists and is not an empty folder: pass a new folder")
    cfg = run_config(run_path)
    base_name = cfg["policy"]["model"]
    source = models.resolve(base_name)
    dtype = cfg["policy"].get("dtype", "float32")
    # Imported only now: a refused request (no such version, a used --out) answers at once,
    # without seconds of torch and transformers imports.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype if dtype in (
            "float32", "bfloat16", "float16") else "float32"))
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise CheckpointError(f"cannot load the run's base model {base_name!r}: {str(exc).splitlines()[0]}") from None
    if version:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(version_dir(run_path, version))).merge_and_unload()
        except Exception as exc:  # a damaged or foreign adapter: what peft/safetensors raise varies
            raise CheckpointError(f"checkpoint v{version:04d} of {str(run_path)!r} cannot be loaded as an adapter of "
                                  f"{base_name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"version": version, "base_model": base_name, "run": str(run_path), "out": str(out)}
    (out / "ouroboros_export.json").write_text(json.dumps(info, indent=1))
    return info
