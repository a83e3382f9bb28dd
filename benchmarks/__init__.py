"""LiteEmbed's benchmarks: the method's rare-class benchmark, and the service's speed and memory.

- ``benchmarks.metrics``: top-1, harmonic mean, retrieval AP/mAP, paired differences.
- ``benchmarks.data``: evaluation tasks (the synthetic world's splits, or an image folder).
- ``benchmarks.methods``: every compared method behind one ``evaluate`` call.
- ``benchmarks.rare_classes``: the harness (``python -m benchmarks.rare_classes``); its tables
  and plot in ``benchmarks.rare_classes_report``.
- ``benchmarks.tune``: the validation search that sets LiteEmbed's defaults; its memoised
  evaluations in ``benchmarks.tune_records``, its summary in ``benchmarks.tune_report``.

Speed and memory of the service: ``benchmarks.perf`` (``python -m benchmarks.perf``),
``benchmarks.profile_server``, ``benchmarks.memory_worst_case``.
"""
