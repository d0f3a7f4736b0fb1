"""Models: ResNet backbones, per-modality encoders, the multimodal regressor and the model contract
the training strategies rely on (``contract.MultimodalModel``)."""

from .contract import MultimodalModel, check_model
from .encoders import EncoderConfig, build_encoder
from .regressor import MultimodalRegressor
from .resnet import ResNet2d

__all__ = ["EncoderConfig", "MultimodalModel", "MultimodalRegressor", "ResNet2d", "build_encoder", "check_model"]
