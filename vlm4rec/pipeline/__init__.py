"""The thin layer the stage notebooks call: parameters in, files out, costs recorded.

One module per DVC stage (``fetch``, ``prepare``, ``ground``, ``embed``, ``match``, ``robustness``, ``fuse``,
``graph``, ``ablate``, ``cold_start``, ``report``) plus shared helpers that are not stages (``outputs``: where
stages write; ``profiles``: the match grids; ``source_manifest``: the fetch -> prepare contract;
``stage_metrics``: the typed metrics files the report reads; ``descriptions``: grounding diagnostics). No
stage module imports another (what stages share lives in these helpers or in the domain modules); each
stage's ``run`` takes the typed sections of :mod:`vlm4rec.config` holding the keys
the stage declares (see :mod:`vlm4rec.stage`), reads the files earlier stages wrote, calls the tested
modules, and writes data files and metrics JSON. Notebooks show what ``run`` returns; nothing a later
stage reads is produced inside a notebook. Each stage depends (in ``dvc.yaml``) on its own module, so
editing one stage's glue re-runs that stage and what follows it, not the whole study.
"""
