"""HelloBench: ``stargz bench``, a cold lazy start measured end to end.

Data flow: ``images`` builds the debootstrap images (cached) and ``variants`` pushes each image's
variants to a local registry; ``link`` puts an emulated link between the runtimes and that
registry; ``runtimes`` pulls, creates and runs one workload from a cold state and says how long
each phase took and what the registry served; ``runner`` plans the samples in random order;
``report`` writes the CSV, the markdown medians, the physical limit and the chart. The shared
vocabulary is in ``model``.
"""
