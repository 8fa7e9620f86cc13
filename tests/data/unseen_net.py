"""A network the project has never seen, for tests/test_own_model.py: a residual add, a
concatenation of two branches, a depthwise conv and a linear head, in plain PyTorch."""

import torch
from torch import nn


class UnseenNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.res = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.left = nn.Sequential(
            nn.Conv2d(w, w // 2, 1, bias=False), nn.BatchNorm2d(w // 2), nn.ReLU()
        )
        self.right = nn.Sequential(
            nn.Conv2d(w, w, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        c = w // 2 + w
        self.dw = nn.Sequential(
            nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        )
        self.pw = nn.Sequential(
            nn.Conv2d(c, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU()
        )
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))  # residual add: stem and res write one group
        x = torch.cat([self.left(x), self.right(x)], 1)  # concatenation
        x = self.pw(self.dw(x))  # depthwise: ties its channels to the concatenation's
        return self.head(x.mean((2, 3)))


def unseen(num_classes: int = 10, width: int = 16) -> UnseenNet:
    return UnseenNet(num_classes, width)


class Untraceable(nn.Module):
    """Its `probe` layer leaves the autograd graph (numpy): a dependency trace cannot follow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.probe = Probe()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.probe(self.conv(x)).mean((2, 3)))


class Probe(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy() * 1.0)


def untraceable() -> Untraceable:
    return Untraceable()
