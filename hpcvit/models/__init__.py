"""Model zoo: every model is one name in a job spec (see :mod:`hpcvit.models._registry`)."""

from hpcvit.models._registry import (
    build_hit_model,
    build_model,
    check_inputs,
    check_model_kwargs,
    check_model_name,
    list_models,
    model_entry,
    register_model,
)

__all__ = ["build_hit_model", "build_model", "check_inputs", "check_model_kwargs", "check_model_name", "list_models",
           "model_entry", "register_model"]

# Written here.
register_model("cnn_small", "hpcvit.models.cnn:build_cnn_small", "cnn",
               "4-layer CNN with global pooling; fast CPU baseline")
register_model("vit_seed", "hpcvit.models.vit_seed:build_vit_seed", "vit",
               "plain ViT of the seed notebooks: patch embed, cls token, pre-norm blocks")

# From timm, configured for small non-RGB images.
_TIMM = {
    "vit_tiny": ("vit", "timm ViT-Tiny (vit_tiny_patch16_224), patch 4 on 32 px, 16 on 125 px"),
    "vit_small": ("vit", "timm ViT-Small (vit_small_patch16_224)"),
    "swin_tiny": ("windowed", "timm Swin-T (swin_tiny_patch4_window7_224)"),
    "coatnet_0": ("hybrid", "timm CoAtNet-0 (coatnet_0_rw_224), input padded to a multiple of 32"),
    "maxvit_tiny": ("hybrid", "timm MaxViT-T (maxvit_tiny_rw_224), input padded to a multiple of 32"),
    "davit_tiny": ("windowed", "timm DaViT-T (davit_tiny)"),
    "efficientnet_b0": ("cnn", "timm EfficientNet-B0"),
    "efficientnet_b1": ("cnn", "timm EfficientNet-B1"),
    "efficientnet_b2": ("cnn", "timm EfficientNet-B2"),
    "efficientnet_b3": ("cnn", "timm EfficientNet-B3"),
    "resnet18": ("cnn", "timm ResNet-18"),
}
for _name, (_family, _desc) in _TIMM.items():
    register_model(_name, f"hpcvit.models.timm_zoo:build_{_name}", _family, _desc)

# Seed architectures of the ML4SCI studies.
register_model("deepvit", "hpcvit.models.deepvit:build_deepvit", "vit",
               "DeepViT (re-attention: heads' attention maps mixed after softmax), mass-regression seed")
register_model("resnet15", "hpcvit.models.resnet15:build_resnet15", "cnn",
               "CMS end-to-end ResNet-15: 7x7 stem, 7 residual blocks 16->32 channels, global max pool")
register_model("effswin", "hpcvit.models.effswin:build_effswin", "hybrid",
               "GSoC hybrid EffSwin: EfficientNet-B3 stages -> Swin-T stages 3-4; padded to a multiple of 32")

# Hit clustering (seed 003): per-event hit lists in, each hit's particle out.
register_model("clusters_finder", "hpcvit.hits.models:build_clusters_finder", "hits",
               "seed 003's ClustersFinder: embedders + nn.Transformer, a softmax over nclusters_max clusters per hit",
               inputs="hits")
register_model("hit_set_transformer", "hpcvit.hits.models:build_hit_set_transformer", "hits",
               "hit encoder + learnt cluster queries (DETR/MaskFormer), Hungarian-matched to the particles",
               inputs="hits")
register_model("hit_graph_transformer", "hpcvit.hits.models:build_hit_graph_transformer", "hits",
               "attention over each hit's nearest neighbours and the event; same-particle edges, average linkage",
               inputs="hits")
register_model("hit_condensation_transformer", "hpcvit.hits.models:build_hit_condensation_transformer", "hits",
               "the hit graph transformer with object condensation: clusters condensed around the strongest hits",
               inputs="hits")
