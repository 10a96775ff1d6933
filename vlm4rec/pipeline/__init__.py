"""The thin layer the stage notebooks call: parameters in, files out, costs recorded.

One module per DVC stage (``prepare``, ``ground``, ``embed``, ``match``, ``fuse``, ``ablate``, ``report``)
plus ``common``; each stage's ``run`` takes the typed sections of :mod:`vlm4rec.config` holding the keys
the stage declares (see :mod:`vlm4rec.stage`), reads the files earlier stages wrote, calls the tested
modules, and writes data files and metrics JSON. Notebooks show what ``run`` returns; nothing a later
stage reads is produced inside a notebook. Each stage depends (in ``dvc.yaml``) on its own module, so
editing one stage's glue re-runs that stage and what follows it, not the whole study.
"""
