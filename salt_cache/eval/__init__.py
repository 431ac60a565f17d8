"""Frozen evaluation of trained encoders.

probe      attentive probes on cached features: ProbeConfig, probe_encoder, train_probes
features   the probe's clips, encoder checkpoint, feature caches, labels and feature tensors
selection  every checkpoint of a run probed: training loss vs accuracy (the paper's Figure 3)
tables     rich tables of the reports

The probe model itself is `salt_cache.models.probe`.
"""
