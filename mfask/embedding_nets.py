"""Embedding networks that turn high-dimensional simulator output into features.

Pass one as ``embedding_net`` to the posterior; it is trained jointly with the
flow and, like the flow, its weights transfer from one fidelity to the next.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from mfask.errors import InvalidInputError

__all__ = ["ImageEmbedding"]


class ImageEmbedding(nn.Module):
    """A small CNN mapping single-channel images to a feature vector.

    Arguments:
        image_shape: ``(H, W)`` of one image.
        output_dim: number of output features.
        channels: output channels of the convolution blocks; each block is
            3x3 convolution, ReLU and (while both sides are at least 8) a 2x2
            max-pool.
        hidden_dim: width of the fully connected layer after the convolutions.

    Shapes: input ``(n, H, W)`` or ``(n, 1, H, W)``; output ``(n, output_dim)``.

    The feature maps are average-pooled to 4 x 4 and flattened, so the dense
    layers still see where in the image a feature is (the blob task's offsets
    are positions). Defaults have about 40k parameters: CPU-sized.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        output_dim: int = 16,
        channels: Sequence[int] = (8, 16, 32),
        hidden_dim: int = 64,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 2 or min(shape) < 4:
            raise InvalidInputError(
                f"image_shape must be (H, W) with H, W >= 4; got {tuple(image_shape)}"
            )
        if int(output_dim) < 1 or not channels or min(channels) < 1:
            raise InvalidInputError("output_dim and every entry of channels must be positive")
        self.image_shape = shape
        self.output_dim = int(output_dim)
        layers: list[nn.Module] = []
        in_channels, height, width = 1, shape[0], shape[1]
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, int(out_channels), 3, padding=1), nn.ReLU()]
            if min(height, width) >= 8:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = int(out_channels)
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * 16, int(hidden_dim)),
            nn.ReLU(),
            nn.Linear(int(hidden_dim), self.output_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Embed images ``(n, H, W)`` or ``(n, 1, H, W)`` to ``(n, output_dim)``."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.image_shape:
            raise InvalidInputError(
                f"expected images of shape (n, {self.image_shape[0]}, {self.image_shape[1]}) "
                f"or (n, 1, ...); got {tuple(x.shape)}"
            )
        parameter = next(self.parameters())
        return self.head(self.features(x.to(dtype=parameter.dtype)))
