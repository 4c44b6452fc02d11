"""A task of your own (docs/tasks.md, worked example): tumour diagnosis from each hospital's CSV.

Every hospital's CSV has a header row, a 0/1 column `malignant` and 30 numeric measurements.
"""

import torch

from learning.data import Dataset
from learning.task import Task, auc_ks


class TumourTask(Task):
    name = "tumour"
    version = "1"
    label_column = "malignant"  # the default read_file: this column is y, the others are x

    def build_model(self, seed):
        return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 2))

    def read_file(self, path):
        data = super().read_file(path)
        # The measurements span 0.001 to 4000: log1p puts them on one scale, fixed (the same
        # at every hospital, unlike statistics of each one's own rows).
        return Dataset(torch.log1p(data.x), data.y)

    def evaluate(self, model, data):
        with torch.no_grad():
            logits = model(data.x)
        p_malignant = torch.softmax(logits, dim=1)[:, 1].numpy()
        auc, ks = auc_ks(p_malignant, data.y.numpy())
        accuracy = float((logits.argmax(dim=1) == data.y).float().mean())
        return {"auc": auc, "ks": ks, "accuracy": accuracy}
