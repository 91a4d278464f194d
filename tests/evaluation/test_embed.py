"""embed_dataset: order, eval mode, no gradient, label checks, logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from npair.evaluation import EmbeddingSet
from npair.evaluation.embed import embed_dataset


class Items(torch.utils.data.Dataset):
    def __init__(self, n=10, lie_about_labels=False):
        self.x = torch.arange(n * 3, dtype=torch.float32).view(n, 3)
        self.labels = np.arange(n, dtype=np.int64) % 3
        self.lie = lie_about_labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i]) + (1 if self.lie else 0)


class Net(nn.Module):
    """Dropout makes train and eval mode differ; records the mode and grad state it saw."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.drop = nn.Dropout(0.9)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.drop(self.lin(x))


def test_embeds_in_order_in_eval_mode_without_grad_and_restores_mode():
    net = Net()
    net.train()
    data = Items()
    out = embed_dataset(net, data, batch_size=4)
    assert isinstance(out, EmbeddingSet) and out.embeddings.dtype == np.float32
    expected = net.lin(data.x).detach().numpy()  # no dropout, in dataset order
    np.testing.assert_allclose(out.embeddings, expected, rtol=1e-6)
    np.testing.assert_array_equal(out.labels, data.labels)
    assert out.logits is None
    assert net.seen == [(False, False)] * 3
    assert net.training  # mode restored


def test_logits_fn_and_label_mismatch():
    net = Net()
    head = nn.Linear(2, 4)
    out = embed_dataset(net, Items(), batch_size=3, logits_fn=head)
    assert out.logits.shape == (10, 4)
    np.testing.assert_allclose(
        out.logits, head(torch.from_numpy(out.embeddings)).detach().numpy(), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="differ from its .labels array"):
        embed_dataset(net, Items(lie_about_labels=True))
    with pytest.raises(ValueError, match="empty"):
        embed_dataset(net, Items(n=0))
