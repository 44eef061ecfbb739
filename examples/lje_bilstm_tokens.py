"""RPS-LJE on a bidirectional LSTM over generated token sequences (no download; under a minute on a CPU).

Task: sequences of 12 tokens from a vocabulary of 20; the label is which of the "signal"
tokens 1, 2 or 3 occurs most often (ties to the lowest). The model is embedding -> BiLSTM ->
``nn.Linear`` on the concatenated last hidden states; inputs are integer token arrays.
"""

import argparse

import numpy as np
import torch
from torch import nn

from skrep import RepresenterLJE
from skrep.demo import train_classifier


def make_sequences(n: int, length: int = 12, vocab: int = 20, random_state: int = 0):
    rng = np.random.default_rng(random_state)
    X = rng.integers(4, vocab, (n, length))
    counts = rng.multinomial(4, [1 / 3] * 3, n)
    for i in range(n):
        pos = rng.choice(length, counts[i].sum(), replace=False)
        X[i, pos] = np.repeat([1, 2, 3], counts[i])
    y = np.stack([(t == X).sum(1) for t in (1, 2, 3)], 1).argmax(1)
    return X.astype(np.int64), y


class BiLSTM(nn.Module):
    def __init__(self, vocab=20, emb=16, hidden=32, n_classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, n_classes)

    def forward(self, tokens):
        _, (h, _) = self.lstm(self.emb(tokens))
        return self.fc(torch.cat([h[-2], h[-1]], 1))


def main(quick: bool = False) -> None:
    X, y = make_sequences(1000 if quick else 3000)
    Xt, yt = make_sequences(300, random_state=1)
    torch.manual_seed(0)
    model = train_classifier(BiLSTM(), X, y, epochs=8 if quick else 20, lr=5e-3, weight_decay=1e-4)
    acc = (model(torch.as_tensor(Xt)).argmax(1).numpy() == yt).mean()
    lje = RepresenterLJE(model, l2=1e-4, penalize_bias=True).fit(X, y)
    E = lje.explain(Xt, top_k=5)
    print(f"BiLSTM test accuracy {acc:.3f}; LJE fidelity (Pearson of centered logits) {lje.score(Xt):.4f}")
    pro, val = E.proponents(2)
    for t in range(3):
        print(f"test {t} {Xt[t].tolist()} label {yt[t]} predicted {E.target[t]}")
        for i, v in zip(pro[t], val[t], strict=True):
            print(f"    proponent #{i} {X[i].tolist()} label {y[i]} ({v:+.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
