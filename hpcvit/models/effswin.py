"""Hybrid EffSwin of the GSoC 2022 ViT study (seed 001): EfficientNet-B3 stages feeding Swin-T's last two stages.

Layout (timm 1.0 names)::

    pad to a multiple of 32
    EfficientNet-B3 conv_stem, bn1, blocks[0:3]      stride 8, 48 channels  (the CNN "first two stages")
    projection: 1x1 conv 48 -> 192, BatchNorm, SiLU  (the study's ``embed_matcher``)
    Swin-T layers[2]: patch merging 192 -> 384, 6 blocks   stride 16
    Swin-T layers[3]: patch merging 384 -> 768, 2 blocks   stride 32
    LayerNorm, average pool, linear head

The study trained a Swin-T first (its stage 1), then replaced the patch embedding and first two Swin stages by the
EfficientNet features and trained on (stage 2). :func:`load_swin_stages` does the weight transfer of that recipe.

Differences from the study's code, which was written against timm 0.5 (patch merging at the *end* of a stage):
there the EfficientNet stem had stride 4 so its stride-8 block ran at stride 16 and the projection went straight
to 384 channels, bypassing stage 3's patch merging. timm 1.0 puts the merging at the *start* of a stage, so here the
EfficientNet runs at its native stride, the projection goes to stage 3's input width (192) and both Swin stages are
used whole; the Swin geometry (14x14 then 7x7 tokens at 224 px) is the same. :func:`load_swin_stages` accepts
checkpoints in either layout.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

_SWIN_ARCH = "swin_tiny_patch4_window7_224"
_ANCHOR = "layers.2.blocks.0.attn.qkv.weight"


def _default_window(stage3_grid: int) -> int:
    """Largest window <= 7 that tiles stage 3's token grid (7 at 224 px as in Swin-T, 4 at 128, 2 at 32)."""
    return max(d for d in range(1, 8) if stage3_grid % d == 0)


class EffSwin(nn.Module):
    def __init__(self, in_chans: int, img_size: int, num_outputs: int = 1, window_size: int | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.1):
        super().__init__()
        padded = img_size + (-img_size) % 32
        self.pad = padded - img_size
        self.window_size = window_size or _default_window(padded // 16)

        eff = timm.create_model("efficientnet_b3", pretrained=False, in_chans=in_chans, num_classes=0)
        cnn_chs = eff.feature_info[2]["num_chs"]  # output of blocks[2], stride 8
        self.cnn = nn.Sequential(eff.conv_stem, eff.bn1, *eff.blocks[:3])

        swin = timm.create_model(_SWIN_ARCH, pretrained=False, img_size=padded, window_size=self.window_size,
                                 num_classes=num_outputs, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        swin_in = swin.layers[2].dim  # 192: stage 3 starts with the patch merging 192 -> 384
        self.proj = nn.Sequential(nn.Conv2d(cnn_chs, swin_in, 1, bias=False), nn.BatchNorm2d(swin_in),
                                  nn.SiLU(inplace=True))
        self.stage3 = swin.layers[2]
        self.stage4 = swin.layers[3]
        self.norm = swin.norm
        self.head = swin.head  # timm ClassifierHead: average pool over NHWC tokens, dropout, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = nn.functional.pad(x, (0, self.pad, 0, self.pad))
        x = self.proj(self.cnn(x)).permute(0, 2, 3, 1)  # NCHW -> NHWC, as timm's Swin stages take
        x = self.stage4(self.stage3(x))
        return self.head(self.norm(x))


def build_effswin(in_chans: int, img_size: int, num_outputs: int = 1, window_size: int | None = None,
                  drop_rate: float = 0.0, drop_path_rate: float = 0.1, swin_checkpoint: str | None = None) -> nn.Module:
    """Hybrid EffSwin; ``swin_checkpoint``: a trained Swin-T whose stage 3/4 weights to start from (the study's
    stage 1), loaded with :func:`load_swin_stages`. The window defaults to the largest size <= 7 that tiles the
    stage-3 grid; a Swin-T trained with another window still loads (its position-bias tables are resized)."""
    model = EffSwin(in_chans, img_size, num_outputs, window_size, drop_rate, drop_path_rate)
    if swin_checkpoint:
        load_swin_stages(model, swin_checkpoint)
    return model


def _find_effswin(model: nn.Module) -> EffSwin:
    for module in model.modules():  # also finds it inside DDP, torch.compile or wrapper modules
        if isinstance(module, EffSwin):
            return module
    raise TypeError(f"{type(model).__name__} holds no EffSwin")


def _swin_state_dict(source: nn.Module | Mapping[str, Any] | str | os.PathLike) -> tuple[Mapping[str, Any], str]:
    """The Swin state dict inside ``source`` and the prefix its keys carry (``inner.``, ``module.``, ...)."""
    if isinstance(source, nn.Module):
        state: Any = source.state_dict()
    elif isinstance(source, Mapping):
        state = source
    else:
        from hpcvit.checkpoint import load_weights

        state = load_weights(Path(os.fspath(source)))
    # Checkpoints often nest the weights: {"model": ...}, {"state_dict": ...}, {"model_state_dict": ...}.
    candidates = [state] + [v for v in state.values() if isinstance(v, Mapping)] if isinstance(state, Mapping) else []
    for candidate in candidates:
        prefixes = {k[: -len(_ANCHOR)] for k in candidate if isinstance(k, str) and k.endswith(_ANCHOR)}
        if len(prefixes) == 1:
            return candidate, prefixes.pop()
        if len(prefixes) > 1:
            raise ValueError(f"source holds several Swin models (key prefixes {sorted(prefixes)})")
    raise ValueError(f"source holds no Swin-T weights (no key ending in {_ANCHOR!r})")


def load_swin_stages(model: nn.Module, swin_state_dict_or_path: nn.Module | Mapping[str, Any] | str | os.PathLike,
                     include_norm: bool = True, include_head: bool = False) -> list[str]:
    """Copy a trained Swin-T's stage 3 and 4 weights (and its final LayerNorm) into an EffSwin ``model``.

    ``swin_state_dict_or_path``: a Swin-T module (e.g. hpcvit's ``swin_tiny``, or one in DDP), its state dict, or
    a file saved with ``torch.save`` (the state dict may sit under ``model``/``state_dict``/...). Both timm layouts
    are read: timm >= 0.9 (patch merging at the start of a stage) and the timm 0.5/0.6 checkpoints of the GSoC study
    (merging at the end). Relative-position bias tables trained with another window size are resized (timm's
    ``resize_rel_pos_bias_table``); any other shape mismatch, or a stage-3/4 weight missing from the source, raises
    ``ValueError``. ``include_head`` also copies the classifier when its shape matches. Returns the names of the
    tensors written in ``model``'s EffSwin.
    """
    from timm.layers import resize_rel_pos_bias_table

    effswin = _find_effswin(model)
    source, prefix = _swin_state_dict(swin_state_dict_or_path)
    old_layout = f"{prefix}layers.0.downsample.reduction.weight" in source

    renames = {"layers.2.": "stage3.", "layers.3.": "stage4."}
    if include_norm:
        renames["norm."] = "norm."
    if include_head:
        renames["head.fc."] = "head.fc."

    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if not isinstance(key, str) or not key.startswith(prefix) or not torch.is_tensor(value):
            continue
        rest = key[len(prefix):]
        if "relative_position_index" in rest or "attn_mask" in rest:
            continue  # buffers rebuilt from the window size
        if old_layout:
            if rest.startswith("layers.") and ".downsample." in rest:
                stage, tail = rest[len("layers."):].split(".", 1)
                rest = f"layers.{int(stage) + 1}.{tail}"
            elif rest.startswith("head.") and not rest.startswith("head.fc."):
                rest = "head.fc." + rest[len("head."):]
        for src, dst in renames.items():
            if rest.startswith(src):
                mapped[dst + rest[len(src):]] = value
                break

    target = effswin.state_dict()
    wanted = [k for k in target if k.startswith(("stage3.", "stage4.")) or (include_norm and k.startswith("norm."))]
    missing = [k for k in wanted if k not in mapped]
    if missing:
        raise ValueError(f"Swin source lacks {len(missing)} stage-3/4 tensors, e.g. {missing[:3]}")

    plan: list[tuple[str, torch.Tensor]] = []
    mismatched: list[str] = []
    for name, value in mapped.items():
        if name not in target:
            continue
        dest = target[name]
        if value.shape != dest.shape and name.endswith("relative_position_bias_table"):
            attn = effswin.get_submodule(name[: -len(".relative_position_bias_table")])
            with warnings.catch_warnings():  # timm's interpolation trips torch indexing/searchsorted notices
                warnings.simplefilter("ignore", UserWarning)
                value = resize_rel_pos_bias_table(value.float(), new_window_size=attn.window_size,
                                                  new_bias_shape=tuple(dest.shape))
        if value.shape != dest.shape:
            if not name.startswith("head."):  # a head for another number of outputs is skipped silently
                mismatched.append(f"{name}: {tuple(value.shape)} vs {tuple(dest.shape)}")
            continue
        plan.append((name, value))
    if mismatched:  # checked before writing anything, so a failed load leaves the model as it was
        raise ValueError(f"Swin source shapes differ from Swin-T's: {'; '.join(mismatched[:5])}")
    with torch.no_grad():
        for name, value in plan:
            target[name].copy_(value.to(target[name].dtype))
    return [name for name, _ in plan]
