"""The instseg network (Fathi et al. 2017): a small fully convolutional encoder-decoder.

Input: the normalised image (pixel / 255 - mean) / std, [N, 3, H, W] (H, W multiples of 16).
Outputs (docs/contract.md), at output stride s (4, 2 or 1; for s < 4 the embedding is refined
at stride 2 with the first stage's features, so that masks of small objects get finer edges,
the class logits are corrected there by the same features, and s = 1 upsamples both
bilinearly from there):
- embedding: [N, D, H/s, W/s], the per-pixel embedding e_p (unconstrained);
- classes:   [N, T, C+1, H/s, W/s], C^t_pc softmaxed over the C+1 axis (0 = background).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    """kernel x kernel convolution (3x3 unless told), batch norm (folded into the convolution at
    ONNX export), ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InstSegNet(nn.Module):
    """Two stride-2 stages shared by both heads (w and 2w channels, 16 and 32 for width 16),
    then two branches:

    - embedding: two more stride-2 stages (4w, 6w channels; dilated convolutions at stride 16
      widen the receptive field), a U-Net-like decoder with skip connections back to stride 4
      and a 1x1 head; for output stride 2 or 1 the decoder goes on to stride 2 with the first
      stage's features (a 3x3 layer of w channels in place of the stride-4 neck: the same
      FLOPs), because a mask on the stride-4 grid cannot fit a small shape: even the ground
      truth, sampled on that grid, scores mask AP 0.57 on the test split (0.75 on stride 2);
    - classes: its own stride-8 and stride-16 stages (3w, 4w channels), one decoder layer at
      stride 8, then one at stride 4 (w channels) with the second stage's features and a 1x1
      head. Small shapes are about 1.5 stride-8 cells across: with logits from stride 8 they
      rarely got a confident seed (the stride-4 layer, +0.06 GFLOP, raised validation AP50
      from 0.860 to 0.877 at the same training budget). For output stride 2 or 1 the logits
      are upsampled bilinearly to stride 2 and a 1x1 layer on the first stage's features adds
      a correction there (+0.011 GFLOP; zero at initialisation), so that the seediness of a
      shape a few pixels across can follow its edges.

    The branches share only low-level features because the class probabilities need features
    of their own: in a shared trunk the embedding loss, with the paper's lambda of at most 0.2
    on the classification loss, dominates the gradients and the shape classes were learnt far
    too slowly (class accuracy 0.41 after 2,500 steps; 0.62 after 200 more steps once the
    classification loss dominated). Separate parameters let Adam scale each branch's updates
    on their own, so lambda no longer starves them."""

    def __init__(
        self,
        embedding_dim: int = 8,
        thresholds=(0.25, 0.5, 0.75, 0.9),
        num_classes: int = 4,
        width: int = 16,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output_stride: int = 4,
    ):
        super().__init__()
        if output_stride not in (1, 2, 4):
            raise ValueError(f"output_stride must be 1, 2 or 4, got {output_stride}")
        self.output_stride = output_stride
        self.embedding_dim = embedding_dim
        self.thresholds = tuple(float(t) for t in thresholds)
        self.num_classes = num_classes
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 6 * width
        self.stage1 = nn.Sequential(conv_bn(3, c1, 2), conv_bn(c1, c1))  # stride 2
        self.stage2 = nn.Sequential(conv_bn(c1, c2, 2), conv_bn(c2, c2))  # stride 4
        self.stage3 = nn.Sequential(conv_bn(c2, c3, 2), conv_bn(c3, c3))  # stride 8
        self.stage4 = nn.Sequential(  # stride 16; dilated convs widen the receptive field
            conv_bn(c3, c4, 2), conv_bn(c4, c4), conv_bn(c4, c4, dilation=2), conv_bn(c4, c4, dilation=4)
        )
        self.up3 = conv_bn(c4 + c3, c3)  # stride 8
        self.up2 = conv_bn(c3 + c2, 3 * width)  # stride 4
        if output_stride == 4:
            self.neck = conv_bn(3 * width, 3 * width)
            self.embedding_head = nn.Conv2d(3 * width, embedding_dim, 1)
        else:  # the stride-2 refinement replaces the stride-4 neck: about the same FLOPs
            self.reduce = conv_bn(3 * width, width, kernel=1)
            self.refine = conv_bn(2 * width, width)  # stride 2: decoder features + the first stage's
            self.embedding_head = nn.Conv2d(width, embedding_dim, 1)
        k3, k4 = 3 * width, 4 * width
        self.class_stage3 = nn.Sequential(conv_bn(c2, k3, 2), conv_bn(k3, k3))  # stride 8
        self.class_stage4 = nn.Sequential(  # stride 16
            conv_bn(k3, k4, 2), conv_bn(k4, k4), conv_bn(k4, k4, dilation=2), conv_bn(k4, k4, dilation=4)
        )
        self.class_up = conv_bn(k4 + k3, k3)  # stride 8
        self.class_reduce = conv_bn(k3, width, kernel=1)
        self.class_refine = conv_bn(width + c2, width)  # stride 4: class features + the second stage's
        logit_channels = len(self.thresholds) * (num_classes + 1)
        self.class_head = nn.Conv2d(width, logit_channels, 1)
        if output_stride < 4:  # stride 2: a 1x1 layer on the first stage's features corrects the logits
            self.class_fine = nn.Conv2d(c1, logit_channels, 1)
            nn.init.zeros_(self.class_fine.weight)  # training starts from the stride-4 logits
            nn.init.zeros_(self.class_fine.bias)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits = self.native_outputs(image)
        if self.output_stride == 1:  # the network computes both outputs at stride 2
            size = image.shape[-2:]
            embedding = F.interpolate(embedding, size=size, mode="bilinear", align_corners=False)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return embedding, self.class_probabilities(logits)

    def native_outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, class logits) at the finest stride the network computes, 4 or 2, before
        any bilinear upsampling: training at output stride 1 grows its classification targets on
        the stride-2 grid (see train.training_outputs)."""
        x1 = self.stage1(image)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        y = self.up3(torch.cat([F.interpolate(x4, size=x3.shape[-2:], mode="nearest"), x3], 1))
        y = self.up2(torch.cat([F.interpolate(y, size=x2.shape[-2:], mode="nearest"), x2], 1))
        if self.output_stride == 4:
            embedding = self.embedding_head(self.neck(y))
        else:
            y = F.interpolate(self.reduce(y), size=x1.shape[-2:], mode="bilinear", align_corners=False)
            embedding = self.embedding_head(self.refine(torch.cat([y, x1], 1)))
        k3 = self.class_stage3(x2)
        k4 = self.class_stage4(k3)
        k = self.class_up(torch.cat([F.interpolate(k4, size=k3.shape[-2:], mode="nearest"), k3], 1))
        k = F.interpolate(self.class_reduce(k), size=x2.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.class_head(self.class_refine(torch.cat([k, x2], 1)))
        if self.output_stride < 4:
            # float32, as the losses take them: under bfloat16 autocast the sum would round again
            logits = F.interpolate(logits.float(), size=x1.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits + self.class_fine(x1)
        return embedding, logits

    def class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class logits [N, T * (C+1), h, w] -> C^t_pc [N, T, C+1, h, w]."""
        n, _, h, w = logits.shape
        logits = logits.reshape(n, len(self.thresholds), self.num_classes + 1, h, w)
        return softmax_over_classes(logits)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..255 float RGB [N, 3, H, W] -> the network input."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std


def softmax_over_classes(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 2 of [N, T, C+1, h, w]. In the ONNX export it is spelt out (max,
    exp, sum, divide): ONNX Runtime's CPU Softmax on a middle axis transposes the tensor and
    took 6.9 of the 19 ms of a stride-2 frame; the spelt-out form costs about 1 ms. Training
    keeps torch.softmax, so the same command still gives the same weights."""
    if not torch.onnx.is_in_onnx_export():
        return torch.softmax(logits, dim=2)
    exp = torch.exp(logits - logits.amax(dim=2, keepdim=True))
    return exp / exp.sum(dim=2, keepdim=True)


def count_flops(model: nn.Module, size=(256, 256)) -> int:
    """FLOPs of one forward pass on one [1, 3, H, W] frame: 2 x the multiply-adds of every
    convolution (counted with forward hooks); norms, activations, resizes are not counted."""
    total = 0

    def hook(module: nn.Conv2d, _inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        macs = output.numel() * (module.in_channels // module.groups) * kh * kw
        total += 2 * macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def parameter_bytes(model: nn.Module) -> int:
    """Size of the weights (parameters and buffers) stored as float32."""
    return 4 * sum(t.numel() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point())
