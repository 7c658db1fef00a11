"""Stage-2 latent-space alignment: train the aligner on captioned images with the backbone frozen.

Legend: b batch, n tokens, i backbone width, v views per image.

1. Encode every image (original + `views - 1` augmented views) and every distinct caption once with the frozen
   backbone; keep the token states on the CPU in float16.
2. For each epoch, shuffle the captions (seeded); each caption meets one random view of its image.
3. Optimise the multi-positive contrastive loss with AdamW and a cosine schedule.
4. After every epoch write the checkpoint and the training state (safetensors + JSON), so `resume` continues
   from the last finished epoch and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .augment import random_view
from .checkpoint import load_weights, read_checkpoint_config, save_checkpoint
from .data import Pairs
from .losses import ContrastiveLoss
from .retrieval import BlendConfig, RetrievalModel, calibrate_gate, select_prototypes


@dataclass
class AlignConfig:
    epochs: int = 40  # each epoch draws one of the cached views per caption anew
    batch_size: int = 64
    lr: float = 3e-4  # 1e-3 overfits the captions (emoji held-out style R@1 0.13 vs 0.18 at 3e-4, bench/RESULTS.md)
    weight_decay: float = 0.05
    views: int = 4  # cached views per image: the original and views-1 augmented ones
    seed: int = 0
    t2t_weight: float = 0.05
    encode_batch_size: int = 32


@dataclass
class Cached:
    states: list[torch.Tensor]  # per item: n i float16

    def batch(self, idx: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.states[i] for i in idx]
        n = max(s.shape[0] for s in seqs)
        x = torch.zeros(len(seqs), n, seqs[0].shape[1])  # b n i
        mask = torch.zeros(len(seqs), n, dtype=torch.bool)
        for j, s in enumerate(seqs):
            x[j, : len(s)] = s.float()
            mask[j, : len(s)] = True
        return x.to(device), mask.to(device)


def _cache(encode, load, n: int, batch_size: int, desc: str, progress: bool) -> Cached:
    """Encode items 0..n-1 (`load(i)` gives item i) in batches; only one batch is decoded at a time."""
    states = []
    for i in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, unit="batch"):
        f = encode([load(j) for j in range(i, min(i + batch_size, n))])
        for s, m in zip(f.states.cpu(), f.mask.cpu()):
            states.append(s[m].half())
    return Cached(states)


def encode_pairs(model: RetrievalModel, pairs: Pairs, cfg: AlignConfig, progress: bool = True):
    """Frozen-backbone features: image views (v x images) and distinct captions."""

    def view(v: int):
        if v == 0:
            return pairs.load_image
        # one seeded stream per (image, view): the same views whatever the batching
        return lambda i: random_view(pairs.load_image(i), random.Random(f"{cfg.seed}/{v}/{i}"))

    n, bs = len(pairs.images), cfg.encode_batch_size
    views = [_cache(model.backbone.encode_images, view(v), n, bs, f"images view {v + 1}/{cfg.views}", progress)
             for v in range(cfg.views)]
    texts = sorted(set(pairs.captions))
    cached_texts = _cache(model.backbone.encode_texts, texts.__getitem__, len(texts), bs, "captions", progress)
    return views, texts, cached_texts


def align(
    model: RetrievalModel,
    pairs: Pairs,
    out: str | Path,
    cfg: AlignConfig,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> RetrievalModel:
    out = Path(out)
    device = model.device
    aligner = model.aligner.to(device)
    params = aligner.retrieval_parameters()
    # no weight decay on vectors and scalars (norms, biases, gates, logit scale, queries), as the official trainer
    decay = [p for n, p in aligner.named_parameters() if p.ndim >= 2 and "queries" not in n and n != "bilm.query_tokens"]
    no_decay = [p for p in params if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = max(1, -(-len(pairs.captions) // cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(  # 10% warm-up (at least 2 steps), then cosine decay
        opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=max(0.1, 2.5 / total_steps), anneal_strategy="cos"
    )
    identity = _run_identity(model, pairs, cfg)
    start_epoch = 0
    if resume and (out / "train_state.json").is_file():
        start_epoch = _load_state(out, model, opt, sched, identity)
    if start_epoch >= cfg.epochs:
        return model  # the run had already finished

    views, texts, cached_texts = encode_pairs(model, pairs, cfg, progress)
    _fit_gate(model, views[0], cached_texts, cfg.seed)  # depends on the data only: once, saved with every epoch
    text_index = {t: i for i, t in enumerate(texts)}
    cap_ids = torch.tensor([text_index[c] for c in pairs.captions])
    id_of = {x: i for i, x in enumerate(dict.fromkeys(pairs.image_ids))}
    img_ids = torch.tensor([id_of[pairs.image_ids[j]] for j in pairs.caption_image])
    loss_fn = ContrastiveLoss(cfg.t2t_weight)

    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # per-epoch streams (dropout, order): resuming replays exactly
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(pairs.captions), generator=g)
        view_of = torch.randint(0, cfg.views, (len(pairs.captions),), generator=g)
        aligner.train()
        total, count = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            images = [pairs.caption_image[i] for i in idx.tolist()]
            x_img, m_img = _views_batch(views, images, view_of[idx].tolist(), device)
            x_txt, m_txt = cached_texts.batch(cap_ids[idx].tolist(), device)
            e_img = aligner.encode_image(x_img, m_img)["embeds"]  # b e
            e_txt = aligner.encode_text(x_txt, m_txt)["embeds"]  # b e
            loss = loss_fn(e_img, e_txt, img_ids[idx].to(device), aligner.logit_scale, cap_ids[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                aligner.logit_scale.clamp_(0, 4.6052)  # temperature >= 0.01 (the official scale is unclamped)
            total, count = total + loss.item(), count + 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        mean_loss = total / max(count, 1)
        aligner.eval()
        save_checkpoint(model, out, {"training": {**asdict(cfg), "epochs_done": epoch + 1, "loss": mean_loss,
                                                 "pairs": len(pairs.captions), "images": len(pairs.images)}})
        _save_state(out, opt, sched, epoch + 1, identity)
        if on_epoch:
            on_epoch(epoch + 1, mean_loss)
    return model


def _fit_gate(model: RetrievalModel, images: Cached, texts: Cached, seed: int) -> None:
    """Keep the training items' pooled states as prototypes and calibrate the image gate on them."""
    image_pooled = torch.stack([s.float().mean(0) for s in images.states])  # images i
    text_pooled = torch.stack([s.float().mean(0) for s in texts.states])  # captions i
    low, high = calibrate_gate(image_pooled)
    model.blend = BlendConfig(trained=True, image_low=low, image_high=high)
    model.prototypes = {"image": select_prototypes(image_pooled, seed=seed),
                        "text": select_prototypes(text_pooled, seed=seed)}


def _views_batch(views: list[Cached], images: list[int], view_ids: list[int], device):
    seqs = Cached([views[v].states[i] for i, v in zip(images, view_ids)])
    return seqs.batch(list(range(len(images))), device)


def _run_identity(model: RetrievalModel, pairs: Pairs, cfg: AlignConfig) -> dict:
    """What must be the same for a run to be resumed: settings, model, backbone and data."""
    data = hashlib.sha256(json.dumps([pairs.captions, pairs.caption_image, pairs.image_ids]).encode()).hexdigest()
    return {"config": asdict(cfg), "aligner": model.aligner.cfg.to_dict(), "backbone": model.backbone.identity,
            "data": {"pairs": len(pairs.captions), "images": len(pairs.images), "sha256": data}}


def _save_state(out: Path, opt, sched, epochs_done: int, identity: dict) -> None:
    """Optimizer and scheduler after `epochs_done` epochs; written after the checkpoint, each file atomically."""
    tensors = {}
    for k, state in opt.state_dict()["state"].items():
        for name, v in state.items():
            tensors[f"opt.{k}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tmp = out / "train_state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / "train_state.safetensors")
    meta = {"epochs_done": epochs_done, **identity, "scheduler": sched.state_dict(),
            "param_groups": opt.state_dict()["param_groups"]}
    (out / "train_state.json.tmp").write_text(json.dumps(meta, default=str) + "\n")
    os.replace(out / "train_state.json.tmp", out / "train_state.json")


def _load_state(out: Path, model: RetrievalModel, opt, sched, identity: dict) -> int:
    meta = json.loads((out / "train_state.json").read_text())
    for key, what in (("config", "settings"), ("aligner", "aligner config"), ("backbone", "backbone"), ("data", "pairs")):
        if meta.get(key) != identity[key]:
            was, now = meta.get(key) or {}, identity[key]
            diff = {k: (was.get(k), v) for k, v in now.items() if was.get(k) != v}
            raise ValueError(f"cannot resume {out}: the {what} differ from the interrupted run {diff} (was, now); "
                             "rerun with the original flags and data, or choose a new --out")
    config = read_checkpoint_config(out)
    if config.get("training", {}).get("epochs_done") != meta["epochs_done"]:
        raise ValueError(f"cannot resume {out}: its checkpoint and training state disagree (a crash while saving); "
                         "start again without --resume in a new --out")
    load_weights(model, out, config)
    state: dict = {}
    for key, v in load_file(str(out / "train_state.safetensors")).items():
        _, k, name = key.split(".", 2)
        state.setdefault(int(k), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    return meta["epochs_done"]
