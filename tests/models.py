"""Small networks of the three families skrep explains: MLP, ResNet, LSTM classifier."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class SmallResNet(nn.Module):
    """conv stem + 2 residual blocks + global average pool + fc."""

    def __init__(self, in_ch=1, c=8, n_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class LSTMClassifier(nn.Module):
    """embedding + LSTM + fc on the last hidden state."""

    def __init__(self, vocab=20, emb=8, hidden=16, n_classes=3, bidirectional=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), n_classes)

    def forward(self, tokens):
        _, (h, _) = self.lstm(self.emb(tokens))
        h = torch.cat([h[-2], h[-1]], 1) if self.lstm.bidirectional else h[-1]
        return self.fc(h)
