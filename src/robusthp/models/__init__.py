"""The paper's four models (Kamath et al., Table 1), P4CNN / Z2CNN and Ma et al.'s
PreActResNet18, pure torch.

Every model maps float pixels in [0, 1], shape (N, C, S, S), to logits
(N, num_classes); its first layer is ``Normalize``, so attacks work in pixel space.

    model = build_model("m1", in_channels=1, num_classes=10, image_size=28,
                        mean=(0.1307,), std=(0.3081,))
"""

from robusthp.models.c1 import C1
from robusthp.models.m1 import M1
from robusthp.models.normalize import Normalize
from robusthp.models.p4cnn import P4CNN, Z2CNN
from robusthp.models.p4conv import P4Conv, P4Lift
from robusthp.models.preact_resnet import PreActResNet, preact_resnet18
from robusthp.models.registry import MODELS, build_model, register_model
from robusthp.models.resnet import ResNet, resnet18
from robusthp.models.stdcnn import StdCNN

__all__ = [
    "C1",
    "M1",
    "MODELS",
    "Normalize",
    "P4CNN",
    "P4Conv",
    "P4Lift",
    "PreActResNet",
    "ResNet",
    "StdCNN",
    "Z2CNN",
    "build_model",
    "preact_resnet18",
    "register_model",
    "resnet18",
]
