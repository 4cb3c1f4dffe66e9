"""The model lists the coverage benchmark and the coverage tests share.

Every entry is built with random weights (nothing is downloaded) and its smallest practical
example input. Adding a name to a list tests it everywhere; nothing else is per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCase:
    family: str  # torchvision-classification, torchvision-segmentation, …, timm
    name: str
    build: Callable[[], tuple[nn.Module, Any]]

    @property
    def id(self) -> str:
        return f"{self.family}:{self.name}"


def _torchvision_classification() -> list[ModelCase]:
    from torchvision import models

    def build(name: str):
        def make():
            size = 224 if name.startswith(("vit_", "maxvit")) else 96 if name == "inception_v3" else 64
            kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
            model = models.get_model(name, weights=None, **kwargs)
            return model, torch.randn(1, 3, size, size)
        return make

    return [ModelCase("torchvision-classification", n, build(n))
            for n in models.list_models(module=models)]


def _torchvision(family: str, module_name: str, make_inputs: Callable[[str], Any],
                 extra: Callable[[str], dict]) -> list[ModelCase]:
    import importlib

    from torchvision import models

    module = importlib.import_module(f"torchvision.models.{module_name}")

    def build(name: str):
        def make():
            model = models.get_model(name, weights=None, **extra(name))
            return model, make_inputs(name)
        return make

    return [ModelCase(family, n, build(n)) for n in models.list_models(module=module)]


def _segmentation_kwargs(name: str) -> dict:
    return {"weights_backbone": None, "aux_loss": None if "lraspp" in name else True}


def _detection_kwargs(name: str) -> dict:
    kwargs: dict = {"weights_backbone": None}
    if not name.startswith("ssd"):
        kwargs.update(min_size=160, max_size=160)
    # Random weights score every box below the default threshold, which would leave nothing
    # to compare; keep the ten best boxes whatever their score.
    if "rcnn" in name:
        kwargs.update(box_score_thresh=0.0, box_detections_per_img=10)
    else:
        kwargs.update(score_thresh=0.0, detections_per_img=10)
    return kwargs


def _detection_inputs(name: str):
    size = 320 if "320" in name else 300 if name.startswith("ssd") else 160
    return ([torch.rand(3, size, size)],)


def _video_inputs(name: str):
    if name.startswith("mvit"):
        return torch.randn(1, 3, 16, 224, 224)
    if name.startswith("swin3d"):
        return torch.randn(1, 3, 4, 64, 64)
    if name == "s3d":  # its final 2x7x7 average pool needs 16 frames of 224 px
        return torch.randn(1, 3, 16, 224, 224)
    return torch.randn(1, 3, 4, 56, 56)


def _flow_inputs(name: str):
    # RAFT's correlation pyramid needs 128 px; 3 refinement steps keep it quick
    return (torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128), 3)


TIMM_MODELS = [
    "resnet18", "resnet50d", "resnext26ts", "seresnext26d_32x4d", "efficientnet_b0",
    "mobilenetv3_small_100", "ghostnet_100", "regnetx_002", "regnety_002", "convnext_atto",
    "repvgg_a0", "dla34", "hrnet_w18_small", "res2net50_14w_8s", "cspresnet50", "cspdarknet53",
    "densenet121", "dpn48b", "inception_v4", "nf_resnet26", "dm_nfnet_f0", "rexnet_100",
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
    "cait_xxs24_224", "xcit_nano_12_p16_224", "beit_base_patch16_224", "levit_128s",
    "mixer_s16_224", "resmlp_12_224", "poolformer_s12", "edgenext_xx_small",
    "efficientformer_l1", "mobilevit_xxs", "coatnet_nano_rw_224", "maxvit_nano_rw_256",
    "mobilenetv2_100", "mnasnet_100", "tinynet_e", "lcnet_050", "hardcorenas_a", "vgg11",
    "selecsls42b", "tresnet_m", "fastvit_t8", "efficientvit_b0", "mobileone_s0",
    "resnetv2_50", "inception_v3", "xception41", "gernet_s", "mobilevitv2_050",
]


def _timm() -> list[ModelCase]:
    def build(name: str):
        def make():
            import timm

            model = timm.create_model(name, pretrained=False)
            size = model.pretrained_cfg.get("input_size", (3, 224, 224))
            return model, torch.randn(1, *size)
        return make

    return [ModelCase("timm", n, build(n)) for n in TIMM_MODELS]


# Models the tests run besides every torchvision classification model: one or two per family,
# chosen to cover its distinct designs while keeping CI short. The benchmark runs everything.
CI_SUBSET = {
    "torchvision-segmentation": ["lraspp_mobilenet_v3_large", "fcn_resnet50"],
    "torchvision-detection": ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large",
                              "retinanet_resnet50_fpn"],
    "torchvision-video": ["r2plus1d_18", "swin3d_t"],
    "torchvision-optical-flow": ["raft_small"],
    "timm": ["resnet50d", "efficientnet_b0", "ghostnet_100", "convnext_atto", "repvgg_a0",
             "dla34", "dpn48b", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
             "xcit_nano_12_p16_224", "levit_128s", "mixer_s16_224", "poolformer_s12",
             "efficientformer_l1", "mobilevit_xxs", "coatnet_nano_rw_224", "fastvit_t8"],
}

# Models that cannot be supported ({case id: reason}); their tests are expected failures.
UNSUPPORTED: dict[str, str] = {}


def ci_cases() -> list[ModelCase]:
    return [c for c in all_cases() if c.family == "torchvision-classification"
            or c.name in CI_SUBSET.get(c.family, ())]


def all_cases() -> list[ModelCase]:
    return (_torchvision_classification()
            + _torchvision("torchvision-segmentation", "segmentation",
                           lambda n: torch.randn(1, 3, 64, 64), _segmentation_kwargs)
            + _torchvision("torchvision-detection", "detection", _detection_inputs, _detection_kwargs)
            + _torchvision("torchvision-video", "video", _video_inputs, lambda n: {})
            + _torchvision("torchvision-optical-flow", "optical_flow", _flow_inputs, lambda n: {})
            + _timm())


def cases(family: str | None = None) -> list[ModelCase]:
    return [c for c in all_cases() if family is None or c.family == family]
