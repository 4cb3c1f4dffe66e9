"""What ``llm.py`` and its peers' runners measure on a language model, with nothing but torch:
the text split, token sequences, perplexity, KL to the unpruned model, greedy agreement and
decode speed. The peers' runners import it in their own environments (SliceGPT pins an older
transformers), so every row is measured by the same code."""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

TOKENS = 256  # per sequence


def split_text() -> tuple[str, str]:
    """Calibration and test text: Python's help topics, every fifth topic (by name) to the
    test set, the rest to calibration. No topic is in both."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    test = "\n\n".join(topics[n] for i, n in enumerate(names) if i % 5 == 4)
    calibration = "\n\n".join(topics[n] for i, n in enumerate(names) if i % 5 != 4)
    return calibration, test


def dataset_descriptions() -> str:
    """scikit-learn's descriptions of its bundled datasets (iris, wine, the handwritten
    digits, …), in file-name order: English prose and tables about measurements, nothing
    like the Python help topics every method calibrates on, so a test on it shows whether
    a calibrated row holds up off its calibration domain."""
    from importlib.resources import files

    folder = files("sklearn.datasets.descr")
    return "\n\n".join(path.read_text(encoding="utf-8") for path in
                       sorted(folder.iterdir(), key=lambda p: p.name) if path.name.endswith(".rst"))


def held_out_ids(tokenizer, text: str, count: int, after: int) -> torch.Tensor:
    """``count`` sequences of ``text`` after its first ``after`` sequences: the calibration
    topics' text that the calibration sequences leave, for held-out scoring and recovery."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0][after * TOKENS:]
    if len(ids) < count * TOKENS:
        raise SystemExit(f"only {len(ids)} tokens after the calibration text, fewer than "
                         f"{count} × {TOKENS}")
    return ids[: count * TOKENS].view(count, TOKENS)


def sequences(tokenizer, text: str, count: int, what: str = "the text") -> torch.Tensor:
    """``count`` consecutive sequences of ``TOKENS`` tokens from the start of ``text``;
    ``what`` names the text in the one line that says it is too short."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if len(ids) < count * TOKENS:
        raise SystemExit(f"{what} has {len(ids)} tokens, fewer than the {count} × {TOKENS} "
                         f"needed; give a longer text")
    return ids[: count * TOKENS].view(count, TOKENS)


def batches(ids: torch.Tensor, size: int, labels: bool = False) -> list[dict[str, torch.Tensor]]:
    out = []
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        out.append({"input_ids": chunk, **({"labels": chunk} if labels else {})})
    return out


@torch.no_grad()
def log_probs(model: nn.Module, ids: torch.Tensor, size: int = 4) -> list[torch.Tensor]:
    """The next-token log-probabilities at every position, a tensor per batch of ``size``."""
    return [F.log_softmax(model(input_ids=b["input_ids"]).logits.float(), -1)
            for b in batches(ids, size)]


def perplexity_and_kl(model: nn.Module, ids: torch.Tensor,
                      reference: list[torch.Tensor]) -> tuple[float, float]:
    """Perplexity of the test sequences, and the mean KL(unpruned ‖ pruned) per token."""
    nll, kl, count = 0.0, 0.0, 0
    for b, ref, mine in zip(batches(ids, 4), reference, log_probs(model, ids)):
        targets = b["input_ids"][:, 1:]
        nll += -mine[:, :-1].gather(-1, targets[..., None]).sum().item()
        kl += (ref.exp() * (ref - mine)).sum().item()
        count += targets.numel()
    return math.exp(nll / count), kl / ids.numel()


@torch.no_grad()
def greedy(model: nn.Module, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    return model.generate(prompts, max_new_tokens=new_tokens, do_sample=False,
                          attention_mask=torch.ones_like(prompts), pad_token_id=0
                          )[:, prompts.shape[1]:]


def decode_speed(unpruned: nn.Module, pruned: nn.Module, prompt: torch.Tensor,
                 new_tokens: int = 32, rounds: int = 5) -> dict[str, float]:
    """Greedy tokens per second of each model, batch 1, timed in alternating rounds."""
    times: dict[str, list[float]] = {"unpruned": [], "pruned": []}
    for _ in range(rounds + 1):  # the first round warms up and is left out
        for name, model in (("unpruned", unpruned), ("pruned", pruned)):
            start = time.perf_counter()
            greedy(model, prompt, new_tokens)
            times[name].append(time.perf_counter() - start)
    unpruned_s, pruned_s = (statistics.median(t[1:]) for t in times.values())
    return {"unpruned_tokens_per_s": new_tokens / unpruned_s,
            "pruned_tokens_per_s": new_tokens / pruned_s, "decode_speedup": unpruned_s / pruned_s}


# Questions of general knowledge, each with the words that make an answer right (any one,
# case ignored). None is about Python, so none is in the calibration, recovery or test text.
FACTS = (
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of the United Kingdom?", ("london",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("Which planet is closest to the Sun?", ("mercury",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("How many days are there in a week?", ("seven", "7")),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is the chemical formula of water?", ("h2o", "h₂o")),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "co2")),
    ("What is the freezing point of water in degrees Celsius?", ("0 degrees", "0°", "zero")),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    ("What is the opposite of hot?", ("cold",)),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the largest mammal?", ("whale",)),
    ("On which continent is Kenya?", ("africa",)),
    ("How many continents are there?", ("seven", "7")),
    ("What language is spoken in Brazil?", ("portuguese",)),
)


def answer(model: nn.Module, tokenizer, question: str, new_tokens: int = 32) -> str:
    """The model's greedy answer to ``question`` through its chat template."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                           tokenize=False, add_generation_prompt=True)
    # (an older transformers adds token_type_ids, which generate then refuses)
    ids = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip()


def facts_known(model: nn.Module, tokenizer, questions=FACTS) -> list[bool]:
    """Whether each answer holds one of its question's words."""
    return [any(word in answer(model, tokenizer, question).lower() for word in words)
            for question, words in questions]


def questions_answered(model: nn.Module, tokenizer) -> list:
    """The questions of ``FACTS`` that ``model`` answers right: a pruned model is asked these."""
    return [fact for fact, right in zip(FACTS, facts_known(model, tokenizer)) if right]
