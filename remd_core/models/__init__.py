"""Models: ResNet backbones, per-modality encoders and the multimodal regressor."""

from .encoders import EncoderConfig, build_encoder
from .regressor import MultimodalRegressor
from .resnet import ResNet2d

__all__ = ["EncoderConfig", "MultimodalRegressor", "ResNet2d", "build_encoder"]
