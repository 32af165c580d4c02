"""``probe-cnn``: two 3x3 convolution blocks."""

import torch
from torch import nn


class ProbeCNN(nn.Module):
    def __init__(self, in_chans=3, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.layer1 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.num_features = 2 * width

    def forward_features(self, x):
        return self.layer1(self.stem(x))

    def forward_pool(self, fmap):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)

    def forward(self, x):
        return self.forward_pool(self.forward_features(x))
