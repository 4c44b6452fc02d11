"""Federated-learning core for the CMFL committee: tensors, model, data, training, scoring,
selection, aggregation, election and attacks. Pure, deterministic, no I/O."""
