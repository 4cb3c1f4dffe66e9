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


ULTRALYTICS_MODELS = [
    "yolov8n.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-obb.yaml",
    "yolov8n-cls.yaml", "yolo11n.yaml", "yolo11n-seg.yaml", "yolo11n-pose.yaml",
    "yolo11n-obb.yaml", "yolo11n-cls.yaml", "yolov10n.yaml", "yolov5nu.yaml", "yolo12n.yaml",
    "rtdetr-l.yaml",
]


def ultralytics_model(name: str) -> nn.Module:
    """The ``nn.Module`` of an Ultralytics model built from its YAML (random weights)."""
    from ultralytics import RTDETR, YOLO

    if "rtdetr" in name:
        return RTDETR(name).model
    return YOLO(name, verbose=False).model


def _ultralytics() -> list[ModelCase]:
    def build(name: str):
        def make():
            size = 224 if "-cls" in name else 320
            return ultralytics_model(name), torch.randn(1, 3, size, size)
        return make

    return [ModelCase("ultralytics", n.removesuffix(".yaml"), build(n))
            for n in ULTRALYTICS_MODELS]


class TextTower(nn.Module):
    """A CLIP model's text encoder as a module of its own (``encode_text`` is a method)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.clip.visual = None  # the other tower: not part of this model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


def _open_clip() -> list[ModelCase]:
    def build(name: str, tower: str):
        def make():
            import open_clip

            model = open_clip.create_model(name, pretrained=None)
            if tower == "image":
                size = model.visual.image_size
                size = size[0] if isinstance(size, (tuple, list)) else size
                return model.visual, torch.randn(1, 3, size, size)
            return TextTower(model), open_clip.get_tokenizer(name)(["a photo of a cat"])
        return make

    return [ModelCase("open_clip", f"{name}-{tower}", build(name, tower))
            for name in ("ViT-B-32", "RN50") for tower in ("image", "text")]


class MaskDecoder(nn.Module):
    """SAM's mask decoder with the prompt encoder's dense positional encoding it reads."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.decoder, self.prompt_encoder = sam.mask_decoder, sam.prompt_encoder

    def forward(self, image_embeddings, sparse, dense):
        return self.decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense,
                            multimask_output=True)


def _segment_anything() -> list[ModelCase]:
    def encoder():
        from segment_anything.modeling import ImageEncoderViT

        # ViT-B's image encoder at 512 px rather than 1024: four times fewer tokens
        model = ImageEncoderViT(img_size=512, embed_dim=768, depth=12, num_heads=12,
                                use_rel_pos=True, global_attn_indexes=(2, 5, 8, 11),
                                window_size=14, out_chans=256)
        return model, torch.randn(1, 3, 512, 512)

    def prompt_encoder():
        from segment_anything import sam_model_registry

        model = sam_model_registry["vit_b"]().prompt_encoder
        points = (torch.rand(1, 2, 2) * 1024, torch.ones(1, 2, dtype=torch.long))
        return model, (points, torch.rand(1, 1, 4) * 1024, torch.randn(1, 1, 256, 256))

    def mask_decoder():
        from segment_anything import sam_model_registry

        model = MaskDecoder(sam_model_registry["vit_b"]())
        return model, (torch.randn(1, 256, 64, 64), torch.randn(1, 3, 256),
                       torch.randn(1, 256, 64, 64))

    return [ModelCase("segment-anything", "image_encoder_vit_b", encoder),
            ModelCase("segment-anything", "prompt_encoder", prompt_encoder),
            ModelCase("segment-anything", "mask_decoder", mask_decoder)]


def _diffusers() -> list[ModelCase]:
    def unet():
        from diffusers import UNet2DModel

        model = UNet2DModel(sample_size=32, block_out_channels=(32, 64), norm_num_groups=8,
                            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        return model, {"sample": torch.randn(1, 3, 32, 32), "timestep": torch.tensor([10])}

    def conditional_unet():
        from diffusers import UNet2DConditionModel

        model = UNet2DConditionModel(
            sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            norm_num_groups=8, attention_head_dim=8)
        return model, {"sample": torch.randn(1, 4, 16, 16), "timestep": torch.tensor([10]),
                       "encoder_hidden_states": torch.randn(1, 7, 32)}

    def dit():
        from diffusers import DiTTransformer2DModel

        model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16,
                                      in_channels=4, num_layers=2, sample_size=8, patch_size=2,
                                      num_embeds_ada_norm=10)
        return model, {"hidden_states": torch.randn(1, 4, 8, 8),
                       "timestep": torch.tensor([3]), "class_labels": torch.tensor([1])}

    def vae():
        from diffusers import AutoencoderKL

        model = AutoencoderKL(block_out_channels=(32, 64), norm_num_groups=8, latent_channels=4,
                              down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2)
        return model, {"sample": torch.randn(1, 3, 32, 32), "sample_posterior": False}

    return [ModelCase("diffusers", name, make) for name, make in (
        ("UNet2DModel", unet), ("UNet2DConditionModel", conditional_unet),
        ("DiTTransformer2DModel", dit), ("AutoencoderKL", vae))]


class Tagger(nn.Module):
    """Embedding, a stacked bidirectional recurrent layer, and a per-token head."""

    def __init__(self, cell: type[nn.RNNBase], **options):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.rnn = cell(32, 48, num_layers=2, bidirectional=True, batch_first=True, **options)
        width = options.get("proj_size") or 48  # what each direction returns
        self.head = nn.Linear(2 * width, 7)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


def _recurrent() -> list[ModelCase]:
    def build(cell, **options):
        def make():
            return Tagger(cell, **options), torch.randint(0, 50, (2, 9))
        return make

    return [ModelCase("recurrent", "lstm_tagger", build(nn.LSTM)),
            ModelCase("recurrent", "lstm_projected_tagger", build(nn.LSTM, proj_size=24)),
            ModelCase("recurrent", "gru_tagger", build(nn.GRU))]


# Models the tests run: one or two per family, chosen to cover its distinct designs while
# keeping CI short (for torchvision's classifiers, the smallest of each design; the larger
# variants repeat their blocks and only cost time and memory). The benchmark runs every model
# of every family (``python benchmarks/coverage.py`` -> ``benchmarks/results/coverage.md``).
CI_SUBSET = {
    "torchvision-classification": [
        "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
        "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
        "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
        "resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_0",
        "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11_bn", "vit_b_32", "wide_resnet50_2"],
    "torchvision-segmentation": ["lraspp_mobilenet_v3_large", "fcn_resnet50"],
    "torchvision-detection": ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large",
                              "retinanet_resnet50_fpn"],
    "torchvision-video": ["r2plus1d_18", "swin3d_t"],
    "torchvision-optical-flow": ["raft_small"],
    "timm": ["resnet50d", "efficientnet_b0", "ghostnet_100", "convnext_atto", "repvgg_a0",
             "dla34", "dpn48b", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
             "xcit_nano_12_p16_224", "levit_128s", "mixer_s16_224", "poolformer_s12",
             "efficientformer_l1", "mobilevit_xxs", "coatnet_nano_rw_224", "fastvit_t8"],
    "ultralytics": ["yolov8n", "yolov8n-seg", "yolov8n-pose", "yolov8n-obb", "yolov8n-cls",
                    "yolo11n", "yolov10n", "rtdetr-l"],
    "open_clip": ["ViT-B-32-image", "ViT-B-32-text", "RN50-image", "RN50-text"],
    "segment-anything": ["image_encoder_vit_b", "prompt_encoder", "mask_decoder"],
    "diffusers": ["UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel",
                  "AutoencoderKL"],
    "recurrent": ["lstm_tagger", "lstm_projected_tagger", "gru_tagger"],
}

# Models that cannot be supported ({case id: reason}); their tests are expected failures.
UNSUPPORTED: dict[str, str] = {
    "segment-anything:prompt_encoder": (
        "nothing to prune exactly: its only hidden channels (the mask downscaler's 4 and 16) "
        "are normalised across channels by LayerNorm2d, and every other dim is its 256-wide "
        "output"),
}


# Models whose pruned form is not exported to ONNX in the coverage tests ({case id: why});
# each fails the same way unpruned, so none is about pruning.
_PICKS_BY_SCORE = ("torch.export cannot trace its data-dependent post-processing, and the "
                   "TorchScript exporter's file picks other boxes: boxes are chosen by score "
                   "(top-k, NMS) and with random weights near-tied scores resolve differently "
                   "in ONNX Runtime")
EXPORT_UNSUPPORTED: dict[str, str] = {
    "torchvision-detection:fasterrcnn_mobilenet_v3_large_320_fpn": _PICKS_BY_SCORE,
    "torchvision-detection:retinanet_resnet50_fpn": _PICKS_BY_SCORE,
    "torchvision-detection:ssdlite320_mobilenet_v3_large": _PICKS_BY_SCORE,
    "ultralytics:rtdetr-l": ("chooses its queries by top-k over random-weight scores: both "
                             "exporters' files run, and pick other queries in ONNX Runtime"),
    "recurrent:lstm_projected_tagger": ("ONNX's LSTM has no projection (proj_size): the "
                                        "dynamo file does not load, TorchScript refuses it"),
    "segment-anything:prompt_encoder": "not pruned (UNSUPPORTED), so not exported",
}


def ci_cases() -> list[ModelCase]:
    return [c for c in all_cases() if c.name in CI_SUBSET.get(c.family, ())]


def all_cases() -> list[ModelCase]:
    return (_torchvision_classification()
            + _torchvision("torchvision-segmentation", "segmentation",
                           lambda n: torch.randn(1, 3, 64, 64), _segmentation_kwargs)
            + _torchvision("torchvision-detection", "detection", _detection_inputs, _detection_kwargs)
            + _torchvision("torchvision-video", "video", _video_inputs, lambda n: {})
            + _torchvision("torchvision-optical-flow", "optical_flow", _flow_inputs, lambda n: {})
            + _timm() + _ultralytics() + _open_clip() + _segment_anything() + _diffusers()
            + _recurrent())


def cases(family: str | None = None) -> list[ModelCase]:
    return [c for c in all_cases() if family is None or c.family == family]
