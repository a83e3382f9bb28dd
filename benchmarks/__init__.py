"""The rare-class benchmark of LiteEmbed.

- ``benchmarks.metrics``: top-1, harmonic mean, retrieval AP/mAP, paired differences.
- ``benchmarks.data``: evaluation tasks (the synthetic world's splits, or an image folder).
- ``benchmarks.methods``: every compared method behind one ``evaluate`` call.
- ``benchmarks.rare_classes``: the harness (``python -m benchmarks.rare_classes``).
- ``benchmarks.tune``: the validation search that sets LiteEmbed's defaults.
"""
