"""Builds, offline, everything a LLaMA-Factory LoRA run needs: a tiny Llama, its tokenizer, data.

Run with the LLaMA-Factory venv's interpreter (its transformers, 5.6.0, must read the model
back): `python tiny_llama.py DIR` writes
- DIR/model: a 2-layer Llama (hidden 64, random weights) with a 300-token byte-level BPE
  tokenizer trained here with `tokenizers` and wrapped as PreTrainedTokenizerFast;
- DIR/data: 200 alpaca rows (`tiny_alpaca.json`) and the `dataset_info.json` naming them.
Nothing is downloaded. Seeded: the same files every time (FIELD_NOTES, LLaMA-Factory 0.9.5:
30 steps of this take ~24 s on 1 CPU process).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROWS = 200
VOCAB = 300
DATASET = "tiny_alpaca"
WORDS = ("red green blue cat dog bird tree river stone cloud light dark small large quick slow "
         "north south east west one two three four five six seven eight nine ten").split()


def rows(count: int = ROWS, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows whose output is a simple function of the input (something to learn)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.sample(WORDS, 4)
        out.append({"instruction": "Repeat the words in reverse order.",
                    "input": " ".join(words), "output": " ".join(reversed(words))})
    return out


def write_data(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{DATASET}.json").write_text(json.dumps(rows(), indent=1))
    info = {DATASET: {"file_name": f"{DATASET}.json",
                      "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))


def write_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(row.values()) for row in rows()]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def write_model(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)


def main(root: str) -> None:
    write_model(Path(root) / "model")
    write_data(Path(root) / "data")


if __name__ == "__main__":
    main(sys.argv[1])
