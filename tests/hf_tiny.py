"""Tiny Hugging Face classifiers built offline for tests (imported as `tests.hf_tiny`).

A WordPiece vocabulary written here, a small BERT / DistilBERT (hidden 32, 2 layers), a few Adam
steps on a synthetic two-class text set, `save_pretrained` of model + tokenizer; and a peft LoRA adapter
fine-tuned on top of such a folder. Everything in float32 on CPU, seconds at most.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tda_explorer.data.example_set import DatasetSplits, ExampleSet

POSITIVE = ("good", "great", "fun", "nice", "lovely")
NEGATIVE = ("bad", "awful", "boring", "dull", "poor")
NEUTRAL = ("the", "movie", "film", "plot", "was", "acting", "really", "very")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CLASS_NAMES = ("negative", "positive")


def sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    """`n` short sentences whose label (0 negative, 1 positive) is carried by one sentiment word."""
    g = torch.Generator().manual_seed(seed)

    def pick(options) -> int:
        return int(torch.randint(len(options), (1,), generator=g))

    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = [NEUTRAL[pick(NEUTRAL)] for _ in range(2 + pick(range(3)))]
        pool = POSITIVE if y else NEGATIVE
        words.insert(pick(range(len(words) + 1)), pool[pick(pool)])
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def example_set(texts: list[str], labels: list[int], name: str) -> ExampleSet:
    return ExampleSet(
        ids=tuple(f"{name}-{i}" for i in range(len(texts))),
        inputs=tuple(texts),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=CLASS_NAMES,
        kind="text",
        name=name,
    )


def tiny_splits(n_train: int = 24, n_val: int = 6, n_test: int = 8, seed: int = 0) -> DatasetSplits:
    """A synthetic sentiment dataset as DatasetSplits (spec names it uniquely by its sizes and seed)."""
    parts = {}
    for k, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        parts[name] = example_set(*sentences(n, seed * 10 + k), name)
    spec = {"name": "tiny-sentiment", "options": {"n": [n_train, n_val, n_test], "seed": seed}}
    return DatasetSplits(parts["train"], parts["val"], parts["test"], spec)


def write_tokenizer(folder: Path):
    """A BertTokenizerFast over the fixture's words, its vocab.txt written in `folder`."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + NEUTRAL + POSITIVE + NEGATIVE) + "\n")
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)  # transformers 5: `vocab`, a file or dict


def _finetune(model, tok, texts, labels, steps: int, lr: float = 1e-2) -> None:
    enc = tok(texts, padding=True, return_tensors="pt")
    y = torch.tensor(labels)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()


def tiny_model(folder: Path, arch: str = "bert", seed: int = 0, steps: int = 20, splits=None) -> Path:
    """Build, fine-tune (`steps` full-batch Adam steps on the train split) and save a tiny classifier."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    splits = splits or tiny_splits()
    tok = write_tokenizer(folder)
    n_vocab = len(SPECIAL + NEUTRAL + POSITIVE + NEGATIVE)
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(
            vocab_size=n_vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            num_labels=2,
            id2label=dict(enumerate(CLASS_NAMES)),
            label2id={c: i for i, c in enumerate(CLASS_NAMES)},
        )
        model = BertForSequenceClassification(cfg)
    elif arch == "distilbert":
        cfg = DistilBertConfig(
            vocab_size=n_vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32
        )
        cfg.num_labels = 2
        model = DistilBertForSequenceClassification(cfg)
    else:
        raise ValueError(arch)
    _finetune(model, tok, list(splits.train.inputs), splits.train.labels.tolist(), steps)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_adapter(base: Path, folder: Path, seed: int = 0, steps: int = 8, splits=None) -> Path:
    """A peft LoRA adapter (r=4 on query/value, classifier in modules_to_save) fine-tuned on `base`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    splits = splits or tiny_splits()
    model = AutoModelForSequenceClassification.from_pretrained(str(base), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    torch.manual_seed(seed)
    lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    model = get_peft_model(model, lora)
    # peft initialises B = 0 (the adapter starts as a no-op); fine-tune it so it means something
    _finetune(model, tok, list(splits.train.inputs), splits.train.labels.tolist(), steps, lr=1e-2)
    model.save_pretrained(folder)
    return folder
