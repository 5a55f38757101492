"""`icft export`: merged models load with AutoModelForCausalLM alone and give the adapter's logits."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from _inference_run import train_plain_run_on_chat_model, trained_run
from _tables import read_markdown
from transformers import AutoModelForCausalLM, AutoTokenizer

from icft.cli import main
from icft.runs import load_run, stamp


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, staged_data):
    return trained_run(tmp_path_factory, tiny_llama_dir, staged_data)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, run):
    """A run folder on the embedded default: its LoRA layout (query/value + the head transform), non-zero weights."""
    from peft import LoraConfig, get_peft_model

    from icft.models import extra_trainable_modules, load_model, lora_target_modules

    folder = tmp_path_factory.mktemp("minilm-run")
    model, tokenizer = load_model("minilm-decoder")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(model),
                                                  modules_to_save=extra_trainable_modules(model),
                                                  task_type="CAUSAL_LM"))  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:  # LoRA A and B, and the trained copy of the transform
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["name"] = "minilm-decoder"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(run / "memory", folder / "memory")
    stamp(folder / "memory", folder)  # this folder's own run now: its parts carry its config's hash
    for name in ("stage_eval.json", "summary.json"):
        shutil.copy(run / name, folder / name)
    (folder / "eval.json").write_text(json.dumps({"test.jsonl": {"accuracy": 0.5, "n_examples": 8}}))
    return folder


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["Question: What is asthma?\nAnswer: a lung disease", "Patient: I cough.\nDoctor:"],
                      return_tensors="pt", padding=True, add_special_tokens=False)  # fmt: skip
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_merged_embedded_default_loads_without_icft(minilm_run, tmp_path):
    out = tmp_path / "merged"
    assert main(["export", "--run", str(minilm_run), "--output", str(out), "--merge"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertLMHeadModel"] and config["is_decoder"] is True
    merged = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(merged).__name__ == "BertLMHeadModel"
    assert tokenizer.eos_token == "[SEP]" and merged.generation_config.eos_token_id == tokenizer.sep_token_id
    reference, ref_tokenizer = load_run(minilm_run, device="cpu")
    base, _ = load_run(minilm_run, device="cpu")
    with base.disable_adapter():
        untrained = _logits(base, ref_tokenizer)
    expected = _logits(reference, ref_tokenizer)
    assert (_logits(merged, tokenizer) - expected).abs().max().item() <= 1e-4
    assert (untrained - expected).abs().max().item() > 1e-2  # the adapter does change the model

    card = (out / "README.md").read_text()
    for needed in ("Base model: `minilm-decoder`", "forgetting", "Not a source of medical advice",
                   "## Run configuration", "training: ", "examples; by source: fixture-"):  # fmt: skip
        assert needed in card, needed
    stage_eval = json.loads((minilm_run / "stage_eval.json").read_text())
    matrix = read_markdown(card[card.index("## Curriculum results") :])
    assert [row["after \\ on"] for row in matrix] == stage_eval["stages"]
    for row, values in zip(matrix, stage_eval["accuracy_matrix"]):
        assert [row[s] for s in stage_eval["stages"]] == ["-" if v is None else f"{v:.4f}" for v in values]
    (evaluation,) = read_markdown(card[card.index("## Evaluation") :])
    assert evaluation["file"] == "test.jsonl" and evaluation["n"] == "8" and float(evaluation["accuracy"]) == 0.5
    assert (out / "memory" / "memory.jsonl").read_text() == (minilm_run / "memory" / "memory.jsonl").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_adapter_export_and_llama_merge(run, tiny_llama_dir, tmp_path, capsys):
    from peft import PeftModel

    from icft.models import load_model

    out = tmp_path / "adapter"
    assert main(["export", "--run", str(run), "--output", str(out)]) == 0
    meta = json.loads((out / "icft_export.json").read_text())
    assert meta["format"] == "adapter" and meta["base_model"] == str(tiny_llama_dir)
    assert (out / "adapter_model.safetensors").exists() and (out / "memory" / "tensors.pt").exists()
    base, tokenizer = load_model(meta["base_model"])
    expected = _logits(load_run(run, device="cpu")[0], tokenizer)
    assert torch.allclose(_logits(PeftModel.from_pretrained(base, out), tokenizer), expected, atol=1e-6)

    # a second export replaces the first; a folder that is not an export is never overwritten
    assert main(["export", "--run", str(run), "--output", str(out), "--merge"]) == 0
    assert (_logits(AutoModelForCausalLM.from_pretrained(out), tokenizer) - expected).abs().max() <= 1e-4
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["export", "--run", str(run), "--output", str(precious)]) == 2
    assert "not an earlier icft export" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def plain_run_on_chat_model(tmp_path_factory, chat_tokenizer, staged_data):
    return train_plain_run_on_chat_model(tmp_path_factory.mktemp("plain-on-chat-export"), chat_tokenizer,
                                         staged_data, max_length=40)  # fmt: skip


def test_an_exported_plain_run_on_a_chat_model_is_served_plain(plain_run_on_chat_model, tmp_path):
    """`--model <export>` reads the export's prompt_format.json: a run trained plain is not served in the chat
    format its tokenizer would give it (`auto`), by generate/chat/serve (Engine.load) and by icft eval."""
    from icft.evaluation.commands import load_for_eval
    from icft.inference.generate import Engine
    from icft.runs import PROMPT_FORMAT_FILE

    out = tmp_path / "merged"
    assert main(["export", "--run", str(plain_run_on_chat_model), "--output", str(out), "--merge"]) == 0
    assert json.loads((out / PROMPT_FORMAT_FILE).read_text()) == {"template": "plain", "max_length": 40}
    engine = Engine.load(model=str(out))
    assert engine.tokenizer.chat_template and engine.format.template == "plain" and engine.format.max_length == 40
    assert load_for_eval(None, str(out)).format.template == "plain"

    # Without the file the folder is any model folder: the format its tokenizer calls for.
    (out / PROMPT_FORMAT_FILE).unlink()
    assert Engine.load(model=str(out)).format.template == "chat"

    adapter = tmp_path / "adapter"
    assert main(["export", "--run", str(plain_run_on_chat_model), "--output", str(adapter)]) == 0
    assert json.loads((adapter / PROMPT_FORMAT_FILE).read_text())["template"] == "plain"


def test_a_merge_that_changes_the_outputs_is_refused_and_writes_nothing(run, tmp_path, monkeypatch, capsys):
    """The export loads what it saved and compares it with the run on two probe texts: a merged model that does not
    answer as base + adapter does (a tie lost on save, a merge bug in a new release) is refused, not shipped."""
    from transformers import PreTrainedModel

    real_save = PreTrainedModel.save_pretrained

    def save_a_changed_model(self, folder, *args, **kwargs):  # as if the output layer lost its tie on save
        with torch.no_grad():
            self.get_output_embeddings().weight[:, 0] += 1.0
        return real_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_a_changed_model)
    out = tmp_path / "merged"
    assert main(["export", "--run", str(run), "--output", str(out), "--merge"]) == 2
    err = capsys.readouterr().err
    assert "the saved merged model, loaded back with from_pretrained changed the model's outputs" in err, err
    assert not out.exists()  # nothing half-written
